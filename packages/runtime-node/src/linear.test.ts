import { describe, expect, it } from 'vitest';
import { bf16ArrayToF32, f16ArrayToF32, f32ArrayToBf16, f32ArrayToF16, Rng, tensor } from '@caldera/core';
import {
  applyDecomposition,
  caldera,
  randomDecomposition,
  toCheckpointTensors,
  withTrainableFactors,
  type Decomposition,
} from '@caldera/lowrank';
import { CalderaLinear, DenseF16Linear, DenseLinear } from './linear.js';
import { BatchWorkspace } from './kernels/batch-workspace.js';

describe('linear layers', () => {
  const rng = new Rng(21);

  /**
   * A CALDERA layer's forward equals `Decomposition.apply` for each row count: the same sums in f32 in different
   * orders (at most 128 terms), so 1e-4 relative to the output scale.
   */
  const expectMatchesApply = (layer: CalderaLinear, d: Decomposition, rowCounts: number[]) => {
    const n = d.shape[1];
    for (const rows of rowCounts) {
      const x = rng.fillNormal(new Float32Array(rows * n));
      const a = layer.forward(x, rows);
      const b = applyDecomposition(d, x, rows);
      const scale = Math.max(...Array.from(b, Math.abs));
      for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(1e-4 * scale);
    }
  };

  it('dense layers write into options.out when it is long enough: the same values, a view of its start', () => {
    const [m, n] = [40, 24];
    const w = rng.fillNormal(new Float32Array(m * n));
    const bias = rng.fillNormal(new Float32Array(m));
    const layers = [
      new DenseLinear(tensor('f32', [m, n], w), bias),
      new DenseF16Linear(f32ArrayToBf16(w), m, n, bias, 'bf16'),
    ];
    for (const layer of layers)
      for (const rows of [1, 4, 5, 33]) {
        const x = rng.fillNormal(new Float32Array(rows * n));
        const want = layer.forward(x, rows);
        const out = new Float32Array(rows * m + 7).fill(NaN);
        const got = layer.forward(x, rows, { out });
        expect(got).toEqual(want);
        expect(got.buffer).toBe(out.buffer);
        expect(got.byteOffset).toBe(0);
        // too short: a new array, out untouched
        const short = new Float32Array(rows * m - 1).fill(NaN);
        expect(layer.forward(x, rows, { out: short }).buffer).not.toBe(short.buffer);
        expect(short.every(Number.isNaN)).toBe(true);
      }
  });

  it('f16 layer equals the f32 layer of the same (rounded) weights, decode and batched paths', () => {
    const m = 300; // crosses the 256-row conversion chunk
    const n = 40;
    const bits = f32ArrayToF16(rng.fillNormal(new Float32Array(m * n)));
    const bias = rng.fillNormal(new Float32Array(m));
    const f16 = new DenseF16Linear(bits, m, n, bias);
    const f32 = new DenseLinear(tensor('f32', [m, n], f16ArrayToF32(bits)), bias);
    expect(f16.weightBytes).toBe(m * n * 2);
    expect(f32.weightBytes).toBe(m * n * 4);
    for (const rows of [1, 3, 9]) {
      const x = rng.fillNormal(new Float32Array(rows * n));
      const a = f16.forward(x, rows);
      const b = f32.forward(x, rows);
      // same products summed in a different order in f32 (n = 40 terms of size ~1): 1e-4 absolute is ample
      for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(1e-4);
    }
    expect(() => f16.forward(new Float32Array(3), 1)).toThrow(/E_SHAPE/);
  });

  it('bf16 layer is bit for bit the f32 layer of the widened weights: decode kernel, batch path (SIMD and TypeScript conversion), bias', () => {
    const m = 600; // crosses the 512-row conversion block
    const n = 40;
    const bits = f32ArrayToBf16(rng.fillNormal(new Float32Array(m * n)));
    const bias = rng.fillNormal(new Float32Array(m));
    const bf16 = new DenseF16Linear(bits, m, n, bias, 'bf16');
    const wide = bf16ArrayToF32(bits);
    const f32 = new DenseLinear(tensor('f32', [m, n], wide), bias);
    expect(bf16.format).toBe('bf16');
    expect(bf16.bits).toBeInstanceOf(Uint16Array);
    expect(Array.from(bf16.bits)).toEqual(Array.from(bits));
    expect(bf16.weightBytes).toBe(m * n * 2);
    expect(bf16.weightF32()).toEqual(wide);
    // a workspace without WebAssembly: the TypeScript conversion of the batch path
    const noSimd = Object.create(BatchWorkspace.prototype, { available: { value: false } }) as BatchWorkspace;
    for (const rows of [1, 3, 4, 5, 9, 40]) {
      const x = rng.fillNormal(new Float32Array(rows * n));
      const want = f32.forward(x, rows);
      // the same f32 weights through the same kernels (matrix–vector ≤ 4 rows, gemm above): identical bits
      expect(bf16.forward(x, rows)).toEqual(want);
      expect(bf16.forward(x, rows, { workspace: new BatchWorkspace() })).toEqual(want);
      expect(bf16.forward(x, rows, { workspace: noSimd })).toEqual(want);
    }
    expect(() => bf16.forward(new Float32Array(3), 1)).toThrow(/E_SHAPE.*bf16 linear/);
    // an f16 layer of the same bits is another matrix: the format is not ignored
    const x = rng.fillNormal(new Float32Array(n));
    expect(new DenseF16Linear(bits, m, n, bias).forward(x, 1)).not.toEqual(f32.forward(x, 1));
    expect(new DenseF16Linear(bits, m, n).weightF32()).toEqual(f16ArrayToF32(bits));
    expect(() => new DenseF16Linear(bits, m, n, null, 'f8' as 'f16')).toThrow(/E_VALUE/);
  });

  it('CALDERA layer equals Decomposition.apply: fused kernel, batch path and TypeScript path (table product, gemm for batches), with a bias', () => {
    const w = tensor('f32', [24, 72], rng.fillNormal(new Float32Array(24 * 72)));
    const d = caldera(w, null, { rank: 4, outerIters: 1, lplrIters: 1 });
    const bias = rng.fillNormal(new Float32Array(24));
    for (const kernel of [true, false]) {
      const layer = new CalderaLinear(d, bias, { kernel });
      expect(layer.fused).toBe(kernel); // WebAssembly SIMD runs on Node 20
      for (const rows of [1, 7, 37]) {
        // 7 rows: the fused kernel per row; 37 rows: the batch path (workspace + gemm; ≥ 20 rows)
        const x = rng.fillNormal(new Float32Array(rows * 72));
        const a = layer.forward(x, rows);
        const b = applyDecomposition(d, x, rows);
        const scale = Math.max(...Array.from(b, Math.abs));
        // same sums in f32 in different orders (np = 128 terms): 1e-4 relative to the output scale
        for (let r = 0; r < rows; r++)
          for (let i = 0; i < 24; i++)
            expect(Math.abs(a[r * 24 + i]! - bias[i]! - b[r * 24 + i]!)).toBeLessThan(1e-4 * scale);
      }
      expect(layer.weightBytes).toBeLessThan(24 * 72 * 2);
      // `d` gives the decomposition back, Q's planes included (rebuilt from the kernel's copy when it holds them)
      expect(layer.d).toEqual(d);
      if (kernel) expect(layer.d.q!.planes[0]).not.toBe(d.q!.planes[0]); // not kept: the kernel's copy is the one held
    }
  });

  it("a CALDERA layer's weightBytes are its checkpoint tensors' bytes exactly (ceil of bits·m·n/8 counted 1 more)", () => {
    const r = new Rng(1);
    for (const [m, n, k] of [
      [40, 72, 16], // bits·n·m/8 = 1852.0000000000002 in f64: 1853 before
      [101, 101, 8], // 3964.0000000000005: 3965
      [300, 144, 8], // 13644.000000000002: 13645
      [13, 7, 4],
    ] as const) {
      const d = randomDecomposition(m, n, k, r);
      const bytes = Object.values(toCheckpointTensors('x', d).tensors).reduce(
        (s, t) => s + t.data.byteLength,
        0,
      );
      expect(new CalderaLinear(d).weightBytes, `${m}×${n} rank ${k}`).toBe(bytes);
    }
  });

  it('CALDERA layer with a trainable LoRA part (L_ft, R_ft) equals Decomposition.apply, decode and batched', () => {
    const w = tensor('f32', [24, 72], rng.fillNormal(new Float32Array(24 * 72)));
    const d = withTrainableFactors(caldera(w, null, { rank: 6, outerIters: 1, lplrIters: 1 }), 2);
    // perturb the trainable part so a layer that ignored it would differ by O(1)
    for (let i = 0; i < d.ft!.l.length; i++) d.ft!.l[i]! += 0.5 * rng.normal();
    expectMatchesApply(new CalderaLinear(d), d, [1, 7]);
  });

  it('CALDERA layers with 3- and 4-bit RVQ Q equal Decomposition.apply (decoded per block of rows, decode and batch)', () => {
    const w = tensor('f32', [300, 64], rng.fillNormal(new Float32Array(300 * 64))); // 300 rows: crosses a 256-row block
    for (const qBits of [3, 4] as const) {
      const d = caldera(w, null, { rank: 4, qBits, outerIters: 1, lplrIters: 1 });
      const layer = new CalderaLinear(d);
      expectMatchesApply(layer, d, [1, 6]);
      // storage stays in codes: about qBits + low-rank bits per weight, far below f32
      expect(layer.weightBytes).toBeLessThan(300 * 64);
    }
  });

  it('a CALDERA layer without Q (low rank only) equals Decomposition.apply and holds no Q codes', () => {
    const w = tensor('f32', [40, 72], rng.fillNormal(new Float32Array(40 * 72)));
    for (const lrBits of [4, 16] as const) {
      const d = caldera(w, null, { rank: 6, qBits: 0, lBits: lrBits, rBits: lrBits, lplrIters: 1 });
      expect(d.q).toBeNull();
      const layer = new CalderaLinear(d);
      expect(layer.fused).toBe(false); // the fused kernel is 2-bit Q's
      expectMatchesApply(layer, d, [1, 7, 37]);
      expect(layer.d).toBe(d);
      // without its factors too, nothing is left: refused (Ŵ would be all zeros)
      expect(() => new CalderaLinear({ ...d, rank: 0 })).toThrow(
        'E_VALUE: CalderaLinear: no Q and no low-rank factors (rank 0): the layer would be all zeros',
      );
      // resident bytes: the same layer with a 4-bit RVQ Q (unfused, as this one) holds that Q's two code planes, 4 bits
      // per padded weight, on top; without Q, nothing for it
      const { meta } = toCheckpointTensors('p', d);
      const [mp, np] = d.padded;
      const withQ = { ...meta, codecs: { ...meta.codecs, Q: 'e8p12-rvq4' } };
      expect(CalderaLinear.footprint(withQ, false).own - CalderaLinear.footprint(meta, false).own).toBe(
        (mp * np) / 2,
      );
    }
  });
});
