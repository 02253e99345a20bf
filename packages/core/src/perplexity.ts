/**
 * The shared scoring of the runtimes' `perplexity`: the checks of its arguments, which windows of a text run and
 * which of their positions are scored, and the negative log-likelihood of one token from a row of logits.
 */
import { assertCallbacks, assertNotAbortSignal, CalderaError } from './errors.js';
import { checkTokenArray, checkTokenIds } from './token-ids.js';

/** The window options of the runtimes' `perplexity` (the part {@link checkPerplexityArgs} checks). */
export interface PerplexityWindowOptions {
  /** Tokens per window: an integer in [2, the model's limit]. */
  context?: number;
  /** Start of each window after the previous one: an integer in [1, context]. Default `context` (no overlap). */
  stride?: number;
}

/**
 * Options of `perplexity` in both runtimes (runtime-node's `perplexity(model, ids, options)` and
 * `BlockLazyRunner.perplexity(ids, options)`, runtime-webgpu's `perplexity(model, tokens, options)`). Both runtimes'
 * `perplexity` are async: they let the event loop turn between windows (runtime-node) or GPU batches
 * (runtime-webgpu), so `signal` can be aborted by a timer, an I/O callback or a signal handler while they run.
 */
export interface PerplexityOptions extends PerplexityWindowOptions {
  /**
   * Aborts the scoring: `E_ABORTED` naming `perplexity`, with the signal's reason as its cause. Checked before each
   * window (runtime-node), each batch of a window (runtime-webgpu), each window of each block (`BlockLazyRunner`).
   */
  signal?: AbortSignal;
  /**
   * Called after each window of the text with `done`, the tokens of the text covered so far (the end of the window
   * just scored, counting the text's first token, which is never scored), and `total`, the text's length in tokens:
   * `done` increases and the last call has `done === total`. The same numbers in both runtimes.
   * `BlockLazyRunner.perplexity` counts blocks instead (see there): `done` of `total = numBlocks + 1`.
   */
  onProgress?: (e: { done: number; total: number }) => void;
}

/** Result of the runtimes' `perplexity`. */
export interface PerplexityResult {
  /** Tokens scored (each once; see `perplexityWindows` of @caldera/core for which). */
  tokens: number;
  /** Mean negative log-likelihood per scored token, in nats. */
  nll: number;
  /** Perplexity: `exp(nll)`. */
  ppl: number;
}

/** The window of the runtimes' `perplexity` when `context` is not given: 128 tokens, or the model's limit if smaller. */
export const DEFAULT_PERPLEXITY_CONTEXT = 128;

/** The longest window a model runs, for {@link checkPerplexityArgs}. */
export interface PerplexityLimit {
  /** Most tokens per window. */
  max: number;
  /** The window when `context` is not given (at most `max`); default `min(DEFAULT_PERPLEXITY_CONTEXT, max)`. */
  defaultContext?: number;
  /** What `max` is, for the error message, e.g. `"the model's max positions: max_position_embeddings"`. */
  what: string;
  /** The model's vocabulary size: when given, every token id must be an integer in [0, vocab) (checked up front). */
  vocab?: number;
}

/**
 * The checked window settings of a runtime's `perplexity` over `tokens`: `context` (default
 * `limit.defaultContext`) and `stride` (default `context`). `E_VALUE`, naming the argument, its range and the value
 * given, when `tokens` is not an array of token ids (null, undefined, a number), has fewer than 2 tokens, `context`
 * is not an integer in [2, `limit.max`] (past the model's positions it would give a number, but not the model's
 * perplexity), `stride` is not an integer in [1, context], or (with `limit.vocab`) a token is not an id in [0, vocab):
 * every id, before any window runs, so that a bad one (the last token, only ever a target, included) fails at once;
 * and when `options.onProgress` is given and not a function (runtime-node threw a TypeError after the first window).
 * A null `options` counts as none.
 */
