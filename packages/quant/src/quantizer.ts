/**
 * The `Quantizer` interface shared by every codec (uniform, NormalFloat, E8P12 and its RVQ variants), the JSON
 * descriptors that identify them, and the grouping rule of the scalar codecs.
 */
import { assertObject, CalderaError, contiguous, describeValue, toF32, type Tensor } from '@caldera/core';
import type { CodePlane } from './rounder.js';

/** Which values share one scale (scalar codecs). */
export type Granularity = 'tensor' | 'channel' | 'group';

/** Serialisable identity of a quantizer; `quantizerFromDescriptor` rebuilds it. */
export type QuantizerDescriptor =
  | {
      kind: 'uniform';
      bits: number;
      symmetric: boolean;
      granularity: Granularity;
      /** Values per group along the last axis (only for `granularity: 'group'`). */
      groupSize: number;
      rounding: 'nearest' | 'stochastic';
      /** Seed of the stochastic rounding. */
      seed: number;
    }
  | { kind: 'nf'; bits: 2 | 3 | 4; granularity: Granularity; groupSize: number }
  | {
      kind: 'e8p12' | 'e8p12-rvq3' | 'e8p12-rvq4';
      /** Input RMS the values are scaled to before rounding (1.03, 0.98 and 1.0 by default). */
      inputScale: number;
    };

/** Scale parameters of a quantized tensor (one entry per scale group). */
export interface QuantParams {
  /** Scale per group (f32: 32 bits each in `bitsPerWeight`). */
  scales: Float32Array;
  /** Offset per group for asymmetric uniform codecs (f32), absent otherwise. */
  zeros?: Float32Array;
}

/** Output of {@link Quantizer.quantize}: unpacked codes (see `packBits` for the stored layout) and parameters. */
export interface QuantizedTensor {
  descriptor: QuantizerDescriptor;
  shape: number[];
  /**
   * Scalar codecs: one `Uint8Array` with one code per value (row-major). Lattice codecs: one plane per stage,
   * one code per 8 consecutive values (`u16`, or `u8` for the E81B stage of RVQ3).
   */
  codes: CodePlane[];
  params: QuantParams;
}

/** A codec for whole tensors. Pure: `quantize` does not modify its input. */
export interface Quantizer {
  readonly descriptor: QuantizerDescriptor;
  /** Quantize a tensor of any shape (f32/f64/f16/bf16 input; lattice codecs need a multiple of 8 values). */
  quantize(t: Tensor): QuantizedTensor;
  /** Reconstruct an f32 tensor of the original shape. */
  dequantize(q: QuantizedTensor): Tensor<'f32'>;
  /** Exact storage cost of a tensor of this shape, in bits per value, codes plus scales and offsets. */
  bitsPerWeight(shape: readonly number[]): number;
}

/**
 * The number of values of a tensor of this shape (1 for a scalar's `[]`); `E_VALUE` naming `what` when `shape` is not
 * an array (`null`), `E_SHAPE` when a dimension is not a non-negative integer (`-1`, `2.5`, `NaN`).
 */
export function valueCount(shape: readonly number[], what: string, name = 'shape'): number {
  assertObject(shape, what, name, 'an array of dimensions');
  if (!Array.isArray(shape)) {
    throw new CalderaError('E_VALUE', `${what}: ${name} must be an array of dimensions, got an object`);
  }
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) {
      throw new CalderaError(
        'E_SHAPE',
        `${what}: ${name} [${shape.join(', ')}] has a dimension ${String(d)} that is not a non-negative integer`,
      );
    }
    n *= d;
  }
  return n;
}

/**
 * `valueCount` of a shape whose storage cost is asked ({@link Quantizer.bitsPerWeight}): `E_SHAPE` also for a shape
 * of no values (`[0]`), which has no cost per value.
 */
