// AssemblyScript: the E8P table-driven matrix–vector product (WebAssembly SIMD), imported by asm/caldera.ts.
//
// A codeword is sgn ⊙ source[a] ± ¼ (layout in @caldera/quant's e8p.ts); its dot product with an 8-group of x splits
// into two half dot products, each a function of (half magnitude pattern, 4 sign bits), plus ±¼·Σx. Per group we
// tabulate both halves for every distinct half pattern: the first half with both shift signs (32 entries per pattern),
// the second half with and without one more negation of its last coordinate (32 entries per pattern). A code maps to
// the byte offsets of its two table entries through two 256-entry maps (src/kernels/e8p-lut.ts builds them), so each
// code costs four table reads and three adds instead of eight multiply-adds.

// Signed half dot products of `np` magnitude patterns (4 f32 each at p) with x[0..4): entry 4q + i of a pattern is
// (±v0 ± v1)[i] + (±v2 ± v3)[q] with v = pattern ⊙ x and the sign choices i, q ∈ 0..3 as bits (first, second negated).
// first: entries 0–15 with +shift, 16–31 with −shift. Otherwise: entries 16–31 are 0–15 with v3 negated once more
// (q ^ 2). 32 entries (128 bytes) per pattern either way.
function fillHalf(p: usize, np: i32, x: usize, lut: usize, first: bool, shift: f32): void {
  const xv = v128.load(x);
  const oddLanes = i32x4(0, 0x80000000, 0, 0x80000000); // negate lanes 1, 3: −v0 where bit 0 is set
  const highLanes = i32x4(0, 0, 0x80000000, 0x80000000); // negate lanes 2, 3: −v1 where bit 1 is set
  const s = f32x4.splat(shift);
  for (let k: i32 = 0; k < np; k++) {
    const v = f32x4.mul(v128.load(p + ((<usize>k) << 4)), xv);
    const a = f32x4.add(
      v128.xor(f32x4.splat(f32x4.extract_lane(v, 0)), oddLanes),
      v128.xor(f32x4.splat(f32x4.extract_lane(v, 1)), highLanes),
    );
    const b = f32x4.add(
      v128.xor(f32x4.splat(f32x4.extract_lane(v, 2)), oddLanes),
      v128.xor(f32x4.splat(f32x4.extract_lane(v, 3)), highLanes),
    );
    const o = lut + ((<usize>k) << 7);
    const r0 = f32x4.add(a, f32x4.splat(f32x4.extract_lane(b, 0)));
    const r1 = f32x4.add(a, f32x4.splat(f32x4.extract_lane(b, 1)));
    const r2 = f32x4.add(a, f32x4.splat(f32x4.extract_lane(b, 2)));
    const r3 = f32x4.add(a, f32x4.splat(f32x4.extract_lane(b, 3)));
    if (first) {
      v128.store(o, f32x4.add(r0, s));
      v128.store(o, f32x4.add(r1, s), 16);
      v128.store(o, f32x4.add(r2, s), 32);
      v128.store(o, f32x4.add(r3, s), 48);
      v128.store(o, f32x4.sub(r0, s), 64);
      v128.store(o, f32x4.sub(r1, s), 80);
      v128.store(o, f32x4.sub(r2, s), 96);
      v128.store(o, f32x4.sub(r3, s), 112);
    } else {
      v128.store(o, r0);
      v128.store(o, r1, 16);
      v128.store(o, r2, 32);
      v128.store(o, r3, 48);
      v128.store(o, r2, 64);
      v128.store(o, r3, 80);
      v128.store(o, r0, 96);
      v128.store(o, r1, 112);
    }
  }
}

// Both half tables of the 8-group at x: first halves at l1, second halves at l2. (Exported, with the table addresses
// below, for the benchmark variants in asm-bench/e8p-floors.ts.)
export function fillGroup(p1: usize, np1: i32, p2: usize, np2: i32, x: usize, l1: usize, l2: usize): void {
  const sh: f32 =
    0.25 *
    (load<f32>(x) +
      load<f32>(x, 4) +
      load<f32>(x, 8) +
      load<f32>(x, 12) +
      load<f32>(x, 16) +
      load<f32>(x, 20) +
      load<f32>(x, 24) +
      load<f32>(x, 28));
  fillHalf(p1, np1, x, l1, true, sh);
  fillHalf(p2, np2, x + 16, l2, false, 0);
}

