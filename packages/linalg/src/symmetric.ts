/** Symmetric matrices stored whole: one triangle made from the other. */
import type { Matrix } from '@caldera/core';
import { assertMatrix, assertSquare } from './check.js';

/**
 * In place: copy the upper triangle of the square matrix `c` (any strided view) onto its strict lower triangle, so
 * that `c` is exactly symmetric. By 64×64 tiles, which keep the rows read and the columns written in cache.
 */
export function mirrorUpper(c: Matrix): void {
  assertMatrix(c, 'mirrorUpper', 'c');
  assertSquare(c, 'mirrorUpper', 'c');
  const n = c.shape[0]!;
  const [s0, s1] = c.strides as [number, number];
  const o = c.offset;
  const d = c.data;
  const T = 64;
  for (let i0 = 0; i0 < n; i0 += T)
    for (let j0 = i0; j0 < n; j0 += T) {
      const i1 = Math.min(n, i0 + T);
      const j1 = Math.min(n, j0 + T);
      for (let i = i0; i < i1; i++)
        for (let j = Math.max(j0, i + 1); j < j1; j++) d[o + j * s0 + i * s1] = d[o + i * s0 + j * s1]!;
    }
}
