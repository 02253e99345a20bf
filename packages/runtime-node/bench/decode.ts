/** Model building and decode measurements shared by the benchmark's cases (bench/run.ts, bench/large.ts). */
import {
  CalderaLinear,
  DenseF16Linear,
  DenseLinear,
  KernelArenas,
  KVCache,
  LlamaModel,
  type BlockWeights,
  type DecodePool,
  type DenseLinearOptions,
  type Linear,
  type ModelConfig,
} from '../src/index.js';

/**
 * `config.json` of a TinyLlama-1.1B-shaped model (hidden 2048, MLP 5632, 22 layers, 32/4 heads, vocab 32000 tied): the
 * large decode cases' shape (bench/large.ts in Node, bench/browser.ts with `--large` in Chromium).
 */
export const TINYLLAMA_CONFIG = {
  architectures: ['LlamaForCausalLM'],
  hidden_size: 2048,
  intermediate_size: 5632,
  num_hidden_layers: 22,
  num_attention_heads: 32,
  num_key_value_heads: 4,
  vocab_size: 32000,
  tie_word_embeddings: true,
};

/** `cfg.numLayers` transformer blocks whose seven linear layers `lin(m, n)` makes (norms of ones). */
export function blocksOf(cfg: ModelConfig, lin: (m: number, n: number) => Linear): BlockWeights[] {
  const { hiddenSize: d, intermediateSize: I, numHeads: H, numKvHeads: KV, headDim: hd } = cfg;
  return Array.from({ length: cfg.numLayers }, () => ({
    inputNorm: new Float32Array(d).fill(1),
    postAttnNorm: new Float32Array(d).fill(1),
    q: lin(H * hd, d),
    k: lin(KV * hd, d),
    v: lin(KV * hd, d),
    o: lin(d, H * hd),
    gate: lin(I, d),
    up: lin(I, d),
    down: lin(d, I),
  }));
}

/**
 * Greedy decode tokens/s after `prompt`, as generate() runs it: best of 3 runs of `tokens` tokens after a warm-up run
 * (JIT, a decode pool's workers taking their layers), each on a fresh cache.
 */
export function decodeRate(model: LlamaModel, prompt: number[], tokens: number): number {
  const { config } = model;
  let best = Infinity;
  for (let rep = 0; rep < 4; rep++) {
    const cache = new KVCache(config, prompt.length + tokens + 1);
    let logits = model.forward(prompt, cache, { last: true }); // as generate() prefills: logits of the last position
    const t = performance.now();
    for (let i = 0; i < tokens; i++) {
      let next = 0;
      for (let v = 1; v < config.vocabSize; v++) if (logits[v]! > logits[next]!) next = v;
      logits = model.forward([next], cache);
    }
    if (rep > 0) best = Math.min(best, performance.now() - t);
  }
  return tokens / (best / 1000);
}

/**
 * The same weights with every linear layer and the LM head rebuilt on `decodePool` (their rows split over its
 * threads), the blocks' layers in one model's kernel arenas and the head in memories of its own, as the loaders build
 * them.
 */
export function onDecodePool(model: LlamaModel, decodePool: DecodePool): LlamaModel {
  const w = model.weights;
  const arenas = new KernelArenas({ threads: decodePool.threads });
  const split = (l: Linear, options: DenseLinearOptions = { decodePool, arenas }): Linear => {
    if (l instanceof CalderaLinear) return new CalderaLinear(l.d, l.bias, options);
    if (l instanceof DenseF16Linear)
      return new DenseF16Linear(l.bits, l.outFeatures, l.inFeatures, l.bias, l.format, options);
    if (l instanceof DenseLinear) return new DenseLinear(l.weight, l.bias, options);
    throw new Error('bench: unknown layer');
  };
  const blocks = w.blocks.map((b) => ({
    ...b,
    q: split(b.q),
    k: split(b.k),
    v: split(b.v),
    o: split(b.o),
    gate: split(b.gate),
    up: split(b.up),
    down: split(b.down),
  }));
  const head = w.head ? split(w.head, { decodePool }) : new DenseLinear(w.lmHead!, null, { decodePool });
  return new LlamaModel(model.config, { embed: w.embed, blocks, norm: w.norm, head });
}

/** Milliseconds per single-row product of `layer` on `x`: the best of `reps` runs of 200 calls. */
export function bestRowMs(layer: Linear, x: Float32Array, reps: number): number {
  let ms = Infinity;
  for (let rep = 0; rep < reps; rep++) {
    const t = performance.now();
    for (let i = 0; i < 200; i++) layer.forward(x, 1);
    ms = Math.min(ms, (performance.now() - t) / 200);
  }
  return ms;
}
