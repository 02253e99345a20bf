/**
 * Cholesky factorisation `A = L·Lᵀ` of a symmetric positive-definite matrix: blocked, right-looking, with the
 * trailing update `A₂₂ −= L₂₁·L₂₁ᵀ` (the O(n³/3) bulk) on the WebAssembly gemm kernels, once per group of panels.
 */
import { CalderaError, throwIfAborted, toF64, type Matrix, type Tensor } from '@caldera/core';
import { abortingAs } from './abort.js';
import { assertCount, assertFiniteMatrix, assertMatrix, assertSquare } from './check.js';
import { gemmInto } from './gemm.js';
import type { Pool } from './pool/pool.js';

/** Options of {@link cholesky}. */
export interface CholeskyOptions {
  /**
   * When the matrix is not positive definite: `false` (default) throws `E_NOT_PD`; `true` retries with
   * `A + δI`, δ starting at 1e-10·|mean(diag A)| (1e-10 where that mean is 0) and growing 10× per try (at most 12
   * tries); a number uses that starting δ (positive and finite, else `E_VALUE`). The δ used is reported in the result.
   */
  jitter?: boolean | number;
  /** Worker pool for the trailing updates. */
  pool?: Pool;
  /**
   * Panel width, a positive integer (else `E_VALUE`). Default 128 (the f64 kernel's k-block; other widths change the
   * factor's round-off: the trailing update is made once per 4 panels).
   */
  blockSize?: number;
  /** Abort between panels and between the waves of their trailing updates (`E_ABORTED`). */
  signal?: AbortSignal;
}

/** Result of {@link choleskyWithInfo}: the factor and the diagonal jitter that was added (0 when none). */
export interface CholeskyResult {
  l: Tensor<'f64'>;
  jitter: number;
}

/**
 * Lower-triangular `L` (f64) with `A = L·Lᵀ`. Only the lower triangle of `a` is used (the check for non-finite
 * values, `E_VALUE`, covers all of it).
 */
export function cholesky(a: Matrix, options: CholeskyOptions = {}): Tensor<'f64'> {
  return choleskyWithInfo(a, options).l;
}

/** {@link cholesky}, also reporting the jitter that was needed. */
export function choleskyWithInfo(a: Matrix, options: CholeskyOptions = {}): CholeskyResult {
  return choleskyImpl(a, options, 'cholesky');
}

/** {@link choleskyWithInfo}, naming `what` when aborted (argument errors still name `cholesky`). @internal */
export function choleskyImpl(a: Matrix, options: CholeskyOptions, what: string): CholeskyResult {
  assertMatrix(a, 'cholesky', 'a');
  assertSquare(a, 'cholesky', 'a');
  assertFiniteMatrix(a, 'cholesky', 'a');
  const n = a.shape[0]!;
  const jitterOpt = options.jitter ?? false;
  if (
    typeof jitterOpt !== 'boolean' &&
    !(typeof jitterOpt === 'number' && jitterOpt > 0 && jitterOpt < Infinity)
  ) {
    throw new CalderaError(
      'E_VALUE',
      `cholesky: jitter must be a boolean or a positive finite number, got ${String(jitterOpt)}`,
    );
  }
  const blockSize = options.blockSize ?? 128;
  assertCount(blockSize, 1, 'cholesky', 'blockSize');
  const signal = options.signal;
  throwIfAborted(signal, what);
  const src = toF64(a);
  let delta = 0;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += src.data[i * n + i]!;
  mean = n > 0 ? Math.abs(mean / n) || 1 : 1;
  for (let attempt = 0; ; attempt++) {
    // every entry written here, the zeros above the diagonal too (the factor's upper triangle, never written again):
    // a fresh array's pages are then all mapped in one pass (mapping a page costs ~10 µs on some virtual machines; the
    // kernels read the upper triangle's pages of the trailing blocks, and a final zeroing wrote them, each a second
    // pass of page faults over 4·n² bytes)
    const work = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      work.set(src.data.subarray(i * n, i * n + i + 1), i * n);
      work[i * n + i]! += delta;
      work.fill(0, i * n + i + 1, (i + 1) * n);
    }
    const failedAt = factorInPlace(work, n, blockSize, options.pool, signal, what);
    if (failedAt < 0)
      return { l: { dtype: 'f64', shape: [n, n], strides: [n, 1], offset: 0, data: work }, jitter: delta };
    if (jitterOpt === false || attempt >= 12) {
      throw new CalderaError(
        'E_NOT_PD',
        `cholesky: matrix [${n}, ${n}] is not positive definite (pivot ${failedAt} ≤ 0${delta ? ` with jitter ${delta}` : ''})`,
        { details: { pivot: failedAt, jitter: delta } },
      );
    }
    delta = delta === 0 ? (typeof jitterOpt === 'number' ? jitterOpt : 1e-10 * mean) : delta * 10;
  }
}

/** Column-group width of the blocked triangular solve in the panel. */
const SUB = 16;

