import { CalderaError } from '@caldera/core';
import { hadamardRowsInPlace } from '@caldera/linalg';
import type { Decomposition } from '@caldera/lowrank';
import type { Vec } from './types.js';

/** The fixed rotation of one CALDERA layer: `Ŵ = g·diag(SV)·M_m·(…)·M_nᵀ·diag(SU)` (docs/architecture.md). */
export type LayerRotation = Pick<Decomposition, 'shape' | 'padded' | 'hadamard' | 'su' | 'sv' | 'scale'>;

function like(v: Vec, n: number): Vec {
  return v instanceof Float64Array ? new Float64Array(n) : new Float32Array(n);
}

/**
 * The trainable part `(x'·R_ftᵀ)·L_ftᵀ` of a CALDERA layer, which lives in the rotated domain, as an ordinary
 * adapter `ΔW = A·B` in the original domain: `A = g·diag(SV)·(M_m·L_ft)[:m]` (`[m, kf]`) and
 * `B = (R_ft·M_nᵀ)[:, :n]·diag(SU)` (`[kf, n]`), so that `x·Bᵀ·Aᵀ` equals the layer's LoRA output exactly.
 * `lFt` is `[mp, kf]` and `rFt` `[kf, np]`, row-major; f32 or f64 in, same out.
 */
export function loraFromRotated(rot: LayerRotation, lFt: Vec, rFt: Vec, kf: number): { a: Vec; b: Vec } {
  const [m, n] = rot.shape;
  const [mp, np] = rot.padded;
  if (lFt.length !== mp * kf || rFt.length !== kf * np)
    throw new CalderaError(
      'E_SHAPE',
      `loraFromRotated: L_ft has ${lFt.length}, R_ft ${rFt.length} values, expected [${mp}, ${kf}] and [${kf}, ${np}]`,
    );
  // Aᵀ rows: g·(l_t·M_mᵀ) ⊙ SV, l_t = column t of L_ft
  const at = like(lFt, kf * mp);
  for (let i = 0; i < mp; i++) for (let t = 0; t < kf; t++) at[t * mp + i] = lFt[i * kf + t]!;
  if (rot.hadamard) hadamardRowsInPlace(at, kf, mp, { transpose: true });
  const a = like(lFt, m * kf);
  for (let i = 0; i < m; i++) {
    const s = rot.scale * (rot.sv ? rot.sv[i]! : 1);
    for (let t = 0; t < kf; t++) a[i * kf + t] = s * at[t * mp + i]!;
  }
  // B rows: (r_t·M_nᵀ) ⊙ SU, cropped to n
  const br = rFt.slice() as Vec;
  if (rot.hadamard) hadamardRowsInPlace(br, kf, np, { transpose: true });
  const b = like(rFt, kf * n);
  for (let t = 0; t < kf; t++)
    for (let j = 0; j < n; j++) b[t * n + j] = br[t * np + j]! * (rot.su ? rot.su[j]! : 1);
  return { a, b };
}

/**
 * The chain rule through {@link loraFromRotated} (its adjoint, since the map is linear): gradients of `A` and `B`
 * to gradients of `L_ft` (`[mp, kf]`) and `R_ft` (`[kf, np]`). Padded rows and columns get the gradient the
 * zero-padded inputs imply.
 */
export function loraGradToRotated(rot: LayerRotation, dA: Vec, dB: Vec, kf: number): { dL: Vec; dR: Vec } {
  const [m, n] = rot.shape;
  const [mp, np] = rot.padded;
  const ut = like(dA, kf * mp); // rows: pad(g·SV ⊙ dA[:, t]), then ·M_m
  for (let i = 0; i < m; i++) {
    const s = rot.scale * (rot.sv ? rot.sv[i]! : 1);
    for (let t = 0; t < kf; t++) ut[t * mp + i] = s * dA[i * kf + t]!;
  }
  if (rot.hadamard) hadamardRowsInPlace(ut, kf, mp, { transpose: false });
  const dL = like(dA, mp * kf);
  for (let i = 0; i < mp; i++) for (let t = 0; t < kf; t++) dL[i * kf + t] = ut[t * mp + i]!;
  const dR = like(dB, kf * np);
  for (let t = 0; t < kf; t++)
    for (let j = 0; j < n; j++) dR[t * np + j] = dB[t * n + j]! * (rot.su ? rot.su[j]! : 1);
  if (rot.hadamard) hadamardRowsInPlace(dR, kf, np, { transpose: false });
  return { dL, dR };
}
