/**
 * Triangular solves `op(A)·X = B` / `X·op(A) = B` and triangular inverse, by row-oriented forward and back
 * substitution in f64 (rows are contiguous, so the inner loops stream memory).
 */
import { CalderaError, type Matrix, type Tensor } from '@caldera/core';
import { fmtShape } from './check.js';
import { denseCopy, transposeBuf, wrap } from './dense.js';

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
  const lower = options.lower ?? true;
  const trans = options.transpose ?? false;
  const unit = options.unitDiagonal ?? false;
  const side = options.side ?? 'left';
  const ad = denseCopy(a, fn, 'a', true);
  const bd = denseCopy(b, fn, 'b');
  const n = a.shape[0]!;
  const [br, bc] = b.shape as [number, number];
  if ((side === 'left' ? br : bc) !== n) {
    throw new CalderaError(
      'E_SHAPE',
      `${fn}: a is ${fmtShape(a.shape)} but b is ${fmtShape(b.shape)} (side '${side}' needs ${side === 'left' ? 'rows' : 'columns'} = ${n})`,
    );
  }
  if (side === 'left') {
    solveLeftInPlace(ad, n, bd, bc, lower, trans, unit, fn);
    return wrap(bd, br, bc);
  }
  // X·op(A) = B  ⇔  op(A)ᵀ·Xᵀ = Bᵀ
  const bt = transposeBuf(bd, br, bc);
  solveLeftInPlace(ad, n, bt, br, lower, !trans, unit, fn);
  return wrap(transposeBuf(bt, bc, br), br, bc);
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

/**
 * Overwrite `x` (n×k row-major, holding B) with the solution of `op(A)·X = B`, where `A` (n×n row-major) is
 * lower or upper triangular. @internal
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
): void {
  // M = op(A) as a row-major buffer; effective lower-ness flips with the transpose.
  const m = trans ? transposeBuf(a, n, n) : a;
  const effLower = lower !== trans;
  const diag = (i: number): number => {
    if (unit) return 1;
    const d = m[i * n + i]!;
    if (d === 0) throw new CalderaError('E_VALUE', `${fn}: a is singular (zero diagonal at [${i}, ${i}])`);
    return d;
  };
  for (let s = 0; s < n; s++) {
    const i = effLower ? s : n - 1 - s;
    const xi = i * k;
    const p0 = effLower ? 0 : i + 1;
    const p1 = effLower ? i : n;
    for (let p = p0; p < p1; p++) {
      const c = m[i * n + p]!;
      if (c === 0) continue;
      const xp = p * k;
      for (let j = 0; j < k; j++) x[xi + j]! -= c * x[xp + j]!;
    }
    const d = diag(i);
    const inv = 1 / d;
    if (inv !== 1) for (let j = 0; j < k; j++) x[xi + j]! *= inv;
    assertFiniteRow(x, xi, k, i, d, fn);
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
