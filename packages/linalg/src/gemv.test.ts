import { CalderaError, tensor, type Tensor } from '@caldera/core';
import { describe, expect, it } from 'vitest';
import { gemv, gemvInto, type Vector } from './gemv.js';
import { at, randn, stridedRandn, tview, UNIT_ROUNDOFF } from './test-util.js';

function vec(dtype: 'f32' | 'f64', values: number[], stride = 1): Vector {
  const data =
    dtype === 'f32' ? new Float32Array(values.length * stride) : new Float64Array(values.length * stride);
  values.forEach((v, i) => (data[i * stride] = v));
  return { dtype, shape: [values.length], strides: [stride], offset: 0, data } as Vector;
}

describe('gemv', () => {
  it('matches a brute-force product for both dtypes, both orientations, strided operands', () => {
    let seed = 1;
    for (const dtype of ['f32', 'f64'] as const) {
      for (const [m, k] of [
        [1, 1],
        [7, 13],
        [33, 5],
        [64, 129],
      ] as const) {
        for (const trans of [false, true]) {
          for (const a of [randn(dtype, m, k, seed++), stridedRandn(dtype, m, k, seed++)]) {
            const op = trans ? tview(a) : a; // op(op) = a
            const xs = Array.from({ length: k }, (_, i) => Math.sin(i + seed));
            const ys = Array.from({ length: m }, (_, i) => Math.cos(i * 3 + seed));
            const x = vec(dtype, xs, 2);
            const y = vec(dtype, ys, 3);
            gemvInto(y, op, x, { trans, alpha: 0.5, beta: -2 });
            for (let i = 0; i < m; i++) {
              let s = 0;
              let g = 0;
              for (let p = 0; p < k; p++) {
                const v = at(a, i, p) * (dtype === 'f32' ? Math.fround(xs[p]!) : xs[p]!);
                s += v;
                g += Math.abs(v);
              }
              const yi = dtype === 'f32' ? Math.fround(ys[i]!) : ys[i]!;
              const want = 0.5 * s - 2 * yi;
              // inputs are exact in both paths; accumulation in f64, one rounding on store:
              // |err| ≤ (k + 3)·u_f64·mag + u_dtype·|want|
              const bound =
                (k + 3) * 2 ** -53 * (0.5 * g + 2 * Math.abs(yi)) + UNIT_ROUNDOFF[dtype] * Math.abs(want);
              expect(Math.abs(y.data[i * 3]! - want)).toBeLessThanOrEqual(bound + 1e-300);
            }
          }
        }
      }
    }
  });

  it('returns a new vector and leaves y unmodified; beta = 0 ignores y', () => {
    const a = randn('f64', 3, 2, 1);
    const x = vec('f64', [1, 2]);
    const y = vec('f64', [1, 1, 1]);
    const r = gemv(a, x, { y, beta: 1 }) as Tensor<'f64'>;
    expect(Array.from(y.data)).toEqual([1, 1, 1]);
    for (let i = 0; i < 3; i++) expect(r.data[i]).toBeCloseTo(at(a, i, 0) + 2 * at(a, i, 1) + 1, 14);
    const z = vec('f64', [Number.NaN, Number.NaN, Number.NaN]);
    gemvInto(z, a, x);
    expect(Array.from(z.data).every(Number.isFinite)).toBe(true);
  });

  it('rejects bad shapes, dtypes and non-finite input', () => {
    const a = randn('f32', 3, 2, 1);
    const code = (f: () => unknown): string | undefined => {
      try {
        f();
      } catch (e) {
        return (e as CalderaError).code;
      }
      return undefined;
    };
    expect(code(() => gemv(a, vec('f32', [1, 2, 3])))).toBe('E_SHAPE');
    expect(code(() => gemv(a, vec('f64', [1, 2]) as never))).toBe('E_DTYPE');
    expect(code(() => gemv(a, tensor('f32', [2, 1]) as never))).toBe('E_SHAPE');
    expect(code(() => gemv(a, vec('f32', [1, Number.NaN])))).toBe('E_VALUE');
    // a y of another dtype (it was copied into a's and rounded unsaid: 1e-9 lost)
    expect(() =>
      gemv(a, vec('f32', [1, 1]), { trans: true, y: vec('f64', [1, 1, 1e-9]) as never, beta: 1 }),
    ).toThrow(/^E_DTYPE: gemv: y has dtype 'f64'/);
  });
});
