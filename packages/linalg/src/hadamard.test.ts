import { describe, expect, it } from 'vitest';
import { Rng, tensor } from '@caldera/core';
import {
  HADAMARD_BASE_ORDERS,
  hadamard,
  hadamardBase,
  hadamardFactor,
  hadamardRowsInPlace,
  hadamardColumnsInPlace,
  hadamardSupported,
  nextHadamardSize,
} from './hadamard.js';
import { createPool } from './pool/pool.js';

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
  it('maps an [r, 0] matrix to an [r, 0] matrix (it was E_UNSUPPORTED: no M_0)', () => {
    const y = hadamard(tensor('f64', [3, 0]));
    expect(y.shape).toEqual([3, 0]);
    expect(y.data.length).toBe(0);
  });

  it('refuses a non-finite entry with E_VALUE naming it, as every linalg routine does (it spread NaN over the row)', () => {
    for (const bad of [NaN, Infinity, -Infinity]) {
      const x = tensor('f32', [4, 12], new Rng(1).fillNormal(new Float32Array(48)));
      x.data[2 * 12 + 5] = bad;
      expect(() => hadamard(x)).toThrow(
        new RegExp(`^E_VALUE: hadamard: x has a non-finite value \\(${bad}\\) at \\[2, 5\\]$`),
      );
    }
  });

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
      // 20 rows: at K > 1 the mix runs as one gemm (16 rows or more), checked here against the dense matrix too
      const rows = 20;
      const x = tensor('f64', [rows, n], new Rng(n).fillNormal(new Float64Array(rows * n)));
      const y = hadamard(x);
      for (let r = 0; r < rows; r++)
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

  it('many rows (the gemm mix, in batches) equal each row transformed alone (the row-by-row mix), f64 and f32', () => {
    // n = 11008 = 172·64: batches of ⌊2²⁰ / n⌋ = 95 rows, so 100 rows take two; an offset of 5 values in front
    const n = 11008;
    const rows = 100;
    const off = 5;
    for (const transpose of [false, true])
      for (const Ctor of [Float64Array, Float32Array]) {
        const src = new Rng(3).fillNormal(new Ctor(off + rows * n));
        const many = Ctor.from(src);
        hadamardRowsInPlace(many, rows, n, { transpose, offset: off });
        const alone = Ctor.from(src);
        for (let r = 0; r < rows; r++) hadamardRowsInPlace(alone, 1, n, { transpose, offset: off + r * n });
        for (let i = 0; i < off; i++) expect(many[i]).toBe(src[i]); // nothing before the offset is touched
        // the same exact ±1 products, summed in f64 in another order: each sum is within K·2⁻⁵³·Σ|terms| of the exact
        // one, Σ|terms| ≤ K·max|v| with max|v| ≲ 40 (a length-64 Walsh–Hadamard transform of N(0, 1) values), then
        // scaled by 1/√n: ≤ 2·172²·40·2⁻⁵³/√11008 ≈ 2.5e-12 apart, so 1e-11; f32 results are those sums rounded to f32,
        // at most one f32 ulp (2⁻²³ relative) apart, plus the f64 allowance where a sum cancels to near zero
        let worst = 0;
        for (let i = off; i < many.length; i++) {
          const d = Math.abs(many[i]! - alone[i]!);
          worst = Math.max(
            worst,
            Ctor === Float64Array ? d / 1e-11 : d / (2 ** -23 * Math.abs(alone[i]!) + 1e-11),
          );
        }
        expect(worst).toBeLessThanOrEqual(1);
      }
  });

  it('columns: M_nᵀ·X is the transpose of the row transform of Xᵀ, to the bit (f64, f32, both directions, pool)', () => {
    // n = 64 (K = 1), 48 = 12·4, 344 = 172·2; 3 columns take the scalar mix, 16 and 37 the product; n = 11008 with
    // 100 columns mixes in two chunks (⌊2²⁰ / 172⌋ = 6096 of its 6400 values per row of the K-row view); an offset of
    // 5 values in front, left alone
    const pool = createPool({ threads: 2 });
    try {
      const off = 5;
      for (const [n, cols] of [
        [64, 16],
        [48, 3],
        [48, 37],
        [344, 16],
        [344, 37],
        [11008, 100],
      ] as const)
        for (const transpose of [false, true])
          for (const Ctor of [Float64Array, Float32Array]) {
            const src = new Rng(n + cols).fillNormal(new Ctor(off + n * cols));
            const byColumns = Ctor.from(src);
            hadamardColumnsInPlace(byColumns, n, cols, { transpose, offset: off, pool });
            const t = new Ctor(cols * n); // Xᵀ, transformed by rows
            for (let i = 0; i < n; i++)
              for (let c = 0; c < cols; c++) t[c * n + i] = src[off + i * cols + c]!;
            hadamardRowsInPlace(t, cols, n, { transpose });
            for (let i = 0; i < off; i++) expect(byColumns[i]).toBe(src[i]);
            let diffs = 0;
            for (let i = 0; i < n; i++)
              for (let c = 0; c < cols; c++) if (byColumns[off + i * cols + c] !== t[c * n + i]) diffs++;
            expect(diffs, `n = ${n}, ${cols} columns, transpose ${transpose}, ${Ctor.name}`).toBe(0);
          }
    } finally {
      pool.dispose();
    }
  });

  it('columns: the same checks as rows, naming columns', () => {
    expect(() => hadamardColumnsInPlace(new Int32Array(8) as never, 8, 1)).toThrow(
      /^E_DTYPE: hadamardColumnsInPlace: data must be a Float32Array or Float64Array, got Int32Array$/,
    );
    expect(() => hadamardColumnsInPlace(new Float32Array(24), 12, 3)).toThrow(
      /^E_SHAPE: hadamard: 3 columns of 12 exceed the data length 24$/,
    );
    expect(() => hadamardColumnsInPlace(new Float32Array(44), 11, 4)).toThrow(
      /^E_UNSUPPORTED: hadamard: size 11 /,
    );
    expect(() => hadamardColumnsInPlace(new Float32Array(24), 12, 1.5)).toThrow(
      /^E_VALUE: hadamard: columns /,
    );
  });

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

  it('takes only a Float32Array or Float64Array: another typed array is E_DTYPE, an array E_VALUE', () => {
    // before: an Int32Array was transformed in integers (sums wrapped, 1/√n truncated): zeros, no error
    const ints = new Int32Array(8).fill(3);
    expect(() => hadamardRowsInPlace(ints as never, 1, 8)).toThrow(
      /^E_DTYPE: hadamardRowsInPlace: data must be a Float32Array or Float64Array, got Int32Array$/,
    );
    // n left out: named (it was "nextHadamardSize: n must be a finite number", a function never called)
    expect(() =>
      (hadamardRowsInPlace as (d: Float32Array, r: number) => void)(new Float32Array(6), 2),
    ).toThrow(/^E_VALUE: hadamardRowsInPlace: n /);
    expect(Array.from(ints)).toEqual(new Array(8).fill(3));
    expect(() => hadamardRowsInPlace(new Uint8Array(8) as never, 1, 8)).toThrow(/E_DTYPE: .* got Uint8Array/);
    expect(() => hadamardRowsInPlace(new Array(8).fill(1) as never, 1, 8)).toThrow(
      /^E_VALUE: hadamardRowsInPlace: data must be a Float32Array or Float64Array, got an array$/,
    );
    const f = new Float64Array(8).fill(1);
    hadamardRowsInPlace(f, 1, 8);
    expect(f[0]).toBeCloseTo(Math.sqrt(8), 12);
  });
});
