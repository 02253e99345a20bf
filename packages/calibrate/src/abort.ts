import { throwIfAborted } from '@caldera/core';

/**
 * Give timers and signal handlers a turn (the runner and the compressors are synchronous, so an abort from a timer or
 * from SIGINT could otherwise not fire until the run ends), then throw `E_ABORTED` if the signal has fired. Without a
 * signal it does nothing.
 */
export async function yieldAndCheckAbort(signal: AbortSignal | undefined, what: string): Promise<void> {
  if (!signal) return;
  await new Promise<void>((resolve) =>
    typeof setImmediate === 'function' ? setImmediate(resolve) : setTimeout(resolve, 0),
  );
  throwIfAborted(signal, what);
}
