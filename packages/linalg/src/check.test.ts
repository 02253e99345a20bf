import { CalderaError, slice, tensor, transpose } from '@caldera/core';
import { describe, expect, it } from 'vitest';
import { assertFiniteMatrix, assertMatrix, assertSameDType, assertSquare, newMatrix } from './check.js';
import * as pkg from './index.js';

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

  it('assertMatrix is public and turns non-tensors into E_VALUE naming the routine and operand', () => {
    expect(pkg.assertMatrix).toBe(assertMatrix);
    for (const bad of [
      null,
      undefined,
      3,
      { shape: [2, 2] },
      { ...tensor('f32', [2, 2]), strides: undefined },
    ])
      expect(() => pkg.assertMatrix(bad, 'ldlq', 'W')).toThrow(/^E_VALUE: ldlq: W is not a tensor$/);
    expect(() => pkg.assertMatrix({ ...tensor('f32', [2, 2]), data: undefined }, 'f', 'h')).toThrow(
      /E_VALUE: f: h is not a tensor/,
    );
    expect(() => pkg.assertMatrix(tensor('u8', [2, 2]), 'ldlq', 'H')).toThrow(
      /E_DTYPE: ldlq: H has dtype 'u8', expected 'f32' or 'f64'/,
    );
    // an ndarray (stride, not strides) passed as it is: the message says how to pass it
    const nd = { data: new Float64Array(4), shape: [2, 2], stride: [2, 1], offset: 0, dtype: 'float64' };
    expect(() => pkg.assertMatrix(nd, 'gemm', 'a')).toThrow(
      'E_VALUE: gemm: a is not a tensor (an ndarray? wrap it with fromNdarray())',
    );
  });

  it('the routines on raw buffers reject a missing buffer with E_VALUE naming it', () => {
    for (const bad of [null, undefined]) {
      expect(() => pkg.eighJacobi(bad as never, 2)).toThrow(/^E_VALUE: eighJacobi: a must be a Float64Array/);
      expect(() => pkg.orthonormalizeColumns(bad as never, 2, 2)).toThrow(
        /^E_VALUE: orthonormalizeColumns: z must be a Float64Array/,
      );
      expect(() => pkg.hadamardRowsInPlace(bad as never, 1, 8)).toThrow(
        /^E_VALUE: hadamardRowsInPlace: data must be a Float32Array or Float64Array/,
      );
    }
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
