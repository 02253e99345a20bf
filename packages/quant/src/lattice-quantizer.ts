/**
 * E8P12 and its residual-VQ variants as whole-tensor {@link Quantizer}s, the way CALDERA quantizes L and R
 * (brief §2.5): one f32 scale per tensor, `s = RMS(x)/inputScale`; the codes are those of `x/s` in 8-vectors of
 * consecutive values (row-major), `x̂ = s·decode(codes)`. An all-zero tensor is stored with `s = 0` (no codeword
 * is zero), so it dequantizes to zeros. `inputScale` is the codec's MSE-optimal input RMS for
 * Gaussian data: 1.03 for E8P12, 1.0 for RVQ4 (how CALDERA feeds L and R), 0.98 for RVQ3.
 */
import { assertObject, CalderaError, tensor, type Tensor } from '@caldera/core';
import { E8P_OPT_SCALE, e8pDecode, e8pEncode } from './e8p.js';
import {
  checkDescriptor,
  checkQuantizedLengths,
  finiteValues,
  type QuantizedTensor,
  type Quantizer,
  type QuantizerDescriptor,
  costedValueCount,
} from './quantizer.js';
import { RVQ3_OPT_SCALE, rvqDecode, rvqEncode } from './rvq.js';

/** Which lattice codec. */
export type LatticeKind = 'e8p12' | 'e8p12-rvq3' | 'e8p12-rvq4';

/** Options of {@link latticeQuantizer}. */
export interface LatticeOptions {
  /** Input RMS the values are scaled to before rounding. Default: the codec's (1.03, 0.98 or 1.0). */
  inputScale?: number;
}

const BITS: Record<LatticeKind, number> = { e8p12: 2, 'e8p12-rvq3': 3, 'e8p12-rvq4': 4 };
/** Default input RMS per lattice codec. */
export const LATTICE_INPUT_SCALE: Record<LatticeKind, number> = {
  e8p12: E8P_OPT_SCALE,
  'e8p12-rvq3': RVQ3_OPT_SCALE,
  'e8p12-rvq4': 1,
};

/** Create an E8P12 (2-bit), E8P12-RVQ3 (3-bit) or E8P12-RVQ4 (4-bit) tensor quantizer. */
export function latticeQuantizer(kind: LatticeKind, options: LatticeOptions = {}): Quantizer {
  if (typeof kind !== 'string' || !Object.hasOwn(BITS, kind))
    throw new CalderaError('E_VALUE', `latticeQuantizer: unknown kind ${String(kind)}`);
  options ??= {}; // from JavaScript: null options are none
  const inputScale = options.inputScale ?? LATTICE_INPUT_SCALE[kind];
  if (!(inputScale > 0) || !Number.isFinite(inputScale)) {
    throw new CalderaError(
      'E_VALUE',
      `latticeQuantizer: inputScale must be positive and finite, got ${inputScale}`,
    );
  }
  const descriptor: QuantizerDescriptor = { kind, inputScale };
  const bits = BITS[kind];
  return {
    descriptor,
    bitsPerWeight(shape) {
      const n = costedValueCount(shape, `${kind}.bitsPerWeight`);
      // as quantize: one code per 8 values
      if (n % 8 !== 0)
        throw new CalderaError(
          'E_SHAPE',
          `${kind}.bitsPerWeight: shape [${shape.join(', ')}] has ${n} values, not a multiple of 8`,
        );
      return (n * bits + 32) / n;
    },
    quantize(t: Tensor): QuantizedTensor {
      const x = finiteValues(t, `${kind}.quantize`);
      if (x.length % 8 !== 0) {
        throw new CalderaError(
          'E_SHAPE',
          `${kind}.quantize: tensor [${t.shape.join(', ')}] has ${x.length} values, not a multiple of 8`,
        );
      }
      const { divisor: s, stored } = latticeScales(x, inputScale);
      const y = new Float32Array(x.length);
      for (let i = 0; i < x.length; i++) y[i] = x[i]! / s;
      const codes =
        kind === 'e8p12'
          ? [e8pEncode(y)]
          : (({ stage1, stage2 }) => [stage1, stage2])(rvqEncode(y, kind === 'e8p12-rvq4' ? 4 : 3));
      return { descriptor, shape: [...t.shape], codes, params: { scales: Float32Array.of(stored) } };
    },
    dequantize(q: QuantizedTensor): Tensor<'f32'> {
      checkDescriptor(q, descriptor, `${kind}.dequantize`);
      checkQuantizedLengths(q, kind === 'e8p12' ? 1 : 2, 8, 1, false, `${kind}.dequantize`);
      const v =
        kind === 'e8p12'
          ? e8pDecode(q.codes[0] as Uint16Array)
          : rvqDecode(
              { stage1: q.codes[0] as Uint16Array, stage2: q.codes[1]! },
              kind === 'e8p12-rvq4' ? 4 : 3,
            );
      const s = q.params.scales[0]!;
      for (let i = 0; i < v.length; i++) v[i]! *= s;
      return tensor('f32', q.shape, v);
    },
  };
}

