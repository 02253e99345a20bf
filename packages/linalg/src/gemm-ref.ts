/**
 * Plain TypeScript reference GEMM over strided views: the ground truth the WebAssembly kernels are
 * tested against, and the fallback where WebAssembly SIMD is unavailable. Accumulates in f64 (JavaScript
 * numbers) for both dtypes; f32 results are rounded once when stored.
 */
import type { Matrix } from '@caldera/core';

/**
 * `c := alpha·op(a)·op(b) + beta·c` (no validation; `beta = 0` does not read `c`); with `triangle`, only
 * that triangle of the square `c` is written.
 */
export function gemmRefInto(
  c: Matrix,
  a: Matrix,
  b: Matrix,
  transA: boolean,
  transB: boolean,
  alpha: number,
  beta: number,
  triangle?: 'upper' | 'lower',
): void {
  const m = c.shape[0]!;
  const n = c.shape[1]!;
  const k = transA ? a.shape[0]! : a.shape[1]!;
  const [ai, ap] = transA ? [a.strides[1]!, a.strides[0]!] : [a.strides[0]!, a.strides[1]!];
  const [bp, bj] = transB ? [b.strides[1]!, b.strides[0]!] : [b.strides[0]!, b.strides[1]!];
  const ad = a.data;
  const bd = b.data;
  const cd = c.data;
  const row = new Float64Array(n);
  for (let i = 0; i < m; i++) {
    row.fill(0);
    const abase = a.offset + i * ai;
    for (let p = 0; p < k; p++) {
      const aip = ad[abase + p * ap]!;
      let q = b.offset + p * bp;
      for (let j = 0; j < n; j++, q += bj) row[j]! += aip * bd[q]!;
    }
    const cj = c.strides[1]!;
    const j0 = triangle === 'upper' ? i : 0;
    const j1 = triangle === 'lower' ? Math.min(n, i + 1) : n;
    let q = c.offset + i * c.strides[0]! + j0 * cj;
    for (let j = j0; j < j1; j++, q += cj)
      cd[q] = beta === 0 ? alpha * row[j]! : alpha * row[j]! + beta * cd[q]!;
  }
}
