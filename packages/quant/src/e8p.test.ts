import { describe, expect, it } from 'vitest';
import { Rng } from '@caldera/core';
import { E8P_OPT_SCALE, e8pDecode, e8pEncode, e8pEncodeWasmAvailable, e8pGrid, e8pSources } from './e8p.js';
import { e81bCodebook, rvqDecode, rvqEncode } from './rvq.js';

function mse(x: Float32Array, scale: number, roundTrip: (v: Float32Array) => Float32Array): number {
  const q = roundTrip(x.map((v) => v * scale));
  let s = 0;
  for (let i = 0; i < x.length; i++) s += (x[i]! - q[i]! / scale) ** 2;
  return s / x.length;
}

/** 10 000 seeded Gaussian 8-vectors at scales 0.5–3, the origin and a far point. */
function gaussianInputs(n = 10_000, seed = 7): Float32Array {
  const rng = new Rng(seed);
  const x = new Float32Array(n * 8);
  for (let k = 0; k < n; k++) {
    const scale = [0.5, 1, 1.5, 3][k % 4]!; // cover small, typical and large inputs
    for (let i = 0; i < 8; i++) x[k * 8 + i] = rng.normal() * scale;
  }
  x.fill(0, 0, 8); // the origin
  x.fill(10, 8, 16); // far outside the codebook
  return x;
}

/** Seeded 8-vectors on the ¼-grid (many equidistant codewords), huge ones, and ones next to a codeword. */
function adversarialInputs(n = 3000, seed = 8): Float32Array {
  const rng = new Rng(seed);
  const x = new Float32Array(n * 8);
  const g = e8pGrid();
  for (let k = 0; k < n; k++) {
    for (let i = 0; i < 8; i++) {
      const kind = k % 3;
      if (kind === 0)
        x[k * 8 + i] = (rng.int(25) - 12) / 4; // exact quarter-grid: many equidistant codewords
      else if (kind === 1)
        x[k * 8 + i] = (rng.int(2) ? 1 : -1) * 1e6 * rng.uniform(); // far outside
      else x[k * 8 + i] = g[rng.int(65536) * 8 + i]! + 1e-3 * rng.normal(); // next to a codeword
    }
  }
  return x;
}

