import { describe, expect, it } from 'vitest';
import { isCalderaError, Rng, tensor } from '@caldera/core';
import { svd } from './svd.js';
import { diffFro, EPS, fro, mul, orthErr, withSpectrum } from './factor-test-util.js';
import { stridedRandn } from './test-util.js';
import { expectAbortable } from './abort-test-util.js';

/** ‖A − UΣVᵀ‖_F for row-major buffers. */
function residual(
  a: Float64Array,
  m: number,
  n: number,
  u: Float64Array,
  s: Float64Array,
  vt: Float64Array,
): number {
  const k = s.length;
  const us = new Float64Array(m * k);
  for (let i = 0; i < m; i++) for (let j = 0; j < k; j++) us[i * k + j] = u[i * k + j]! * s[j]!;
  return diffFro(mul(us, vt, m, k, n), a);
}

function check(a: Float64Array, m: number, n: number): ReturnType<typeof svd> {
  const r = svd(tensor('f64', [m, n], a));
  const k = Math.min(m, n);
  expect(r.u.shape).toEqual([m, k]);
  expect(r.vt.shape).toEqual([k, n]);
  for (let i = 1; i < k; i++) expect(r.s[i]).toBeLessThanOrEqual(r.s[i - 1]!);
  for (const x of r.s) expect(x).toBeGreaterThanOrEqual(0);
  // QR + one-sided Jacobi is backward stable: ‖A − UΣVᵀ‖ ≤ c·max(m,n)·eps·‖A‖ (Demmel–Veselić);
  // c = 2 is ~10× what we observe.
  expect(residual(a, m, n, r.u.data, r.s, r.vt.data)).toBeLessThan(
    2 * Math.max(m, n) * EPS * fro(a) + 1e-300,
  );
  // orthonormality of U and V to O(n·eps)
  expect(orthErr(r.u.data, m, k)).toBeLessThan(4 * Math.max(m, n) * EPS);
  expect(orthErr(Float64Array.from(transposeRows(r.vt.data, k, n)), n, k)).toBeLessThan(
    4 * Math.max(m, n) * EPS,
  );
  return r;
}

function transposeRows(x: Float64Array, r: number, c: number): Float64Array {
  const t = new Float64Array(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) t[j * r + i] = x[i * c + j]!;
  return t;
}

