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

describe('transposed', () => {
  it('gives the c×r transpose of an r×c matrix, across the 32-wide tiles', () => {
    for (const [r, c] of [
      [1, 5],
      [33, 70],
      [70, 33],
    ] as const) {
      const a = Float32Array.from({ length: r * c }, (_, i) => i + 0.5); // every entry distinct
      const out = transposed(a, r, c);
      expect(out).toBeInstanceOf(Float32Array);
      for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) expect(out[j * r + i]).toBe(a[i * c + j]);
    }
  });
});
