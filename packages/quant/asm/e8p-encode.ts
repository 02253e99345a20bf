// AssemblyScript source of the exact E8P12 nearest-codeword encoder (compiled by scripts/build-wasm.mjs with SIMD).
// The algorithm of src/e8p-encode.ts, which stays the reference: the same f64 expressions in the same order and
// the same strict comparisons in the same sequence (shift +¼ classes, its extras, shift −¼ classes, its extras;
// the first minimum wins), so the codes are bit-identical (e8p.test.ts compares both on all its inputs).
//
// Both shifts run side by side in the two f64 lanes of v128 (lane p = shift p), so the sorting network is
// minpd/maxpd and the class choice is lane-wise compare + bitselect, without data-dependent branches. The scalar
// parts use i32/i64 selects (conditional moves; values are selected through their bit patterns because V8 compiles
// a float select to a branch) and compare non-negative doubles as integers, which orders them the same way. Only
// the rare paths branch: the 29 extra sources (when their lower bound can win) and ties among the largest |y|.
//
// Memory (imported): the encoder tables at the addresses exported below, written once by src/e8p-encode-wasm.ts,
// then per-vector scratch, then the caller's input chunk (f32) and codes (u16) at addresses it passes.

/** 256 × 8 f32 source magnitudes. */
export const SOURCES: i32 = 0;
/** 256 u8: 1 when the source's coordinate sum is odd. */
export const ODD_SUM: i32 = 8192;
/** 256 i16: source index by the bit mask of its 3/2 coordinates (sources without a 5/2). */
export const MASK_INDEX: i32 = 8448;
/** 8 i16: source index by the position of its 5/2. */
export const POS25_INDEX: i32 = 8960;
/** 64 i16: source index by 8·pos(5/2) + pos(3/2). */
export const PAIR_INDEX: i32 = 8976;
/** 29 × 3 u8: the ½ coordinates of the extra sources. */
export const EXTRA_HALF: i32 = 9104;
/** Per-vector scratch, one f64x2 (lane = shift) each: see the offsets below. */
const SCR: usize = 9216;
const O_D: usize = 0; // best class distance
const O_LB: usize = 16; // lower bound of the extras
const O_Y2: usize = 32; // ‖y‖²
const O_S: usize = 48; // Σ|y|
const O_S7: usize = 64; // smallest |y|
const O_S0: usize = 80; // largest |y|
const O_THR: usize = 96; // the smallest |y| that gets a large magnitude (∞ for class M0)
const O_Q: usize = 112; // best class 0..6 (i64 lanes)
const O_NEG: usize = 128; // all ones when y has an odd number of negative coordinates
/** 2 × 8 f64: |y| of shift 0, then of shift 1. */
const A: usize = 9472;
/** First free byte; the caller's buffers start here or later. */
export const FREE: i32 = 9600;
/** Bit 1 << q set for the classes whose sign parity is odd (M1, M3, M6). */
const ODD_CLASSES: i32 = 0x4a;

// π(i) of the code layout, π = [0, 4, 1, 5, 2, 6, 3, 7]
function perm(i: i32): i32 {
  return (i >> 1) | ((i & 1) << 2);
}

