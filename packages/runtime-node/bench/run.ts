/**
 * Runtime benchmark: prefill (one thread, and a 2-thread linalg pool) and decode tokens/s (one thread, and a 2-thread
 * decode pool) of a ~100 M-parameter
 * Llama-shaped model with random weights in f32, f16 and CALDERA (rank 64, 2-bit E8P Q, 4-bit lattice L/R), resident
 * memory, and the measured checkpoint size of a 4096×4096 CALDERA layer vs f16. JSON Lines on stdout. `--quick`: fewer
 * tokens; `--large`: also a TinyLlama-1.1B-shaped CALDERA model's decode on 1 and 2 threads (bench/large.ts);
 * `--browser`: also decode in headless Chromium on 1 and 2 threads (bench/browser.ts; with `--large` too, also the
 * TinyLlama-1.1B-shaped model there).
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { f32ArrayToF16, Rng, tensor } from '@caldera/core';
import { createPool, type Pool } from '@caldera/linalg';
import { randomDecomposition, toCheckpointTensors } from '@caldera/lowrank';
import {
  CalderaLinear,
  createDecodePool,
  DenseF16Linear,
  DenseLinear,
  KernelArenas,
  KVCache,
  LlamaModel,
  parseModelConfig,
  type Linear,
} from '../src/index.js';
import { bestRowMs, blocksOf, decodeRate, onDecodePool } from './decode.js';
import { floors } from './floors.js';
import { emit } from './emit.js';
import { checkBenchArgs } from '../../../scripts/bench-args.js';

checkBenchArgs(
  'usage: npm run bench -w @caldera/runtime-node [-- --quick] [-- --large] [-- --browser]',
  ['--quick', '--large', '--browser'],
  ['--kind'], // (the child processes' own)
);
const quick = process.argv.includes('--quick');
const cfg = parseModelConfig({
  architectures: ['LlamaForCausalLM'],
  hidden_size: 1024,
  intermediate_size: 2816,
  num_hidden_layers: 8,
  num_attention_heads: 16,
  num_key_value_heads: 8,
  vocab_size: 8192,
  tie_word_embeddings: true,
});
const PREFILL = quick ? 16 : 64;
const DECODE = quick ? 6 : 24;
const RANK = 64;

/** Uniform values in ±0.05 (fast LCG: the values only matter for speed). */
function randomF32(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = (s / 4294967296 - 0.5) * 0.1;
  }
  return a;
}

type Kind = 'f32' | 'f16' | 'caldera';

function buildModel(kind: Kind, pool?: Pool): LlamaModel {
  const { hiddenSize: d, vocabSize: V } = cfg;
  const rng = new Rng(7);
  let seed = 1;
  // the blocks' layers in one model's kernel arenas, as the loaders build them
  const arenas = new KernelArenas();
  const lin = (m: number, n: number): Linear => {
    if (kind === 'caldera') return new CalderaLinear(randomDecomposition(m, n, RANK, rng), null, { arenas });
    const w = randomF32(m * n, seed++);
    return kind === 'f16'
      ? new DenseF16Linear(f32ArrayToF16(w), m, n, null, 'f16', { arenas })
      : new DenseLinear(tensor('f32', [m, n], w), null, { arenas });
  };
  const blocks = blocksOf(cfg, lin);
  const embed = tensor('f32', [V, d], randomF32(V * d, 999));
  const norm = new Float32Array(d).fill(1);
  // the tied embedding / LM head stays dense in every format, held as loadModel holds a checkpoint's: f32 for the f32
  // model, otherwise one f16 table (the head's bits, which the embedding lookup reads too)
  if (kind === 'f32')
    return new LlamaModel(cfg, { embed, blocks, norm, lmHead: embed }, pool ? { pool } : {});
  const head = new DenseF16Linear(f32ArrayToF16(embed.data), V, d);
  return new LlamaModel(
    cfg,
    { embed: tensor('f16', [V, d], head.bits), blocks, norm, head },
    pool ? { pool } : {},
  );
}

/**
 * Prefill tokens/s as `generate()` prefills (LM head on the last position): best of 3 runs after a warm-up run (JIT,
 * memory growth of the workspaces, a new pool's workers starting), each on a fresh cache.
 */
function prefillRate(model: LlamaModel, prompt: number[]): number {
  let best = Infinity;
  for (let rep = 0; rep < 4; rep++) {
    const cache = new KVCache(cfg, prompt.length);
    const t = performance.now();
    model.forward(prompt, cache, { last: true });
    if (rep > 0) best = Math.min(best, performance.now() - t);
  }
  return prompt.length / (best / 1000);
}

