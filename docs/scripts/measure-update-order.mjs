// CALDERA's update order, LR step first (`updateOrder: 'lr-first'`, the default: the authors' code's `update_order`
// ["LR", "Q"]) against Q step first (`'q-first'`, the paper's Algorithm 1), same seeds, on three kinds of problem:
//   synthetic  decompose-matrix's 512 × 512 problem (k = 16, 64; seeds 0, 1, 2) and the 128 × 128 correlated-H problem
//              of the caldera tests (k = 16, 32, 64; seeds 1, 2)
//   layers     the 28 layers of the embedded reference model with the Hessians and ranks of `caldera compress`'s
//              defaults (32 windows × 128 tokens of the train split, 1 % damping, --bits 2.4, compressed propagation,
//              per-layer seeds as the CLI derives them): the run propagates through the default ('lr-first', 4 outer
//              iterations) layers, as `caldera compress` does, and decomposes every layer a second and third time with
//              8 outer iterations in each order
//   ppl        held-out perplexity of the whole model compressed each way (8192 tokens of the test split, context
//              256, as `caldera compress` scores it); the 'lr-first' run is the one of `layers`
// The error after T outer iterations is read off one run of 8: the iterates do not depend on how many follow, and the
// kept one is the best after both parts exist, so the error of `outerIters: T` is the least of the first 2T sub-steps'
// errors but the first (checked: the 'lr-first' prefix of 4 equals the default run's error, bit for bit). Seconds at T
// are the time to the end of iteration T (set-up included). One JSON line per result on stdout, a table on stderr.
// The 'lr-first' model run is `caldera compress` with its defaults: its perplexity, 82.5899353201697 at seed 0, is the
// CLI's report's, bit for bit. Uses the built packages (`npx turbo run build` first).
//   node docs/scripts/measure-update-order.mjs [--parts synthetic,layers,ppl] [--seed 0] [--threads 2]
// docs/data/update-order.jsonl holds the output of the command without options, then of `--parts layers,ppl --seed 1`
// and `--parts ppl --seed 2` (each begins with its meta line).
/* global process, console, performance */
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import {
  allocateRanks,
  compressLayerWithSpec,
  compressModel,
  layerSeed,
  sampleWindows,
} from '@caldera/calibrate';
import { Rng, tensor } from '@caldera/core';
import { createPool } from '@caldera/linalg';
import { caldera } from '@caldera/lowrank';
import { referenceModelDir, referenceTextPath } from '@caldera/reference-model';
import { loadModel, loadTokenizer, ModelRunnerAdapter, perplexity } from '@caldera/runtime-node';
import { syntheticProblem } from '../../examples/decompose-matrix/synthetic.mjs';

const args = process.argv.slice(2);
const at = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
};
const parts = String(at('parts', 'synthetic,layers,ppl')).split(',');
const seed = Number(at('seed', 0));
const threads = Number(at('threads', 2));
const pool = threads > 1 ? createPool({ threads }) : undefined;
const withPool = pool ? { pool } : {};
const ORDERS = ['lr-first', 'q-first'];
const TS = [1, 4, 8];

const emit = (o) => console.log(JSON.stringify(o));
emit({
  kind: 'meta',
  what: "activation-aware error and seconds of caldera's two update orders; perplexity of the reference model",
  command: `node docs/scripts/measure-update-order.mjs ${args.join(' ')}`.trim(),
  date: new Date().toISOString(),
  node: process.version,
  cpu: `${cpus().length} × ${cpus()[0]?.model ?? 'unknown'}`,
  threads,
});

/**
 * `caldera(W, H, { ...options, outerIters: 8, updateOrder })`, and what `outerIters` T ∈ {1, 4, 8} would have kept:
 * error, the iteration it came from, seconds to the end of iteration T.
 */
function ordersRun(w, h, options, updateOrder) {
  const seq = [];
  const t0 = performance.now();
  const d = caldera(w, h, {
    ...options,
    ...withPool,
    outerIters: Math.max(...TS),
    updateOrder,
    onProgress: (p) => seq.push({ it: p.iteration, error: p.error, s: (performance.now() - t0) / 1000 }),
  });
  const at = {};
  for (const T of TS) {
    // the kept iterate: the least error after both parts exist (every sub-step but the first), first one on ties
    let best = 1;
    for (let i = 2; i < 2 * T; i++) if (seq[i].error < seq[best].error) best = i;
    at[T] = { error: seq[best].error, bestIteration: seq[best].it, seconds: seq[2 * T - 1].s };
  }
  if (at[8].error !== d.error) throw new Error(`prefix rule broken: ${at[8].error} vs ${d.error}`);
  return at;
}

