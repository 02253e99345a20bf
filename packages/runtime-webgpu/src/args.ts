/**
 * Checks of the required arguments of the package's entry points (internal: not exported from the package's entry),
 * so that JavaScript callers passing null or undefined get a `CalderaError` naming the argument instead of a
 * `TypeError` from deep inside.
 */
import { CalderaError } from '@caldera/core';
import type { CalderaDevice } from './device.js';

/** What a value given in place of an argument is, for a message: `null`, `undefined`, `a number`, … */
function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (v === '') return 'an empty string';
  return typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

/** `E_VALUE` unless `dev` is a {@link CalderaDevice} (an object with a `device`, as `createDevice` returns). */
export function checkDeviceArgument(dev: unknown, fn: string): asserts dev is CalderaDevice {
  if (dev === null || typeof dev !== 'object' || !(dev as { device?: unknown }).device)
    throw new CalderaError(
      'E_VALUE',
      `${fn}: dev must be a CalderaDevice (see createDevice), got ${
        dev !== null && typeof dev === 'object' ? 'an object without a device' : describe(dev)
      }`,
    );
}

/** `E_VALUE` unless `v` is an object (`what` names it: `source`, `parts`, …). */
export function checkObjectArgument(v: unknown, fn: string, what: string): asserts v is object {
  if (v === null || typeof v !== 'object')
    throw new CalderaError('E_VALUE', `${fn}: ${what} must be an object, got ${describe(v)}`);
}

/** `E_VALUE` unless `v` is a non-empty string (`what` names it: the model directory, the base URL). */
export function checkStringArgument(v: unknown, fn: string, what: string): asserts v is string {
  if (typeof v !== 'string' || v === '')
    throw new CalderaError('E_VALUE', `${fn}: ${what} must be a non-empty string, got ${describe(v)}`);
}
