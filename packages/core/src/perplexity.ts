/**
 * The shared scoring of the runtimes' `perplexity`: which windows of a text run and which of their positions are
 * scored, and the negative log-likelihood of one token from a row of logits.
 */

/** One window of a windowed perplexity: tokens `[start, end)` run from an empty cache, positions `[from, end)` scored. */
export interface PerplexityWindow {
  start: number;
  end: number;
  from: number;
}

/**
 * The windows of `context` tokens moved by `stride` over a text of `length` tokens (stride in (0, context], checked
 * by the caller). No position is scored twice; each gets as much left context as its window allows. With overlapping
 * windows every position after the first is scored; with `stride = context` the first position of each later window,
 * which has no left context in it, is not.
 */
export function* perplexityWindows(
  length: number,
  context: number,
  stride: number,
): Generator<PerplexityWindow> {
  let scoredUpTo = 0; // positions [1, scoredUpTo) already scored
  for (let start = 0; scoredUpTo < length; start += stride) {
    const end = Math.min(length, start + context);
    yield { start, end, from: Math.max(scoredUpTo, start + 1) };
    scoredUpTo = end;
    if (end === length) break;
  }
}

/** `−log softmax(logits)[target]` of the row of `vocab` logits at `offset`, computed stably (max subtracted). */
export function tokenNll(logits: ArrayLike<number>, offset: number, vocab: number, target: number): number {
  let mx = -Infinity;
  for (let v = 0; v < vocab; v++) mx = Math.max(mx, logits[offset + v]!);
  let se = 0;
  for (let v = 0; v < vocab; v++) se += Math.exp(logits[offset + v]! - mx);
  return Math.log(se) + mx - logits[offset + target]!;
}