async function run(kind: Kind): Promise<{
  prefill: number;
  prefill2t: number;
  decode: number;
  decode2t: number;
  rssMB: number;
  linearMB: number;
  weightBytes: number;
}> {
  globalThis.gc?.();
  const rss0 = process.memoryUsage().rss;
  const model = buildModel(kind);
  globalThis.gc?.();
  // growth of the resident set while the model is alive (needs --expose-gc, as `npm run bench` passes)
  const rssMB = (process.memoryUsage().rss - rss0) / 2 ** 20;
  const prompt = Array.from({ length: PREFILL }, (_, i) => (i * 37) % cfg.vocabSize);
  const prefill = prefillRate(model, prompt);
  // the same weights with a 2-thread pool: the batch products split over both cores
  const pool = createPool({ threads: 2 });
  const prefill2t = prefillRate(new LlamaModel(cfg, model.weights, { pool }), prompt);
  pool.dispose();
  const decode = decodeRate(model, prompt, DECODE);
  // with a 2-thread decode pool: every layer's and the head's single-row products split over both cores
  const decodePool = await createDecodePool({ threads: 2 });
  const decode2t = decodeRate(onDecodePool(model, decodePool), prompt, DECODE);
  decodePool.dispose();
  // everything a decode step reads: the linear layers and the LM head (f32 in the f32 model, f16 otherwise)
  const headBytes = cfg.vocabSize * cfg.hiddenSize * (kind === 'f32' ? 4 : 2);
  return {
    prefill,
    prefill2t,
    decode,
    decode2t,
    rssMB,
    linearMB: model.linearBytes() / 2 ** 20,
    weightBytes: model.linearBytes() + headBytes,
  };
}

const params =
  cfg.numLayers *
    (cfg.hiddenSize * cfg.headDim * (2 * cfg.numHeads + 2 * cfg.numKvHeads) +
      3 * cfg.hiddenSize * cfg.intermediateSize) +
  cfg.vocabSize * cfg.hiddenSize;
const shape = {
  params,
  hidden: cfg.hiddenSize,
  layers: cfg.numLayers,
  vocab: cfg.vocabSize,
  prefill: PREFILL,
  decode: DECODE,
};
const only = process.argv.find((a) => a.startsWith('--kind='))?.slice(7) as Kind | undefined;
if (only) {
  // child mode: one model per process, so that its resident memory is measured alone
  console.log(JSON.stringify(await run(only)));
  process.exit(0);
}
const res = {} as Record<Kind, Awaited<ReturnType<typeof run>>>;
for (const kind of ['f32', 'f16', 'caldera'] as Kind[]) {
  const child = spawnSync(
    process.execPath,
    [...process.execArgv, fileURLToPath(import.meta.url), `--kind=${kind}`, ...(quick ? ['--quick'] : [])],
    { encoding: 'utf8' },
  );
  if (child.status !== 0) throw new Error(`bench child ${kind} failed: ${child.stderr}`);
  const r = (res[kind] = JSON.parse(child.stdout.trim().split('\n').pop()!) as Awaited<
    ReturnType<typeof run>
  >);
  if (kind !== 'caldera') {
    emit(`prefill_${kind}`, r.prefill, 'tokens/s', {}, shape);
    emit(`prefill_${kind}_2threads`, r.prefill2t, 'tokens/s', {}, shape);
    emit(`decode_${kind}`, r.decode, 'tokens/s', {}, shape);
    emit(
      `decode_${kind}_2threads`,
      r.decode2t,
      'tokens/s',
      { oneThread: r.decode, speedupVs1Thread: r.decode2t / r.decode },
      shape,
    );
    emit(`rss_${kind}`, r.rssMB, 'MiB', { linearWeightsMiB: r.linearMB });
  }
}
const c = res.caldera;
emit('prefill_caldera', c.prefill, 'tokens/s', { f16: res.f16.prefill, f32: res.f32.prefill }, shape);
emit(
  'prefill_caldera_2threads',
  c.prefill2t,
  'tokens/s',
  { f16: res.f16.prefill2t, f32: res.f32.prefill2t, speedupVs1Thread: c.prefill2t / c.prefill },
  shape,
);
emit(
  'decode_caldera',
  c.decode,
  'tokens/s',
  {
    f16: res.f16.decode,
    f32: res.f32.decode,
    speedupVsF16: c.decode / res.f16.decode,
    speedupVsF32: c.decode / res.f32.decode,
    // weight bytes (at each format's stored size) per second of decode: f32 near the memory bandwidth of one core means
    // dense decode is memory-bound there, while CALDERA's (far fewer bytes) is bound by its table lookups
    streamedGBs_f32: (res.f32.weightBytes * res.f32.decode) / 1e9,
    streamedGBs_f16: (res.f16.weightBytes * res.f16.decode) / 1e9,
    streamedGBs_caldera: (c.weightBytes * c.decode) / 1e9,
  },
  shape,
);
emit(
  'decode_caldera_2threads',
  c.decode2t,
  'tokens/s',
  {
    oneThread: c.decode,
    speedupVs1Thread: c.decode2t / c.decode,
    f16: res.f16.decode2t,
    f32: res.f32.decode2t,
    speedupVsF16: c.decode2t / res.f16.decode2t,
    speedupVsF32: c.decode2t / res.f32.decode2t,
  },
  shape,
);
emit('rss_caldera', c.rssMB, 'MiB', { linearWeightsMiB: c.linearMB });

