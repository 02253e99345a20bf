import { CalderaError, slice, tensor, transpose } from '@caldera/core';
import { describe, expect, it } from 'vitest';
import { assertFiniteMatrix, assertMatrix, assertSameDType, assertSquare, newMatrix } from './check.js';

function code(f: () => void): string | undefined {
  try {
    f();
  } catch (e) {
    if (e instanceof CalderaError) return e.code;
    throw e;
  }
  return undefined;
}

describe('check helpers', () => {
  it('accept 2-D f32/f64 matrices, including strided and empty views', () => {
    const a = tensor('f64', [3, 4]);
    expect(code(() => assertMatrix(a, 'f', 'a'))).toBeUndefined();
    expect(code(() => assertMatrix(transpose(a), 'f', 'a'))).toBeUndefined();
    expect(
      code(() =>
        assertMatrix(
          slice(a, [
            [1, 3],
            [0, 4, 2],
          ]),
          'f',
          'a',
        ),
      ),
    ).toBeUndefined();
    expect(code(() => assertMatrix(tensor('f32', [0, 5]), 'f', 'a'))).toBeUndefined();
  });

  it('reject wrong dtype, rank and out-of-bounds views with stable codes', () => {
    expect(code(() => assertMatrix(tensor('i32', [2, 2]), 'f', 'a'))).toBe('E_DTYPE');
    expect(code(() => assertMatrix(tensor('f32', [2, 2, 2]), 'f', 'a'))).toBe('E_SHAPE');
    const bad = { ...tensor('f32', [2, 2]), offset: 1 };
    expect(code(() => assertMatrix(bad, 'f', 'a'))).toBe('E_SHAPE');
    expect(() => assertMatrix(tensor('f32', [2]), 'gemm', 'b')).toThrow(
      /gemm: b must be 2-D, got shape \[2\]/,
    );
  });

  it('reject non-finite values and name their index', () => {
    const a = tensor('f32', [2, 3]);
    expect(code(() => assertFiniteMatrix(a, 'f', 'a'))).toBeUndefined();
    a.data[4] = Number.NaN;
    expect(() => assertFiniteMatrix(a, 'f', 'a')).toThrow(/non-finite value \(NaN\) at \[1, 1\]/);
    a.data[4] = 0;
    a.data[2] = -Infinity;
    expect(code(() => assertFiniteMatrix(transpose(a), 'f', 'a'))).toBe('E_VALUE');
  });

  it('check dtype agreement and squareness', () => {
    expect(code(() => assertSameDType('f', ['a', tensor('f32', [1, 1])], ['b', tensor('f64', [1, 1])]))).toBe(
      'E_DTYPE',
    );
    expect(code(() => assertSquare(tensor('f32', [2, 3]), 'f', 'a'))).toBe('E_SHAPE');
    const m = newMatrix('f64', 2, 3);
    expect(m.data).toBeInstanceOf(Float64Array);
    expect(m.strides).toEqual([3, 1]);
  });
});
