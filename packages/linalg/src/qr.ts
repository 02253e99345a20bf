/**
 * Householder QR factorisation `A = Q·R` (thin: `Q` is `m × k` with orthonormal columns, `R` is `k × n`
 * upper triangular, `k = min(m, n)`), computed in f64 with row-oriented reflector application.
 */
import { throwIfAborted, type Matrix, type Tensor } from '@caldera/core';
import { denseCopy, wrap } from './dense.js';
import { abortingAs } from './abort.js';
import { gemm, gemmInto } from './gemm.js';
import { compactWyT, reflectorOf } from './householder.js';

/** Options of {@link qr}. */
export interface QrOptions {
  /** Abort between Householder columns and between the block products (`E_ABORTED`). */
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
 * Columns per panel of {@link qrBuf}: a panel's reflectors are formed column by column, then applied to the columns
 * right of it, and later to Q, as one block reflector `I − V·T·Vᵀ` (three products on the gemm kernels). Column by
 * column, the QR of a 4096 × 310 matrix (the small SVD of a rank-300 randomized SVD) took 1.5 s.
 */
const QR_PANEL = 32;

/**
 * QR of the row-major `m × n` buffer `w`, which is overwritten. Returns row-major `q` (m×k) and `r` (k×n).
 * `signal` is checked before each column of the panels and before each block product, an abort naming `what`.
 * With k = min(m, n) ≤ {@link QR_PANEL} the whole factorisation is one panel: reflector by reflector, no block products.
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
  const run = { checkFinite: false, ...(signal ? { signal } : {}) };
  const times = (a: Tensor<'f64'>, b: Tensor<'f64'>, transA: boolean): Tensor<'f64'> =>
    abortingAs(what, () => gemm(a, b, { ...run, transA }));
  /** c ← (I − V·op(T)·Vᵀ)·c, op(T) = Tᵀ when `transT`: c − V·(op(T)·(Vᵀ·c)). */
  const applyBlock = (c: Tensor<'f64'>, v: Tensor<'f64'>, t: Tensor<'f64'>, transT: boolean): void => {
    throwIfAborted(signal, what);
    const x = times(t, times(v, c, true), transT);
    abortingAs(what, () => gemmInto(c, v, x, { ...run, alpha: -1, beta: 1 }));
  };
  const view = (
    data: Float64Array,
    offset: number,
    rows: number,
    cols: number,
    ld: number,
  ): Tensor<'f64'> => ({
    dtype: 'f64',
    shape: [rows, cols],
    strides: [ld, 1],
    offset,
    data,
  });
  /** V (rows j0… of the panel's reflectors: unit diagonal, zeros above it) and T of `I − V·T·Vᵀ = H_{j0}·…·H_{j0+b−1}`. */
  const blockReflector = (j0: number, b: number): { v: Tensor<'f64'>; t: Tensor<'f64'> } => {
    const rows = m - j0;
    const v = new Float64Array(rows * b);
    for (let c = 0; c < b; c++) {
      v[c * b + c] = 1;
      for (let i = c + 1; i < rows; i++) v[i * b + c] = w[(j0 + i) * n + j0 + c]!;
    }
    const vt = view(v, 0, rows, b, b);
    const sq = times(vt, vt, true).data as Float64Array; // VᵀV
    const t = new Float64Array(b * b);
    compactWyT(taus, j0, b, sq, b, t, b);
    return { v: vt, t: view(t, 0, b, b, b) };
  };
  // Reflector j: v = [1, w[j+1.., j]] (stored below the diagonal of w), H = I − τ·v·vᵀ.
  for (let j0 = 0; j0 < k; j0 += QR_PANEL) {
    const p1 = Math.min(k, j0 + QR_PANEL); // the panel's columns [j0, p1)
    for (let j = j0; j < p1; j++) {
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
      // apply H to the panel's later columns: w[j:, j+1:p1] −= τ·v·(vᵀ·w[j:, j+1:p1]); one panel: to all columns
      applyReflector(w, n, m, j, tau, w, n, j + 1, p1 === k ? n : p1, work);
    }
    if (p1 === k) break; // the last panel updated every column right of it itself
    // the columns right of the panel: C ← H_{p1−1}·…·H_{j0}·C = (I − V·T·Vᵀ)ᵀ·C
    const { v, t } = blockReflector(j0, p1 - j0);
    applyBlock(view(w, j0 * n + p1, m - j0, n - p1, n), v, t, true);
  }
  const r = new Float64Array(k * n);
  for (let i = 0; i < k; i++) for (let c = i; c < n; c++) r[i * n + c] = w[i * n + c]!;
  // Q = H₀·H₁·…·H_{k−1}·I[:, :k], accumulated backwards panel by panel: Q[j0:, j0:] ← (I − V·T·Vᵀ)·Q[j0:, j0:]
  // (the panel's own columns are still unit vectors there; the last panels' reflectors touch only rows and columns
  // ≥ j0). One panel: reflector by reflector.
  const q = new Float64Array(m * k);
  for (let i = 0; i < k; i++) q[i * k + i] = 1;
  if (k <= QR_PANEL) {
    for (let j = k - 1; j >= 0; j--) {
      throwIfAborted(signal, what);
      if (taus[j] !== 0) applyReflector(w, n, m, j, taus[j]!, q, k, j, k, work);
    }
    return { q, r };
  }
  for (let j0 = Math.floor((k - 1) / QR_PANEL) * QR_PANEL; j0 >= 0; j0 -= QR_PANEL) {
    const { v, t } = blockReflector(j0, Math.min(QR_PANEL, k - j0));
    applyBlock(view(q, j0 * k + j0, m - j0, k - j0, k), v, t, false);
  }
  return { q, r };
}

/**
 * x[j:, c0:c1] −= τ·v·(vᵀ·x[j:, c0:c1]) (x row-major with row stride `ld`, m rows) for the reflector v = [1, w[j+1.., j]]
 * stored below the diagonal of `w` (row stride `n`); `work` holds at least c1 values.
 */
function applyReflector(
  w: Float64Array,
  n: number,
  m: number,
  j: number,
  tau: number,
  x: Float64Array,
  ld: number,
  c0: number,
  c1: number,
  work: Float64Array,
): void {
  if (c0 >= c1) return;
  for (let c = c0; c < c1; c++) work[c] = x[j * ld + c]!;
  for (let i = j + 1; i < m; i++) {
    const vi = w[i * n + j]!;
    if (vi === 0) continue;
    const row = i * ld;
    for (let c = c0; c < c1; c++) work[c]! += vi * x[row + c]!;
  }
  for (let c = c0; c < c1; c++) work[c]! *= tau;
  for (let c = c0; c < c1; c++) x[j * ld + c]! -= work[c]!;
  for (let i = j + 1; i < m; i++) {
    const vi = w[i * n + j]!;
    if (vi === 0) continue;
    const row = i * ld;
    for (let c = c0; c < c1; c++) x[row + c]! -= vi * work[c]!;
  }
}
