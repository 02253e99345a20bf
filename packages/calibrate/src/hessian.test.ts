import { describe, expect, it } from 'vitest';
import { isCalderaError, Rng } from '@caldera/core';
import { createPool } from '@caldera/linalg';
import { finalizeHessian, HessianAccumulator } from './hessian.js';

function randomRows(rows: number, n: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  const x = new Float32Array(rows * n);
  // correlated columns: column j mixes a shared factor, like real activations
  for (let r = 0; r < rows; r++) {
    const f = rng.normal();
    for (let j = 0; j < n; j++) x[r * n + j] = rng.normal() + (j % 3) * f;
  }
  return x;
}

function bruteMoment(x: Float32Array, rows: number, n: number): Float64Array {
  const h = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let r = 0; r < rows; r++) s += x[r * n + i]! * x[r * n + j]!;
      h[i * n + j] = s / rows;
    }
  return h;
}

describe('HessianAccumulator', () => {
  it('equals the brute-force XᵀX/N on the SIMD path (calls of 128 rows, n = 200), with or without a pool to the bit', async () => {
    const n = 200;
    const x = randomRows(384, n, 5);
    const alone = new HessianAccumulator(n);
    const pool = createPool({ threads: 2 });
    try {
      const pooled = new HessianAccumulator(n, { pool });
      for (let w = 0; w < 3; w++) {
        const rows = x.subarray(w * 128 * n, (w + 1) * 128 * n);
        alone.add(rows, 128);
        pooled.add(rows, 128);
      }
      expect(Array.from(pooled.sum)).toEqual(Array.from(alone.sum));
    } finally {
      pool.dispose();
    }
    const h = alone.secondMoment().data;
    const ref = bruteMoment(x, 384, n);
    // exact f32 products summed in f64 in two orders over 384 rows of O(1)–O(3) values: ~1e-14 relative; 1e-12
    for (let i = 0; i < n * n; i++)
      expect(Math.abs(h[i]! - ref[i]!)).toBeLessThan(1e-12 * (1 + Math.abs(ref[i]!)));
    expect(alone.count).toBe(384);
  });

  it('equals the brute-force XᵀX/N for row counts that are not multiples of the 4-row block', () => {
    const n = 13;
    const rows = 23;
    const x = randomRows(rows, n, 1);
    const acc = new HessianAccumulator(n);
    acc.add(x, rows);
    const h = acc.secondMoment().data;
    const ref = bruteMoment(x, rows, n);
    // Both sum the same f32 products in f64 in different orders: relative error ~ rows·eps64 ≈ 5e-15.
    for (let i = 0; i < n * n; i++)
      expect(Math.abs(h[i]! - ref[i]!)).toBeLessThan(1e-12 * (1 + Math.abs(ref[i]!)));
  });

  it('merging shards equals one pass to f64 round-off', () => {
    const n = 16;
    const x = randomRows(37, n, 2);
    const whole = new HessianAccumulator(n);
    whole.add(x, 37);
    const parts = [new HessianAccumulator(n), new HessianAccumulator(n), new HessianAccumulator(n)];
    parts[0]!.add(x.subarray(0, 10 * n), 10);
    parts[1]!.add(x.subarray(10 * n, 30 * n), 20);
    parts[2]!.add(x.subarray(30 * n), 7);
    parts[0]!.merge(parts[1]!);
    parts[0]!.merge(parts[2]!);
    expect(parts[0]!.count).toBe(37);
    const a = whole.secondMoment().data;
    const b = parts[0]!.secondMoment().data;
    // Same products, regrouped sums: bounded by 37·eps64·Σ|terms| ≪ 1e-12 for these O(10) magnitudes.
    for (let i = 0; i < n * n; i++)
      expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(1e-12 * (1 + Math.abs(a[i]!)));
  });

  it('adds Float64Array rows at f64 precision, and refuses to merge a Hessian of another size (E_SHAPE)', () => {
    const n = 24;
    const rows = 50;
    const x = new Float64Array(rows * n);
    new Rng(2).fillNormal(x); // f64 normals: almost none is an f32 value
    const acc = new HessianAccumulator(n);
    acc.add(x, rows);
    acc.add(x.subarray(0, 5 * n), 5);
    expect(acc.count).toBe(55);
    const ref = new Float64Array(n * n);
    for (const [xs, r] of [[x, rows] as const, [x.subarray(0, 5 * n), 5] as const])
      for (let k = 0; k < r; k++)
        for (let i = 0; i < n; i++)
          for (let j = 0; j < n; j++) ref[i * n + j]! += xs[k * n + i]! * xs[k * n + j]!;
    // f64 products (rounded, unlike f32·f32) summed in two orders over 55 rows: relative to the diagonal ~55·eps64 ≈
    // 1e-14; 1e-12 is far from the ~1e-8 that rounding the rows to f32 would leave. Upper triangle: what counts.
    for (let i = 0; i < n; i++)
      for (let j = i; j < n; j++)
        expect(Math.abs(acc.sum[i * n + j]! - ref[i * n + j]!)).toBeLessThan(1e-12 * ref[i * n + i]!);
    const before = Float64Array.from(acc.sum);
    try {
      acc.merge(new HessianAccumulator(3));
      expect.unreachable();
    } catch (e) {
      expect(isCalderaError(e, 'E_SHAPE')).toBe(true);
      expect((e as Error).message).toMatch(/cannot merge Hessians of size 3 and 24/);
    }
    expect(acc.sum).toEqual(before);
    expect(acc.count).toBe(55);
  });

  it('finalizeHessian normalises to unit mean diagonal, then damps; dead channels stay positive', () => {
    const n = 8;
    const rows = 50;
    const x = randomRows(rows, n, 3);
    for (let r = 0; r < rows; r++) x[r * n + 5] = 0; // a dead input channel
    const acc = new HessianAccumulator(n);
    acc.add(x, rows);
    const h = finalizeHessian(acc, { damping: 0.01 }).data;
    let trace = 0;
    for (let i = 0; i < n; i++) trace += h[i * n + i]!;
    expect(trace / n).toBeCloseTo(1.01, 12);
    expect(h[5 * n + 5]).toBeCloseTo(0.01, 15);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) expect(h[i * n + j]).toBe(h[j * n + i]);
  });

  it('rejects an empty or all-zero Hessian and mismatched input with CalderaError', () => {
    const acc = new HessianAccumulator(4);
    expect(() => finalizeHessian(acc)).toThrow(/no samples/);
    acc.add(new Float32Array(8), 2);
    try {
      finalizeHessian(acc);
      expect.unreachable();
    } catch (e) {
      expect(isCalderaError(e, 'E_VALUE')).toBe(true);
    }
    expect(() => acc.add(new Float32Array(7), 2)).toThrow(/expected rows·n/);
  });

  it('rejects non-finite sums off the diagonal, where the trace does not see them', () => {
    // before: fromSums(2, [1, NaN, 0, 1]) finalised to [1.01, NaN, NaN, 1.01]
    expect(() => HessianAccumulator.fromSums(2, Float64Array.of(1, NaN, 0, 1), 2)).toThrow(
      /^E_VALUE: Hessian sums hold a non-finite value NaN at \(0, 1\)$/,
    );
    expect(() => HessianAccumulator.fromSums(2, Float64Array.of(1, 0, 0, -Infinity), 2)).toThrow(
      /non-finite value -Infinity at \(1, 1\)/,
    );
    expect(() => HessianAccumulator.fromSums(2, Float64Array.of(-1, 0, 0, 3), 2)).toThrow(
      /^E_VALUE: Hessian sums have a negative diagonal entry -1 at \(0, 0\)/,
    );
    // the lower triangle is not read: what is there does not matter
    const lower = HessianAccumulator.fromSums(2, Float64Array.of(2, 1, NaN, 2), 2);
    expect(Array.from(finalizeHessian(lower, { damping: 0 }).data)).toEqual([1, 0.5, 0.5, 1]);
    // sums changed in place (or overflowing in a merge) are refused by finalizeHessian itself
    const acc = HessianAccumulator.fromSums(3, Float64Array.of(1, 0, 0, 0, 1, 0, 0, 0, 1), 1);
    acc.sum[1 * 3 + 2] = Infinity;
    expect(() => finalizeHessian(acc)).toThrow(
      /^E_VALUE: Hessian of size 3 is not finite: entry \(1, 2\) is Infinity/,
    );
  });

  it('add rejects a row count that is not a non-negative integer', () => {
    // before: rows 2.5 with 5 values of n = 2 passed the length check, read past the input and counted 2.5 rows
    const acc = new HessianAccumulator(2);
    expect(() => acc.add(new Float32Array(5), 2.5)).toThrow(
      /row count must be a non-negative integer, got 2.5/,
    );
    expect(acc.count).toBe(0);
  });
});
