/**
 * The kernel-choice loader options the benchmarks take as flags (`bench/run.ts`, `bench/profile.ts`), parsed here
 * once; the loader checks their values.
 */
import type { WebGpuModelOptions } from '../src/index.js';

/**
 * The loader options these flags set: `max-local-hadamard` N, rotations of vectors above N values take the
 * global-memory path (many workgroups, two or three launches) instead of one workgroup per vector; `rows-per-lane` N,
 * the most rows each lane of the E8P kernel computes; `vector-workgroup` N, invocations of the one-workgroup kernels;
 * `gate-step` fused|split|chunked, the form of the gate step; `code-batch` N, code groups per iteration of the E8P
 * loops that batch their loads; `written-mix` true|false, the `H_K` mix written into the rotation kernels or read from
 * the table.
 */
const OPTION_FLAGS = {
  'max-local-hadamard': 'maxLocalHadamard',
  'rows-per-lane': 'rowsPerLane',
  'vector-workgroup': 'vectorWorkgroup',
  'gate-step': 'gateStep',
  'code-batch': 'codeBatch',
  'written-mix': 'writtenMix',
} as const;

/** The command-line flags of {@link OPTION_FLAGS} (each takes a value). */
export const LOADER_FLAGS: readonly string[] = Object.keys(OPTION_FLAGS).map((k) => `--${k}`);

/** The loader options of {@link OPTION_FLAGS}. */
export type TunedOptions = Pick<WebGpuModelOptions, (typeof OPTION_FLAGS)[keyof typeof OPTION_FLAGS]>;

/**
 * `name=value` pairs (`name` a key of {@link OPTION_FLAGS}) as loader options; exits on an unknown name, an empty
 * value or a non-number for the numeric ones (the loader checks the values).
 */
export function tunedOptions(pairs: readonly [string, string][]): TunedOptions {
  const out: Record<string, number | string | boolean> = {};
  for (const [name, value] of pairs) {
    const key = OPTION_FLAGS[name as keyof typeof OPTION_FLAGS];
    const text = key === 'gateStep';
    const flag = key === 'writtenMix';
    const ok = flag
      ? value === 'true' || value === 'false'
      : value !== '' && (text || Number.isFinite(Number(value)));
    if (!key || !ok) {
      console.error(
        `option ${name}=${value}: need one of ${Object.keys(OPTION_FLAGS).join(', ')} = a number ` +
          '(gate-step: a form; written-mix: true or false)',
      );
      process.exit(2);
    }
    out[key] = flag ? value === 'true' : text ? value : Number(value);
  }
  return out as TunedOptions;
}

/**
 * The options of the flags `--max-local-hadamard N`, `--rows-per-lane N`, `--vector-workgroup N`, `--gate-step
 * FORM`, `--code-batch N` and `--written-mix true|false` in `argv`.
 */
export function loaderFlagOptions(argv: readonly string[]): TunedOptions {
  return tunedOptions(
    Object.keys(OPTION_FLAGS)
      .map((name) => [name, argv.indexOf(`--${name}`)] as const)
      .filter(([, i]) => i >= 0)
      .map(([name, i]) => [name, argv[i + 1] ?? '']),
  );
}
