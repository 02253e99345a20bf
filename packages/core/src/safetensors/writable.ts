/**
 * The checks of what the safetensors writers are given, shared with `writeCheckpointDir` so that both refuse the same
 * input with the same error before anything is written. Internal: not exported from the package.
 */

import { arrayCtor, DTYPES, typedArrayName } from '../dtype.js';
import { CalderaError, describeValue } from '../errors.js';
import { DTYPE_TO_SAFETENSORS, isSafetensorsDType, type SafetensorsDType } from './dtypes.js';
import type { RawTensorEntry, WritableTensor } from './writer.js';

/** True when `t` is given as raw bytes (its dtype is a safetensors dtype such as `'F32'`). */
export function isRaw(t: WritableTensor): t is RawTensorEntry {
  return isSafetensorsDType(t.dtype);
}

/** `E_VALUE` unless `tensors` is an object of names to tensors; `fn` names the routine in the message. */
export function assertWritableTensors(
  tensors: unknown,
  fn: string,
): asserts tensors is Record<string, WritableTensor> {
  if (tensors === null || typeof tensors !== 'object')
    throw new CalderaError(
      'E_VALUE',
      `${fn}: tensors must be an object of names to tensors, got ${describeValue(tensors)}`,
    );
}

/**
 * The safetensors dtype and the shape that tensor `name` is written with. `E_VALUE` when `t` is not a tensor or raw
 * bytes, `E_DTYPE` when its dtype cannot be written or does not match its data, `E_SHAPE` when its shape is not a list
 * of non-negative integers.
 */
export function writableSignature(
  name: string,
  t: WritableTensor,
): { dtype: SafetensorsDType; shape: number[] } {
  if (t === null || typeof t !== 'object' || !Array.isArray(t.shape) || t.data === undefined)
    throw new CalderaError(
      'E_VALUE',
      `tensor '${name}' must be a tensor (dtype, shape, data) or raw bytes (a safetensors dtype such as 'F32'), ` +
        `got ${describeValue(t)}`,
    );
  // {dtype: 'f32', data: Uint8Array}: raw bytes under a tensor dtype (a TypeError deep inside before)
  // (by its tag, not instanceof: a typed array of another realm, a VM context or a frame, is one too)
  if (!isRaw(t) && DTYPES.includes(t.dtype) && typedArrayName(t.data) !== arrayCtor(t.dtype).name)
    throw new CalderaError(
      'E_DTYPE',
      `tensor '${name}': dtype '${t.dtype}' with ${typedArrayName(t.data) ?? describeValue(t.data)} data (raw bytes take a safetensors ` +
        `dtype: '${DTYPE_TO_SAFETENSORS[t.dtype] ?? t.dtype.toUpperCase()}')`,
    );
  // by DTYPES, not by lookup alone: 'toString' would find Object.prototype's
  const dtype = isRaw(t) ? t.dtype : DTYPES.includes(t.dtype) ? DTYPE_TO_SAFETENSORS[t.dtype] : undefined;
  if (!dtype)
    throw new CalderaError('E_DTYPE', `tensor '${name}': dtype '${String(t.dtype)}' cannot be written`);
  const shape = [...t.shape];
  if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new CalderaError('E_SHAPE', `tensor '${name}': invalid shape [${shape.join(', ')}]`);
  }
  return { dtype, shape };
}

/**
 * `metadata` as the `__metadata__` object of a header: its entries copied into an object without a prototype, so that
 * every key, `__proto__` included, is written; `undefined` when there is none (null too) or it is empty. `E_VALUE`
 * when it is not a plain object (a string, an array, a `Map`) or a value is not a string.
 */
export function metadataEntries(metadata: unknown): Record<string, string> | undefined {
  if (metadata === undefined || metadata === null) return undefined; // null options are none, from JavaScript
  const tag = Object.prototype.toString.call(metadata).slice(8, -1);
  if (typeof metadata !== 'object' || tag !== 'Object')
    throw new CalderaError(
      'E_VALUE',
      `safetensors: metadata must be an object of string keys to string values, got ${
        describeValue(metadata) === 'an object' ? `an object (${tag})` : describeValue(metadata)
      }`,
    );
  const out = Object.create(null) as Record<string, string>;
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== 'string')
      throw new CalderaError('E_VALUE', `safetensors metadata '${k}' must be a string`);
    out[k] = v;
  }
  return Object.keys(out).length > 0 ? out : undefined;
}
