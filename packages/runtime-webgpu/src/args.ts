/**
 * The device check of the package's entry points (internal: not exported from the package's entry), so that
 * JavaScript callers passing null or undefined as `dev` get a `CalderaError` naming it instead of a `TypeError` from
 * deep inside. Their other required arguments are checked with core's `assertObject` and `assertNonEmptyString`.
 */
import { CalderaError, describeValue } from '@caldera/core';
import type { CalderaDevice } from './device.js';

/**
 * `E_VALUE` unless `dev` is a {@link CalderaDevice} (an object with a `device`, as `createDevice` returns): the message
 * says `an object without a device` for another object, else what was given ({@link describeValue}: `null`, …).
 */
export function checkDeviceArgument(dev: unknown, fn: string): asserts dev is CalderaDevice {
  if (dev === null || typeof dev !== 'object' || !(dev as { device?: unknown }).device)
    throw new CalderaError(
      'E_VALUE',
      `${fn}: dev must be a CalderaDevice (see createDevice), got ${
        dev !== null && typeof dev === 'object' ? 'an object without a device' : describeValue(dev)
      }`,
    );
}
