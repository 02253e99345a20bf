import { describe, expect, it } from 'vitest';
import { Rng, tensor } from '@caldera/core';
import {
  HADAMARD_BASE_ORDERS,
  hadamard,
  hadamardBase,
  hadamardFactor,
  hadamardRowsInPlace,
  hadamardSupported,
  nextHadamardSize,
} from './hadamard.js';

describe('Hadamard base matrices', () => {
  for (const k of HADAMARD_BASE_ORDERS) {
    it(`H_${k}·H_${k}ᵀ = ${k}·I with ±1 entries`, () => {
      const h = hadamardBase(k);
      for (const v of h) expect(Math.abs(v)).toBe(1);
      for (let i = 0; i < k; i++)
        for (let j = 0; j < k; j++) {
          let s = 0;
          for (let t = 0; t < k; t++) s += h[i * k + t]! * h[j * k + t]!;
          expect(s).toBe(i === j ? k : 0);
        }
    });
  }
});

describe('hadamard transform', () => {
  it('factors real model sizes and pads unsupported ones', () => {
    expect(hadamardFactor(4096)).toEqual({ K: 1, p: 12 });
    expect(hadamardFactor(14336)).toEqual({ K: 28, p: 9 });
    expect(hadamardFactor(768)).toEqual({ K: 12, p: 6 });
    expect(hadamardFactor(11008)).toEqual({ K: 172, p: 6 }); // Llama-2-7B's MLP: no padding
    expect(hadamardFactor(13824)).toEqual({ K: 108, p: 7 }); // Llama-2-13B's MLP
    expect(hadamardFactor(4992)).toEqual({ K: 156, p: 5 });
    expect(hadamardFactor(3328)).toEqual({ K: 52, p: 6 });
    expect(hadamardFactor(5632)).toEqual({ K: 44, p: 7 }); // TinyLlama's MLP
    expect(hadamardFactor(4864)).toEqual({ K: 76, p: 6 }); // Qwen2-0.5B's MLP
    expect(hadamardFactor(18944)).toEqual({ K: 148, p: 7 }); // Qwen2-7B's MLP
    expect(hadamardSupported(11000)).toBe(false); // odd part 1375: no construction
    expect(nextHadamardSize(11000)).toBe(11008); // the first supported size ≥ 11000
    expect(hadamardSupported(nextHadamardSize(11000))).toBe(true);
  });

  for (const n of [1, 8, 12, 40, 56, 96, 240, 104, 172]) {
    it(`equals the explicit dense (H_K ⊗ H_2^p)/√n and is orthogonal (n = ${n})`, () => {
      const { K, p } = hadamardFactor(n)!;
      const P = 2 ** p;
      const hk = hadamardBase(K);
      const dense = (i: number, j: number) => {
        const [a, b] = [Math.floor(i / P), i % P];
        const [a2, b2] = [Math.floor(j / P), j % P];
        let s = 1;
        for (let t = 0; t < p; t++) if ((b >> t) & 1 & ((b2 >> t) & 1)) s = -s;
        return (hk[a * K + a2]! * s) / Math.sqrt(n);
      };
      const x = tensor('f64', [3, n], new Rng(n).fillNormal(new Float64Array(3 * n)));
      const y = hadamard(x);
      for (let r = 0; r < 3; r++)
        for (let j = 0; j < n; j++) {
          let s = 0;
          for (let i = 0; i < n; i++) s += x.data[r * n + i]! * dense(i, j);
          // n additions of O(1) terms: |error| ≲ n·eps·‖x‖
          expect(Math.abs(y.data[r * n + j]! - s)).toBeLessThan(1e-12 * n);
        }
      const back = hadamard(y, { transpose: true });
      for (let i = 0; i < x.data.length; i++)
        expect(Math.abs(back.data[i]! - x.data[i]!)).toBeLessThan(1e-12 * n);
      let nx = 0;
      let ny = 0;
      for (let i = 0; i < x.data.length; i++) {
        nx += x.data[i]! ** 2;
        ny += y.data[i]! ** 2;
      }
      expect(Math.abs(nx - ny) / nx).toBeLessThan(1e-12);
    });
  }

  it('rejects non-finite sizes and bad rows/offset with E_VALUE (nextHadamardSize(NaN) used to loop forever)', () => {
    for (const n of [NaN, Infinity, -Infinity])
      expect(() => nextHadamardSize(n)).toThrow(/E_VALUE: nextHadamardSize/);
    const d = new Float32Array(26).fill(1);
    for (const [rows, offset] of [
      [-1, 0],
      [1.5, 0],
      [1, -5],
      [1, 1.5],
    ])
      expect(() => hadamardRowsInPlace(d, rows!, 12, { offset })).toThrow(/E_VALUE: hadamard/);
    expect(Array.from(d).every((x) => x === 1)).toBe(true); // untouched
  });
});