const fmt = (x) => x.toFixed(4);
const table = [];
function record(problem, rank, runs) {
  for (const order of ORDERS)
    for (const T of TS) emit({ kind: 'point', ...problem, rank, order, outerIters: T, ...runs[order][T] });
  const row = { ...problem, rank };
  for (const T of TS)
    row[`T=${T} lr / q`] = `${fmt(runs['lr-first'][T].error)} / ${fmt(runs['q-first'][T].error)}`;
  row['s (T=4) lr / q'] =
    `${runs['lr-first'][4].seconds.toFixed(2)} / ${runs['q-first'][4].seconds.toFixed(2)}`;
  row['best it (T=8) lr / q'] = `${runs['lr-first'][8].bestIteration} / ${runs['q-first'][8].bestIteration}`;
  table.push(row);
  console.error(JSON.stringify(row));
}

// ---- synthetic problems
/** caldera.test.ts's structuredWeight (heavy-tailed spectrum, outlier input channels 3 and 17). */
function structuredWeight(m, n, s) {
  const rng = new Rng(s);
  const w = new Float32Array(m * n);
  for (let t = 0; t < 24; t++) {
    const u = rng.fillNormal(new Float32Array(m));
    const v = rng.fillNormal(new Float32Array(n));
    const sv = 3 / (1 + t) ** 1.2;
    for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) w[i * n + j] += (sv * u[i] * v[j]) / Math.sqrt(n);
  }
  for (let i = 0; i < w.length; i++) w[i] += 0.05 * rng.normal();
  for (const j of [3, 17]) for (let i = 0; i < m; i++) w[i * n + j] *= 6;
  return tensor('f32', [m, n], w);
}
/** caldera.test.ts's correlatedHessian (8 shared factors, channel scales 1…7, normalised, 1 % damping). */
function correlatedHessian(n, s) {
  const rng = new Rng(s);
  const N = 3 * n;
  const f = 8;
  const mix = rng.fillNormal(new Float64Array(f * n));
  const x = new Float64Array(N * n);
  for (let r = 0; r < N; r++) {
    const z = Array.from({ length: f }, () => rng.normal());
    for (let j = 0; j < n; j++) {
      let v = 0.2 * rng.normal();
      for (let q = 0; q < f; q++) v += z[q] * mix[q * n + j];
      x[r * n + j] = v * (1 + (j % 7));
    }
  }
  const h = new Float64Array(n * n);
  for (let r = 0; r < N; r++)
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) h[i * n + j] += (x[r * n + i] * x[r * n + j]) / N;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += h[i * n + i] / n;
  for (let i = 0; i < n * n; i++) h[i] /= mean;
  for (let i = 0; i < n; i++) h[i * n + i] += 0.01;
  return tensor('f64', [n, n], h);
}

if (parts.includes('synthetic')) {
  for (const s of [0, 1, 2]) {
    const { W, H } = syntheticProblem(512, 512, s, pool);
    for (const rank of [16, 64]) {
      const runs = Object.fromEntries(ORDERS.map((o) => [o, ordersRun(W, H, { rank, seed: s }, o)]));
      record({ problem: 'decompose-matrix 512x512', seed: s }, rank, runs);
    }
  }
  for (const s of [1, 2]) {
    const W = structuredWeight(128, 128, s);
    const H = correlatedHessian(128, s + 10);
    for (const rank of [16, 32, 64]) {
      const runs = Object.fromEntries(ORDERS.map((o) => [o, ordersRun(W, H, { rank, seed: s }, o)]));
      record({ problem: 'caldera test 128x128', seed: s }, rank, runs);
    }
  }
}

// ---- the reference model, as `caldera compress` (defaults) runs it
const modelDir = referenceModelDir();
/** Token ids of a text split's documents (blank-line separated), each after the BOS token, as the CLI reads them. */
async function documents(split, bos) {
  const tok = await loadTokenizer(modelDir);
  const docs = readFileSync(referenceTextPath(split), 'utf8')
    .replace(/\r\n?/g, '\n')
    .split(/\n\s*\n/)
    .filter((d) => d.trim().length > 0);
  return docs.map((d) => (bos === null ? tok.encode(d) : [bos, ...tok.encode(d)]));
}

