import { Rng } from '@caldera/core';
import { createPool } from '@caldera/linalg';
import { afterAll, describe, expect, it } from 'vitest';
import { timesLower, timesLowerTransposed } from './lower-product.js';

describe('timesLower', () => {
  const pool = createPool({ threads: 2 });
  afterAll(() => pool.dispose());

  // n = 1100: blocks of 512, 512 and 76 columns; every block reads a different rectangle of M
  for (const [rows, n] of [
    [7, 1100],
    [3, 40],
  ] as const)
    it(`x·M for lower-triangular M equals the brute-force f64 product (${rows}×${n})`, () => {
      const rng = new Rng(n);
      const x = rng.fillNormal(new Float32Array(rows * n));
      const m = new Float32Array(n * n);
      for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) m[i * n + j] = rng.normal();
      for (const options of [{}, { pool }]) {
        const got = timesLower(x, rows, m, n, options);
        for (let r = 0; r < rows; r++)
          for (let j = 0; j < n; j++) {
            let s = 0;
            let mag = 0;
            for (let p = j; p < n; p++) {
              s += x[r * n + p]! * m[p * n + j]!;
              mag += Math.abs(x[r * n + p]! * m[p * n + j]!);
            }
            // f32 accumulation of ≤ n products: |error| ≤ n·2⁻²⁴·Σ|terms| (the classical bound)
            expect(Math.abs(got[r * n + j]! - s)).toBeLessThanOrEqual(n * 2 ** -24 * mag);
          }
      }
    });

  for (const [rows, n] of [
    [7, 1100],
    [3, 40],
  ] as const)
    it(`x·Mᵀ for lower-triangular M equals the brute-force f64 product (${rows}×${n})`, () => {
      const rng = new Rng(n + 1);
      const x = rng.fillNormal(new Float32Array(rows * n));
      const m = new Float32Array(n * n);
      for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) m[i * n + j] = rng.normal();
      for (const options of [{}, { pool }]) {
        // into a used array: every value is overwritten
        const got = timesLowerTransposed(x, rows, m, n, options, new Float32Array(rows * n).fill(7));
        for (let r = 0; r < rows; r++)
          for (let j = 0; j < n; j++) {
            let s = 0;
            let mag = 0;
            for (let p = 0; p <= j; p++) {
              s += x[r * n + p]! * m[j * n + p]!;
              mag += Math.abs(x[r * n + p]! * m[j * n + p]!);
            }
            // f32 accumulation of ≤ n products: |error| ≤ n·2⁻²⁴·Σ|terms| (the classical bound)
            expect(Math.abs(got[r * n + j]! - s)).toBeLessThanOrEqual(n * 2 ** -24 * mag);
          }
      }
    });
});
