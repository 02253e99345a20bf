import { checkWindowNll, tokenNll } from '@caldera/core';
import type { LlamaModel } from './model.js';

/**
 * How {@link addWindowNll} batches a window: logits of about `rows` rows at a time, never fewer than `min` rows (above
 * the row counts at which a layer switches from its per-row kernel to its batch product: 4 for dense layers, 20 for
 * CALDERA ones, so that every batch takes the path the whole window took), and a window whose whole logits are at most
 * `wholeFloats` values (4 MiB of f32: a small vocabulary or a short window) scored whole.
 */
export const SCORE_BATCH = { rows: 64, min: 32, wholeFloats: 2 ** 20 } as const;

/** An array for the logits of one batch, kept by the caller across windows ({@link addWindowNll}). */
export interface ScoreScratch {
  logits?: Float32Array;
}

/** What {@link addWindowNll} needs of a model: its sizes, and its final norm and LM head (`LlamaModel.logits`). */
export type ScoringModel = Pick<LlamaModel, 'config' | 'logits'>;

/**
 * `nll` plus the negative log-likelihoods of tokens `ids[from … end)`, added one by one in that order, for the window
 * `{ start, end, from }` (as `perplexityWindows` gives it) whose final hidden states are `x` (`[end − start, hidden]`).
 * The same number as taking the logits of the whole window at once (`model.logits`): the norm works row by row, and
 * the head's product of a row does not depend on the other rows of its batch as long as the batch takes the same path
 * (every batch has at least 32 rows and a 32768-word vocabulary or more). Only the rows that predict a scored token
 * are computed, about 64 at a time (`batch`: tests use smaller ones): a window's whole logits are `rows × vocab` floats
 * (50 MB for 255 rows of a 49152-word vocabulary), and a fresh array of that size per window costs more in page
 * faults than the product itself on some machines: with `scratch`, one array (grown when needed) holds every batch's
 * logits, across the windows of a text. `E_VALUE` when the sum is NaN (core's `checkWindowNll`: the model's logits are
 * NaN).
 */
export function addWindowNll(
  nll: number,
  model: ScoringModel,
  x: Float32Array,
  ids: ArrayLike<number>,
  window: { start: number; end: number; from: number },
  scratch?: ScoreScratch,
  batch: { rows: number; min: number; wholeFloats: number } = SCORE_BATCH,
): number {
  const { start, end, from } = window;
  const { vocabSize: vocab, hiddenSize: d } = model.config;
  const rows = end - start;
  if (rows < batch.min || rows * vocab <= batch.wholeFloats) {
    const logits = model.logits(x, rows);
    for (let p = from; p < end; p++) nll += tokenNll(logits, (p - start - 1) * vocab, vocab, ids[p]!);
    checkWindowNll(nll, window);
    return nll;
  }
  // rows first … last predict tokens from … end − 1
  const first = from - start - 1;
  const last = rows - 2;
  for (let r0 = first; r0 <= last;) {
    let r1 = Math.min(last + 1, r0 + batch.rows);
    // a short tail joins this batch rather than forming one of its own
    if (last + 1 - r1 < batch.min) r1 = last + 1;
    // the batch [b0, b1): rows r0 … r1 − 1, widened within the window to the minimum (extra rows computed, not scored)
    let b0 = r0;
    let b1 = r1;
    if (b1 - b0 < batch.min) {
      b0 = Math.max(0, b1 - batch.min);
      b1 = Math.min(rows, b0 + batch.min);
    }
    const size = (b1 - b0) * vocab;
    if (scratch && (scratch.logits?.length ?? 0) < size)
      scratch.logits = new Float32Array(Math.max(size, (batch.rows + batch.min) * vocab));
    const logits = model.logits(x.subarray(b0 * d, b1 * d), b1 - b0, scratch?.logits);
    for (let r = r0; r < r1; r++) nll += tokenNll(logits, (r - b0) * vocab, vocab, ids[start + r + 1]!);
    r0 = r1;
  }
  checkWindowNll(nll, window);
  return nll;
}
