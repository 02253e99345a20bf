// AssemblyScript, benchmark only (bench/floors.ts compiles it at run time; not part of the package): two variants of
// the E8P product that bound what decoding can reach in WebAssembly SIMD128 on one core, next to the shipped kernel.
import { e8pRow, fillGroup, GROUP, L1, L2 } from '../asm/e8p';

export { e8pRow };

function half0(e: u32): f32 {
  return load<f32>(<usize>(e & 0xffff), L1) + load<f32>(<usize>(e >>> 16), L2);
}

function half1(e: u32): f32 {
  return load<f32>(<usize>(e & 0xffff), L1 + GROUP) + load<f32>(<usize>(e >>> 16), L2 + GROUP);
}

/**
 * e8pRow with each code's two table byte offsets precomputed (u32 per code, group-major [groups, mp], groups even,
 * mp a multiple of 4): no map reads, only the two table reads and an add per code. Same outputs as e8pRow.
 */
export function e8pRowOffsets(
  ent: usize,
  p1: usize,
  p2: usize,
  x: usize,
  groups: i32,
  mp: i32,
  y: usize,
): void {
  memory.fill(y, 0, (<usize>mp) << 2);
  for (let g: i32 = 0; g + 1 < groups; g += 2) {
    const xo = x + ((<usize>g) << 5);
    fillGroup(p1, 32, p2, 32, xo, L1, L2);
    fillGroup(p1, 32, p2, 32, xo + 32, L1 + GROUP, L2 + GROUP);
    const c0 = ent + ((<usize>g * <usize>mp) << 2);
    const c1 = c0 + ((<usize>mp) << 2);
    for (let i: i32 = 0; i + 4 <= mp; i += 4) {
      const o = (<usize>i) << 2;
      const k0 = load<u64>(c0 + o);
      const k1 = load<u64>(c1 + o);
      const k2 = load<u64>(c0 + o, 8);
      const k3 = load<u64>(c1 + o, 8);
      const a = half0(<u32>k0) + half1(<u32>k1);
      const b = half0(<u32>(k0 >>> 32)) + half1(<u32>(k1 >>> 32));
      const c = half0(<u32>k2) + half1(<u32>k3);
      const d = half0(<u32>(k2 >>> 32)) + half1(<u32>(k3 >>> 32));
      const yo = y + o;
      v128.store(yo, f32x4.add(v128.load(yo), f32x4(a, b, c, d)));
    }
  }
}

/**
 * The int8 route (as native IQ2 kernels): y[i] = Σ ⟨grid8[code], xq⟩ in i32 for row-major codes [mp, groups] (groups
 * even), with the 65 536 codewords as int8 (4·w) at grid8 and int8 activations xq; SIMD128 widening multiplies.
 */
export function e8pRowInt8(codes: usize, mp: i32, groups: i32, xq: usize, grid8: usize, y: usize): void {
  for (let i: i32 = 0; i < mp; i++) {
    let acc0 = i32x4.splat(0);
    let acc1 = i32x4.splat(0);
    const row = codes + ((<usize>i * <usize>groups) << 1);
    for (let g: i32 = 0; g < groups; g += 2) {
      const cc = load<u32>(row + ((<usize>g) << 1));
      let w = v128.load64_zero(grid8 + ((<usize>(cc & 0xffff)) << 3));
      w = v128.load64_lane(grid8 + ((<usize>(cc >>> 16)) << 3), w, 1);
      const xv = v128.load(xq + ((<usize>g) << 3));
      acc0 = i32x4.add(acc0, i32x4.extadd_pairwise_i16x8_s(i16x8.extmul_low_i8x16_s(w, xv)));
      acc1 = i32x4.add(acc1, i32x4.extadd_pairwise_i16x8_s(i16x8.extmul_high_i8x16_s(w, xv)));
    }
    const a = i32x4.add(acc0, acc1);
    store<i32>(
      y + ((<usize>i) << 2),
      i32x4.extract_lane(a, 0) +
        i32x4.extract_lane(a, 1) +
        i32x4.extract_lane(a, 2) +
        i32x4.extract_lane(a, 3),
    );
  }
}
