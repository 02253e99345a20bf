/**
 * Thin singular value decomposition `A = U·diag(s)·Vᵀ` by Householder QR followed by one-sided (Hestenes)
 * Jacobi on the triangular factor, in f64. One-sided Jacobi computes small singular values to high relative
 * accuracy and returns orthonormal singular vectors even for ill-conditioned or rank-deficient matrices.
 */
import { CalderaError, throwIfAborted, type Matrix, type Tensor } from '@caldera/core';
import { denseCopy, scaleToUnit, transposeBuf, unscale, wrap } from './dense.js';
import { abortingAs } from './abort.js';
import { gemm } from './gemm.js';
import { qrBuf } from './qr.js';

/** Options of {@link svd}. */
export interface SvdOptions {
  /** Abort between the QR's columns, between rows of each Jacobi sweep and between waves of the product `U = Q·U_R` (`E_ABORTED`). */
  signal?: AbortSignal;
  /** Maximum number of Jacobi sweeps before `E_VALUE` (convergence failure). Default 60. */
  maxSweeps?: number;
}

/** Result of {@link svd}. */
export interface Svd {
  /** `m × k` with orthonormal columns (f64), `k = min(m, n)`. */
  u: Tensor<'f64'>;
  /** The `k` singular values, descending, ≥ 0. */
  s: Float64Array;
  /** `k × n` with orthonormal rows (f64). */
  vt: Tensor<'f64'>;
}

/**
 * Thin SVD of an `m × n` matrix (any strides, f32/f64; not modified). Singular values below `k·ε·‖A‖_F`
 * (`k = min(m, n)`, ε = 2⁻⁵³) are rounding noise (a rank-deficient matrix's) and returned as 0; columns of `u` belonging
 * to zero singular values are completed to an orthonormal set. Non-finite input → `E_VALUE`.
 * @example
 * const { u, s, vt } = svd(a); // a ≈ u·diag(s)·vt
 */
export function svd(a: Matrix, options: SvdOptions = {}): Svd {
  const w = denseCopy(a, 'svd', 'a');
  const [m, n] = a.shape as [number, number];
  const r = svdBuf(w, m, n, options);
  const k = Math.min(m, n);
  return { u: wrap(r.u, m, k), s: r.s, vt: wrap(r.vt, k, n) };
}

/**
 * SVD of the row-major `m × n` buffer `w` (overwritten). Returns row-major u (m×k), s, vt (k×n). An abort through
 * `options.signal` names `what`.
 * @internal
 */
export function svdBuf(
  w: Float64Array,
  m: number,
  n: number,
  options: SvdOptions = {},
  what = 'svd',
): { u: Float64Array; s: Float64Array; vt: Float64Array } {
  if (m < n) {
    // A = (Aᵀ)ᵀ: svd(Aᵀ) = U'·S·V'ᵀ  ⇒  A = V'·S·U'ᵀ
    const t = svdBuf(transposeBuf(w, m, n), n, m, options, what);
    return { u: transposeBuf(t.vt, m, m), s: t.s, vt: transposeBuf(t.u, n, m) };
  }
  // m ≥ n: A = Q·R, R = U_R·S·Vᵀ, U = Q·U_R. The Jacobi sweeps work on sums of squares of the columns: on
  // 2^k·A with its largest entry near 1 (exact, see unitScale) they neither overflow nor underflow, where for
  // |a| beyond about 1e±77 they would fail to converge or return zero singular values.
  const scale = scaleToUnit(w);
  const signal = options.signal;
  const { q, r } = qrBuf(w, m, n, signal, what);
  const res = jacobiSquare(r, n, options, what);
  unscale(res.s, scale);
  // U = Q·U_R on the gemm kernels (a scalar loop over Q's rows took 1 s at 4096 × 310)
  const u = abortingAs(what, () =>
    gemm(wrap(q, m, n), wrap(res.u, n, n), { checkFinite: false, ...(signal ? { signal } : {}) }),
  ).data as Float64Array;
  return { u, s: res.s, vt: res.vt };
}

