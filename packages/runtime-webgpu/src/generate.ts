import {
  CalderaError,
  checkPerplexityArgs,
  checkTokenIds,
  checkWindowNll,
  describeValue,
  GenerationRules,
  perplexityWindows,
  sampleToken,
  throwIfAborted,
  type GenerateOptions,
  type PerplexityOptions,
  type PerplexityResult,
} from '@caldera/core';
import { TOPK_MAX } from './kernels/index.js';
import { WebGpuModel, type SequenceClaim } from './model.js';
import { prefillThrough } from './prefill.js';

export type { GenerateOptions } from '@caldera/core';
/** The options and result of {@link perplexity}, runtime-node's (they live in `@caldera/core`). */
export type { PerplexityOptions, PerplexityResult } from '@caldera/core';

/**
 * Generate token ids after `prompt`, one at a time, on the GPU. The model's KV cache is kept for the longest prefix of
 * `prompt` it already holds (the earlier turns of a chat whose next prompt extends the last one: only the new tokens
 * are run) and forgotten after it. Greedy decoding reads back 4 bytes per token (the GPU argmax), the GPU a pass ahead
 * of the host ({@link WebGpuModel.decodeGreedy}); sampling samples on the CPU exactly as runtime-node does (same Rng,
 * same order of operations), so the same logits give the same tokens: from the top k logits found on the GPU (and
 * those of the tokens the repetition penalty changes) when `topK` is at most {@link TOPK_MAX} (128) and below the
 * vocabulary (and the model's `topKOnGpu`, default off on CPU fallback adapters), else from all the logits read back. The model holds
 * one sequence: when another call changes it while this generator is suspended (a second `generate()` on the model),
 * the next `next()` fails with `E_VALUE` (see {@link WebGpuModel.claim}). Suspended or stopped early (`break`, a stop
 * token or string, an abort), it leaves the sequence as one step at a time would: the prompt and the tokens generated
 * before the last one read.
 */
export async function* generate(
  model: WebGpuModel,
  prompt: ArrayLike<number>,
  options: GenerateOptions = {},
): AsyncGenerator<number> {
  checkModelArgument(model, 'generate');
  options ??= {}; // from JavaScript: null options are none
  const rules = new GenerationRules(prompt, options);
  // every id before the cache is touched: a bad one leaves the cached sequence as it was
  checkTokenIds(prompt, model.config.vocabSize, 'generate');
  // as runtime-node: min(maxTokens, context − prompt length) tokens; none (no pass at all) for maxTokens 0 or a
  // prompt that fills the context
  const count = rules.tokensToGenerate(model.contextLength, "its contextLength, the KV cache's length");
  // every pass through the claim: a second generate() (or any other change to the sequence) while this one is
  // suspended makes its next pass fail instead of continuing from the other's cache (claimed before the count is
  // looked at: a disposed model is E_VALUE even where nothing would run)
  const seq = model.claim('generate');
  if (count === 0) return;
  // the cached prefix (at most all but the last prompt token, which must run to give the first logits)
  const cached = model.tokens;
  let keep = 0;
  while (keep < prompt.length - 1 && keep < cached.length && cached[keep] === prompt[keep]) keep++;
  seq.pass(() => model.truncate(keep));
  // prefill the rest but the last prompt token (WebGpuModel.prefill's loop, through this claim)
  await prefillThrough(model, seq, Array.from(prompt).slice(keep, -1), options.signal, 'generate');
  const last = prompt[prompt.length - 1]!;
  // greedy: the GPU's argmax (4 bytes read back), the token rules.pick would give, the GPU a pass ahead of the host
  const tokens = rules.greedy
    ? model.decodeGreedy(last, count, seq)
    : sampled(model, seq, rules, last, count);
  throwIfAborted(options.signal, 'generate');
  let n = 0;
  for await (const next of tokens) {
    const verdict = rules.accept(next);
    if (verdict === 'stop') return;
    yield next;
    if (verdict === 'last') return;
    // before the next token's pass (greedy: before it is read; leaving the loop leaves the pass run ahead out of
    // the sequence)
    if (++n < count) throwIfAborted(options.signal, 'generate');
  }
}

/**
 * `count` tokens after `token`, each sampled on the CPU by `rules` from a pass over the one before (read back through
 * `seq`, one pass at a time): with a top-k of at most {@link TOPK_MAX} (and the model's `topKOnGpu`), from the top k
 * logits found on the GPU and the logits of the tokens the repetition penalty changes ({@link WebGpuModel.stepTopK};
 * the same token as from all the logits, see `GenerationRules.pickTopK`), else from all the logits.
 */
