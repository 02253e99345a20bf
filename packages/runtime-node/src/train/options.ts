import { CalderaError } from '@caldera/core';

/**
 * `options` of a function whose options object replaced a positional `signal` (internal): null or undefined are none;
 * an `AbortSignal` passed the old way is `E_VALUE` rather than silently ignored (its abort would never be seen).
 */
export function optionsAfterSignal<T extends object>(options: T | null | undefined, fn: string): T {
  if (options == null) return {} as T;
  if (typeof AbortSignal !== 'undefined' && options instanceof AbortSignal)
    throw new CalderaError(
      'E_VALUE',
      `${fn}: options must be an object such as { signal }, got an AbortSignal`,
    );
  return options;
}
