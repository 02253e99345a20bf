/**
 * `npm run bench -w @caldera/quant [-- --quick] [-- --filter substring]`: one JSON line per case,
 * `{"case","value","unit","refs","info","targets"}` (scripts/bench-line.ts). `--quick` runs the subset that finishes in
 * under a minute.
 */
import { Worker } from 'node:worker_threads';
import { Rng, tensor, type Tensor } from '@caldera/core';
import { createPool, type Pool } from '@caldera/linalg';
import { E8P_OPT_SCALE, e8pDecode, e8pEncode } from '../src/e8p.js';
import { ldlq, proxyLoss } from '../src/ldlq.js';
import { rvqDecode, rvqEncode } from '../src/rvq.js';
import { uniformQuantizer } from '../src/uniform.js';
import { normalFloatQuantizer } from '../src/normal-float.js';
import { checkBenchArgs } from '../../../scripts/bench-args.js';
import { benchLine, type BenchLine, type BenchRefs } from '../../../scripts/bench-line.js';

/** A case's line (scripts/bench-line.ts): `refs` measured in this run, `targets` the issue's and the papers' numbers. */
interface Result {
  value: number;
  unit: string;
  refs?: BenchRefs;
  info?: BenchLine['info'];
  targets?: BenchLine['targets'];
}
interface Case {
  name: string;
  quick: boolean;
  run(pool: Pool): Promise<Result> | Result;
}

function gaussian(n: number, seed: number): Float32Array {
  return new Rng(seed).fillNormal(new Float32Array(n));
}

function mse(x: Float32Array, y: Float32Array, scale = 1): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += (x[i]! - y[i]! / scale) ** 2;
  return s / x.length;
}

/**
 * Dense, correlated SPD Hessian: `H_ij = d_i d_j ρ^|i−j|` (an AR(1) covariance with unequal channel scales),
 * normalised to mean diagonal 1, plus 1 % damping as calibrate produces it.
 */
function ar1Hessian(n: number, rho: number, seed: number): Tensor<'f64'> {
  const rng = new Rng(seed);
  const d = Float64Array.from({ length: n }, () => Math.exp(0.5 * rng.normal()));
  const h = new Float64Array(n * n);
  let mean = 0;
  for (let i = 0; i < n; i++) mean += (d[i]! * d[i]!) / n;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) h[i * n + j] = (d[i]! * d[j]! * rho ** Math.abs(i - j)) / mean;
    h[i * n + i]! += 0.01;
  }
  return tensor('f64', [n, n], h);
}

function timeIt(f: () => void, reps = 1): number {
  f(); // warm-up (JIT tiers, codebook tables)
  const t = performance.now();
  for (let r = 0; r < reps; r++) f();
  return (performance.now() - t) / 1000 / reps;
}

/** E8P12 encode on `threads` worker threads over a SharedArrayBuffer (each encodes a contiguous slice). */
async function encodeThreaded(x: Float32Array, threads: number, reps: number): Promise<number> {
  const sab = new SharedArrayBuffer(x.byteLength);
  new Float32Array(sab).set(x);
  const src = `
    const { parentPort, workerData } = require('node:worker_threads');
    const q = require(workerData.dist);
    const x = new Float32Array(workerData.sab, workerData.off * 4, workerData.len);
    q.e8pEncode(x); // warm-up
    parentPort.on('message', () => { q.e8pEncode(x); parentPort.postMessage(0); });
    parentPort.postMessage('ready');`;
  const dist = new URL('../dist/index.cjs', import.meta.url).pathname;
  const per = Math.floor(x.length / 8 / threads) * 8;
  const workers = Array.from(
    { length: threads },
    (_, i) =>
      new Worker(src, {
        eval: true,
        workerData: { sab, dist, off: i * per, len: i === threads - 1 ? x.length - i * per : per },
      }),
  );
  const once = (w: Worker) => new Promise((res) => w.once('message', res));
  await Promise.all(workers.map(once));
  const t = performance.now();
  for (let r = 0; r < reps; r++) {
    const done = workers.map(once);
    for (const w of workers) w.postMessage(0);
    await Promise.all(done);
  }
  const dt = (performance.now() - t) / 1000 / reps;
  await Promise.all(workers.map((w) => w.terminate()));
  return x.length / dt;
}

