import { describe, expect, it } from 'vitest';
import { Rng, tensor, transpose } from '@caldera/core';
import { nfLevels, normalFloatQuantizer, normalQuantile } from './normal-float.js';
import { uniformQuantizer } from './uniform.js';

function gauss(n: number, seed: number): Float32Array {
  return new Rng(seed).fillNormal(new Float32Array(n));
}
function mse(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i]! - b[i]!) ** 2;
  return s / a.length;
}

/**
 * E[(x − s·level(x/s))²] for x ~ N(0,1) by the midpoint rule on [−s, s] (step 1e-4·s; the tails beyond the absmax
 * s of 200k samples carry < 1e-5 of the mass), i.e. the analytic MSE given the scale the data produced.
 */
function analyticMse(levels: ArrayLike<number>, s: number): number {
  const h = 1e-4 * s;
  let e = 0;
  for (let x = -s + h / 2; x < s; x += h) {
    let best = Infinity;
    for (let k = 0; k < levels.length; k++) best = Math.min(best, (x - s * levels[k]!) ** 2);
    e += (best * Math.exp((-x * x) / 2) * h) / Math.sqrt(2 * Math.PI);
  }
  return e;
}

describe('MSE on N(0,1) against numerical integration (per-tensor absmax scale)', () => {
  const x = tensor('f32', [1, 200_000], gauss(200_000, 9));
  it('NF4 and uniform 4-bit agree with the integral within 2 %', () => {
    const nf = normalFloatQuantizer({ bits: 4 });
    const qn = nf.quantize(x);
    const s = qn.params.scales[0]!;
    expect(Math.abs(mse(x.data, nf.dequantize(qn).data) / analyticMse(nfLevels(4), s) - 1)).toBeLessThan(
      0.02,
    );
    const un = uniformQuantizer({ bits: 4 });
    const qu = un.quantize(x);
    const lv = Array.from({ length: 15 }, (_, k) => (k - 7) / 7);
    expect(Math.abs(mse(x.data, un.dequantize(qu).data) / analyticMse(lv, s) - 1)).toBeLessThan(0.02);
  });
});

describe('uniform quantizer', () => {
  it('symmetric grid: q = round(x/s·(2^(b−1)−1)) with s = absmax (brute-force reference), every bit width', () => {
    const x = tensor('f32', [6, 50], gauss(300, 1));
    for (let bits = 2; bits <= 8; bits++) {
      const q = uniformQuantizer({ bits, granularity: 'channel' });
      const y = q.dequantize(q.quantize(x)).data;
      const qmax = 2 ** (bits - 1) - 1;
      for (let r = 0; r < 6; r++) {
        const row = x.data.subarray(r * 50, r * 50 + 50);
        const amax = Math.max(...Array.from(row, Math.abs));
        for (let i = 0; i < 50; i++) {
          // reference: nearest of the 2^b − 1 levels k·amax/qmax (f32 scale: 1e-6 relative)
          let best = Infinity;
          let bv = 0;
          for (let k = -qmax; k <= qmax; k++) {
            const d = Math.abs(row[i]! - (k * amax) / qmax);
            if (d < best - 1e-9) [best, bv] = [d, (k * amax) / qmax];
          }
          expect(Math.abs(y[r * 50 + i]! - bv)).toBeLessThan(1e-5 * amax);
        }
      }
    }
  });

  it('8-bit MSE on N(0,1) equals the high-resolution value Δ²/12 within 3 %', () => {
    const x = tensor('f32', [1, 200_000], gauss(200_000, 2));
    const q = uniformQuantizer({ bits: 8, symmetric: false });
    const qt = q.quantize(x);
    const step = qt.params.scales[0]!;
    // uniform error on [−Δ/2, Δ/2] has variance Δ²/12; 200k samples give ~0.3 % sampling error
    expect(Math.abs(mse(x.data, q.dequantize(qt).data) / ((step * step) / 12) - 1)).toBeLessThan(0.03);
  });

  it('asymmetric per-group with any group size (odd, not dividing the row) stays within half a step', () => {
    const x = tensor('f32', [5, 37], gauss(185, 3));
    const q = uniformQuantizer({ bits: 3, symmetric: false, groupSize: 10 });
    const qt = q.quantize(x);
    expect(qt.params.scales.length).toBe(5 * 4);
    const y = q.dequantize(qt).data;
    for (let i = 0; i < 185; i++) {
      const g = Math.floor(i / 37) * 4 + Math.floor((i % 37) / 10);
      expect(Math.abs(y[i]! - x.data[i]!)).toBeLessThanOrEqual(qt.params.scales[g]! / 2 + 1e-6);
    }
  });

  it('stochastic rounding is unbiased and reproducible from its seed', () => {
    const x = tensor('f32', [1, 100_000], new Float32Array(100_000).fill(0.3));
    const q = uniformQuantizer({ bits: 2, symmetric: false, rounding: 'stochastic', seed: 5 });
    // one group of equal values has range 0 → scale floor; use a 2-value spread instead
    x.data[0] = 0;
    x.data[1] = 1;
    const a = q.dequantize(q.quantize(x)).data;
    let mean = 0;
    for (let i = 2; i < a.length; i++) mean += a[i]! / (a.length - 2);
    // levels 0, 1/3, 2/3, 1: 0.3 rounds to 0 or 1/3 with P(1/3) = 0.9, mean 0.3; std error ≈ 1e-4
    expect(Math.abs(mean - 0.3)).toBeLessThan(1e-3);
    expect(Array.from(q.dequantize(q.quantize(x)).data)).toEqual(Array.from(a));
  });

  it('exact bitsPerWeight counts f32 scales (and zero points when asymmetric)', () => {
    expect(uniformQuantizer({ bits: 4, groupSize: 64 }).bitsPerWeight([128, 128])).toBe(4 + 32 / 64);
    expect(uniformQuantizer({ bits: 4, groupSize: 64, symmetric: false }).bitsPerWeight([128, 128])).toBe(5);
    expect(uniformQuantizer({ bits: 2, granularity: 'channel' }).bitsPerWeight([10, 100])).toBeCloseTo(
      2.32,
      12,
    );
    expect(uniformQuantizer({ bits: 3, groupSize: 10 }).bitsPerWeight([5, 37])).toBeCloseTo(
      3 + (20 * 32) / 185,
      12,
    );
  });

  it('accepts strided views and rejects bad input with CalderaError', () => {
    const x = tensor('f32', [4, 6], gauss(24, 4));
    const q = uniformQuantizer({ bits: 4 });
    const t = transpose(x);
    expect(q.dequantize(q.quantize(t)).shape).toEqual([6, 4]);
    expect(() => uniformQuantizer({ bits: 1 })).toThrow(/E_VALUE/);
    expect(() => uniformQuantizer({ bits: 4, groupSize: 0 })).toThrow(/E_VALUE/);
    const bad = tensor('f32', [2], [1, NaN]);
    expect(() => q.quantize(bad)).toThrow(/E_VALUE.*non-finite/);
  });

  it('rejects an unknown rounding mode instead of storing it in the descriptor', () => {
    expect(() => uniformQuantizer({ bits: 4, rounding: 'bogus' as never })).toThrow(
      /E_VALUE: uniformQuantizer: rounding/,
    );
  });

  it('dequantize rejects codes or scales that do not match the shape (they gave NaN)', () => {
    const x = tensor('f32', [2, 8], new Rng(2).fillNormal(new Float32Array(16)));
    for (const qz of [
      uniformQuantizer({ bits: 4, groupSize: 4 }),
      uniformQuantizer({ bits: 4, groupSize: 4, symmetric: false }),
      normalFloatQuantizer({ bits: 4, groupSize: 4 }),
    ]) {
      const q = qz.quantize(x);
      expect(() =>
        qz.dequantize({ ...q, params: { ...q.params, scales: q.params.scales.subarray(1) } }),
      ).toThrow(/E_SHAPE: .*dequantize: params.scales has 3 entries, shape \[2, 8\] needs 4/);
      expect(() => qz.dequantize({ ...q, codes: [q.codes[0]!.subarray(1)] })).toThrow(
        /E_SHAPE: .*code plane 0/,
      );
    }
    const asym = uniformQuantizer({ bits: 4, groupSize: 4, symmetric: false });
    const q = asym.quantize(x);
    expect(() => asym.dequantize({ ...q, params: { scales: q.params.scales } })).toThrow(/params.zeros/);
  });
});

