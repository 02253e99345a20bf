// AssemblyScript: helpers of the layers' batch paths (many input rows), in one workspace memory that the host
// (src/kernels/batch-workspace.ts) lays out: the CALDERA rotations and Q̂'s E8P decode, and f16/bf16 → f32 conversion. The
// products themselves run in @caldera/linalg's gemm (threaded by its pool). Pointers are explicit.
import { bf16ToF32, bf16ToF32Scalar, halfToF32, halfToF32Scalar } from './half';
import { hadamardInPlace } from './hadamard';

/**
 * For each of `rows` rows of n values at x: xr row = H_np·(su ⊙ x row) zero-padded to np (K: the Hadamard block
 * factor of np, 0 for none; mix its K×K matrix). tmp: np f32 of scratch.
 */
export function rotateRowsIn(
  x: usize,
  n: i32,
  rows: i32,
  su: usize,
  np: i32,
  K: i32,
  mix: usize,
  xr: usize,
  tmp: usize,
): void {
  for (let r: i32 = 0; r < rows; r++) {
    const src = x + ((<usize>(r * n)) << 2);
    const dst = xr + ((<usize>(r * np)) << 2);
    let j: i32 = 0;
    for (; j + 4 <= n; j += 4) {
      const o = (<usize>j) << 2;
      v128.store(dst + o, f32x4.mul(v128.load(src + o), v128.load(su + o)));
    }
    for (; j < n; j++) {
      const o = (<usize>j) << 2;
      store<f32>(dst + o, load<f32>(src + o) * load<f32>(su + o));
    }
    memory.fill(dst + ((<usize>n) << 2), 0, (<usize>(np - n)) << 2);
    if (K > 0) hadamardInPlace(dst, np, K, mix, tmp);
  }
}

/**
 * For each of `rows` rows of mp values at yr (overwritten): y row = scale · sv ⊙ (H_mpᵀ·yr row)[0..m) (K, mix: the
 * transposed block mix of mp; K = 0 for none). tmp: mp f32 of scratch.
 */
export function rotateRowsOut(
  yr: usize,
  mp: i32,
  rows: i32,
  K: i32,
  mix: usize,
  sv: usize,
  scale: f32,
  y: usize,
  m: i32,
  tmp: usize,
): void {
  const s = f32x4.splat(scale);
  for (let r: i32 = 0; r < rows; r++) {
    const src = yr + ((<usize>(r * mp)) << 2);
    const dst = y + ((<usize>(r * m)) << 2);
    if (K > 0) hadamardInPlace(src, mp, K, mix, tmp);
    let i: i32 = 0;
    for (; i + 4 <= m; i += 4) {
      const o = (<usize>i) << 2;
      v128.store(dst + o, f32x4.mul(s, f32x4.mul(v128.load(src + o), v128.load(sv + o))));
    }
    for (; i < m; i++) {
      const o = (<usize>i) << 2;
      store<f32>(dst + o, scale * (load<f32>(src + o) * load<f32>(sv + o)));
    }
  }
}

/**
 * Decode `count` E8P codes at `codes` (u16) into 8 f32 each at `out` (unscaled codewords). A code's two halves come
 * from two tables of 4-f32 entries: h1 (first half, shift included) and h2 (second half, shift included), indexed by
 * the same maps as the product (ta at da, ts at ds, raw entries): first-half entry e & 0xffff, second-half entry
 * (e >>> 16) + 1024 when the shift is negative (bit 4 of e). src/kernels/caldera-batch.ts builds the tables.
 */
export function decodeE8P(
  codes: usize,
  count: i32,
  da: usize,
  ds: usize,
  h1: usize,
  h2: usize,
  out: usize,
): void {
  for (let k: i32 = 0; k < count; k++) {
    const code = <u32>load<u16>(codes + ((<usize>k) << 1));
    const e = load<u32>(da + ((<usize>(code >>> 8)) << 2)) + load<u32>(ds + ((<usize>(code & 0xff)) << 2));
    const i1 = <usize>(e & 0xffff);
    const i2 = <usize>((e >>> 16) | ((e & 16) << 6));
    const o = out + ((<usize>k) << 5);
    v128.store(o, v128.load(h1 + (i1 << 4)));
    v128.store(o, v128.load(h2 + (i2 << 4)), 16);
  }
}

/** dst (cols × rows) = the transpose of src (rows × cols), f32, in 8 × 8 tiles. */
export function transpose32(src: usize, rows: i32, cols: i32, dst: usize): void {
  for (let i0: i32 = 0; i0 < rows; i0 += 8) {
    const i1 = min(i0 + 8, rows);
    for (let j0: i32 = 0; j0 < cols; j0 += 8) {
      const j1 = min(j0 + 8, cols);
      for (let i = i0; i < i1; i++)
        for (let j = j0; j < j1; j++)
          store<f32>(
            dst + ((<usize>j * <usize>rows + <usize>i) << 2),
            load<f32>(src + ((<usize>i * <usize>cols + <usize>j) << 2)),
          );
    }
  }
}

/** Convert `count` f16 values (bits at src) to f32 at dst, exactly (infinities and NaNs included). */
export function halvesToF32(src: usize, count: i32, dst: usize): void {
  let k: i32 = 0;
  for (; k + 8 <= count; k += 8) {
    const h = v128.load(src + ((<usize>k) << 1));
    const o = dst + ((<usize>k) << 2);
    v128.store(o, halfToF32(i32x4.extend_low_i16x8_u(h)));
    v128.store(o, halfToF32(i32x4.extend_high_i16x8_u(h)), 16);
  }
  for (; k < count; k++)
    store<f32>(dst + ((<usize>k) << 2), halfToF32Scalar(<u32>load<u16>(src + ((<usize>k) << 1))));
}

/** Convert `count` bf16 values (bits at src) to f32 at dst, exactly (a shift). */
export function brainHalvesToF32(src: usize, count: i32, dst: usize): void {
  let k: i32 = 0;
  for (; k + 8 <= count; k += 8) {
    const h = v128.load(src + ((<usize>k) << 1));
    const o = dst + ((<usize>k) << 2);
    v128.store(o, bf16ToF32(i32x4.extend_low_i16x8_u(h)));
    v128.store(o, bf16ToF32(i32x4.extend_high_i16x8_u(h)), 16);
  }
  for (; k < count; k++)
    store<f32>(dst + ((<usize>k) << 2), bf16ToF32Scalar(<u32>load<u16>(src + ((<usize>k) << 1))));
}

/** End of this module's static data; the host's buffers start at 65 536 above it (checked). */
export function heapBase(): usize {
  return __heap_base;
}
