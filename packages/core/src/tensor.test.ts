import { describe, expect, it } from 'vitest';
import { CalderaError } from './errors.js';
import { fromBf16Bits, fromF16Bits } from './half.js';
import {
  assertFinite,
  assertShape,
  cast,
  contiguous,
  contiguousStrides,
  get,
  indexOf,
  isContiguous,
  matrixFromRows,
  reshape,
  shapeSize,
  slice,
  tensor,
  toF32,
  toF64,
  transpose,
  zeros,
} from './tensor.js';

const iota = (n: number) => Float64Array.from({ length: n }, (_, i) => i);

describe('construction', () => {
  it('wraps typed arrays without copying and copies plain arrays', () => {
    const d = new Float32Array(6);
    const t = tensor('f32', [2, 3], d);
    expect(t.data).toBe(d);
    expect(t.strides).toEqual([3, 1]);
    const u = tensor('i16', [3], [1, -2, 3]);
    expect(u.data).toBeInstanceOf(Int16Array);
    expect(Array.from(u.data)).toEqual([1, -2, 3]);
    expect(zeros('u8', [2, 2]).data).toEqual(new Uint8Array(4));
  });

  it('rejects wrong lengths, wrong array types and invalid shapes with CalderaError', () => {
    expect(() => tensor('f32', [2, 3], new Float32Array(5))).toThrow(/needs 6 elements/);
    expect(() => tensor('f32', [2], new Float64Array(2))).toThrow(/Float64Array/);
    expect(() => tensor('f32', [-1])).toThrow(CalderaError);
    expect(() => tensor('f32', [1.5])).toThrow(CalderaError);
    expect(() => matrixFromRows('f64', [[1, 2], [3]])).toThrow(/row 1/);
  });

  it('computes sizes and row-major strides', () => {
    expect(shapeSize([2, 3, 4])).toBe(24);
    expect(shapeSize([])).toBe(1);
    expect(contiguousStrides([2, 3, 4])).toEqual([12, 4, 1]);
  });
});

