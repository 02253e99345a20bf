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

/** Throw `E_ABORTED` when the signal has fired. Call it between units of long work. */
export function throwIfAborted(signal: AbortSignal | undefined, what = 'operation'): void {
  if (signal?.aborted) {
    throw new CalderaError('E_ABORTED', `${what} was aborted`, { cause: signal.reason });
  }
}
