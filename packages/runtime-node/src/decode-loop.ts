import { throwIfAborted, type GenerationRules } from '@caldera/core';
import type { KVCache, LlamaModel } from './model.js';
import { nextTurn } from './next-turn.js';

/** Why {@link decodeTokens} ended: `rules` stopped at a stop token or a stop string, or `count` passes ran. */
export type DecodeEnd = 'stop-token' | 'stop-string' | 'count';

/** What {@link decodeTokens} reports and checks besides the model, the cache and the rules. */
export interface DecodeHooks {
  /** Checked before each pass (`E_ABORTED` naming `what`). */
  signal?: AbortSignal | undefined;
  /** The caller named in errors (`generate`, `ChatSession.send`). */
  what: string;
  /** Sees the ids of each pass after it ran (the cache then holds them). */
  onRun?: (ids: ArrayLike<number>) => void;
}

/**
 * The token loop of `generate()` and `ChatSession.send`: runs `first` (the prompt, or the part of it the cache does not
 * hold) through `model` with `cache`, then each token `rules` picks, at most `count` passes (the last picked token is
 * not run); yields every token `rules` accepts, and returns why it ended. Before each pass the event loop turns once
 * (`nextTurn`) and `hooks.signal` is checked.
 */
export async function* decodeTokens(
  model: LlamaModel,
  cache: KVCache,
  first: ArrayLike<number>,
  count: number,
  rules: GenerationRules,
  hooks: DecodeHooks,
): AsyncGenerator<number, DecodeEnd> {
  const V = model.config.vocabSize;
  let next = -1;
  for (let n = 0; n < count; n++) {
    await nextTurn();
    throwIfAborted(hooks.signal, hooks.what);
    const run = n === 0 ? first : [next];
    const logits = model.forward(run, cache, { last: true });
    hooks.onRun?.(run);
    next = rules.pick(logits.subarray(0, V));
    const verdict = rules.accept(next);
    if (verdict === 'stop') return 'stop-string';
    yield next;
    if (verdict === 'last') return 'stop-token';
  }
  return 'count';
}
