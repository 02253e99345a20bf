/**
 * Cholesky factorisation `A = L·Lᵀ` of a symmetric positive-definite matrix: blocked, right-looking, with the
 * trailing update `A₂₂ −= L₂₁·L₂₁ᵀ` (the O(n³/3) bulk) on the WebAssembly gemm kernels.
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
  /** Panel width, a positive integer (else `E_VALUE`). Default 128. */
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
    const work = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j <= i; j++) work[i * n + j] = src.data[i * n + j]!;
      work[i * n + i]! += delta;
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
 * Factor the lower triangle of `w` (n×n row-major) in place; the strict upper triangle is zeroed.
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
  for (let k = 0; k < n; k += nb) {
    throwIfAborted(signal, what);
    const b = Math.min(nb, n - k);
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
    const rest = n - k - b;
    if (rest === 0) break;
    // 2. panel: L21 = A21 · L11^{-T}, as a blocked triangular solve: for each group of SUB columns, first
    //    subtract the contribution of the columns already solved (gemm), then forward substitution inside
    //    the group (same rounding behaviour as plain substitution, 1/SUB of the scalar work)
    for (let jb = k; jb < k + b; jb += SUB) {
      if (jb > k) throwIfAborted(signal, what);
      const bw = Math.min(SUB, k + b - jb);
      if (jb > k) {
        const view = (r0: number, rows: number, c0: number, cols: number): Tensor<'f64'> => ({
          dtype: 'f64',
          shape: [rows, cols],
          strides: [n, 1],
          offset: r0 * n + c0,
          data: w,
        });
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
    // 3. trailing update of the lower triangle: A22 -= L21·L21ᵀ
    const l21: Tensor<'f64'> = {
      dtype: 'f64',
      shape: [rest, b],
      strides: [n, 1],
      offset: (k + b) * n + k,
      data: w,
    };
    const a22: Tensor<'f64'> = {
      dtype: 'f64',
      shape: [rest, rest],
      strides: [n, 1],
      offset: (k + b) * n + k + b,
      data: w,
    };
    // the bulk (about 10⁹ multiply-adds for the first panels at n = 4096): checked between the kernel's waves too
    abortingAs(what, () =>
      gemmInto(a22, l21, l21, {
        transB: true,
        alpha: -1,
        beta: 1,
        triangle: 'lower',
        checkFinite: false,
        ...(pool ? { pool } : {}),
        ...(signal ? { signal } : {}),
      }),
    );
  }
  for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) w[i * n + j] = 0;
  return -1;
}
