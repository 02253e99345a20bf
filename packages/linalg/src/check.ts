/**
 * Shared input validation for the linear-algebra routines: every public routine checks its operands
 * through these helpers so that errors are uniform (`CalderaError` with a stable code and a message
 * naming the routine, the operand and its shape).
 */
import { CalderaError, ndarrayHint, type Matrix, type Tensor } from '@caldera/core';

/** Floating dtypes accepted by the linear-algebra routines. */
export type FloatDType = 'f32' | 'f64';

/** Format a shape for error messages, e.g. `[3, 4]`. */
export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

/**
 * Throw unless `t` is a 2-D `f32`/`f64` tensor with integer, in-range strides and offset: the operand check every
 * routine of this package runs, for callers that take matrices of their own (quant's `ldlq` checks W and H with it).
 * Errors are `CalderaError`s whose message names the routine and the operand, e.g. `E_DTYPE: ldlq: H has dtype
 * 'i32', expected 'f32' or 'f64'`: `E_VALUE` when `t` is not a tensor at all (`null`, `undefined`, an object without
 * `shape`, `strides` or `data`), `E_DTYPE` for another dtype, `E_SHAPE` for another rank, invalid shape or strides,
 * or a view that reaches outside `data`. The values are not read (non-finite entries pass).
 * @param t    the value to check
 * @param fn   routine name for the message (e.g. `'gemm'`)
 * @param name operand name for the message (e.g. `'a'`)
 * @example
 * assertMatrix(w, 'myRoutine', 'W'); // w is a Matrix from here on
 */
export function assertMatrix(t: unknown, fn: string, name: string): asserts t is Matrix {
  const v = t as Partial<Tensor> | null;
  if (
    v === null ||
    typeof v !== 'object' ||
    !Array.isArray(v.shape) ||
    !Array.isArray(v.strides) ||
    typeof v.data?.length !== 'number'
  ) {
    throw new CalderaError('E_VALUE', `${fn}: ${name} is not a tensor${ndarrayHint(t)}`);
  }
  const m = v as Tensor;
  if (m.dtype !== 'f32' && m.dtype !== 'f64') {
    throw new CalderaError('E_DTYPE', `${fn}: ${name} has dtype '${m.dtype}', expected 'f32' or 'f64'`);
  }
  if (m.shape.length !== 2) {
    throw new CalderaError('E_SHAPE', `${fn}: ${name} must be 2-D, got shape ${fmtShape(m.shape)}`);
  }
  assertViewInBounds(m, fn, name);
}

/** Throw `E_SHAPE` when any element of the strided view lies outside `t.data`. */
export function assertViewInBounds(t: Tensor, fn: string, name: string): void {
  let lo = t.offset;
  let hi = t.offset;
  let empty = false;
  for (let k = 0; k < t.shape.length; k++) {
    const d = t.shape[k]!;
    const s = t.strides[k];
    if (!Number.isInteger(d) || d < 0 || s === undefined || !Number.isInteger(s)) {
      throw new CalderaError(
        'E_SHAPE',
        `${fn}: ${name} has invalid shape ${fmtShape(t.shape)} / strides ${fmtShape(t.strides)}`,
      );
    }
    if (d === 0) empty = true;
    else if (s >= 0) hi += (d - 1) * s;
    else lo += (d - 1) * s;
  }
  if (empty) return;
  if (!Number.isInteger(t.offset) || lo < 0 || hi >= t.data.length) {
    throw new CalderaError(
      'E_SHAPE',
      `${fn}: ${name} view (shape ${fmtShape(t.shape)}, strides ${fmtShape(t.strides)}, offset ${t.offset}) ` +
        `reaches outside its data of length ${t.data.length}`,
    );
  }
}

/** Throw `E_DTYPE` unless all operands share one dtype. */
export function assertSameDType(fn: string, ...named: [string, Tensor][]): void {
  const first = named[0];
  if (!first) return;
  for (const [name, t] of named) {
    if (t.dtype !== first[1].dtype) {
      throw new CalderaError(
        'E_DTYPE',
        `${fn}: ${name} has dtype '${t.dtype}' but ${first[0]} has '${first[1].dtype}'; operands must match`,
      );
    }
  }
}

