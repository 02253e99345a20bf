import { CalderaError, Rng, sampleToken, throwIfAborted, type GenerateOptions } from '@caldera/core';
import { KVCache, type LlamaModel } from './model.js';

export type { GenerateOptions } from '@caldera/core';

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
  let logits = model.forward(prompt, cache, { last: true });
  for (let n = 0; n < maxTokens && cache.length < capacity; n++) {
    throwIfAborted(options.signal, 'generate');
    const l = Float64Array.from(logits.subarray(0, V));
    const pen = options.repetitionPenalty ?? 1;
    if (pen !== 1) for (const t of seen) l[t] = l[t]! > 0 ? l[t]! / pen : l[t]! * pen;
    const next = sampleToken(l, options, rng);
    produced.push(next);
    if (options.stopStrings?.length) {
      const text = options.decode!(produced);
      if (options.stopStrings.some((st) => st.length > 0 && text.includes(st))) return;
    }
    yield next;
    if (options.stopTokens?.includes(next)) return;
    seen.add(next);
    logits = model.forward([next], cache);
  }
}
