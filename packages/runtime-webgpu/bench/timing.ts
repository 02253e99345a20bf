import type { CalderaDevice } from '../src/index.js';
import type { Dispatch } from '../src/kernels.js';
import { submitSeconds } from '../src/tune.js';

/**
 * Keep the GPU busy with `list` for about `ms` milliseconds, so that it has left its idle clocks before anything is
 * timed (an H200 idles at 345 MHz; without this the first variant timed ran at a fraction of the later ones' clocks:
 * the same kernel read 91 GB/s timed first and 409 GB/s timed third, two runs a minute apart, 2026-12-04).
 */
export async function warmUp(dev: CalderaDevice, list: Dispatch[], ms: number): Promise<void> {
  const t0 = performance.now();
  while (performance.now() - t0 < ms) await submitSeconds(dev, list, 4);
}
