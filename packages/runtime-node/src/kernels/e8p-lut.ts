import { e8pGrid, e8pSources } from '@caldera/quant';
import { E8P_WASM_BASE64 } from '../generated/e8p-wasm.js';

/**
 * Table-driven product with E8P12 codes (layout in `@caldera/quant`'s e8p.ts). A codeword is `sgn ⊙ source[a] ± ¼`,
 * and the signs of coordinates 0–3 and 4–7 come from disjoint bits of the sign byte. So `⟨codeword, x⟩` splits into
 * two half dot products, each a function of (half magnitude pattern, 4 sign bits), plus `±¼·Σx`. For one 8-group of
 * the input we tabulate both halves for every distinct half pattern (≤ 81 each) and all 16 sign choices; then each
 * code costs two table reads and two adds instead of eight multiply-adds.
 */
export interface E8PLutTables {
  /** Per source a: base index into the first-half table (pattern·16). */
  a1: Int32Array;
  /** Per source a: pattern·16 of the second half, with bit 3 set when coordinate 7 is negated once more (odd sum). */
  a2: Int32Array;
  /** Per sign byte σ: low 4 bits = signs of coords 0–3, bits 4–7 = signs of coords 4–7, bit 8 = parity (shift −¼). */
  sig: Int32Array;
  /** Distinct half patterns, 4 magnitudes each. */
  p1: Float32Array;
  p2: Float32Array;
  /**
   * Per code (65 536 entries): low 16 bits = index into the first-half table (pattern·32 + parity·16 + signs, the
   * ±¼ shift folded in), high 16 bits = index into the second-half table (pattern·16 + signs).
   */
  comb: Int32Array;
}

let tables: E8PLutTables | null = null;

const PERM = [0, 4, 1, 5, 2, 6, 3, 7];

/** Build (once) the index tables of the split decode. */
export function e8pLutTables(): E8PLutTables {
  if (tables) return tables;
  const src = e8pSources();
  const a1 = new Int32Array(256);
  const a2 = new Int32Array(256);
  const pats: [Map<string, number>, Map<string, number>] = [new Map(), new Map()];
  const lists: [number[], number[]] = [[], []];
  for (let a = 0; a < 256; a++) {
    let sum = 0;
    for (let i = 0; i < 8; i++) sum += src[a * 8 + i]!;
    for (let h = 0; h < 2; h++) {
      const v = Array.from(src.subarray(a * 8 + 4 * h, a * 8 + 4 * h + 4));
      const key = v.join(',');
      let idx = pats[h].get(key);
      if (idx === undefined) {
        idx = pats[h].size;
        pats[h].set(key, idx);
        lists[h].push(...v);
      }
      if (h === 0) a1[a] = idx * 16;
      else a2[a] = idx * 16 + (Math.round(sum) % 2 === 1 ? 8 : 0);
    }
  }
  const sig = new Int32Array(256);
  for (let s = 0; s < 256; s++) {
    let pc = 0;
    for (let b = 0; b < 8; b++) pc += (s >> b) & 1;
    const p = pc & 1;
    const s2 = s ^ p;
    let bits = 0;
    for (let i = 0; i < 8; i++) if ((s2 >> PERM[i]!) & 1) bits |= 1 << i;
    sig[s] = bits | (p << 8);
  }
  const comb = new Int32Array(65536);
  for (let c = 0; c < 65536; c++) {
    const a = c >>> 8;
    const g = sig[c & 0xff]!;
    const i1 = (a1[a]! >>> 4) * 32 + ((g >>> 8) & 1) * 16 + (g & 15);
    const i2 = a2[a]! ^ ((g >>> 4) & 15);
    comb[c] = i1 | (i2 << 16);
  }
  tables = { a1, a2, sig, p1: Float32Array.from(lists[0]), p2: Float32Array.from(lists[1]), comb };
  return tables;
}

