import type { Rng } from './rng.js';

/** Options of the runtimes' `generate()` (runtime-node and runtime-webgpu share them). Defaults: greedy decoding of up to 64 tokens. */
export interface GenerateOptions {
  /** Most tokens to generate. Default 64 (also bounded by the model's context length). */
  maxTokens?: number;
  /** Softmax temperature; 0 = greedy (default). */
  temperature?: number;
  /** Sample only among the k most likely tokens; 0 = all (default). */
  topK?: number;
  /** Nucleus sampling: smallest set of tokens with cumulative probability ≥ p; 1 = all (default). */
  topP?: number;
  /** > 1 discourages tokens already in the context (CTRL-style: positive logits divided, negative multiplied). Default 1. */
  repetitionPenalty?: number;
  /** Token ids that end generation (e.g. EOS); the stop token is yielded. Default none. */
  stopTokens?: number[];
  /**
   * Strings that end generation: when the decoded completion contains one, generation stops and the token that
   * completed it is not yielded. Needs `decode`. Default none.
   */
  stopStrings?: string[];
  /** Text of generated ids, for `stopStrings`. */
  decode?: (ids: number[]) => string;
  /** Seed of the sampler (deterministic given the seed). Default 0. */
  seed?: number;
  /** Abort: the iterator throws `E_ABORTED` before the next token. */
  signal?: AbortSignal;
}

/**
 * The next token from a row of logits under `options` (the runtimes' shared sampler): the argmax when the temperature
 * is 0, else a draw from the softmax at that temperature, restricted to the top-k tokens and then to the smallest
 * nucleus of probability ≥ top-p. Deterministic given the `rng` state.
 */
export function sampleToken(logits: Float64Array, options: GenerateOptions, rng: Rng): number {
  const o = options;
  const l = logits;
  const temp = o.temperature ?? 0;
  let best = 0;
  for (let i = 1; i < l.length; i++) if (l[i]! > l[best]!) best = i;
  if (temp <= 0) return best;
  let idx = [...l.keys()].sort((a, b) => l[b]! - l[a]!);
  if (o.topK && o.topK > 0) idx = idx.slice(0, o.topK);
  const mx = l[idx[0]!]!;
  let probs = idx.map((i) => Math.exp((l[i]! - mx) / temp));
  const z = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / z);
  if (o.topP && o.topP < 1) {
    let acc = 0;
    let cut = probs.length;
    for (let i = 0; i < probs.length; i++) {
      acc += probs[i]!;
      if (acc >= o.topP) {
        cut = i + 1;
        break;
      }
    }
    idx = idx.slice(0, cut);
    probs = probs.slice(0, cut);
    const z2 = probs.reduce((a, b) => a + b, 0);
    probs = probs.map((p) => p / z2);
  }
  let u = rng.uniform();
  for (let i = 0; i < probs.length; i++) {
    u -= probs[i]!;
    if (u <= 0) return idx[i]!;
  }
  return idx[idx.length - 1]!;
}
