/**
 * Internal helpers of the factorisation routines: validated row-major f64 copies of input matrices and
 * wrapping of row-major buffers as tensors. Not exported from the package.
 */
import type { Matrix, Tensor } from '@caldera/core';
import { assertFiniteMatrix, assertMatrix, assertSquare } from './check.js';

/** A validated (2-D, f32/f64, finite) matrix copied into a fresh row-major Float64Array. */
export function denseCopy(a: Matrix, fn: string, name: string, square = false): Float64Array {
  assertMatrix(a, fn, name);
  if (square) assertSquare(a, fn, name);
  assertFiniteMatrix(a, fn, name);
  const [m, n] = a.shape as [number, number];
  const [s0, s1] = a.strides as [number, number];
  const out = new Float64Array(m * n);
  const d = a.data;
  for (let i = 0; i < m; i++) {
    let p = a.offset + i * s0;
    for (let j = 0; j < n; j++, p += s1) out[i * n + j] = d[p]!;
  }
  return out;
}

/** Wrap a row-major `m × n` buffer as a contiguous f64 tensor. */
export function wrap(data: Float64Array, m: number, n: number): Tensor<'f64'> {
  return { dtype: 'f64', shape: [m, n], strides: [n, 1], offset: 0, data };
}

/** Row-major transpose of an `m × n` buffer into a new `n × m` buffer. */
export function transposeBuf(a: Float64Array, m: number, n: number): Float64Array {
  const t = new Float64Array(m * n);
  const B = 32;
  for (let i0 = 0; i0 < m; i0 += B)
    for (let j0 = 0; j0 < n; j0 += B) {
      const i1 = Math.min(m, i0 + B);
      const j1 = Math.min(n, j0 + B);
      for (let i = i0; i < i1; i++) for (let j = j0; j < j1; j++) t[j * m + i] = a[i * n + j]!;
    }
  return t;
}

/**
 * The power of two `s` with `s·maxAbs` in [1, 2) (1 when `maxAbs` is 0), clamped to the normal range. Multiplying
 * by it is exact, and the factorisations commute with it, so scaling their working copy by `s` and their
 * singular values or eigenvalues back by `1/s` changes no bit of a result inside the range where no square
 * over- or underflows, and keeps the range where they would (|a| beyond about 1e±77 for sums of squares of
 * squares, 1e±150 for sums of squares) from turning into NaN, zeros or a convergence failure.
 */
export function unitScale(maxAbs: number): number {
  if (!(maxAbs > 0) || !Number.isFinite(maxAbs)) return 1;
  const e = Math.floor(Math.log2(maxAbs));
  return 2 ** Math.max(-1023, Math.min(1022, -e));
}

/**
 * Scale the working copy `w` in place by {@link unitScale} of its largest |entry| and return the factor, which
 * {@link unscale} takes to bring the singular values or eigenvalues back. With `lowerN` only the lower triangle
 * (j ≤ i) of the row-major `lowerN × lowerN` buffer is read and scaled (eigh, which uses no other entry); without it,
 * every entry (svd).
 */
export function scaleToUnit(w: Float64Array, lowerN?: number): number {
  let mx = 0;
  if (lowerN === undefined) for (let i = 0; i < w.length; i++) mx = Math.max(mx, Math.abs(w[i]!));
  else {
    const n = lowerN;
    for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) mx = Math.max(mx, Math.abs(w[i * n + j]!));
  }
  const scale = unitScale(mx);
  if (scale === 1) return scale;
  if (lowerN === undefined) for (let i = 0; i < w.length; i++) w[i]! *= scale;
  else {
    const n = lowerN;
    for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) w[i * n + j]! *= scale;
  }
  return scale;
}

/**
 * The values of the scaled matrix back to those of the input: divides `values` by the factor {@link scaleToUnit}
 * returned (in place; exact unless they leave the range) and returns them.
 */
export function unscale(values: Float64Array, scale: number): Float64Array {
  if (scale !== 1) for (let i = 0; i < values.length; i++) values[i]! /= scale;
  return values;
}