/**
 * The per-tensor scale of a lattice codec: `RMS(x)/inputScale` as f32 (1 for an all-zero tensor: the scale the
 * values are divided by; the stored scale of an all-zero tensor is 0, see {@link latticeScales}). `E_VALUE` for a
 * non-finite value in `x` (naming its index) or an `inputScale` that is not positive and finite.
 */
export function latticeScale(x: ArrayLike<number>, inputScale: number): number {
  return scalesOf(x, inputScale, 'latticeScale').divisor;
}

/**
 * Both scales of a lattice codec from one pass over `x`: `divisor`, what the values are divided by before rounding
 * ({@link latticeScale}), and `stored`, the scale kept with the codes, which is 0 for an all-zero tensor (no codeword
 * is 0, E8P12 points being ±¼ + D̂8, so only a zero scale keeps its zeros) and `divisor` otherwise — also 0 (with
 * `divisor` 1) when the scale underflows f32 (values all below ~1e-38). `E_VALUE` as {@link latticeScale} (a
 * non-finite value, a bad `inputScale`), and when the sum of squares or the scale overflows.
 */
export function latticeScales(x: ArrayLike<number>, inputScale: number): { divisor: number; stored: number } {
  return scalesOf(x, inputScale, 'latticeScales');
}

function scalesOf(x: ArrayLike<number>, inputScale: number, fn: string): { divisor: number; stored: number } {
  assertObject(x, fn, 'x', 'an array of numbers');
  if (!(inputScale > 0) || !Number.isFinite(inputScale)) {
    throw new CalderaError(
      'E_VALUE',
      `${fn}: inputScale must be positive and finite, got ${String(inputScale)}`,
    );
  }
  let ss = 0;
  for (let i = 0; i < x.length; i++) {
    const v = x[i]!;
    if (v - v !== 0) throw new CalderaError('E_VALUE', `${fn}: x has a non-finite value ${v} at index ${i}`);
    ss += v * v;
  }
  if (ss === Infinity) {
    throw new CalderaError('E_VALUE', `${fn}: the sum of squares of x overflows (values too large)`);
  }
  const rms = Math.sqrt(ss / Math.max(1, x.length));
  const divisor = Math.fround(rms > 0 ? rms / inputScale : 1);
  // the scale is stored in f32: beyond its range the codes could not be decoded (an infinite scale is refused there)
  if (divisor === Infinity)
    throw new CalderaError(
      'E_VALUE',
      `${fn}: the scale RMS/inputScale = ${rms / inputScale} exceeds the f32 range (values too large)`,
    );
  // below it (a tensor of subnormals) every value is within 1e-38 of zero: stored as the all-zero tensor is
  if (divisor === 0) return { divisor: 1, stored: 0 };
  return { divisor, stored: ss > 0 ? divisor : 0 };
}
