import { assertNonEmptyString } from '@caldera/core';

/** core's `readJsonFile`, as this package has offered it. */
export { readJsonFile } from '@caldera/core';

/**
 * `E_VALUE` unless `path` is a non-empty string (a loader given null, undefined or an object would otherwise fail with
 * Node's TypeError from deep inside, or read a file named `null`): core's `assertNonEmptyString` with the wording
 * `fn: what must be a path (a non-empty string), got …` (`null`, `undefined`, `an object`, `an empty string`, …).
 * `fn` and `what` name the argument.
 */
export function checkPathArgument(path: unknown, fn: string, what: string): asserts path is string {
  assertNonEmptyString(path, fn, what, 'a path (a non-empty string)');
}
