import { checkPerplexityArgs, perplexityWindows, throwIfAborted, tokenNll } from '@caldera/core';
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
 * has no left context in it, is not. `context` (default 128, or the model's `maxPositions` when smaller) must be an
 * integer in [2, maxPositions], `stride` an integer in [1, context], and `ids` an array of at least 2 token ids:
 * `E_VALUE` otherwise (`checkPerplexityArgs` of `@caldera/core`, shared with runtime-webgpu). A null `options` counts
 * as none.
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
  const maxContext = model.config.maxPositions;
  // past max_position_embeddings the model runs on positions it never saw: a number, but not the model's perplexity
  const { context, stride } = checkPerplexityArgs(ids, options, {
    max: maxContext,
    defaultContext: Math.min(128, maxContext),
    what: "the model's max positions: max_position_embeddings, or sliding_window when smaller",
  });
  const V = model.config.vocabSize;
  let nll = 0;
  let count = 0;
  for (const { start, end, from } of perplexityWindows(ids.length, context, stride)) {
    throwIfAborted(options?.signal, 'perplexity');
    const window = Array.from({ length: end - start }, (_, i) => ids[start + i]!);
    const logits = model.forward(window);
    for (let p = from; p < end; p++) {
      nll += tokenNll(logits, (p - start - 1) * V, V, ids[p]!);
      count++;
    }
    options?.onProgress?.(end, ids.length);
  }
  return { tokens: count, nll: nll / count, ppl: Math.exp(nll / count) };
}
