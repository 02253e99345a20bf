/**
 * Uniform scalar quantizer (brief §4): symmetric (CALDERA's absmax grid `q = round(x/s·(2^(b−1)−1))`, 2^b − 1
 * levels, code `q + 2^(b−1) − 1`) or asymmetric (min/max grid with 2^b levels, `x ≈ zero + q·scale`), per tensor,
 * per channel (first axis) or per group of any size along the last axes; round to nearest or stochastic rounding
 * (unbiased, seeded).
 */
import { assertObject, CalderaError, describeValue, Rng, tensor, type Tensor } from '@caldera/core';
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

/** Options of {@link uniformQuantizer}. */
export interface UniformOptions {
  /** Bits per value, 2–8. */
  bits: number;
  /** Symmetric absmax grid (`true`, default) or asymmetric min/max grid (`false`). */
  symmetric?: boolean;
  /** Scale sharing. Default `'group'` when `groupSize` is given, else `'tensor'`. */
  granularity?: Granularity;
  /** Values per group along each row (with `granularity: 'group'`). Default 64. */
  groupSize?: number;
  /** `'nearest'` (default) or `'stochastic'` (round up with probability equal to the fractional part). */
  rounding?: 'nearest' | 'stochastic';
  /**
   * Seed of the stochastic rounding, an integer (else `E_VALUE`); as `Rng`'s, taken modulo 2³² (2³² rounds as 0 does).
   * Default 0.
   */
  seed?: number;
}

/** Smallest scale used for an all-zero group (as CALDERA's 1e-8 floor). */
const SCALE_FLOOR = 1e-8;

/**
 * Create a uniform quantizer. Throws `E_VALUE` for bits outside 2–8, bad group options, a `symmetric` that is not a
 * boolean, a `rounding` other than `'nearest'`/`'stochastic'` or a seed that is not an integer.
 */
export function uniformQuantizer(options: UniformOptions): Quantizer {
  assertObject(options, 'uniformQuantizer', 'options');
  const bits = options.bits;
  if (!Number.isInteger(bits) || bits < 2 || bits > 8) {
    throw new CalderaError('E_VALUE', `uniformQuantizer: bits must be an integer in 2..8, got ${bits}`);
  }
  const granularity = options.granularity ?? (options.groupSize !== undefined ? 'group' : 'tensor');
  const groupSize = options.groupSize ?? 64;
  checkScalarOptions('uniformQuantizer', bits, granularity, groupSize);
  const rounding = options.rounding ?? 'nearest';
  if (rounding !== 'nearest' && rounding !== 'stochastic') {
    throw new CalderaError(
      'E_VALUE',
      `uniformQuantizer: rounding must be 'nearest' or 'stochastic', got ${String(rounding)}`,
    );
  }
  const symmetricOption = options.symmetric ?? true;
  if (typeof symmetricOption !== 'boolean') {
    throw new CalderaError(
      'E_VALUE',
      `uniformQuantizer: symmetric must be true or false, got ${describeValue(symmetricOption)} ${JSON.stringify(symmetricOption)}`,
    );
  }
  const seed = options.seed ?? 0;
  if (!Number.isInteger(seed)) {
    throw new CalderaError('E_VALUE', `uniformQuantizer: seed must be an integer, got ${String(seed)}`);
  }
  const descriptor: QuantizerDescriptor = {
    kind: 'uniform',
    bits,
    symmetric: symmetricOption,
    granularity,
    groupSize,
    rounding,
    seed,
  };
  const symmetric = descriptor.symmetric;
  const qmax = symmetric ? 2 ** (bits - 1) - 1 : 2 ** bits - 1;
  return {
    descriptor,
    bitsPerWeight(shape) {
      const n = costedValueCount(shape, 'uniformQuantizer.bitsPerWeight');
      const groups = groupCount(shape, granularity, groupSize);
      return (n * bits + groups * (symmetric ? 32 : 64)) / n;
    },
    quantize(t: Tensor): QuantizedTensor {
      const x = finiteValues(t, 'uniformQuantizer.quantize');
      const ng = groupCount(t.shape, granularity, groupSize);
      const scales = new Float32Array(ng);
      const zeros = symmetric ? undefined : new Float32Array(ng);
      const codes = new Uint8Array(x.length);
      const rng = descriptor.rounding === 'stochastic' ? new Rng(descriptor.seed) : null;
      const round = rng ? (v: number) => Math.floor(v + rng.uniform()) : Math.round;
      forEachGroup(t.shape, granularity, groupSize, (start, len, g) => {
        if (symmetric) {
          let amax = 0;
          for (let i = start; i < start + len; i++) amax = Math.max(amax, Math.abs(x[i]!));
          const s = Math.fround(Math.max(amax, SCALE_FLOOR) / qmax); // step, as stored (f32)
          scales[g] = s;
          for (let i = start; i < start + len; i++) {
            const q = Math.max(-qmax, Math.min(qmax, round(x[i]! / s)));
            codes[i] = q + qmax;
          }
        } else {
          let lo = Infinity;
          let hi = -Infinity;
          for (let i = start; i < start + len; i++) {
            lo = Math.min(lo, x[i]!);
            hi = Math.max(hi, x[i]!);
          }
          const s = Math.fround(Math.max(hi - lo, SCALE_FLOOR) / qmax);
          const z = Math.fround(lo);
          scales[g] = s;
          zeros![g] = z;
          for (let i = start; i < start + len; i++)
            codes[i] = Math.max(0, Math.min(qmax, round((x[i]! - z) / s)));
        }
      });
      return {
        descriptor,
        shape: [...t.shape],
        codes: [codes],
        params: zeros ? { scales, zeros } : { scales },
      };
    },
    dequantize(q: QuantizedTensor): Tensor<'f32'> {
      checkDescriptor(q, descriptor, 'uniformQuantizer.dequantize');
      const groups = groupCount(q.shape, granularity, groupSize);
      const count = checkQuantizedLengths(q, 1, 1, groups, !symmetric, 'uniformQuantizer.dequantize');
      const codes = q.codes[0]!;
      const out = new Float32Array(count);
      const { scales, zeros } = q.params;
      const what = 'uniformQuantizer.dequantize';
      const cmax = symmetric ? 2 * qmax : qmax; // the largest code quantize writes
      forEachGroup(q.shape, granularity, groupSize, (start, len, g) => {
        const s = scales[g]!;
        for (let i = start; i < start + len; i++) {
          const c = codes[i]!;
          if (c > cmax) badCode(what, i, c, cmax);
          out[i] = symmetric ? (c - qmax) * s : zeros![g]! + c * s;
        }
      });
      return tensor('f32', q.shape, out);
    },
  };
}
