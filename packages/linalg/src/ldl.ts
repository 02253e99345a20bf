/**
 * Block LDLᵀ: `H = L·blockdiag(D)·Lᵀ` with `L` unit block-lower-triangular (identity b×b diagonal blocks), as
 * LDLQ needs (algorithm brief §3.2). Computed from the Cholesky factor `H = C·Cᵀ`: `Dᵢ = Cᵢᵢ·Cᵢᵢᵀ` and
 * `L[:, i] = C[:, i]·Cᵢᵢ⁻¹`.
 */
import { CalderaError, throwIfAborted, zeros, type Matrix, type Tensor } from '@caldera/core';
import { assertCount, assertMatrix, assertSquare } from './check.js';
import { choleskyImpl, type CholeskyOptions } from './cholesky.js';

/** Result of {@link blockLDL} and {@link blockLDLFromCholesky}. */
export interface BlockLDL<T extends 'f32' | 'f64' = 'f64'> {
  /** Unit block-lower-triangular `n × n` (f64, or f32 where asked for). */
  L: Tensor<T>;
  /** The diagonal blocks, shape `[n/b, b, b]` (f64, symmetric positive definite). */
  D: Tensor<'f64'>;
}

/**
 * Block LDLᵀ of a symmetric positive-definite `h` with block size `b` (a positive integer, else `E_VALUE`, with
 * `n % b == 0`, else `E_SHAPE`). `options` are
 * those of the Cholesky factorisation; `signal` is also checked between diagonal blocks (`E_ABORTED`).
 */
export function blockLDL(h: Matrix, b = 8, options: CholeskyOptions = {}): BlockLDL {
  assertMatrix(h, 'blockLDL', 'h');
  checkBlockSize(h.shape[0]!, b, 'blockLDL');
  throwIfAborted(options.signal, 'blockLDL');
  const c = choleskyImpl(h, options, 'blockLDL').l;
  return fromCholesky(c, b, 'f64', options.signal, 'blockLDL');
}

/** Options of {@link blockLDLFromCholesky}. */
export interface BlockLDLFromCholeskyOptions<T extends 'f32' | 'f64'> {
  /** The dtype of `L`: `'f32'` rounds each entry once, from f64, without an f64 copy. Default `'f64'`. */
  dtype?: T;
  /** Checked between diagonal blocks (`E_ABORTED`). */
  signal?: AbortSignal;
}

/**
 * The block LDLᵀ of `H = C·Cᵀ` from its lower-triangular Cholesky factor `c` (f64, n × n contiguous, as
 * `cholesky` returns it), in O(n²·b) instead of a factorisation: exactly {@link blockLDL}'s result when `c` is the
 * factor `blockLDL` would compute. Only the lower triangle of `c` is read; `b` not a positive integer → `E_VALUE`,
 * `n % b ≠ 0` → `E_SHAPE`, a zero diagonal entry or a non-finite entry in the lower triangle → `E_VALUE`.
 */