describe('NormalFloat', () => {
  it('NF4 levels equal the published table (4 decimals) and NF2 is {−1, 0, .3379, 1}', () => {
    const pub = [
      -1, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.091, 0, 0.0796, 0.1609, 0.2461, 0.3379, 0.4407,
      0.5626, 0.723, 1,
    ];
    const l4 = nfLevels(4);
    for (let i = 0; i < 16; i++) expect(Math.abs(l4[i]! - pub[i]!)).toBeLessThan(6e-5);
    expect(Array.from(nfLevels(2), (v) => Math.round(v * 1e4) / 1e4)).toEqual([-1, 0, 0.3379, 1]);
    expect(nfLevels(3).length).toBe(8);
  });

  it('normalQuantile inverts Φ (checked at points with known quantiles)', () => {
    expect(normalQuantile(0.5)).toBeCloseTo(0, 9);
    expect(normalQuantile(0.975)).toBeCloseTo(1.959963985, 7);
    expect(normalQuantile(0.001)).toBeCloseTo(-3.090232306, 7);
  });

  it('rounds to the nearest level of absmax-scaled values (brute force) and NF4 beats uniform 4-bit on N(0,1)', () => {
    const x = tensor('f32', [64, 64], gauss(4096, 6));
    const nf = normalFloatQuantizer({ bits: 4, groupSize: 64 });
    const qt = nf.quantize(x);
    const lv = nfLevels(4);
    for (let g = 0; g < 64; g++) {
      const s = qt.params.scales[g]!;
      for (let i = g * 64; i < g * 64 + 64; i++) {
        const v = x.data[i]! / s;
        const best = Math.min(...Array.from(lv, (l) => Math.abs(l - v)));
        expect(Math.abs(lv[qt.codes[0]![i]!]! - v)).toBeCloseTo(best, 12);
      }
    }
    const uni = uniformQuantizer({ bits: 4, groupSize: 64 });
    const eNf = mse(x.data, nf.dequantize(qt).data);
    expect(eNf).toBeLessThan(mse(x.data, uni.dequantize(uni.quantize(x)).data));
    expect(nf.bitsPerWeight([64, 64])).toBe(4.5);
  });
});
