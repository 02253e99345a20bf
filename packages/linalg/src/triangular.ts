/**
 * Triangular solves `op(A)·X = B` / `X·op(A) = B` and triangular inverse, by forward and back substitution in f64.
 * Large systems are solved in blocks of rows: the substitution runs inside each 64-row diagonal block, and everything
 * the solved rows contribute to the next block is one gemm (WebAssembly SIMD, on a pool's threads when given).
 */
import {
  assertBooleanOptions,
  CalderaError,
  shownValue,
  throwIfAborted,
  type Matrix,
  type Tensor,
} from '@caldera/core';
import { abortingAs } from './abort.js';
import { assertFiniteMatrix, assertMatrix, assertSquare, fmtShape } from './check.js';
import { denseCopy, transposeBuf, wrap } from './dense.js';
import { gemmInto } from './gemm.js';
import type { Pool } from './pool/pool.js';

/** Options of {@link solveTriangular}. */
export interface SolveTriangularOptions {
  /** `A` is lower triangular (only its lower triangle is read). Default `true`; `false`: upper. */
  lower?: boolean;
  /** Use `Aᵀ` instead of `A`. Default `false`. */
  transpose?: boolean;
  /** Assume ones on the diagonal of `A` (the stored diagonal is not read). Default `false`. */
  unitDiagonal?: boolean;
  /** `'left'` (default) solves `op(A)·X = B` (B is n×k); `'right'` solves `X·op(A) = B` (B is k×n). */
  side?: 'left' | 'right';
  /** Worker pool from `createPool` for the blocked solve's products. Default: single-threaded. */
  pool?: Pool;
  /** Checked between the row blocks of a large solve (`E_ABORTED`). */
  signal?: AbortSignal;
}

/**
 * Solve a triangular system; returns `X` (f64, the shape of `b`). `a` must be square `n × n`; a zero (or
 * non-finite result producing) diagonal entry throws `E_VALUE` naming the index; mismatched shapes `E_SHAPE`.
 * Inputs are not modified.
 * @example
 * const x = solveTriangular(l, b, { lower: true }); // L·X = B
 */
export function solveTriangular(a: Matrix, b: Matrix, options: SolveTriangularOptions = {}): Tensor<'f64'> {
  const fn = 'solveTriangular';
  assertBooleanOptions(options, fn, ['lower', 'transpose', 'unitDiagonal']); // a string was taken as true
  const lower = options.lower ?? true;
  const trans = options.transpose ?? false;
  const unit = options.unitDiagonal ?? false;
  const side = options.side ?? 'left';
  // another value ran as 'left'
  if (side !== 'left' && side !== 'right')
    throw new CalderaError('E_VALUE', `${fn}: side must be 'left' or 'right', got ${shownValue(side)}`);
  const ad = readOnlyDense(a, fn, 'a');
  const bd = denseCopy(b, fn, 'b');
  const n = a.shape[0]!;
  const [br, bc] = b.shape as [number, number];
  if ((side === 'left' ? br : bc) !== n) {
    throw new CalderaError(
      'E_SHAPE',
      `${fn}: a is ${fmtShape(a.shape)} but b is ${fmtShape(b.shape)} (side '${side}' needs ${side === 'left' ? 'rows' : 'columns'} = ${n})`,
    );
  }
  const run = { pool: options.pool, signal: options.signal };
  if (side === 'left') {
    solveLeftInPlace(ad, n, bd, bc, lower, trans, unit, fn, run);
    return wrap(bd, br, bc);
  }
  // X·op(A) = B  ⇔  op(A)ᵀ·Xᵀ = Bᵀ
  const bt = transposeBuf(bd, br, bc);
  solveLeftInPlace(ad, n, bt, br, lower, !trans, unit, fn, run);
  return wrap(transposeBuf(bt, bc, br), br, bc);
}

/**
 * A validated (square, finite) matrix as a row-major Float64Array that the caller only reads: the matrix's own buffer
 * when it is already one (no copy of a large factor), else a copy.
 */
function readOnlyDense(a: Matrix, fn: string, name: string): Float64Array {
  assertMatrix(a, fn, name);
  assertSquare(a, fn, name);
  const n = a.shape[0]!;
  const contiguous =
    a.dtype === 'f64' &&
    a.offset === 0 &&
    a.strides[0] === n &&
    a.strides[1] === 1 &&
    a.data.length === n * n;
  if (!contiguous) return denseCopy(a, fn, name, true);
  assertFiniteMatrix(a, fn, name);
  return a.data as Float64Array;
}

/** Inverse of a triangular matrix (f64, same triangle; the other triangle is zero). Singular → `E_VALUE`. */
export function invTriangular(
  a: Matrix,
  options: Pick<SolveTriangularOptions, 'lower' | 'unitDiagonal'> = {},
): Tensor<'f64'> {
  const lower = options.lower ?? true;
  const ad = denseCopy(a, 'invTriangular', 'a', true);
  const n = a.shape[0]!;
  const x = new Float64Array(n * n);
  for (let i = 0; i < n; i++) x[i * n + i] = 1;
  solveLeftInPlace(ad, n, x, n, lower, false, options.unitDiagonal ?? false, 'invTriangular');
  // exact zeros outside the triangle (substitution leaves them at 0 already; enforce for clarity)
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) if (lower ? j > i : j < i) x[i * n + j] = 0;
  return wrap(x, n, n);
}

/** Rows per diagonal block of the blocked substitution. */
const BLOCK = 64;
/** Below this many multiply-adds (n²·k/2) the substitution runs unblocked: a gemm call would not pay off. */
const BLOCKED_MIN_MULADDS = 1 << 22;
/**
 * Fewer right-hand sides than this also run unblocked: each block's gemm packs its slice of A, about as much work as
 * the substitution's n²/2 multiply-adds per right-hand side when there are only a few.
 */
