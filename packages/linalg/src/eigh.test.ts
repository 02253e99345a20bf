import { describe, expect, it } from 'vitest';
import { isCalderaError, tensor } from '@caldera/core';
import { eigh } from './eigh.js';
import { gemm } from './gemm.js';
import { syrk } from './syrk.js';
import { solveTriangular } from './triangular.js';
import { hadamard } from './hadamard.js';
import { diffFro, EPS, fro, mul, orthErr, randSym, symWithEigs } from './factor-test-util.js';

/** ‖A − VΛVᵀ‖_F and ‖VᵀV − I‖_max. */
function residuals(a: Float64Array, n: number, values: Float64Array, v: Float64Array): [number, number] {
  const vl = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) vl[i * n + j] = v[i * n + j]! * values[j]!;
  return [diffFro(mul(vl, v, n, n, n, false, true), a), orthErr(v, n, n)];
}

describe('eigh', () => {
  for (const [n, method] of [
    [1, 'auto'],
    [2, 'auto'],
    [3, 'auto'],
    [17, 'auto'],
    [64, 'auto'],
    [161, 'ql'],
    [161, 'dc'],
    [200, 'dc'],
  ] as const) {
    it(`A = VΛVᵀ, VᵀV = I, ascending values for a random symmetric ${n}×${n} (${method})`, () => {
      const a = randSym(n, n);
      const { values, vectors } = eigh(tensor('f64', [n, n], a), { method });
      for (let i = 1; i < n; i++) expect(values[i]).toBeGreaterThanOrEqual(values[i - 1]!);
      const [res, orth] = residuals(a, n, values, vectors.data);
      // Householder tridiagonalisation + QL are backward stable with error O(n·eps·‖A‖) (Golub–Van Loan §8.3);
      // 2·n·eps·‖A‖_F leaves a factor ~10 of headroom over what we observe.
      expect(res).toBeLessThan(2 * n * EPS * fro(a) + 1e-300);
      expect(orth).toBeLessThan(2 * n * EPS);
    });
  }

  for (const [reps, method] of [
    [1, 'ql'],
    [8, 'dc'],
  ] as const)
    it(`recovers prescribed eigenvalues, including repeated and clustered ones (${method}, n = ${16 * reps})`, () => {
      const base = [-3, -3, -3, 0, 0, 1e-9, 1, 1, 1, 1, 2, 2 + 1e-12, 5, 7, 7, 100];
      const lambda = Array.from({ length: reps }, () => base).flat();
      const n = lambda.length;
      const a = symWithEigs(lambda, 42);
      const { values, vectors } = eigh(tensor('f64', [n, n], a), { method });
      const sorted = [...lambda].sort((x, y) => x - y);
      // Weyl: |λ̂ᵢ − λᵢ| ≤ ‖E‖₂ for a backward error E; the construction itself is accurate to ~n·eps·‖A‖.
      for (let i = 0; i < n; i++) expect(Math.abs(values[i]! - sorted[i]!)).toBeLessThan(4 * n * EPS * 100);
      const [res, orth] = residuals(a, n, values, vectors.data);
      expect(res).toBeLessThan(2 * n * EPS * fro(a));
      expect(orth).toBeLessThan(2 * n * EPS);
    });

  for (const n of [9, 90])
    it(`identity, zero and diagonal matrices (already tridiagonal), n = ${n}`, () => {
      const diag = new Float64Array(n * n);
      for (let i = 0; i < n; i++) diag[i * n + i] = n - i;
      const r = eigh(tensor('f64', [n, n], diag));
      expect(Array.from(r.values)).toEqual(Array.from({ length: n }, (_, i) => i + 1));
      expect(orthErr(r.vectors.data, n, n)).toBeLessThan(EPS);
      const ones = new Float64Array(n * n);
      for (let i = 0; i < n; i++) ones[i * n + i] = 1;
      const id = eigh(tensor('f64', [n, n], ones));
      expect(Array.from(id.values).every((x) => x === 1)).toBe(true);
      expect(orthErr(id.vectors.data, n, n)).toBeLessThan(EPS);
      const z = eigh(tensor('f64', [n, n], new Float64Array(n * n)));
      expect(Array.from(z.values).every((x) => x === 0)).toBe(true);
    });

  it('does not modify the input', () => {
    const n = 12;
    const a = randSym(n, 3);
    const before = a.slice();
    eigh(tensor('f64', [n, n], a));
    expect(a).toEqual(before);
  });

  it('refuses a non-symmetric matrix with E_VALUE naming the worst (i, j), instead of decomposing its lower triangle', () => {
    // before: an upper triangle of 1e6 was silently ignored
    const n = 12;
    const a = randSym(n, 3);
    const lowerOnly = a.map((x, idx) => (idx % n > Math.floor(idx / n) ? 1e6 : x));
    expect(() => eigh(tensor('f64', [n, n], lowerOnly))).toThrow(
      /^E_VALUE: eigh: a is not symmetric: worst at/,
    );
    // one bad pair: named as (row, column) of its lower entry, in f32 too
    const b = randSym(n, 4);
    b[7 * n + 2]! += 0.5;
    const f32 = tensor('f32', [n, n], Float32Array.from(b));
    for (const t of [tensor('f64', [n, n], b), f32]) {
      let caught: unknown;
      try {
        eigh(t);
      } catch (e) {
        caught = e;
      }
      expect(isCalderaError(caught, 'E_VALUE')).toBe(true);
      expect((caught as Error).message).toMatch(/worst at \(7, 2\)/);
    }
  });

  it('accepts round-off asymmetry: 1e-6 relative in f32, 1e-12 in f64', () => {
    const n = 20;
    const a = randSym(n, 5);
    let maxAbs = 0;
    for (const x of a) maxAbs = Math.max(maxAbs, Math.abs(x));
    const nudged = (rel: number) => {
      const b = a.slice();
      for (let i = 1; i < n; i++) b[i * n + (i - 1)]! += rel * maxAbs;
      return b;
    };
    const ref = eigh(tensor('f64', [n, n], a)).values;
    const f64 = eigh(tensor('f64', [n, n], nudged(1e-12))).values;
    const f32 = eigh(tensor('f32', [n, n], Float32Array.from(nudged(1e-6)))).values;
    for (let i = 0; i < n; i++) {
      expect(f64[i]).toBeCloseTo(ref[i]!, 9);
      expect(f32[i]).toBeCloseTo(ref[i]!, 4);
    }
    // past the f64 tolerance, the same nudge is refused
    expect(() => eigh(tensor('f64', [n, n], nudged(1e-8)))).toThrow(/not symmetric/);
  });

  it('values-only mode matches', () => {
    const n = 30;
    const a = randSym(n, 8);
    const full = eigh(tensor('f64', [n, n], a));
    const vals = eigh(tensor('f64', [n, n], a), { vectors: false });
    expect(vals.vectors.shape).toEqual([0, 0]);
    for (let i = 0; i < n; i++)
      expect(Math.abs(vals.values[i]! - full.values[i]!)).toBeLessThan(n * EPS * fro(a));
  });

  it('empty, non-square, non-finite and aborted inputs', () => {
    expect(eigh(tensor('f64', [0, 0], [])).values.length).toBe(0);
    expect(() => eigh(tensor('f64', [2, 3], [1, 2, 3, 4, 5, 6]))).toThrow(/square/);
    try {
      eigh(tensor('f64', [2, 2], [1, 0, Infinity, 1]));
      expect.unreachable();
    } catch (e) {
      expect(isCalderaError(e, 'E_VALUE')).toBe(true);
    }
    const ac = new AbortController();
    ac.abort();
    expect(() => eigh(tensor('f64', [40, 40], randSym(40, 1)), { signal: ac.signal })).toThrow();
  });

  for (const method of ['ql', 'dc'] as const)
    it(`is exact under power-of-two scaling from 2^-1000 to 2^1000, no NaN or garbage at the extremes (${method})`, () => {
      // Scaling by 2^k is exact and the algorithm commutes with it, so values scale exactly and vectors are
      // bit-identical (tolerance 0). Before the working copy was scaled, 2^±520 gave NaN or non-orthogonal vectors.
      const n = 80;
      const a = randSym(n, 5);
      const ref = eigh(tensor('f64', [n, n], a), { method });
      for (const k of [-1000, -520, -300, 300, 520, 1000]) {
        const s = 2 ** k;
        const r = eigh(
          tensor(
            'f64',
            [n, n],
            a.map((x) => x * s),
          ),
          { method },
        );
        expect(Array.from(r.values, (x) => x / s)).toEqual(Array.from(ref.values));
        expect(r.vectors.data).toEqual(ref.vectors.data);
      }
    });

  it('rejects an unknown method with E_VALUE', () => {
    expect(() => eigh(tensor('f64', [2, 2], [2, 1, 1, 2]), { method: 'qr' as never })).toThrow(
      /E_VALUE.*method/,
    );
  });
});

