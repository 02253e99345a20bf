// Does `damping` lower the error when H is singular? The problem of `caldera-options.test.ts` ('caldera damping': a
// 64×64 structured W and an H from 4 activation rows, rank 4, no damping of its own) over seeds 0–7 of the
// decomposition, undamped against damped, the error always measured against the undamped H. The test checks seed 0
// only; single undamped figures are set by rounding (the fit's components in H's null space), so this script gives the
// spread behind the lowrank README's damping paragraph. Writes JSON Lines to docs/data/damping-seeds.jsonl, or to
// stdout with --stdout. Uses the built packages: run `npx turbo run build --filter=@caldera/lowrank...` first.
//   node docs/scripts/measure-damping-seeds.mjs [--stdout]
/* global process, URL */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Rng, tensor } from '@caldera/core';
import { caldera } from '@caldera/lowrank';

// the test's generators (caldera-options.test.ts), repeated here so that the script uses only published packages
function structuredWeight(m, n, seed) {
  const rng = new Rng(seed);
  const w = new Float32Array(m * n);
  for (let t = 0; t < 24; t++) {
    const u = rng.fillNormal(new Float32Array(m));
    const v = rng.fillNormal(new Float32Array(n));
    const s = 3 / (1 + t) ** 1.2;
    for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) w[i * n + j] += (s * u[i] * v[j]) / Math.sqrt(n);
  }
  for (let i = 0; i < w.length; i++) w[i] += 0.05 * rng.normal();
  return tensor('f32', [m, n], w);
}
function hessianFrom(n, rows, seed, reg) {
  const rng = new Rng(seed);
  const x = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) for (let j = 0; j < n; j++) x[r * n + j] = rng.normal() * (1 + (j % 5));
  const h = new Float64Array(n * n);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) h[i * n + j] += (x[r * n + i] * x[r * n + j]) / rows;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += h[i * n + i] / n;
  for (let i = 0; i < n * n; i++) h[i] /= mean;
  for (let i = 0; i < n; i++) h[i * n + i] += reg;
  return tensor('f64', [n, n], h);
}

const w = structuredWeight(64, 64, 11);
const h = hessianFrom(64, 4, 13, 0);
const seeds = [0, 1, 2, 3, 4, 5, 6, 7];
const round = (x) => Number(x.toFixed(4));
const lines = [
  {
    kind: 'meta',
    what: "caldera's error against the undamped H, undamped and damped, on caldera-options.test.ts's singular-H problem",
    command: `node docs/scripts/measure-damping-seeds.mjs${process.argv.includes('--stdout') ? ' --stdout' : ''}`,
    date: new Date().toISOString(),
  },
];
for (const [rank, qBits, damping] of [
  [8, 0, 0.01],
  [16, 0, 0.01],
  [16, 2, 0.01],
  [32, 0, 0.01],
  [32, 2, 0.01],
  [16, 0, 0.001],
  [16, 2, 0.001],
]) {
  const none = seeds.map((seed) => caldera(w, h, { rank, qBits, seed }).error);
  const damped = seeds.map((seed) => caldera(w, h, { rank, qBits, seed, damping }).error);
  const mean = (a) => a.reduce((s, v) => s + v, 0) / a.length;
  lines.push({
    kind: 'case',
    rank,
    qBits,
    damping,
    undamped: none.map(round),
    damped: damped.map(round),
    meanUndamped: round(mean(none)),
    meanDamped: round(mean(damped)),
    dampedLowerIn: damped.filter((v, i) => v < none[i]).length,
  });
}
const text = lines.map((l) => JSON.stringify(l)).join('\n') + '\n';
if (process.argv.includes('--stdout')) process.stdout.write(text);
else writeFileSync(fileURLToPath(new URL('../data/damping-seeds.jsonl', import.meta.url)), text);
