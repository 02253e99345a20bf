/**
 * The one prefill loop of the package (internal: not exported from the package's entry), shared by
 * {@link WebGpuModel.prefill} and `generate()`, each passing its own claim on the model's sequence.
 */
import { CalderaError, checkTokenIds, throwIfAborted } from '@caldera/core';
import type { SequenceClaim, WebGpuModel } from './model.js';

/**
 * Append `tokens` to `model`'s sequence through `seq` (the claim of the operation that prefills, see
 * {@link WebGpuModel.claim}), reading nothing back: batches of `model.prefillChunk` tokens, each one pass through the
 * layers. `signal` is checked before each batch (`E_ABORTED` naming `what`; the batches already run stay in the
 * cache); a pass fails with `E_VALUE` when another call changed the sequence since the claim's previous pass. With a
 * signal the GPU runs at most one batch ahead of the host: after submitting a batch it waits for the one before, so
 * the event loop turns and an abort from a timer or another task is seen at the next batch (without the wait every
 * batch was queued within one turn, and a long prompt's prefill resolved with seconds of GPU work still to run).
 */
export async function prefillThrough(
  model: WebGpuModel,
  seq: SequenceClaim,
  tokens: ArrayLike<number>,
  signal: AbortSignal | undefined,
  what: string,
): Promise<void> {
  const all = Array.from(tokens);
  // the whole request before the first pass: a bad id or too many tokens leave the cache as it was
  checkTokenIds(all, model.config.vocabSize, what);
  checkCapacity(model, all.length, what);
  let before: Promise<void> | null = null;
  for (let t = 0; t < all.length; t += model.prefillChunk) {
    throwIfAborted(signal, what);
    await seq.pass(() => model.stepBatch(all.slice(t, t + model.prefillChunk), 'none'));
    if (signal) {
      const done = model.finish(); // this batch and those before
      if (before) await before;
      before = done;
    }
  }
}

/** `E_VALUE` when `count` more tokens do not fit the model's KV cache after those it holds. */
export function checkCapacity(model: WebGpuModel, count: number, what: string): void {
  if (model.length + count > model.contextLength)
    throw new CalderaError(
      'E_VALUE',
      `${what}: ${count} tokens after the ${model.length} cached exceed the KV cache capacity ${model.contextLength}`,
    );
}
