import { describe, expect, it } from 'vitest';
import { isCalderaError, Rng, tensor } from '@caldera/core';
import { qr } from './qr.js';
import { dense, diffFro, EPS, fro, mul, orthErr, withSpectrum } from './factor-test-util.js';
import { stridedRandn } from './test-util.js';
import { expectAbortable } from './abort-test-util.js';

describe('qr', () => {
  const shapes: [number, number][] = [
    [1, 1],
    [5, 3],
    [3, 5],
    [37, 37],
    [150, 41],
    [41, 150],
    // several panels of 32 reflectors, applied as block reflectors (the last one partial)
    [300, 100],
    [100, 300],
    [96, 96],
  ];
  for (const [m, n] of shapes) {
    it(`A = QR, QᵀQ = I, R upper for ${m}×${n}`, () => {
      const a = new Rng(m * 31 + n).fillNormal(new Float64Array(m * n));
      const { q, r } = qr(tensor('f64', [m, n], a));
      const k = Math.min(m, n);
      expect(q.shape).toEqual([m, k]);
      expect(r.shape).toEqual([k, n]);
      for (let i = 0; i < k; i++) for (let j = 0; j < i; j++) expect(r.data[i * n + j]).toBe(0);
      // Householder QR is backward stable: ‖A − QR‖ ≤ c·m·n·eps·‖A‖ (Higham Thm 19.4, c small);
      // we allow 1·max(m,n)·eps·‖A‖_F, far above the observed ~eps·√n but tight enough to catch any bug.
      expect(diffFro(mul(q.data, r.data, m, k, n), a)).toBeLessThan(Math.max(m, n) * EPS * fro(a));
      // orthogonality of the accumulated Q: ‖QᵀQ − I‖ ≤ c·m·eps
      expect(orthErr(q.data, m, k)).toBeLessThan(m * EPS * 4);
    });
  }

  it('handles rank-deficient and ill-conditioned matrices (Q stays orthonormal)', () => {
    // 30 columns: one panel; 90: three, whose block reflectors carry the rank deficiency across panels
    for (const [m, n] of [
      [60, 30],
      [200, 90],
    ] as const) {
      const s = Array.from({ length: n }, (_, i) => (i < 10 ? 10 ** -i : 0));
      const a = withSpectrum(m, n, s, 7);
      const { q, r } = qr(tensor('f64', [m, n], a));
      expect(diffFro(mul(q.data, r.data, m, n, n), a)).toBeLessThan(m * EPS * fro(a));
      expect(orthErr(q.data, m, n)).toBeLessThan(m * EPS * 4);
    }
  });

  it('exactly rank-deficient input whose residual columns become subnormal: orthonormal Q, no NaN (1/(α − β) was infinite)', () => {
    // a matrix of ones: after the first reflector every column's residual is rounding noise, shrinking with each
    // reflector to ~1e-315 (subnormal); and a column of subnormal values from the start
    for (const [m, n] of [
      [300, 23],
      [120, 120],
    ]) {
      const a = new Float64Array(m * n).fill(1);
      const { q, r } = qr(tensor('f64', [m, n], a));
      expect(q.data.some(Number.isNaN) || r.data.some(Number.isNaN), `${m}×${n}`).toBe(false);
      // backward stable as for any input: ‖QR − A‖ and ‖QᵀQ − I‖ within a small multiple of m·ε
      expect(diffFro(mul(q.data, r.data, m, n, n), a)).toBeLessThan(m * EPS * fro(a));
      expect(orthErr(q.data, m, n)).toBeLessThan(m * EPS * 4);
    }
    const tiny = qr(tensor('f64', [2, 1], [1e-310, 1e-310]));
    // 1e-310 holds ~44 significant bits (a subnormal): Q's column is (−1, −1)/√2 to about 2⁻⁴⁴
    for (const x of tiny.q.data) expect(Math.abs(x + Math.SQRT1_2)).toBeLessThan(1e-12);
    expect(Math.abs(tiny.r.data[0]! + Math.SQRT2 * 1e-310)).toBeLessThan(1e-320);
  });

  it('a reflector that is the identity (τ = 0) inside an earlier panel: A = QR, Q orthonormal', () => {
    // 200 × 100 is four panels; column 5 is zero (no reflector: τ = 0) and column 40 repeats column 3 (in the second
    // panel, nothing of it is left below the diagonal but rounding)
    const m = 200;
    const n = 100;
    const a = new Rng(8).fillNormal(new Float64Array(m * n));
    for (let i = 0; i < m; i++) {
      a[i * n + 5] = 0;
      a[i * n + 40] = a[i * n + 3]!;
    }
    const { q, r } = qr(tensor('f64', [m, n], Float64Array.from(a)));
    expect(diffFro(mul(q.data, r.data, m, n, n), a)).toBeLessThan(m * EPS * fro(a));
    expect(orthErr(q.data, m, n)).toBeLessThan(m * EPS * 4);
    expect(r.data[5 * n + 5]).toBe(0);
  });

  it('handles zero columns and an all-zero matrix', () => {
    const a = tensor('f64', [3, 2], [0, 1, 0, 2, 0, 3]);
    const { q, r } = qr(a);
    expect(diffFro(mul(q.data, r.data, 3, 2, 2), dense(a))).toBeLessThan(1e-14);
    expect(orthErr(q.data, 3, 2)).toBeLessThan(1e-15);
    const z = qr(tensor('f64', [4, 3], new Float64Array(12)));
    expect(orthErr(z.q.data, 4, 3)).toBe(0);
    expect(fro(z.r.data)).toBe(0);
  });

  it('reads strided f32 views without modifying them', () => {
    const a = stridedRandn('f32', 9, 4, 3);
    const before = Float32Array.from(a.data as Float32Array);
    const { q, r } = qr(a);
    expect(diffFro(mul(q.data, r.data, 9, 4, 4), dense(a))).toBeLessThan(1e-13);
    expect(a.data).toEqual(before);
  });

  it('empty matrices give empty factors', () => {
    const { q, r } = qr(tensor('f64', [0, 3], []));
    expect(q.shape).toEqual([0, 0]);
    expect(r.shape).toEqual([0, 3]);
  });

  it('rejects non-finite input and non-matrices', () => {
    expect(() => qr(tensor('f64', [2, 2], [1, NaN, 0, 1]))).toThrow(/non-finite/);
    try {
      qr(tensor('f64', [4], [1, 2, 3, 4]) as never);
      expect.unreachable();
    } catch (e) {
      expect(isCalderaError(e, 'E_SHAPE')).toBe(true);
    }
  });

  it('takes a signal, checked per column of the factorisation and per block product; same bits when not aborted', () => {
    for (const [m, n] of [
      [150, 41],
      [41, 150],
      [64, 64],
    ] as const) {
      const a = tensor('f64', [m, n], new Rng(m + n).fillNormal(new Float64Array(m * n)));
      const k = Math.min(m, n);
      // one panel (k ≤ 32): per column of both passes; more: per column of the factorisation, then before each block
      // product (⌈k/32⌉ − 1 trailing updates, ⌈k/32⌉ blocks of Q)
      expect(expectAbortable('qr', (signal) => qr(a, signal ? { signal } : {}))).toBeGreaterThanOrEqual(
        k <= 32 ? 2 * k : k + 2 * Math.ceil(k / 32) - 1,
      );
    }
  });

  it('a missing operand is E_VALUE, not a TypeError', () => {
    expect(() => qr(null as never)).toThrow(/E_VALUE: qr: a is not a tensor/);
  });
});
