// The synthetic problem of this example, shared with docs/scripts/measure-rank-sweep.mjs: a weight shaped like a real
// projection (heavy-tailed spectrum of 48 rank-one terms, noise, three outlier input channels) and the Hessian of
// calibration activations from 16 shared factors plus noise, with channel scales 1..8 (correlated and unequally
// scaled), normalised to mean diagonal 1 with 1 % damping.
import { Rng, tensor } from '@caldera/core';
import { syrk } from '@caldera/linalg';

/** `{ W (m×n f32), H (n×n f64), N (calibration rows) }` from the seed; `pool` speeds up XᵀX. */
export function syntheticProblem(m, n, seed, pool) {
  const rng = new Rng(seed);
  const w = new Float32Array(m * n);
  for (let t = 0; t < 48; t++) {
    const u = rng.fillNormal(new Float32Array(m));
    const v = rng.fillNormal(new Float32Array(n));
    const s = 3 / (1 + t) ** 1.1;
    for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) w[i * n + j] += (s * u[i] * v[j]) / Math.sqrt(n);
  }
  for (let i = 0; i < w.length; i++) w[i] += 0.05 * rng.normal();
  // (columns within n: for n < 78 column 77 was the next row's column 77 − n)
  for (const j of [5, 77 % n, 300 % n]) for (let i = 0; i < m; i++) w[i * n + j] *= 8;
  const W = tensor('f32', [m, n], w);

  const N = 4 * n;
  const factors = 16;
  const mix = rng.fillNormal(new Float32Array(factors * n));
  const x = new Float32Array(N * n);
  for (let r = 0; r < N; r++) {
    const z = Array.from({ length: factors }, () => rng.normal());
    for (let j = 0; j < n; j++) {
      let v = 0.3 * rng.normal();
      for (let q = 0; q < factors; q++) v += z[q] * mix[q * n + j];
      x[r * n + j] = v * (1 + (j % 8));
    }
  }
  const H = syrk(tensor('f32', [N, n], x), { accumulate: 'f64', ...(pool ? { pool } : {}) });
  let mean = 0;
  for (let i = 0; i < n; i++) mean += H.data[i * n + i] / n;
  for (let i = 0; i < n * n; i++) H.data[i] /= mean;
  for (let i = 0; i < n; i++) H.data[i * n + i] += 0.01;
  return { W, H, N };
}