/** Fill `lut` (patterns·16, or ·32 with the shift variants) with the signed half dot products of magnitude patterns `p` with x[xo..xo+4). */
function fillHalf(
  p: Float32Array,
  x: Float32Array,
  xo: number,
  lut: Float32Array,
  withShift: boolean,
  shift: number,
): void {
  const x0 = x[xo]!;
  const x1 = x[xo + 1]!;
  const x2 = x[xo + 2]!;
  const x3 = x[xo + 3]!;
  const np = p.length / 4;
  for (let k = 0; k < np; k++) {
    const v0 = p[4 * k]! * x0;
    const v1 = p[4 * k + 1]! * x1;
    const v2 = p[4 * k + 2]! * x2;
    const v3 = p[4 * k + 3]! * x3;
    const a0 = v0 + v1;
    const a1 = -v0 + v1;
    const a2 = v0 - v1;
    const a3 = -v0 - v1;
    const b0 = v2 + v3;
    const b1 = -v2 + v3;
    const b2 = v2 - v3;
    const b3 = -v2 - v3;
    const o = (withShift ? 32 : 16) * k;
    // sign bit i set ⇒ coordinate i negated; index = bits of (c0, c1, c2, c3)
    lut[o] = a0 + b0;
    lut[o + 1] = a1 + b0;
    lut[o + 2] = a2 + b0;
    lut[o + 3] = a3 + b0;
    lut[o + 4] = a0 + b1;
    lut[o + 5] = a1 + b1;
    lut[o + 6] = a2 + b1;
    lut[o + 7] = a3 + b1;
    lut[o + 8] = a0 + b2;
    lut[o + 9] = a1 + b2;
    lut[o + 10] = a2 + b2;
    lut[o + 11] = a3 + b2;
    lut[o + 12] = a0 + b3;
    lut[o + 13] = a1 + b3;
    lut[o + 14] = a2 + b3;
    lut[o + 15] = a3 + b3;
    if (withShift)
      for (let j = 0; j < 16; j++) {
        lut[o + 16 + j] = lut[o + j]! - shift; // parity 1: shift −¼
        lut[o + j]! += shift;
      }
  }
}

interface WasmKernel {
  memory: WebAssembly.Memory;
  /** See asm/e8p.ts. */
  row: (
    codes: number,
    comb: number,
    p1: number,
    np1: number,
    p2: number,
    np2: number,
    l1: number,
    l2: number,
    x: number,
    groups: number,
    mp: number,
    y: number,
  ) => void;
}

/** WebAssembly memory layout: code→index table, then the half patterns (≤ 81 each), then per-call buffers. */
const W_COMB = 0;
const W_P1 = 65536 * 4;
const W_P2 = W_P1 + 81 * 16;
const W_DYN = W_P2 + 81 * 16;

let wasm: WasmKernel | null | undefined;

/** The WebAssembly inner loop with the code→index table at address 0, or null where WebAssembly is unavailable. */
function wasmKernel(): WasmKernel | null {
  if (wasm !== undefined) return wasm;
  try {
    const bytes = Uint8Array.from(atob(E8P_WASM_BASE64), (c) => c.charCodeAt(0));
    const memory = new WebAssembly.Memory({ initial: 8, maximum: 65536 });
    const inst = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } });
    const t = e8pLutTables();
    new Int32Array(memory.buffer, W_COMB, 65536).set(t.comb);
    new Float32Array(memory.buffer, W_P1, t.p1.length).set(t.p1);
    new Float32Array(memory.buffer, W_P2, t.p2.length).set(t.p2);
    wasm = { memory, row: inst.exports.row as WasmKernel['row'] };
  } catch {
    wasm = null;
  }
  return wasm;
}

/** True when the WebAssembly inner loop could be instantiated. */
export function e8pWasmAvailable(): boolean {
  return wasmKernel() !== null;
}

/** Options of {@link e8pMatvecLut}. */
export interface E8PMatvecOptions {
  /** Run the inner loop in WebAssembly when available (default true); false = the TypeScript loop. */
  wasm?: boolean;
}

/**
 * `y[r·mp + i] = Σ_g ⟨codeword(codesT[g·mp + i]), x[r·np + 8g…]⟩` (y is overwritten). Codes are stored
 * group-major (`[np/8, mp]`, the transpose of the checkpoint's row-major layout) so that one group's tables serve a
 * contiguous run of codes. Two groups per pass over y; the pass runs in WebAssembly (codes copied into its memory)
 * or in TypeScript.
 */
