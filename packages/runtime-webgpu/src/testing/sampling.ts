/**
 * Test and benchmark helper: sampled decoding the way `generate()` sampled before the GPU's top-k, every token picked
 * by core's `GenerationRules` from all the logits read back, to compare the top-k path with.
 */
import { GenerationRules, type GenerateOptions } from '@caldera/core';
import type { WebGpuModel } from '../model.js';

/**
 * The tokens `generate(model, prompt, options)` samples, each picked from all the logits of one step read back: from
 * an empty cache, the prompt but its last token prefilled, then one step per token; the stop rules as generate's.
 */
export async function* sampleFromAllLogits(
  model: WebGpuModel,
  prompt: readonly number[],
  options: GenerateOptions,
): AsyncGenerator<number> {
  const rules = new GenerationRules(prompt, options);
  model.reset();
  await model.prefill(prompt.slice(0, -1));
  let last = prompt[prompt.length - 1]!;
  for (let n = 0; n < rules.maxTokens; n++) {
    last = rules.pick(await model.step(last, 'logits'));
    const verdict = rules.accept(last);
    if (verdict === 'stop') return;
    yield last;
    if (verdict === 'last') return;
  }
}