export function costedValueCount(shape: readonly number[], what: string): number {
  const n = valueCount(shape, what);
  if (n === 0) {
    throw new CalderaError(
      'E_SHAPE',
      `${what}: shape [${shape.join(', ')}] has no values, so no bits per value`,
    );
  }
  return n;
}

/** Row count and row length used for grouping: rows = first axis (1 for scalars/1-D), cols = the rest. */
export function rowsCols(shape: readonly number[]): [number, number] {
  if (shape.length <= 1) return [1, shape[0] ?? 1];
  const rows = shape[0]!;
  let cols = 1;
  for (let i = 1; i < shape.length; i++) cols *= shape[i]!;
  return [rows, cols];
}

/**
 * The scale groups of a row-major tensor: `'tensor'` one group; `'channel'` one per row (first axis);
 * `'group'` runs of `groupSize` consecutive values inside each row (the last run of a row may be shorter).
 * Calls `f(start, length, index)` per group in order; returns the group count.
 */
export function forEachGroup(
  shape: readonly number[],
  granularity: Granularity,
  groupSize: number,
  f: (start: number, length: number, index: number) => void,
): number {
  const [rows, cols] = rowsCols(shape);
  if (granularity === 'tensor') {
    f(0, rows * cols, 0);
    return 1;
  }
  if (granularity === 'channel') {
    for (let r = 0; r < rows; r++) f(r * cols, cols, r);
    return rows;
  }
  let k = 0;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c += groupSize) f(r * cols + c, Math.min(groupSize, cols - c), k++);
  }
  return k;
}

/** Number of scale groups for a shape. */
export function groupCount(shape: readonly number[], granularity: Granularity, groupSize: number): number {
  const [rows, cols] = rowsCols(shape);
  if (granularity === 'tensor') return 1;
  if (granularity === 'channel') return rows;
  return rows * Math.ceil(cols / groupSize);
}

/** Validate the common scalar options; throws `E_VALUE` naming the bad option. */
export function checkScalarOptions(
  what: string,
  bits: number,
  granularity: Granularity,
  groupSize: number,
): void {
  if (granularity !== 'tensor' && granularity !== 'channel' && granularity !== 'group') {
    throw new CalderaError(
      'E_VALUE',
      `${what}: granularity must be 'tensor', 'channel' or 'group', got ${String(granularity)}`,
    );
  }
  // checked whatever the granularity: a groupSize of 0 given with 'tensor' is a mistake too (default 64)
  if (!Number.isInteger(groupSize) || groupSize < 1) {
    throw new CalderaError('E_VALUE', `${what}: groupSize must be a positive integer, got ${groupSize}`);
  }
  void bits;
}

/**
 * Contiguous f32 values of a tensor, rejecting non-finite entries with `E_VALUE` naming the index (and a `t` that is
 * not an object, e.g. `null`, with `E_VALUE` naming `what`).
 */
export function finiteValues(t: Tensor, what: string): Float32Array {
  assertObject(t, what, 't', 'a tensor');
  const c = contiguous(toF32(t));
  const d = c.data; // contiguous(): offset 0, exactly the tensor's values
  for (let i = 0; i < d.length; i++) {
    const v = d[i]!;
    if (v - v !== 0) {
      throw new CalderaError(
        'E_VALUE',
        `${what}: tensor [${t.shape.join(', ')}] has a non-finite value ${v} at flat index ${i}`,
      );
    }
  }
  return d;
}

/**
 * True when `a` has exactly `d`'s fields with the same values, in any order (a descriptor read back from JSON written
 * with sorted keys is the same codec; descriptors hold only strings, numbers and booleans).
 */
function sameDescriptor(a: unknown, d: QuantizerDescriptor): boolean {
  if (a === null || typeof a !== 'object') return false;
  const want = Object.entries(d);
  return (
    Object.keys(a).length === want.length &&
    want.every(([k, v]) => Object.hasOwn(a, k) && (a as Record<string, unknown>)[k] === v)
  );
}

