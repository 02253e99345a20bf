/**
 * The path `s` as one word of a POSIX shell command line: as it is when it needs no quoting, else in single quotes;
 * one that starts with `-` after `./`, so that the command it is pasted into does not read it as an option (the
 * printed `caldera merge -sh` failed with "unknown option -sh").
 */
export function shellWord(s: string): string {
  const p = s.startsWith('-') ? `./${s}` : s;
  return /^[\w@%+=:,./-]+$/.test(p) ? p : `'${p.replace(/'/g, `'\\''`)}'`;
}
