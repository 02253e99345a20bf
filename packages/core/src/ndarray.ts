import ndarray from 'ndarray';
import type { NdArray, TypedArray as NdTypedArray } from 'ndarray';
import { arrayCtor, type DType, type DTypeArrayMap, type TypedArray } from './dtype.js';
import { CalderaError } from './errors.js';
import type { Tensor } from './tensor.js';

/** The dtypes a typed-array class maps to unambiguously (Uint16Array may also hold f16/bf16 bits). */
const DTYPE_OF_CTOR = new Map<unknown, DType>([
  [Float64Array, 'f64'],
  [Float32Array, 'f32'],
  [Int8Array, 'i8'],
  [Uint8Array, 'u8'],
  [Int16Array, 'i16'],
  [Uint16Array, 'u16'],
  [Int32Array, 'i32'],
  [Uint32Array, 'u32'],
]);

/** Options of {@link fromNdarray}. */
export interface FromNdarrayOptions {
  /**
   * The dtype of the result. Default: inferred from the data's typed-array class (`Uint16Array` → `u16`).
   * Pass `'f16'` or `'bf16'` for a `Uint16Array` that holds half-precision bit patterns.
   */
  dtype?: DType;
  /** Name used in error messages. Default `'ndarray'`. */
  name?: string;
}

/** The dtype a typed-array class gives by default (`Uint16Array` → `u16`), as {@link fromNdarray}'s result type. */
export type DTypeOfArray<A> = A extends Float64Array
  ? 'f64'
  : A extends Float32Array
    ? 'f32'
    : A extends Int8Array
      ? 'i8'
      : A extends Uint8Array
        ? 'u8'
        : A extends Int16Array
          ? 'i16'
          : A extends Uint16Array
            ? 'u16'
            : A extends Int32Array
              ? 'i32'
              : A extends Uint32Array
                ? 'u32'
                : DType;

/** {@link fromNdarray}'s result: a tensor of `options.dtype` (`D`), or without it of the data's dtype. */
export type FromNdarrayTensor<D extends DType, A> = Tensor<[D] extends [never] ? DTypeOfArray<A> : D>;

/**
 * Wrap an `ndarray` (scijs) as a {@link Tensor} without copying: the result shares `data`, `shape`,
 * `stride` (as `strides`) and `offset`. Only typed-array-backed ndarrays can be shared; plain-array or
 * generic-storage ndarrays are rejected with `E_DTYPE` (copy them into a typed array first). Negative
 * strides (e.g. from `.step(-1)`) are kept; {@link contiguous} handles them. No code generation runs here. The result's
 * type follows the data (`Tensor<'f64'>` for a `Float64Array`), or `options.dtype`.
 */
export function fromNdarray<D extends DType = never, A extends NdTypedArray = NdTypedArray>(
  nd: Pick<NdArray<A>, 'data' | 'shape' | 'stride' | 'offset'>,
  options: FromNdarrayOptions & { dtype?: D } = {},
): FromNdarrayTensor<NoInfer<D>, A> {
  const name = options.name ?? 'ndarray';
  const data = nd.data as unknown;
  const inferred = DTYPE_OF_CTOR.get((data as object | null)?.constructor);
  if (!ArrayBuffer.isView(data) || inferred === undefined) {
    const what = (data as object | null)?.constructor?.name ?? typeof data;
    throw new CalderaError(
      'E_DTYPE',
      ArrayBuffer.isView(data)
        ? // a typed array with no dtype here (Uint8ClampedArray, BigInt64Array): it was "only typed arrays can be shared"
          `${name}: data is a ${what}, which has no Caldera dtype; copy it into a typed array that has one (e.g. Uint8Array, Float32Array)`
        : `${name}: data is a ${what}; only typed arrays can be shared zero-copy`,
    );
  }
  const dtype = (options.dtype ?? inferred) as D;
  if (arrayCtor(dtype) !== (data as TypedArray).constructor) {
    throw new CalderaError(
      'E_DTYPE',
      `${name}: dtype '${dtype}' needs ${arrayCtor(dtype).name}, data is a ${(data as TypedArray).constructor.name}`,
    );
  }
  const shape = Array.from(nd.shape);
  const strides = Array.from(nd.stride);
  if (strides.length !== shape.length) {
    throw new CalderaError(
      'E_SHAPE',
      `${name}: shape [${shape.join(', ')}] and stride [${strides.join(', ')}] differ in rank`,
    );
  }
  const len = (data as TypedArray).length;
  // Check that every addressed element is inside data (lowest and highest flat index).
  let lo = nd.offset;
  let hi = nd.offset;
  let empty = false;
  for (let k = 0; k < shape.length; k++) {
    const d = shape[k]!;
    if (!Number.isInteger(d) || d < 0 || !Number.isInteger(strides[k])) {
      throw new CalderaError('E_SHAPE', `${name}: invalid shape [${shape.join(', ')}] / stride`);
    }
    if (d === 0) empty = true;
    const span = (d - 1) * strides[k]!;
    if (span > 0) hi += span;
    else lo += span;
  }
  if (!empty && (!Number.isInteger(nd.offset) || lo < 0 || hi >= len)) {
    throw new CalderaError(
      'E_SHAPE',
      `${name}: shape [${shape.join(', ')}], stride [${strides.join(', ')}], offset ${nd.offset} address ` +
        `elements ${lo}..${hi} outside data of length ${len}`,
    );
  }
  const t: Tensor<D> = { dtype, shape, strides, offset: nd.offset, data: data as DTypeArrayMap[D] };
  return t as FromNdarrayTensor<D, A>;
}

/**
 * View a {@link Tensor} as an `ndarray` (scijs) without copying data. f16/bf16 tensors give an ndarray
 * over the raw `Uint16Array` bits. Note: ndarray's constructor compiles a class per dtype and rank with
 * `new Function` (once, then cached by ndarray), so keep this out of hot loops and out of pages under a
 * strict Content-Security-Policy; {@link fromNdarray} does no code generation.
 */
export function toNdarray<D extends DType>(t: Tensor<D>): NdArray<DTypeArrayMap[D]> {
  return ndarray(t.data, [...t.shape], [...t.strides], t.offset) as NdArray<DTypeArrayMap[D]>;
}
