// How CALDERA and LDLQ-only keep one very large weight (a "super weight", many times the layer's RMS): a random
// Gaussian W (RMS 1) of --m × --n with one entry set to −magnitude, H = I, decomposed with the default options
// (CALDERA at --rank, and rank 0 for LDLQ alone). Prints one JSON line per (method, magnitude): the relative error on
// the rows without the entry, on the entry's row, and the entry as reconstructed. The lowrank README quotes a run.
//   node docs/scripts/measure-super-weight.mjs [--m 1024] [--n 2752] [--rank 64] [--magnitudes 0,100,300,1000]
/* global console, performance */
import { parseArgs } from 'node:util';
import { Rng, tensor } from '@caldera/core';
import { createPool } from '@caldera/linalg';
import { caldera, reconstruct } from '@caldera/lowrank';

const { values } = parseArgs({
  options: {
    m: { type: 'string', default: '1024' },
    n: { type: 'string', default: '2752' },
    rank: { type: 'string', default: '64' },
    magnitudes: { type: 'string', default: '0,100,300,1000' },
  },
});
const m = Number(values.m);
const n = Number(values.n);
const rank = Number(values.rank);
const magnitudes = values.magnitudes.split(',').map(Number);
const [row, col] = [Math.floor(m / 2) + 5, Math.floor((3 * n) / 4) - 65]; // any entry; fixed for repeatability
const base = new Rng(0).fillNormal(new Float32Array(m * n));
const pool = createPool({ threads: 2 });
try {
  for (const k of [rank, 0]) {
    for (const magnitude of magnitudes) {
      const w = base.slice();
      if (magnitude > 0) w[row * n + col] = -magnitude;
      const t0 = performance.now();
      const d = caldera(tensor('f32', [m, n], w), null, { rank: k, seed: 1, pool });
      const r = reconstruct(d).data;
      let [otherErr, otherNorm, rowErr, rowNorm] = [0, 0, 0, 0];
      for (let i = 0; i < m; i++)
        for (let j = 0; j < n; j++) {
          const e = (r[i * n + j] - w[i * n + j]) ** 2;
          if (i === row) {
            rowErr += e;
            rowNorm += w[i * n + j] ** 2;
          } else {
            otherErr += e;
            otherNorm += w[i * n + j] ** 2;
          }
        }
      console.log(
        JSON.stringify({
          method: k > 0 ? `caldera_k${k}` : 'ldlq',
          shape: `${m}x${n}`,
          magnitude,
          error: Number(d.error.toFixed(4)),
          otherRowsError: Number(Math.sqrt(otherErr / otherNorm).toFixed(4)),
          rowError: Number(Math.sqrt(rowErr / rowNorm).toFixed(4)),
          entry: w[row * n + col],
          entryReconstructed: Number(r[row * n + col].toFixed(3)),
          seconds: Number(((performance.now() - t0) / 1000).toFixed(1)),
        }),
      );
    }
  }
} finally {
  pool.dispose();
}
