/**
 * Symmetric rank-k update `C := alpha·XᵀX + beta·C` (the Gram matrix of the rows of X, e.g. a Hessian
 * `H = XᵀX` of calibration activations). Computes the upper triangle on the WebAssembly kernels (about
 * half the work of a general product) and mirrors it (`syrkInto` with `triangle: 'upper'`: not). Can accumulate f32
 * input in f64.
 */
import {
  assertCallbacks,
  CalderaError,
  shownValue,
  throwIfAborted,
  type Matrix,
  type Tensor,
} from '@caldera/core';
import {
  assertFiniteMatrix,
  assertFiniteScalar,
  assertMatrix,
  assertSquare,
  fmtShape,
  newMatrix,
  type FloatDType,
} from './check.js';
import { resolveExecutor, scaleInPlace } from './gemm.js';
import { gemmRefInto } from './gemm-ref.js';
import type { Pool } from './pool/pool.js';
import { panelGemmInto, type KernelProgress } from './wasm/panel-gemm.js';
import { mirrorUpper } from './symmetric.js';

/** Options of {@link syrk} and {@link syrkInto}. */
export interface SyrkOptions {
  /** Scale of XᵀX. Default `1`. */
  alpha?: number;
  /** Worker pool from `createPool`; default: single-threaded WebAssembly. */
  pool?: Pool;
  /** Reject non-finite entries with `E_VALUE`. Default `true`. */
  checkFinite?: boolean;
  /** Use the plain TypeScript reference kernel. Default `false`. */
  reference?: boolean;
  /** Abort between waves of about 10⁹ multiply-adds (`E_ABORTED`; the output is then partly written). */
  signal?: AbortSignal;
  /** Progress in multiply-adds (of the upper triangle), reported after each wave. */
  onProgress?: (p: KernelProgress) => void;
  /**
   * What of `c` is written: `'full'` (default) the whole symmetric matrix, `'upper'` its upper triangle (j ≥ i) only,
   * the strict lower triangle left as it was — for sums whose lower triangle is never read (a Hessian accumulator's:
   * mirroring 11008² f64 values after each batch of 128 rows cost half as much as the batch's product).
   */
  triangle?: 'full' | 'upper';
}

/** Options of {@link syrk}. */
export interface SyrkNewOptions extends Omit<SyrkOptions, 'triangle'> {
  /**
   * Element type of the result: `'f64'` accumulates (and returns) in f64 even for f32 input, as
   * Hessians need. Default: the dtype of X.
   */
  accumulate?: FloatDType;
}

/**
 * `alpha·XᵀX` for `X` of shape `[m, n]`: a new symmetric `n × n` matrix.
 * @example
 * const h = syrk(activations, { accumulate: 'f64', pool }); // f32 [tokens, n] → f64 [n, n]
 */
export function syrk(x: Matrix, options: SyrkNewOptions & { accumulate: 'f64' }): Tensor<'f64'>;
export function syrk(x: Tensor<'f32'>, options?: SyrkNewOptions & { accumulate?: 'f32' }): Tensor<'f32'>;
export function syrk(x: Tensor<'f64'>, options?: SyrkNewOptions & { accumulate?: 'f64' }): Tensor<'f64'>;
export function syrk(x: Matrix, options?: SyrkNewOptions): Matrix;
export function syrk(x: Matrix, options: SyrkNewOptions = {}): Matrix {
  assertMatrix(x, 'syrk', 'x');
  const n = x.shape[1]!;
  // an f16 accumulator was refused as "c has dtype 'f16'", naming an argument the caller never gave
  const acc = options.accumulate;
  if (acc !== undefined && acc !== 'f32' && acc !== 'f64')
    throw new CalderaError('E_VALUE', `syrk: accumulate must be 'f32' or 'f64', got ${shownValue(acc)}`);
  // (said here: syrkInto's message named a `c` that syrk has no argument for)
  if (acc === 'f32' && x.dtype !== 'f32')
    throw new CalderaError(
      'E_DTYPE',
      `syrk: accumulate 'f32' needs an f32 x, got '${x.dtype}' (accumulate in 'f64', or cast x to f32 first)`,
    );
  // a new matrix is returned whole: half of it left zero would read as a symmetric matrix that is not XᵀX
  if ((options as SyrkOptions).triangle !== undefined && (options as SyrkOptions).triangle !== 'full')
    throw new CalderaError(
      'E_VALUE',
      `syrk: triangle ${shownValue((options as SyrkOptions).triangle)} is for syrkInto; syrk returns the whole XᵀX`,
    );
  const c = newMatrix(acc ?? x.dtype, n, n) as Matrix;
  syrkImpl(c, x, options, 0, 'syrk');
  return c;
}