// One CALDERA layer (the fused kernel) at the model's shapes, one input row: best of 8 × 200 calls, as weights/s; alone
// and with its rows split over a 2-thread decode pool.
{
  const rng = new Rng(5);
  const decodePool = await createDecodePool({ threads: 2 });
  const best = (layer: CalderaLinear, x: Float32Array) => bestRowMs(layer, x, 8);
  const { hiddenSize: d, intermediateSize: I } = cfg;
  for (const [m, n] of [
    [I, d],
    [d, I],
    [d, d],
    [d / 2, d],
  ] as const) {
    const d = randomDecomposition(m, n, RANK, rng);
    const layer = new CalderaLinear(d);
    const x = rng.fillNormal(new Float32Array(n));
    const alone = best(layer, x);
    emit(
      `caldera_layer_${m}x${n}`,
      (m * n) / (alone * 1e6),
      'G weights/s',
      { microseconds: alone * 1000 },
      { fused: layer.fused },
    );
    const split = best(new CalderaLinear(d, null, { decodePool }), x);
    emit(`caldera_layer_${m}x${n}_2threads`, (m * n) / (split * 1e6), 'G weights/s', {
      microseconds: split * 1000,
      oneThreadMicroseconds: alone * 1000,
      speedupVs1Thread: alone / split,
    });
  }
  decodePool.dispose();
}

// The format's real size: bytes of the checkpoint tensors of one 4096×4096 layer at rank 64 vs the f16 weight.
const big = toCheckpointTensors('layer', randomDecomposition(4096, 4096, RANK, new Rng(3))).tensors;
const bytes = Object.values(big).reduce((s, t) => s + t.data.byteLength, 0);
emit('weight_bytes_ratio_4096', bytes / (4096 * 4096 * 2), 'x f16', {
  calderaBytes: bytes,
  f16Bytes: 4096 * 4096 * 2,
});

// floors of E8P decoding in WebAssembly SIMD128 (bench/floors.ts; full runs only: it compiles a module, ≈ 10 s)
if (!quick) await floors(emit);

// a TinyLlama-1.1B-shaped CALDERA model's decode, 1 and 2 threads (`--large` only: ≈ 1 min, 1.2 GB; its own process)
if (process.argv.includes('--large')) {
  const large = spawnSync(
    process.execPath,
    [...process.execArgv, fileURLToPath(new URL('./large.ts', import.meta.url))],
    { encoding: 'utf8', stdio: ['ignore', 'inherit', 'inherit'] },
  );
  if (large.status !== 0) throw new Error('bench: large decode failed');
}

// decode in headless Chromium, on the page's Web Worker and with a 2-thread decode pool of Web Workers (`--browser`
// only: ≈ 30 s; bench/browser.ts, its own process)
if (process.argv.includes('--browser')) {
  const browser = spawnSync(
    process.execPath,
    [
      ...process.execArgv,
      fileURLToPath(new URL('./browser.ts', import.meta.url)),
      ...(quick ? ['--quick'] : []),
      ...(process.argv.includes('--large') ? ['--large'] : []),
    ],
    { encoding: 'utf8', stdio: ['ignore', 'inherit', 'inherit'] },
  );
  if (browser.status !== 0) throw new Error('bench: browser decode failed');
}

// training cases (their own process, so the inference models above are freed); not in --quick, which they took past
// a minute (30 s of the 90 s measured under load)
const train = quick
  ? null
  : spawnSync(
      process.execPath,
      [
        ...process.execArgv,
        fileURLToPath(new URL('./train.ts', import.meta.url)),
        ...(quick ? ['--quick'] : []),
      ],
      { encoding: 'utf8', stdio: ['ignore', 'inherit', 'inherit'] },
    );
if (train && train.status !== 0) throw new Error('training benchmark failed');