/** Encode `count` 8-vectors of f32 at `x` into u16 codes at `out`. The input must be finite. */
export function encode(x: usize, count: i32, out: usize): void {
  const shift = f64x2(0.25, -0.25);
  const zero = f64x2.splat(0);
  const two = f64x2.splat(2);
  const four = f64x2.splat(4);
  for (let k: i32 = 0; k < count; k++) {
    const base = x + ((<usize>k) << 5);
    const v0 = f64x2.sub(f64x2.splat(<f64>load<f32>(base)), shift);
    const v1 = f64x2.sub(f64x2.splat(<f64>load<f32>(base, 4)), shift);
    const v2 = f64x2.sub(f64x2.splat(<f64>load<f32>(base, 8)), shift);
    const v3 = f64x2.sub(f64x2.splat(<f64>load<f32>(base, 12)), shift);
    const v4 = f64x2.sub(f64x2.splat(<f64>load<f32>(base, 16)), shift);
    const v5 = f64x2.sub(f64x2.splat(<f64>load<f32>(base, 20)), shift);
    const v6 = f64x2.sub(f64x2.splat(<f64>load<f32>(base, 24)), shift);
    const v7 = f64x2.sub(f64x2.splat(<f64>load<f32>(base, 28)), shift);
    let y2 = f64x2.mul(v0, v0);
    y2 = f64x2.add(y2, f64x2.mul(v1, v1));
    y2 = f64x2.add(y2, f64x2.mul(v2, v2));
    y2 = f64x2.add(y2, f64x2.mul(v3, v3));
    y2 = f64x2.add(y2, f64x2.mul(v4, v4));
    y2 = f64x2.add(y2, f64x2.mul(v5, v5));
    y2 = f64x2.add(y2, f64x2.mul(v6, v6));
    y2 = f64x2.add(y2, f64x2.mul(v7, v7));
    const negm = v128.xor(
      v128.xor(
        v128.xor(f64x2.lt(v0, zero), f64x2.lt(v1, zero)),
        v128.xor(f64x2.lt(v2, zero), f64x2.lt(v3, zero)),
      ),
      v128.xor(
        v128.xor(f64x2.lt(v4, zero), f64x2.lt(v5, zero)),
        v128.xor(f64x2.lt(v6, zero), f64x2.lt(v7, zero)),
      ),
    );
    let s0 = f64x2.abs(v0);
    let s1 = f64x2.abs(v1);
    let s2 = f64x2.abs(v2);
    let s3 = f64x2.abs(v3);
    let s4 = f64x2.abs(v4);
    let s5 = f64x2.abs(v5);
    let s6 = f64x2.abs(v6);
    let s7 = f64x2.abs(v7);
    v128.store(A, f64x2.shuffle(s0, s1, 0, 2));
    v128.store(A, f64x2.shuffle(s2, s3, 0, 2), 16);
    v128.store(A, f64x2.shuffle(s4, s5, 0, 2), 32);
    v128.store(A, f64x2.shuffle(s6, s7, 0, 2), 48);
    v128.store(A, f64x2.shuffle(s0, s1, 1, 3), 64);
    v128.store(A, f64x2.shuffle(s2, s3, 1, 3), 80);
    v128.store(A, f64x2.shuffle(s4, s5, 1, 3), 96);
    v128.store(A, f64x2.shuffle(s6, s7, 1, 3), 112);
    let S = f64x2.add(s0, s1);
    S = f64x2.add(S, s2);
    S = f64x2.add(S, s3);
    S = f64x2.add(S, s4);
    S = f64x2.add(S, s5);
    S = f64x2.add(S, s6);
    S = f64x2.add(S, s7);
    // sorting network (19 compare-exchanges), descending; |y| ≥ +0 and never NaN, so pmin/pmax are min/max
    let t: v128;
    // prettier-ignore
    {
      t = f64x2.pmin(s0, s1); s0 = f64x2.pmax(s0, s1); s1 = t;
      t = f64x2.pmin(s2, s3); s2 = f64x2.pmax(s2, s3); s3 = t;
      t = f64x2.pmin(s4, s5); s4 = f64x2.pmax(s4, s5); s5 = t;
      t = f64x2.pmin(s6, s7); s6 = f64x2.pmax(s6, s7); s7 = t;
      t = f64x2.pmin(s0, s2); s0 = f64x2.pmax(s0, s2); s2 = t;
      t = f64x2.pmin(s1, s3); s1 = f64x2.pmax(s1, s3); s3 = t;
      t = f64x2.pmin(s4, s6); s4 = f64x2.pmax(s4, s6); s6 = t;
      t = f64x2.pmin(s5, s7); s5 = f64x2.pmax(s5, s7); s7 = t;
      t = f64x2.pmin(s1, s2); s1 = f64x2.pmax(s1, s2); s2 = t;
      t = f64x2.pmin(s5, s6); s5 = f64x2.pmax(s5, s6); s6 = t;
      t = f64x2.pmin(s0, s4); s0 = f64x2.pmax(s0, s4); s4 = t;
      t = f64x2.pmin(s3, s7); s3 = f64x2.pmax(s3, s7); s7 = t;
      t = f64x2.pmin(s1, s5); s1 = f64x2.pmax(s1, s5); s5 = t;
      t = f64x2.pmin(s2, s6); s2 = f64x2.pmax(s2, s6); s6 = t;
      t = f64x2.pmin(s1, s4); s1 = f64x2.pmax(s1, s4); s4 = t;
      t = f64x2.pmin(s3, s6); s3 = f64x2.pmax(s3, s6); s6 = t;
      t = f64x2.pmin(s2, s4); s2 = f64x2.pmax(s2, s4); s4 = t;
      t = f64x2.pmin(s3, s5); s3 = f64x2.pmax(s3, s5); s5 = t;
      t = f64x2.pmin(s3, s4); s3 = f64x2.pmax(s3, s4); s4 = t;
    }
    // classes M0..M6: d = (y2 − S) − 2·(prefix) + norm (+ 2·s7 on a parity mismatch), first minimum wins
    const half = f64x2.sub(y2, S);
    const pen = f64x2.mul(two, s7);
    const m0 = v128.and(pen, negm); // parity 0 classes: M0, M2, M4, M5
    const m1 = v128.andnot(pen, negm); // parity 1 classes: M1, M3, M6
    const p2 = f64x2.add(s0, s1);
    const p3 = f64x2.add(p2, s2);
    const p4 = f64x2.add(p3, s3);
    const h4s0 = f64x2.sub(half, f64x2.mul(four, s0));
    let d = f64x2.add(f64x2.add(half, two), m0);
    let q = i64x2.splat(0);
    let thr = f64x2.splat(Infinity);
    let dq = f64x2.add(f64x2.add(f64x2.sub(half, f64x2.mul(two, s0)), four), m1);
    let lt = f64x2.lt(dq, d);
    d = v128.bitselect(dq, d, lt);
    q = v128.bitselect(i64x2.splat(1), q, lt);
    thr = v128.bitselect(s0, thr, lt);
    dq = f64x2.add(f64x2.add(f64x2.sub(half, f64x2.mul(two, p2)), f64x2.splat(6)), m0);
    lt = f64x2.lt(dq, d);
    d = v128.bitselect(dq, d, lt);
    q = v128.bitselect(i64x2.splat(2), q, lt);
    thr = v128.bitselect(s1, thr, lt);
    dq = f64x2.add(f64x2.add(f64x2.sub(half, f64x2.mul(two, p3)), f64x2.splat(8)), m1);
    lt = f64x2.lt(dq, d);
    d = v128.bitselect(dq, d, lt);
    q = v128.bitselect(i64x2.splat(3), q, lt);
    thr = v128.bitselect(s2, thr, lt);
    dq = f64x2.add(f64x2.add(f64x2.sub(half, f64x2.mul(two, p4)), f64x2.splat(10)), m0);
    lt = f64x2.lt(dq, d);
    d = v128.bitselect(dq, d, lt);
    q = v128.bitselect(i64x2.splat(4), q, lt);
    thr = v128.bitselect(s3, thr, lt);
    dq = f64x2.add(f64x2.add(h4s0, f64x2.splat(8)), m0);
    lt = f64x2.lt(dq, d);
    d = v128.bitselect(dq, d, lt);
    q = v128.bitselect(i64x2.splat(5), q, lt);
    thr = v128.bitselect(s0, thr, lt);
    dq = f64x2.add(f64x2.add(f64x2.sub(h4s0, f64x2.mul(two, s1)), f64x2.splat(10)), m1);
    lt = f64x2.lt(dq, d);
    d = v128.bitselect(dq, d, lt);
    q = v128.bitselect(i64x2.splat(6), q, lt);
    thr = v128.bitselect(s1, thr, lt);
    // extras: dot = 1.5·S − Σ_C a, norm 12, parity 1; lower bound from the 3 smallest a
    const lb = f64x2.add(
      f64x2.add(
        f64x2.sub(y2, f64x2.mul(f64x2.splat(3), S)),
        f64x2.mul(two, f64x2.add(f64x2.add(s5, s6), s7)),
      ),
      f64x2.splat(12),
    );
    v128.store(SCR, d, O_D);
    v128.store(SCR, lb, O_LB);
    v128.store(SCR, y2, O_Y2);
    v128.store(SCR, S, O_S);
    v128.store(SCR, s7, O_S7);
    v128.store(SCR, s0, O_S0);
    v128.store(SCR, thr, O_THR);
    v128.store(SCR, q, O_Q);
    v128.store(SCR, negm, O_NEG);
    // shift 0 then shift 1: its classes, then its extras when their lower bound beats the best so far
    let bestD: f64 = Infinity;
    let bestP: i32 = 0;
    let bestKind: i32 = 0; // 0..6 class, 7 + e extra source e
    for (let p: i32 = 0; p < 2; p++) {
      const o = SCR + ((<usize>p) << 3);
      const dp = load<f64>(o, O_D);
      const better = dp < bestD;
      bestD = reinterpret<f64>(select<i64>(reinterpret<i64>(dp), reinterpret<i64>(bestD), better));
      bestP = select<i32>(p, bestP, better);
      bestKind = select<i32>(load<i32>(o, O_Q), bestKind, better);
      if (load<f64>(o, O_LB) < bestD) {
        const ap = A + ((<usize>p) << 6);
        const base3 = load<f64>(o, O_Y2) - 3 * load<f64>(o, O_S);
        const mis = (load<i32>(o, O_NEG) & 1) ^ 1;
        const six7 = 6 * load<f64>(o, O_S7);
        for (let e: i32 = 0; e < 29; e++) {
          const h = <usize>(EXTRA_HALF + 3 * e);
          const i0 = <i32>load<u8>(h);
          const i1 = <i32>load<u8>(h, 1);
          const i2 = <i32>load<u8>(h, 2);
          const c0 = load<f64>(ap + ((<usize>i0) << 3));
          const c1 = load<f64>(ap + ((<usize>i1) << 3));
          const c2 = load<f64>(ap + ((<usize>i2) << 3));
          let de = base3 + 2 * (c0 + c1 + c2) + 12;
          if (mis) {
            // cheapest single flip: min over ½-coordinates of 2·a, over 3/2-coordinates of 6·a
            let minC = c0 < c1 ? c0 : c1;
            if (c2 < minC) minC = c2;
            let pmin = 2 * minC;
            if (six7 < pmin) {
              // the smallest a might sit on a 3/2 coordinate: scan the 5 others
              const cm = (1 << i0) | (1 << i1) | (1 << i2);
              for (let i: i32 = 0; i < 8; i++) {
                const ai6 = 6 * load<f64>(ap + ((<usize>i) << 3));
                if (!((cm >> i) & 1) && ai6 < pmin) pmin = ai6;
              }
            }
            de += pmin;
          }
          if (de < bestD) {
            bestD = de;
            bestP = p;
            bestKind = 7 + e;
          }
        }
      }
    }
    store<u16>(out + ((<usize>k) << 1), <u16>buildCode(base, bestP, bestKind));
  }
}

