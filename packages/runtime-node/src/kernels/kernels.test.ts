import { describe, expect, it } from 'vitest';
import { f16ArrayToF32, f32ArrayToF16, Rng } from '@caldera/core';
import { e8pDecode } from '@caldera/quant';
import { e8pMatvecLut, e8pWasmAvailable } from './e8p-lut.js';
import { matvecF16, matvecF32 } from './matvec.js';

/** Plain f64 y = x·Wᵀ. */
function ref(w: ArrayLike<number>, m: number, n: number, x: Float32Array, rows: number): Float64Array {
  const y = new Float64Array(rows * m);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < m; i++) {
      let s = 0;
      for (let j = 0; j < n; j++) s += x[r * n + j]! * w[i * n + j]!;
      y[r * m + i] = s;
    }
  return y;
}

// f32 sums of n ≤ 512 products (Σ|terms| ≲ 10³): rounding ≲ 10³·n·2⁻²⁴ ≈ 3e-5 worst case, so 2e-4 / 1e-4 are safe.
function expectClose(got: Float32Array, want: Float64Array, tol: number) {
  for (let i = 0; i < want.length; i++) expect(Math.abs(got[i]! - want[i]!)).toBeLessThan(tol);
}

describe('kernels', () => {
  const rng = new Rng(9);
  it('E8P table-driven product equals decoding every codeword (all 65 536 codes, several rows)', () => {
    // every code appears exactly once: mp = 1024 rows × 64 groups
    const mp = 1024;
    const np = 512;
    const groups = np / 8;
    const codes = new Uint16Array(mp * groups);
    for (let c = 0; c < codes.length; c++) codes[c] = (c * 40503) & 0xffff; // odd multiplier: a permutation
    const w = e8pDecode(codes); // row-major mp × np
    const codesT = new Uint16Array(codes.length);
    for (let i = 0; i < mp; i++) for (let g = 0; g < groups; g++) codesT[g * mp + i] = codes[i * groups + g]!;
    const rows = 3;
    const x = rng.fillNormal(new Float32Array(rows * np));
    const want = ref(w, mp, np, x, rows);
    expect(e8pWasmAvailable()).toBe(true);
    for (const wasm of [true, false]) {
      const y = new Float32Array(rows * mp);
      e8pMatvecLut(codesT, mp, np, x, rows, y, { wasm });
      expectClose(y, want, 2e-4);
    }
    // an odd number of groups (the last one runs in TypeScript) and a second, larger layer (memory growth)
    const np2 = 8 * 65;
    const mp2 = 2000;
    const codes2 = new Uint16Array(mp2 * 65).map((_, i) => (i * 7919) & 0xffff);
    const w2 = e8pDecode(codes2);
    const t2 = new Uint16Array(codes2.length);
    for (let i = 0; i < mp2; i++) for (let g = 0; g < 65; g++) t2[g * mp2 + i] = codes2[i * 65 + g]!;
    const x2 = rng.fillNormal(new Float32Array(np2));
    const y2 = new Float32Array(mp2);
    e8pMatvecLut(t2, mp2, np2, x2, 1, y2);
    expectClose(y2, ref(w2, mp2, np2, x2, 1), 2e-4);
  });

  it('f32 and f16 matrix-vector products equal the plain reference (odd sizes)', () => {
    const m = 13;
    const n = 37;
    const w = rng.fillNormal(new Float32Array(m * n));
    const bits = f32ArrayToF16(w);
    const wh = f16ArrayToF32(bits);
    const x = rng.fillNormal(new Float32Array(2 * n));
    const y = new Float32Array(2 * m);
    matvecF32(w, m, n, x, 2, y);
    expectClose(y, ref(w, m, n, x, 2), 1e-4);
    matvecF16(bits, m, n, x, 2, y);
    expectClose(y, ref(wh, m, n, x, 2), 1e-4);
  });
});