/**
 * Check that a quantized tensor belongs to this codec: `E_VALUE` naming `what` for another codec's, or for a `q` that
 * is not an object (`null`); then that its `shape` is an array of non-negative integers (`E_VALUE` for a `shape` that
 * is not an array, `E_SHAPE` for a bad dimension; see {@link valueCount}).
 */
export function checkDescriptor(q: QuantizedTensor, d: QuantizerDescriptor, what: string): void {
  assertObject(q, what, 'q', 'a QuantizedTensor');
  if (!sameDescriptor(q.descriptor, d)) {
    throw new CalderaError(
      'E_VALUE',
      `${what}: quantized tensor was made by ${JSON.stringify(q.descriptor)}, not ${JSON.stringify(d)}`,
    );
  }
  valueCount(q.shape, what, 'q.shape');
}

/**
 * Throw `E_SHAPE` unless `q` has `planes` code planes of one code per `valuesPerCode` values of its shape each (1 for
 * the scalar codecs, 8 for the lattice ones) and `groups` scales (and offsets, when `zeros`): a quantized tensor whose
 * parts do not match its shape would dequantize to NaN (a missing `params.zeros` counts as 0 entries). `E_VALUE`
 * when `codes` is not an array, a plane is not a `Uint8Array` or `Uint16Array`, `params` or `params.scales` (or a
 * given `params.zeros`) is not an object, or a scale or offset is not finite. Returns the number of values of the shape.
 */
export function checkQuantizedLengths(
  q: QuantizedTensor,
  planes: number,
  valuesPerCode: number,
  groups: number,
  zeros: boolean,
  what: string,
): number {
  const count = valueCount(q.shape, what, 'q.shape');
  const codesPerPlane = count / valuesPerCode;
  const bad = (part: string, have: number, need: number): never => {
    throw new CalderaError(
      'E_SHAPE',
      `${what}: ${part} has ${have} entries, shape [${q.shape.join(', ')}] needs ${need}`,
    );
  };
  if (!Array.isArray(q.codes)) {
    throw new CalderaError(
      'E_VALUE',
      `${what}: q.codes must be an array of code planes, got ${describeValue(q.codes)}`,
    );
  }
  if (q.codes.length < planes) bad('codes', q.codes.length, planes);
  for (let p = 0; p < planes; p++) {
    const c: unknown = q.codes[p];
    if (!(c instanceof Uint8Array || c instanceof Uint16Array)) {
      throw new CalderaError(
        'E_VALUE',
        `${what}: q.codes[${p}] must be a Uint8Array or Uint16Array, got ${describeValue(c)}`,
      );
    }
    if (c.length !== codesPerPlane) bad(`code plane ${p}`, c.length, codesPerPlane);
  }
  assertObject(q.params, what, 'q.params', 'an object { scales, zeros? }');
  const finite = (name: 'scales' | 'zeros', a: ArrayLike<number> | undefined): void => {
    if (name === 'zeros' && a === undefined) bad('params.zeros', 0, groups); // an asymmetric q without its offsets
    assertObject(a, what, `q.params.${name}`, 'a Float32Array');
    if (a.length !== groups) bad(`params.${name}`, a.length, groups);
    for (let g = 0; g < a.length; g++) {
      const v = a[g]!;
      if (v - v !== 0)
        throw new CalderaError('E_VALUE', `${what}: q.params.${name}[${g}] is ${v}, not a finite number`);
    }
  };
  finite('scales', q.params.scales);
  if (zeros) finite('zeros', q.params.zeros);
  return count;
}

/**
 * `E_VALUE` for code `c` at flat index `i` of a scalar codec's code plane, outside `0..max` (a code the codec never
 * writes: it would dequantize to a value off the grid, or to NaN).
 */
export function badCode(what: string, i: number, c: number, max: number): never {
  throw new CalderaError('E_VALUE', `${what}: q.codes[0][${i}] is ${c}, codes must be in 0..${max}`);
}
