/**
 * Symmetric matrix square root `A^{1/2}` and inverse square root `A^{−1/2}` through {@link eigh}: with
 * `A = V·diag(λ)·Vᵀ`, `f(A) = V·diag(f(λ))·Vᵀ`. The results are symmetric (exactly: only one triangle is
 * computed and mirrored).
 */
import { type Matrix, type Tensor } from '@caldera/core';
import { assertFiniteScalar } from './check.js';
import { abortingAs } from './abort.js';
import { eigh } from './eigh.js';
import { gemm } from './gemm.js';
import type { Pool } from './pool/pool.js';

/** Options of {@link sqrtmSym} and {@link invSqrtmSym}. */
export interface SqrtmOptions {
  /**
   * Eigenvalues below `floor` are clamped to it before the function is applied. Default: `0` for
   * {@link sqrtmSym} (negative rounding noise of a PSD matrix becomes 0), and `eps·n·max|λ|` for
   * {@link invSqrtmSym} (so that a singular PSD matrix gives a large but finite result).
   */
  floor?: number;
  /** Worker pool for the final product. */
  pool?: Pool;
  /** Abort (`E_ABORTED`) during the eigendecomposition. */
  signal?: AbortSignal;
}

/**
 * Principal square root of a symmetric positive semi-definite matrix (f64; `a` must be symmetric to round-off,
 * as {@link eigh} checks: `E_VALUE` otherwise). Eigenvalues below `floor` (default 0) are clamped, so the result
 * is the square root of the nearest PSD matrix in the spectral sense.
 */
export function sqrtmSym(a: Matrix, options: SqrtmOptions = {}): Tensor<'f64'> {
  return spectralFunction(a, options, false);
}

/**
 * Inverse square root `A^{−1/2}` of a symmetric positive (semi-)definite matrix (f64; `a` symmetric, as
 * for {@link sqrtmSym}). Eigenvalues are clamped below at `floor` (default `eps·n·max|λ|`) before `λ^{−1/2}`
 * is taken.
 */
export function invSqrtmSym(a: Matrix, options: SqrtmOptions = {}): Tensor<'f64'> {
  return spectralFunction(a, options, true);
}

function spectralFunction(a: Matrix, options: SqrtmOptions, inverse: boolean): Tensor<'f64'> {
  const fn = inverse ? 'invSqrtmSym' : 'sqrtmSym';
  // an abort named as this function's, not eigh's
  const { values, vectors } = abortingAs(fn, () => eigh(a, options.signal ? { signal: options.signal } : {}));
  const n = values.length;
  let maxAbs = 0;
  for (const l of values) maxAbs = Math.max(maxAbs, Math.abs(l));
  const floor = options.floor ?? (inverse ? 2 ** -52 * n * maxAbs : 0);
  assertFiniteScalar(floor, fn, 'floor');
  // W = V·diag(√f(λ)) so that f(A) = W·Wᵀ is symmetric PSD by construction
  const w = Float64Array.from(vectors.data);
  const scale = Float64Array.from(values, (l) => {
    const c = Math.max(l, floor);
    if (c <= 0) return 0;
    return inverse ? c ** -0.25 : c ** 0.25;
  });
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) w[i * n + j]! *= scale[j]!;
  const wt: Tensor<'f64'> = { dtype: 'f64', shape: [n, n], strides: [n, 1], offset: 0, data: w };
  const out = gemm(wt, wt, {
    transB: true,
    checkFinite: false,
    ...(options.pool ? { pool: options.pool } : {}),
  });
  // exact symmetry
  const d = out.data;
  for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) d[j * n + i] = d[i * n + j]!;
  return out;
}