/**
 * In place: `c := alpha·XᵀX + beta·c` for a symmetric `n × n` matrix `c` (only its upper triangle is
 * used, though with `beta ≠ 0` and `checkFinite` a non-finite value anywhere in it is rejected; the whole of it
 * is written, or with `triangle: 'upper'` its upper triangle only). `c` may be f64 while `x` is f32 (accumulation in f64, e.g.
 * `syrkInto(h, xBatch, { beta: 1 })` adds a batch to a Hessian); an f32 `c` needs an f32 `x`.
 */
export function syrkInto(c: Matrix, x: Matrix, options: SyrkOptions & { beta?: number } = {}): void {
  syrkImpl(c, x, options, options.beta ?? 0, 'syrkInto');
}

function syrkImpl(c: Matrix, x: Matrix, o: SyrkOptions, beta: number, fn: string): void {
  assertCallbacks(o, fn, ['onProgress']);
  assertMatrix(c, fn, 'c');
  assertMatrix(x, fn, 'x');
  assertSquare(c, fn, 'c');
  const [m, n] = x.shape as [number, number];
  if (c.shape[0] !== n) {
    throw new CalderaError(
      'E_SHAPE',
      `${fn}: c has shape ${fmtShape(c.shape)}, x ${fmtShape(x.shape)} needs [${n}, ${n}]`,
    );
  }
  if (c.dtype === 'f32' && x.dtype !== 'f32') {
    throw new CalderaError(
      'E_DTYPE',
      `${fn}: an f32 c needs f32 x, got '${x.dtype}' (use an f64 c to accumulate)`,
    );
  }
  const triangle = o.triangle ?? 'full';
  if (triangle !== 'full' && triangle !== 'upper')
    throw new CalderaError(
      'E_VALUE',
      `${fn}: triangle must be 'full' or 'upper', got ${shownValue(triangle)}`,
    );
  const mirror = triangle === 'full';
  const alpha = o.alpha ?? 1;
  assertFiniteScalar(alpha, fn, 'alpha');
  assertFiniteScalar(beta, fn, 'beta');
  const check = o.checkFinite ?? true;
  if (check && beta !== 0) assertFiniteMatrix(c, fn, 'c');
  const exec = resolveExecutor(o.pool);
  const wasm = !o.reference && exec !== null && alpha !== 0 && m * n * n >= 8192; // alpha = 0: no product
  if (check && !wasm) assertFiniteMatrix(x, fn, 'x'); // the wasm path checks the packed copy
  throwIfAborted(o.signal, fn);
  if (n === 0) return;
  if (m === 0 || alpha === 0) {
    // c := beta·c from its upper triangle, mirrored, as on every other path
    scaleInPlace(c, beta, 'upper');
    if (mirror) mirrorUpper(c);
    return;
  }
  if (!wasm) {
    // reference: the upper triangle's products in f64 arithmetic (x may be f32 while c is f64: read values as numbers)
    const xc = x as unknown as Matrix;
    gemmRefInto(c, xc, xc, true, false, alpha, beta, 'upper');
    if (mirror) mirrorUpper(c);
    return;
  }
  const onNonFinite = check
    ? (): never => {
        assertFiniteMatrix(x, fn, 'x'); // throws E_VALUE naming the index
        throw new CalderaError('E_VALUE', `${fn}: x has a non-finite value`);
      }
    : undefined;
  const done = panelGemmInto(
    exec!,
    {
      c,
      a: x,
      b: x,
      transA: true,
      transB: false,
      alpha,
      beta,
      triangle: 'upper',
      onNonFinite,
      signal: o.signal,
      onProgress: o.onProgress,
    },
    fn,
  );
  if (!done) {
    // the host refused the scratch memory (a browser's cap): the reference path
    if (check) assertFiniteMatrix(x, fn, 'x');
    gemmRefInto(c, x as unknown as Matrix, x as unknown as Matrix, true, false, alpha, beta, 'upper');
  }
  if (mirror) mirrorUpper(c);
}
