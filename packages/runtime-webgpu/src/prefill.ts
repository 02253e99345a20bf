/**
 * The one prefill loop of the package (internal: not exported from the package's entry), shared by
 * {@link WebGpuModel.prefill} and `generate()`, each passing its own claim on the model's sequence.
 */
import { throwIfAborted } from '@caldera/core';
import type { SequenceClaim, WebGpuModel } from './model.js';

/**
 * Append `tokens` to `model`'s sequence through `seq` (the claim of the operation that prefills, see
 * {@link WebGpuModel.claim}), reading nothing back: batches of `model.prefillChunk` tokens, each one pass through the
 * layers. `signal` is checked before each batch (`E_ABORTED` naming `what`); a pass fails with `E_VALUE` when another
 * call changed the sequence since the claim's previous pass.
 */
export async function prefillThrough(
  model: WebGpuModel,
  seq: SequenceClaim,
  tokens: ArrayLike<number>,
  signal: AbortSignal | undefined,
  what: string,
): Promise<void> {
  const all = Array.from(tokens);
  for (let t = 0; t < all.length; t += model.prefillChunk) {
    throwIfAborted(signal, what);
    await seq.pass(() => model.stepBatch(all.slice(t, t + model.prefillChunk), 'none'));
  }
}
