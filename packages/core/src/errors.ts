/**
 * Stable error codes. Callers switch on `code`; the message names the file, tensor or shape at fault.
 *
 * - `E_SHAPE`   a shape or dimension does not match what the operation needs
 * - `E_DTYPE`   unsupported or mismatched element type
 * - `E_FORMAT`  a file or buffer does not follow its format (safetensors, checkpoint, config)
 * - `E_IO`      reading or writing a file failed
 * - `E_VALUE`   an argument has an invalid value (non-finite input, out-of-range option)
 * - `E_NOT_PD`  a matrix that must be positive definite is not
 * - `E_MISSING` a required tensor, file or key is absent
 * - `E_UNSUPPORTED` a valid request this implementation does not support (architecture, backend feature)
 * - `E_ABORTED` the work was cancelled through an `AbortSignal`
 * - `E_DEVICE`  a compute device (WebGPU adapter, worker) failed or is missing
 */
export type CalderaErrorCode =
  | 'E_SHAPE'
  | 'E_DTYPE'
  | 'E_FORMAT'
  | 'E_IO'
  | 'E_VALUE'
  | 'E_NOT_PD'
  | 'E_MISSING'
  | 'E_UNSUPPORTED'
  | 'E_ABORTED'
  | 'E_DEVICE';

/** The one error class every Caldera package throws. */
export class CalderaError extends Error {
  override readonly name = 'CalderaError';
  readonly code: CalderaErrorCode;
  /** Optional structured details (file, tensor name, shapes) for programmatic handling. */
  readonly details?: Readonly<Record<string, unknown>>;

  constructor(
    code: CalderaErrorCode,
    message: string,
    options?: { cause?: unknown; details?: Record<string, unknown> },
  ) {
    super(`${code}: ${message}`, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    if (options?.details) this.details = options.details;
  }
}

/** True when `e` is a {@link CalderaError}, optionally with the given code. */
export function isCalderaError(e: unknown, code?: CalderaErrorCode): e is CalderaError {
  return e instanceof CalderaError && (code === undefined || e.code === code);
}

/**
 * Throw `E_ABORTED` when the signal has fired. Call it between units of long work. Something given as the signal that
 * is not one (no boolean `aborted`, e.g. `{}`, which would never fire) is `E_VALUE`; `undefined` and `null` are none.
 */
export function throwIfAborted(signal: AbortSignal | undefined, what = 'operation'): void {
  const s = signal as unknown;
  if (s === undefined || s === null) return;
  // `aborted` read once per check (tests count the reads to see where long work checks its signal)
  const aborted = (s as { aborted?: unknown }).aborted;
  if (typeof aborted !== 'boolean')
    throw new CalderaError('E_VALUE', `${what}: signal must be an AbortSignal, got ${describeValue(s)}`);
  if (aborted) throw new CalderaError('E_ABORTED', `${what} was aborted`, { cause: signal!.reason });
}

/**
 * What a value given in place of an argument is, for an error message: `'null'`, `'undefined'`,
 * `'an empty string'`, `'an array'`, `'an object'`, or `'a '` + its `typeof` (`'a number'`, `'a string'`,
 * `'a boolean'`, `'a function'`, `'a bigint'`, `'a symbol'`). Typed arrays and other non-array objects are
 * `'an object'`.
 * @example
 * throw new CalderaError('E_VALUE', `f: x must be an array, got ${describeValue(x)}`); // … got null
 */
export function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (v === '') return 'an empty string';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  return `a ${typeof v}`;
}

/**
 * A value given in place of an option, for an error message: a string quoted (`'x'`), a number, boolean or bigint
 * as written, anything else as {@link describeValue} says it (`null`, `an object`).
 */
export function shownValue(v: unknown): string {
  if (typeof v === 'string') return `'${v}'`;
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  return describeValue(v);
}

