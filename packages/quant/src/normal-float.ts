/**
 * NormalFloat quantizer NF2/NF3/NF4 (QLoRA's construction as CALDERA uses it, brief §4): 2^b levels in [−1, 1]
 * placed at quantiles of N(0, 1), one exact zero, M − 1 negative and M positive levels (M = 2^(b−1)); values are
 * divided by their group's absmax and rounded to the nearest level. Code = level index (ascending), u8.
 */
import { assertObject, CalderaError, tensor, type Tensor } from '@caldera/core';
import {
  badCode,
  checkDescriptor,
  checkQuantizedLengths,
  checkScalarOptions,
  costedValueCount,
  finiteValues,
  forEachGroup,
  groupCount,
  type Granularity,
  type QuantizedTensor,
  type Quantizer,
  type QuantizerDescriptor,
} from './quantizer.js';

/**
 * Inverse standard normal CDF Φ⁻¹(p) for 0 < p < 1: Acklam's rational approximation (relative error < 1.2e-9,
 * far below the f32 precision of the levels; the table is checked against the published NF4 levels in the tests).
 */
export function normalQuantile(p: number): number {
  if (!(p > 0 && p < 1)) throw new CalderaError('E_VALUE', `normalQuantile: p must be in (0, 1), got ${p}`);
  const a = [
    -39.69683028665376, 220.9460984245205, -275.9285104469687, 138.357751867269, -30.66479806614716,
    2.506628277459239,
  ];
  const b = [
    -54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572,
  ];
  const c = [
    -0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734, 4.374664141464968,
    2.938163982698783,
  ];
  const d = [0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416];
  const plow = 0.02425;
  if (p < plow) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (
      (((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) /
      ((((d[0]! * q + d[1]!) * q + d[2]!) * q + d[3]!) * q + 1)
    );
  }
  if (p > 1 - plow) return -normalQuantile(1 - p);
  const q = p - 0.5;
  const r = q * q;
  return (
    ((((((a[0]! * r + a[1]!) * r + a[2]!) * r + a[3]!) * r + a[4]!) * r + a[5]!) * q) /
    (((((b[0]! * r + b[1]!) * r + b[2]!) * r + b[3]!) * r + b[4]!) * r + 1)
  );
}

/** The 2^bits NormalFloat levels, ascending, in [−1, 1] with an exact 0 and ±1 at the ends. */
export function nfLevels(bits: 2 | 3 | 4): Float64Array {
  const M = 2 ** (bits - 1);
  const delta = (1 / 30 + 1 / 32) / 2;
  const cst = normalQuantile(1 - delta);
  const out: number[] = [];
  for (let j = 0; j < M - 1; j++) out.push(normalQuantile(delta + (j * (0.5 - delta)) / (M - 1)) / cst);
  out.push(0);
  for (let j = 1; j < M; j++) out.push(normalQuantile(0.5 + (j * (0.5 - delta)) / M) / cst);
  out.push(1);
  out[0] = -1; // Φ⁻¹(δ)/c = −1 exactly by construction; remove the approximation's last-ulp error
  return Float64Array.from(out);
}

/** Options of {@link normalFloatQuantizer}. */
export interface NormalFloatOptions {
  /** 2, 3 or 4 bits. */
  bits: 2 | 3 | 4;
  /** Scale sharing. Default `'group'` when `groupSize` is given, else `'tensor'`. */
  granularity?: Granularity;
  /** Values per absmax group along each row. Default 64 (QLoRA / CALDERA block size). */
  groupSize?: number;
}

/** Create an NF2/NF3/NF4 quantizer (absmax f32 scale per group). */
export function normalFloatQuantizer(options: NormalFloatOptions): Quantizer {
  assertObject(options, 'normalFloatQuantizer', 'options');
  const bits = options.bits;
  if (bits !== 2 && bits !== 3 && bits !== 4) {
    throw new CalderaError('E_VALUE', `normalFloatQuantizer: bits must be 2, 3 or 4, got ${String(bits)}`);
  }
  const granularity = options.granularity ?? (options.groupSize !== undefined ? 'group' : 'tensor');
  const groupSize = options.groupSize ?? 64;
  checkScalarOptions('normalFloatQuantizer', bits, granularity, groupSize);
  const descriptor: QuantizerDescriptor = { kind: 'nf', bits, granularity, groupSize };
  const levels = nfLevels(bits);
  const L = levels.length;
  // decision thresholds: midpoints between neighbouring levels (nearest level; a tie goes to the lower level)
  const mids = new Float64Array(L - 1);
  for (let i = 0; i < L - 1; i++) mids[i] = (levels[i]! + levels[i + 1]!) / 2;
  return {
    descriptor,
    bitsPerWeight(shape) {
      const n = costedValueCount(shape, 'normalFloatQuantizer.bitsPerWeight');
      return (n * bits + groupCount(shape, granularity, groupSize) * 32) / n;
    },
    quantize(t: Tensor): QuantizedTensor {
      const x = finiteValues(t, 'normalFloatQuantizer.quantize');
      const scales = new Float32Array(groupCount(t.shape, granularity, groupSize));
      const codes = new Uint8Array(x.length);
      forEachGroup(t.shape, granularity, groupSize, (start, len, g) => {
        let amax = 0;
        for (let i = start; i < start + len; i++) amax = Math.max(amax, Math.abs(x[i]!));
        const s = Math.fround(Math.max(amax, 1e-8));
        scales[g] = s;
        for (let i = start; i < start + len; i++) {
          const v = x[i]! / s;
          let k = 0;
          while (k < L - 1 && v > mids[k]!) k++;
          codes[i] = k;
        }
      });
      return { descriptor, shape: [...t.shape], codes: [codes], params: { scales } };
    },
    dequantize(q: QuantizedTensor): Tensor<'f32'> {
      checkDescriptor(q, descriptor, 'normalFloatQuantizer.dequantize');
      const groups = groupCount(q.shape, granularity, groupSize);
      const count = checkQuantizedLengths(q, 1, 1, groups, false, 'normalFloatQuantizer.dequantize');
      const codes = q.codes[0]!;
      const out = new Float32Array(count);
      forEachGroup(q.shape, granularity, groupSize, (start, len, g) => {
        const s = q.params.scales[g]!;
        for (let i = start; i < start + len; i++) {
          const c = codes[i]!;
          if (c >= L) badCode('normalFloatQuantizer.dequantize', i, c, L - 1);
          out[i] = levels[c]! * s;
        }
      });
      return tensor('f32', q.shape, out);
    },
  };
}