/** Throw `E_SHAPE` unless the matrix is square. */
export function assertSquare(t: Tensor, fn: string, name: string): void {
  if (t.shape.length !== 2 || t.shape[0] !== t.shape[1]) {
    throw new CalderaError('E_SHAPE', `${fn}: ${name} must be square, got shape ${fmtShape(t.shape)}`);
  }
}

/**
 * Throw `E_VALUE` if any element of the (possibly strided) 2-D or 1-D view is NaN or ±Inf. The message
 * names the routine, operand and the first offending index.
 */
export function assertFiniteMatrix(t: Tensor, fn: string, name: string): void {
  const d = t.data as ArrayLike<number>;
  if (t.shape.length === 1) {
    const n = t.shape[0]!;
    const s = t.strides[0]!;
    for (let i = 0, p = t.offset; i < n; i++, p += s) {
      if (!Number.isFinite(d[p]!)) {
        throw new CalderaError('E_VALUE', `${fn}: ${name} has a non-finite value (${d[p]}) at [${i}]`);
      }
    }
    return;
  }
  const [m, n] = t.shape as [number, number];
  const [s0, s1] = t.strides as [number, number];
  for (let i = 0; i < m; i++) {
    const row = t.offset + i * s0;
    // Fast path: a finite sum of finite numbers is finite; only scan element-wise when it is not.
    let acc = 0;
    for (let j = 0, p = row; j < n; j++, p += s1) acc += d[p]! * 0;
    if (acc === 0) continue;
    for (let j = 0, p = row; j < n; j++, p += s1) {
      if (!Number.isFinite(d[p]!)) {
        throw new CalderaError('E_VALUE', `${fn}: ${name} has a non-finite value (${d[p]}) at [${i}, ${j}]`);
      }
    }
  }
}

/** Throw `E_VALUE` unless `x` is a finite number. */
export function assertFiniteScalar(x: unknown, fn: string, name: string): asserts x is number {
  if (typeof x !== 'number' || !Number.isFinite(x)) {
    throw new CalderaError('E_VALUE', `${fn}: ${name} must be a finite number, got ${String(x)}`);
  }
}

/** Throw `E_VALUE` unless `x` is an integer ≥ `min` (a count, a size or a number of iterations). */
export function assertCount(x: unknown, min: number, fn: string, name: string): asserts x is number {
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < min) {
    throw new CalderaError('E_VALUE', `${fn}: ${name} must be an integer ≥ ${min}, got ${String(x)}`);
  }
}

/** A new zero-filled contiguous matrix of the given dtype. */
export function newMatrix<D extends FloatDType>(dtype: D, m: number, n: number): Tensor<D> {
  const data = (dtype === 'f32' ? new Float32Array(m * n) : new Float64Array(m * n)) as Tensor<D>['data'];
  return { dtype, shape: [m, n], strides: [n, 1], offset: 0, data };
}

/** Throw unless `t` is a 1-D `f32`/`f64` tensor whose strided view lies inside its data. */
export function assertVector(t: Tensor, fn: string, name: string): void {
  if (t === null || typeof t !== 'object' || !Array.isArray(t.shape)) {
    throw new CalderaError('E_VALUE', `${fn}: ${name} is not a tensor${ndarrayHint(t)}`);
  }
  if (t.dtype !== 'f32' && t.dtype !== 'f64') {
    throw new CalderaError('E_DTYPE', `${fn}: ${name} has dtype '${t.dtype}', expected 'f32' or 'f64'`);
  }
  if (t.shape.length !== 1) {
    throw new CalderaError('E_SHAPE', `${fn}: ${name} must be 1-D, got shape ${fmtShape(t.shape)}`);
  }
  assertViewInBounds(t, fn, name);
}