/** One-sided Jacobi SVD of a square n×n row-major matrix (not modified). */
function jacobiSquare(
  a: Float64Array,
  n: number,
  options: SvdOptions,
  what: string,
): { u: Float64Array; s: Float64Array; vt: Float64Array } {
  // Work on G = Aᵀ: its rows are the columns of A; rotating rows of G = rotating columns of A.
  const g = transposeBuf(a, n, n);
  const vt = new Float64Array(n * n); // accumulates Jᵀ; A·J = W with orthogonal columns ⇒ V = J
  for (let i = 0; i < n; i++) vt[i * n + i] = 1;
  const eps = 2 ** -53;
  const maxSweeps = options.maxSweeps ?? 60;
  if (!Number.isInteger(maxSweeps) || maxSweeps < 1)
    throw new CalderaError(
      'E_VALUE',
      `${what}: maxSweeps must be a positive integer, got ${String(maxSweeps)}`,
    );
  const norms = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let c = 0; c < n; c++) s += g[i * n + c]! ** 2;
    norms[i] = s;
  }
  // A column whose norm is below n·eps·‖A‖_F is rounding noise (what a rank-deficient matrix leaves after the QR): the
  // rotations cannot orthogonalise it against the others, whose own rounding errors are as large, and used to shrink
  // it sweep after sweep into underflow without converging (E_VALUE on a matrix of ones). It takes part in no
  // rotation and counts as a zero singular value. ‖A‖_F² is the sum of the column norms², which rotations keep.
  let total = 0;
  for (let i = 0; i < n; i++) total += norms[i]!;
  const negligible = (n * eps) ** 2 * total;
  let converged = n < 2;
  for (let sweep = 0; sweep < maxSweeps && !converged; sweep++) {
    let rotations = 0;
    for (let p = 0; p < n - 1; p++) {
      throwIfAborted(options.signal, what); // each row p: up to n−1 pairs of O(n) work
      const rp = p * n;
      for (let q = p + 1; q < n; q++) {
        const rq = q * n;
        const alpha = norms[p]!;
        const beta = norms[q]!;
        if (alpha <= negligible || beta <= negligible) continue;
        let gamma = 0;
        for (let c = 0; c < n; c++) gamma += g[rp + c]! * g[rq + c]!;
        if (Math.abs(gamma) <= n * eps * Math.sqrt(alpha) * Math.sqrt(beta)) continue;
        rotations++;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = (zeta >= 0 ? 1 : -1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const cs = 1 / Math.sqrt(1 + t * t);
        const sn = cs * t;
        let np = 0;
        let nq = 0;
        for (let c = 0; c < n; c++) {
          const x = g[rp + c]!;
          const y = g[rq + c]!;
          const xp = cs * x - sn * y;
          const yq = sn * x + cs * y;
          g[rp + c] = xp;
          g[rq + c] = yq;
          np += xp * xp;
          nq += yq * yq;
        }
        norms[p] = np;
        norms[q] = nq;
        for (let c = 0; c < n; c++) {
          const x = vt[rp + c]!;
          const y = vt[rq + c]!;
          vt[rp + c] = cs * x - sn * y;
          vt[rq + c] = sn * x + cs * y;
        }
      }
    }
    if (rotations === 0) converged = true;
  }
  if (!converged) {
    throw new CalderaError(
      'E_VALUE',
      `svd: one-sided Jacobi did not converge in ${maxSweeps} sweeps (n = ${n})`,
    );
  }
  // σᵢ = ‖gᵢ‖, uᵢ = gᵢ/σᵢ (negligible columns: σᵢ = 0, uᵢ completed below); sort descending
  const sig = Float64Array.from(norms, (x) => (x <= negligible ? 0 : Math.sqrt(x)));
  const order = Array.from({ length: n }, (_, i) => i).sort((x, y) => sig[y]! - sig[x]!);
  const s = Float64Array.from(order, (i) => sig[i]!);
  const ut = new Float64Array(n * n); // rows = left singular vectors
  const vtOut = new Float64Array(n * n);
  const zero: number[] = [];
  order.forEach((src, dst) => {
    const sv = sig[src]!;
    vtOut.set(vt.subarray(src * n, src * n + n), dst * n);
    if (sv === 0) {
      zero.push(dst);
      return;
    }
    for (let c = 0; c < n; c++) ut[dst * n + c] = g[src * n + c]! / sv;
  });
  completeOrthonormalRows(ut, n, zero);
  return { u: transposeBuf(ut, n, n), s, vt: vtOut };
}

/**
 * Fill the listed rows of `ut` (n×n, rows orthonormal elsewhere) with unit vectors orthogonal to all other
 * rows: the first standard basis vector with at least half its length outside the filled rows (else the one with the
 * most), after two Gram–Schmidt passes. Its length outside them is read from the filled rows' column sums of squares
 * (`‖e_c − P·e_c‖² = 1 − Σ_r ut[r, c]²` for orthonormal rows), kept up to date: each row costs one candidate's
 * passes, O(n·filled), where trying the candidates in turn made a rank-deficient n×n matrix O(n⁴) (the zero 300×300
 * matrix took 16 s).
 */
function completeOrthonormalRows(ut: Float64Array, n: number, rows: number[]): void {
  const filled = new Set<number>();
  for (let i = 0; i < n; i++) if (!rows.includes(i)) filled.add(i);
  const colSq = new Float64Array(n);
  const addRow = (r: number) => {
    for (let c = 0; c < n; c++) colSq[c]! += ut[r * n + c]! ** 2;
  };
  for (const r of filled) addRow(r);
  const cand = new Float64Array(n);
  for (const target of rows) {
    let e = 0;
    while (e < n && 1 - colSq[e]! < 0.25) e++;
    if (e === n) {
      e = 0;
      for (let c = 1; c < n; c++) if (colSq[c]! < colSq[e]!) e = c;
    }
    cand.fill(0);
    cand[e] = 1;
    for (let pass = 0; pass < 2; pass++)
      for (const r of filled) {
        let d = 0;
        for (let c = 0; c < n; c++) d += ut[r * n + c]! * cand[c]!;
        for (let c = 0; c < n; c++) cand[c]! -= d * ut[r * n + c]!;
      }
    let nrm = 0;
    for (let c = 0; c < n; c++) nrm += cand[c]! ** 2;
    nrm = Math.sqrt(nrm);
    if (nrm === 0) continue; // no room left (cannot happen while fewer than n rows are filled)
    for (let c = 0; c < n; c++) ut[target * n + c] = cand[c]! / nrm;
    filled.add(target);
    addRow(target);
  }
}
