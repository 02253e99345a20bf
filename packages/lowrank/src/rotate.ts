import { assertObject, CalderaError, describeValue, isContiguous, Rng, type Tensor } from '@caldera/core';
import {
  assertMatrix,
  hadamardColumnsInPlace,
  hadamardRowsInPlace,
  hadamardSupported,
  type Pool,
} from '@caldera/linalg';
import { transposeSquareInPlace } from './transpose.js';

/**
 * The padded size CALDERA works at: supported by the Hadamard transform (when used) and a multiple of 8. `n` must be
 * a finite number (else `E_VALUE`).
 */
export function paddedSize(n: number, hadamard: boolean): number {
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1)
    throw new CalderaError('E_VALUE', `paddedSize: n must be a positive integer, got ${String(n)}`);
  let p = Math.max(8, Math.ceil(n / 8) * 8);
  if (hadamard) while (!hadamardSupported(p)) p += 8;
  return p;
}

/** Random ±1 vector of length n from the seeded generator. */
export function randomSigns(n: number, rng: Rng): Float32Array {
  assertObject(rng, 'randomSigns', 'rng', 'an Rng');
  return rng.fillRademacher(new Float32Array(n));
}

/** `E_SHAPE` unless `padded` is an integer ≥ `size` (a smaller one wrote rows over each other). */
function checkPadded(what: string, name: string, padded: number, size: number): void {
  if (!Number.isInteger(padded) || padded < size)
    throw new CalderaError('E_SHAPE', `${what}: ${name} must be an integer ≥ ${size}, got ${String(padded)}`);
}

/** `E_SHAPE` unless the sign vector `s` (when given) has `length` entries. */
function checkSigns(what: string, name: string, s: Float32Array | null, length: number): void {
  if (s !== null && (!(s instanceof Float32Array) || s.length !== length))
    throw new CalderaError(
      'E_SHAPE',
      `${what}: ${name} must be a Float32Array of ${length} signs (or null), got ${s instanceof Float32Array ? `${s.length}` : describeValue(s)}`,
    );
}

/** Options of {@link rotateWeight}, {@link unrotateWeight} and {@link rotateHessian}. */
export interface RotateOptions {
  /** Worker pool for the products of the transforms' `H_K` mix (sizes with K > 1, such as 11008 = 172·64). */
  pool?: Pool;
}

/** Options of {@link rotateHessian}. */
export interface RotateHessianOptions extends RotateOptions {
  /**
   * An f64 array of exactly np² entries that receives Hr (returned) instead of a fresh one: at n = 11008 a fresh
   * 0.97 GB array costs ~3 s of page faults on some machines. It may be H's own `data` where H is a contiguous n × n
   * tensor at offset 0 and np = n (each entry is read before it is overwritten; H then holds Hr); any other array
   * over H's ArrayBuffer is `E_VALUE`.
   */
  into?: Float64Array;
}

/**
 * In place, the r × c matrix Z → `M_rᵀ·Z·M_c` (`transpose`: `M_r·Z·M_cᵀ`): the rows' transform, then the columns'
 * (`hadamardColumnsInPlace`, the transpose of the rows' transform of Zᵀ to the bit, without the two transposes).
 */
function rotateInPlace(
  z: Float32Array | Float64Array,
  r: number,
  c: number,
  transpose: boolean,
  pool: Pool | undefined,
): void {
  const opts = { transpose, ...(pool ? { pool } : {}) };
  hadamardRowsInPlace(z, r, c, opts);
  hadamardColumnsInPlace(z, r, c, opts);
}

/**
 * `Wr = M_mᵀ·diag(SV)·W·diag(SU)·M_n` for a zero-padded `W (m×n → mp×np)`. With `hadamard = false` only pads.
 * `E_SHAPE` for a padded size smaller than W's or sign vectors of other lengths than `np` (SU) and `mp` (SV).
 */
export function rotateWeight(
  w: Tensor<'f32'>,
  mp: number,
  np: number,
  su: Float32Array | null,
  sv: Float32Array | null,
  options: RotateOptions = {},
): Float32Array {
  assertMatrix(w, 'rotateWeight', 'w');
  const [m, n] = w.shape as [number, number];
  checkPadded('rotateWeight', 'mp', mp, m);
  checkPadded('rotateWeight', 'np', np, n);
  checkSigns('rotateWeight', 'su', su, np);
  checkSigns('rotateWeight', 'sv', sv, mp);
  const z = new Float32Array(mp * np);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      const v = w.data[w.offset + i * w.strides[0]! + j * w.strides[1]!]!;
      z[i * np + j] = sv && su ? v * sv[i]! * su[j]! : v;
    }
  if (su && sv) rotateInPlace(z, mp, np, false, options.pool);
  return z;
}

