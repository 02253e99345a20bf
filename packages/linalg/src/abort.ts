/** Abort plumbing shared by the factorisations (not exported from the package). */
import { CalderaError, isCalderaError } from '@caldera/core';

/**
 * `f()`, with an `E_ABORTED` thrown by a kernel it calls (`gemm was aborted`) re-thrown as `what was aborted`, same
 * cause, so that an abort names the operation the caller started. Other errors pass through.
 * @internal
 */
export function abortingAs<T>(what: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (isCalderaError(e, 'E_ABORTED'))
      throw new CalderaError('E_ABORTED', `${what} was aborted`, { cause: e.cause });
    throw e;
  }
}
