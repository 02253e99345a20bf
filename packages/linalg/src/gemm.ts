/**
 * General matrix multiply: `alpha·op(A)·op(B) + beta·C` for f32 and f64 matrices with any strides, on
 * the WebAssembly SIMD kernels (optionally multi-threaded through a {@link Pool}).
 */
import { assertCallbacks, CalderaError, throwIfAborted, type Matrix, type Tensor } from '@caldera/core';
import {
  assertFiniteMatrix,
  assertFiniteScalar,
  assertMatrix,
  assertSameDType,
  fmtShape,
  newMatrix,
  type FloatDType,
} from './check.js';
import { gemmRefInto } from './gemm-ref.js';
import { defaultExecutor } from './pool/default.js';
import { localExecutor, poolExecutor, type Executor, type Pool } from './pool/pool.js';
import { createEngine } from './wasm/engine.js';
import { panelGemmInto, type KernelProgress } from './wasm/panel-gemm.js';

export type { KernelProgress } from './wasm/panel-gemm.js';

/** Options shared by {@link gemm} and {@link gemmInto}. */
export interface GemmIntoOptions {
  /** Use `Aᵀ` instead of `A`. Default `false`. */
  transA?: boolean;
  /** Use `Bᵀ` instead of `B`. Default `false`. */
  transB?: boolean;
  /** Scale of the product. Default `1`. */
  alpha?: number;
  /** Scale of the existing C; with `beta = 0` C is not read (NaN in it is overwritten). Default `0`. */
  beta?: number;
  /** Worker pool from `createPool`; default: single-threaded WebAssembly. */
  pool?: Pool;
  /**
   * Reject non-finite entries of A, B (and C when `beta ≠ 0`) with `E_VALUE`. Default `true`; blocked
   * algorithms that already validated their input may turn it off for speed.
   */
  checkFinite?: boolean;
  /** Use the plain TypeScript reference kernel (for tests and comparison). Default `false`. */
  reference?: boolean;
  /**
   * `gemmInto` only: compute and write only the upper (`j ≥ i`) or lower (`j ≤ i`) triangle of a square
   * C, leaving the other untouched — about half the work, e.g. for a symmetric update `C −= L·Lᵀ`.
   * Default: the whole of C.
   */
  triangle?: 'upper' | 'lower';
  /** Abort between waves of about 10⁹ multiply-adds (`E_ABORTED`; the output is then partly written). */
  signal?: AbortSignal;
  /** Progress in multiply-adds, reported after each wave. */
  onProgress?: (p: KernelProgress) => void;
}

/** Options of {@link gemm}. */
export interface GemmOptions extends Omit<GemmIntoOptions, 'triangle'> {
  /** Matrix added as `beta·C` (not modified); shape `[m, n]`. Default: none (as if zero). */
  c?: Matrix;
}

/** Below this many multiply-adds the TypeScript kernel is faster than packing for WebAssembly. */
const SMALL_FLOPS = 4096;

/**
 * `alpha·op(A)·op(B) + beta·C` as a new contiguous matrix of the operands' dtype.
 * `op(A)` is `m × k`, `op(B)` is `k × n`. Throws `E_SHAPE` when inner dimensions (or C) do not match,
 * `E_DTYPE` when dtypes differ, `E_VALUE` on non-finite input.
 * @example
 * const c = gemm(a, b, { transB: true }); // A·Bᵀ
 */
export function gemm(a: Tensor<'f32'>, b: Tensor<'f32'>, options?: GemmOptions): Tensor<'f32'>;
export function gemm(a: Tensor<'f64'>, b: Tensor<'f64'>, options?: GemmOptions): Tensor<'f64'>;
export function gemm(a: Matrix, b: Matrix, options?: GemmOptions): Matrix;
export function gemm(a: Matrix, b: Matrix, options: GemmOptions = {}): Matrix {
  assertMatrix(a, 'gemm', 'a');
  assertMatrix(b, 'gemm', 'b');
  const rows = options.transA ? a.shape[1]! : a.shape[0]!;
  const cols = options.transB ? b.shape[0]! : b.shape[1]!;
  const out = newMatrix(a.dtype as FloatDType, rows, cols) as Matrix;
  const beta = options.beta ?? 0;
  if (options.c !== undefined && beta !== 0) {
    const c = options.c;
    assertMatrix(c, 'gemm', 'c');
    if (c.shape[0] !== rows || c.shape[1] !== cols) {
      throw new CalderaError(
        'E_SHAPE',
        `gemm: c has shape ${fmtShape(c.shape)}, expected [${rows}, ${cols}]`,
      );
    }
    assertSameDType('gemm', ['a', a], ['c', c]);
    const [s0, s1] = c.strides as [number, number];
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) out.data[i * cols + j] = c.data[c.offset + i * s0 + j * s1]!;
    }
    gemmIntoImpl(out, a, b, { ...options, triangle: undefined }, beta, 'gemm');
  } else {
    gemmIntoImpl(out, a, b, { ...options, triangle: undefined }, 0, 'gemm');
  }
  return out;
}

/**
 * In place: `c := alpha·op(A)·op(B) + beta·c`, where `c` may be any strided view (e.g. a block of a
 * larger matrix). `c` must not overlap `a` or `b`. Same errors as {@link gemm}.
 */
