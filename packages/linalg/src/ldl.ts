/**
 * Block LDLᵀ: `H = L·blockdiag(D)·Lᵀ` with `L` unit block-lower-triangular (identity b×b diagonal blocks), as
 * LDLQ needs (algorithm brief §3.2). Computed from the Cholesky factor `H = C·Cᵀ`: `Dᵢ = Cᵢᵢ·Cᵢᵢᵀ` and
 * `L[:, i] = C[:, i]·Cᵢᵢ⁻¹`.
 */
import { CalderaError, throwIfAborted, type Matrix, type Tensor } from '@caldera/core';
import { assertMatrix } from './check.js';
import { choleskyImpl, type CholeskyOptions } from './cholesky.js';

/** Result of {@link blockLDL}. */
export interface BlockLDL {
  /** Unit block-lower-triangular `n × n` (f64). */
  L: Tensor<'f64'>;
  /** The diagonal blocks, shape `[n/b, b, b]` (f64, symmetric positive definite). */
  D: Tensor<'f64'>;
}

/**
 * Block LDLᵀ of a symmetric positive-definite `h` with block size `b` (`n % b == 0`, else `E_SHAPE`). `options` are
 * those of the Cholesky factorisation; `signal` is also checked between diagonal blocks (`E_ABORTED`).
 */
export function blockLDL(h: Matrix, b = 8, options: CholeskyOptions = {}): BlockLDL {
  assertMatrix(h, 'blockLDL', 'h');
  const n = h.shape[0]!;
  if (!Number.isInteger(b) || b <= 0 || n % b !== 0) {
    throw new CalderaError('E_SHAPE', `blockLDL: size ${n} is not a multiple of the block size ${b}`);
  }
  throwIfAborted(options.signal, 'blockLDL');
  const c = choleskyImpl(h, options, 'blockLDL').l.data;
  const nblk = n / b;
  const d = new Float64Array(nblk * b * b);
  const l = new Float64Array(n * n);
  const inv = new Float64Array(b * b); // Cᵢᵢ⁻¹ (lower triangular)
  for (let blk = 0; blk < nblk; blk++) {
    throwIfAborted(options.signal, 'blockLDL');
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
    L: { dtype: 'f64', shape: [n, n], strides: [n, 1], offset: 0, data: l },
    D: { dtype: 'f64', shape: [nblk, b, b], strides: [b * b, b, 1], offset: 0, data: d },
  };
}
