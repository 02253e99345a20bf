import { CalderaError, describeNumberRule, obeysNumberRule, type NumberRule } from '@caldera/core';

/** Parsed command line: positionals and `--flag value` / `--flag` options. */
export interface Args {
  positionals: string[];
  flags: Map<string, string | true>;
}

/**
 * What a command accepts: its options (name → whether it takes a value) and how many positional arguments. Derived
 * from the command's help text by {@link commandSpec}, so that the help is the one place that declares them.
 */
export interface CommandSpec {
  options: ReadonlyMap<string, 'value' | 'switch'>;
  positionals: number;
}

/** A mistake in the shape of the command line (unknown option, missing value): `caldera` exits with code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** The help text without its single-quoted examples ('caldera compress --shard I/N' names another command's option). */
const unquoted = (help: string) => help.replace(/'[^'\n]*'/g, "''");

/**
 * The options and positionals a command's help declares. Options: every `--name` in the help outside single-quoted
 * examples; one takes a value when some mention of it is followed by one space (or `=`) and an upper-case
 * placeholder (`--out DIR`, `--shard I/N`, `--lr LR`), else it is a switch (`--json`). Positionals: the `[name]` and
 * `<name>` placeholders of the first line, before its first option (`[options]` excluded).
 */
export function commandSpec(help: string): CommandSpec {
  const text = unquoted(help);
  const options = new Map<string, 'value' | 'switch'>();
  for (const m of text.matchAll(/(?<![\w-])--([a-z][a-z0-9-]*)(?:[ =]([A-Z][A-Z0-9/_]*)(?![a-z]))?/g)) {
    const name = m[1]!;
    if (m[2] !== undefined) options.set(name, 'value');
    else if (!options.has(name)) options.set(name, 'switch');
  }
  const usage = help.split('\n')[0]!.split('--')[0]!;
  const positionals = [...usage.matchAll(/(?:^|\s)(?:\[[a-z][a-z-]*\]|<[a-z][a-z-]*>)/g)].filter(
    (m) => m[0].trim() !== '[options]',
  ).length;
  return { options, positionals };
}

/** Edit distance of two short strings (for "did you mean"). */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++)
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

function unknownOption(flag: string, spec: CommandSpec): UsageError {
  const name = flag.replace(/^-+/, '');
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of spec.options.keys()) {
    const d = distance(name, k);
    if (d < bestD) [best, bestD] = [k, d];
  }
  const near = best !== undefined && bestD <= Math.min(2, Math.max(1, Math.floor(name.length / 3)));
  return new UsageError(`unknown option ${flag}${near ? `; did you mean --${best}?` : ''}`);
}

/** The options among `names` given on the command line, as `--name`, in the order of `names`. */
export function givenFlags(a: Args, names: readonly string[]): string[] {
  return names.filter((n) => a.flags.has(n)).map((n) => `--${n}`);
}

/**
 * Split a command line into positionals and options. With `spec` (what the command accepts), an unknown option, a
 * value option without a value, a switch given a value (`--json=x`), a single-dash word (`-text`) or a positional
 * beyond the command's are {@link UsageError}s, and a switch never takes the next word as its value; of an option
 * given twice the last value counts (defaults a script passes, then its caller's). `--` ends the
 * options. Without `spec`, every `--flag` takes the next word as its value unless that starts with `--`.
 */
