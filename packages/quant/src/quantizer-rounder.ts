/**
 * Adapt a whole-tensor {@link Quantizer} to LDLQ: the scales are fixed from W first (as the quantizer would choose
 * them), then LDLQ rounds the feedback-corrected values on that fixed grid. The LDLQ codes together with the
 * returned `params` form a `QuantizedTensor` the quantizer's `dequantize` accepts.
 */
import { assertObject, CalderaError, type Tensor } from '@caldera/core';
import { latticeScales } from './lattice-quantizer.js';
import { nfLevels } from './normal-float.js';
import {
  finiteValues,
  rowsCols,
  type QuantParams,
  type Quantizer,
  type QuantizerDescriptor,
} from './quantizer.js';
import { e8pRounder, rvqRounder, type GroupRounder } from './rounder.js';

/** Result of {@link rounderFromQuantizer}. */
export interface QuantizerRounder {
  /** Pass as `ldlq(w, h, { quantizer: rounder })`. */
  rounder: GroupRounder;
  /** The fixed scale parameters; `{ descriptor, shape, codes: ldlqResult.codes, params }` dequantizes. */
  params: QuantParams;
}

/**
 * A group rounder on `q`'s grid with the scales `q` picks for `w` (2-D `[m, n]`). Lattice codecs round groups of
 * 8 columns with one tensor scale; uniform and NF codecs round single values with their per-tensor, per-row or
 * per-group scales (a group of a row spans `groupSize` columns). Stochastic rounding is replaced by
 * round-to-nearest (LDLQ's feedback already decorrelates the error).
 */
export function rounderFromQuantizer(q: Quantizer, w: Tensor): QuantizerRounder {
  assertObject(q, 'rounderFromQuantizer', 'q', 'a Quantizer');
  assertObject(w, 'rounderFromQuantizer', 'W', 'a tensor');
  if (w.shape.length !== 2) {
    throw new CalderaError('E_SHAPE', `rounderFromQuantizer: W must be 2-D, got [${w.shape.join(', ')}]`);
  }
  assertObject(q.descriptor, 'rounderFromQuantizer', 'q.descriptor', 'a quantizer descriptor');
  const d = q.descriptor;
  if (d.kind === 'e8p12' || d.kind === 'e8p12-rvq3' || d.kind === 'e8p12-rvq4') {
    const values = finiteValues(w, 'rounderFromQuantizer');
    const { divisor: s, stored } = latticeScales(values, d.inputScale); // as the quantizer stores it
    const base = d.kind === 'e8p12' ? e8pRounder() : rvqRounder(d.kind === 'e8p12-rvq4' ? 4 : 3);
    const y = new Float32Array(0);
    let scratch = y;
    const rounder: GroupRounder = {
      ...base,
      round(x, rows, out, planes, group, stride) {
        if (scratch.length < rows * 8) scratch = new Float32Array(rows * 8);
        for (let i = 0; i < rows * 8; i++) scratch[i] = x[i]! / s;
        base.round(scratch, rows, out, planes, group, stride);
        for (let i = 0; i < rows * 8; i++) out[i]! *= stored;
      },
    };
    return { rounder, params: { scales: Float32Array.of(stored) } };
  }
  const sd = d as Extract<QuantizerDescriptor, { kind: 'uniform' | 'nf' }>; // the lattice kinds returned above
  const params = q.quantize(w).params;
  const [, cols] = rowsCols(w.shape);
  const gran = sd.granularity;
  const gpr = Math.ceil(cols / sd.groupSize);
  const groupOf = (r: number, c: number) =>
    gran === 'tensor' ? 0 : gran === 'channel' ? r : r * gpr + Math.floor(c / sd.groupSize);
  const { scales, zeros } = params;
  let roundValue: (v: number, gi: number) => [code: number, value: number];
  if (sd.kind === 'uniform' && sd.symmetric) {
    const qmax = 2 ** (sd.bits - 1) - 1;
    roundValue = (v, gi) => {
      const k = Math.max(-qmax, Math.min(qmax, Math.round(v / scales[gi]!)));
      return [k + qmax, k * scales[gi]!];
    };
  } else if (sd.kind === 'uniform') {
    const qmax = 2 ** sd.bits - 1;
    roundValue = (v, gi) => {
      const k = Math.max(0, Math.min(qmax, Math.round((v - zeros![gi]!) / scales[gi]!)));
      return [k, zeros![gi]! + k * scales[gi]!];
    };
  } else {
    const lv = nfLevels(sd.bits as 2 | 3 | 4);
    roundValue = (v, gi) => {
      const t = v / scales[gi]!;
      let best = 0;
      for (let k = 1; k < lv.length; k++) if (Math.abs(lv[k]! - t) < Math.abs(lv[best]! - t)) best = k;
      return [best, lv[best]! * scales[gi]!];
    };
  }
  const rounder: GroupRounder = {
    dim: 1,
    planes: ['u8'],
    bitsPerWeight: sd.bits,
    round(x, rows, out, planes, group, stride) {
      const p = planes[0]!;
      for (let r = 0; r < rows; r++) {
        const [code, value] = roundValue(x[r]!, groupOf(r, group));
        p[r * stride + group] = code;
        out[r] = value;
      }
    },
  };
  return { rounder, params };
}
