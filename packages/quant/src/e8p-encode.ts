/**
 * Fast exact nearest-codeword search for E8P12 (closed form per magnitude class, no table scan).
 *
 * A codeword is `u ± ¼` with `u` a signed arrangement of a source magnitude vector whose number of negative
 * entries has the parity of the source's coordinate sum. For a target `y = x ∓ ¼` with `a = |y|` sorted
 * descending as `s0 ≥ … ≥ s7`, and `S = Σa`:
 * - The 227 sources of squared norm ≤ 10 are all permutations of 7 multisets (½⁸; 3/2·½⁷; (3/2)²·½⁶;
 *   (3/2)³·½⁵; (3/2)⁴·½⁴; 5/2·½⁷; 5/2·3/2·½⁶). By the rearrangement inequality the best arrangement pairs the
 *   sorted magnitudes with the sorted `a` and takes the signs of `y`, so `⟨y,u⟩ = S/2 + (prefix sums of s)`. If
 *   the sign parity is wrong, exactly one sign must disagree; the cheapest is the smallest `a` (paired with ½),
 *   which costs `2·s7` in squared distance (any other choice is dominated elementwise).
 * - The 29 extra sources (five 3/2, three ½ at fixed positions C) give `⟨y,u⟩ = 1.5·S − Σ_C a`; a wrong parity
 *   costs `4·min_i a_i·m_i`. They are skipped when a lower bound already loses.
 * The distance `‖y‖² − 2⟨y,u⟩ + ‖u‖²` is compared across both shifts; only the winner is turned into a code.
 * `e8p.test.ts` checks the result against an exhaustive search over all 65 536 codewords.
 *
 * `asm/e8p-encode.ts` is the same algorithm in AssemblyScript (WebAssembly SIMD, both shifts in the two f64 lanes),
 * which `e8pEncode` runs by default; this file is the reference and the fallback. Keep the two in step: the tests
 * require bit-identical codes, including which of several equidistant codewords wins.
 */

/** Tables the encoder needs (built by `e8p.ts` from the source vectors). */
export interface E8PEncodeTables {
  /** 256 × 8 source magnitudes. */
  sources: Float32Array;
  /** 1 when the source's coordinate sum is odd (decode negates coordinate 7 then). */
  oddSum: Uint8Array;
  /** Source index (rows 0..226) by the bit mask of its 3/2 coordinates, for sources without a 5/2. */
  maskIndex: Int16Array;
  /** Source index by the position of its 5/2 (sources 5/2·½⁷). */
  pos25Index: Int16Array;
  /** Source index by `8·pos(5/2) + pos(3/2)` (sources 5/2·3/2·½⁶). */
  pairIndex: Int16Array;
  /** For each of the 29 extra sources, the 3 coordinates holding ½ (29 × 3). */
  extraHalf: Int8Array;
}

const PERM = [0, 4, 1, 5, 2, 6, 3, 7];

/**
 * Encode `count` 8-vectors of `x` starting at `x[off]` into `out[outOff ..]`. Non-finite input must be rejected by
 * the caller. Scratch arrays are passed in so the hot loop allocates nothing.
 */
