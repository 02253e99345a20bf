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

  it('buffers f32 rows: windows of 128 rows give the same bits with any buffer, others the same values', () => {
    const n = 200;
    const x = randomRows(7 * 128, n, 11);
    const window = (w: number) => x.subarray(w * 128 * n, (w + 1) * 128 * n);
    const unbuffered = new HessianAccumulator(n, { bufferBytes: 0 });
    // 3 windows' worth (307 200 bytes): flushed after windows 3 and 6, and when read
    const buffered = new HessianAccumulator(n, { bufferBytes: 3 * 128 * n * 4 });
    const byDefault = new HessianAccumulator(n);
    for (let w = 0; w < 7; w++) {
      // the caller may reuse its array once add returns: the buffer holds a copy
      const rows = Float32Array.from(window(w));
      unbuffered.add(rows, 128);
      buffered.add(rows, 128);
      byDefault.add(rows, 128);
      rows.fill(Number.NaN);
      expect(buffered.count).toBe((w + 1) * 128); // buffered rows are counted
    }
    /** Entries of the upper triangles (what counts) that differ. */
    const upperDiffs = (a: Float64Array, b: Float64Array) => {
      let d = 0;
      for (let i = 0; i < n; i++) for (let j = i; j < n; j++) if (a[i * n + j] !== b[i * n + j]) d++;
      return d;
    };
    // the kernel sums 128 rows at a time either way
    for (const acc of [buffered, byDefault]) expect(upperDiffs(acc.sum, unbuffered.sum)).toBe(0);
    // rows added after a read (the buffer given back) are added too; a call over the buffer's size goes straight in
    buffered.add(window(0), 128);
    buffered.add(x, 7 * 128);
    unbuffered.add(window(0), 128);
    unbuffered.add(x, 7 * 128);
    expect(upperDiffs(buffered.sum, unbuffered.sum)).toBe(0);
    expect(buffered.count).toBe(15 * 128);
    // windows of 100 rows: grouped otherwise in the f64 sums, the same Hessian to round-off
    const odd = new HessianAccumulator(n, { bufferBytes: 0 });
    const oddBuffered = new HessianAccumulator(n);
    for (let w = 0; w < 8; w++) {
      odd.add(x.subarray(w * 100 * n, (w + 1) * 100 * n), 100);
      oddBuffered.add(x.subarray(w * 100 * n, (w + 1) * 100 * n), 100);
    }
    const a = odd.secondMoment().data;
    const b = oddBuffered.secondMoment().data;
    // the same exact products summed in f64 in two groupings over 800 rows of O(1)–O(3) values: ~1e-14; 1e-12
    for (let i = 0; i < n * n; i++)
      expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(1e-12 * (1 + Math.abs(a[i]!)));
    // f64 rows are added as they come, after the buffered ones (three windows: with two, f64 addition's commutativity
    // hid an f64 window added before the buffered f32 one)
    const f64 = new HessianAccumulator(n, { bufferBytes: 0 });
    const mixed = new HessianAccumulator(n);
    for (const acc of [f64, mixed]) {
      acc.add(window(0), 128);
      acc.add(window(1), 128);
      acc.add(Float64Array.from(window(2)), 128);
      acc.add(window(3), 128);
    }
    expect(mixed.count).toBe(512);
    expect(upperDiffs(mixed.sum, f64.sum)).toBe(0);
    for (const bad of [-1, 1.5, Number.NaN, '64'])
      expect(() => new HessianAccumulator(n, { bufferBytes: bad as never })).toThrow(
        /^E_VALUE: HessianAccumulator: bufferBytes must be a non-negative integer, got /,
      );
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

  it("finalizeHessian with consume makes the same H in the accumulator's array, which is then spent", () => {
    const n = 40;
    const x = randomRows(128, n, 8);
    const kept = new HessianAccumulator(n);
    const spent = new HessianAccumulator(n);
    kept.add(x, 128);
    spent.add(x, 128);
    const want = finalizeHessian(kept, { damping: 0.02 });
    const sums = spent.sum;
    const got = finalizeHessian(spent, { damping: 0.02, consume: true });
    expect(got.data).toBe(sums); // no new array
    expect(Array.from(got.data)).toEqual(Array.from(want.data));
    expect(Array.from(finalizeHessian(kept, { damping: 0.02 }).data)).toEqual(Array.from(want.data)); // kept is kept
    for (const [use, what] of [
      [() => spent.add(x, 128), 'add'],
      [() => spent.sum, 'sum'],
      [() => kept.merge(spent), 'merge'],
      [() => spent.merge(kept), 'merge'],
      [() => spent.secondMoment(), 'secondMoment'],
      [() => finalizeHessian(spent), 'finalizeHessian'],
    ] as const)
      expect(use).toThrow(`E_VALUE: HessianAccumulator.${what}: this accumulator's sums became a Hessian`);
    expect(() => finalizeHessian(kept, { consume: 1 as never })).toThrow(
      /^E_VALUE: finalizeHessian: consume must be true or false, got 1/,
    );
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