const CASES: Case[] = [
  {
    name: 'e8p_mse_gaussian',
    quick: true,
    run() {
      const x = gaussian(1_000_000, 1);
      const s = x.map((v) => v * E8P_OPT_SCALE);
      return {
        value: mse(x, e8pDecode(e8pEncode(s)), E8P_OPT_SCALE),
        unit: 'MSE/entry',
        targets: { published: 0.091 },
        info: { scale: E8P_OPT_SCALE },
      };
    },
  },
  {
    name: 'e8p_encode_1t',
    quick: true,
    run() {
      const x = gaussian(1 << 21, 2).map((v) => v * E8P_OPT_SCALE);
      const c0 = process.cpuUsage();
      const wall = timeIt(() => e8pEncode(x), 3);
      const c = process.cpuUsage(c0);
      // CPU time of this thread's work (warm-up included) is less sensitive to other jobs on the shared machine
      const cpu = (c.user + c.system) / 1e6 / 4;
      return {
        value: x.length / wall,
        unit: 'weights/s',
        refs: { cpuTimeBased: x.length / cpu },
        targets: { target: 20e6 },
      };
    },
  },
  {
    name: 'e8p_encode_2t',
    quick: true,
    async run() {
      const x = gaussian(1 << 22, 3).map((v) => v * E8P_OPT_SCALE);
      return { value: await encodeThreaded(x, 2, 3), unit: 'weights/s', targets: { target: 20e6 } };
    },
  },
  {
    name: 'rvq4_mse_gaussian',
    quick: false,
    run() {
      const x = gaussian(1 << 18, 4);
      return {
        value: mse(x, rvqDecode(rvqEncode(x, 4), 4)),
        unit: 'MSE/entry',
        targets: { published: 0.0091 },
      };
    },
  },
  {
    name: 'rvq3_mse_gaussian',
    quick: false,
    run() {
      const x = gaussian(1 << 18, 5);
      const s = x.map((v) => v * 0.98);
      return {
        value: mse(x, rvqDecode(rvqEncode(s, 3), 3), 0.98),
        unit: 'MSE/entry',
        targets: { published: 0.0295 },
      };
    },
  },
  {
    name: 'nf4_mse_gaussian_g64',
    quick: false,
    run() {
      const x = tensor('f32', [1024, 1024], gaussian(1 << 20, 6));
      const q = normalFloatQuantizer({ bits: 4, groupSize: 64 });
      return { value: mse(x.data, q.dequantize(q.quantize(x)).data), unit: 'MSE/entry' };
    },
  },
  {
    name: 'uniform4_mse_gaussian_g128',
    quick: false,
    run() {
      const x = tensor('f32', [1024, 1024], gaussian(1 << 20, 7));
      const q = uniformQuantizer({ bits: 4, groupSize: 128, symmetric: false });
      return { value: mse(x.data, q.dequantize(q.quantize(x)).data), unit: 'MSE/entry' };
    },
  },
  {
    name: 'ldlq_n4096_2bit',
    quick: true,
    run(pool) {
      const n = 4096;
      const w = tensor(
        'f32',
        [n, n],
        gaussian(n * n, 8).map((v) => v * E8P_OPT_SCALE),
      );
      const h = ar1Hessian(n, 0.9, 9);
      // the pass as @caldera/lowrank runs it (no proxy-loss diagnostic), then the same pass with the built-in
      // diagnostic, and the loss itself measured afterwards by the standalone proxyLoss()
      let t = performance.now();
      const r = ldlq(w, h, { pool, damping: 0, proxyLoss: false });
      const sec = (performance.now() - t) / 1000;
      t = performance.now();
      const withLoss = ldlq(w, h, { pool, damping: 0 });
      const secWithLoss = (performance.now() - t) / 1000;
      return {
        value: sec,
        unit: 's',
        refs: {
          proxyLoss: proxyLoss(w, r.wHat, h, pool),
          builtInProxyLoss: withLoss.proxyLoss,
          secondsWithProxyLoss: secWithLoss,
        },
        info: { threads: pool.threads },
        targets: { target: 10 },
      };
    },
  },
  {
    name: 'ldlq_tune_pass_n4096',
    quick: false,
    run(pool) {
      const n = 4096;
      const w = tensor(
        'f32',
        [n, n],
        gaussian(n * n, 8).map((v) => v * E8P_OPT_SCALE),
      );
      const h = ar1Hessian(n, 0.9, 9);
      let t = performance.now();
      const r0 = ldlq(w, h, { pool, damping: 0 });
      const base = (performance.now() - t) / 1000;
      t = performance.now();
      const r1 = ldlq(w, h, { pool, damping: 0, tuneIters: 1 });
      const sec = (performance.now() - t) / 1000 - base;
      return {
        value: sec,
        unit: 's/pass',
        refs: { proxyLossLdlq: r0.proxyLoss, proxyLossTuned: r1.proxyLoss },
        info: { threads: pool.threads },
      };
    },
  },
];

function argValue(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

async function main(): Promise<void> {
  checkBenchArgs(
    'usage: npm run bench -w @caldera/quant [-- --quick] [-- --threads N] [-- --filter substring]',
    ['--quick'],
    ['--threads', '--filter'],
  );
  const quick = process.argv.includes('--quick');
  const filter = argValue('--filter');
  const pool = createPool({ threads: Number(argValue('--threads') ?? 2) });
  try {
    for (const c of CASES) {
      if (quick && !c.quick) continue;
      if (filter && !c.name.includes(filter)) continue;
      try {
        const r = await c.run(pool);
        process.stdout.write(benchLine({ case: c.name, ...r }) + '\n');
      } catch (e) {
        // the case's line says what failed, and the run's exit status that one did (it was 0)
        process.stdout.write(benchLine({ case: c.name, value: null, error: String(e) }) + '\n');
        process.exitCode = 1;
      }
    }
  } finally {
    pool.dispose();
  }
}

await main();
