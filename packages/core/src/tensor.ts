import { allocArray, arrayCtor, typedArrayName, type DType, type DTypeArrayMap } from './dtype.js';
import { CalderaError, describeValue, shownValue } from './errors.js';
import {
  bf16ArrayToF32,
  f16ArrayToF32,
  f32ArrayToBf16,
  f32ArrayToF16,
  fromBf16Bits,
  fromF16Bits,
} from './half.js';

/**
 * The shared tensor interface of every Caldera package: a plain object, structurally compatible with
 * `ndarray` (`data`, `shape`, `offset`; ndarray calls strides `stride`, see `fromNdarray`/`toNdarray`).
 * Element (i0, i1, …) lives at `data[offset + Σ ik·strides[k]]`. Strides are in elements, not bytes.
 * Row-major ("C") contiguous tensors have `strides[k] = Π_{j>k} shape[j]` and are what kernels expect;
 * use {@link contiguous} to get one from any view.
 */
export interface Tensor<D extends DType = DType> {
  readonly dtype: D;
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly offset: number;
  readonly data: DTypeArrayMap[D];
}

/** A 2-D f32 or f64 matrix, the operand type of the linear-algebra routines. */
export type Matrix = Tensor<'f32'> | Tensor<'f64'>;

/** Number of elements of a shape. */
export function shapeSize(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Row-major strides of a shape. */
export function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let k = shape.length - 1; k >= 0; k--) {
    s[k] = acc;
    acc *= shape[k]!;
  }
  return s;
}

function checkShape(shape: readonly number[], what: string): void {
  if (!Array.isArray(shape)) {
    throw new CalderaError(
      'E_SHAPE',
      `${what}: shape must be an array of dimensions, got ${describeValue(shape)}`,
    );
  }
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) {
      throw new CalderaError('E_SHAPE', `${what}: invalid shape [${shape.join(', ')}]`);
    }
  }
}

/**
 * Make a contiguous tensor. With `data`, wraps it without copying (its length must equal the shape's
 * size); without, allocates zeros. Plain number arrays hold values, copied into a new typed array: for f16 and bf16
 * rounded to their bits (as {@link cast}; a `Uint16Array` is taken as the bits themselves), for the integer dtypes
 * integers in the dtype's range (`E_VALUE` naming the first other one: they were wrapped and truncated unsaid).
 */
export function tensor<D extends DType>(
  dtype: D,
  shape: readonly number[],
  data?: DTypeArrayMap[D] | ArrayLike<number>,
): Tensor<D> {
  checkShape(shape, 'tensor');
  const n = shapeSize(shape);
  let arr: DTypeArrayMap[D];
  if (data === undefined) arr = allocArray(dtype, n);
  else if (ArrayBuffer.isView(data) && data.constructor === arrayCtor(dtype)) arr = data as DTypeArrayMap[D];
  else if (ArrayBuffer.isView(data)) {
    const name = typedArrayName(data);
    throw new CalderaError(
      'E_DTYPE',
      name === arrayCtor(dtype).name
        ? `tensor: data is a ${name} of another realm (a VM context or a frame); copy it into a ${name} of this one`
        : `tensor: data is a ${name ?? 'DataView'}, dtype '${dtype}' needs ${arrayCtor(dtype).name}`,
    );
  } else if (dtype === 'f16' || dtype === 'bf16') {
    // values, not bits: 1.5 became the bits 0x0001 (6e-8), -1 a NaN
    arr = (dtype === 'f16' ? f32ArrayToF16(data) : f32ArrayToBf16(data)) as DTypeArrayMap[D];
  } else {
    arr = allocArray(dtype, data.length);
    const lim = INT_RANGE[dtype as keyof typeof INT_RANGE] as readonly [number, number] | undefined;
    for (let i = 0; i < data.length; i++) {
      const v = data[i]!;
      if (lim && !(Number.isInteger(v) && v >= lim[0] && v <= lim[1]))
        throw new CalderaError(
          'E_VALUE',
          `tensor: data[${i}] is ${shownValue(v)}, not an integer in ${dtype}'s range [${lim[0]}, ${lim[1]}] (cast() of an f32 or f64 tensor rounds and saturates)`,
        );
      (arr as unknown as number[])[i] = v;
    }
  }
  if (arr.length !== n) {
    throw new CalderaError(
      'E_SHAPE',
      `tensor: shape [${shape.join(', ')}] needs ${n} elements, data has ${arr.length}`,
    );
  }
  return { dtype, shape: [...shape], strides: contiguousStrides(shape), offset: 0, data: arr };
}

/** Zero-filled contiguous tensor. */
export function zeros<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D> {
  return tensor(dtype, shape);
}

