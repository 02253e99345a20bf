import { assertObject, CalderaError, describeValue, Rng, type Tensor } from '@caldera/core';
import { assertMatrix, hadamardRowsInPlace, hadamardSupported } from '@caldera/linalg';
import { transposed, transposeSquareInPlace } from './transpose.js';

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

/** In place: rows of the r×c matrix `a` → `v·M_c` (`transpose`: `v·M_cᵀ`). */
function rowsTimesM(a: Float32Array | Float64Array, r: number, c: number, transpose: boolean): void {
  hadamardRowsInPlace(a, r, c, { transpose });
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
  if (!su || !sv) return z;
  rowsTimesM(z, mp, np, false); // Z·M_n
  const t = transposed(z, mp, np); // (Z·M_n)ᵀ
  rowsTimesM(t, np, mp, false); // (Z·M_n)ᵀ·M_m = (M_mᵀ·Z·M_n)ᵀ
  return transposed(t, np, mp, z); // back into z (one fresh mp × np array fewer)
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
  if (su && sv) {
    rowsTimesM(z, mp, np, true); // Wr·M_nᵀ
    const t = transposed(z, mp, np);
    rowsTimesM(t, np, mp, true); // (Wr·M_nᵀ)ᵀ·M_mᵀ = (M_m·Wr·M_nᵀ)ᵀ
    transposed(t, np, mp, z);
  }
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
): Float64Array {
  checkPadded('rotateHessian', 'n', n, 1);
  checkPadded('rotateHessian', 'np', np, n);
  checkSigns('rotateHessian', 'su', su, np);
  if (h !== null) {
    assertMatrix(h, 'rotateHessian', 'h');
    if (h.shape[0] !== n || h.shape[1] !== n)
      throw new CalderaError('E_SHAPE', `rotateHessian: h is [${h.shape.join(', ')}], expected [${n}, ${n}]`);
  }
  const z = new Float64Array(np * np);
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
  rowsTimesM(z, np, np, false);
  transposeSquareInPlace(z, np);
  rowsTimesM(z, np, np, false);
  transposeSquareInPlace(z, np);
  return z;
}
