import { CalderaError, describeValue } from './errors.js';

/**
 * `E_VALUE` naming `what` and the argument (`name`, default `tokens`) unless `value` is an array (or array-like
 * object) of token ids: null, a number or a string in its place names the routine instead of failing inside (a
 * TypeError, or nothing run at all). `what: name must be an array of token ids, got …`.
 */
export function checkTokenArray(
  value: unknown,
  what: string,
  name = 'tokens',
): asserts value is ArrayLike<number> {
  if (
    value === null ||
    typeof value !== 'object' ||
    typeof (value as { length?: unknown }).length !== 'number'
  )
    throw new CalderaError(
      'E_VALUE',
      `${what}: ${name} must be an array of token ids, got ${describeValue(value)}`,
    );
}

/**
 * `E_VALUE` naming `what` unless every id of `tokens` is an integer in [0, vocab): the check the runtimes run on a
 * whole request before its first pass, so that a bad id fails before any work (see {@link badTokenId}).
 */
export function checkTokenIds(tokens: ArrayLike<number>, vocab: number, what: string): void {
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (!Number.isInteger(t) || t < 0 || t >= vocab) throw badTokenId(t, i, vocab, what);
  }
}

/**
 * The error for token `t` at index `i` that is not an id in [0, vocab), naming `what`: out of range when it is a
 * number (`what: token id 30 out of range [0, 30)`), else what it is (a string '2' is not the id 2).
 */
export function badTokenId(t: unknown, i: number, vocab: number, what: string): CalderaError {
  return typeof t === 'number'
    ? new CalderaError('E_VALUE', `${what}: token id ${t} out of range [0, ${vocab})`)
    : new CalderaError(
        'E_VALUE',
        `${what}: token ${i} is ${typeof t === 'string' ? `the string '${t}'` : describeValue(t)}, not a token id`,
      );
}