/** A 2-D matrix from rows of numbers (tests and small examples). */
export function matrixFromRows<D extends 'f32' | 'f64'>(
  dtype: D,
  rows: readonly (readonly number[])[],
): Tensor<D> {
  const m = rows.length;
  const n = m === 0 ? 0 : rows[0]!.length;
  const t = tensor(dtype, [m, n]);
  for (let i = 0; i < m; i++) {
    if (rows[i]!.length !== n)
      throw new CalderaError(
        'E_SHAPE',
        `matrixFromRows: row ${i} has ${rows[i]!.length} entries, expected ${n}`,
      );
    for (let j = 0; j < n; j++) t.data[i * n + j] = rows[i]![j]!;
  }
  return t;
}

/** True when the tensor is row-major contiguous (offset may be non-zero). */
export function isContiguous(t: Tensor): boolean {
  let acc = 1;
  for (let k = t.shape.length - 1; k >= 0; k--) {
    if (t.shape[k] !== 1 && t.strides[k] !== acc) return false;
    acc *= t.shape[k]!;
  }
  return true;
}

/** Flat index in `data` of a multi-index. */
export function indexOf(t: Tensor, idx: readonly number[]): number {
  if (idx.length !== t.shape.length) {
    throw new CalderaError(
      'E_SHAPE',
      `index has ${idx.length} coordinates, tensor has rank ${t.shape.length}`,
    );
  }
  let p = t.offset;
  for (let k = 0; k < idx.length; k++) {
    const i = idx[k]!;
    if (!Number.isInteger(i) || i < 0 || i >= t.shape[k]!) {
      throw new CalderaError('E_SHAPE', `index ${i} out of range for axis ${k} of size ${t.shape[k]}`);
    }
    p += i * t.strides[k]!;
  }
  return p;
}

/** Read one element (f16/bf16 are decoded to numbers). */
export function get(t: Tensor, ...idx: number[]): number {
  const v = t.data[indexOf(t, idx)]!;
  if (t.dtype === 'f16') return f16ArrayToF32(Uint16Array.of(v))[0]!;
  if (t.dtype === 'bf16') return bf16ArrayToF32(Uint16Array.of(v))[0]!;
  return v;
}

/** A view with another shape over the same data. Needs a contiguous tensor; `-1` infers one axis. */
export function reshape<D extends DType>(t: Tensor<D>, shape: readonly number[]): Tensor<D> {
  if (!Array.isArray(shape)) checkShape(shape, 'reshape');
  const n = shapeSize(t.shape);
  const s = [...shape];
  const inferAt = s.indexOf(-1);
  // the shape as asked is checked (-1 aside) before an axis is inferred: that made "invalid shape [5, 2.4]" of
  // [5, -1] and "[-12, -1]" of [-1, -1]
  const asked = `[${shape.join(', ')}]`;
  if (s.some((d, i) => i !== inferAt && !(Number.isInteger(d) && d >= 0)))
    throw new CalderaError('E_SHAPE', `reshape: invalid shape ${asked} (dimensions ≥ 0, and one -1 at most)`);
  const cannot = () =>
    new CalderaError('E_SHAPE', `reshape: cannot view [${t.shape.join(', ')}] as ${asked}`);
  if (inferAt >= 0) {
    const rest = shapeSize(s.filter((_, i) => i !== inferAt));
    if (rest !== 0 && n % rest !== 0) throw cannot();
    s[inferAt] = rest === 0 ? 0 : n / rest;
  }
  if (shapeSize(s) !== n) throw cannot();
  if (!isContiguous(t))
    throw new CalderaError('E_SHAPE', 'reshape: tensor is not contiguous; call contiguous() first');
  return { dtype: t.dtype, shape: s, strides: contiguousStrides(s), offset: t.offset, data: t.data };
}

/**
 * Permute axes as a view (default: reverse them, i.e. matrix transpose for rank 2). `E_SHAPE` unless `axes` is a
 * permutation of the integers `0 … rank−1`.
 */
export function transpose<D extends DType>(t: Tensor<D>, axes?: readonly number[]): Tensor<D> {
  const r = t.shape.length;
  const p = axes ?? [...Array(r).keys()].reverse();
  if (p.length !== r || new Set(p).size !== r || p.some((a) => !Number.isInteger(a) || a < 0 || a >= r)) {
    throw new CalderaError('E_SHAPE', `transpose: axes [${p.join(', ')}] are not a permutation of rank ${r}`);
  }
  return {
    dtype: t.dtype,
    shape: p.map((a) => t.shape[a]!),
    strides: p.map((a) => t.strides[a]!),
    offset: t.offset,
    data: t.data,
  };
}

/**
 * A strided sub-view: `ranges[k] = [start, end)` (or `[start, end, step]`) per axis; missing axes are
 * taken whole. No copy. More ranges than axes, or a range outside its axis, is `E_SHAPE`.
 */