describe('plain number arrays', () => {
  it('hold values: f16/bf16 round them to bits as cast does (they were stored as the bits: 1.5 → 6e-8, -1 → NaN); integer dtypes refuse what they would wrap or truncate', () => {
    expect(Array.from(toF32(tensor('f16', [3], [1.5, 2, -1])).data)).toEqual([1.5, 2, -1]);
    expect(Array.from(toF32(tensor('bf16', [2], [1, 0.5])).data)).toEqual([1, 0.5]);
    // the same bits as cast of the f64 values (correctly rounded: 1 + 2^-11 is a tie, to even)
    const values = [1 + 2 ** -11, 65520, 1e-8, -0.1];
    for (const dtype of ['f16', 'bf16'] as const)
      expect(tensor(dtype, [4], values).data).toEqual(cast(tensor('f64', [4], values), dtype).data);
    // a Uint16Array is the bits themselves
    expect(Array.from(tensor('f16', [1], Uint16Array.of(0x3c00)).data)).toEqual([0x3c00]);
    expect(Array.from(tensor('i8', [3], [-128, 127, 0]).data)).toEqual([-128, 127, 0]);
    expect(Array.from(tensor('u32', [1], [4294967295]).data)).toEqual([4294967295]);
    expect(() => tensor('i8', [3], [200, -200, 1])).toThrow(
      "E_VALUE: tensor: data[0] is 200, not an integer in i8's range [-128, 127] (cast() of an f32 or f64 tensor rounds and saturates)",
    );
    expect(() => tensor('u16', [2], [1, 1.7])).toThrow(/data\[1\] is 1\.7, not an integer in u16's range/);
    expect(() => tensor('i32', [1], [NaN])).toThrow(/data\[0\] is NaN/);
  });
});

describe('views', () => {
  const t = tensor('f64', [2, 3, 4], iota(24));

  it('get/indexOf address data[offset + Σ i·stride]', () => {
    expect(get(t, 1, 2, 3)).toBe(23);
    expect(indexOf(t, [1, 0, 2])).toBe(14);
    expect(() => get(t, 2, 0, 0)).toThrow(/out of range/);
    expect(() => get(t, 0, 0)).toThrow(/rank 3/);
  });

  it('transpose is a view and matches the definition for every element', () => {
    const p = transpose(t, [2, 0, 1]);
    expect(p.data).toBe(t.data);
    expect(p.shape).toEqual([4, 2, 3]);
    for (let a = 0; a < 2; a++)
      for (let b = 0; b < 3; b++) for (let c = 0; c < 4; c++) expect(get(p, c, a, b)).toBe(get(t, a, b, c));
    const m = matrixFromRows('f32', [
      [1, 2, 3],
      [4, 5, 6],
    ]);
    expect(Array.from(contiguous(transpose(m)).data)).toEqual([1, 4, 2, 5, 3, 6]);
    expect(() => transpose(t, [0, 0, 1])).toThrow(CalderaError);
  });

  it('slice takes ranges with steps as views', () => {
    const s = slice(t, [[1, 2], [0, 3, 2], null]);
    expect(s.shape).toEqual([1, 2, 4]);
    expect(s.data).toBe(t.data);
    for (let b = 0; b < 2; b++) for (let c = 0; c < 4; c++) expect(get(s, 0, b, c)).toBe(get(t, 1, 2 * b, c));
    expect(slice(t, [[0, 0]]).shape).toEqual([0, 3, 4]);
    expect(() => slice(t, [[0, 3]])).toThrow(/axis 0/);
    expect(() => slice(t, [[0, 2, 0]])).toThrow(CalderaError);
  });

  it('reshape views contiguous data, infers -1, and refuses non-contiguous input', () => {
    const r = reshape(t, [6, -1]);
    expect(r.shape).toEqual([6, 4]);
    expect(r.data).toBe(t.data);
    expect(get(r, 5, 3)).toBe(23);
    const inner = slice(t, [[1, 2]]); // contiguous with an offset
    expect(isContiguous(inner)).toBe(true);
    expect(get(reshape(inner, [12]), 0)).toBe(12);
    expect(() => reshape(transpose(t), [24])).toThrow(/not contiguous/);
    expect(() => reshape(t, [5, 5])).toThrow(/cannot view/);
    // the shape as given in the message (an inferred axis made "invalid shape [5, 4.8]" and "[-24, -1]")
    expect(() => reshape(t, [5, -1])).toThrow('E_SHAPE: reshape: cannot view [2, 3, 4] as [5, -1]');
    expect(() => reshape(t, [-1, -1])).toThrow(
      'E_SHAPE: reshape: invalid shape [-1, -1] (dimensions ≥ 0, and one -1 at most)',
    );
    expect(() => reshape(t, [2.5, -1])).toThrow(/^E_SHAPE: reshape: invalid shape \[2\.5, -1\]/);
  });

  it('contiguous copies strided views in row-major order and returns contiguous tensors as is', () => {
    expect(contiguous(t)).toBe(t);
    const v = slice(transpose(t), [null, [1, 3]]);
    const c = contiguous(v);
    expect(isContiguous(c)).toBe(true);
    expect(c.offset).toBe(0);
    let i = 0;
    for (let a = 0; a < 4; a++)
      for (let b = 0; b < 2; b++) for (let d = 0; d < 2; d++) expect(c.data[i++]).toBe(get(v, a, b, d));
    const off = contiguous(slice(t, [[1, 2]]));
    expect(Array.from(off.data)).toEqual(Array.from(iota(24).subarray(12)));
  });
});

describe('cast', () => {
  it('rounds float → int to nearest and saturates; NaN → 0', () => {
    const t = tensor('f64', [6], [1.4, 1.6, -300, 300, NaN, -0.4]);
    expect(Array.from(cast(t, 'i8').data)).toEqual([1, 2, -128, 127, 0, 0]);
    expect(Array.from(cast(t, 'u8').data)).toEqual([1, 2, 0, 255, 0, 0]);
  });

  it('converts through f16/bf16 with correct rounding and back', () => {
    const t = tensor('f32', [3], [1, 1 + 2 ** -11, 65520]);
    const h = cast(t, 'f16');
    expect(Array.from(h.data)).toEqual([0x3c00, 0x3c00, 0x7c00]);
    expect(Array.from(toF32(h).data)).toEqual([1, 1, Infinity]);
    const b = cast(tensor('f64', [2], [1.5, -2]), 'bf16');
    expect(Array.from(b.data)).toEqual([0x3fc0, 0xc000]);
    expect(Array.from(toF64(b).data)).toEqual([1.5, -2]);
    expect(fromF16Bits(get(h, 0))).not.toBe(1); // get() decodes: 1 as raw bits would be 0x3c00
    expect(get(h, 0)).toBe(1);
  });

  it('same-dtype cast returns an independent copy; cast of a view is contiguous', () => {
    const t = tensor('f32', [2], [1, 2]);
    const c = cast(t, 'f32');
    c.data[0] = 9;
    expect(t.data[0]).toBe(1);
    const v = cast(
      transpose(
        matrixFromRows('f64', [
          [1, 2],
          [3, 4],
        ]),
      ),
      'i32',
    );
    expect(Array.from(v.data)).toEqual([1, 3, 2, 4]);
  });
});

describe('assertions', () => {
  it('assertShape accepts wildcards and names the tensor', () => {
    const t = zeros('f32', [2, 3]);
    expect(() => assertShape(t, [2, -1], 'W')).not.toThrow();
    expect(() => assertShape(t, [3, 2], 'W')).toThrow(/W has shape \[2, 3\], expected \[3, 2\]/);
  });

  it('assertFinite finds NaN/Inf also in half-precision data', () => {
    expect(() => assertFinite(tensor('f32', [2], [1, NaN]), 'x')).toThrow(/x has a non-finite value/);
    expect(() => assertFinite(tensor('f16', [1], Uint16Array.of(0x7c00)))).toThrow(CalderaError);
    expect(() => assertFinite(tensor('f16', [1], Uint16Array.of(0x3c00)))).not.toThrow();
  });

  it('assertFinite on 16-bit bits agrees with the widened values on all 65 536 patterns of f16 and bf16', () => {
    for (const [dtype, widen] of [
      ['f16', fromF16Bits],
      ['bf16', fromBf16Bits],
    ] as const) {
      for (let b = 0; b < 65536; b++) {
        const finite = Number.isFinite(widen(b));
        // a finite row before the pattern, so the index in the message is checked too
        const t = tensor(dtype, [2], Uint16Array.of(0x3c00 & (dtype === 'f16' ? 0xffff : 0), b));
        if (finite) expect(() => assertFinite(t, 'w')).not.toThrow();
        else
          expect(() => assertFinite(t, 'w')).toThrow(
            /w has a non-finite value \((NaN|-?Infinity)\) at flat index 1/,
          );
      }
    }
  });
});

describe('invalid views and axes', () => {
  it('contiguous refuses a view reaching past its data (it was zero-padded: [4, 5, 0, 0])', () => {
    const data = Float32Array.of(1, 2, 3, 4, 5);
    const past = { dtype: 'f32' as const, shape: [4], strides: [1], offset: 3, data };
    expect(() => contiguous(past)).toThrow(
      /^E_SHAPE: contiguous: tensor \(shape \[4\], offset 3, strides \[1\]\) reads data\[3 … 6\], outside its data of 5 elements$/,
    );
    expect(() => toF32(past)).toThrow(/E_SHAPE: contiguous: tensor .* reads data\[3 … 6\]/);
    expect(() => cast(past, 'f64')).toThrow(/E_SHAPE/);
    // a strided view past the end (it read undefined → NaN) and one before the start
    const strided = { dtype: 'f32' as const, shape: [2, 2], strides: [1, 4], offset: 0, data };
    expect(() => contiguous(strided, "tensor 'w'")).toThrow(
      /^E_SHAPE: contiguous: tensor 'w' \(shape \[2, 2\], offset 0, strides \[1, 4\]\) reads data\[0 … 5\], outside/,
    );
    expect(Array.from(contiguous({ ...strided, strides: [1, 3] }).data)).toEqual([1, 4, 2, 5]);
    const backwards = { dtype: 'f32' as const, shape: [3], strides: [-1], offset: 1, data };
    expect(() => contiguous(backwards)).toThrow(/reads data\[-1 … 1\], outside its data of 5 elements/);
    expect(() => contiguous({ ...past, offset: 0.5, shape: [2] })).toThrow(/E_SHAPE: .*not a valid view/);
    expect(() => contiguous({ ...past, strides: [] })).toThrow(/E_SHAPE: .*not a valid view/);
    expect(() => contiguous({ ...past, shape: [NaN] })).toThrow(/E_SHAPE: contiguous: tensor: invalid shape/);
    // views that stay inside their data still copy, including the last element and negative strides
    expect(Array.from(contiguous({ ...past, shape: [2] }).data)).toEqual([4, 5]);
    expect(Array.from(contiguous({ ...backwards, offset: 4 }).data)).toEqual([5, 4, 3]);
    expect(Array.from(contiguous({ ...past, shape: [0], offset: 99 }).data)).toEqual([]);
  });

  it('transpose requires integer axes (0.5 gave shape [undefined, 3])', () => {
    const m = zeros('f32', [2, 3]);
    expect(() => transpose(m, [0.5, 1])).toThrow(
      /^E_SHAPE: transpose: axes \[0\.5, 1\] are not a permutation of rank 2$/,
    );
    expect(() => transpose(m, [NaN, 0])).toThrow(/E_SHAPE: transpose/);
    expect(transpose(m, [1, 0]).shape).toEqual([3, 2]);
  });

  it('tensor(dtype, null) is E_SHAPE, not a TypeError', () => {
    expect(() => tensor('f32', null as never)).toThrow(
      /^E_SHAPE: tensor: shape must be an array of dimensions, got null$/,
    );
  });
});

describe('slice ranges', () => {
  it('more ranges than axes is E_SHAPE (they were ignored)', () => {
    const t = tensor('f32', [2, 3], new Float32Array(6));
    expect(slice(t, [[0, 1], null]).shape).toEqual([1, 3]);
    expect(() => slice(t, [[0, 1], null, [0, 1]])).toThrow('E_SHAPE: slice: 3 ranges for a tensor of rank 2');
    expect(() => slice(t, null as never)).toThrow(
      'E_SHAPE: slice: ranges that are not an array for a tensor of rank 2',
    );
  });
});

describe('allocation beyond what the engine allows', () => {
  it('tensor() and zeros() of a valid but huge shape are E_VALUE naming the size (a RangeError before)', () => {
    expect(() => tensor('f32', [2 ** 20, 2 ** 20])).toThrow(
      /^E_VALUE: cannot allocate 1099511627776 f32 values \(4\.10e\+3 GiB\): /,
    );
    expect(() => zeros('f64', [2 ** 40])).toThrow(/^E_VALUE: cannot allocate 1099511627776 f64 values/);
  });
});
