import { afterAll, describe, expect, it } from 'vitest';
import { isCalderaError, Rng, tensor } from '@caldera/core';
import { createPool } from './pool/pool.js';
import { invTriangular, solveTriangular } from './triangular.js';
import { EPS, mul } from './factor-test-util.js';

/** Well-conditioned random triangular n×n: diagonal in [1, 2], off-diagonal N(0, 1)/n. */
function tri(n: number, lower: boolean, seed: number): Float64Array {
  const rng = new Rng(seed);
  const a = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      if (i === j) a[i * n + j] = 1 + rng.uniform();
      else if (lower ? j < i : j > i) a[i * n + j] = rng.normal() / n;
      else a[i * n + j] = 99; // garbage in the other triangle: must not be read
    }
  return a;
}

function opA(a: Float64Array, n: number, lower: boolean, trans: boolean, unit: boolean): Float64Array {
  const m = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      const inTri = lower ? j <= i : j >= i;
      const v = i === j && unit ? 1 : inTri ? a[i * n + j]! : 0;
      if (trans) m[j * n + i] = v;
      else m[i * n + j] = v;
    }
  return m;
}

describe('solveTriangular', () => {
  const n = 23;
  const k = 5;
  for (const lower of [true, false])
    for (const transpose of [false, true])
      for (const unitDiagonal of [false, true])
        for (const side of ['left', 'right'] as const) {
          it(`lower=${lower} transpose=${transpose} unit=${unitDiagonal} side=${side}`, () => {
            const a = tri(n, lower, 3);
            const rng = new Rng(5);
            const [br, bc] = side === 'left' ? [n, k] : [k, n];
            const b = rng.fillNormal(new Float64Array(br * bc));
            const x = solveTriangular(tensor('f64', [n, n], a), tensor('f64', [br, bc], b), {
              lower,
              transpose,
              unitDiagonal,
              side,
            });
            const m = opA(a, n, lower, transpose, unitDiagonal);
            const back = side === 'left' ? mul(m, x.data, n, n, k) : mul(x.data, m, k, n, n);
            // substitution is backward stable: residual ≤ n·eps·|op(A)|·|X| elementwise; with the
            // well-conditioned A above, 10·n·eps·max|B| is a safe bound.
            let worst = 0;
            for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(back[i]! - b[i]!));
            expect(worst).toBeLessThan(10 * n * EPS * 4);
          });
        }

  // n²·k/2 ≥ 2²² multiply-adds: the blocked solve (64-row diagonal blocks, the rest by gemm), with a last block of
  // 300 − 4·64 = 44 rows; the other triangle holds 99s, so a product reading the wrong triangle shows in the residual
  const pool = createPool({ threads: 2 });
  afterAll(() => pool.dispose());
  for (const lower of [true, false])
    for (const transpose of [false, true])
      for (const side of ['left', 'right'] as const)
        it(`blocked (n = 300, 100 right-hand sides): lower=${lower} transpose=${transpose} side=${side} (+ unit)`, () => {
          const big = 300;
          const cols = 100;
          const a = tri(big, lower, 7);
          const [br, bc] = side === 'left' ? [big, cols] : [cols, big];
          const b = new Rng(8).fillNormal(new Float64Array(br * bc));
          const args = [tensor('f64', [big, big], a), tensor('f64', [br, bc], b)] as const;
          const x = solveTriangular(...args, { lower, transpose, side });
          const m = opA(a, big, lower, transpose, false);
          const back = side === 'left' ? mul(m, x.data, big, big, cols) : mul(x.data, m, cols, big, big);
          let worst = 0;
          for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(back[i]! - b[i]!));
          expect(worst).toBeLessThan(10 * big * EPS * 4); // the bound of the small systems above
          // the pool splits the products between threads, not their sums: the same bits
          expect(solveTriangular(...args, { lower, transpose, side, pool }).data).toEqual(x.data);
          // a unit diagonal: the stored one (in [1, 2]) is not read
          const xu = solveTriangular(...args, { lower, transpose, side, unitDiagonal: true });
          const mu = opA(a, big, lower, transpose, true);
          const backU = side === 'left' ? mul(mu, xu.data, big, big, cols) : mul(xu.data, mu, cols, big, big);
          let worstU = 0;
          for (let i = 0; i < b.length; i++) worstU = Math.max(worstU, Math.abs(backU[i]! - b[i]!));
          expect(worstU).toBeLessThan(10 * big * EPS * 4);
        });

  it('invTriangular of a large matrix (blocked: n = 260, k = n) gives A·A⁻¹ = I', () => {
    for (const lower of [true, false]) {
      const n = 260;
      const a = tri(n, lower, 12);
      const inv = invTriangular(tensor('f64', [n, n], a), { lower });
      const p = mul(opA(a, n, lower, false, false), inv.data, n, n, n);
      let worst = 0;
      for (let i = 0; i < n; i++)
        for (let j = 0; j < n; j++) {
          worst = Math.max(worst, Math.abs(p[i * n + j]! - (i === j ? 1 : 0)));
          if (lower ? j > i : j < i) expect(inv.data[i * n + j]).toBe(0);
        }
      expect(worst).toBeLessThan(10 * n * EPS); // the bound of the n = 40 test below
    }
  });

  it('a large solve names a zero pivot in a later block, and stops on an aborted signal', () => {
    const big = 300;
    const a = tri(big, true, 9);
    a[200 * big + 200] = 0;
    const b = tensor('f64', [big, 100], new Rng(1).fillNormal(new Float64Array(big * 100)));
    expect(() => solveTriangular(tensor('f64', [big, big], a), b)).toThrow(
      /E_VALUE: solveTriangular: a is singular \(zero diagonal at \[200, 200\]\)/,
    );
    const ac = new AbortController();
    ac.abort(new Error('stop'));
    expect(() =>
      solveTriangular(tensor('f64', [big, big], tri(big, true, 9)), b, { signal: ac.signal }),
    ).toThrow(/E_ABORTED: solveTriangular was aborted/);
  });

  it('rejects a singular matrix and mismatched shapes', () => {
    const a = tensor('f64', [2, 2], [1, 0, 1, 0]);
    expect(() => solveTriangular(a, tensor('f64', [2, 1], [1, 1]))).toThrow(/singular.*\[1, 1\]/);
    try {
      solveTriangular(tensor('f64', [2, 2], [1, 0, 0, 1]), tensor('f64', [3, 1], [1, 1, 1]));
      expect.unreachable();
    } catch (e) {
      expect(isCalderaError(e, 'E_SHAPE')).toBe(true);
    }
    // another side ran as 'left'
    expect(() =>
      solveTriangular(tensor('f64', [2, 2], [1, 0, 0, 1]), tensor('f64', [2, 1], [1, 1]), {
        side: 'up' as never,
      }),
    ).toThrow("E_VALUE: solveTriangular: side must be 'left' or 'right', got 'up'");
  });

  it('handles 1×1 and empty systems', () => {
    expect(solveTriangular(tensor('f64', [1, 1], [4]), tensor('f64', [1, 2], [2, 8])).data).toEqual(
      new Float64Array([0.5, 2]),
    );
    expect(solveTriangular(tensor('f64', [0, 0], []), tensor('f64', [0, 3], [])).shape).toEqual([0, 3]);
  });

  it('a diagonal so small that the solution overflows throws E_VALUE naming the row, not Inf/NaN', () => {
    // finite inputs, subnormal pivot: 2 / 5e-324 = Infinity
    const sub = tensor('f64', [2, 2], [1, 0, 1, 5e-324]);
    expect(() => solveTriangular(sub, tensor('f64', [2, 1], [1, 2]))).toThrow(
      /E_VALUE: solveTriangular: .*overflows at row 1/,
    );
    const tiny = tensor('f64', [2, 2], [1e-300, 0, 1, 1e-300]);
    expect(() => solveTriangular(tiny, tensor('f64', [2, 1], [1e10, 2]))).toThrow(/row 0/);
    expect(() => invTriangular(sub)).toThrow(/E_VALUE: invTriangular/);
  });

  it('a subnormal pivot whose quotients are finite solves (its reciprocal overflows: it was refused as singular)', () => {
    const x = solveTriangular(tensor('f64', [1, 1], [1e-310]), tensor('f64', [1, 2], [1e-300, -3e-305])).data;
    // 1e-310 holds ~44 significant bits: the quotients to about 2⁻⁴⁴ relative
    expect(Math.abs(x[0]! / 1e10 - 1)).toBeLessThan(1e-12);
    expect(Math.abs(x[1]! / -3e5 - 1)).toBeLessThan(1e-12);
  });
});

describe('invTriangular', () => {
  for (const lower of [true, false]) {
    it(`A·A⁻¹ = I (lower=${lower}), result stays triangular`, () => {
      const n = 40;
      const a = tri(n, lower, 11);
      const inv = invTriangular(tensor('f64', [n, n], a), { lower });
      const m = opA(a, n, lower, false, false);
      const p = mul(m, inv.data, n, n, n);
      for (let i = 0; i < n; i++)
        for (let j = 0; j < n; j++) {
          expect(Math.abs(p[i * n + j]! - (i === j ? 1 : 0))).toBeLessThan(10 * n * EPS);
          if (lower ? j > i : j < i) expect(inv.data[i * n + j]).toBe(0);
        }
    });
  }
});
