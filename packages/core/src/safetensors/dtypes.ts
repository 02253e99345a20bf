import type { DType } from '../dtype.js';

/** The dtype names of the safetensors format that Caldera reads and writes. */
export type SafetensorsDType =
  'F64' | 'F32' | 'F16' | 'BF16' | 'I8' | 'U8' | 'I16' | 'U16' | 'I32' | 'U32' | 'I64' | 'BOOL';

/** Bytes per element of each safetensors dtype. */
export const SAFETENSORS_DTYPE_SIZE: Readonly<Record<SafetensorsDType, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I8: 1,
  U8: 1,
  I16: 2,
  U16: 2,
  I32: 4,
  U32: 4,
  I64: 8,
  BOOL: 1,
};

/**
 * The tensor dtype a safetensors dtype is read as. `BOOL` is read as `u8` (0 or 1 per element); `I64` has
 * no tensor dtype (read it with `readBigInt64` or `readRaw`).
 */
export const SAFETENSORS_TO_DTYPE: Readonly<Record<SafetensorsDType, DType | null>> = {
  F64: 'f64',
  F32: 'f32',
  F16: 'f16',
  BF16: 'bf16',
  I8: 'i8',
  U8: 'u8',
  I16: 'i16',
  U16: 'u16',
  I32: 'i32',
  U32: 'u32',
  I64: null,
  BOOL: 'u8',
};

/** The safetensors dtype a tensor dtype is written as. */
export const DTYPE_TO_SAFETENSORS: Readonly<Record<DType, SafetensorsDType>> = {
  f64: 'F64',
  f32: 'F32',
  f16: 'F16',
  bf16: 'BF16',
  i8: 'I8',
  u8: 'U8',
  i16: 'I16',
  u16: 'U16',
  i32: 'I32',
  u32: 'U32',
};

/** True when `s` is one of the supported safetensors dtype names. */
export function isSafetensorsDType(s: unknown): s is SafetensorsDType {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(SAFETENSORS_DTYPE_SIZE, s);
}
