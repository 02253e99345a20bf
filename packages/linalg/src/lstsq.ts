/**
 * Least squares `min ‖A·X − B‖_F` (minimum-norm `X` when `A` is rank-deficient) and the Moore–Penrose
 * pseudo-inverse, both through the thin SVD with singular values below `rcond·σ_max` treated as zero.
 */
import { CalderaError, throwIfAborted, type Matrix, type Tensor } from '@caldera/core';
import { assertFiniteScalar, assertVector, fmtShape } from './check.js';
import { denseCopy, wrap } from './dense.js';
import { svdBuf } from './svd.js';

/** Options of {@link lstsq} and {@link pinv}. */
export interface LstsqOptions {
  /**
   * Relative cut-off: singular values `≤ rcond·σ_max` count as zero (they define the numerical rank).
   * Default `eps·max(m, n)` with `eps = 2⁻⁵²` (numpy's default).
   */
  rcond?: number;
  /** Abort during the SVD (as `svd`'s `signal`) and while the result is formed (`E_ABORTED`). */
  signal?: AbortSignal;
}

/** Result of {@link lstsq}. */
export interface Lstsq {
  /** Solution, `n × k` (f64), or a length-`n` vector when `b` was a vector. */
  x: Tensor<'f64'>;
  /** Numerical rank of `a`. */
  rank: number;
  /** Singular values of `a`, descending. */
  singularValues: Float64Array;
}

/**
 * Solve `min ‖A·X − B‖` for `a` (`m × n`) and `b` (`m × k` matrix or length-`m` vector), returning the
 * minimum-norm solution (unique when `a` has full column rank). Inputs are not modified; mismatched
 * rows → `E_SHAPE`, non-finite → `E_VALUE`.
 * @example
 * const { x, rank } = lstsq(a, b);
 */
export function lstsq(
  a: Matrix,
  b: Matrix | Tensor<'f64'> | Tensor<'f32'>,
  options: LstsqOptions = {},
): Lstsq {
  const fn = 'lstsq';
  const ad = denseCopy(a, fn, 'a');
  const [m, n] = a.shape as [number, number];
  const isVec = b !== null && typeof b === 'object' && Array.isArray(b.shape) && b.shape.length === 1;
  let bm: Matrix = b;
  if (isVec) {
    assertVector(b, fn, 'b');
    bm = { ...b, shape: [b.shape[0]!, 1], strides: [b.strides[0]!, 1] } as Matrix;
  }
  const bd = denseCopy(bm, fn, 'b');
  const [br, k] = bm.shape as [number, number];
  if (br !== m) {
    throw new CalderaError(
      'E_SHAPE',
      `${fn}: a is ${fmtShape(a.shape)} but b has ${br} rows (shape ${fmtShape(b.shape)})`,
    );
  }
  const signal = options.signal;
  const { u, s, vt } = svdBuf(ad, m, n, signal ? { signal } : {}, fn);
  const r = Math.min(m, n);
  const cut = cutoff(s, m, n, options.rcond, fn);
  let rank = 0;
  while (rank < r && s[rank]! > cut) rank++;
  // X = V_r·Σ_r⁻¹·U_rᵀ·B
  const c = new Float64Array(rank * k); // Σ⁻¹Uᵀ B
  for (let i = 0; i < m; i++) {
    if ((i & 15) === 0) throwIfAborted(signal, fn); // 16 rows: 16·rank·k multiply-adds
    for (let p = 0; p < rank; p++) {
      const uip = u[i * r + p]!;
      if (uip === 0) continue;
      for (let j = 0; j < k; j++) c[p * k + j]! += uip * bd[i * k + j]!;
    }
  }
  for (let p = 0; p < rank; p++) for (let j = 0; j < k; j++) c[p * k + j]! /= s[p]!;
  const x = new Float64Array(n * k);
  for (let p = 0; p < rank; p++) {
    throwIfAborted(signal, fn); // n·k multiply-adds per singular triple
    for (let i = 0; i < n; i++) {
      const v = vt[p * n + i]!;
      if (v === 0) continue;
      for (let j = 0; j < k; j++) x[i * k + j]! += v * c[p * k + j]!;
    }
  }
  const xt: Tensor<'f64'> = isVec
    ? { dtype: 'f64', shape: [n], strides: [1], offset: 0, data: x }
    : wrap(x, n, k);
  return { x: xt, rank, singularValues: s };
}

/**
 * Moore–Penrose pseudo-inverse `A⁺` (`n × m`, f64) of an `m × n` matrix via the SVD, with singular values
 * `≤ rcond·σ_max` dropped (see {@link LstsqOptions}).
 */
export function pinv(a: Matrix, options: LstsqOptions = {}): Tensor<'f64'> {
  const ad = denseCopy(a, 'pinv', 'a');
  const [m, n] = a.shape as [number, number];
  const signal = options.signal;
  const { u, s, vt } = svdBuf(ad, m, n, signal ? { signal } : {}, 'pinv');
  const r = Math.min(m, n);
  const cut = cutoff(s, m, n, options.rcond, 'pinv');
  const out = new Float64Array(n * m);
  // A⁺ = Σ_p v_p·u_pᵀ/σ_p
  for (let p = 0; p < r && s[p]! > cut; p++) {
    throwIfAborted(signal, 'pinv'); // m·n multiply-adds per singular triple
    const inv = 1 / s[p]!;
    const up = new Float64Array(m);
    for (let j = 0; j < m; j++) up[j] = u[j * r + p]! * inv;
    for (let i = 0; i < n; i++) {
      const v = vt[p * n + i]!;
      if (v === 0) continue;
      const row = i * m;
      for (let j = 0; j < m; j++) out[row + j]! += v * up[j]!;
    }
  }
  return wrap(out, n, m);
}

function cutoff(s: Float64Array, m: number, n: number, rcond: number | undefined, fn: string): number {
  const rc = rcond ?? 2 ** -52 * Math.max(m, n);
  assertFiniteScalar(rc, fn, 'rcond');
  return s.length > 0 ? Math.max(rc, 0) * s[0]! : 0;
}