export function slice<D extends DType>(
  t: Tensor<D>,
  ranges: readonly (readonly number[] | null)[],
): Tensor<D> {
  if (!Array.isArray(ranges) || ranges.length > t.shape.length)
    throw new CalderaError(
      'E_SHAPE',
      `slice: ${Array.isArray(ranges) ? `${ranges.length} ranges` : 'ranges that are not an array'} for a tensor of rank ${t.shape.length}`,
    );
  const shape: number[] = [];
  const strides: number[] = [];
  let offset = t.offset;
  for (let k = 0; k < t.shape.length; k++) {
    const r = ranges[k];
    const size = t.shape[k]!;
    const start = r?.[0] ?? 0;
    const end = r?.[1] ?? size;
    const step = r?.[2] ?? 1;
    if (
      !Number.isInteger(start) ||
      !Number.isInteger(end) ||
      !Number.isInteger(step) ||
      step <= 0 ||
      start < 0 ||
      end > size ||
      start > end
    ) {
      throw new CalderaError(
        'E_SHAPE',
        `slice: range [${r?.join(', ')}] invalid for axis ${k} of size ${size}`,
      );
    }
    shape.push(Math.ceil((end - start) / step));
    strides.push(t.strides[k]! * step);
    offset += start * t.strides[k]!;
  }
  return { dtype: t.dtype, shape, strides, offset, data: t.data };
}

/**
 * A contiguous copy (or `t` itself when it is already contiguous with offset 0 and exact length). `E_VALUE` when `t` is
 * not a tensor at all (no `shape` and `strides` arrays and `data`: an `ndarray` is wrapped with `fromNdarray` first);
 * `E_SHAPE` naming the extent when the view reaches outside its data (an offset or strides past the end of `data`, a
 * negative index, or non-integer offset or strides, an invalid shape): its missing elements would otherwise be read as
 * zeros or NaN.
 * @param name the tensor's name in that message. Default `'tensor'`.
 */
export function contiguous<D extends DType>(t: Tensor<D>, name = 'tensor'): Tensor<D> {
  assertTensorLike(t, name);
  const n = shapeSize(t.shape);
  checkExtent(t, n, name);
  if (isContiguous(t) && t.offset === 0 && t.data.length === n) return t;
  const out = allocArray(t.dtype, n);
  if (isContiguous(t)) {
    out.set(t.data.subarray(t.offset, t.offset + n) as never);
    return { dtype: t.dtype, shape: [...t.shape], strides: contiguousStrides(t.shape), offset: 0, data: out };
  }
  const r = t.shape.length;
  const idx = new Array<number>(r).fill(0);
  const src = t.data as unknown as number[];
  const dst = out as unknown as number[];
  for (let i = 0; i < n; i++) {
    let p = t.offset;
    for (let k = 0; k < r; k++) p += idx[k]! * t.strides[k]!;
    dst[i] = src[p]!;
    for (let k = r - 1; k >= 0; k--) {
      if (++idx[k]! < t.shape[k]!) break;
      idx[k] = 0;
    }
  }
  return { dtype: t.dtype, shape: [...t.shape], strides: contiguousStrides(t.shape), offset: 0, data: out };
}

/**
 * What a "not a tensor" message adds for a value that looks like an `ndarray` (it has a `stride` array, where a
 * tensor has `strides`): ` (an ndarray? wrap it with fromNdarray())`; otherwise nothing.
 */
export function ndarrayHint(v: unknown): string {
  return v !== null && typeof v === 'object' && Array.isArray((v as { stride?: unknown }).stride)
    ? ' (an ndarray? wrap it with fromNdarray())'
    : '';
}

/** `E_VALUE` unless `t` has the fields of a tensor (it was a TypeError reading `strides` of an `ndarray`). */
function assertTensorLike(t: unknown, name: string): void {
  const v = t as Partial<Tensor>;
  if (
    v !== null &&
    typeof v === 'object' &&
    Array.isArray(v.shape) &&
    Array.isArray(v.strides) &&
    typeof v.data?.length === 'number'
  )
    return;
  throw new CalderaError(
    'E_VALUE',
    `contiguous: ${name} is not a tensor {dtype, shape, strides, offset, data}, got ${describeValue(t)}${ndarrayHint(t)}`,
  );
}

