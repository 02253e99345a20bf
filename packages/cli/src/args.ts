import { CalderaError } from '@caldera/core';

/** Parsed command line: positionals and `--flag value` / `--flag` options. */
export interface Args {
  positionals: string[];
  flags: Map<string, string | true>;
}

export function parseArgs(argv: readonly string[]): Args {
  const positionals: string[] = [];
  const flags = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a.startsWith('--')) {
      const [k, v] = a.slice(2).split('=', 2) as [string, string | undefined];
      if (v !== undefined) flags.set(k, v);
      else if (i + 1 < argv.length && !argv[i + 1]!.startsWith('--')) flags.set(k, argv[++i]!);
      else flags.set(k, true);
    } else positionals.push(a);
  }
  return { positionals, flags };
}

export function flagString(a: Args, name: string, def?: string): string | undefined {
  const v = a.flags.get(name);
  if (v === true) throw new CalderaError('E_VALUE', `--${name} needs a value`);
  return v ?? def;
}

export function flagNumber(a: Args, name: string, def: number): number;
export function flagNumber(a: Args, name: string, def?: number): number | undefined;
export function flagNumber(a: Args, name: string, def?: number): number | undefined {
  const v = flagString(a, name);
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new CalderaError('E_VALUE', `--${name} must be a number, got '${v}'`);
  return n;
}

/** A one-line progress bar with ETA on stderr (silent when stderr is not a terminal and `quiet`). */
export function progressBar(label: string, enabled: boolean) {
  let last = 0;
  return {
    update(done: number, total: number, etaSeconds?: number, note = '') {
      if (!enabled) return;
      const now = Date.now();
      if (now - last < 200 && done < total) return;
      last = now;
      const width = 28;
      const f = total > 0 ? Math.min(1, done / total) : 0;
      const bar = '█'.repeat(Math.round(f * width)).padEnd(width, '░');
      const eta = etaSeconds === undefined ? '' : ` ETA ${Math.max(0, Math.round(etaSeconds))}s`;
      process.stderr.write(`\r${label} ${bar} ${done}/${total}${eta} ${note}`.slice(0, 150).padEnd(100));
    },
    done() {
      if (enabled) process.stderr.write('\n');
    },
  };
}
