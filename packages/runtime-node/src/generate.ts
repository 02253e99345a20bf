import { checkTokenIds, GenerationRules, type GenerateOptions } from '@caldera/core';
import { decodeTokens } from './decode-loop.js';
import { checkModelArgument } from './model-argument.js';
import { KVCache, type LlamaModel } from './model.js';

export type { GenerateOptions } from '@caldera/core';

/**
 * Generate token ids after `prompt`, one at a time, with a KV cache: at most `maxTokens`, and no more than the
 * model's context leaves after the prompt. One forward pass per token (the prompt's for the first); the last token is
 * not run. Before each pass the generator lets the event loop turn once (`setImmediate`), so timers, I/O and an
 * `AbortSignal` fired by them (`AbortSignal.timeout`, a closed connection) are seen between tokens: the next `next()`
 * then throws `E_ABORTED`. Several generators may run on one model at once, interleaved; each has its own cache.
 */
export async function* generate(
  model: LlamaModel,
  prompt: ArrayLike<number>,
  options: GenerateOptions = {},
): AsyncGenerator<number> {
  checkModelArgument(model, 'generate');
  options ??= {}; // from JavaScript: null options are none
  const rules = new GenerationRules(prompt, options);
  // every id before the first pass, worded as runtime-webgpu's (a string '2' was "token id 2 out of range")
  checkTokenIds(prompt, model.config.vocabSize, 'generate');
  const count = rules.tokensToGenerate(
    model.config.maxPositions,
    "its max positions: max_position_embeddings (YaRN's factor × original_max_position_embeddings when longer), or sliding_window when smaller",
  );
  if (count === 0) return;
  // the prompt and every generated token but the last, which is never run
  const cache = new KVCache(model.config, prompt.length + count - 1);
  yield* decodeTokens(model, cache, prompt, count, rules, { signal: options.signal, what: 'generate' });
}
