import {
  checkPerplexityArgs,
  perplexityWindows,
  throwIfAborted,
  type PerplexityOptions,
  type PerplexityResult,
} from '@caldera/core';
import type { LlamaModel } from './model.js';
import { checkModelArgument } from './model-argument.js';
import { nextTurn } from './next-turn.js';
import { modelPerplexityLimit } from './perplexity-limit.js';
import { addWindowNll, type ScoreScratch } from './score.js';

/** The options and result of {@link perplexity}, shared with runtime-webgpu (they live in `@caldera/core`). */
export type { PerplexityOptions, PerplexityResult } from '@caldera/core';

/**
 * Perplexity of `ids` with windows of `context` tokens moved by `stride` (default: non-overlapping). No token is scored
 * twice, each with as much left context as its window allows. With overlapping windows (`stride < context`) every
 * token after the first of the text is scored; with non-overlapping ones the first token of each later window, which
 * has no left context in it, is not. `context` (default 128, or the model's `maxPositions` when smaller) must be an
 * integer in [2, maxPositions], `stride` an integer in [1, context], and `ids` an array of at least 2 token ids:
 * a rejection with `E_VALUE` otherwise (`checkPerplexityArgs` of `@caldera/core`, shared with runtime-webgpu). A null
 * `options` counts as none.
 *
 * Each window's forward pass blocks the thread, so before each window the event loop turns once (`nextTurn`): timers,
 * I/O and signal handlers run between windows, and a `signal` they abort rejects with `E_ABORTED` before the next
 * window. `onProgress({ done, total })` is called after each window: `done` the end of the window in tokens of the
 * text (counting its first token), `total` the text's length. The numbers are those of a synchronous loop, bit for
 * bit: the yields change only when the windows run. `ids` and the model are read while it runs: change neither until
 * it settles.
 */
export async function perplexity(
  model: LlamaModel,
  ids: ArrayLike<number>,
  options: PerplexityOptions = {},
): Promise<PerplexityResult> {
  checkModelArgument(model, 'perplexity');
  const { context, stride } = checkPerplexityArgs(ids, options, modelPerplexityLimit(model.config));
  const scratch: ScoreScratch = {}; // one array for the logits of every window's batches
  let nll = 0;
  let count = 0;
  for (const window of perplexityWindows(ids.length, context, stride)) {
    const { start, end, from } = window;
    await nextTurn();
    throwIfAborted(options?.signal, 'perplexity');
    const x = model.hidden(Array.from({ length: end - start }, (_, i) => ids[start + i]!));
    nll = addWindowNll(nll, model, x, ids, window, scratch);
    count += end - from;
    options?.onProgress?.({ done: end, total: ids.length });
  }
  return { tokens: count, nll: nll / count, ppl: Math.exp(nll / count) };
}
