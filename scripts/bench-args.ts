/**
 * The command line of a package's benchmark (`npm run bench -w @caldera/<pkg> -- …`), checked before any case runs:
 * `--help` prints `usage` and exits 0; an argument that is not one of `flags` (alone) or `options` (with a value, as
 * `--name value` or `--name=value`) prints it with the usage and exits 2 (a typo such as `--quik` ran the full suite,
 * minutes long, silently). Shared by the benches of every package (run from a clone, never published).
 */
export function checkBenchArgs(
  usage: string,
  flags: readonly string[],
  options: readonly string[] = [],
  argv: readonly string[] = process.argv.slice(2),
): void {
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(usage);
    process.exit(0);
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const name = a.split('=')[0]!;
    if (flags.includes(a)) continue;
    if (options.includes(name)) {
      if (!a.includes('=')) i++; // its value
      continue;
    }
    console.error(`unknown benchmark argument '${a}'\n${usage}`);
    process.exit(2);
  }
}
