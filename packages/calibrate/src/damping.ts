import { CalderaError } from '@caldera/core';

/** `damping` (default 0.01) when it is a finite number ≥ 0, else `E_VALUE` (`finalizeHessian`'s and the reduction's check). */
export function checkDamping(damping: number | undefined): number {
  const d = damping ?? 0.01;
  if (!(d >= 0) || !Number.isFinite(d)) throw new CalderaError('E_VALUE', `damping must be ≥ 0, got ${d}`);
  return d;
}