describe('E8P12 codebook', () => {
  it('has 65 536 distinct codewords, each ±¼ plus a point of D̂8 (half-integers, even sum)', () => {
    const g = e8pGrid();
    const keys = new Set<string>();
    let bad = 0;
    for (let c = 0; c < 65536; c++) {
      const v = Array.from(g.subarray(c * 8, c * 8 + 8));
      keys.add(v.join(','));
      const oddPopcount = ((c & 0xff).toString(2).split('1').length - 1) % 2 === 1;
      const shift = oddPopcount ? -0.25 : 0.25;
      const u = v.map((x) => x - shift);
      // every coordinate a half-integer (2u odd) and the coordinate sum even
      if (u.some((x) => Math.abs(x * 2 - Math.round(x * 2)) !== 0 || Math.round(x * 2) % 2 === 0)) bad++;
      if (Math.round(u.reduce((a, b) => a + b, 0)) % 2 !== 0) bad++;
    }
    expect(bad).toBe(0);
    expect(keys.size).toBe(65536);
  });

  it('has 227 sorted norm-≤10 patterns then the 29 norm-12 extras as source vectors', () => {
    const s = e8pSources();
    for (let a = 0; a < 256; a++) {
      const n2 = Array.from(s.subarray(a * 8, a * 8 + 8)).reduce((x, y) => x + y * y, 0);
      expect(a < 227 ? n2 <= 10 : n2 === 12).toBe(true);
    }
  });

  it('fast nearest search equals exhaustive search on 10 000 seeded Gaussian vectors and edge cases', () => {
    const x = gaussianInputs();
    const n = x.length / 8;
    const dec = e8pDecode(e8pEncode(x));
    const g = e8pGrid();
    const norms = new Float32Array(65536);
    for (let c = 0; c < 65536; c++) for (let i = 0; i < 8; i++) norms[c]! += g[c * 8 + i]! ** 2;
    let mismatches = 0;
    for (let k = 0; k < n; k++) {
      let best = Infinity;
      for (let c = 0; c < 65536; c++) {
        let dot = 0;
        for (let i = 0; i < 8; i++) dot += x[k * 8 + i]! * g[c * 8 + i]!;
        const d = norms[c]! - 2 * dot;
        if (d < best) best = d;
      }
      let dot = 0;
      let n2 = 0;
      for (let i = 0; i < 8; i++) {
        dot += x[k * 8 + i]! * dec[k * 8 + i]!;
        n2 += dec[k * 8 + i]! ** 2;
      }
      // equal distance up to f32 round-off of the distance expression (|d| ≤ ~200, eps32·200 ≈ 2e-5)
      if (n2 - 2 * dot > best + 1e-4) mismatches++;
    }
    expect(mismatches).toBe(0);
  }, 240_000); // 5·10⁹ multiply-adds of brute force: ~10 s alone, minutes when CI runs packages in parallel

  it('fast search equals exhaustive search on adversarial inputs (ties on a ¼-grid, huge values, near codewords)', () => {
    const x = adversarialInputs();
    const n = x.length / 8;
    const g = e8pGrid();
    const dec = e8pDecode(e8pEncode(x));
    let worse = 0;
    for (let k = 0; k < n; k++) {
      let best = Infinity;
      for (let c = 0; c < 65536; c++) {
        let d = 0;
        for (let i = 0; i < 8; i++) d += (x[k * 8 + i]! - g[c * 8 + i]!) ** 2;
        if (d < best) best = d;
      }
      let d = 0;
      for (let i = 0; i < 8; i++) d += (x[k * 8 + i]! - dec[k * 8 + i]!) ** 2;
      // relative f64 round-off of squared distances up to ~1e13 (huge inputs): 1e-9 relative + 1e-9 absolute
      if (d > best * (1 + 1e-9) + 1e-9) worse++;
    }
    expect(worse).toBe(0);
  });

  it("the WebAssembly encoder returns the TypeScript encoder's codes, ties included", () => {
    expect(e8pEncodeWasmAvailable()).toBe(true);
    const g = e8pGrid();
    // many more tie patterns than the exhaustive tests can afford: ¼- and ½-grids with few distinct |values|
    const rng = new Rng(9);
    const ties = new Float32Array(200_000 * 8);
    for (let j = 0; j < ties.length; j++) {
      const kind = (j >> 3) % 4;
      ties[j] =
        kind === 0
          ? (rng.int(25) - 12) / 4
          : kind === 1
            ? (rng.int(9) - 4) / 2
            : kind === 2
              ? [-0.75, -0.25, 0.25, 0.75][rng.int(4)]!
              : (rng.int(2) ? -1 : 1) * [0, 0.5, 1, 3.25, 1e30, 3e38][rng.int(6)]!;
    }
    const huge = new Float32Array(64).map((_, i) => (i % 3 === 0 ? -3.4e38 : i % 3 === 1 ? 3.4e38 : 1e-45));
    // 10 000 and 200 000 vectors cross the 4096-vector chunks of the WebAssembly path with a remainder
    for (const x of [gaussianInputs(), adversarialInputs(), g.subarray(0, 4096 * 8), ties, huge]) {
      const wasm = e8pEncode(x);
      const ts = e8pEncode(x, undefined, { wasm: false });
      let diff = 0;
      for (let k = 0; k < ts.length; k++) if (wasm[k] !== ts[k]) diff++;
      expect(diff).toBe(0);
    }
    // other array types convert to f32 first, in both paths
    const f64 = Float64Array.from(gaussianInputs(1000, 3), (v) => v * 1.7);
    expect(Array.from(e8pEncode(f64))).toEqual(Array.from(e8pEncode(f64, undefined, { wasm: false })));
    expect(Array.from(e8pEncode(Array.from(f64)))).toEqual(Array.from(e8pEncode(Float32Array.from(f64))));
  });

  it('rejects non-finite input and lengths that are not a multiple of 8', () => {
    expect(() => e8pEncode(new Float32Array(7))).toThrow(/E_SHAPE/);
    const bad = new Float32Array(8);
    bad[3] = Infinity;
    expect(() => e8pEncode(bad)).toThrow(/E_VALUE/);
    expect(() => e8pEncode(bad, undefined, { wasm: false })).toThrow(/E_VALUE/);
  });

  it('decode(encode(codeword)) is the identity on codewords', () => {
    const g = e8pGrid();
    const codes = e8pEncode(g.subarray(0, 4096 * 8));
    const back = e8pDecode(codes);
    expect(Array.from(back)).toEqual(Array.from(g.subarray(0, 4096 * 8)));
  });

  it('MSE per entry on N(0,1) at the optimal scale 1.03 is within 2 % of the published 0.091', () => {
    const x = new Rng(11).fillNormal(new Float32Array(200_000));
    const m = mse(x, E8P_OPT_SCALE, (v) => e8pDecode(e8pEncode(v)));
    expect(Math.abs(m - 0.091) / 0.091).toBeLessThan(0.02);
    // and 1.03 beats 0.9 (published 0.0989)
    expect(m).toBeLessThan(mse(x, 0.9, (v) => e8pDecode(e8pEncode(v))));
  });

  it('f64 input beyond the f32 range is E_VALUE on both encoders (the WebAssembly one used to trap)', () => {
    // 1e39 is finite in f64 but Infinity once converted to f32, which the encoders work in
    for (const wasm of [true, false]) {
      const x = new Float64Array(16).fill(0.5);
      x[11] = -1e39;
      expect(() => e8pEncode(x, undefined, { wasm })).toThrow(
        /E_VALUE: e8pEncode: non-finite input -1e\+39 at index 11 \(outside the f32 range\)/,
      );
    }
  });
});

