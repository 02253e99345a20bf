/**
 * Factorisation cases: Cholesky, block LDL (b = 8), eigh (f64) and randomized SVD, each timed against numpy
 * (LAPACK) in the same run. Values are seconds (lower is better); `ratios.numpy` is numpy's time / ours.
 */
import { Rng, tensor, type Tensor } from '@caldera/core';
import { blockLDL, cholesky, eigh, randomizedSvd } from '../../src/index.js';
import {
  bestSeconds,
  numpySeconds,
  PY_BEST,
  ratios,
  sig,
  type BenchCase,
  type BenchContext,
} from '../harness.js';

/** Seeded SPD matrix GᵀG/n + I (f64), built with a symmetric random fill (no O(n³) setup). */
export function spd(n: number, seed: number): Tensor<'f64'> {
  const t = tensor('f64', [n, n]);
  const rng = new Rng(seed);
  for (let i = 0; i < n; i++)
    for (let j = 0; j <= i; j++) t.data[i * n + j] = t.data[j * n + i] = rng.normal() / Math.sqrt(n);
  // diagonally dominant: λ_min ≥ 2√n·… − 2 > 0 for the semicircle spectrum of radius 2
  for (let i = 0; i < n; i++) t.data[i * n + i]! += 3;
  return t;
}

const NP_SPD = (n: number): string =>
  `g = np.random.default_rng(1).standard_normal((${n}, ${n})) / np.sqrt(${n})\n` +
  `a = np.tril(g) + np.tril(g, -1).T + 3 * np.eye(${n})\n`;

function secondsCase(
  name: string,
  quick: boolean,
  ours: (ctx: BenchContext) => unknown,
  numpyBody: string,
  reps: number,
  flops?: number,
): BenchCase {
  return {
    name,
    quick,
    async run(ctx) {
      const seconds = await bestSeconds(() => ours(ctx), reps);
      const np = numpySeconds(`${PY_BEST}${numpyBody}\nprint(best(f, ${reps}))`, ctx.threads);
      const refs = { numpy: sig(np) };
      return {
        value: sig(seconds)!,
        unit: 's',
        refs,
        ratios: ratios(seconds, refs, false),
        ...(flops ? { gflops: sig(flops / seconds / 1e9) } : {}),
        threads: ctx.pool.threads,
      };
    },
  };
}

function choleskyCase(n: number, quick: boolean): BenchCase {
  const a = (): Tensor<'f64'> => spd(n, 1);
  let m: Tensor<'f64'> | undefined;
  return secondsCase(
    `cholesky_f64_n${n}`,
    quick,
    (ctx) => cholesky((m ??= a()), { pool: ctx.pool }),
    `${NP_SPD(n)}def f():\n    np.linalg.cholesky(a)`,
    n >= 4096 ? 2 : 3,
    n ** 3 / 3,
  );
}

function ldlCase(n: number, quick: boolean): BenchCase {
  let m: Tensor<'f64'> | undefined;
  // numpy has no block LDL; its reference is the Cholesky it would be derived from plus the 8×8 block work
  return secondsCase(
    `blockldl_f64_n${n}_b8`,
    quick,
    (ctx) => blockLDL((m ??= spd(n, 2)), 8, { pool: ctx.pool }),
    `${NP_SPD(n)}def f():\n    c = np.linalg.cholesky(a)\n    d = c.reshape(${n / 8}, 8, ${n / 8}, 8)\n` +
      `    blocks = np.einsum('iaib->iab', d)\n    inv = np.linalg.inv(blocks)\n` +
      `    return np.einsum('rjb,jbc->rjc', c.reshape(${n}, ${n / 8}, 8), inv), blocks @ blocks.transpose(0, 2, 1)`,
    n >= 4096 ? 2 : 3,
  );
}

/**
 * eigh (values and vectors); besides the best time it reports that run's phases in seconds (`phases`:
 * tridiagonalisation, divide and conquer, back-transformation, from the `onProgress` phase boundaries).
 */
function eighCase(n: number, quick: boolean): BenchCase {
  let m: Tensor<'f64'> | undefined;
  const reps = n >= 2048 ? 1 : 2;
  return {
    name: `eigh_f64_n${n}`,
    quick,
    async run(ctx) {
      let best = Infinity;
      let phases: Record<string, number | null> = {};
      const once = (): void => {
        const marks: [string, number][] = [];
        const t0 = performance.now();
        eigh((m ??= spd(n, 3)), {
          pool: ctx.pool,
          onProgress: (p) => {
            if (p.fraction === 0) marks.push([p.phase, performance.now()]);
          },
        });
        const t1 = performance.now();
        if ((t1 - t0) / 1000 < best) {
          best = (t1 - t0) / 1000;
          phases = Object.fromEntries(
            marks.map(([name, at], i) => [name, sig(((marks[i + 1]?.[1] ?? t1) - at) / 1000)]),
          );
        }
      };
      once(); // warm-up
      best = Infinity;
      for (let r = 0; r < reps; r++) once();
      const np = numpySeconds(
        `${PY_BEST}${NP_SPD(n)}def f():\n    np.linalg.eigh(a)\nprint(best(f, ${reps}))`,
        ctx.threads,
      );
      const refs = { numpy: sig(np) };
      return {
        value: sig(best)!,
        unit: 's',
        refs,
        ratios: ratios(best, refs, false),
        phases,
        threads: ctx.pool.threads,
      };
    },
  };
}

function rsvdCase(n: number, k: number): BenchCase {
  let m: Tensor<'f64'> | undefined;
  return secondsCase(
    `rsvd_f64_n${n}_k${k}`,
    false,
    (ctx) => {
      if (!m) {
        m = tensor('f64', [n, n]);
        new Rng(4).fillNormal(m.data);
      }
      return randomizedSvd(m, k, { pool: ctx.pool, oversample: 10, powerIters: 2, seed: 1 });
    },
    // the same Halko–Martinsson–Tropp scheme in numpy (QR between power iterations)
    `a = np.random.default_rng(4).standard_normal((${n}, ${n}))\n` +
      `def f():\n    om = np.random.default_rng(1).standard_normal((${n}, ${k + 10}))\n` +
      `    q, _ = np.linalg.qr(a @ om)\n    for _ in range(2):\n        z, _ = np.linalg.qr(a.T @ q)\n        q, _ = np.linalg.qr(a @ z)\n` +
      `    u, s, vt = np.linalg.svd(q.T @ a, full_matrices=False)\n    return q @ u[:, :${k}], s[:${k}], vt[:${k}]`,
    1,
  );
}

/** The factorisation cases. */
export const factorCases: BenchCase[] = [
  choleskyCase(2048, true),
  choleskyCase(4096, false),
  ldlCase(2048, false),
  ldlCase(4096, false),
  eighCase(1024, true),
  eighCase(2048, false),
  rsvdCase(4096, 128),
];
