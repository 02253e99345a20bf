import { CalderaError, throwIfAborted } from '@caldera/core';
import type { LlamaModel } from './model.js';

/** Result of {@link perplexity}. */
export interface PerplexityResult {
  tokens: number;
  nll: number;
  ppl: number;
}

/**
 * Perplexity of `ids` with windows of `context` tokens moved by `stride` (default: non-overlapping). No token is scored
 * twice, each with as much left context as its window allows. With overlapping windows (`stride < context`) every
 * token after the first of the text is scored; with non-overlapping ones the first token of each later window, which
 * has no left context in it, is not.
 */
export function perplexity(
  model: LlamaModel,
  ids: ArrayLike<number>,
  options: {
    context?: number;
    stride?: number;
    signal?: AbortSignal;
    onProgress?: (done: number, total: number) => void;
  } = {},
): PerplexityResult {
  const context = options.context ?? 128;
  const stride = options.stride ?? context;
  if (stride <= 0 || stride > context)
    throw new CalderaError('E_VALUE', `stride must be in (0, context], got ${stride}`);
  if (ids.length < 2) throw new CalderaError('E_VALUE', 'perplexity needs at least 2 tokens');
  const V = model.config.vocabSize;
  let nll = 0;
  let count = 0;
  let scoredUpTo = 0; // tokens [1, scoredUpTo) already scored
  for (let start = 0; scoredUpTo < ids.length; start += stride) {
    throwIfAborted(options.signal, 'perplexity');
    const end = Math.min(ids.length, start + context);
    const window = Array.from({ length: end - start }, (_, i) => ids[start + i]!);
    const logits = model.forward(window);
    for (let p = Math.max(scoredUpTo, start + 1); p < end; p++) {
      const row = p - start - 1;
      let mx = -Infinity;
      for (let v = 0; v < V; v++) mx = Math.max(mx, logits[row * V + v]!);
      let se = 0;
      for (let v = 0; v < V; v++) se += Math.exp(logits[row * V + v]! - mx);
      nll += Math.log(se) + mx - logits[row * V + ids[p]!]!;
      count++;
    }
    scoredUpTo = end;
    options.onProgress?.(scoredUpTo, ids.length);
    if (end === ids.length) break;
  }
  return { tokens: count, nll: nll / count, ppl: Math.exp(nll / count) };
}
