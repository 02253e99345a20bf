import { assertObject, CalderaError, Rng, type Tensor } from '@caldera/core';
import { hadamardRowsInPlace, hadamardSupported } from '@caldera/linalg';
import { transposed } from './transpose.js';

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

/** In place: rows of the r×c matrix `a` → `v·M_c` (`transpose`: `v·M_cᵀ`). */
function rowsTimesM(a: Float32Array | Float64Array, r: number, c: number, transpose: boolean): void {
  hadamardRowsInPlace(a, r, c, { transpose });
}

/**
 * `Wr = M_mᵀ·diag(SV)·W·diag(SU)·M_n` for a zero-padded `W (m×n → mp×np)`. With `hadamard = false` only pads.
 */
export function rotateWeight(
  w: Tensor<'f32'>,
  mp: number,
  np: number,
  su: Float32Array | null,
  sv: Float32Array | null,
): Float32Array {
  assertObject(w, 'rotateWeight', 'w', 'a tensor');
  const [m, n] = w.shape as [number, number];
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
  return transposed(t, np, mp);
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
  let z = Float32Array.from(wr);
  if (su && sv) {
    rowsTimesM(z, mp, np, true); // Wr·M_nᵀ
    const t = transposed(z, mp, np);
    rowsTimesM(t, np, mp, true); // (Wr·M_nᵀ)ᵀ·M_mᵀ = (M_m·Wr·M_nᵀ)ᵀ
    z = transposed(t, np, mp);
  }
  const out = new Float32Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) out[i * n + j] = su && sv ? z[i * np + j]! * sv[i]! * su[j]! : z[i * np + j]!;
  return out;
}

/**
 * `Hr = M_nᵀ·diag(SU)·H·diag(SU)·M_n` for H padded to np×np; padded diagonal entries get mean(diag H) so that Hr
 * stays positive definite (padded weight columns are zero and their inputs are zero, so the value is immaterial).
 */
export function rotateHessian(
  h: Tensor<'f64'> | null,
  n: number,
  np: number,
  su: Float32Array | null,
): Float64Array {
  const z = new Float64Array(np * np);
  let mean = 0;
  if (h) {
    for (let i = 0; i < n; i++) mean += h.data[h.offset + i * h.strides[0]! + i * h.strides[1]!]!;
    mean /= n;
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) {
        const v = h.data[h.offset + i * h.strides[0]! + j * h.strides[1]!]!;
        z[i * np + j] = su ? v * su[i]! * su[j]! : v;
      }
  } else {
    mean = 1;
    for (let i = 0; i < n; i++) z[i * np + i] = 1;
  }
  for (let i = n; i < np; i++) z[i * np + i] = mean;
  if (!su) return z;
  rowsTimesM(z, np, np, false);
  const t = transposed(z, np, np);
  rowsTimesM(t, np, np, false);
  return transposed(t, np, np);
}