export function e8pEncodeInto(
  t: E8PEncodeTables,
  x: Float32Array,
  off: number,
  count: number,
  out: Uint16Array,
  outOff: number,
): void {
  const a = new Float64Array(8);
  const extraHalf = t.extraHalf;
  for (let k = 0; k < count; k++) {
    const base = off + 8 * k;
    let bestD = Infinity;
    let bestP = 0;
    let bestKind = 0; // 0..6 multiset, 7 + e extra source e
    let bestMis = 0;
    let bestThr = 0; // classes M1–M4: the q-th largest |y|, the smallest magnitude that gets 3/2
    for (let p = 0; p < 2; p++) {
      const shift = p === 1 ? -0.25 : 0.25;
      let y2 = 0;
      let neg = 0;
      let S = 0;
      for (let i = 0; i < 8; i++) {
        const v = x[base + i]! - shift;
        y2 += v * v;
        const av = Math.abs(v);
        neg ^= Number(v < 0);
        a[i] = av;
        S += av;
      }
      // sorting network (19 compare-exchanges) on local copies, descending
      let s0 = a[0]!,
        s1 = a[1]!,
        s2 = a[2]!,
        s3 = a[3]!,
        s4 = a[4]!,
        s5 = a[5]!,
        s6 = a[6]!,
        s7 = a[7]!;
      let tmp: number;
      if (s0 < s1) { tmp = s0; s0 = s1; s1 = tmp; } // prettier-ignore
      if (s2 < s3) { tmp = s2; s2 = s3; s3 = tmp; } // prettier-ignore
      if (s4 < s5) { tmp = s4; s4 = s5; s5 = tmp; } // prettier-ignore
      if (s6 < s7) { tmp = s6; s6 = s7; s7 = tmp; } // prettier-ignore
      if (s0 < s2) { tmp = s0; s0 = s2; s2 = tmp; } // prettier-ignore
      if (s1 < s3) { tmp = s1; s1 = s3; s3 = tmp; } // prettier-ignore
      if (s4 < s6) { tmp = s4; s4 = s6; s6 = tmp; } // prettier-ignore
      if (s5 < s7) { tmp = s5; s5 = s7; s7 = tmp; } // prettier-ignore
      if (s1 < s2) { tmp = s1; s1 = s2; s2 = tmp; } // prettier-ignore
      if (s5 < s6) { tmp = s5; s5 = s6; s6 = tmp; } // prettier-ignore
      if (s0 < s4) { tmp = s0; s0 = s4; s4 = tmp; } // prettier-ignore
      if (s3 < s7) { tmp = s3; s3 = s7; s7 = tmp; } // prettier-ignore
      if (s1 < s5) { tmp = s1; s1 = s5; s5 = tmp; } // prettier-ignore
      if (s2 < s6) { tmp = s2; s2 = s6; s6 = tmp; } // prettier-ignore
      if (s1 < s4) { tmp = s1; s1 = s4; s4 = tmp; } // prettier-ignore
      if (s3 < s6) { tmp = s3; s3 = s6; s6 = tmp; } // prettier-ignore
      if (s2 < s4) { tmp = s2; s2 = s4; s4 = tmp; } // prettier-ignore
      if (s3 < s5) { tmp = s3; s3 = s5; s5 = tmp; } // prettier-ignore
      if (s3 < s4) { tmp = s3; s3 = s4; s4 = tmp; } // prettier-ignore
      const half = y2 - S; // y2 − 2·(S/2)
      const pen = 2 * s7;
      // d = y2 − 2·dot + norm, dot = S/2 + extra
      // M0..M6 in turn: d = (y2 − S) − 2·(prefix) + norm (+ 2·s7 on a parity mismatch)
      const m0 = neg !== 0 ? pen : 0; // parity 0 classes: M0, M2, M4, M5
      const m1 = neg !== 1 ? pen : 0; // parity 1 classes: M1, M3, M6
      const p1 = s0;
      const p2 = p1 + s1;
      const p3 = p2 + s2;
      const p4 = p3 + s3;
      let d = half + 2 + m0;
      let q = 0;
      let dq = half - 2 * p1 + 4 + m1;
      if (dq < d) { d = dq; q = 1; } // prettier-ignore
      dq = half - 2 * p2 + 6 + m0;
      if (dq < d) { d = dq; q = 2; } // prettier-ignore
      dq = half - 2 * p3 + 8 + m1;
      if (dq < d) { d = dq; q = 3; } // prettier-ignore
      dq = half - 2 * p4 + 10 + m0;
      if (dq < d) { d = dq; q = 4; } // prettier-ignore
      dq = half - 4 * s0 + 8 + m0;
      if (dq < d) { d = dq; q = 5; } // prettier-ignore
      dq = half - 4 * s0 - 2 * s1 + 10 + m1;
      if (dq < d) { d = dq; q = 6; } // prettier-ignore
      if (d < bestD) {
        bestD = d;
        bestP = p;
        bestKind = q;
        bestMis = (q === 1 || q === 3 || q === 6 ? 1 : 0) !== neg ? 1 : 0;
        bestThr = q === 1 ? s0 : q === 2 ? s1 : q === 3 ? s2 : s3;
      }
      // extras: dot = 1.5·S − Σ_C a, norm 12, parity 1; lower bound uses the 3 smallest a
      if (y2 - 3 * S + 2 * (s5 + s6 + s7) + 12 < bestD) {
        const mis = neg !== 1 ? 1 : 0;
        for (let e = 0; e < 29; e++) {
          const c0 = a[extraHalf[3 * e]!]!;
          const c1 = a[extraHalf[3 * e + 1]!]!;
          const c2 = a[extraHalf[3 * e + 2]!]!;
          let d = y2 - 3 * S + 2 * (c0 + c1 + c2) + 12;
          if (mis) {
            // cheapest single flip: min over ½-coordinates of 2·a, over 3/2-coordinates of 6·a
            let minC = c0 < c1 ? c0 : c1;
            if (c2 < minC) minC = c2;
            let pmin = 2 * minC;
            if (6 * s7 < pmin) {
              // the smallest a might sit on a 3/2 coordinate: scan the 5 others
              for (let i = 0; i < 8; i++) {
                if (i === extraHalf[3 * e] || i === extraHalf[3 * e + 1] || i === extraHalf[3 * e + 2])
                  continue;
                if (6 * a[i]! < pmin) pmin = 6 * a[i]!;
              }
            }
            d += pmin;
          }
          if (d < bestD) {
            bestD = d;
            bestP = p;
            bestKind = 7 + e;
            bestMis = mis;
          }
        }
      }
    }
    out[outOff + k] = buildCode(t, x, base, bestP, bestKind, bestMis, bestThr, a);
  }
}

