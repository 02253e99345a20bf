import { describe, expect, it } from 'vitest';
import { parseCalderaMeta, Rng, tensor, type Tensor } from '@caldera/core';
import { caldera } from './caldera.js';
import {
  applyDecomposition,
  calderaCheckpointMeta,
  fromCheckpointTensors,
  paperBitsFromMeta,
  reconstruct,
  toCheckpointTensors,
  withTrainableFactors,
} from './decomposition.js';
import { validateLayer } from './test-util.js';

function randomMatrix(m: number, n: number, seed: number): Tensor<'f32'> {
  const rng = new Rng(seed);
  return tensor('f32', [m, n], rng.fillNormal(new Float32Array(m * n)));
}

function identity(n: number): Tensor<'f64'> {
  const h = new Float64Array(n * n);
  for (let i = 0; i < n; i++) h[i * n + i] = 1;
  return tensor('f64', [n, n], h);
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0;
  for (let i = 0; i < a.length; i++) e = Math.max(e, Math.abs(a[i]! - b[i]!));
  return e;
}

// 20 × 36 pads to 24 × 40 with Hadamard (K = 12 · 2, 40 = 20 · 2), so padding is exercised.
const m = 20;
const n = 36;
const d = caldera(randomMatrix(m, n, 1), identity(n), { rank: 6, outerIters: 1, lplrIters: 1, seed: 3 });
const x = new Rng(5).fillNormal(new Float32Array(3 * n));

describe('withTrainableFactors (LoRA split, algorithm brief §7.1)', () => {
  it('moves rank components into f32 without changing Ŵ, Q codes or the remaining L/R codes', () => {
    expect(d.padded).toEqual([24, 40]);
    const s = withTrainableFactors(d, 2);
    expect(s.rank).toBe(4);
    expect(s.ft!.rank).toBe(2);
    // Q is shared untouched; the quantized factors keep rows 2..5 of their code planes byte for byte
    expect(s.q).toBe(d.q);
    const g = 40 / 8;
    const rPlanes = d.r.kind === 'lattice' ? d.r.codes.planes : [];
    const sPlanes = s.r.kind === 'lattice' ? s.r.codes.planes : [];
    expect(sPlanes.length).toBe(rPlanes.length);
    sPlanes.forEach((p, i) => expect(Array.from(p)).toEqual(Array.from(rPlanes[i]!.subarray(2 * g))));
    // Ŵ equal up to f32 summation order: entries are O(1) sums of ≤ 6·40 products, so 1e-5 absolute is ~100 ulp
    expect(maxAbsDiff(reconstruct(s).data, reconstruct(d).data)).toBeLessThan(1e-5);
    expect(maxAbsDiff(applyDecomposition(s, x, 3), applyDecomposition(d, x, 3))).toBeLessThan(1e-4);
  });

  it('grows an existing trainable part and clamps at the total rank', () => {
    const s = withTrainableFactors(withTrainableFactors(d, 2), 9);
    expect(s.rank).toBe(0);
    expect(s.ft!.rank).toBe(6);
    expect(withTrainableFactors(s, 3)).toBe(s); // already has more trainable components than asked
    expect(maxAbsDiff(applyDecomposition(s, x, 3), applyDecomposition(d, x, 3))).toBeLessThan(1e-4);
    expect(() => withTrainableFactors(d, -1)).toThrow(/non-negative/);
  });

  it('a checkpoint entry without paperBitsPerWeight or error reads back with the computed bits and a NaN error', () => {
    // the compressor's own accounting (caldera, withTrainableFactors, densified factors) against the formula from
    // the caldera.json fields alone: the same sums in a different order, so equal to f64 round-off
    const dense = caldera(randomMatrix(m, n, 2), identity(n), {
      rank: 3,
      qBits: 3,
      lBits: 16,
      rBits: 16,
      seed: 4,
    });
    for (const layer of [d, withTrainableFactors(d, 2), withTrainableFactors(d, 9), dense]) {
      const { tensors, meta } = toCheckpointTensors('blk.q', layer);
      expect(paperBitsFromMeta(meta)).toBeCloseTo(layer.paperBitsPerWeight, 12);
      const { paperBitsPerWeight: _p, error: _e, ...bare } = meta;
      const back = fromCheckpointTensors('blk.q', (k) => tensors[k], bare);
      expect(back.paperBitsPerWeight).toBeCloseTo(layer.paperBitsPerWeight, 12);
      expect(back.error).toBeNaN();
      // written again, the unknown error is left out (JSON has no NaN) rather than written as null
      expect('error' in toCheckpointTensors('blk.q', back).meta).toBe(false);
    }
  });

  it("calderaCheckpointMeta: a valid caldera.json whose headline is the layers' paper bits weighted by m·n", () => {
    const a = toCheckpointTensors('a', d).meta;
    const b = toCheckpointTensors('b', withTrainableFactors(d, 2)).meta;
    const { paperBitsPerWeight: _p, ...c } = toCheckpointTensors('c', d).meta; // computed when absent
    const meta = calderaCheckpointMeta({ a, b, c }, { method: 'test', seed: 7 });
    // the three layers have the same m·n: the headline is the plain mean
    const want = (2 * d.paperBitsPerWeight + withTrainableFactors(d, 2).paperBitsPerWeight) / 3;
    expect(meta.bitsPerWeight).toBeCloseTo(want, 12);
    expect(parseCalderaMeta(JSON.parse(JSON.stringify(meta)))).toEqual(meta);
    expect(meta).toMatchObject({ format: 'caldera', version: 1, method: 'test', seed: 7, options: {} });
  });

  it('accounts trainable components at 32 bits (paper formula with k_ft·32 + (k − k_ft)·B)', () => {
    const s = withTrainableFactors(d, 2);
    expect(s.paperBitsPerWeight).toBeCloseTo(2 + ((4 * 4 + 2 * 32) * (m + n)) / (m * n), 12);
    expect(s.bitsPerWeight - d.bitsPerWeight).toBeCloseTo((2 * (32 - 4) * (24 + 40)) / (m * n), 12);
  });

  it('round-trips through the checkpoint tensors (L_ft with g folded in) and validates', () => {
    const s = withTrainableFactors(d, 2);
    const ck = toCheckpointTensors('blk.q', s);
    const { tensors, meta } = ck;
    expect(meta.rank).toBe(6);
    expect(meta.ftRank).toBe(2);
    expect(tensors['blk.q.caldera.L_ft']!.shape).toEqual([24, 2]);
    expect(tensors['blk.q.caldera.L']!.shape).toEqual([4, 3]);
    validateLayer('blk.q', ck);
    const back = fromCheckpointTensors('blk.q', (k) => tensors[k], meta);
    expect(back.ft!.rank).toBe(2);
    // folding g into Q_scale / L_scale / L_ft rounds each once in f32: relative 1e-6 of O(1) outputs
    expect(maxAbsDiff(applyDecomposition(back, x, 3), applyDecomposition(s, x, 3))).toBeLessThan(1e-4);
    const bad: Record<string, Tensor> = { ...tensors, 'blk.q.caldera.R_ft': tensor('f32', [2, 8]) };
    expect(() => fromCheckpointTensors('blk.q', (k) => bad[k], meta)).toThrow(/R_ft.*expected f32 \[2, 40\]/);
  });
});
