/**
 * Benchmark harness of @caldera/linalg. A case is registered in `bench/run.ts` from a module in
 * `bench/cases/`; each prints one JSON line `{"case","value","unit","refs",...}`. References (numpy via
 * `python3`, tfjs-backend-wasm) are measured in the same run; a missing reference is reported as `null`.
 */
import { spawnSync } from 'node:child_process';
import type { Pool } from '../src/index.js';
import type { BenchLine } from '../../../scripts/bench-line.js';

/** What a case receives. */
export interface BenchContext {
  /** `--quick`: only cases marked `quick`, fewer repetitions. */
  readonly quick: boolean;
  /** Threads for every side (ours, numpy, tfjs). */
  readonly threads: number;
  /** A pool with `threads` threads. */
  readonly pool: Pool;
}

/**
 * One line of output (see scripts/bench-line.ts; extra numeric fields such as `seconds` are allowed): `refs` measured
 * in the same run, `info` the run's settings.
 */
export interface BenchResult {
  value: number;
  unit: string;
  refs?: Record<string, number | null>;
  info?: BenchLine['info'];
  [extra: string]: unknown;
}

/** A benchmark case. */
export interface BenchCase {
  /** Case name, e.g. `gemm_f32_n2048`. */
  name: string;
  /** Included in `--quick`. */
  quick?: boolean;
  run(ctx: BenchContext): BenchResult | Promise<BenchResult>;
}

/** Best wall-clock seconds of `reps` calls after `warmup` untimed calls. */
export async function bestSeconds(fn: () => unknown, reps: number, warmup = 1): Promise<number> {
  for (let i = 0; i < warmup; i++) await fn();
  let best = Infinity;
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await fn();
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  return best;
}

/**
 * Run a Python snippet that must print one number (seconds) with numpy imported as `np` and the
 * BLAS limited to `threads`; `null` when python3 or numpy is absent or the snippet fails.
 */
export function numpySeconds(body: string, threads: number): number | null {
  const script = `import time, numpy as np\n${body}\n`;
  const env = {
    ...process.env,
    OPENBLAS_NUM_THREADS: String(threads),
    OMP_NUM_THREADS: String(threads),
    MKL_NUM_THREADS: String(threads),
  };
  const r = spawnSync('python3', ['-c', script], { env, encoding: 'utf8', timeout: 600_000 });
  if (r.status !== 0) return null;
  const v = Number.parseFloat(r.stdout.trim().split('\n').pop() ?? '');
  return Number.isFinite(v) ? v : null;
}

/** A Python helper prelude: `best(f, reps)` returns the best seconds of `reps` calls after one warm-up. */
export const PY_BEST = `def best(f, reps):
    f()
    t = 1e9
    for _ in range(reps):
        s = time.perf_counter(); f(); t = min(t, time.perf_counter() - s)
    return t
`;

/** Round to 3 significant digits for printing. */
export function sig(x: number | null): number | null {
  return x === null ? null : Number(x.toPrecision(3));
}

/** Ratios ours / reference for "higher is better" units, or reference / ours for seconds. */
export function ratios(
  value: number,
  refs: Record<string, number | null>,
  higherIsBetter: boolean,
): Record<string, number | null> {
  const out: Record<string, number | null> = {};
  for (const [k, v] of Object.entries(refs)) {
    out[k] = v === null || v === 0 ? null : sig(higherIsBetter ? value / v : v / value);
  }
  return out;
}