export function blockLDLFromCholesky(
  c: Tensor<'f64'>,
  b?: number,
  options?: BlockLDLFromCholeskyOptions<'f64'>,
): BlockLDL<'f64'>;
export function blockLDLFromCholesky(
  c: Tensor<'f64'>,
  b: number,
  options: BlockLDLFromCholeskyOptions<'f32'> & { dtype: 'f32' },
): BlockLDL<'f32'>;
export function blockLDLFromCholesky(
  c: Tensor<'f64'>,
  b = 8,
  options: BlockLDLFromCholeskyOptions<'f32' | 'f64'> = {},
): BlockLDL<'f32'> | BlockLDL<'f64'> {
  assertMatrix(c, 'blockLDLFromCholesky', 'c');
  assertSquare(c, 'blockLDLFromCholesky', 'c');
  const n = c.shape[0]!;
  if (
    c.dtype !== 'f64' ||
    c.offset !== 0 ||
    c.strides[0] !== n ||
    c.strides[1] !== 1 ||
    c.data.length < n * n
  )
    throw new CalderaError('E_VALUE', `blockLDLFromCholesky: c must be a contiguous f64 [${n}, ${n}] tensor`);
  checkBlockSize(n, b, 'blockLDLFromCholesky');
  for (let i = 0; i < n; i++) {
    const v = c.data[i * n + i]!;
    if (!(v !== 0 && Number.isFinite(v)))
      throw new CalderaError('E_VALUE', `blockLDLFromCholesky: c has diagonal entry ${v} at (${i}, ${i})`);
    // a NaN or infinite entry below the diagonal would spread through its block's L, silently (O(n²), as reading c)
    for (let j = 0; j < i; j++) {
      const w = c.data[i * n + j]!;
      if (!Number.isFinite(w))
        throw new CalderaError('E_VALUE', `blockLDLFromCholesky: c has entry ${w} at (${i}, ${j})`);
    }
  }
  const dtype = options.dtype ?? 'f64';
  if (dtype !== 'f32' && dtype !== 'f64')
    throw new CalderaError(
      'E_VALUE',
      `blockLDLFromCholesky: dtype must be 'f32' or 'f64', got ${String(dtype)}`,
    );
  throwIfAborted(options.signal, 'blockLDLFromCholesky');
  return dtype === 'f32'
    ? fromCholesky(c, b, 'f32', options.signal, 'blockLDLFromCholesky')
    : fromCholesky(c, b, 'f64', options.signal, 'blockLDLFromCholesky');
}

/** `E_VALUE` unless `b` is a positive integer, then `E_SHAPE` unless it divides `n`. */
function checkBlockSize(n: number, b: number, what: string): void {
  assertCount(b, 1, what, 'block size b');
  if (n % b !== 0) {
    throw new CalderaError('E_SHAPE', `${what}: size ${n} is not a multiple of the block size ${b}`);
  }
}

function fromCholesky<T extends 'f32' | 'f64'>(
  ct: Tensor<'f64'>,
  b: number,
  dtype: T,
  signal: AbortSignal | undefined,
  what: string,
): BlockLDL<T> {
  const n = ct.shape[0]!;
  const c = ct.data;
  const nblk = n / b;
  const d = new Float64Array(nblk * b * b);
  const lt = zeros(dtype, [n, n]);
  const l: Float32Array | Float64Array = lt.data;
  const inv = new Float64Array(b * b); // Cᵢᵢ⁻¹ (lower triangular)
  for (let blk = 0; blk < nblk; blk++) {
    throwIfAborted(signal, what);
    const o = blk * b;
    // D = Cii·Ciiᵀ
    for (let i = 0; i < b; i++)
      for (let j = 0; j < b; j++) {
        let s = 0;
        for (let p = 0; p <= Math.min(i, j); p++) s += c[(o + i) * n + o + p]! * c[(o + j) * n + o + p]!;
        d[blk * b * b + i * b + j] = s;
      }
    // inverse of the lower-triangular Cii by forward substitution, column by column
    inv.fill(0);
    for (let j = 0; j < b; j++) {
      inv[j * b + j] = 1 / c[(o + j) * n + o + j]!;
      for (let i = j + 1; i < b; i++) {
        let s = 0;
        for (let p = j; p < i; p++) s += c[(o + i) * n + o + p]! * inv[p * b + j]!;
        inv[i * b + j] = -s / c[(o + i) * n + o + i]!;
      }
    }
    // L[r, block] = C[r, block] · inv for rows r ≥ o (rows above are zero; the diagonal block becomes I)
    for (let r = o; r < n; r++) {
      for (let j = 0; j < b; j++) {
        let s = 0;
        for (let p = j; p < b; p++) s += c[r * n + o + p]! * inv[p * b + j]!;
        l[r * n + o + j] = s;
      }
    }
    for (let i = 0; i < b; i++) for (let j = 0; j < b; j++) l[(o + i) * n + o + j] = i === j ? 1 : 0;
  }
  return {
    L: lt,
    D: { dtype: 'f64', shape: [nblk, b, b], strides: [b * b, b, 1], offset: 0, data: d },
  };
}