/**
 * Compress the reference model with every layer's spec as `caldera compress` makes it, but `updateOrder`; with
 * `measure`, every layer is also decomposed with 8 outer iterations in both orders. Returns the held-out perplexity
 * before and after, and the layers' results.
 */
async function compressRun(updateOrder, measure) {
  const { model, config } = await loadModel(modelDir);
  const runner = new ModelRunnerAdapter(model);
  const bos = config.bosTokenId ?? null;
  const windows = sampleWindows(await documents('train', bos), { count: 32, length: 128, seed });
  const held = (await documents('test', bos)).flat().slice(0, 8192);
  const context = Math.min(256, config.maxPositions);
  const before = (await perplexity(model, held, { context })).ppl;
  const layers = Array.from({ length: runner.numBlocks }, (_, b) => runner.linears(b)).flat();
  const widths = { qBits: 2, lBits: 4, rBits: 4 };
  const budget = allocateRanks(
    layers.map((l) => ({ name: l.name, m: l.outFeatures, n: l.inFeatures })),
    { targetBits: 2.4, ...widths, granularity: 8 },
  );
  const ranks = Object.fromEntries(layers.map((l, i) => [l.name, budget.ranks[i]]));
  const t0 = performance.now();
  const results = await compressModel(runner, windows, {
    propagate: 'compressed',
    ...withPool,
    compressLayer: (w, h, info) => {
      const spec = {
        options: { outerIters: 4, lplrIters: 4, rank: ranks[info.name], ...widths, updateOrder },
        seed: layerSeed(seed, info.name),
      };
      const r = compressLayerWithSpec(w, h, info.name, spec, withPool);
      if (measure) {
        const runs = Object.fromEntries(
          ORDERS.map((o) => [o, ordersRun(w, h, { ...spec.options, seed: spec.seed }, o)]),
        );
        if (runs[updateOrder][4].error !== r.error)
          throw new Error(
            `${info.name}: the prefix of 4 (${runs[updateOrder][4].error}) is not the run's ${r.error}`,
          );
        record(
          { problem: 'reference model', layer: info.name, shape: [info.outFeatures, info.inFeatures], seed },
          spec.options.rank,
          runs,
        );
      }
      return r;
    },
  });
  const seconds = (performance.now() - t0) / 1000;
  const scored = await perplexity(model, held, { context });
  const after = scored.ppl;
  const meanError = results.reduce((a, r) => a + r.error, 0) / results.length;
  const bits =
    results.reduce((a, r, i) => a + r.bitsPerWeight * layers[i].outFeatures * layers[i].inFeatures, 0) /
    layers.reduce((a, l) => a + l.outFeatures * l.inFeatures, 0);
  return { before, after, meanError, bits, seconds, tokens: scored.tokens, context };
}

const ppl = {};
if (parts.includes('layers') || parts.includes('ppl')) {
  const r = await compressRun('lr-first', parts.includes('layers'));
  ppl['lr-first'] = r;
  emit({ kind: 'model', updateOrder: 'lr-first', outerIters: 4, seed, ...r });
  console.error(JSON.stringify({ updateOrder: 'lr-first', ...r }));
}
if (parts.includes('layers')) {
  const rows = table.filter((r) => r.problem === 'reference model');
  const mean = (order, T) => {
    const errs = rows.map((r) => Number(r[`T=${T} lr / q`].split(' / ')[order === 'lr-first' ? 0 : 1]));
    return errs.reduce((a, e) => a + e, 0) / errs.length;
  };
  const wins = (T) =>
    rows.filter((r) => {
      const [lr, q] = r[`T=${T} lr / q`].split(' / ').map(Number);
      return q < lr;
    }).length;
  for (const T of TS) {
    const line = {
      kind: 'layers-mean',
      seed,
      outerIters: T,
      'lr-first': mean('lr-first', T),
      'q-first': mean('q-first', T),
      qFirstBetter: wins(T),
      layers: rows.length,
    };
    emit(line);
    console.error(JSON.stringify(line));
  }
}
if (parts.includes('ppl')) {
  const r = await compressRun('q-first', false);
  ppl['q-first'] = r;
  emit({ kind: 'model', updateOrder: 'q-first', outerIters: 4, seed, ...r });
  console.error(JSON.stringify({ updateOrder: 'q-first', ...r }));
}
pool?.dispose();
console.error('');
new console.Console(process.stderr).table(table);
