/**
 * Group rounders: the codebook-side interface LDLQ needs. A rounder maps groups of `dim` consecutive values
 * of a matrix row (one column group, all rows at once) to codewords of a fixed codebook, writing the
 * dequantized values and one code per group per stage ("plane").
 */
import { assertObject, CalderaError } from '@caldera/core';
import { E8P_DIM, e8pDecode, e8pEncode } from './e8p.js';
import { rvqDecode, rvqEncode } from './rvq.js';

/** One stage of codes, `[rows, cols / dim]` row-major. */
export type CodePlane = Uint8Array | Uint16Array;

/** A codebook that rounds groups of `dim` values (E8P12: 8; scalar quantizers: 1). */
export interface GroupRounder {
  /** Values per group (the codeword dimension). */
  readonly dim: number;
  /** Element type of each code plane (E8P12: `['u16']`; RVQ4: `['u16', 'u16']`; RVQ3: `['u16', 'u8']`). */
  readonly planes: readonly ('u8' | 'u16')[];
  /** Bits per weight of the codes alone. */
  readonly bitsPerWeight: number;
  /**
   * Round `rows` groups: row r's group is `x[r·dim .. r·dim+dim)`. Writes the dequantized group to the same
   * place in `out` and row r's code of plane p to `planes[p][r·stride + group]`.
   */
  round(
    x: Float32Array,
    rows: number,
    out: Float32Array,
    planes: CodePlane[],
    group: number,
    stride: number,
  ): void;
}

/** Allocate zeroed code planes holding `count` groups each. */
export function allocPlanes(r: GroupRounder, count: number): CodePlane[] {
  assertObject(r, 'allocPlanes', 'r', 'a GroupRounder');
  return r.planes.map((t) => (t === 'u8' ? new Uint8Array(count) : new Uint16Array(count)));
}

/** The E8P12 lattice rounder (2 bits/weight, exact nearest codeword). The caller chooses the scale. */
export function e8pRounder(): GroupRounder {
  return {
    dim: E8P_DIM,
    planes: ['u16'],
    bitsPerWeight: 2,
    round(x, rows, out, planes, group, stride) {
      const c = e8pEncode(x.subarray(0, rows * 8));
      e8pDecode(c, out); // the first rows·8 values of out
      const p = planes[0]!;
      for (let r = 0; r < rows; r++) p[r * stride + group] = c[r]!;
    },
  };
}

/** Residual-VQ E8P12 rounders (brief §3.5): 3 bits (E8P12 + E81B) or 4 bits (E8P12 + E8P12); other `bits`: `E_VALUE`. */
export function rvqRounder(bits: 3 | 4): GroupRounder {
  if (bits !== 3 && bits !== 4) {
    throw new CalderaError('E_VALUE', `rvqRounder: bits must be 3 or 4, got ${String(bits)}`);
  }
  return {
    dim: E8P_DIM,
    planes: bits === 4 ? ['u16', 'u16'] : ['u16', 'u8'],
    bitsPerWeight: bits,
    round(x, rows, out, planes, group, stride) {
      const c = rvqEncode(x.subarray(0, rows * 8), bits);
      out.set(rvqDecode(c, bits).subarray(0, rows * 8));
      const p1 = planes[0]!;
      const p2 = planes[1]!;
      for (let r = 0; r < rows; r++) {
        p1[r * stride + group] = c.stage1[r]!;
        p2[r * stride + group] = c.stage2[r]!;
      }
    },
  };
}

/**
 * Symmetric uniform scalar rounder with a fixed step: levels `step·q`, `q ∈ [−(2^(bits−1)−1), 2^(bits−1)−1]`, `q` the
 * nearest integer to `x/step` with ties rounded up, toward +∞, as `Math.round` does (2.5 → 3, −2.5 → −2), then
 * clamped to that range; code = `q + 2^(bits−1) − 1`, at most `2^bits − 2`, in a u8 plane. `bits` must be an integer
 * in 2..8 (8 is the widest a u8 code holds; 1 bit would have the single level 0) and `step` positive and finite, else
 * `E_VALUE`.
 */
export function uniformRounder(bits: number, step: number): GroupRounder {
  if (!Number.isInteger(bits) || bits < 2 || bits > 8) {
    throw new CalderaError('E_VALUE', `uniformRounder: bits must be an integer in 2..8, got ${String(bits)}`);
  }
  if (!(step > 0) || !Number.isFinite(step)) {
    throw new CalderaError(
      'E_VALUE',
      `uniformRounder: step must be positive and finite, got ${String(step)}`,
    );
  }
  const qmax = 2 ** (bits - 1) - 1;
  return {
    dim: 1,
    planes: ['u8'],
    bitsPerWeight: bits,
    round(x, rows, out, planes, group, stride) {
      const p = planes[0]!;
      for (let r = 0; r < rows; r++) {
        const q = Math.max(-qmax, Math.min(qmax, Math.round(x[r]! / step)));
        out[r] = q * step;
        p[r * stride + group] = q + qmax;
      }
    },
  };
}