export function parseArgs(argv: readonly string[], spec?: CommandSpec): Args {
  const positionals: string[] = [];
  const flags = new Map<string, string | true>();
  let optionsEnded = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (optionsEnded || !a.startsWith('-') || a === '-') {
      positionals.push(a);
      continue;
    }
    if (a === '--') {
      optionsEnded = true;
      continue;
    }
    if (!a.startsWith('--')) {
      if (spec) throw unknownOption(a, spec);
      positionals.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    const k = eq < 0 ? a.slice(2) : a.slice(2, eq);
    const v = eq < 0 ? undefined : a.slice(eq + 1);
    const kind = spec?.options.get(k);
    if (spec && kind === undefined) throw unknownOption(`--${k}`, spec);
    if (kind === 'switch') {
      if (v !== undefined) throw new UsageError(`--${k} takes no value, got '${v}'`);
      flags.set(k, true);
    } else if (v !== undefined) flags.set(k, v);
    else if (i + 1 < argv.length && !argv[i + 1]!.startsWith('--')) flags.set(k, argv[++i]!);
    else if (spec) throw new UsageError(`--${k} needs a value`);
    else flags.set(k, true);
  }
  if (spec && positionals.length > spec.positionals)
    throw new UsageError(
      `unexpected argument '${positionals[spec.positionals]}'` +
        (spec.positionals === 0 ? ' (this command takes no positional argument)' : ''),
    );
  return { positionals, flags };
}

export function flagString(a: Args, name: string, def?: string): string | undefined {
  const v = a.flags.get(name);
  if (v === true) throw new CalderaError('E_VALUE', `--${name} needs a value`);
  return v ?? def;
}

export { NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, SEED, type NumberRule } from '@caldera/core';

/**
 * `--threads`: integers in [1, 256], the sizes of a linear-algebra pool (`createPool` of @caldera/linalg refuses
 * others; `main` checks the option for every command before it runs).
 */
export const THREADS: NumberRule = { integer: true, min: 1, max: 256 };

/** `E_VALUE` naming the option, what it must be, and the value given (`note`: why, e.g. the model's limit). */
export function checkFlag(name: string, n: number, r: NumberRule, note = ''): number {
  // an integer past 2⁵³ is not one exactly (--steps 1e20 ran with an ETA of 8.6e18 s)
  const unsafe = r.integer && Number.isInteger(n) && !Number.isSafeInteger(n) ? ' below 2⁵³' : '';
  if (!obeysNumberRule(n, r))
    throw new CalderaError('E_VALUE', `--${name} must be ${describeNumberRule(r)}${unsafe}${note}, got ${n}`);
  return n;
}

/**
 * `E_VALUE` unless the window of `n` tokens that option `--name` sets is an integer in [2, `maxPositions`]: past
 * max_position_embeddings a model runs on positions it never saw (eval's --context, train/finetune's --seq-len,
 * compress's --length).
 */
function checkTokenWindow(name: string, n: number, maxPositions: number): number {
  return checkFlag(name, n, { integer: true, min: 2, max: maxPositions }, " (the model's max positions)");
}

/**
 * The window of tokens that option `--name` sets: `given` (the option's value, undefined when absent) checked by
 * {@link checkTokenWindow}, or else the command's default `def` clamped to `maxPositions` — a model with fewer
 * positions runs with all of them rather than being refused over an option the user never gave.
 */
export function tokenWindow(
  name: string,
  given: number | undefined,
  def: number,
  maxPositions: number,
): number {
  return given === undefined ? Math.min(def, maxPositions) : checkTokenWindow(name, given, maxPositions);
}

/**
 * A numeric option: `def` when absent; `E_VALUE` naming the option when it is not a number or breaks `rule` (the
 * default is not checked).
 */
export function flagNumber(a: Args, name: string, def: number, rule?: NumberRule): number;
export function flagNumber(a: Args, name: string, def?: number, rule?: NumberRule): number | undefined;
export function flagNumber(a: Args, name: string, def?: number, rule?: NumberRule): number | undefined {
  const v = flagString(a, name);
  if (v === undefined) return def;
  const n = v.trim() === '' ? NaN : Number(v);
  if (!Number.isFinite(n)) throw new CalderaError('E_VALUE', `--${name} must be a number, got '${v}'`);
  return rule ? checkFlag(name, n, rule) : n;
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
      // `done` may be fractional (a layer under way): the fill shows it, the counter the whole units done
      process.stderr.write(
        `\r${label} ${bar} ${Math.floor(done)}/${total}${eta} ${note}`.slice(0, 150).padEnd(100),
      );
    },
    done() {
      if (enabled) process.stderr.write('\n');
    },
  };
}
