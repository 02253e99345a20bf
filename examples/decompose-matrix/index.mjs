// Decompose one weight matrix with CALDERA (W ≈ Q + L·R) against a calibration Hessian, and compare it with the
// baselines at about the same or fewer bits: round-to-nearest on the E8P lattice and LDLQ alone (QuIP#-style).
//
// The matrix and the activations are synthetic but shaped like real ones: a heavy-tailed spectrum, outlier input
// channels, and activations whose channels are correlated and unequally scaled. Usage:
//   node index.mjs [--m 512] [--n 512] [--seed 0] [--json]
/* global process, console, performance */
import { parseArgs } from 'node:util';
import { createPool } from '@caldera/linalg';
import { caldera } from '@caldera/lowrank';
import { syntheticProblem } from './synthetic.mjs';

const USAGE = 'usage: node index.mjs [--m 512] [--n 512] [--seed 0] [--json]';
const usageError = (message) => {
  console.error(message ? `${message}\n${USAGE}` : USAGE);
  process.exit(2);
};
// `--name value` or `--name=value` (util.parseArgs); the largest rank in the table (64) needs m, n ≥ 64
const rules = {
  m: { min: 64, max: Infinity, what: 'an integer ≥ 64 (the largest rank compared is 64)' },
  n: { min: 64, max: Infinity, what: 'an integer ≥ 64 (the largest rank compared is 64)' },
  seed: { min: 0, max: 0xffffffff, what: 'an integer in [0, 4294967295]' },
};
let parsed;
try {
  parsed = parseArgs({
    args: process.argv.slice(2),
    options: {
      m: { type: 'string' },
      n: { type: 'string' },
      seed: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
} catch (e) {
  usageError(e.message); // e.g. `--m -5`: parseArgs takes '-5' for an option (write --m=-5)
}
if (parsed.values.help) {
  console.log(USAGE); // asked for: on stdout, exit 0 (as `caldera --help`)
  process.exit(0);
}
const json = parsed.values.json === true;
const values = {};
for (const [name, { min, max, what }] of Object.entries(rules)) {
  const text = parsed.values[name];
  if (text === undefined) continue;
  const v = Number(text);
  if (text.trim() === '' || !Number.isSafeInteger(v) || v < min || v > max)
    usageError(`--${name} must be ${what}, got '${text}'`);
  values[name] = v;
}
const { m = 512, n = 512, seed = 0 } = values;

const pool = createPool({ threads: 2 });
const { W, H, N } = syntheticProblem(m, n, seed, pool);

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
