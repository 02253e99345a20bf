import { CalderaError, Rng, sampleToken, throwIfAborted, type GenerateOptions } from '@caldera/core';
import type { WebGpuModel } from './model.js';

export type { GenerateOptions } from '@caldera/core';

/**
 * Generate token ids after `prompt`, one at a time, on the GPU. The model's KV cache is reset first. Greedy decoding
 * reads back 4 bytes per token (the GPU argmax); sampling reads back the logits and samples on the CPU exactly as
 * runtime-node does (same Rng, same order of operations), so the same logits give the same tokens.
 */
export async function* generate(
  model: WebGpuModel,
  prompt: ArrayLike<number>,
  options: GenerateOptions = {},
): AsyncGenerator<number> {
  const maxTokens = options.maxTokens ?? 64;
  if (prompt.length === 0) throw new CalderaError('E_VALUE', 'generate: empty prompt');
  if (options.stopStrings?.length && !options.decode)
    throw new CalderaError('E_VALUE', 'generate: stopStrings need a decode function');
  const capacity = Math.min(model.contextLength, prompt.length + maxTokens);
  if (prompt.length > capacity)
    throw new CalderaError(
      'E_VALUE',
      `generate: prompt of ${prompt.length} tokens exceeds the context ${capacity}`,
    );
  model.reset();
  const pen = options.repetitionPenalty ?? 1;
  const greedy = (options.temperature ?? 0) <= 0 && pen === 1;
  const rng = new Rng(options.seed ?? 0);
  const seen = new Set<number>(Array.from(prompt));
  const produced: number[] = [];
  // prefill all but the last prompt token in batches (one pass per model.prefillChunk tokens)
  await model.prefill(Array.from(prompt).slice(0, -1), options.signal ? { signal: options.signal } : {});
  let last = prompt[prompt.length - 1]!;
  // as runtime-node: min(maxTokens, capacity − prompt length) tokens
  for (let n = 0; n < maxTokens && prompt.length + n < capacity; n++) {
    throwIfAborted(options.signal, 'generate');
    let next: number;
    if (greedy) next = await model.step(last, 'argmax');
    else {
      const l = Float64Array.from(await model.step(last, 'logits'));
      if (pen !== 1) for (const s of seen) l[s] = l[s]! > 0 ? l[s]! / pen : l[s]! * pen;
      next = sampleToken(l, options, rng);
    }
    produced.push(next);
    if (options.stopStrings?.length) {
      const text = options.decode!(produced);
      if (options.stopStrings.some((st) => st.length > 0 && text.includes(st))) return;
    }
    yield next;
    if (options.stopTokens?.includes(next)) return;
    seen.add(next);
    last = next;
  }
}

/** The shared sampler of the runtimes (`sampleToken` from `@caldera/core`). */
export const sample = sampleToken;

/** Result of {@link perplexity}: the same shape as runtime-node's (`nll` is the mean per scored token). */
export interface PerplexityResult {
  tokens: number;
  nll: number;
  ppl: number;
}

/**
 * Perplexity of `tokens`: every token after the first is scored given all tokens before it (one window, so at most
 * `contextLength` tokens), in batches of `model.prefillChunk` tokens from position 0 (the cache is reset).
 */
export async function perplexity(
  model: WebGpuModel,
  tokens: ArrayLike<number>,
  options: { signal?: AbortSignal } = {},
): Promise<PerplexityResult> {
  if (tokens.length < 2) throw new CalderaError('E_VALUE', 'perplexity: needs at least 2 tokens');
  if (tokens.length > model.contextLength)
    throw new CalderaError(
      'E_VALUE',
      `perplexity: ${tokens.length} tokens exceed the context ${model.contextLength}`,
    );
  model.reset();
  let nll = 0;
  const V = model.config.vocabSize;
  const inputs = Array.from(tokens).slice(0, -1);
  for (let t0 = 0; t0 < inputs.length; t0 += model.prefillChunk) {
    throwIfAborted(options.signal, 'perplexity');
    const batch = inputs.slice(t0, t0 + model.prefillChunk);
    const all = await model.stepBatch(batch, 'all');
    for (let r = 0; r < batch.length; r++) {
      const l = all.subarray(r * V, r * V + V);
      let mx = -Infinity;
      for (let i = 0; i < V; i++) if (l[i]! > mx) mx = l[i]!;
      let s = 0;
      for (let i = 0; i < V; i++) s += Math.exp(l[i]! - mx);
      nll += mx + Math.log(s) - l[tokens[t0 + r + 1]!]!;
    }
  }
  const n = tokens.length - 1;
  return { tokens: n, nll: nll / n, ppl: Math.exp(nll / n) };
}