describe('residual VQ', () => {
  it('E81B has 256 distinct points of squared norm 0, 2 or 4', () => {
    const cb = e81bCodebook();
    const keys = new Set<string>();
    for (let c = 0; c < 256; c++) {
      const v = Array.from(cb.subarray(c * 8, c * 8 + 8));
      keys.add(v.join(','));
      expect([0, 2, 4]).toContain(v.reduce((a, b) => a + b * b, 0));
    }
    expect(keys.size).toBe(256);
  });

  it('4-bit RVQ MSE on N(0,1) at scale 1 is ≈ 0.0091 and 3-bit ≈ 0.0295 (brief §3.5, within 5 %)', () => {
    const x = new Rng(12).fillNormal(new Float32Array(80_000));
    const m4 = mse(x, 1, (v) => rvqDecode(rvqEncode(v, 4), 4));
    const m3 = mse(x, 0.98, (v) => rvqDecode(rvqEncode(v, 3), 3));
    expect(Math.abs(m4 - 0.0091) / 0.0091).toBeLessThan(0.05);
    expect(Math.abs(m3 - 0.0295) / 0.0295).toBeLessThan(0.05);
  });

  it('rejects bits other than 3 or 4 and stages of different lengths (no silent NaN)', () => {
    expect(() => rvqEncode(new Float32Array(8), 2 as never)).toThrow(/E_VALUE: rvqEncode: bits/);
    expect(() => rvqEncode(new Float32Array(12), 4)).toThrow(
      /^E_SHAPE: rvqEncode: length 12 is not a multiple of 8$/,
    ); // it said e8pEncode
    expect(() => rvqDecode({ stage1: new Uint16Array(2), stage2: new Uint16Array(2) }, 5 as never)).toThrow(
      /E_VALUE/,
    );
    expect(() => rvqDecode({ stage1: new Uint16Array(2), stage2: new Uint16Array(1) }, 4)).toThrow(
      /E_SHAPE: rvqDecode: stage 1 has 2 codes, stage 2 has 1/,
    );
    // a 3-bit stage 2 in a wider array: its codes must be 8-bit (300 decoded as stage 1 alone, silently)
    const stage1 = Uint16Array.of(7, 9);
    expect(() => rvqDecode({ stage1, stage2: Uint16Array.of(3, 300) }, 3)).toThrow(
      'E_VALUE: rvqDecode: stage-2 code 1 is 300, not an 8-bit (E81B) code',
    );
    expect(rvqDecode({ stage1, stage2: Uint16Array.of(3, 255) }, 3)).toEqual(
      rvqDecode({ stage1, stage2: Uint8Array.of(3, 255) }, 3),
    );
  });
});

describe('e8pDecode arguments', () => {
  it('decodes codes given as a plain array like a Uint16Array, and names a code outside 16 bits', () => {
    expect(e8pDecode([0, 65535, 1234] as never)).toEqual(e8pDecode(Uint16Array.of(0, 65535, 1234)));
    for (const bad of [70000, -1, 1.5, NaN])
      expect(() => e8pDecode([3, bad] as never)).toThrow(
        `E_VALUE: e8pDecode: code 1 is ${String(bad)}, not a 16-bit code`,
      );
  });
});
