import { describe, expect, it } from 'vitest';
import { bf16ArrayToF32, f16ArrayToF32, f32ArrayToBf16, f32ArrayToF16, Rng } from '@caldera/core';
import { e8pDecode } from '@caldera/quant';
import { applyDecomposition, randomDecomposition } from '@caldera/lowrank';
import { createPool, hadamardFactor } from '@caldera/linalg';
import { AttentionKernel } from './attention-kernel.js';
import { DenseF16Linear } from '../linear.js';
import { BatchWorkspace } from './batch-workspace.js';
import { CalderaKernel } from './caldera-kernel.js';
import { e8pMatvecLut } from './e8p-lut.js';
import { matvecF16, matvecF32, WasmMatrix } from './matvec.js';

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
  it('E8P table-driven product (TypeScript reference) equals decoding every codeword (all 65 536 codes, several rows)', () => {
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
    const y = new Float32Array(rows * mp);
    e8pMatvecLut(codesT, mp, np, x, rows, y);
    expectClose(y, want, 2e-4);
    // an odd number of groups
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

  it('CALDERA layer kernel equals Decomposition.apply (Hadamard block sizes K = 1…172, odd groups, all codes, 1–9 rows)', () => {
    // (m, n) → padded (mp, np); the Hadamard factor K of each padded size is checked below so that the cases keep
    // covering: K = 1 with every one of the 65 536 codes (1024 × 512), P = 1 and 2 (scalar fwht and mix), K = 12,
    // 28, 36, 40, 44, 52, 172, an odd number of 8-groups, rank 0 and a rank that is not a multiple of 4
    const cases: [number, number, number, number[]][] = [
      [1024, 512, 64, [1, 1]],
      [24, 72, 5, [12, 36]],
      [100, 104, 3, [52, 52]],
      [344, 176, 16, [172, 44]],
      [160, 40, 0, [40, 40]],
      [56, 224, 8, [28, 28]],
      [8, 8, 1, [1, 1]],
    ];
    for (const [m, n, rank, ks] of cases) {
      const d = randomDecomposition(m, n, rank, rng);
      // 1024 × 512: every code exactly once (an odd multiplier permutes 0…65 535)
      if (m * n === 8 * 65536) d.q!.planes[0] = new Uint16Array(65536).map((_, i) => (i * 40503) & 0xffff);
      expect([hadamardFactor(d.padded[0])!.K, hadamardFactor(d.padded[1])!.K]).toEqual(ks);
      const kernel = CalderaKernel.create(d, 4);
      expect(kernel).not.toBeNull(); // WebAssembly SIMD runs on Node 20
      for (const rows of [1, 4, 9]) {
        // 9 rows: three calls of at most 4
        const x = rng.fillNormal(new Float32Array(rows * n));
        const got = kernel!.forward(x, rows);
        const want = applyDecomposition(d, x, rows);
        // the same sums in f32 in different orders (E8P via tables, Hadamard mix in f32 instead of f64): relative
        // error ≲ a few ulps × log n of the output scale; 1e-5 of the largest output fails on any wrong term
        const scale = Math.max(...Array.from(want, Math.abs));
        for (let i = 0; i < want.length; i++) expect(Math.abs(got[i]! - want[i]!)).toBeLessThan(1e-5 * scale);
      }
    }
  });

  it('CALDERA batch path (workspace: SIMD rotations, E8P decode, gemm) equals Decomposition.apply; a pool changes no bit', () => {
    // the kernel test's shapes (K = 1…172, every code once in 1024 × 512, rank 0, odd ranks), through one workspace
    // that grows and shrinks between layers; 300 rows cross the 256-row chunk, mp = 1024 two 512-row blocks of Q̂
    const cases: [number, number, number][] = [
      [24, 72, 5],
      [1024, 512, 64],
      [344, 176, 16],
      [160, 40, 0],
      [100, 104, 3],
      [8, 8, 1],
    ];
    const ws = new BatchWorkspace();
    expect(ws.available).toBe(true); // WebAssembly SIMD runs on Node 20
    const pool = createPool({ threads: 2 });
    try {
      expect(pool.threads).toBe(2);
      for (const [m, n, rank] of cases) {
        const d = randomDecomposition(m, n, rank, rng);
        if (m * n === 8 * 65536) d.q!.planes[0] = new Uint16Array(65536).map((_, i) => (i * 40503) & 0xffff);
        const kernel = CalderaKernel.create(d, 4)!;
        for (const rows of m === 1024 ? [300] : [1, 21]) {
          const x = rng.fillNormal(new Float32Array(rows * n));
          const got = ws.calderaForward(kernel.batch, x, rows);
          const want = applyDecomposition(d, x, rows);
          // f32 sums in other orders (gemm over np ≤ 1024 terms, the Hadamard mix in f32): a few ulps × log n of the
          // output scale; 1e-5 of the largest output fails on any wrong codeword, sign or rotation
          let scale = 0;
          let err = 0;
          for (let i = 0; i < want.length; i++) {
            scale = Math.max(scale, Math.abs(want[i]!));
            err = Math.max(err, Math.abs(got[i]! - want[i]!));
          }
          expect(err).toBeLessThan(1e-5 * scale);
          // the pool only splits gemm's row blocks: every element is computed by the same kernel in the same order
          const pooled = ws.calderaForward(kernel.batch, x, rows, pool);
          expect(pooled.findIndex((v, i) => v !== got[i])).toBe(-1);
        }
      }
    } finally {
      pool.dispose();
    }
  });

  it('f16 batch product converts every half exactly in the workspace (all 63 488 finite values; infinities and NaN)', () => {
    const ws = new BatchWorkspace();
    expect(ws.available).toBe(true); // WebAssembly SIMD runs on Node 20: the layers below convert in it
    // W [248, 256] holds each finite f16 bit pattern once; x = the identity (256 rows), so y[r, i] = W[i, r] exactly
    const m = 248;
    const n = 256;
    const bits = new Uint16Array(m * n);
    let k = 0;
    for (let h = 0; h < 65536; h++) if ((h & 0x7c00) !== 0x7c00) bits[k++] = h;
    expect(k).toBe(m * n);
    const x = new Float32Array(n * n);
    for (let r = 0; r < n; r++) x[r * n + r] = 1;
    const y = new DenseF16Linear(bits, m, n).forward(x, n, { workspace: ws });
    const want = f16ArrayToF32(bits);
    let wrong = 0;
    for (let r = 0; r < n; r++) for (let i = 0; i < m; i++) if (y[r * m + i] !== want[i * n + r]) wrong++;
    expect(wrong).toBe(0);
    // a column of +∞, −∞ and a NaN times 1, for 5 rows (more than the 4 of the matrix–vector kernel)
    const special = Uint16Array.of(0x7c00, 0xfc00, 0x7e00);
    const ys = new DenseF16Linear(special, 3, 1).forward(new Float32Array(5).fill(1), 5, { workspace: ws });
    for (let r = 0; r < 5; r++)
      expect(Array.from(ys.subarray(3 * r, 3 * r + 3))).toEqual([Infinity, -Infinity, NaN]);
  });

  it('SIMD attention over the cache equals a plain f64 softmax-attention (GQA, odd head size, chunks, positions)', () => {
    for (const [heads, kvHeads, headDim] of [
      [6, 2, 7],
      [4, 4, 16],
      [8, 1, 64],
    ] as const) {
      const layers = 2;
      const cap = 40;
      const kernel = AttentionKernel.create({ layers, heads, kvHeads, headDim }, cap)!;
      expect(kernel).not.toBeNull();
      const kw = kvHeads * headDim;
      const qw = heads * headDim;
      for (let b = 0; b < layers; b++) {
        kernel.k[b]!.set(rng.fillNormal(new Float32Array(cap * kw)));
        kernel.v[b]!.set(rng.fillNormal(new Float32Array(cap * kw)));
      }
      // 1 row at position 0, 1 row at the last position of the cache, a 19-row prompt (two chunks of 16) after 3
      // cached positions
      for (const [rows, pos0] of [
        [1, 0],
        [1, 39],
        [19, 3],
      ] as const) {
        const layer = rows === 19 ? 1 : 0;
        const q = rng.fillNormal(new Float32Array(rows * qw));
        const got = kernel.attend(layer, q, rows, pos0);
        const K = kernel.k[layer]!;
        const V = kernel.v[layer]!;
        for (let r = 0; r < rows; r++)
          for (let h = 0; h < heads; h++) {
            const kv = Math.floor(h / (heads / kvHeads)) * headDim;
            const len = pos0 + r + 1;
            const s = Array.from({ length: len }, (_, t) => {
              let d = 0;
              for (let i = 0; i < headDim; i++) d += q[r * qw + h * headDim + i]! * K[t * kw + kv + i]!;
              return d / Math.sqrt(headDim);
            });
            const mx = Math.max(...s);
            const e = s.map((v) => Math.exp(v - mx));
            const sum = e.reduce((a, v) => a + v, 0);
            for (let i = 0; i < headDim; i++) {
              let want = 0;
              for (let t = 0; t < len; t++) want += (e[t]! / sum) * V[t * kw + kv + i]!;
              // f32 dot products of ≤ 64 N(0,1) terms and ≤ 41 softmax-weighted N(0,1) values: a few 1e-6 of
              // rounding, and f32 exp; 1e-4 fails on any wrong position, head mapping or weight
              expect(Math.abs(got[r * qw + h * headDim + i]! - want)).toBeLessThan(1e-4);
            }
          }
      }
    }
  });

  it('attention over 131 072 cached positions keeps its sums exact enough (one f32 running sum drifted ~1e-3)', () => {
    const [heads, kvHeads, headDim, cap] = [2, 1, 8, 131_072];
    const kernel = AttentionKernel.create({ layers: 1, heads, kvHeads, headDim }, cap)!;
    // every cached key 0 but the last (score 1/8 there): weights e^(-1/8) / Z for the others, an f32 value with a rounding
    // error; every value vector all ones, so the exact output is 1 in every entry (Σ softmax = 1)
    kernel.k[0]!.fill(0);
    kernel.v[0]!.fill(1);
    const q = new Float32Array(heads * headDim).fill(1);
    kernel.k[0]!.fill(1 / Math.sqrt(headDim) / headDim, (cap - 1) * headDim, cap * headDim); // q·k·scale = 1/8
    const got = kernel.attend(0, q, 1, cap - 1);
    // sums of 512 blocks of 256 f32 terms: 9.5e-7 here (≲ 3e-5 at worst); the single f32 running sums
    // gave 2.3e-5 here, and 2.9e-4 in the logits of a Llama 3 model with equal scores over its 131 072 positions
    for (const x of got) expect(Math.abs(x - 1)).toBeLessThan(1e-5);
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

  it('SIMD f32 and f16 kernels equal the plain reference (odd sizes, 1–4 rows, tails of every length)', () => {
    for (const [m, n] of [
      [1, 1],
      [5, 7],
      [3, 16],
      [13, 37],
      [64, 1000],
    ] as const) {
      const w = rng.fillNormal(new Float32Array(m * n));
      const bits = f32ArrayToF16(w);
      const wh = f16ArrayToF32(bits);
      const m32 = WasmMatrix.create('f32', w, m, n, 4)!;
      const m16 = WasmMatrix.create('f16', bits, m, n, 4)!;
      expect(m32 && m16).toBeTruthy(); // WebAssembly SIMD runs on Node 20
      expect(Array.from(m16.weights)).toEqual(Array.from(bits)); // the resident copy
      for (const rows of [1, 4]) {
        const x = rng.fillNormal(new Float32Array(rows * n));
        const y = new Float32Array(rows * m);
        // sums of n ≤ 1000 products of N(0,1) values in f32: a different summation order moves the result by
        // ≲ n·2⁻²⁴·Σ|x·w| ≈ 1000·6e-8·800 ≈ 5e-2 in the very worst case, ~1e-4 typically; 1e-3 is safe and still fails
        // on a wrong element or a dropped tail
        m32.matvec(x, rows, y);
        expectClose(y, ref(w, m, n, x, rows), 1e-3);
        m16.matvec(x, rows, y);
        expectClose(y, ref(wh, m, n, x, rows), 1e-3);
      }
    }
  });

  it('the SIMD f16 kernel converts all 65 536 half values exactly (normals, subnormals, ±0, ±∞, NaN)', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const want = f16ArrayToF32(all);
    const finite = all.filter((h) => (h & 0x7c00) !== 0x7c00); // 63 488 values, 16 per row
    const m = finite.length / 16;
    const mat = WasmMatrix.create('f16', finite, m, 16, 4)!;
    const y = new Float32Array(m);
    const wantF = f16ArrayToF32(finite);
    for (let j = 0; j < 16; j++) {
      // x = e_j selects column j (the products with 0 add exact zeros): y_i is W[i, j] converted, bit for bit
      const x = new Float32Array(16);
      x[j] = 1;
      mat.matvec(x, 1, y);
      for (let i = 0; i < m; i++)
        if (y[i] !== wantF[i * 16 + j]) expect([i, j, y[i]]).toEqual([i, j, wantF[i * 16 + j]]);
    }
    // infinities and NaNs, through the SIMD body (row = [h, 0 × 15]) and the scalar tail (n = 1)
    const special = all.filter((h) => (h & 0x7c00) === 0x7c00);
    const padded = new Uint16Array(special.length * 16);
    special.forEach((h, i) => (padded[i * 16] = h));
    const x16 = new Float32Array(16);
    x16[0] = 1;
    const y16 = new Float32Array(special.length);
    WasmMatrix.create('f16', padded, special.length, 16, 4)!.matvec(x16, 1, y16);
    const y1 = new Float32Array(special.length);
    WasmMatrix.create('f16', special, special.length, 1, 4)!.matvec(new Float32Array([1]), 1, y1);
    special.forEach((h, i) => {
      expect(Object.is(y16[i], want[h])).toBe(true);
      expect(Object.is(y1[i], want[h])).toBe(true);
    });
    // one infinity in the scalar tail of the finiteness scan (13 values: 8 + 5) still selects the exact kernel
    const tail = f32ArrayToF16(new Float32Array([...Array.from({ length: 12 }, (_, i) => i + 1), Infinity]));
    const e12 = new Float32Array(13);
    e12[12] = 1;
    const yt = new Float32Array(1);
    WasmMatrix.create('f16', tail, 1, 13, 4)!.matvec(e12, 1, yt);
    expect(yt[0]).toBe(Infinity);
  });

  it('bf16: the SIMD kernel (body and tail), the TypeScript loop and the batch conversion are exact on all 65 536 values', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const want = bf16ArrayToF32(all); // bits << 16
    const same = (got: number, w: number) =>
      Object.is(got, w) || (got === 0 && w === 0) || (got !== got && w !== w);
    // rows [h, 0 × 15] times e_0 (SIMD body) and [h] times 1 (scalar tail): y_i = h widened (±0 both read as 0,
    // since the kernel adds +0 partial sums; NaN stays NaN)
    const padded = new Uint16Array(65536 * 16);
    all.forEach((h, i) => (padded[i * 16] = h));
    const e0 = new Float32Array(16);
    e0[0] = 1;
    const y16 = new Float32Array(65536);
    const mat = WasmMatrix.create('bf16', padded, 65536, 16, 4)!;
    expect(mat).toBeTruthy(); // WebAssembly SIMD runs on Node 20
    mat.matvec(e0, 1, y16);
    const y1 = new Float32Array(65536);
    WasmMatrix.create('bf16', all, 65536, 1, 4)!.matvec(new Float32Array([1]), 1, y1);
    const yTs = new Float32Array(65536);
    matvecF16(all, 65536, 1, new Float32Array([1]), 1, yTs, 'bf16');
    let wrong = 0;
    for (let h = 0; h < 65536; h++)
      if (!same(y16[h]!, want[h]!) || !same(y1[h]!, want[h]!) || !same(yTs[h]!, want[h]!)) wrong++;
    expect(wrong).toBe(0);
    // the batch path's block conversion is a shift: every bit pattern, NaN payloads included
    const ws = new BatchWorkspace();
    const rows = ws.bf16Rows(all, 256, 0, 256);
    const u = new Uint32Array(rows.buffer, rows.byteOffset, rows.length);
    expect(u.every((v, i) => v === (i << 16) >>> 0)).toBe(true);
    expect(Array.from(ws.bf16Rows(all, 7, 3, 5))).toEqual(Array.from(want.subarray(21, 56)));
    // odd sizes, 1–4 rows: the SIMD and TypeScript bf16 products equal the f32 ones of the widened weights, bit for bit
    // (same summation order as the f32 kernels)
    for (const [m, n] of [
      [5, 7],
      [13, 37],
      [64, 1000],
    ] as const) {
      const bits = f32ArrayToBf16(rng.fillNormal(new Float32Array(m * n)));
      const wide = bf16ArrayToF32(bits);
      const mb = WasmMatrix.create('bf16', bits, m, n, 4)!;
      const m32 = WasmMatrix.create('f32', wide, m, n, 4)!;
      expect(Array.from(mb.weights)).toEqual(Array.from(bits)); // the resident copy is 16-bit
      for (const r of [1, 4]) {
        const x = rng.fillNormal(new Float32Array(r * n));
        const [a, b, c, d] = [0, 1, 2, 3].map(() => new Float32Array(r * m));
        mb.matvec(x, r, a!);
        m32.matvec(x, r, b!);
        matvecF16(bits, m, n, x, r, c!, 'bf16');
        matvecF32(wide, m, n, x, r, d!);
        expect(a).toEqual(b);
        expect(c).toEqual(d);
      }
    }
  });
});