export function gemmInto(c: Matrix, a: Matrix, b: Matrix, options: GemmIntoOptions = {}): void {
  assertMatrix(c, 'gemmInto', 'c');
  gemmIntoImpl(c, a, b, options, options.beta ?? 0, 'gemmInto');
}

function gemmIntoImpl(c: Matrix, a: Matrix, b: Matrix, o: GemmIntoOptions, beta: number, fn: string): void {
  assertCallbacks(o, fn, ['onProgress']);
  assertMatrix(a, fn, 'a');
  assertMatrix(b, fn, 'b');
  assertSameDType(fn, ['a', a], ['b', b], ['c', c]);
  const transA = o.transA ?? false;
  const transB = o.transB ?? false;
  const alpha = o.alpha ?? 1;
  assertFiniteScalar(alpha, fn, 'alpha');
  assertFiniteScalar(beta, fn, 'beta');
  const m = transA ? a.shape[1]! : a.shape[0]!;
  const k = transA ? a.shape[0]! : a.shape[1]!;
  const kb = transB ? b.shape[1]! : b.shape[0]!;
  const n = transB ? b.shape[0]! : b.shape[1]!;
  if (k !== kb) {
    throw new CalderaError(
      'E_SHAPE',
      `${fn}: inner dimensions differ: op(a) is [${m}, ${k}] (a ${fmtShape(a.shape)}${transA ? 'ᵀ' : ''}), ` +
        `op(b) is [${kb}, ${n}] (b ${fmtShape(b.shape)}${transB ? 'ᵀ' : ''})`,
    );
  }
  if (c.shape[0] !== m || c.shape[1] !== n) {
    throw new CalderaError('E_SHAPE', `${fn}: c has shape ${fmtShape(c.shape)}, expected [${m}, ${n}]`);
  }
  const triangle = o.triangle;
  if (triangle !== undefined && triangle !== 'upper' && triangle !== 'lower') {
    throw new CalderaError('E_VALUE', `${fn}: triangle must be 'upper' or 'lower', got ${String(triangle)}`);
  }
  if (triangle !== undefined && m !== n) {
    throw new CalderaError(
      'E_SHAPE',
      `${fn}: triangle '${triangle}' needs a square c, got ${fmtShape(c.shape)}`,
    );
  }
  const check = o.checkFinite ?? true;
  if (check && beta !== 0) assertFiniteMatrix(c, fn, 'c');
  const exec = resolveExecutor(o.pool);
  // (alpha = 0 needs no product: that path, too, checks A and B here)
  const wasm = !o.reference && exec !== null && alpha !== 0 && m * n * k >= SMALL_FLOPS;
  // The wasm path checks A and B on their packed copies (fast); other paths scan them here.
  if (check && !wasm) {
    assertFiniteMatrix(a, fn, 'a');
    assertFiniteMatrix(b, fn, 'b');
  }
  throwIfAborted(o.signal, fn);
  if (m === 0 || n === 0) return;
  if (k === 0 || alpha === 0) {
    scaleInPlace(c, beta, triangle);
    return;
  }
  if (!wasm) {
    gemmRefInto(c, a, b, transA, transB, alpha, beta, triangle);
    return;
  }
  const onNonFinite = check
    ? (operand: 'a' | 'b'): never => {
        assertFiniteMatrix(operand === 'a' ? a : b, fn, operand); // throws E_VALUE naming the index
        throw new CalderaError('E_VALUE', `${fn}: ${operand} has a non-finite value`);
      }
    : undefined;
  const long = { signal: o.signal, onProgress: o.onProgress };
  if (panelGemmInto(exec!, { c, a, b, transA, transB, alpha, beta, onNonFinite, triangle, ...long }, fn))
    return;
  // the host refused the scratch memory (a browser's cap): the TypeScript kernel
  if (check) {
    assertFiniteMatrix(a, fn, 'a');
    assertFiniteMatrix(b, fn, 'b');
  }
  gemmRefInto(c, a, b, transA, transB, alpha, beta, triangle);
}

/**
 * The executor for an optional pool (the default single-threaded one without), `null` without wasm.
 * A call made while that executor is busy (from an `onProgress` callback) gets a fresh single-threaded
 * one, so it cannot overwrite the scratch memory of the call in progress.
 */
export function resolveExecutor(pool: Pool | undefined): Executor | null {
  const exec = pool === undefined ? defaultExecutor() : poolExecutor(pool);
  if (exec?.busy) {
    const engine = createEngine(false);
    return engine ? localExecutor(engine) : null;
  }
  return exec;
}

/** `c := beta·c` (`beta = 0` writes zeros without reading), optionally on one triangle only. */
export function scaleInPlace(c: Matrix, beta: number, triangle?: 'upper' | 'lower'): void {
  const [m, n] = c.shape as [number, number];
  const [s0, s1] = c.strides as [number, number];
  for (let i = 0; i < m; i++) {
    const j0 = triangle === 'upper' ? i : 0;
    const j1 = triangle === 'lower' ? Math.min(n, i + 1) : n;
    for (let j = j0, d = c.offset + i * s0 + j0 * s1; j < j1; j++, d += s1) {
      c.data[d] = beta === 0 ? 0 : beta * c.data[d]!;
    }
  }
}