/**
 * Panels per trailing update: the update of the matrix right of a group of this many panels is made once, as one
 * product over all their columns, instead of once per panel. Each panel's columns first receive the updates of the
 * group's earlier panels (a product over the panel's columns only). With panels of the f64 kernel's k-block
 * (`KC_F64`, 128 columns, the default `blockSize`), the kernel applies a product's k-blocks to C one after another,
 * each as `C − acc`: every entry then receives the same sums in the same order as with one update per panel, so on
 * the WebAssembly kernels the factor is the same to the bit (except in the last few rows of some sizes that are not
 * multiples of 8, where an update of fewer than 4096 multiply-adds takes gemm's scalar path with one sum over all its
 * columns, as does every update where WebAssembly SIMD is missing), and the trailing part of the matrix is copied
 * into and out of the kernel's memory a quarter as often (at n = 11008, 86 copies of up to 0.48 GB each way took
 * ~5 s of a 21 s factorisation).
 */
const PANELS_PER_UPDATE = 4;

/**
 * Factor the lower triangle of `w` (n×n row-major) in place; the strict upper triangle must hold zeros (left as is).
 * Returns -1 on success or the index of the first non-positive pivot. `signal` is checked before each panel, every
 * 16 columns inside one, and between the waves of the trailing update.
 */
function factorInPlace(
  w: Float64Array,
  n: number,
  nb: number,
  pool: Pool | undefined,
  signal: AbortSignal | undefined,
  what: string,
): number {
  const view = (r0: number, rows: number, c0: number, cols: number): Tensor<'f64'> => ({
    dtype: 'f64',
    shape: [rows, cols],
    strides: [n, 1],
    offset: r0 * n + c0,
    data: w,
  });
  // C −= A·Bᵀ (or only C's lower triangle), the bulk (about 10⁹ multiply-adds for the first groups at n = 4096):
  // checked between the kernel's waves too
  const subtractProduct = (c: Tensor<'f64'>, a: Tensor<'f64'>, b: Tensor<'f64'>, lower: boolean): void =>
    abortingAs(what, () =>
      gemmInto(c, a, b, {
        transB: true,
        alpha: -1,
        beta: 1,
        checkFinite: false,
        ...(lower ? { triangle: 'lower' as const } : {}),
        ...(pool ? { pool } : {}),
        ...(signal ? { signal } : {}),
      }),
    );
  const group = nb * PANELS_PER_UPDATE;
  for (let g = 0; g < n; g += group) {
    const gEnd = Math.min(n, g + group);
    for (let k = g; k < gEnd; k += nb) {
      throwIfAborted(signal, what);
      const b = Math.min(nb, n - k);
      const rest = n - k - b;
      if (k > g) {
        // the updates of the group's earlier panels (columns g … k − 1) to this panel's columns: its diagonal block
        // (lower triangle) and the rows below it
        subtractProduct(view(k, b, k, b), view(k, b, g, k - g), view(k, b, g, k - g), true);
        if (rest > 0)
          subtractProduct(view(k + b, rest, k, b), view(k + b, rest, g, k - g), view(k, b, g, k - g), false);
      }
      // 1. unblocked factor of the diagonal block
      for (let j = k; j < k + b; j++) {
        if (j > k && ((j - k) & 15) === 0) throwIfAborted(signal, what); // large blockSize: O(b³) here
        let d = w[j * n + j]!;
        for (let p = k; p < j; p++) d -= w[j * n + p]! * w[j * n + p]!;
        if (!(d > 0)) return j;
        const ljj = Math.sqrt(d);
        w[j * n + j] = ljj;
        const inv = 1 / ljj;
        for (let i = j + 1; i < k + b; i++) {
          let s = w[i * n + j]!;
          for (let p = k; p < j; p++) s -= w[i * n + p]! * w[j * n + p]!;
          w[i * n + j] = s * inv;
        }
      }
      if (rest === 0) break;
      // 2. panel: L21 = A21 · L11^{-T}, as a blocked triangular solve: for each group of SUB columns, first
      //    subtract the contribution of the columns already solved (gemm), then forward substitution inside
      //    the group (same rounding behaviour as plain substitution, 1/SUB of the scalar work)
      for (let jb = k; jb < k + b; jb += SUB) {
        if (jb > k) throwIfAborted(signal, what);
        const bw = Math.min(SUB, k + b - jb);
        if (jb > k) {
          gemmInto(view(k + b, rest, jb, bw), view(k + b, rest, k, jb - k), view(jb, bw, k, jb - k), {
            transB: true,
            alpha: -1,
            beta: 1,
            checkFinite: false,
            ...(pool ? { pool } : {}),
          });
        }
        for (let i = k + b; i < n; i++) {
          const row = i * n;
          for (let j = jb; j < jb + bw; j++) {
            let s = w[row + j]!;
            for (let p = jb; p < j; p++) s -= w[row + p]! * w[j * n + p]!;
            w[row + j] = s / w[j * n + j]!;
          }
        }
      }
    }
    // 3. trailing update of the lower triangle right of the group: A22 −= L21·L21ᵀ over the group's columns
    const rest = n - gEnd;
    if (rest > 0) {
      throwIfAborted(signal, what);
      const l21 = view(gEnd, rest, g, gEnd - g);
      subtractProduct(view(gEnd, rest, gEnd, rest), l21, l21, true);
    }
  }
  return -1; // the strict upper triangle: still the zeros the caller wrote (every write above is on or below it)
}