/**
 * Throw `E_VALUE` unless `x` is an object (not `null`; arrays, typed arrays and functions count): the check of a
 * required object argument — a typed array, an options or descriptor object, a tensor whose parts are checked later —
 * so that `null` or `undefined` in its place is a `CalderaError` naming the routine and the argument, e.g.
 * `E_VALUE: e8pEncode: x must be an array of numbers, got null`, instead of a `TypeError` from its first use.
 * What was given is said by {@link describeValue} (`null`, `undefined`, `a number`, …).
 * @param x        the argument
 * @param fn       routine name for the message (e.g. `'e8pEncode'`)
 * @param name     argument name for the message (e.g. `'x'`)
 * @param expected what the argument must be, for the message. Default `'an object'`.
 * @example
 * assertObject(options, 'uniformQuantizer', 'options');
 */
export function assertObject(
  x: unknown,
  fn: string,
  name: string,
  expected = 'an object',
): asserts x is object {
  if (x === null || (typeof x !== 'object' && typeof x !== 'function')) {
    throw new CalderaError('E_VALUE', `${fn}: ${name} must be ${expected}, got ${describeValue(x)}`);
  }
}

/**
 * Throw `E_VALUE` when a function's trailing options object is an `AbortSignal`: an old-style call of a function whose
 * positional `signal` became `options.signal` would otherwise have its abort silently ignored, e.g.
 * `E_VALUE: Trainer.save: options must be an object such as { signal }, got an AbortSignal`. Anything else passes
 * (the caller's own rules for null and non-objects apply).
 */
export function assertNotAbortSignal(options: unknown, fn: string): void {
  if (typeof AbortSignal !== 'undefined' && options instanceof AbortSignal)
    throw new CalderaError(
      'E_VALUE',
      `${fn}: options must be an object such as { signal }, got an AbortSignal`,
    );
}

/**
 * Throw `E_VALUE` unless `x` is a function: {@link assertObject} for a required callback, e.g.
 * `E_VALUE: fromCheckpointTensors: get must be a function, got null`.
 * @param x    the argument
 * @param fn   routine name for the message
 * @param name argument name for the message
 */
export function assertFunction(
  x: unknown,
  fn: string,
  name: string,
): asserts x is (...args: never[]) => unknown {
  if (typeof x !== 'function') {
    throw new CalderaError('E_VALUE', `${fn}: ${name} must be a function, got ${describeValue(x)}`);
  }
}

/**
 * Throw `E_VALUE` unless each option of `names` in `options` is undefined or a function: the check of optional
 * callbacks (`onProgress`, …) before any work, e.g. `E_VALUE: loadModel: onProgress must be a function, got 3` (a
 * TypeError where the callback is first called, often after work, before). Null `options` have none.
 */
export function assertCallbacks(options: unknown, fn: string, names: readonly string[]): void {
  if (options === null || typeof options !== 'object') return;
  for (const name of names) {
    const x = (options as Record<string, unknown>)[name];
    if (x !== undefined) assertFunction(x, fn, name);
  }
}

/**
 * Throw `E_VALUE` unless each option of `names` in `options` is undefined or a boolean, e.g. `E_VALUE: ldlq: proxyLoss
 * must be true or false, got 'no'` (a string was taken as true). Null `options` have none.
 */
export function assertBooleanOptions(options: unknown, fn: string, names: readonly string[]): void {
  if (options === null || typeof options !== 'object') return;
  for (const name of names) {
    const x = (options as Record<string, unknown>)[name];
    if (x !== undefined && typeof x !== 'boolean')
      throw new CalderaError('E_VALUE', `${fn}: ${name} must be true or false, got ${shownValue(x)}`);
  }
}

/**
 * Throw `E_VALUE` unless `x` is a string other than `''`: the check of a required name, path or URL argument, e.g.
 * `E_VALUE: loadModel: the model directory must be a non-empty string, got undefined` (or `…, got an empty string`).
 * @param x        the argument
 * @param fn       routine name for the message (e.g. `'loadModel'`)
 * @param name     argument name for the message (e.g. `'the model directory'`)
 * @param expected what the argument must be, for the message. Default `'a non-empty string'`.
 * @example
 * assertNonEmptyString(dir, 'loadModel', 'the model directory', 'a path (a non-empty string)');
 */
export function assertNonEmptyString(
  x: unknown,
  fn: string,
  name: string,
  expected = 'a non-empty string',
): asserts x is string {
  if (typeof x !== 'string' || x === '') {
    throw new CalderaError('E_VALUE', `${fn}: ${name} must be ${expected}, got ${describeValue(x)}`);
  }
}
