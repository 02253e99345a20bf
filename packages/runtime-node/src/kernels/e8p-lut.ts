import { e8pSources } from '@caldera/quant';

/**
 * Table-driven product with E8P12 codes (layout in `@caldera/quant`'s e8p.ts). A codeword is `sgn ⊙ source[a] ± ¼`,
 * and the signs of coordinates 0–3 and 4–7 come from disjoint bits of the sign byte. So `⟨codeword, x⟩` splits into
 * two half dot products, each a function of (half magnitude pattern, 4 sign bits), plus `±¼·Σx`. For one 8-group of
 * the input we tabulate both halves for every distinct half pattern (32 each): the first half with both shift signs,
 * the second with and without one more negation of its last coordinate (32 entries per pattern either way). Each
 * code then costs two small-table reads and two table reads instead of eight multiply-adds. The WebAssembly kernel
 * (asm/e8p.ts) uses the same tables; this module builds them and holds the TypeScript reference loop.
 */
export interface E8PLutTables {
  /**
   * Per source index a = code >>> 8: first-half pattern·32 (low 16 bits) and second-half pattern·32 + 16 when
   * coordinate 7 is negated once more (odd coordinate sum) (high 16 bits).
   */
  ta: Uint32Array;
  /**
   * Per sign byte σ = code & 0xff: parity·16 + signs of coordinates 0–3 (low 16 bits; parity 1 = shift −¼) and the
   * signs of coordinates 4–7 (high 16 bits). A code's two table indices are `ta[a] + ts[σ]` (no carries).
   */
  ts: Uint32Array;
  /** Distinct half patterns, 4 magnitudes each. */
  p1: Float32Array;
  p2: Float32Array;
}

let tables: E8PLutTables | null = null;

const PERM = [0, 4, 1, 5, 2, 6, 3, 7];

/** Build (once) the index tables of the split decode. */
export function e8pLutTables(): E8PLutTables {
  if (tables) return tables;
  const src = e8pSources();
  const ta = new Uint32Array(256);
  const pats: [Map<string, number>, Map<string, number>] = [new Map(), new Map()];
  const lists: [number[], number[]] = [[], []];
  for (let a = 0; a < 256; a++) {
    let sum = 0;
    for (let i = 0; i < 8; i++) sum += src[a * 8 + i]!;
    let e = 0;
    for (let h = 0; h < 2; h++) {
      const v = Array.from(src.subarray(a * 8 + 4 * h, a * 8 + 4 * h + 4));
      const key = v.join(',');
      let idx = pats[h].get(key);
      if (idx === undefined) {
        idx = pats[h].size;
        pats[h].set(key, idx);
        lists[h].push(...v);
      }
      if (h === 0) e = idx * 32;
      else e += (idx * 32 + (Math.round(sum) % 2 === 1 ? 16 : 0)) * 65536;
    }
    ta[a] = e;
  }
  const ts = new Uint32Array(256);
  for (let s = 0; s < 256; s++) {
    let pc = 0;
    for (let b = 0; b < 8; b++) pc += (s >> b) & 1;
    const p = pc & 1;
    const s2 = s ^ p;
    let bits = 0;
    for (let i = 0; i < 8; i++) if ((s2 >> PERM[i]!) & 1) bits |= 1 << i;
    ts[s] = p * 16 + (bits & 15) + (bits >>> 4) * 65536;
  }
  tables = { ta, ts, p1: Float32Array.from(lists[0]), p2: Float32Array.from(lists[1]) };
  return tables;
}

/**
 * Fill `lut` (32 entries per pattern) with the signed half dot products of magnitude patterns `p` with x[xo..xo+4):
 * `first` — entries 0–15 plus `shift`, 16–31 minus it; otherwise entries 16–31 are 0–15 with the last coordinate
 * negated once more.
 */
function fillHalf(
  p: Float32Array,
  x: Float32Array,
  xo: number,
  lut: Float32Array,
  first: boolean,
  shift: number,
) {
  const x0 = x[xo]!;
  const x1 = x[xo + 1]!;
  const x2 = x[xo + 2]!;
  const x3 = x[xo + 3]!;
  const np = p.length / 4;
  for (let k = 0; k < np; k++) {
    const v0 = Math.fround(p[4 * k]! * x0);
    const v1 = Math.fround(p[4 * k + 1]! * x1);
    const v2 = Math.fround(p[4 * k + 2]! * x2);
    const v3 = Math.fround(p[4 * k + 3]! * x3);
    const o = 32 * k;
    // sign bit i set ⇒ coordinate i negated; index = bits of (c0, c1, c2, c3)
    for (let q = 0; q < 4; q++) {
      const b = Math.fround((q & 1 ? -v2 : v2) + (q & 2 ? -v3 : v3));
      for (let i = 0; i < 4; i++) {
        const e = Math.fround(Math.fround((i & 1 ? -v0 : v0) + (i & 2 ? -v1 : v1)) + b);
        if (first) {
          lut[o + 4 * q + i] = e + shift;
          lut[o + 16 + 4 * q + i] = e - shift;
        } else {
          lut[o + 4 * q + i] = e;
          lut[o + 16 + 4 * (q ^ 2) + i] = e;
        }
      }
    }
  }
}

/**
 * `y[r·mp + i] = Σ_g ⟨codeword(codesT[g·mp + i]), x[r·np + 8g…]⟩` (y is overwritten), in TypeScript: the reference
 * for the WebAssembly kernel and the fallback where WebAssembly SIMD is unavailable. Codes are stored group-major
 * (`[np/8, mp]`, the transpose of the checkpoint's row-major layout) so that one group's tables serve a contiguous
 * run of codes.
 */
export function e8pMatvecLut(
  codesT: Uint16Array,
  mp: number,
  np: number,
  x: Float32Array,
  rows: number,
  y: Float32Array,
): void {
  const { ta, ts, p1, p2 } = e8pLutTables();
  const l1 = new Float32Array(p1.length * 8);
  const l2 = new Float32Array(p2.length * 8);
  const groups = np / 8;
  y.fill(0, 0, rows * mp);
  for (let r = 0; r < rows; r++) {
    const yo = r * mp;
    for (let g = 0; g < groups; g++) {
      const xo = r * np + 8 * g;
      const sh = Math.fround(
        0.25 *
          (x[xo]! + x[xo + 1]! + x[xo + 2]! + x[xo + 3]! + x[xo + 4]! + x[xo + 5]! + x[xo + 6]! + x[xo + 7]!),
      );
      fillHalf(p1, x, xo, l1, true, sh);
      fillHalf(p2, x, xo + 4, l2, false, 0);
      const c0 = g * mp;
      for (let i = 0; i < mp; i++) {
        const code = codesT[c0 + i]!;
        const e = ta[code >>> 8]! + ts[code & 0xff]!;
        y[yo + i]! += l1[e & 0xffff]! + l2[e >>> 16]!;
      }
    }
  }
}
