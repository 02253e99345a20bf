/**
 * Symmetric eigendecomposition `A = V·diag(λ)·Vᵀ`: Householder tridiagonalisation followed by the implicit
 * QL iteration, in f64. Robust for repeated and clustered eigenvalues (the vectors stay orthonormal because
 * they are products of orthogonal transformations).
 */
import { assertCallbacks, CalderaError, type Matrix, type Tensor } from '@caldera/core';
import { denseCopy, scaleToUnit, unscale, wrap } from './dense.js';
import type { Pool } from './pool/pool.js';
import {
  backTransform,
  backTransformBlocked,
  packReflectors,
  tridiagonalizeBlocked,
  tridiagonalQL,
} from './tridiag.js';
import { tridiagonalDC } from './tridiag-dc.js';

/** Options of {@link eigh}. */
export interface EighOptions {
  /** Compute eigenvectors. Default `true`; `false` returns an empty `0 × 0` `vectors` tensor (O(n²) after the reduction). */
  vectors?: boolean;
  /**
   * Tridiagonal eigensolver: `'dc'` divide and conquer (merge products on gemm; fast for large n), `'ql'`
   * implicit QL with rotations accumulated in TypeScript. Default `'auto'`: `'dc'` for n > 64.
   */
  method?: 'auto' | 'dc' | 'ql';
  /** Worker pool for the reduction's symv and updates, the divide-and-conquer merge products and secular equations, and the back-transformation. */
  pool?: Pool;
  /** Abort between reduction steps / eigenvalues (`E_ABORTED`). */
  signal?: AbortSignal;
  /** Called with the phase and fraction done (0–1) at phase boundaries. */
  onProgress?: (p: { phase: 'tridiagonalize' | 'iterate' | 'backTransform'; fraction: number }) => void;
}

/** Result of {@link eigh}. */
export interface Eigh {
  /** Eigenvalues in ascending order. */
  values: Float64Array;
  /** `n × n` (f64), column `i` is the unit eigenvector of `values[i]`. */
  vectors: Tensor<'f64'>;
}

/**
 * Relative symmetry tolerance of {@link eigh}: `|a_ij − a_ji| ≤ tol · max|a|`. A matrix built symmetric (a
 * Hessian from `syrk`, which mirrors one triangle, or `A + Aᵀ`) passes exactly; the slack is for a matrix
 * computed in two orders, e.g. `XᵀX` from a plain gemm, whose mirrored entries differ by round-off of about
 * √k·u·max|a| for k-term sums. f32 (u ≈ 6e-8): 1e-5, quant's `ldlq` tolerance for H too, covers sums of up to
 * ~25 000 terms; f64 (u ≈ 1.1e-16): 1e-10 covers any k with a margin of 1000 at k = 10⁶. Past that the asymmetry
 * is real, and decomposing the lower triangle alone would silently answer another question.
 */
const SYMMETRY_TOL = { f32: 1e-5, f64: 1e-10 } as const;

/**
 * `E_VALUE` naming the worst pair (i, j), i > j, unless the row-major `n × n` `w` is symmetric within
 * `tol·max|w|`. O(n²): two passes over the copy eigh makes anyway.
 */
function assertSymmetric(w: Float64Array, n: number, tol: number): void {
  let maxAbs = 0;
  for (let i = 0; i < w.length; i++) maxAbs = Math.max(maxAbs, Math.abs(w[i]!));
  let worst = 0;
  let wi = 0;
  let wj = 0;
  for (let i = 1; i < n; i++)
    for (let j = 0; j < i; j++) {
      const d = Math.abs(w[i * n + j]! - w[j * n + i]!);
      if (d > worst) [worst, wi, wj] = [d, i, j];
    }
  if (worst > tol * maxAbs)
    throw new CalderaError(
      'E_VALUE',
      `eigh: a is not symmetric: worst at (${wi}, ${wj}), ${w[wi * n + wj]} vs ${w[wj * n + wi]} ` +
        `(|difference| ${worst.toPrecision(3)} > ${tol} · max|a| ${maxAbs.toPrecision(3)})`,
    );
}

