import { CalderaError, Rng, throwIfAborted } from '@caldera/core';
import { KVCache, type LlamaModel } from './model.js';

/** Options of {@link generate}. Defaults: greedy decoding of up to 64 tokens. */
export interface GenerateOptions {
  /** Most tokens to generate. Default 64 (also bounded by the model's `maxPositions`). */
  maxTokens?: number;
  /** Softmax temperature; 0 = greedy (default). */
  temperature?: number;
  /** Sample only among the k most likely tokens; 0 = all (default). */
  topK?: number;
  /** Nucleus sampling: smallest set of tokens with cumulative probability ≥ p; 1 = all (default). */
  topP?: number;
  /** > 1 discourages tokens already in the context (CTRL-style: positive logits divided, negative multiplied). Default 1. */
  repetitionPenalty?: number;
  /** Token ids that end generation (e.g. EOS); the stop token is yielded. Default none. */
  stopTokens?: number[];
  /**
   * Strings that end generation: when the decoded completion contains one, generation stops and the token that
   * completed it is not yielded. Needs `decode`. Default none.
   */
  stopStrings?: string[];
  /** Text of generated ids, for `stopStrings`. */
  decode?: (ids: number[]) => string;
  /** Seed of the sampler (deterministic given the seed). Default 0. */
  seed?: number;
  /** Abort: the iterator throws `E_ABORTED` before the next token. */
  signal?: AbortSignal;
}

/** Generate token ids after `prompt`, one at a time, with a KV cache. */
export async function* generate(
  model: LlamaModel,
  prompt: ArrayLike<number>,
  options: GenerateOptions = {},
): AsyncGenerator<number> {
  const maxTokens = options.maxTokens ?? 64;
  if (prompt.length === 0) throw new CalderaError('E_VALUE', 'generate: empty prompt');
  if (options.stopStrings?.length && !options.decode)
    throw new CalderaError('E_VALUE', 'generate: stopStrings need a decode function');
  const produced: number[] = [];
  const capacity = Math.min(model.config.maxPositions, prompt.length + maxTokens);
  const cache = new KVCache(model.config, capacity);
  const rng = new Rng(options.seed ?? 0);
  const V = model.config.vocabSize;
  const seen = new Set<number>(Array.from(prompt));
  let logits = model.forward(prompt, cache);
  let row = prompt.length - 1;
  for (let n = 0; n < maxTokens && cache.length < capacity; n++) {
    throwIfAborted(options.signal, 'generate');
    const l = Float64Array.from(logits.subarray(row * V, row * V + V));
    const pen = options.repetitionPenalty ?? 1;
    if (pen !== 1) for (const t of seen) l[t] = l[t]! > 0 ? l[t]! / pen : l[t]! * pen;
    const next = sample(l, options, rng);
    produced.push(next);
    if (options.stopStrings?.length) {
      const text = options.decode!(produced);
      if (options.stopStrings.some((st) => st.length > 0 && text.includes(st))) return;
    }
    yield next;
    if (options.stopTokens?.includes(next)) return;
    seen.add(next);
    logits = model.forward([next], cache);
    row = 0;
  }
}

function sample(l: Float64Array, o: GenerateOptions, rng: Rng): number {
  const temp = o.temperature ?? 0;
  let best = 0;
  for (let i = 1; i < l.length; i++) if (l[i]! > l[best]!) best = i;
  if (temp <= 0) return best;
  let idx = [...l.keys()].sort((a, b) => l[b]! - l[a]!);
  if (o.topK && o.topK > 0) idx = idx.slice(0, o.topK);
  const mx = l[idx[0]!]!;
  let probs = idx.map((i) => Math.exp((l[i]! - mx) / temp));
  const z = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / z);
  if (o.topP && o.topP < 1) {
    let acc = 0;
    let cut = probs.length;
    for (let i = 0; i < probs.length; i++) {
      acc += probs[i]!;
      if (acc >= o.topP) {
        cut = i + 1;
        break;
      }
    }
    idx = idx.slice(0, cut);
    probs = probs.slice(0, cut);
    const z2 = probs.reduce((a, b) => a + b, 0);
    probs = probs.map((p) => p / z2);
  }
  let u = rng.uniform();
  for (let i = 0; i < probs.length; i++) {
    u -= probs[i]!;
    if (u <= 0) return idx[i]!;
  }
  return idx[idx.length - 1]!;
}
