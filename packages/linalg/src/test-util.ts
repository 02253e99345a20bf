/**
 * Helpers for the kernel tests (not exported from the package): seeded random matrices, strided views
 * and an independent brute-force product with its rounding-error scale.
 */
import { Rng, type Matrix } from '@caldera/core';

/** Unit roundoff of each dtype. */
export const UNIT_ROUNDOFF = { f32: 2 ** -24, f64: 2 ** -53 } as const;

/** A seeded `rows × cols` matrix with N(0, 1) entries. */
export function randn(dtype: 'f32' | 'f64', rows: number, cols: number, seed: number): Matrix {
  const data = dtype === 'f32' ? new Float32Array(rows * cols) : new Float64Array(rows * cols);
  new Rng(seed).fillNormal(data);
  return { dtype, shape: [rows, cols], strides: [cols, 1], offset: 0, data } as Matrix;
}

/**
 * A `rows × cols` view inside a larger buffer with row stride `rows·…`, a column step of 2 and an offset,
 * filled with N(0, 1); the gaps hold a sentinel so that writes outside the view can be detected.
 */
export function stridedRandn(
  dtype: 'f32' | 'f64',
  rows: number,
  cols: number,
  seed: number,
  sentinel = 12345,
): Matrix {
  const ld = 2 * cols + 3;
  const offset = 5;
  const len = offset + rows * ld + 2;
  const data = dtype === 'f32' ? new Float32Array(len) : new Float64Array(len);
  data.fill(sentinel);
  const rng = new Rng(seed);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) data[offset + i * ld + 2 * j] = rng.normal();
  return { dtype, shape: [rows, cols], strides: [ld, 2], offset, data } as Matrix;
}

/** Element (i, j) of a strided matrix. */
export function at(t: Matrix, i: number, j: number): number {
  return t.data[t.offset + i * t.strides[0]! + j * t.strides[1]!]!;
}

/** The transposed view (no copy). */
export function tview(t: Matrix): Matrix {
  return { ...t, shape: [t.shape[1]!, t.shape[0]!], strides: [t.strides[1]!, t.strides[0]!] } as Matrix;
}

/**
 * Brute-force `alpha·op(A)·op(B) + beta·C` in f64 by triple loop, with the elementwise magnitude
 * `|alpha|·(|op(A)|·|op(B)|) + |beta|·|C|` used to scale the rounding-error bound.
 */
export function naiveGemm(
  a: Matrix,
  b: Matrix,
  transA: boolean,
  transB: boolean,
  alpha: number,
  beta: number,
  c?: Matrix,
): { value: Float64Array; magnitude: Float64Array; m: number; n: number; k: number } {
  const m = transA ? a.shape[1]! : a.shape[0]!;
  const k = transA ? a.shape[0]! : a.shape[1]!;
  const n = transB ? b.shape[0]! : b.shape[1]!;
  const value = new Float64Array(m * n);
  const magnitude = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      let g = 0;
      for (let p = 0; p < k; p++) {
        const x = transA ? at(a, p, i) : at(a, i, p);
        const y = transB ? at(b, j, p) : at(b, p, j);
        s += x * y;
        g += Math.abs(x * y);
      }
      const cij = c && beta !== 0 ? at(c, i, j) : 0;
      value[i * n + j] = alpha * s + beta * cij;
      magnitude[i * n + j] = Math.abs(alpha) * g + Math.abs(beta * cij);
    }
  }
  return { value, magnitude, m, n, k };
}

/**
 * Largest ratio |got − want| / bound over all elements, where bound = (k + 4)·u·magnitude + tiny:
 * the classical dot-product bound |fl(xᵀy) − xᵀy| ≤ γ_k·|x|ᵀ|y| (γ_k ≈ k·u) plus one rounding each for
 * the rounding of alpha, the alpha and beta products, the final sum and store. A ratio ≤ 1 means the result is within it.
 */
export function worstErrorRatio(
  got: Matrix,
  want: { value: Float64Array; magnitude: Float64Array; m: number; n: number; k: number },
): number {
  const u = UNIT_ROUNDOFF[got.dtype];
  let worst = 0;
  for (let i = 0; i < want.m; i++) {
    for (let j = 0; j < want.n; j++) {
      const e = Math.abs(at(got, i, j) - want.value[i * want.n + j]!);
      const bound = (want.k + 4) * u * want.magnitude[i * want.n + j]! + 1e-300;
      worst = Math.max(worst, e / bound);
    }
  }
  return worst;
}
