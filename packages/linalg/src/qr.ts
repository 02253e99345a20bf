/**
 * Householder QR factorisation `A = Q·R` (thin: `Q` is `m × k` with orthonormal columns, `R` is `k × n`
 * upper triangular, `k = min(m, n)`), computed in f64 with row-oriented reflector application.
 */
import { throwIfAborted, type Matrix, type Tensor } from '@caldera/core';
import { denseCopy, wrap } from './dense.js';
import { reflectorOf } from './householder.js';

/** Options of {@link qr}. */
export interface QrOptions {
  /** Abort between Householder columns (`E_ABORTED`). */
  signal?: AbortSignal;
}

/** Result of {@link qr}. */
export interface QR {
  /** `m × k` with orthonormal columns (f64). */
  q: Tensor<'f64'>;
  /** `k × n` upper triangular (f64); diagonal entries may be negative. */
  r: Tensor<'f64'>;
}

/**
 * Thin Householder QR of an `m × n` matrix (any strides, f32/f64; not modified). Works for any shape,
 * including empty and rank-deficient matrices (then `R` has zeros on its diagonal and `Q` stays orthonormal).
 * Non-finite input throws `E_VALUE`; an aborted `signal`, `E_ABORTED`.
 * @example
 * const { q, r } = qr(a); // a ≈ q·r, qᵀq = I
 */
export function qr(a: Matrix, options: QrOptions = {}): QR {
  const w = denseCopy(a, 'qr', 'a');
  const [m, n] = a.shape as [number, number];
  const { q, r } = qrBuf(w, m, n, options.signal);
  const k = Math.min(m, n);
  return { q: wrap(q, m, k), r: wrap(r, k, n) };
}

/**
 * QR of the row-major `m × n` buffer `w`, which is overwritten. Returns row-major `q` (m×k) and `r` (k×n).
 * `signal` is checked before each column of either pass (O((m−j)·(n−j)) work each), an abort naming `what`.
 * @internal
 */
export function qrBuf(
  w: Float64Array,
  m: number,
  n: number,
  signal?: AbortSignal,
  what = 'qr',
): { q: Float64Array; r: Float64Array } {
  throwIfAborted(signal, what);
  const k = Math.min(m, n);
  const taus = new Float64Array(k);
  const work = new Float64Array(Math.max(n, k));
  // Reflector j: v = [1, w[j+1.., j]] (stored below the diagonal of w), H = I − τ·v·vᵀ.
  for (let j = 0; j < k; j++) {
    if (j > 0) throwIfAborted(signal, what);
    let scale = 0;
    for (let i = j; i < m; i++) scale = Math.max(scale, Math.abs(w[i * n + j]!));
    if (scale === 0) {
      taus[j] = 0;
      continue;
    }
    let ss = 0;
    for (let i = j + 1; i < m; i++) {
      const t = w[i * n + j]! / scale;
      ss += t * t;
    }
    const alpha = w[j * n + j]!;
    const as = alpha / scale;
    if (ss === 0) {
      // already zero below the diagonal: H = I
      taus[j] = 0;
      continue;
    }
    const { beta, tau, inv, divisor } = reflectorOf(alpha, scale, as * as + ss);
    for (let i = j + 1; i < m; i++) w[i * n + j] = (w[i * n + j]! / divisor) * inv;
    w[j * n + j] = beta;
    taus[j] = tau;
    // apply H to the trailing columns: w[j:, j+1:] −= τ·v·(vᵀ·w[j:, j+1:])
    const c0 = j + 1;
    if (c0 >= n) continue;
    for (let c = c0; c < n; c++) work[c] = w[j * n + c]!;
    for (let i = j + 1; i < m; i++) {
      const vi = w[i * n + j]!;
      if (vi === 0) continue;
      const row = i * n;
      for (let c = c0; c < n; c++) work[c]! += vi * w[row + c]!;
    }
    for (let c = c0; c < n; c++) work[c]! *= tau;
    for (let c = c0; c < n; c++) w[j * n + c]! -= work[c]!;
    for (let i = j + 1; i < m; i++) {
      const vi = w[i * n + j]!;
      if (vi === 0) continue;
      const row = i * n;
      for (let c = c0; c < n; c++) w[row + c]! -= vi * work[c]!;
    }
  }
  const r = new Float64Array(k * n);
  for (let i = 0; i < k; i++) for (let c = i; c < n; c++) r[i * n + c] = w[i * n + c]!;
  // Q = H₀·H₁·…·H_{k−1}·I[:, :k], accumulated backwards; H_j only touches rows and columns ≥ j.
  const q = new Float64Array(m * k);
  for (let i = 0; i < k; i++) q[i * k + i] = 1;
  for (let j = k - 1; j >= 0; j--) {
    throwIfAborted(signal, what);
    const tau = taus[j]!;
    if (tau === 0) continue;
    for (let c = j; c < k; c++) work[c] = q[j * k + c]!;
    for (let i = j + 1; i < m; i++) {
      const vi = w[i * n + j]!;
      if (vi === 0) continue;
      const row = i * k;
      for (let c = j; c < k; c++) work[c]! += vi * q[row + c]!;
    }
    for (let c = j; c < k; c++) work[c]! *= tau;
    for (let c = j; c < k; c++) q[j * k + c]! -= work[c]!;
    for (let i = j + 1; i < m; i++) {
      const vi = w[i * n + j]!;
      if (vi === 0) continue;
      const row = i * k;
      for (let c = j; c < k; c++) q[row + c]! -= vi * work[c]!;
    }
  }
  return { q, r };
}