describe('eigh divide and conquer on adversarial spectra', () => {
  it('glued Wilkinson matrices (pairs of eigenvalues equal to ~1e-14) keep orthogonal vectors', () => {
    // W₂₁⁺ (diag |10 − i|, off-diagonal 1) glued 7 times with coupling 1e-10: n = 147, tridiagonal already
    const m = 21;
    const copies = 7;
    const n = m * copies;
    const a = new Float64Array(n * n);
    for (let c = 0; c < copies; c++)
      for (let i = 0; i < m; i++) {
        const g = c * m + i;
        a[g * n + g] = Math.abs(10 - i);
        if (g + 1 < n) a[g * n + g + 1] = a[(g + 1) * n + g] = i + 1 < m ? 1 : 1e-10;
      }
    const { values, vectors } = eigh(tensor('f64', [n, n], a), { method: 'dc' });
    const [res, orth] = residuals(a, n, values, vectors.data);
    expect(res).toBeLessThan(2 * n * EPS * fro(a));
    expect(orth).toBeLessThan(2 * n * EPS);
  });

  it('graded spectrum from -1e8 to 1e8 with tiny eigenvalues, both signs', () => {
    const n = 120;
    const lambda = Array.from({ length: n }, (_, i) => (i % 2 ? -1 : 1) * 10 ** (-8 + (16 * i) / (n - 1)));
    const a = symWithEigs(lambda, 99);
    const { values, vectors } = eigh(tensor('f64', [n, n], a), { method: 'dc' });
    const sorted = [...lambda].sort((x, y) => x - y);
    // absolute accuracy ‖E‖ ≈ n·eps·‖A‖ (Weyl); small eigenvalues are not resolved relatively (nor by LAPACK)
    for (let i = 0; i < n; i++) expect(Math.abs(values[i]! - sorted[i]!)).toBeLessThan(4 * n * EPS * 1e8);
    const [res, orth] = residuals(a, n, values, vectors.data);
    expect(res).toBeLessThan(2 * n * EPS * fro(a));
    expect(orth).toBeLessThan(2 * n * EPS);
  });

  it('eigenvalues spanning more than 1e160 (a graded tridiagonal matrix, dc): every eigenvector of unit norm (some were 0)', () => {
    // d_i = 4^−i, e_i = d_i / 8: the divide-and-conquer merges' secular vectors have entries whose squares overflow
    const n = 300;
    const a = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      a[i * n + i] = 4 ** -i;
      if (i + 1 < n) a[i * n + i + 1] = a[(i + 1) * n + i] = 4 ** -i / 8;
    }
    for (const method of ['dc', 'ql'] as const) {
      const { values, vectors } = eigh(tensor('f64', [n, n], a), { method });
      const [res, orth] = residuals(a, n, values, vectors.data);
      expect(res, method).toBeLessThan(2 * n * EPS * fro(a));
      expect(orth, method).toBeLessThan(2 * n * EPS);
    }
  });

  it('a coupling of subnormal size: the eigenvalues of I, no NaN (its Householder reflector was infinite)', () => {
    const t = 1e-310;
    const { values, vectors } = eigh(tensor('f64', [3, 3], [1, t, t, t, 1, 0, t, 0, 1]));
    for (const v of values) expect(Math.abs(v - 1)).toBeLessThan(4 * EPS);
    expect(orthErr(vectors.data, 3, 3)).toBeLessThan(8 * EPS);
  });

  it('agrees with QL on a random matrix (values to n·eps·‖A‖)', () => {
    const n = 150;
    const a = randSym(n, 5);
    const dc = eigh(tensor('f64', [n, n], a), { method: 'dc', vectors: true });
    const ql = eigh(tensor('f64', [n, n], a), { method: 'ql' });
    for (let i = 0; i < n; i++)
      expect(Math.abs(dc.values[i]! - ql.values[i]!)).toBeLessThan(2 * n * EPS * fro(a));
  });
});

describe('callbacks', () => {
  it('eigh, gemm and syrk: an onProgress that is not a function is E_VALUE before any work', () => {
    const m = tensor('f64', [3, 3], symWithEigs([3, 2, 1], 1));
    expect(() => eigh(m, { onProgress: 'x' as never })).toThrow(
      /^E_VALUE: eigh: onProgress must be a function/,
    );
    expect(() => gemm(m, m, { onProgress: 1 as never })).toThrow(
      /^E_VALUE: gemm: onProgress must be a function/,
    );
    expect(() => syrk(m, { onProgress: {} as never })).toThrow(
      /^E_VALUE: syrk: onProgress must be a function/,
    );
  });

  it('solveTriangular and hadamard: flags that are not booleans are E_VALUE (a string was taken as true)', () => {
    const m = tensor('f64', [3, 3], symWithEigs([3, 2, 1], 1));
    expect(() => solveTriangular(m, m, { lower: 'no' as never })).toThrow(
      "E_VALUE: solveTriangular: lower must be true or false, got 'no'",
    );
    expect(() => hadamard(tensor('f64', [1, 4]), { transpose: 'yes' as never })).toThrow(
      "E_VALUE: hadamard: transpose must be true or false, got 'yes'",
    );
  });
});
