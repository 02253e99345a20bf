// Decompose one weight matrix with CALDERA (W ≈ Q + L·R) against a calibration Hessian, and compare it with the
// baselines at about the same or fewer bits: round-to-nearest on the E8P lattice and LDLQ alone (QuIP#-style).
//
// The matrix and the activations are synthetic but shaped like real ones: a heavy-tailed spectrum, outlier input
// channels, and activations whose channels are correlated and unequally scaled. Usage:
//   node index.mjs [--m 512] [--n 512] [--seed 0] [--json]
import { Rng, tensor } from '@caldera/core';
import { createPool, syrk } from '@caldera/linalg';
import { caldera } from '@caldera/lowrank';

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const m = opt('m', 512);
const n = opt('n', 512);
const seed = opt('seed', 0);
const json = args.includes('--json');

const rng = new Rng(seed);
const w = new Float32Array(m * n);
for (let t = 0; t < 48; t++) {
  const u = rng.fillNormal(new Float32Array(m));
  const v = rng.fillNormal(new Float32Array(n));
  const s = 3 / (1 + t) ** 1.1;
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) w[i * n + j] += (s * u[i] * v[j]) / Math.sqrt(n);
}
for (let i = 0; i < w.length; i++) w[i] += 0.05 * rng.normal();
for (const j of [5, 77, 300 % n]) for (let i = 0; i < m; i++) w[i * n + j] *= 8;
const W = tensor('f32', [m, n], w);

// calibration activations X (N × n): a few shared factors plus noise, channel scales 1..8
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
const pool = createPool({ threads: 2 });
const H = syrk(tensor('f32', [N, n], x), { accumulate: 'f64', pool });
let mean = 0;
for (let i = 0; i < n; i++) mean += H.data[i * n + i] / n;
for (let i = 0; i < n * n; i++) H.data[i] /= mean;
for (let i = 0; i < n; i++) H.data[i * n + i] += 0.01;

const runs = [
  ['RTN (E8P, 2-bit)', { rank: 0, dataAwareQ: false }],
  ['LDLQ only (QuIP#-style, 2-bit)', { rank: 0 }],
  ['CALDERA k=16, Q 2-bit, LR 4-bit', { rank: 16 }],
  ['CALDERA k=32, Q 2-bit, LR 4-bit', { rank: 32 }],
  ['CALDERA k=64, Q 2-bit, LR 4-bit', { rank: 64 }],
];
const rows = [];
for (const [name, o] of runs) {
  const t0 = performance.now();
  const d = caldera(W, H, { ...o, seed, pool });
  rows.push({
    method: name,
    bitsPerWeight: Number(d.paperBitsPerWeight.toFixed(3)),
    storedBitsPerWeight: Number(d.bitsPerWeight.toFixed(3)),
    error: Number(d.error.toFixed(5)),
    seconds: Number(((performance.now() - t0) / 1000).toFixed(2)),
  });
}
pool.dispose();
if (json) {
  for (const r of rows) console.log(JSON.stringify(r));
} else {
  console.log(
    `CALDERA on a ${m}×${n} weight with a calibration Hessian from ${N} activation rows (seed ${seed})`,
  );
  console.log('error = ‖(Ŵ − W)·H^½‖_F / ‖W·H^½‖_F (activation-aware, lower is better)\n');
  console.table(rows);
}
