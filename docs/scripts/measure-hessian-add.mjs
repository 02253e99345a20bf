// One window's Hessian update, Σ += xᵀx for 128 rows, at TinyLlama-1.1B's input widths (2048, 5632): calibrate's
// HessianAccumulator (linalg's syrkInto; on one thread and on a 2-thread pool) against the scalar loop it used before
// (copied here as it was), with the largest relative difference of their sums. Uses the built packages.
//   node docs/scripts/measure-hessian-add.mjs [windows]   (default 4 windows per case; prints JSON lines)
/* global process, console, performance */
import { HessianAccumulator } from '@caldera/calibrate';
import { createPool } from '@caldera/linalg';
/** The accumulator's loop before it used syrkInto: the upper triangle, 4 rows per pass. */
function oldAdd(s, x, rows, n) {
  let r = 0;
  for (; r + 4 <= rows; r += 4) {
    const o0 = r * n,
      o1 = o0 + n,
      o2 = o1 + n,
      o3 = o2 + n;
    for (let i = 0; i < n; i++) {
      const a0 = x[o0 + i],
        a1 = x[o1 + i],
        a2 = x[o2 + i],
        a3 = x[o3 + i];
      if (a0 === 0 && a1 === 0 && a2 === 0 && a3 === 0) continue;
      const base = i * n;
      for (let j = i; j < n; j++)
        s[base + j] += a0 * x[o0 + j] + a1 * x[o1 + j] + a2 * x[o2 + j] + a3 * x[o3 + j];
    }
  }
}
const windows = Number(process.argv[2] ?? 4);
for (const n of [2048, 5632]) {
  const x = new Float32Array(128 * n).map((_, i) => ((i * 2654435761) % 1000) / 1000 - 0.5);
  const s = new Float64Array(n * n);
  let t = performance.now();
  for (let w = 0; w < windows; w++) oldAdd(s, x, 128, n);
  const old = (performance.now() - t) / windows;
  // bufferBytes 0: each add is its product (with the default buffer the timed adds would only copy rows)
  const acc = new HessianAccumulator(n, { bufferBytes: 0 });
  t = performance.now();
  for (let w = 0; w < windows; w++) acc.add(x, 128);
  const one = (performance.now() - t) / windows;
  const pool = createPool({ threads: 2 });
  const acc2 = new HessianAccumulator(n, { pool, bufferBytes: 0 });
  acc2.add(x, 128);
  t = performance.now();
  for (let w = 0; w < windows; w++) acc2.add(x, 128);
  const two = (performance.now() - t) / windows;
  pool.dispose();
  let maxRel = 0;
  for (let i = 0; i < n; i++)
    for (let j = i; j < n; j++)
      maxRel = Math.max(maxRel, Math.abs(acc.sum[i * n + j] - s[i * n + j]) / (1 + Math.abs(s[i * n + j])));
  console.log(
    JSON.stringify({
      n,
      msPerWindow: { scalarLoop: +old.toFixed(0), syrk1: +one.toFixed(0), syrk2threads: +two.toFixed(0) },
      maxRel,
    }),
  );
}
