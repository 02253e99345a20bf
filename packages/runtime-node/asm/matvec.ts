// AssemblyScript source of the dense matrix–vector kernels (WebAssembly SIMD; compiled by scripts/build-wasm.mjs).
// y[r·m + i] = Σ_j x[r·n + j]·W[i, j] for `rows` input rows, W row-major [m, n] resident in this memory; each weight
// row is read once and used for every input row (rows ≤ 4 in decode).

import { bf16ToF32, bf16ToF32Scalar, halfToF32, halfToF32Scalar } from './half';

// The sum of all lanes of four accumulators.
function sum4(a0: v128, a1: v128, a2: v128, a3: v128): f32 {
  const a = f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3));
  return (
    f32x4.extract_lane(a, 0) + f32x4.extract_lane(a, 1) + f32x4.extract_lane(a, 2) + f32x4.extract_lane(a, 3)
  );
}

export function denseF32(w: usize, m: i32, n: i32, x: usize, rows: i32, y: usize): void {
  const n16 = n & ~15;
  for (let i: i32 = 0; i < m; i++) {
    const wi = w + ((<usize>i * <usize>n) << 2);
    for (let r: i32 = 0; r < rows; r++) {
      const xr = x + ((<usize>r * <usize>n) << 2);
      let a0 = f32x4.splat(0);
      let a1 = f32x4.splat(0);
      let a2 = f32x4.splat(0);
      let a3 = f32x4.splat(0);
      let j: i32 = 0;
      for (; j < n16; j += 16) {
        const o = (<usize>j) << 2;
        a0 = f32x4.add(a0, f32x4.mul(v128.load(wi + o), v128.load(xr + o)));
        a1 = f32x4.add(a1, f32x4.mul(v128.load(wi + o, 16), v128.load(xr + o, 16)));
        a2 = f32x4.add(a2, f32x4.mul(v128.load(wi + o, 32), v128.load(xr + o, 32)));
        a3 = f32x4.add(a3, f32x4.mul(v128.load(wi + o, 48), v128.load(xr + o, 48)));
      }
      let s = sum4(a0, a1, a2, a3);
      for (; j < n; j++) s += load<f32>(wi + ((<usize>j) << 2)) * load<f32>(xr + ((<usize>j) << 2));
      store<f32>(y + ((<usize>r * <usize>m + <usize>i) << 2), s);
    }
  }
}

// As halfToF32 for finite halves only (no infinity or NaN in the matrix, checked once when it is loaded): the
// sign-extended bits shifted by 13 put the sign at bit 31 (bits 28–30 are sign copies, cleared) and exponent and
// mantissa in f32 position; the multiplication by 2^112 rebiases, exactly, keeping the sign. 3 operations instead of 10.
function finiteHalfToF32(h: v128): v128 {
  return f32x4.mul(v128.and(i32x4.shl(h, 13), i32x4.splat(0x8fffe000)), f32x4.splat(5.192296858534828e33));
}

// The 16-bit conversion of denseHalf, chosen at compile time by a tag type (each instantiation is its own branch-free
// loop): FiniteHalves for f16 matrices without infinities or NaNs, AnyHalves for the other f16 ones, BrainHalves for
// bf16 (any values: the conversion is one shift).
type FiniteHalves = u8;
type AnyHalves = u16;
type BrainHalves = u32;

function convertHalves<Kind>(h: v128): v128 {
  if (sizeof<Kind>() == sizeof<BrainHalves>()) return bf16ToF32(h);
  return sizeof<Kind>() == sizeof<FiniteHalves>() ? finiteHalfToF32(h) : halfToF32(h);
}

function convertHalfScalar<Kind>(h: u32): f32 {
  return sizeof<Kind>() == sizeof<BrainHalves>() ? bf16ToF32Scalar(h) : halfToF32Scalar(h);
}

function denseHalf<Kind>(w: usize, m: i32, n: i32, x: usize, rows: i32, y: usize): void {
  const n16 = n & ~15;
  for (let i: i32 = 0; i < m; i++) {
    const wi = w + ((<usize>i * <usize>n) << 1);
    for (let r: i32 = 0; r < rows; r++) {
      const xr = x + ((<usize>r * <usize>n) << 2);
      let a0 = f32x4.splat(0);
      let a1 = f32x4.splat(0);
      let a2 = f32x4.splat(0);
      let a3 = f32x4.splat(0);
      let j: i32 = 0;
      for (; j < n16; j += 16) {
        const h0 = v128.load(wi + ((<usize>j) << 1));
        const h1 = v128.load(wi + ((<usize>j) << 1), 16);
        const xo = xr + ((<usize>j) << 2);
        // sign-extended lanes: finiteHalfToF32 needs them, halfToF32 masks the sign bit itself, bf16ToF32 shifts it out
        a0 = f32x4.add(a0, f32x4.mul(convertHalves<Kind>(i32x4.extend_low_i16x8_s(h0)), v128.load(xo)));
        a1 = f32x4.add(a1, f32x4.mul(convertHalves<Kind>(i32x4.extend_high_i16x8_s(h0)), v128.load(xo, 16)));
        a2 = f32x4.add(a2, f32x4.mul(convertHalves<Kind>(i32x4.extend_low_i16x8_s(h1)), v128.load(xo, 32)));
        a3 = f32x4.add(a3, f32x4.mul(convertHalves<Kind>(i32x4.extend_high_i16x8_s(h1)), v128.load(xo, 48)));
      }
      let s = sum4(a0, a1, a2, a3);
      for (; j < n; j++)
        s +=
          convertHalfScalar<Kind>(<u32>load<u16>(wi + ((<usize>j) << 1))) * load<f32>(xr + ((<usize>j) << 2));
      store<f32>(y + ((<usize>r * <usize>m + <usize>i) << 2), s);
    }
  }
}

// W as f16 bits, any values (infinities and NaNs included).
export function denseF16(w: usize, m: i32, n: i32, x: usize, rows: i32, y: usize): void {
  denseHalf<AnyHalves>(w, m, n, x, rows, y);
}

// W as f16 bits, all finite.
export function denseF16Finite(w: usize, m: i32, n: i32, x: usize, rows: i32, y: usize): void {
  denseHalf<FiniteHalves>(w, m, n, x, rows, y);
}

// W as bf16 bits (any values).
export function denseBf16(w: usize, m: i32, n: i32, x: usize, rows: i32, y: usize): void {
  denseHalf<BrainHalves>(w, m, n, x, rows, y);
}

// 1 when none of the `count` f16 values at w is an infinity or NaN (exponent bits all ones), else 0.
export function finiteHalves(w: usize, count: i32): i32 {
  const expMask = i16x8.splat(0x7c00);
  let special = i16x8.splat(0);
  let j: i32 = 0;
  for (; j + 8 <= count; j += 8)
    special = v128.or(special, i16x8.eq(v128.and(v128.load(w + ((<usize>j) << 1)), expMask), expMask));
  if (v128.any_true(special)) return 0;
  for (; j < count; j++) if ((load<u16>(w + ((<usize>j) << 1)) & 0x7c00) == 0x7c00) return 0;
  return 1;
}

/** End of this module's static data (none today); the host's buffers start at 65 536 above it (checked). */
export function heapBase(): usize {
  return __heap_base;
}
