import { describe, expect, it } from 'vitest';
import { isCalderaError, tensor } from '@caldera/core';
import { invSqrtmSym, sqrtmSym } from './sqrtm.js';
import { diffFro, EPS, fro, mul, symWithEigs } from './factor-test-util.js';

describe('sqrtmSym / invSqrtmSym', () => {
  it('S·S = A and S·A^{-1/2}·… = I for an SPD matrix with a known spectrum', () => {
    const lambda = Array.from({ length: 40 }, (_, i) => 0.01 + i * 0.5);
    const n = lambda.length;
    const a = symWithEigs(lambda, 17);
    const s = sqrtmSym(tensor('f64', [n, n], a)).data;
    const is = invSqrtmSym(tensor('f64', [n, n], a)).data;
    // f(A) via eigh is backward stable in the eigendecomposition: errors O(n·eps·‖A‖) in S·S and
    // O(n·eps·κ(A)^{1/2}) in S·A^{-1/2}; κ ≈ 2000 here.
    expect(diffFro(mul(s, s, n, n, n), a)).toBeLessThan(10 * n * EPS * fro(a));
    const id = mul(s, is, n, n, n);
    for (let i = 0; i < n; i++) id[i * n + i]! -= 1;
    expect(fro(id)).toBeLessThan(10 * n * EPS * Math.sqrt(2000) * n);
    // symmetric, and sqrtm of A is PSD with eigenvalues √λ: trace check
    let tr = 0;
    for (let i = 0; i < n; i++) {
      tr += s[i * n + i]!;
      for (let j = 0; j < n; j++) expect(s[i * n + j]).toBe(s[j * n + i]);
    }
    const want = lambda.reduce((acc, l) => acc + Math.sqrt(l), 0);
    expect(Math.abs(tr - want)).toBeLessThan(n * n * EPS * want);
  });

  it('clamps negative eigenvalues (documented): sqrtm of a PSD matrix with rounding noise is the root of its PSD part', () => {
    const lambda = [4, 1, 0, -1e-14];
    const a = symWithEigs(lambda, 5);
    const s = sqrtmSym(tensor('f64', [4, 4], a)).data;
    const psd = symWithEigs([4, 1, 0, 0], 5);
    expect(diffFro(mul(s, s, 4, 4, 4), psd)).toBeLessThan(1e-13);
    const inv = invSqrtmSym(tensor('f64', [4, 4], a)).data;
    for (const x of inv) expect(Number.isFinite(x)).toBe(true);
  });

  it('1×1, empty and non-finite input', () => {
    expect(sqrtmSym(tensor('f64', [1, 1], [9])).data[0]).toBeCloseTo(3, 14);
    expect(invSqrtmSym(tensor('f64', [1, 1], [4])).data[0]).toBeCloseTo(0.5, 14);
    expect(sqrtmSym(tensor('f64', [0, 0], [])).shape).toEqual([0, 0]);
    try {
      invSqrtmSym(tensor('f64', [1, 1], [Infinity]));
      expect.unreachable();
    } catch (e) {
      expect(isCalderaError(e, 'E_VALUE')).toBe(true);
    }
  });

  it('an abort names the function (it said eigh was aborted)', () => {
    const ac = new AbortController();
    ac.abort(new Error('stop'));
    const a = tensor('f64', [2, 2], [2, 0, 0, 3]);
    for (const [f, name] of [
      [sqrtmSym, 'sqrtmSym'],
      [invSqrtmSym, 'invSqrtmSym'],
    ] as const)
      expect(() => f(a, { signal: ac.signal })).toThrow(
        expect.objectContaining({ code: 'E_ABORTED', message: `E_ABORTED: ${name} was aborted` }),
      );
  });
});
