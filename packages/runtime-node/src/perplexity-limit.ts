import type { PerplexityLimit } from '@caldera/core';
import type { ModelConfig } from './config.js';

/**
 * The windows a CPU model's perplexity may use (internal: `perplexity` and `BlockLazyRunner.perplexity`, so that both
 * check and default alike): up to the model's max positions — past them it runs on positions it never saw, a number
 * but not the model's perplexity — with core's default window; every token id checked against the vocabulary first.
 */
export function modelPerplexityLimit(config: ModelConfig): PerplexityLimit {
  return {
    max: config.maxPositions,
    what: "the model's max positions: max_position_embeddings (YaRN's factor × original_max_position_embeddings when longer), or sliding_window when smaller",
    vocab: config.vocabSize,
  };
}
