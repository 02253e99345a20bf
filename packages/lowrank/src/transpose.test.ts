import { describe, expect, it } from 'vitest';
import { transposed, transposeSquareInPlace } from './transpose.js';

describe('transposeSquareInPlace', () => {
  it('gives the transpose exactly, at sizes below, at and across the 32-wide tiles', () => {
    for (const n of [1, 2, 31, 32, 33, 70]) {
      for (const a of [new Float64Array(n * n), new Float32Array(n * n)]) {
        a.forEach((_, i) => (a[i] = i + 0.25)); // every entry distinct
        const want = transposed(a, n, n);
        for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) expect(want[j * n + i]).toBe(a[i * n + j]);
        transposeSquareInPlace(a, n);
        expect(Array.from(a)).toEqual(Array.from(want));
      }
    }
  });
});
