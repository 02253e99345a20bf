// Error vs rank for one weight matrix: CALDERA (Q 2-bit E8P12 + L·R 4-bit) at ranks 0…128 on the synthetic
// structured weight and correlated calibration Hessian of examples/decompose-matrix, plus the RTN and LDLQ-only
// baselines. Writes JSON Lines (first line: how the data was produced) to docs/data/rank-sweep.jsonl (the figures'
// data) with the default settings, else (other settings, or --stdout) to stdout: a run on another shape does not
// replace the 512 × 512 data the figures are drawn from. Uses the built packages: run
// `npx turbo run build --filter=@caldera/lowrank...` first.
//   node docs/scripts/measure-rank-sweep.mjs [--m 512] [--n 512] [--seed 0] [--ranks 0,8,16,32,64,128] [--stdout]
/* global process, console, performance, URL */
import { writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { createPool } from '@caldera/linalg';
import { caldera } from '@caldera/lowrank';
import { syntheticProblem } from '../../examples/decompose-matrix/synthetic.mjs';

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
};
const m = Number(opt('m', 512));
const n = Number(opt('n', 512));
const seed = Number(opt('seed', 0));
const ranks = String(opt('ranks', '0,8,16,32,64,128')).split(',').map(Number);
// the figures' data is the default problem's: any other shape, seed or ranks goes to stdout
const figureData = m === 512 && n === 512 && seed === 0 && ranks.join() === '0,8,16,32,64,128';
const toStdout = args.includes('--stdout') || !figureData;

const pool = createPool({ threads: 2 });
const { W, H, N } = syntheticProblem(m, n, seed, pool);

const runs = [{ method: 'rtn', rank: 0, options: { rank: 0, dataAwareQ: false } }];
for (const rank of ranks) runs.push({ method: rank === 0 ? 'ldlq' : 'caldera', rank, options: { rank } });

const lines = [
  {
    kind: 'meta',
    what: 'activation-aware error ‖(Ŵ − W)·H^½‖_F / ‖W·H^½‖_F vs rank k, one synthetic matrix',
    command:
      `node docs/scripts/measure-rank-sweep.mjs ${args.filter((a) => a !== '--stdout').join(' ')}`.trim(),
    shape: [m, n],
    calibrationRows: N,
    seed,
    qBits: 2,
    lrBits: 4,
    date: new Date().toISOString(),
    node: process.version,
    cpu: `${cpus().length} × ${cpus()[0]?.model ?? 'unknown'}`,
  },
];
for (const r of runs) {
  const t0 = performance.now();
  const d = caldera(W, H, { ...r.options, seed, pool });
  const line = {
    kind: 'point',
    method: r.method,
    rank: r.rank,
    paperBitsPerWeight: Number(d.paperBitsPerWeight.toFixed(4)),
    storedBitsPerWeight: Number(d.bitsPerWeight.toFixed(4)),
    error: Number(d.error.toFixed(5)),
    seconds: Number(((performance.now() - t0) / 1000).toFixed(2)),
  };
  console.error(JSON.stringify(line));
  lines.push(line);
}
pool.dispose();
const text = lines.map((l) => JSON.stringify(l)).join('\n') + '\n';
if (toStdout) process.stdout.write(text);
else {
  const file = fileURLToPath(new URL('../data/rank-sweep.jsonl', import.meta.url));
  writeFileSync(file, text);
  console.error(`wrote ${file}`);
}
