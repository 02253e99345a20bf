import { assertObject, CalderaError, NO_Q_CODEC } from '@caldera/core';
import {
  E8P_OPT_SCALE,
  e8pDecode,
  e8pEncode,
  e8pRounder,
  RVQ3_OPT_SCALE,
  rvqDecode,
  rvqEncode,
  rvqRounder,
  type CodePlane,
  type GroupRounder,
} from '@caldera/quant';

/** Bit widths CALDERA supports per factor: lattice codebooks (2, 3, 4) or 16 = keep in half precision. */
export type FactorBits = 2 | 3 | 4 | 16;

/** Checkpoint codec name of a width (docs/architecture.md). */
export function codecName(bits: FactorBits): string {
  switch (bits) {
    case 2:
      return 'e8p12';
    case 3:
      return 'e8p12-rvq3';
    case 4:
      return 'e8p12-rvq4';
    case 16:
      return 'f16';
  }
}

/** Width of a checkpoint codec name. */
export function codecBits(codec: string): FactorBits {
  const widths = { e8p12: 2, 'e8p12-rvq3': 3, 'e8p12-rvq4': 4, f16: 16 } as const;
  // own names only: 'constructor' is no codec (an inherited key gave Object)
  const b = Object.hasOwn(widths, codec) ? widths[codec as keyof typeof widths] : undefined;
  if (b === undefined) throw new CalderaError('E_FORMAT', `unknown codec '${codec}'`);
  return b;
}

/** Width of a checkpoint's Q codec: its lattice bits, or 0 for a layer without Q (core's `NO_Q_CODEC`). */
export function qCodecBits(codec: string): 0 | 2 | 3 | 4 {
  return codec === NO_Q_CODEC ? 0 : (codecBits(codec) as 2 | 3 | 4);
}

/** The input scale at which a lattice codebook has minimal MSE on unit-RMS data. */
export function optScale(bits: 2 | 3 | 4): number {
  return bits === 3 ? RVQ3_OPT_SCALE : E8P_OPT_SCALE;
}

/** The LDLQ group rounder of a lattice width. */
export function rounderFor(bits: 2 | 3 | 4): GroupRounder {
  return bits === 2 ? e8pRounder() : rvqRounder(bits);
}

/** Lattice codes of a matrix: planes `[rows, cols/8]` and the scale they are multiplied by. */
export interface LatticeCodes {
  bits: 2 | 3 | 4;
  planes: CodePlane[];
  scale: number;
}

/** Round-to-nearest of a row-major matrix (cols % 8 == 0) at unit RMS (no optScale); returns codes and values. */
export function latticeRound(
  x: Float32Array,
  bits: 2 | 3 | 4,
): { codes: LatticeCodes; values: Float32Array } {
  assertObject(x, 'latticeRound', 'x', 'a Float32Array');
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i]! * x[i]!;
  const rms = Math.sqrt(ss / Math.max(1, x.length));
  if (rms === 0) {
    const zero =
      bits === 2
        ? [new Uint16Array(x.length / 8)]
        : [
            new Uint16Array(x.length / 8),
            bits === 4 ? new Uint16Array(x.length / 8) : new Uint8Array(x.length / 8),
          ];
    const codes: LatticeCodes = { bits, planes: zero, scale: 0 };
    return { codes, values: new Float32Array(x.length) };
  }
  // L and R are rounded at unit RMS (the reference code uses no opt_scale for the factors, brief §2.5)
  const inv = 1 / rms;
  const y = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) y[i] = x[i]! * inv;
  let planes: CodePlane[];
  let values: Float32Array;
  if (bits === 2) {
    const c = e8pEncode(y);
    planes = [c];
    values = e8pDecode(c);
  } else {
    const c = rvqEncode(y, bits);
    planes = [c.stage1, c.stage2];
    values = rvqDecode(c, bits);
  }
  for (let i = 0; i < values.length; i++) values[i]! *= rms;
  return { codes: { bits, planes, scale: rms }, values };
}

/** Round-to-nearest of raw values (no scaling): the code planes and the reconstructed values. */
export function latticeRoundRaw(
  x: Float32Array,
  bits: 2 | 3 | 4,
): { planes: CodePlane[]; values: Float32Array } {
  assertObject(x, 'latticeRoundRaw', 'x', 'a Float32Array');
  if (bits === 2) {
    const c = e8pEncode(x);
    return { planes: [c], values: e8pDecode(c) };
  }
  const c = rvqEncode(x, bits);
  return { planes: [c.stage1, c.stage2], values: rvqDecode(c, bits) };
}

/** Values of lattice codes (row-major, `8·planes[0].length` entries). */
export function latticeDecode(c: LatticeCodes): Float32Array {
  assertObject(c, 'latticeDecode', 'c', 'LatticeCodes');
  const v =
    c.bits === 2
      ? e8pDecode(c.planes[0] as Uint16Array)
      : rvqDecode({ stage1: c.planes[0] as Uint16Array, stage2: c.planes[1]! }, c.bits);
  for (let i = 0; i < v.length; i++) v[i]! *= c.scale;
  return v;
}