export function e8pMatvecLut(
  codesT: Uint16Array,
  mp: number,
  np: number,
  x: Float32Array,
  rows: number,
  y: Float32Array,
  options: E8PMatvecOptions = {},
): void {
  const t = e8pLutTables();
  const comb = t.comb;
  // first-half tables carry the shift (±¼·Σx of the group) in two 16-entry variants per pattern
  const n1 = (t.p1.length / 4) * 32;
  const n2 = (t.p2.length / 4) * 16;
  const groups = np / 8;
  const k = options.wasm === false ? null : wasmKernel();
  let l1: Float32Array;
  let l2: Float32Array;
  let addr = { l1: 0, l2: 0, x: 0, y: 0, codes: 0 };
  if (k) {
    const l1a = W_DYN;
    const l2a = l1a + 2 * n1 * 4;
    const xa = l2a + 2 * n2 * 4;
    const ya = xa + np * 4;
    const ca = ya + mp * 4;
    const need = ca + codesT.length * 2;
    if (k.memory.buffer.byteLength < need)
      k.memory.grow(Math.ceil((need - k.memory.buffer.byteLength) / 65536));
    addr = { l1: l1a, l2: l2a, x: xa, y: ya, codes: ca };
    const buf = k.memory.buffer;
    new Uint16Array(buf, ca, codesT.length).set(codesT);
    l1 = new Float32Array(buf, l1a, 2 * n1);
    l2 = new Float32Array(buf, l2a, 2 * n2);
  } else {
    l1 = new Float32Array(2 * n1);
    l2 = new Float32Array(2 * n2);
  }
  const group = (xo: number, half: number) => {
    const sh =
      0.25 *
      (x[xo]! + x[xo + 1]! + x[xo + 2]! + x[xo + 3]! + x[xo + 4]! + x[xo + 5]! + x[xo + 6]! + x[xo + 7]!);
    fillHalf(t.p1, x, xo, half === 0 ? l1 : l1.subarray(n1), true, sh);
    fillHalf(t.p2, x, xo + 4, half === 0 ? l2 : l2.subarray(n2), false, 0);
  };
  y.fill(0, 0, rows * mp);
  for (let r = 0; r < rows; r++) {
    const yo = r * mp;
    let g = 0;
    if (k) {
      const buf = k.memory.buffer;
      new Float32Array(buf, addr.x, np).set(x.subarray(r * np, r * np + np));
      const even = groups - (groups % 2);
      k.row(addr.codes, W_COMB, W_P1, n1 / 32, W_P2, n2 / 16, addr.l1, addr.l2, addr.x, even, mp, addr.y);
      y.set(new Float32Array(buf, addr.y, mp), yo);
      g = even;
    } else {
      // two groups per pass over y: half the loads and stores of the accumulator
      for (; g + 1 < groups; g += 2) {
        group(r * np + 8 * g, 0);
        group(r * np + 8 * g + 8, 1);
        const c0 = g * mp;
        const c1 = c0 + mp;
        for (let i = 0; i < mp; i++) {
          const e0 = comb[codesT[c0 + i]!]!;
          const e1 = comb[codesT[c1 + i]!]!;
          y[yo + i]! += l1[e0 & 0xffff]! + l2[e0 >>> 16]! + l1[n1 + (e1 & 0xffff)]! + l2[n2 + (e1 >>> 16)]!;
        }
      }
    }
    if (g < groups) {
      // odd group count: the last group in TypeScript (tables at the first half of l1/l2)
      group(r * np + 8 * g, 0);
      const c0 = g * mp;
      for (let i = 0; i < mp; i++) {
        const e0 = comb[codesT[c0 + i]!]!;
        y[yo + i]! += l1[e0 & 0xffff]! + l2[e0 >>> 16]!;
      }
    }
  }
}

/** Decode E8P codes into `out` (8 values per code) by copying codewords from the grid (no per-code allocation). */
export function e8pDecodeInto(codes: Uint16Array, out: Float32Array): void {
  const grid = e8pGrid();
  for (let k = 0; k < codes.length; k++) {
    const c = codes[k]! * 8;
    const o = k * 8;
    out[o] = grid[c]!;
    out[o + 1] = grid[c + 1]!;
    out[o + 2] = grid[c + 2]!;
    out[o + 3] = grid[c + 3]!;
    out[o + 4] = grid[c + 4]!;
    out[o + 5] = grid[c + 5]!;
    out[o + 6] = grid[c + 6]!;
    out[o + 7] = grid[c + 7]!;
  }
}
