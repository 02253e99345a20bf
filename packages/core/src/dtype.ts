import { CalderaError, shownValue } from './errors.js';

/** Element types of the shared tensor interface. f16 and bf16 are stored as raw bits in a Uint16Array. */
export type DType = 'f64' | 'f32' | 'f16' | 'bf16' | 'i8' | 'u8' | 'i16' | 'u16' | 'i32' | 'u32';

/** The typed array that backs each dtype. */
export interface DTypeArrayMap {
  f64: Float64Array;
  f32: Float32Array;
  f16: Uint16Array;
  bf16: Uint16Array;
  i8: Int8Array;
  u8: Uint8Array;
  i16: Int16Array;
  u16: Uint16Array;
  i32: Int32Array;
  u32: Uint32Array;
}

export type TypedArray = DTypeArrayMap[DType];

type TypedArrayCtor = {
  new (length: number): TypedArray;
  new (buffer: ArrayBufferLike, byteOffset?: number, length?: number): TypedArray;
  readonly BYTES_PER_ELEMENT: number;
};

const CTORS: Record<DType, TypedArrayCtor> = {
  f64: Float64Array,
  f32: Float32Array,
  f16: Uint16Array,
  bf16: Uint16Array,
  i8: Int8Array,
  u8: Uint8Array,
  i16: Int16Array,
  u16: Uint16Array,
  i32: Int32Array,
  u32: Uint32Array,
} as unknown as Record<DType, TypedArrayCtor>;

export const DTYPES: readonly DType[] = Object.keys(CTORS) as DType[];

/** Bytes per element of a dtype. */
export function dtypeSize(dtype: DType): number {
  return CTORS[dtype].BYTES_PER_ELEMENT;
}

/** The typed-array constructor backing `dtype`. */
export function arrayCtor<D extends DType>(
  dtype: D,
): {
  new (length: number): DTypeArrayMap[D];
  new (b: ArrayBufferLike, o?: number, l?: number): DTypeArrayMap[D];
} {
  const c = CTORS[dtype];
  if (!c) throw new CalderaError('E_DTYPE', `unknown dtype '${String(dtype)}'`);
  return c as never;
}

/**
 * The constructor name of a typed array (`'Float32Array'`; a DataView's is `'DataView'`), read from its
 * `Symbol.toStringTag` so that one from another realm (a VM context, a frame) answers too, which `instanceof` would
 * not; undefined for anything that is no view of an ArrayBuffer.
 */
export function typedArrayName(x: unknown): string | undefined {
  return ArrayBuffer.isView(x)
    ? ((x as unknown as Record<symbol, unknown>)[Symbol.toStringTag] as string | undefined)
    : undefined;
}

/**
 * Allocate a zero-filled array for `length` elements of `dtype`. `E_VALUE` naming the size when the engine cannot
 * allocate it (beyond a typed array's limit, or out of memory: a RangeError before).
 */
export function allocArray<D extends DType>(dtype: D, length: number): DTypeArrayMap[D] {
  const C = arrayCtor(dtype);
  try {
    return new C(length);
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    throw new CalderaError(
      'E_VALUE',
      `cannot allocate ${length} ${dtype} values (${((length * dtypeSize(dtype)) / 2 ** 30).toPrecision(3)} GiB): ${e.message}`,
      { cause: e },
    );
  }
}

/** Floating dtypes (the ones arithmetic routines accept). */
export function isFloatDType(dtype: DType): boolean {
  return dtype === 'f64' || dtype === 'f32' || dtype === 'f16' || dtype === 'bf16';
}

/**
 * `E_DTYPE` unless the stored dtype of tensor `name` (safetensors' name, any case) is a float one (f64, f32, f16,
 * bf16): the runtimes' check of a dense weight from its header, before its data is read (an integer tensor would be
 * cast to f32 code by code: numbers, but not the weights). `prefix` leads the message (the model's folder and ': ').
 */
export function assertFloatStorage(name: string, storedDtype: string, prefix = ''): void {
  const dtype = storedDtype.toLowerCase();
  if (!isFloatDType(dtype as DType))
    throw new CalderaError(
      'E_DTYPE',
      `${prefix}tensor '${name}' is ${dtype}, expected a float dtype (f64, f32, f16, bf16)` +
        ' (a quantized checkpoint? give the unquantized model)',
    );
}

/**
 * `E_VALUE` unless `dtype` is one of the runtimes' loader `dtype` options (`'auto'`, `'f32'`, `'f16'`: how dense
 * weights are held) or undefined (the default, `'auto'`): `'f8'` or `'bf16'` would otherwise load silently as
 * `'auto'`. `fn` names the loader.
 */
export function checkDenseDtype(dtype: unknown, fn: string): void {
  if (dtype !== undefined && dtype !== 'auto' && dtype !== 'f32' && dtype !== 'f16')
    throw new CalderaError(
      'E_VALUE',
      `${fn}: dtype must be 'auto', 'f32' or 'f16', got ${shownValue(dtype)}`,
    );
}