/** `E_SHAPE` unless every element of the view (`n` of them) lies in `data` (see {@link contiguous}). */
function checkExtent(t: Tensor, n: number, name: string): void {
  checkShape(t.shape, `contiguous: ${name}`);
  const r = t.shape.length;
  const where = () => `shape [${t.shape.join(', ')}], offset ${t.offset}, strides [${t.strides.join(', ')}]`;
  let ok = Number.isInteger(t.offset) && Array.isArray(t.strides) && t.strides.length === r;
  for (let k = 0; ok && k < r; k++) ok = Number.isInteger(t.strides[k]);
  if (!ok) throw new CalderaError('E_SHAPE', `contiguous: ${name} is not a valid view (${where()})`);
  if (n === 0) return; // no element is read
  let lo = t.offset;
  let hi = t.offset;
  for (let k = 0; k < r; k++) {
    const span = (t.shape[k]! - 1) * t.strides[k]!;
    if (span < 0) lo += span;
    else hi += span;
  }
  if (lo < 0 || hi >= t.data.length) {
    throw new CalderaError(
      'E_SHAPE',
      `contiguous: ${name} (${where()}) reads data[${lo} … ${hi}], outside its data of ${t.data.length} elements`,
    );
  }
}

/**
 * Convert to another dtype (contiguous result). Float → 16-bit floats round to nearest even; float →
 * integer rounds to nearest (halves up, as `Math.round`) and saturates at the type's range; NaN becomes 0. An f64 source
 * is correctly rounded to a 16-bit float (no double rounding through f32).
 */
export function cast<D extends DType>(t: Tensor, dtype: D): Tensor<D> {
  const c = contiguous(t);
  if (c.dtype === dtype) return (c === t ? tensor(dtype, c.shape, c.data.slice() as never) : c) as Tensor<D>;
  const n = c.data.length;
  let src: ArrayLike<number> = c.data;
  if (c.dtype === 'f16') src = f16ArrayToF32(c.data as Uint16Array);
  else if (c.dtype === 'bf16') src = bf16ArrayToF32(c.data as Uint16Array);
  if (dtype === 'f16') return tensor(dtype, c.shape, f32ArrayToF16(src) as never);
  if (dtype === 'bf16') return tensor(dtype, c.shape, f32ArrayToBf16(src) as never);
  const out = allocArray(dtype, n);
  if (dtype === 'f32' || dtype === 'f64') {
    (out as Float32Array).set(src as ArrayLike<number>);
  } else {
    const lim = INT_RANGE[dtype as keyof typeof INT_RANGE];
    for (let i = 0; i < n; i++) {
      const v = Math.round(src[i]!);
      (out as unknown as number[])[i] = Number.isNaN(v) ? 0 : Math.min(lim[1], Math.max(lim[0], v));
    }
  }
  return { dtype, shape: [...c.shape], strides: contiguousStrides(c.shape), offset: 0, data: out };
}

const INT_RANGE = {
  i8: [-128, 127],
  u8: [0, 255],
  i16: [-32768, 32767],
  u16: [0, 65535],
  i32: [-2147483648, 2147483647],
  u32: [0, 4294967295],
} as const;

/** Contiguous f32 copy/view of any tensor (f16/bf16 decoded). */
export function toF32(t: Tensor): Tensor<'f32'> {
  return t.dtype === 'f32' ? (contiguous(t) as Tensor<'f32'>) : cast(t, 'f32');
}

/** Contiguous f64 copy/view of any tensor. */
export function toF64(t: Tensor): Tensor<'f64'> {
  return t.dtype === 'f64' ? (contiguous(t) as Tensor<'f64'>) : cast(t, 'f64');
}

/** Throw `E_SHAPE` unless `t` has exactly the given shape (`-1` matches any size). */
export function assertShape(t: Tensor, shape: readonly number[], name = 'tensor'): void {
  const ok = t.shape.length === shape.length && shape.every((d, k) => d === -1 || d === t.shape[k]);
  if (!ok) {
    throw new CalderaError(
      'E_SHAPE',
      `${name} has shape [${t.shape.join(', ')}], expected [${shape.map((d) => (d === -1 ? '*' : d)).join(', ')}]`,
    );
  }
}

/**
 * Throw `E_VALUE` if any element is NaN or ±Inf. 16-bit floats are checked on their bits (exponent all ones: f16
 * `0x7c00`, bf16 `0x7f80`), without widening the tensor.
 */
export function assertFinite(t: Tensor, name = 'tensor'): void {
  const c = contiguous(t);
  if (c.dtype === 'f16' || c.dtype === 'bf16') {
    const exp = c.dtype === 'f16' ? 0x7c00 : 0x7f80;
    const bits = c.data as Uint16Array;
    for (let i = 0; i < bits.length; i++) {
      if ((bits[i]! & exp) === exp) {
        const v = c.dtype === 'f16' ? fromF16Bits(bits[i]!) : fromBf16Bits(bits[i]!);
        throw new CalderaError('E_VALUE', `${name} has a non-finite value (${v}) at flat index ${i}`);
      }
    }
    return;
  }
  const d = c.data;
  for (let i = 0; i < d.length; i++) {
    if (!Number.isFinite(d[i]!)) {
      throw new CalderaError('E_VALUE', `${name} has a non-finite value (${d[i]}) at flat index ${i}`);
    }
  }
}
