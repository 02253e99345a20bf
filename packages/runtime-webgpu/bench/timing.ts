import type { CalderaDevice } from '../src/index.js';
import { encodeDispatches, type Dispatch } from '../src/kernels.js';

/**
 * Seconds from submitting `passes` repetitions of `list` (one command buffer) until the GPU has finished them: the
 * timing step of the roofline and the decode profile.
 */
export async function submitSeconds(
  dev: CalderaDevice,
  list: readonly Dispatch[],
  passes: number,
): Promise<number> {
  const enc = dev.device.createCommandEncoder();
  for (let i = 0; i < passes; i++) encodeDispatches(enc, list);
  const t = performance.now();
  dev.device.queue.submit([enc.finish()]);
  await dev.device.queue.onSubmittedWorkDone();
  return (performance.now() - t) / 1000;
}