// Fixed addresses in every kernel memory (src/kernels/caldera-kernel.ts lays them out): the two index maps ta and ts
// (256 u32 each; a code's entry byte offsets are ta[code >>> 8] + ts[code & 0xff]: into the first-half tables in the
// low 16 bits, into the second-half tables in the high 16 bits, no carries), then the first-half and second-half
// tables of two groups (32 patterns × 32 entries × 4 bytes = 4096 bytes per group and half). Constant addresses let
// every table read use an immediate offset; the maps (2 KiB) stay in L1 across layers, where one 65 536-entry map
// (256 KiB per layer memory) was measured slower in a whole model.
const TA: usize = 65536; // above the first page, which holds any static data (the host checks __heap_base)
const TS: usize = TA + 1024;
export const L1: usize = TA + 2048;
export const L2: usize = L1 + 8192;
export const GROUP: usize = 4096;

function entry(code: u32): u32 {
  return load<u32>(<usize>((code >>> 6) & 0x3fc), TA) + load<u32>(<usize>((code << 2) & 0x3fc), TS);
}

function halves0(e: u32): f32 {
  return load<f32>(<usize>(e & 0xffff), L1) + load<f32>(<usize>(e >>> 16), L2);
}

function halves1(e: u32): f32 {
  return load<f32>(<usize>(e & 0xffff), L1 + GROUP) + load<f32>(<usize>(e >>> 16), L2 + GROUP);
}

/**
 * y[0..mp) = Σ_g ⟨codeword(codes[g·mp + i]), x[8g..8g+8)⟩ for one input vector x of `groups`·8 values; codes are
 * group-major ([groups, mp]), mp even. p1/p2: the 32 half patterns each. Two groups per pass over y (an odd last group
 * alone) and four rows per step (one 64-bit load reads a group's four codes; two rows at a time for the rest).
 */
export function e8pRow(codes: usize, p1: usize, p2: usize, x: usize, groups: i32, mp: i32, y: usize): void {
  memory.fill(y, 0, (<usize>mp) << 2);
  let g: i32 = 0;
  for (; g + 1 < groups; g += 2) {
    const xo = x + ((<usize>g) << 5);
    fillGroup(p1, 32, p2, 32, xo, L1, L2);
    fillGroup(p1, 32, p2, 32, xo + 32, L1 + GROUP, L2 + GROUP);
    const c0 = codes + ((<usize>g * <usize>mp) << 1);
    const c1 = c0 + ((<usize>mp) << 1);
    let i: i32 = 0;
    for (; i + 4 <= mp; i += 4) {
      const o = <usize>i;
      const k0 = load<u64>(c0 + (o << 1));
      const k1 = load<u64>(c1 + (o << 1));
      const lo0 = <u32>k0;
      const hi0 = <u32>(k0 >>> 32);
      const lo1 = <u32>k1;
      const hi1 = <u32>(k1 >>> 32);
      const a = halves0(entry(lo0 & 0xffff)) + halves1(entry(lo1 & 0xffff));
      const b = halves0(entry(lo0 >>> 16)) + halves1(entry(lo1 >>> 16));
      const c = halves0(entry(hi0 & 0xffff)) + halves1(entry(hi1 & 0xffff));
      const d = halves0(entry(hi0 >>> 16)) + halves1(entry(hi1 >>> 16));
      const yo = y + (o << 2);
      v128.store(yo, f32x4.add(v128.load(yo), f32x4(a, b, c, d)));
    }
    for (; i < mp; i += 2) {
      const o = <usize>i;
      const k0 = load<u32>(c0 + (o << 1));
      const k1 = load<u32>(c1 + (o << 1));
      const a = halves0(entry(k0 & 0xffff)) + halves1(entry(k1 & 0xffff));
      const b = halves0(entry(k0 >>> 16)) + halves1(entry(k1 >>> 16));
      const yo = y + (o << 2);
      store<f32>(yo, load<f32>(yo) + a);
      store<f32>(yo, load<f32>(yo, 4) + b, 4);
    }
  }
  if (g < groups) {
    fillGroup(p1, 32, p2, 32, x + ((<usize>g) << 5), L1, L2);
    const c0 = codes + ((<usize>g * <usize>mp) << 1);
    for (let i: i32 = 0; i < mp; i += 2) {
      const o = <usize>i;
      const k0 = load<u32>(c0 + (o << 1));
      const yo = y + (o << 2);
      store<f32>(yo, load<f32>(yo) + halves0(entry(k0 & 0xffff)));
      store<f32>(yo, load<f32>(yo, 4) + halves0(entry(k0 >>> 16)), 4);
    }
  }
}