/** The inverse of {@link rotateWeight}: `W = diag(SV)·M_m·Wr·M_nᵀ·diag(SU)`, cropped to m×n. */
export function unrotateWeight(
  wr: Float32Array,
  mp: number,
  np: number,
  m: number,
  n: number,
  su: Float32Array | null,
  sv: Float32Array | null,
  options: RotateOptions = {},
): Float32Array {
  assertObject(wr, 'unrotateWeight', 'wr', 'a Float32Array');
  checkPadded('unrotateWeight', 'm', m, 0);
  checkPadded('unrotateWeight', 'n', n, 0);
  checkPadded('unrotateWeight', 'mp', mp, m);
  checkPadded('unrotateWeight', 'np', np, n);
  if (wr.length !== mp * np)
    throw new CalderaError('E_SHAPE', `unrotateWeight: wr has ${wr.length} entries, expected ${mp}×${np}`);
  checkSigns('unrotateWeight', 'su', su, np);
  checkSigns('unrotateWeight', 'sv', sv, mp);
  const z = Float32Array.from(wr);
  if (su && sv) rotateInPlace(z, mp, np, true, options.pool);
  const out = new Float32Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) out[i * n + j] = su && sv ? z[i * np + j]! * sv[i]! * su[j]! : z[i * np + j]!;
  return out;
}

/**
 * `Hr = M_nᵀ·diag(SU)·H·diag(SU)·M_n` for H padded to np×np; padded diagonal entries get mean(diag H) so that Hr
 * stays positive definite (padded weight columns are zero and their inputs are zero, so the value is immaterial).
 * `E_SHAPE` for an H that is not n×n, `np < n`, or SU of another length than `np`. H's entries are multiplied by
 * `scale` as they are read (`caldera` passes a power of two, which scales exactly, instead of scaling a copy of H).
 */
export function rotateHessian(
  h: Tensor<'f64'> | null,
  n: number,
  np: number,
  su: Float32Array | null,
  scale = 1,
  options: RotateHessianOptions = {},
): Float64Array {
  checkPadded('rotateHessian', 'n', n, 1);
  checkPadded('rotateHessian', 'np', np, n);
  checkSigns('rotateHessian', 'su', su, np);
  if (h !== null) {
    assertMatrix(h, 'rotateHessian', 'h');
    if (h.shape[0] !== n || h.shape[1] !== n)
      throw new CalderaError('E_SHAPE', `rotateHessian: h is [${h.shape.join(', ')}], expected [${n}, ${n}]`);
  }
  const z = intoArray(options.into, h, n, np);
  let mean = 0;
  if (h) {
    const [s0, s1] = h.strides as [number, number];
    const d = h.data;
    for (let i = 0; i < n; i++) mean += d[h.offset + i * s0 + i * s1]! * scale;
    mean /= n;
    for (let i = 0; i < n; i++) {
      const row = h.offset + i * s0;
      const zi = i * np;
      if (su) {
        const si = su[i]!;
        for (let j = 0; j < n; j++) z[zi + j] = d[row + j * s1]! * scale * si * su[j]!;
      } else for (let j = 0; j < n; j++) z[zi + j] = d[row + j * s1]! * scale;
    }
  } else {
    mean = 1;
    for (let i = 0; i < n; i++) z[i * np + i] = 1;
  }
  for (let i = n; i < np; i++) z[i * np + i] = mean;
  if (!su) return z;
  // Mᵀ·Z·M through the columns' transform only (it reads Z as K contiguous blocks of rows; the rows' transform gathers
  // each row's values into another order for its mix): Zᵀ → Mᵀ·Zᵀ = (Z·M)ᵀ → Z·M → Mᵀ·Z·M, the same bits as the rows'
  // transform of Z, then of its transpose (H need not be exactly symmetric)
  const opts = options.pool ? { pool: options.pool } : {};
  transposeSquareInPlace(z, np);
  hadamardColumnsInPlace(z, np, np, opts);
  transposeSquareInPlace(z, np);
  hadamardColumnsInPlace(z, np, np, opts);
  return z;
}

/**
 * The array {@link rotateHessian} writes Hr into: `into` (checked, and zeroed where the copy of H leaves entries
 * unwritten) or a fresh one.
 */
function intoArray(
  into: Float64Array | undefined,
  h: Tensor<'f64'> | null,
  n: number,
  np: number,
): Float64Array {
  if (into === undefined) return new Float64Array(np * np);
  if (!(into instanceof Float64Array))
    throw new CalderaError(
      ArrayBuffer.isView(into) ? 'E_DTYPE' : 'E_VALUE',
      `rotateHessian: into must be a Float64Array, got ${ArrayBuffer.isView(into) ? (into as object).constructor.name : describeValue(into)}`,
    );
  if (into.length !== np * np)
    throw new CalderaError(
      'E_SHAPE',
      `rotateHessian: into must have ${np}×${np} entries, got ${into.length}`,
    );
  if (h && into.buffer === h.data.buffer) {
    const own = into === h.data && np === n && h.offset === 0 && isContiguous(h);
    if (!own)
      throw new CalderaError(
        'E_VALUE',
        "rotateHessian: into shares h's memory; only h's own data, of a contiguous h at offset 0 with np = n, may be overwritten",
      );
  }
  if (np > n || !h) into.fill(0); // entries the copy of H does not write
  return into;
}
