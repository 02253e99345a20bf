import { CalderaError, GenerationRules, throwIfAborted, type GenerateOptions } from '@caldera/core';
import { KVCache, type LlamaModel } from './model.js';

export type { GenerateOptions } from '@caldera/core';

/** Generate token ids after `prompt`, one at a time, with a KV cache. */
export async function* generate(
  model: LlamaModel,
  prompt: ArrayLike<number>,
  options: GenerateOptions = {},
): AsyncGenerator<number> {
  const rules = new GenerationRules(prompt, options);
  if (prompt.length > model.config.maxPositions)
    throw new CalderaError(
      'E_VALUE',
      `generate: prompt of ${prompt.length} tokens exceeds the model's context of ${model.config.maxPositions}`,
    );
  const capacity = Math.min(model.config.maxPositions, prompt.length + rules.maxTokens);
  const cache = new KVCache(model.config, capacity);
  const V = model.config.vocabSize;
  let logits = model.forward(prompt, cache, { last: true });
  for (let n = 0; n < rules.maxTokens && cache.length < capacity; n++) {
    throwIfAborted(options.signal, 'generate');
    const next = rules.pick(logits.subarray(0, V));
    const verdict = rules.accept(next);
    if (verdict === 'stop') return;
    yield next;
    if (verdict === 'last') return;
    logits = model.forward([next], cache);
  }
}
