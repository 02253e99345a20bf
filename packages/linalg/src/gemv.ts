/**
 * Matrix–vector product `y := alpha·op(A)·x + beta·y`. Memory-bound, so it runs in TypeScript (copying
 * A into WebAssembly memory would cost as much as the product): rows are accumulated in f64 with four
 * independent partial sums, for both dtypes.
 */
import { CalderaError, type Matrix, type Tensor } from '@caldera/core';
import {
  assertFiniteMatrix,
  assertFiniteScalar,
  assertMatrix,
  assertSameDType,
  assertVector,
  fmtShape,
} from './check.js';

/** A 1-D f32 or f64 vector (any stride). */
export type Vector = Tensor<'f32'> | Tensor<'f64'>;

/** Options of {@link gemv} and {@link gemvInto}. */
export interface GemvOptions {
  /** Use `Aᵀ` instead of `A`. Default `false`. */
  trans?: boolean;
  /** Scale of the product. Default `1`. */
  alpha?: number;
  /** Scale of the existing y; with `beta = 0` y is not read. Default `0`. */
  beta?: number;
  /** Reject non-finite entries of A, x (and y when `beta ≠ 0`) with `E_VALUE`. Default `true`. */
  checkFinite?: boolean;
}

/** Options of {@link gemv}: as {@link GemvOptions}, plus the vector added as `beta·y` (not modified). */
export interface GemvNewOptions extends GemvOptions {
  /** Vector of length `m` added as `beta·y`. Default: none. */
  y?: Vector;
}

/**
 * `alpha·op(A)·x + beta·y` as a new contiguous vector (dtype of A). Throws `E_SHAPE` on mismatched
 * lengths, `E_DTYPE` on mixed dtypes, `E_VALUE` on non-finite input.
 */
export function gemv(a: Tensor<'f32'>, x: Tensor<'f32'>, options?: GemvNewOptions): Tensor<'f32'>;
export function gemv(a: Tensor<'f64'>, x: Tensor<'f64'>, options?: GemvNewOptions): Tensor<'f64'>;
export function gemv(a: Matrix, x: Vector, options?: GemvNewOptions): Vector;
export function gemv(a: Matrix, x: Vector, options: GemvNewOptions = {}): Vector {
  assertMatrix(a, 'gemv', 'a');
  const m = options.trans ? a.shape[1]! : a.shape[0]!;
  const data = a.dtype === 'f32' ? new Float32Array(m) : new Float64Array(m);
  const out = { dtype: a.dtype, shape: [m], strides: [1], offset: 0, data } as Vector;
  const beta = options.beta ?? 0;
  if (options.y !== undefined && beta !== 0) {
    assertVector(options.y, 'gemv', 'y');
    // checked here: y is copied into an array of a's dtype before gemvInto could see it (an f64 y was rounded unsaid)
    assertSameDType('gemv', ['a', a], ['y', options.y]);
    if (options.y.shape[0] !== m) {
      throw new CalderaError('E_SHAPE', `gemv: y has shape ${fmtShape(options.y.shape)}, expected [${m}]`);
    }
    for (let i = 0; i < m; i++) data[i] = options.y.data[options.y.offset + i * options.y.strides[0]!]!;
    gemvInto(out, a, x, options);
  } else {
    gemvInto(out, a, x, { ...options, beta: 0 });
  }
  return out;
}

/** In place: `y := alpha·op(A)·x + beta·y` (y any strided vector, not overlapping A or x). */
export function gemvInto(y: Vector, a: Matrix, x: Vector, options: GemvOptions = {}): void {
  const fn = 'gemv';
  assertMatrix(a, fn, 'a');
  assertVector(x, fn, 'x');
  assertVector(y, fn, 'y');
  assertSameDType(fn, ['a', a], ['x', x], ['y', y]);
  const trans = options.trans ?? false;
  const alpha = options.alpha ?? 1;
  const beta = options.beta ?? 0;
  assertFiniteScalar(alpha, fn, 'alpha');
  assertFiniteScalar(beta, fn, 'beta');
  const m = trans ? a.shape[1]! : a.shape[0]!;
  const k = trans ? a.shape[0]! : a.shape[1]!;
  if (x.shape[0] !== k || y.shape[0] !== m) {
    throw new CalderaError(
      'E_SHAPE',
      `${fn}: op(a) is [${m}, ${k}] (a ${fmtShape(a.shape)}${trans ? 'ᵀ' : ''}), x ${fmtShape(x.shape)}, ` +
        `y ${fmtShape(y.shape)}`,
    );
  }
  if (options.checkFinite ?? true) {
    assertFiniteMatrix(a, fn, 'a');
    assertFiniteMatrix(x, fn, 'x');
    if (beta !== 0) assertFiniteMatrix(y, fn, 'y');
  }
  const [ri, rp] = trans ? [a.strides[1]!, a.strides[0]!] : [a.strides[0]!, a.strides[1]!];
  const ad = a.data;
  const xs = x.strides[0]!;
  const xd = x.data;
  const ys = y.strides[0]!;
  const yd = y.data;
  if (rp === 1 || Math.abs(rp) <= Math.abs(ri)) {
    // rows of op(A) are (nearly) contiguous: one dot product per output
    for (let i = 0; i < m; i++) {
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      let pa = a.offset + i * ri;
      let px = x.offset;
      let p = 0;
      for (; p + 4 <= k; p += 4, pa += 4 * rp, px += 4 * xs) {
        s0 += ad[pa]! * xd[px]!;
        s1 += ad[pa + rp]! * xd[px + xs]!;
        s2 += ad[pa + 2 * rp]! * xd[px + 2 * xs]!;
        s3 += ad[pa + 3 * rp]! * xd[px + 3 * xs]!;
      }
      for (; p < k; p++, pa += rp, px += xs) s0 += ad[pa]! * xd[px]!;
      const q = y.offset + i * ys;
      const v = alpha * (s0 + s1 + (s2 + s3));
      yd[q] = beta === 0 ? v : v + beta * yd[q]!;
    }
    return;
  }
  // columns of op(A) are contiguous: accumulate axpy updates in an f64 buffer
  const acc = new Float64Array(m);
  for (let p = 0; p < k; p++) {
    const xp = xd[x.offset + p * xs]!;
    let pa = a.offset + p * rp;
    for (let i = 0; i < m; i++, pa += ri) acc[i]! += ad[pa]! * xp;
  }
  for (let i = 0; i < m; i++) {
    const q = y.offset + i * ys;
    const v = alpha * acc[i]!;
    yd[q] = beta === 0 ? v : v + beta * yd[q]!;
  }
}