/** Turn the winning (shift, class, parity-flip) into its 16-bit code without building the point. */
function buildCode(
  t: E8PEncodeTables,
  x: Float32Array,
  base: number,
  p: number,
  kind: number,
  mis: number,
  thr: number,
  a: Float64Array,
): number {
  const shift = p === 1 ? -0.25 : 0.25;
  let nm = 0; // sign bits of y, already at their code positions π(i)
  for (let i = 0; i < 8; i++) {
    const v = x[base + i]! - shift;
    a[i] = Math.abs(v);
    if (v < 0) nm |= 1 << PERM[i]!;
  }
  let src: number;
  let flipI = -1;
  if (kind < 7) {
    // the `nbig` largest |y| carry the large magnitudes (selection by repeated argmax), the rest ½
    const nbig = kind <= 4 ? kind : kind - 4; // M5: one 5/2; M6: 5/2 then 3/2
    let used = 0;
    let first = -1;
    if (kind >= 1 && kind <= 4) {
      // one pass: the coordinates with |y| ≥ the q-th largest, unless ties at it make that set too large (then
      // the selection below decides, lowest index first)
      let n = 0;
      for (let i = 0; i < 8; i++)
        if (a[i]! >= thr) {
          used |= 1 << i;
          n++;
        }
      if (n !== nbig) used = 0;
    }
    for (let r = used === 0 ? 0 : nbig; r < nbig; r++) {
      let bi = -1;
      let bv = -1;
      for (let i = 0; i < 8; i++) {
        if (!((used >> i) & 1) && a[i]! > bv) {
          bv = a[i]!;
          bi = i;
        }
      }
      used |= 1 << bi;
      if (r === 0) first = bi;
    }
    if (kind <= 4) src = t.maskIndex[used]!;
    else if (kind === 5) src = t.pos25Index[first]!;
    else src = t.pairIndex[first * 8 + (31 - Math.clz32(used & ~(1 << first)))]!;
    if (mis) {
      // flip the smallest |y| among the ½ coordinates
      let mv = Infinity;
      for (let i = 0; i < 8; i++) {
        if (!((used >> i) & 1) && a[i]! < mv) {
          mv = a[i]!;
          flipI = i;
        }
      }
    }
  } else {
    src = 227 + (kind - 7);
    if (mis) {
      let flipCost = Infinity;
      for (let i = 0; i < 8; i++) {
        const c = a[i]! * t.sources[src * 8 + i]!;
        if (c < flipCost) {
          flipCost = c;
          flipI = i;
        }
      }
    }
  }
  // bit π(i) of σ' is set when coordinate i's sign differs from decode's base sign (coordinate 7 starts negative
  // for sources with an odd coordinate sum)
  let s2 = nm;
  if (flipI >= 0) s2 ^= 1 << PERM[flipI]!;
  if (t.oddSum[src] === 1) s2 ^= 1 << PERM[7]!;
  const sigma = p === 1 ? s2 ^ 1 : s2;
  return (src << 8) | sigma;
}
