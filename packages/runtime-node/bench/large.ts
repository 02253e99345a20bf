/**
 * Decode of a TinyLlama-1.1B-shaped CALDERA model with random weights (hidden 2048, MLP 5632, 22 layers, 32/4 heads,
 * vocab 32000 tied f16; rank 64, 2-bit E8P Q, 4-bit lattice L/R): tokens/s on the calling thread and with a decode
 * pool of 2 threads (and of the machine's parallelism when that is more). Run by `bench/run.ts --large` in its own
 * process (≈ 1.2 GB while the two copies of the model are alive); JSON Lines on stdout.
 */
import { availableParallelism } from 'node:os';
import { f32ArrayToF16, Rng, tensor } from '@caldera/core';
import { randomDecomposition } from '@caldera/lowrank';
import {
  CalderaLinear,
  createDecodePool,
  DenseF16Linear,
  KernelArenas,
  LlamaModel,
  parseModelConfig,
} from '../src/index.js';
import { blocksOf, decodeRate, onDecodePool, TINYLLAMA_CONFIG } from './decode.js';
import { emit } from './emit.js';

const cfg = parseModelConfig(TINYLLAMA_CONFIG);
const RANK = 64;
const TOKENS = 8;

const { hiddenSize: d, intermediateSize: I, vocabSize: V, numHeads: H, numKvHeads: KV, headDim: hd } = cfg;
const rng = new Rng(11);
// the blocks' layers in one model's kernel arenas, as the loaders build them
const arenas = new KernelArenas();
const lin = (m: number, n: number) =>
  new CalderaLinear(randomDecomposition(m, n, RANK, rng), null, { arenas });
const blocks = blocksOf(cfg, lin);
const head = new DenseF16Linear(f32ArrayToF16(rng.fillNormal(new Float32Array(V * d), 0, 0.02)), V, d);
const model = new LlamaModel(cfg, {
  embed: tensor('f16', [V, d], head.bits),
  blocks,
  norm: new Float32Array(d).fill(1),
  head,
});
const prompt = [1, 450, 4272, 338];
const params = cfg.numLayers * (d * hd * (2 * H + 2 * KV) + 3 * d * I) + V * d;
const shape = {
  params,
  hidden: d,
  layers: cfg.numLayers,
  vocab: V,
  rank: RANK,
  prompt: prompt.length,
  decode: TOKENS,
};
const one = decodeRate(model, prompt, TOKENS);
emit('decode_caldera_1b', one, 'tokens/s', {}, shape);
for (const threads of [...new Set([2, Math.min(16, availableParallelism())])]) {
  if (threads < 2) continue;
  const decodePool = await createDecodePool({ threads });
  const rate = decodeRate(onDecodePool(model, decodePool), prompt, TOKENS);
  decodePool.dispose();
  emit(
    `decode_caldera_1b_${threads}threads`,
    rate,
    'tokens/s',
    { oneThread: one, speedupVs1Thread: rate / one },
    shape,
  );
}