/** |y| ≥ thr of the four f64x2 pairs at ap, as 8 bits (bit i = coordinate i). */
function geMask(ap: usize, thr: v128): i32 {
  return (
    i64x2.bitmask(f64x2.ge(v128.load(ap), thr)) |
    (i64x2.bitmask(f64x2.ge(v128.load(ap, 16), thr)) << 2) |
    (i64x2.bitmask(f64x2.ge(v128.load(ap, 32), thr)) << 4) |
    (i64x2.bitmask(f64x2.ge(v128.load(ap, 48), thr)) << 6)
  );
}

/** Turn the winning (shift, class or extra source) into its 16-bit code without building the point. */
function buildCode(base: usize, p: i32, kind: i32): i32 {
  const o = SCR + ((<usize>p) << 3);
  const ap = A + ((<usize>p) << 6);
  const isExtra = kind >= 7;
  // parity flip needed: the class's sign parity (extras: odd) differs from the number of negative y
  const mis = select<i32>(1, (ODD_CLASSES >> (kind & 7)) & 1, isExtra) ^ (load<i32>(o, O_NEG) & 1);
  // sign bits of y = x − shift at their code positions π(i): y < 0 exactly when x < shift
  const xs = f32x4.splat(reinterpret<f32>(0x3e800000 | (p << 31))); // ±¼
  const lo = v128.load(base);
  const hi = v128.load(base, 16);
  const nm =
    i32x4.bitmask(f32x4.lt(f32x4.shuffle(lo, hi, 0, 2, 4, 6), xs)) |
    (i32x4.bitmask(f32x4.lt(f32x4.shuffle(lo, hi, 1, 3, 5, 7), xs)) << 4);
  // the nbig largest |y| carry the large magnitudes (selection by repeated argmax, lowest index first on ties): the
  // coordinates with |y| ≥ the nbig-th largest unless ties there make that set too large; the 5/2 of M5/M6 on the
  // first largest
  let first = ctz<i32>(geMask(ap, f64x2.splat(load<f64>(o, O_S0))));
  let used = geMask(ap, f64x2.splat(load<f64>(o, O_THR)));
  used = select<i32>(1 << first, used, kind == 5);
  const nbig = select<i32>(2, kind, kind == 6);
  if (((<u32>(kind - 1) < 4) | (kind == 6)) & (popcnt<i32>(used) != nbig)) {
    used = 0;
    for (let r: i32 = 0; r < nbig; r++) {
      let bi: i32 = -1;
      let bv: f64 = -1;
      for (let i: i32 = 0; i < 8; i++) {
        const ai = load<f64>(ap + ((<usize>i) << 3));
        if (!((used >> i) & 1) && ai > bv) {
          bv = ai;
          bi = i;
        }
      }
      used |= 1 << bi;
      if (r == 0) first = bi;
    }
  }
  const srcM = <i32>load<i16>(<usize>(MASK_INDEX + ((used & 255) << 1)));
  const src5 = <i32>load<i16>(<usize>(POS25_INDEX + (first << 1)));
  const second = 31 - clz<i32>(used & ~(1 << first)); // −1 when there is none (then unused)
  const src6 = <i32>load<i16>(<usize>(PAIR_INDEX + ((first * 8 + second) << 1)));
  const src = select<i32>(
    srcM,
    select<i32>(src5, select<i32>(src6, 220 + kind, kind == 6), kind == 5),
    kind <= 4,
  );
  // the coordinate whose sign flips on a parity mismatch: classes, the smallest |y| among the ½ coordinates; extras,
  // the smallest |y|·magnitude; lowest index first. Costs are ≥ +0, so their bit patterns order like the values.
  const inf = reinterpret<i64>(Infinity);
  const srow = <usize>(SOURCES + (src << 5));
  let mv = inf;
  let flipI: i32 = 0;
  for (let i: i32 = 0; i < 8; i++) {
    const ai = load<f64>(ap + ((<usize>i) << 3));
    const ce = reinterpret<i64>(ai * <f64>load<f32>(srow + ((<usize>i) << 2)));
    const cm = select<i64>(inf, reinterpret<i64>(ai), (used >> i) & 1);
    const c = select<i64>(ce, cm, isExtra);
    const take = c < mv;
    mv = select<i64>(c, mv, take);
    flipI = select<i32>(i, flipI, take);
  }
  // bit π(i) of σ' is set when coordinate i's sign differs from decode's base sign (coordinate 7 starts negative
  // for sources with an odd coordinate sum)
  const s2 = nm ^ select<i32>(1 << perm(flipI), 0, mis) ^ ((<i32>load<u8>(<usize>(ODD_SUM + src))) << 7);
  return (src << 8) | (s2 ^ p);
}
