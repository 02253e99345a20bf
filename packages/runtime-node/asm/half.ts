// AssemblyScript: f16 → f32 conversions, imported by asm/matvec.ts and asm/batch.ts.

// f16 bits (widened to i32x4 lanes; bits above 15 are ignored) → f32, exactly: the magnitude bits shifted into f32 position and
// rebiased by a multiplication with 2^112 (exact for normal and subnormal halves); infinities and NaNs (exponent
// all ones) take the exponent 0xff directly; the sign bit is moved last.
export function halfToF32(h: v128): v128 {
  const em = i32x4.shl(v128.and(h, i32x4.splat(0x7fff)), 13);
  const scaled = f32x4.mul(em, f32x4.splat(5.192296858534828e33)); // 2^112
  const special = i32x4.eq(v128.and(h, i32x4.splat(0x7c00)), i32x4.splat(0x7c00));
  const mag = v128.bitselect(v128.or(em, i32x4.splat(0x7f800000)), scaled, special);
  return v128.or(mag, i32x4.shl(v128.and(h, i32x4.splat(0x8000)), 16));
}

// Scalar form of halfToF32 for the tail columns.
export function halfToF32Scalar(h: u32): f32 {
  const em = (h & 0x7fff) << 13;
  const mag: u32 =
    (h & 0x7c00) == 0x7c00 ? em | 0x7f800000 : reinterpret<u32>(reinterpret<f32>(em) * 5.192296858534828e33);
  return reinterpret<f32>(mag | ((h & 0x8000) << 16));
}

// bf16 bits (in the low 16 bits of i32x4 lanes, zero- or sign-extended) → f32, exactly: a bf16 value is the upper half
// of the f32 with the same value (infinities, NaNs and subnormals included).
export function bf16ToF32(h: v128): v128 {
  return i32x4.shl(h, 16);
}

// Scalar form of bf16ToF32 for the tail columns.
export function bf16ToF32Scalar(h: u32): f32 {
  return reinterpret<f32>(h << 16);
}
