import { describe, expect, it } from 'vitest';
import { isCalderaError, Rng, tensor } from '@caldera/core';
import { lstsq, pinv } from './lstsq.js';
import { diffFro, EPS, fro, mul, withSpectrum } from './factor-test-util.js';
import { expectAbortable } from './abort-test-util.js';

/** Solve the normal equations AᵀA·x = Aᵀb by Gaussian elimination with partial pivoting (independent reference). */
function normalEquations(a: Float64Array, b: Float64Array, m: number, n: number, k: number): Float64Array {
  return solveSquare(mul(a, a, n, m, n, true, false), mul(a, b, n, m, k, true, false), n, k);
}

/** Gaussian elimination with partial pivoting on copies of g (n×n) and r (n×k). */
function solveSquare(g: Float64Array, r: Float64Array, n: number, k: number): Float64Array {
  for (let c = 0; c < n; c++) {
    let piv = c;
    for (let i = c + 1; i < n; i++) if (Math.abs(g[i * n + c]!) > Math.abs(g[piv * n + c]!)) piv = i;
    for (let j = 0; j < n; j++) [g[c * n + j], g[piv * n + j]] = [g[piv * n + j]!, g[c * n + j]!];
    for (let j = 0; j < k; j++) [r[c * k + j], r[piv * k + j]] = [r[piv * k + j]!, r[c * k + j]!];
    for (let i = c + 1; i < n; i++) {
      const f = g[i * n + c]! / g[c * n + c]!;
      for (let j = c; j < n; j++) g[i * n + j]! -= f * g[c * n + j]!;
      for (let j = 0; j < k; j++) r[i * k + j]! -= f * r[c * k + j]!;
    }
  }
  for (let c = n - 1; c >= 0; c--)
    for (let j = 0; j < k; j++) {
      let s = r[c * k + j]!;
      for (let p = c + 1; p < n; p++) s -= g[c * n + p]! * r[p * k + j]!;
      r[c * k + j] = s / g[c * n + c]!;
    }
  return r;
}

describe('lstsq', () => {
  it('full-rank overdetermined: matches the normal equations on well-conditioned data', () => {
    const m = 80;
    const n = 12;
    const k = 3;
    const rng = new Rng(1);
    const a = rng.fillNormal(new Float64Array(m * n));
    const b = rng.fillNormal(new Float64Array(m * k));
    const { x, rank, singularValues } = lstsq(tensor('f64', [m, n], a), tensor('f64', [m, k], b));
    expect(rank).toBe(n);
    expect(singularValues.length).toBe(n);
    const ref = normalEquations(a, b, m, n, k);
    // κ(A) ≈ 2 here, so both solutions agree to a few·κ²·n·eps relative to ‖x‖
    expect(diffFro(x.data, ref)).toBeLessThan(100 * n * EPS * fro(ref));
    // optimality: the residual is orthogonal to range(A)
    const res = mul(a, x.data, m, n, k).map((v, i) => v - b[i]!);
    expect(fro(mul(a, res, n, m, k, true))).toBeLessThan(10 * m * EPS * fro(a) * fro(b));
  });

  it('square exact system is solved to rounding accuracy; vector right-hand side returns a vector', () => {
    const n = 20;
    const a = withSpectrum(
      n,
      n,
      Array.from({ length: n }, (_, i) => 1 + i / n),
      4,
    );
    const xTrue = new Rng(2).fillNormal(new Float64Array(n));
    const b = mul(a, xTrue, n, n, 1);
    const { x, rank } = lstsq(tensor('f64', [n, n], a), tensor('f64', [n], b));
    expect(rank).toBe(n);
    expect(x.shape).toEqual([n]);
    expect(diffFro(x.data, xTrue)).toBeLessThan(10 * n * EPS * fro(xTrue));
  });

  it('rank-deficient: minimum-norm solution (orthogonal to the null space), rank reported', () => {
    const m = 30;
    const n = 15;
    const s = Array.from({ length: n }, (_, i) => (i < 6 ? 6 - i : 0));
    const a = withSpectrum(m, n, s, 5);
    const b = new Rng(3).fillNormal(new Float64Array(m));
    const { x, rank } = lstsq(tensor('f64', [m, n], a), tensor('f64', [m], b));
    expect(rank).toBe(6);
    // min-norm ⇔ x ∈ range(Aᵀ): x = Aᵀy for some y ⇔ projection onto range(Aᵀ) leaves it unchanged;
    // equivalently x = A⁺b computed independently via (AᵀA)⁺ on the 6 nonzero directions: check AᵀA·x = Aᵀb
    // and that adding a null vector increases the norm (x ⟂ null(A)).
    const ata = mul(a, a, n, m, n, true);
    const lhs = mul(ata, x.data, n, n, 1);
    const rhs = mul(a, b, n, m, 1, true);
    expect(diffFro(lhs, rhs)).toBeLessThan(100 * m * EPS * fro(ata) * fro(x.data));
    // null vectors of A: solve with a random vector z, project out; nz = z − A⁺A z satisfies A·nz ≈ 0
    const z = new Rng(8).fillNormal(new Float64Array(n));
    const p = pinv(tensor('f64', [m, n], a));
    const nz = z.map((v, i) => v - mul(mul(p.data, a, n, m, n), z, n, n, 1)[i]!);
    expect(fro(mul(a, nz, m, n, 1))).toBeLessThan(1e-12 * fro(z));
    let dot = 0;
    for (let i = 0; i < n; i++) dot += x.data[i]! * nz[i]!;
    expect(Math.abs(dot)).toBeLessThan(1e-12 * fro(x.data) * fro(nz));
  });

  it('underdetermined full-row-rank: exact fit with minimum norm (x = Aᵀ(AAᵀ)⁻¹b)', () => {
    const m = 5;
    const n = 12;
    const rng = new Rng(6);
    const a = rng.fillNormal(new Float64Array(m * n));
    const b = rng.fillNormal(new Float64Array(m));
    const { x, rank } = lstsq(tensor('f64', [m, n], a), tensor('f64', [m], b));
    expect(rank).toBe(m);
    // x = Aᵀ·y with (A·Aᵀ)·y = b, solved by Gaussian elimination
    const y = solveSquare(mul(a, a, m, n, m, false, true), Float64Array.from(b), m, 1);
    const ref = mul(a, y, n, m, 1, true);
    expect(diffFro(x.data, ref)).toBeLessThan(1e3 * n * EPS * fro(ref));
  });

  it('rcond controls the numerical rank', () => {
    const n = 6;
    const a = withSpectrum(n, n, [1, 1e-3, 1e-6, 1e-9, 1e-12, 1e-15], 12);
    const b = tensor('f64', [n, 1], new Float64Array(n).fill(1));
    expect(lstsq(tensor('f64', [n, n], a), b, { rcond: 1e-7 }).rank).toBe(3);
    expect(lstsq(tensor('f64', [n, n], a), b, { rcond: 1e-10 }).rank).toBe(4);
  });

  it('shape mismatch, non-finite and empty input', () => {
    try {
      lstsq(tensor('f64', [3, 2], new Float64Array(6)), tensor('f64', [4, 1], new Float64Array(4)));
      expect.unreachable();
    } catch (e) {
      expect(isCalderaError(e, 'E_SHAPE')).toBe(true);
    }
    expect(() => lstsq(tensor('f64', [1, 1], [1]), tensor('f64', [1, 1], [NaN]))).toThrow(/non-finite/);
    const r = lstsq(tensor('f64', [0, 3], []), tensor('f64', [0, 2], []));
    expect(r.x.shape).toEqual([3, 2]);
    expect(r.rank).toBe(0);
  });

  it('a missing right-hand side is E_VALUE, not a TypeError', () => {
    expect(() => lstsq(tensor('f64', [2, 2], [1, 0, 0, 1]), null as never)).toThrow(
      /E_VALUE: lstsq: b is not a tensor/,
    );
  });
});

