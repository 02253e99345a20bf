import { assertObject, CalderaError } from '@caldera/core';
import { assertCodeWidth, e8pDecode, e8pEncode } from './e8p.js';

/**
 * Residual vector quantization on top of E8P12 (QuIP#'s E8P12RVQ4B and E8P12RVQ3B, algorithm brief §3.5):
 * `q1 = E8P(x)`, `q2 = C2((x − q1)·ρ)`, reconstruction `q1 + q2/ρ`, where the second-stage codebook C2 is E8P12
 * again (4 bits/weight, ρ = 3.45) or the 256-entry E81B codebook (3 bits/weight, ρ = 2.04).
 */
export interface RvqCodes {
  /** Stage-1 E8P12 codes, one per 8 values. */
  stage1: Uint16Array;
  /** Stage-2 codes: Uint16Array (E8P12, 4-bit variant) or Uint8Array (E81B, 3-bit variant). */
  stage2: Uint16Array | Uint8Array;
}

/** Residual scale of the 4-bit variant. */
export const RVQ4_RESID_SCALE = 3.45;
/** Residual scale of the 3-bit variant. */
export const RVQ3_RESID_SCALE = 2.04;
/** Input scale of the 3-bit variant minimising MSE on unit-Gaussian data. */
export const RVQ3_OPT_SCALE = 0.98;

let e81b: Float32Array | null = null;

/**
 * The E81B codebook (256 × 8): the 241 points of E8 with ‖x‖² ≤ 2 (the origin, the 112 vectors ±eᵢ ± eⱼ, the 128
 * vectors (±½)⁸ with an even number of minus signs) and the 15 vectors +2eᵢ (i = 0..7) and −2eᵢ (i = 0..6).
 * Order (ours, documented in the README): origin, ±eᵢ±eⱼ by (i, j, signs), (±½)⁸ by sign mask, +2eᵢ, −2eᵢ.
 */
export function e81bCodebook(): Float32Array {
  if (e81b) return e81b;
  const rows: number[][] = [[0, 0, 0, 0, 0, 0, 0, 0]];
  for (let i = 0; i < 8; i++)
    for (let j = i + 1; j < 8; j++)
      for (const si of [1, -1])
        for (const sj of [1, -1]) {
          const v = [0, 0, 0, 0, 0, 0, 0, 0];
          v[i] = si;
          v[j] = sj;
          rows.push(v);
        }
  for (let mask = 0; mask < 256; mask++) {
    let pc = 0;
    for (let b = 0; b < 8; b++) pc += (mask >> b) & 1;
    if (pc % 2 === 0) rows.push(Array.from({ length: 8 }, (_, b) => ((mask >> b) & 1 ? -0.5 : 0.5)));
  }
  for (let i = 0; i < 8; i++) rows.push(Array.from({ length: 8 }, (_, b) => (b === i ? 2 : 0)));
  for (let i = 0; i < 7; i++) rows.push(Array.from({ length: 8 }, (_, b) => (b === i ? -2 : 0)));
  if (rows.length !== 256) throw new CalderaError('E_VALUE', `E81B: expected 256 rows, got ${rows.length}`);
  e81b = Float32Array.from(rows.flat());
  return e81b;
}

function e81bEncode(x: ArrayLike<number>): Uint8Array {
  const cb = e81bCodebook();
  const out = new Uint8Array(x.length / 8);
  for (let k = 0; k < out.length; k++) {
    let bd = Infinity;
    let bc = 0;
    for (let c = 0; c < 256; c++) {
      let d = 0;
      for (let i = 0; i < 8; i++) {
        const e = x[k * 8 + i]! - cb[c * 8 + i]!;
        d += e * e;
      }
      if (d < bd) {
        bd = d;
        bc = c;
      }
    }
    out[k] = bc;
  }
  return out;
}

function e81bDecode(codes: Uint8Array): Float32Array {
  // codes in another array type (a Uint16Array, say) must be 8-bit: one above 255 read past the table, and its
  // stage-2 values came out undefined, so 0 (the code decoded as stage 1 alone)
  assertCodeWidth(codes, 8, (k, c) => `rvqDecode: stage-2 code ${k} is ${c}, not an 8-bit (E81B) code`);
  const cb = e81bCodebook();
  const out = new Float32Array(codes.length * 8);
  for (let k = 0; k < codes.length; k++) out.set(cb.subarray(codes[k]! * 8, codes[k]! * 8 + 8), k * 8);
  return out;
}

function checkRvqBits(bits: number, what: string): void {
  if (bits !== 3 && bits !== 4)
    throw new CalderaError('E_VALUE', `${what}: bits must be 3 or 4, got ${bits}`);
}

/** Encode with the 3- or 4-bit residual variant (other `bits` → `E_VALUE`). */
export function rvqEncode(x: ArrayLike<number>, bits: 3 | 4): RvqCodes {
  checkRvqBits(bits, 'rvqEncode');
  assertObject(x, 'rvqEncode', 'x', 'an array of numbers');
  if (x.length % 8 !== 0)
    throw new CalderaError('E_SHAPE', `rvqEncode: length ${x.length} is not a multiple of 8`); // (it said e8pEncode)
  const stage1 = e8pEncode(x);
  const q1 = e8pDecode(stage1);
  const rho = bits === 4 ? RVQ4_RESID_SCALE : RVQ3_RESID_SCALE;
  const r = new Float32Array(x.length);
  for (let i = 0; i < r.length; i++) r[i] = (x[i]! - q1[i]!) * rho;
  return { stage1, stage2: bits === 4 ? e8pEncode(r) : e81bEncode(r) };
}

/** Decode residual-VQ codes: `q1 + q2/ρ`. The two stages must hold as many codes (else `E_SHAPE`). */
export function rvqDecode(codes: RvqCodes, bits: 3 | 4): Float32Array {
  checkRvqBits(bits, 'rvqDecode');
  assertObject(codes, 'rvqDecode', 'codes', 'an RvqCodes object');
  assertObject(codes.stage1, 'rvqDecode', 'codes.stage1', 'a Uint16Array');
  assertObject(codes.stage2, 'rvqDecode', 'codes.stage2', bits === 4 ? 'a Uint16Array' : 'a Uint8Array');
  if (codes.stage1.length !== codes.stage2.length) {
    throw new CalderaError(
      'E_SHAPE',
      `rvqDecode: stage 1 has ${codes.stage1.length} codes, stage 2 has ${codes.stage2.length}`,
    );
  }
  const q1 = e8pDecode(codes.stage1);
  const q2 = bits === 4 ? e8pDecode(codes.stage2 as Uint16Array) : e81bDecode(codes.stage2 as Uint8Array);
  const rho = bits === 4 ? RVQ4_RESID_SCALE : RVQ3_RESID_SCALE;
  for (let i = 0; i < q1.length; i++) q1[i]! += q2[i]! / rho;
  return q1;
}
