import ndarray from 'ndarray';
import { describe, expect, it } from 'vitest';
import { CalderaError } from './errors.js';
import { fromNdarray, toNdarray } from './ndarray.js';
import { contiguous, get, tensor, toF32, transpose, type Tensor } from './tensor.js';

describe('ndarray interop', () => {
  it('fromNdarray shares data and agrees with ndarray.get on every element of strided views', () => {
    const data = Float32Array.from({ length: 60 }, (_, i) => i * 0.5);
    const base = ndarray(data, [3, 4, 5]);
    const views = [
      base,
      base.transpose(2, 0, 1),
      base.lo(1, 1, 0).hi(2, 3, 5).step(1, -1, 2),
      base.pick(1, null, null),
    ];
    for (const v of views) {
      const t = fromNdarray(v);
      expect(t.data).toBe(data);
      expect(t.dtype).toBe('f32');
      const idx = new Array<number>(v.shape.length).fill(0);
      const n = v.shape.reduce((a, b) => a * b, 1);
      for (let i = 0; i < n; i++) {
        expect(get(t, ...idx)).toBe(v.get(...idx));
        for (let k = idx.length - 1; k >= 0; k--) {
          if (++idx[k]! < v.shape[k]!) break;
          idx[k] = 0;
        }
      }
    }
  });

  it('a write through one side is visible on the other (zero copy both ways)', () => {
    const t = tensor('i32', [2, 3]);
    const nd = toNdarray(transpose(t));
    nd.set(2, 1, 42); // element (1, 2) of t
    expect(get(t, 1, 2)).toBe(42);
    const back = fromNdarray(nd);
    expect(back.data).toBe(t.data);
    expect(back.strides).toEqual([1, 3]);
    expect(Array.from(contiguous(back).data)).toEqual([0, 0, 0, 0, 0, 42]);
  });

  it('infers every typed-array dtype and accepts f16/bf16 for Uint16Array data', () => {
    const cases = [
      [Float64Array, 'f64'],
      [Int8Array, 'i8'],
      [Uint8Array, 'u8'],
      [Int16Array, 'i16'],
      [Uint16Array, 'u16'],
      [Uint32Array, 'u32'],
    ] as const;
    for (const [C, d] of cases) expect(fromNdarray(ndarray(new C(4), [4])).dtype).toBe(d);
    expect(fromNdarray(ndarray(new Uint16Array(2), [2]), { dtype: 'bf16' }).dtype).toBe('bf16');
    expect(toNdarray(tensor('f16', [2])).data).toBeInstanceOf(Uint16Array);
  });

  it('rejects plain arrays, mismatched dtypes and out-of-bounds views', () => {
    expect(() => fromNdarray(ndarray([1, 2, 3] as never, [3]))).toThrow(/only typed arrays/);
    expect(() => fromNdarray(ndarray(new Uint8ClampedArray(4), [4]))).toThrow(
      'E_DTYPE: ndarray: data is a Uint8ClampedArray, which has no Caldera dtype; copy it into a typed array that has one (e.g. Uint8Array, Float32Array)',
    );
    expect(() => fromNdarray(ndarray(new Float32Array(4), [4]), { dtype: 'f16', name: 'W' })).toThrow(
      /W: dtype 'f16' needs Uint16Array/,
    );
    const bad = { data: new Float32Array(4), shape: [2, 3], stride: [3, 1], offset: 0 };
    expect(() => fromNdarray(bad)).toThrow(CalderaError);
    expect(() => fromNdarray({ ...bad, shape: [0, 3] })).not.toThrow();
  });

  it("types the result after the ndarray's data (a Tensor<DType> did not compile where an f64 matrix is wanted)", () => {
    const f64: Tensor<'f64'> = fromNdarray(ndarray(new Float64Array(4), [2, 2]));
    const f32: Tensor<'f32'> = fromNdarray(ndarray(new Float32Array(4), [2, 2]).transpose(1, 0));
    const half: Tensor<'f16'> = fromNdarray(ndarray(new Uint16Array(4), [4]), { dtype: 'f16' });
    const explicit: Tensor<'f32'> = fromNdarray<'f32'>(ndarray(new Float32Array(4), [4])); // as callers wrote it
    // @ts-expect-error: a Float32Array's tensor is not an f64 one
    const wrong: Tensor<'f64'> = fromNdarray(ndarray(new Float32Array(4), [2, 2]));
    expect([f64.dtype, f32.dtype, half.dtype, explicit.dtype, wrong.dtype]).toEqual([
      'f64',
      'f32',
      'f16',
      'f32',
      'f32',
    ]);
  });

  it('an ndarray passed where a tensor is expected is E_VALUE with a hint (it was a TypeError reading strides)', () => {
    const nd = ndarray(new Float32Array(64), [8, 8]) as unknown as Tensor;
    expect(() => contiguous(nd)).toThrow(
      /^E_VALUE: contiguous: tensor is not a tensor \{dtype, shape, strides, offset, data\}, got an object \(an ndarray\? wrap it with fromNdarray\(\)\)$/,
    );
    expect(() => toF32(nd)).toThrow(/E_VALUE: .*fromNdarray/);
    expect(() => contiguous(null as unknown as Tensor, "tensor 'w'")).toThrow(
      /^E_VALUE: contiguous: tensor 'w' is not a tensor .*, got null$/,
    );
    expect(
      contiguous(fromNdarray(ndarray(Float32Array.of(1, 2, 3, 4), [2, 2]).transpose(1, 0))).data,
    ).toEqual(Float32Array.of(1, 3, 2, 4));
  });
});
