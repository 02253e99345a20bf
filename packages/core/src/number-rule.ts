import { CalderaError, shownValue } from './errors.js';

/**
 * The allowed values of a numeric option: finite, an integer when `integer` (a safe one), at least `min`, above
 * `above`, at most `max`. The CLI's flags and the libraries' options (fine-tuning, training) share these rules, so
 * that a library call is refused where the command line would be, in the same words.
 */
export interface NumberRule {
  integer?: boolean;
  /** Smallest allowed value (inclusive). */
  min?: number;
  /** Values must be greater than this (exclusive lower bound). */
  above?: number;
  /** Largest allowed value (inclusive). */
  max?: number;
}

/** Integers ≥ 1. */
export const POSITIVE_INT: NumberRule = { integer: true, min: 1 };
/** Integers ≥ 0. */
export const NON_NEGATIVE_INT: NumberRule = { integer: true, min: 0 };
/** Numbers > 0. */
export const POSITIVE: NumberRule = { above: 0 };
/** Seeds: integers in [0, 2³² − 1] (what the generators use). */
export const SEED: NumberRule = { integer: true, min: 0, max: 0xffffffff };

/** "a positive integer", "an integer in [2, 512]", "a number in (0, 1]", … */
export function describeNumberRule(r: NumberRule): string {
  const kind = r.integer ? 'integer' : 'number';
  const lo = r.above !== undefined ? `(${r.above}` : r.min !== undefined ? `[${r.min}` : undefined;
  if (lo !== undefined && r.max !== undefined) return `${r.integer ? 'an' : 'a'} ${kind} in ${lo}, ${r.max}]`;
  if (r.integer && r.min === 1 && r.max === undefined) return 'a positive integer';
  if (r.integer && r.min === 0 && r.max === undefined) return 'a non-negative integer';
  if (r.above !== undefined) return `${r.integer ? 'an' : 'a'} ${kind} > ${r.above}`;
  if (r.min !== undefined) return `${r.integer ? 'an' : 'a'} ${kind} ≥ ${r.min}`;
  if (r.max !== undefined) return `${r.integer ? 'an' : 'a'} ${kind} ≤ ${r.max}`;
  return r.integer ? 'an integer' : 'a number';
}

/** Whether `n` obeys `r` (a finite number: NaN and ±Infinity obey no rule; an integer rule wants a safe integer). */
export function obeysNumberRule(n: unknown, r: NumberRule): n is number {
  return (
    typeof n === 'number' &&
    Number.isFinite(n) &&
    (!r.integer || Number.isSafeInteger(n)) &&
    (r.min === undefined || n >= r.min) &&
    (r.above === undefined || n > r.above) &&
    (r.max === undefined || n <= r.max)
  );
}

/**
 * `E_VALUE` "`what`: `name` must be …, got …" for the first option of `options` named in `rules` that is given (not
 * undefined) and breaks its rule ({@link obeysNumberRule}).
 */
export function checkNumberOptions(
  what: string,
  options: Readonly<Record<string, unknown>>,
  rules: Readonly<Record<string, NumberRule>>,
): void {
  for (const [name, r] of Object.entries(rules)) {
    const v = options[name];
    if (v !== undefined && !obeysNumberRule(v, r))
      throw new CalderaError(
        'E_VALUE',
        `${what}: ${name} must be ${describeNumberRule(r)}, got ${shownValue(v)}`,
      );
  }
}