function transpose(a: Float64Array, m: number, n: number): Float64Array {
  const t = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) t[j * m + i] = a[i * n + j]!;
  return t;
}

describe('abort signal', () => {
  it('lstsq checks it in the SVD and while forming x, naming lstsq; same bits when not aborted', () => {
    const rng = new Rng(40);
    for (const [m, n] of [
      [60, 40],
      [40, 60],
    ] as const) {
      const a = tensor('f64', [m, n], rng.fillNormal(new Float64Array(m * n)));
      const b = tensor('f64', [m, 3], rng.fillNormal(new Float64Array(m * 3)));
      const v = tensor('f64', [m], rng.fillNormal(new Float64Array(m)));
      expectAbortable('lstsq', (signal) => lstsq(a, b, signal ? { signal } : {}), 100);
      expectAbortable('lstsq', (signal) => lstsq(a, v, { rcond: 1e-10, ...(signal ? { signal } : {}) }), 100);
    }
  });

  it('pinv checks it in the SVD and per singular triple, naming pinv; same bits when not aborted', () => {
    const rng = new Rng(41);
    for (const [m, n] of [
      [60, 40],
      [40, 60],
    ] as const) {
      const a = tensor('f64', [m, n], rng.fillNormal(new Float64Array(m * n)));
      expectAbortable('pinv', (signal) => pinv(a, signal ? { signal } : {}), 100);
    }
  });
});

describe('pinv', () => {
  for (const [m, n, rankDef] of [
    [9, 5, false],
    [5, 9, false],
    [12, 12, true],
  ] as const) {
    it(`Penrose conditions for ${m}×${n}${rankDef ? ' (rank-deficient)' : ''}`, () => {
      const k = Math.min(m, n);
      const s = Array.from({ length: k }, (_, i) => (rankDef && i >= 7 ? 0 : 2 + Math.cos(i)));
      const a = withSpectrum(m, n, s, m * n);
      const p = pinv(tensor('f64', [m, n], a)).data;
      const ap = mul(a, p, m, n, m);
      const pa = mul(p, a, n, m, n);
      // A·A⁺·A = A, A⁺·A·A⁺ = A⁺, (AA⁺)ᵀ = AA⁺, (A⁺A)ᵀ = A⁺A — each to O(n·eps·κ) with κ ≤ 3 here
      const tol = 50 * Math.max(m, n) * EPS;
      expect(diffFro(mul(ap, a, m, m, n), a)).toBeLessThan(tol * fro(a));
      expect(diffFro(mul(pa, p, n, n, m), p)).toBeLessThan(tol * fro(p));
      expect(diffFro(ap, transpose(ap, m, m))).toBeLessThan(tol);
      expect(diffFro(pa, transpose(pa, n, n))).toBeLessThan(tol);
    });
  }
});
