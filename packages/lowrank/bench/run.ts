// CALDERA benchmark: wall time and activation-aware error of one decomposition, JSON lines.
//   npm run bench -w @caldera/lowrank            # 4096×4096 and 11008×4096 (k = 64, Q 2-bit, LR 4-bit)
//   npm run bench -w @caldera/lowrank -- --quick # 2048×2048 only (under a minute; 4096² alone took 48 s and more)
//   npm run bench -w @caldera/lowrank -- --shapes 4096x11008,2048x5632   # other m×n shapes (e.g. down projections)
//   npm run bench -w @caldera/lowrank -- --shapes 4096x4096 --rank 300   # another rank (8B models get ~300 at 2.4 bits)
import { Rng, tensor, type Tensor } from '@caldera/core';
import { createPool, syrk } from '@caldera/linalg';
import { caldera } from '../src/index.js';
import { checkBenchArgs } from '../../../scripts/bench-args.js';
import { benchLine } from '../../../scripts/bench-line.js';

checkBenchArgs(
  'usage: npm run bench -w @caldera/lowrank [-- --quick] [-- --shapes MxN,…] [-- --rank K]',
  ['--quick'],
  ['--shapes', '--rank'],
);
const quick = process.argv.includes('--quick');

/** Structured weight (decaying spectrum + outlier columns) and a Hessian from correlated activations. */
function problem(m: number, n: number, seed: number, pool: ReturnType<typeof createPool>) {
  const rng = new Rng(seed);
  const r = 64;
  const u = rng.fillNormal(new Float32Array(m * r));
  const v = rng.fillNormal(new Float32Array(r * n));
  for (let t = 0; t < r; t++) {
    const s = 1 / (1 + t) ** 0.8;
    for (let j = 0; j < n; j++) v[t * n + j]! *= s / Math.sqrt(n);
  }
  const w = new Float32Array(m * n);
  // W = U·V + noise, computed row by row (no dense helpers needed)
  for (let i = 0; i < m; i++)
    for (let t = 0; t < r; t++) {
      const a = u[i * r + t]!;
      for (let j = 0; j < n; j++) w[i * n + j]! += a * v[t * n + j]!;
    }
  for (let i = 0; i < w.length; i++) w[i]! += 0.02 * rng.normal();
  for (let j = 0; j < n; j += 997) for (let i = 0; i < m; i++) w[i * n + j]! *= 5;
  const N = 2 * n;
  const f = 32;
  const mix = rng.fillNormal(new Float32Array(f * n));
  const x = new Float32Array(N * n);
  for (let row = 0; row < N; row++) {
    const z = Array.from({ length: f }, () => rng.normal());
    for (let j = 0; j < n; j++) {
      let val = 0.3 * rng.normal();
      for (let q = 0; q < f; q++) val += z[q]! * mix[q * n + j]!;
      x[row * n + j] = val * (1 + (j % 8));
    }
  }
  const h = syrk(tensor('f32', [N, n], x), { accumulate: 'f64', pool }) as Tensor<'f64'>;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += h.data[i * n + i]! / n;
  for (let i = 0; i < n * n; i++) h.data[i]! /= mean;
  for (let i = 0; i < n; i++) h.data[i * n + i]! += 0.01;
  return { w: tensor('f32', [m, n], w), h };
}

/** The value of `--name value` or `--name=value`, or undefined when not given. */
function optionValue(name: string): string | undefined {
  const argv = process.argv;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === name) return argv[i + 1] ?? '';
    if (argv[i]!.startsWith(`${name}=`)) return argv[i]!.slice(name.length + 1);
  }
  return undefined;
}

/** `--shapes 4096x11008,…` as [m, n] pairs, or null when not given. */
function shapesArg(): [number, number][] | null {
  const spec = optionValue('--shapes');
  if (spec === undefined) return null;
  return spec.split(',').map((s) => {
    const [m, n] = s.split('x').map(Number);
    if (!Number.isInteger(m) || !Number.isInteger(n) || m! < 64 || n! < 64)
      throw new Error(`--shapes: '${s}' is not MxN with both at least 64 (e.g. 4096x11008)`);
    return [m!, n!];
  });
}

const rankSpec = optionValue('--rank') ?? '64';
const rank = Number(rankSpec);
if (!Number.isInteger(rank) || rank < 1) throw new Error(`--rank: '${rankSpec}' is not a positive integer`);
const pool = createPool({ threads: 2 });
const shapes: [number, number][] =
  shapesArg() ??
  (quick
    ? [[2048, 2048]]
    : [
        [4096, 4096],
        [11008, 4096],
      ]);
for (const [m, n] of shapes) {
  const { w, h } = problem(m, n, 1, pool);
  const phases: Record<string, number> = {};
  let last = performance.now();
  const t0 = last;
  const d = caldera(w, h, {
    rank,
    pool,
    onProgress: (p) => {
      const now = performance.now();
      phases[p.step] = (phases[p.step] ?? 0) + (now - last) / 1000;
      last = now;
    },
  });
  const seconds = (performance.now() - t0) / 1000;
  const t1 = performance.now();
  const ldlqOnly = caldera(w, h, { rank: 0, pool });
  const ldlqSeconds = (performance.now() - t1) / 1000;
  console.log(
    benchLine({
      case: `caldera_n${m === n ? n : `${m}x${n}`}_k${rank}`,
      value: Number(seconds.toFixed(2)),
      unit: 's',
      refs: {
        error: Number(d.error.toFixed(5)),
        ldlq_error: Number(ldlqOnly.error.toFixed(5)),
        ldlq_seconds: Number(ldlqSeconds.toFixed(2)),
      },
      phases_s: Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, Number(v.toFixed(2))])),
      bitsPerWeight: Number(d.paperBitsPerWeight.toFixed(4)),
    }),
  );
}
pool.dispose();