const BLOCKED_MIN_COLUMNS = 16;

/**
 * Overwrite `x` (n×k row-major, holding B) with the solution of `op(A)·X = B`, where `A` (n×n row-major, only read)
 * is lower or upper triangular. A large system goes in blocks of {@link BLOCK} rows, in solving order: first one gemm
 * subtracts what the rows solved so far contribute to the block, `X_I −= op(A)[I, solved]·X_solved`, then substitution
 * inside the block. Rounding differs from plain substitution only in the order of the sums. @internal
 */
export function solveLeftInPlace(
  a: Float64Array,
  n: number,
  x: Float64Array,
  k: number,
  lower: boolean,
  trans: boolean,
  unit: boolean,
  fn: string,
  run: { pool?: Pool | undefined; signal?: AbortSignal | undefined } = {},
): void {
  throwIfAborted(run.signal, fn);
  const effLower = lower !== trans; // op(A) is lower triangular
  if ((n * n * k) / 2 < BLOCKED_MIN_MULADDS || n <= BLOCK || k < BLOCKED_MIN_COLUMNS) {
    // op(A) as a row-major buffer, the whole of it one diagonal block
    substitute(trans ? transposeBuf(a, n, n) : a, n, 0, x, k, effLower, unit, fn);
    return;
  }
  const view = (
    offset: number,
    rows: number,
    cols: number,
    data: Float64Array,
    stride: number,
  ): Tensor<'f64'> => ({
    dtype: 'f64',
    shape: [rows, cols],
    strides: [stride, 1],
    offset,
    data,
  });
  const blk = new Float64Array(BLOCK * BLOCK);
  const pool = run.pool ? { pool: run.pool } : {};
  const signal = run.signal ? { signal: run.signal } : {};
  for (let s = 0; s * BLOCK < n; s++) {
    if (s > 0) throwIfAborted(run.signal, fn);
    const i0 = effLower ? s * BLOCK : Math.max(0, n - (s + 1) * BLOCK);
    const i1 = effLower ? Math.min(n, i0 + BLOCK) : n - s * BLOCK;
    const b = i1 - i0;
    // the solved rows: [0, i0) going down, [i1, n) going up
    const p0 = effLower ? 0 : i1;
    const solved = effLower ? i0 : n - i1;
    if (solved > 0) {
      // op(A)[I, solved] is A[I, solved] (rows of A), or A[solved, I] read transposed
      const opA = trans ? view(p0 * n + i0, solved, b, a, n) : view(i0 * n + p0, b, solved, a, n);
      abortingAs(fn, () =>
        gemmInto(view(i0 * k, b, k, x, k), opA, view(p0 * k, solved, k, x, k), {
          transA: trans,
          alpha: -1,
          beta: 1,
          checkFinite: false, // A and B were checked; every solved row was checked finite
          ...pool,
          ...signal,
        }),
      );
    }
    for (let r = 0; r < b; r++)
      for (let c = 0; c < b; c++)
        blk[r * b + c] = trans ? a[(i0 + c) * n + i0 + r]! : a[(i0 + r) * n + i0 + c]!;
    substitute(blk, b, i0, x, k, effLower, unit, fn);
  }
}

/**
 * Substitution for the rows `[i0, i0 + b)` of `x` (n×k row-major) against the b×b triangular diagonal block `m` of
 * op(A) (row-major, row stride `b`), in solving order; contributions of rows outside the block are already
 * subtracted. Zero pivots and overflowing rows throw `E_VALUE` naming the row of A.
 */
function substitute(
  m: Float64Array,
  b: number,
  i0: number,
  x: Float64Array,
  k: number,
  effLower: boolean,
  unit: boolean,
  fn: string,
): void {
  for (let s = 0; s < b; s++) {
    const i = effLower ? s : b - 1 - s; // index inside the block
    const xi = (i0 + i) * k;
    const q0 = effLower ? 0 : i + 1;
    const q1 = effLower ? i : b;
    for (let q = q0; q < q1; q++) {
      const c = m[i * b + q]!;
      if (c === 0) continue;
      const xq = (i0 + q) * k;
      for (let j = 0; j < k; j++) x[xi + j]! -= c * x[xq + j]!;
    }
    let d = 1;
    if (!unit) {
      d = m[i * b + i]!;
      if (d === 0)
        throw new CalderaError('E_VALUE', `${fn}: a is singular (zero diagonal at [${i0 + i}, ${i0 + i}])`);
    }
    const inv = 1 / d;
    // a subnormal pivot's reciprocal overflows though the quotients may not (1e-300 / 1e-310 = 1e10): divide then
    if (inv === Infinity || inv === -Infinity) for (let j = 0; j < k; j++) x[xi + j]! /= d;
    else if (inv !== 1) for (let j = 0; j < k; j++) x[xi + j]! *= inv;
    assertFiniteRow(x, xi, k, i0 + i, d, fn);
  }
}

/**
 * Throw `E_VALUE` when row `i` of the solution overflowed (a diagonal entry tiny against the right-hand side, e.g.
 * a subnormal pivot): the inputs are finite, so a non-finite result means the system is numerically singular.
 */
function assertFiniteRow(x: Float64Array, xi: number, k: number, i: number, d: number, fn: string): void {
  let acc = 0;
  for (let j = 0; j < k; j++) acc += x[xi + j]! * 0; // NaN iff some entry is non-finite
  if (acc === 0) return;
  throw new CalderaError(
    'E_VALUE',
    `${fn}: a is numerically singular: the solution overflows at row ${i} (diagonal [${i}, ${i}] = ${d})`,
  );
}