/**
 * Eigenvalues (ascending) and eigenvectors (columns) of a symmetric `n × n` matrix (the input is not
 * modified). Non-square → `E_SHAPE`, non-finite anywhere in `a` → `E_VALUE`, a matrix that is not symmetric to
 * round-off (`|a_ij − a_ji| > tol·max|a|`, tol 1e-5 for f32 input, 1e-10 for f64) → `E_VALUE` naming the worst
 * (i, j), an unknown `method` → `E_VALUE`. Within the tolerance, the lower triangle is the one decomposed. With a
 * pool, the results agree with the single-threaded ones to rounding (the symmetric products split rows over the
 * threads), not bit for bit.
 * @example
 * const { values, vectors } = eigh(h); // h ≈ vectors·diag(values)·vectorsᵀ
 */
export function eigh(a: Matrix, options: EighOptions = {}): Eigh {
  const w = denseCopy(a, 'eigh', 'a', true);
  const n = a.shape[0]!;
  assertSymmetric(w, n, SYMMETRY_TOL[a.dtype]);
  const wantVectors = options.vectors ?? true;
  const { signal, onProgress } = options;
  assertCallbacks(options, 'eigh', ['onProgress']);
  const method = options.method ?? 'auto';
  if (method !== 'auto' && method !== 'dc' && method !== 'ql') {
    throw new CalderaError('E_VALUE', `eigh: method must be 'auto', 'dc' or 'ql', got ${String(method)}`);
  }
  // work on 2^k·A with its largest entry near 1 (exact; see unitScale), so that the sums of squares of the
  // reduction neither overflow (NaN for |a| ≳ 1e150) nor underflow (wrong values for |a| ≲ 1e-140)
  const scale = scaleToUnit(w, n);
  onProgress?.({ phase: 'tridiagonalize', fraction: 0 });
  const { d, e, taus } = tridiagonalizeBlocked(w, n, options.pool, signal);
  onProgress?.({ phase: 'iterate', fraction: 0 });
  if (wantVectors && (method === 'dc' || (method === 'auto' && n > 64))) {
    // the reflectors move to packed storage (n²/2) so that w can take the eigenvectors
    const refl = packReflectors(w, n);
    const dc = tridiagonalDC(d, e, n, options.pool, signal, undefined, w);
    onProgress?.({ phase: 'backTransform', fraction: 0 });
    backTransformBlocked(refl, taus, n, dc.q, options.pool, signal);
    onProgress?.({ phase: 'backTransform', fraction: 1 });
    return { values: unscale(dc.lam, scale), vectors: wrap(dc.q, n, n) };
  }
  let zt: Float64Array | undefined;
  if (wantVectors) {
    zt = new Float64Array(n * n);
    for (let i = 0; i < n; i++) zt[i * n + i] = 1;
  }
  tridiagonalQL(d, e, n, zt, signal);
  const order = Array.from({ length: n }, (_, i) => i).sort((x, y) => d[x]! - d[y]!);
  const values = unscale(
    Float64Array.from(order, (i) => d[i]!),
    scale,
  );
  if (!zt) {
    onProgress?.({ phase: 'iterate', fraction: 1 });
    return { values, vectors: wrap(new Float64Array(0), 0, 0) };
  }
  onProgress?.({ phase: 'backTransform', fraction: 0 });
  backTransform(w, taus, n, zt, signal);
  // vectors as columns, in ascending order of eigenvalue (reuse w as the output buffer)
  const out = w;
  for (let col = 0; col < n; col++) {
    const src = order[col]! * n;
    for (let k = 0; k < n; k++) out[k * n + col] = zt[src + k]!;
  }
  onProgress?.({ phase: 'backTransform', fraction: 1 });
  return { values, vectors: wrap(out, n, n) };
}