export function checkPerplexityArgs(
  tokens: ArrayLike<number>,
  options: (PerplexityWindowOptions & { onProgress?: unknown }) | null | undefined,
  limit: PerplexityLimit,
): { context: number; stride: number } {
  checkTokenArray(tokens, 'perplexity');
  assertNotAbortSignal(options, 'perplexity'); // perplexity(model, tokens, signal): refused, not ignored
  assertCallbacks(options, 'perplexity', ['onProgress']);
  const context = options?.context ?? limit.defaultContext ?? Math.min(DEFAULT_PERPLEXITY_CONTEXT, limit.max);
  const stride = options?.stride ?? context;
  if (!Number.isInteger(context) || context < 2 || context > limit.max)
    throw new CalderaError(
      'E_VALUE',
      `perplexity: context must be an integer in [2, ${limit.max}] (${limit.what}), got ${context}`,
    );
  if (!Number.isInteger(stride) || stride <= 0 || stride > context)
    throw new CalderaError(
      'E_VALUE',
      `perplexity: stride must be an integer in [1, ${context}] (the context), got ${stride}`,
    );
  if (tokens.length < 2)
    throw new CalderaError('E_VALUE', `perplexity: needs at least 2 tokens, got ${tokens.length}`);
  if (limit.vocab !== undefined) checkTokenIds(tokens, limit.vocab, 'perplexity');
  return { context, stride };
}

/** One window of a windowed perplexity: tokens `[start, end)` run from an empty cache, positions `[from, end)` scored. */
export interface PerplexityWindow {
  start: number;
  end: number;
  from: number;
}

/**
 * The windows of `context` tokens moved by `stride` over a text of `length` tokens. No position is scored twice; each
 * gets as much left context as its window allows. With overlapping windows every position after the first is scored;
 * with `stride = context` the first position of each later window, which has no left context in it, is not. `E_VALUE`
 * unless `length` is an integer ≥ 0, `context` one ≥ 2 and `stride` one in [1, context] (a stride of 0 gave the
 * first window forever), when the first window is asked for.
 */
export function* perplexityWindows(
  length: number,
  context: number,
  stride: number,
): Generator<PerplexityWindow> {
  const bad = (name: string, range: string, v: number) =>
    new CalderaError('E_VALUE', `perplexityWindows: ${name} must be ${range}, got ${String(v)}`);
  if (!Number.isInteger(length) || length < 0) throw bad('length', 'an integer ≥ 0', length);
  if (!Number.isInteger(context) || context < 2) throw bad('context', 'an integer ≥ 2', context);
  if (!Number.isInteger(stride) || stride < 1 || stride > context)
    throw bad('stride', `an integer in [1, ${context}] (the context)`, stride);
  let scoredUpTo = 0; // positions [1, scoredUpTo) already scored
  for (let start = 0; scoredUpTo < length; start += stride) {
    const end = Math.min(length, start + context);
    yield { start, end, from: Math.max(scoredUpTo, start + 1) };
    scoredUpTo = end;
    if (end === length) break;
  }
}

/**
 * `E_VALUE` when `nll`, a window's summed negative log-likelihood (or a sum through it), is NaN: the model's logits in
 * that window are not numbers (weights or scales that overflow f32 when applied, non-finite values), and a NaN
 * perplexity would read as a result. `fn` names the caller in the message.
 */
export function checkWindowNll(nll: number, window: PerplexityWindow, fn = 'perplexity'): void {
  if (Number.isNaN(nll))
    throw new CalderaError(
      'E_VALUE',
      `${fn}: the model's logits for tokens ${window.from}–${window.end - 1} are NaN: its weights overflow f32 when ` +
        'applied or hold non-finite values',
    );
}

/**
 * `−log softmax(logits)[target]` of the row of `vocab` logits at `offset`, computed stably (max subtracted). A
 * `target` that is not a token of the row (an integer in [0, `vocab`)) is `E_VALUE` (it gave NaN).
 */
export function tokenNll(logits: ArrayLike<number>, offset: number, vocab: number, target: number): number {
  if (!Number.isInteger(target) || target < 0 || target >= vocab)
    throw new CalderaError('E_VALUE', `tokenNll: target ${target} is not a token id in [0, ${vocab})`);
  let mx = -Infinity;
  for (let v = 0; v < vocab; v++) mx = Math.max(mx, logits[offset + v]!);
  let se = 0;
  for (let v = 0; v < vocab; v++) se += Math.exp(logits[offset + v]! - mx);
  return Math.log(se) + mx - logits[offset + target]!;
}