async function* sampled(
  model: WebGpuModel,
  seq: SequenceClaim,
  rules: GenerationRules,
  token: number,
  count: number,
): AsyncGenerator<number> {
  const V = model.config.vocabSize;
  const k = rules.topKOf(V);
  let last = token;
  for (let n = 0; n < count; n++) {
    if (k !== null && k <= TOPK_MAX && model.topKOnGpu) {
      const penalized = rules.penalized();
      const top = await seq.pass(() => model.stepTopK(last, k, penalized));
      last = rules.pickTopK(top, top.excluded, V);
    } else last = rules.pick(await seq.pass(() => model.step(last, 'logits')));
    yield last;
  }
}

/** The shared sampler of the runtimes (`sampleToken` from `@caldera/core`). */
export const sample = sampleToken;

/**
 * Perplexity of `tokens` with windows of `context` tokens moved by `stride`, scored as runtime-node's `perplexity`
 * does: no token is scored twice, each with as much left context as its window allows. With overlapping windows
 * (`stride < context`) every token after the first is scored; with the default `stride = context` the windows do
 * not overlap and the first token of each later window, which has no left context in it, is not. Each window starts
 * from an empty cache and runs in batches of `model.prefillChunk` tokens, each token's NLL computed on the GPU
 * ({@link WebGpuModel.scoreBatch}, f32; summed on the CPU in f64). `context` (default 128, or `model.contextLength`
 * when smaller: runtime-node's default) must be an integer in [2, model.contextLength], `stride` one in [1, context],
 * and `tokens` an array of at least 2 ids: `E_VALUE` otherwise (`checkPerplexityArgs` of `@caldera/core`, shared with
 * runtime-node; every id is checked before the first pass). `signal` is checked before each batch (`E_ABORTED`);
 * `onProgress({ done, total })` is called after each window with, as in runtime-node, `done` the end of the window in
 * tokens of the text (counting its first token) and `total` the text's length.
 */
export async function perplexity(
  model: WebGpuModel,
  tokens: ArrayLike<number>,
  options: PerplexityOptions = {},
): Promise<PerplexityResult> {
  checkModelArgument(model, 'perplexity');
  // core's default window, as runtime-node's (128 tokens, or contextLength, the KV cache's length, when smaller)
  const { context, stride } = checkPerplexityArgs(tokens, options, {
    max: model.contextLength,
    what: "the model's contextLength, its KV cache's length",
    vocab: model.config.vocabSize,
  });
  options ??= {}; // from JavaScript: null options are none
  const seq = model.claim('perplexity');
  let nll = 0;
  let count = 0;
  for (const window of perplexityWindows(tokens.length, context, stride)) {
    const { start, end, from } = window;
    seq.pass(() => model.reset());
    // position p is predicted by the logits after token p − 1
    for (let t0 = start; t0 < end - 1; t0 += model.prefillChunk) {
      throwIfAborted(options.signal, 'perplexity');
      const batch = Array.from(
        { length: Math.min(model.prefillChunk, end - 1 - t0) },
        (_, i) => tokens[t0 + i]!,
      );
      if (t0 + batch.length < from) {
        await seq.pass(() => model.stepBatch(batch, 'none')); // predicts only positions already scored
        continue;
      }
      // row r predicts the token after it: its NLL computed on the GPU, one float per row read back
      const targets = batch.map((_, r) => tokens[t0 + r + 1]!);
      const nlls = await seq.pass(() => model.scoreBatch(batch, targets));
      for (let r = Math.max(0, from - 1 - t0); r < batch.length; r++) {
        nll += nlls[r]!;
        count++;
      }
    }
    checkWindowNll(nll, window);
    options.onProgress?.({ done: end, total: tokens.length });
  }
  return { tokens: count, nll: nll / count, ppl: Math.exp(nll / count) };
}

/** `E_VALUE` unless `model` is a {@link WebGpuModel} (`generate(null, …)` failed with a TypeError from inside). */
function checkModelArgument(model: unknown, fn: string): asserts model is WebGpuModel {
  if (!(model instanceof WebGpuModel))
    throw new CalderaError(
      'E_VALUE',
      `${fn}: model must be a WebGpuModel (a loader's model), got ${describeValue(model)}`,
    );
}