describe('svd', () => {
  const shapes: [number, number][] = [
    [1, 1],
    [1, 5],
    [6, 1],
    [8, 8],
    [40, 13],
    [13, 40],
    [120, 90],
  ];
  for (const [m, n] of shapes) {
    it(`A = UΣVᵀ with orthonormal factors for random ${m}×${n}`, () => {
      check(new Rng(m * 7 + n).fillNormal(new Float64Array(m * n)), m, n);
    });
  }

  it('recovers prescribed singular values of an ill-conditioned matrix (κ = 1e12) to high relative accuracy', () => {
    const m = 50;
    const n = 30;
    const s = Array.from({ length: n }, (_, i) => 10 ** (-12 * (i / (n - 1))));
    const a = withSpectrum(m, n, s, 3);
    const r = check(a, m, n);
    // The construction U·S·Vᵀ is itself perturbed by ~n·eps·‖A‖, so small σ are only defined to that
    // absolute level: |σ̂ᵢ − σᵢ| ≤ 4·n·eps·σ₁ (Weyl).
    for (let i = 0; i < n; i++) expect(Math.abs(r.s[i]! - s[i]!)).toBeLessThan(4 * n * EPS * s[0]!);
  });

  it('rank-deficient: exact zeros, U still orthonormal', () => {
    const m = 30;
    const n = 20;
    const s = Array.from({ length: n }, (_, i) => (i < 5 ? 5 - i : 0));
    const a = withSpectrum(m, n, s, 9);
    const r = check(a, m, n);
    for (let i = 5; i < n; i++) expect(r.s[i]).toBeLessThan(n * EPS * 5);
    // zero matrix: all σ zero, U completed to an orthonormal basis
    const z = check(new Float64Array(12), 4, 3);
    expect(Array.from(z.s)).toEqual([0, 0, 0]);
    // larger ones, where U's completion tried the basis vectors in turn (O(n⁴): 16 s for 300 × 300 zeros, now
    // 0.1 s; measured by hand) — a matrix of rank 120 of 200 too, whose completion has few directions left
    check(new Float64Array(200 * 200), 200, 200);
    const low = withSpectrum(
      200,
      200,
      Array.from({ length: 200 }, (_, i) => (i < 120 ? 1 + i : 0)),
      4,
    );
    const r2 = svd(tensor('f64', [200, 200], low));
    for (let i = 120; i < 200; i++) expect(r2.s[i]).toBeLessThan(200 * EPS * 120);
    // U orthonormal to O(n·eps), its 80 completed columns included
    expect(orthErr(r2.u.data, 200, 200)).toBeLessThan(200 * EPS * 4);
  });

  it('rank-deficient matrices whose QR leaves rounding noise (a matrix of ones, u·vᵀ): converges, σ = 0 beyond the rank', () => {
    // before: the sweeps shrank the noise columns into underflow and stopped with E_VALUE (106 of 1890 such
    // matrices, 1×1 to 110×20 and transposed, checked by hand; these are some of them)
    for (const n of [4, 6, 7, 16]) {
      const r = check(new Float64Array(n * n).fill(1), n, n);
      expect(r.s[0]).toBeCloseTo(n, 12);
      expect(Array.from(r.s.subarray(1))).toEqual(new Array(n - 1).fill(0));
      check(new Float64Array((n + 5) * n).fill(1), n + 5, n);
    }
    const rng = new Rng(3);
    for (const [m, n] of [
      [4, 3],
      [5, 4],
      [9, 9],
      [17, 6],
      [70, 20],
    ] as const)
      for (const rank of [1, 2, 3])
        for (let rep = 0; rep < 4; rep++) {
          const u = rng.fillNormal(new Float64Array(m * rank));
          const v = rng.fillNormal(new Float64Array(rank * n));
          const a = mul(u, v, m, rank, n);
          for (const [x, rows, cols] of [
            [a, m, n],
            [transposeRows(a, m, n), n, m],
          ] as const) {
            const r = check(x, rows, cols);
            // the rank's σ well above the noise, the others exactly 0 (noise below k·eps·‖A‖_F is zeroed)
            expect(r.s[rank - 1]).toBeGreaterThan(1e-8 * r.s[0]!);
            expect(Array.from(r.s.subarray(rank))).toEqual(new Array(Math.min(m, n) - rank).fill(0));
          }
        }
  });

  it('repeated singular values', () => {
    const s = [3, 3, 3, 1, 1, 0.5];
    check(withSpectrum(9, 6, s, 21), 9, 6);
  });

  it('strided f32 input is read correctly and left untouched', () => {
    const a = stridedRandn('f32', 7, 5, 2);
    const before = Float32Array.from(a.data as Float32Array);
    const r = svd(a);
    const d = new Float64Array(35);
    for (let i = 0; i < 7; i++)
      for (let j = 0; j < 5; j++) d[i * 5 + j] = a.data[a.offset + i * a.strides[0]! + j * a.strides[1]!]!;
    expect(residual(d, 7, 5, r.u.data, r.s, r.vt.data)).toBeLessThan(1e-13);
    expect(a.data).toEqual(before);
  });

  it('empty and non-finite input', () => {
    const e = svd(tensor('f64', [0, 4], []));
    expect(e.s.length).toBe(0);
    expect(e.vt.shape).toEqual([0, 4]);
    try {
      svd(tensor('f64', [2, 2], [1, 2, NaN, 3]));
      expect.unreachable();
    } catch (err) {
      expect(isCalderaError(err, 'E_VALUE')).toBe(true);
    }
  });

  it('is exact under power-of-two scaling from 2^-1000 to 2^1000 (no convergence failure, no zero values)', () => {
    // Scaling by 2^k is exact and QR + Jacobi commute with it: singular values scale exactly, vectors are
    // bit-identical (tolerance 0). Before, |a| ≈ 1e±160 failed to converge (E_VALUE) and 1e-200 gave s = 0.
    const a = new Rng(3).fillNormal(new Float64Array(6 * 4));
    const ref = svd(tensor('f64', [6, 4], a));
    for (const k of [-1000, -660, -530, -260, 260, 530, 660, 1000]) {
      const s = 2 ** k;
      const r = svd(
        tensor(
          'f64',
          [6, 4],
          a.map((x) => x * s),
        ),
      );
      expect(Array.from(r.s, (x) => x / s)).toEqual(Array.from(ref.s));
      expect(r.u.data).toEqual(ref.u.data);
      expect(r.vt.data).toEqual(ref.vt.data);
    }
  });

  it('takes a signal, checked in the QR, per row of each Jacobi sweep and in U = Q·U_R; same bits when not aborted', () => {
    for (const [m, n] of [
      [90, 40],
      [40, 90],
    ] as const) {
      const a = tensor('f64', [m, n], new Rng(m * n).fillNormal(new Float64Array(m * n)));
      // QR: 2·40 columns; Jacobi: ≥ 2 sweeps of 39 rows
      expect(expectAbortable('svd', (signal) => svd(a, signal ? { signal } : {}))).toBeGreaterThan(150);
    }
  });

  it('a missing operand is E_VALUE, not a TypeError', () => {
    expect(() => svd(null as never)).toThrow(/E_VALUE: svd: a is not a tensor/);
    // it said "did not converge in -1 sweeps"
    for (const maxSweeps of [-1, 0, 1.5])
      expect(() => svd(tensor('f64', [3, 3], [1, 2, 3, 4, 5, 6, 7, 8, 10]), { maxSweeps })).toThrow(
        `E_VALUE: svd: maxSweeps must be a positive integer, got ${maxSweeps}`,
      );
  });
});
