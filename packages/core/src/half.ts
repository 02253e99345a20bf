/**
 * IEEE 754 half precision (f16) and bfloat16 conversions. Both are stored as raw 16-bit patterns.
 * f32 → 16-bit conversions round to nearest, ties to even; NaN stays NaN (quiet), ±Inf and signed zero
 * are preserved, f16 subnormals are produced and read exactly.
 */

// Scratch views for bit casts. They hold no state between calls.
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** Bit pattern of `x` rounded to f32. */
export function f32Bits(x: number): number {
  scratchF32[0] = x;
  return scratchU32[0]!;
}

/** The f32 value whose bit pattern is `bits`. */
export function f32FromBits(bits: number): number {
  scratchU32[0] = bits >>> 0;
  return scratchF32[0]!;
}

/** Convert an f32 bit pattern to the nearest f16 bit pattern (ties to even). */
export function f32BitsToF16(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return mant !== 0 ? sign | 0x7e00 | (mant >>> 13) : sign | 0x7c00;
  const e = exp - 112; // rebias 127 → 15
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let r = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    if (rem > half || (rem === half && (r & 1) !== 0)) r++;
    return sign | r;
  }
  let r = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (r & 1) !== 0)) r++;
  return sign | r;
}

/** Nearest f16 bit pattern of a number (first rounded to f32, as every caller stores f32 data). */
export function toF16Bits(x: number): number {
  return f32BitsToF16(f32Bits(x));
}

/** Value of an f16 bit pattern. */
export function fromF16Bits(h: number): number {
  const s = (h & 0x8000) !== 0 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 5.960464477539063e-8; // 2^-24
  if (e === 0x1f) return m !== 0 ? NaN : s * Infinity;
  return s * (1024 + m) * 2 ** (e - 25);
}

/** Nearest bfloat16 bit pattern of an f32 bit pattern (ties to even). */
export function f32BitsToBf16(x: number): number {
  x >>>= 0;
  if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) return ((x >>> 16) | 0x40) & 0xffff;
  const lsb = (x >>> 16) & 1;
  return Math.floor((x + 0x7fff + lsb) / 65536) & 0xffff;
}

/** Nearest bfloat16 bit pattern of a number. */
export function toBf16Bits(x: number): number {
  return f32BitsToBf16(f32Bits(x));
}

/** Value of a bfloat16 bit pattern. */
export function fromBf16Bits(b: number): number {
  return f32FromBits((b & 0xffff) << 16);
}

/** Convert a whole array of f32 values to f16 bits. */
export function f32ArrayToF16(src: ArrayLike<number>, out = new Uint16Array(src.length)): Uint16Array {
  const f = src instanceof Float32Array ? src : Float32Array.from(src);
  const u = new Uint32Array(f.buffer, f.byteOffset, f.length);
  for (let i = 0; i < u.length; i++) out[i] = f32BitsToF16(u[i]!);
  return out;
}

/** Convert f16 bits to f32 values (exact; every f16 value is an f32 value). */
export function f16ArrayToF32(src: Uint16Array, out = new Float32Array(src.length)): Float32Array {
  // Bit-level rebias (exponent + 112) for normals, Inf and NaN; subnormals take the arithmetic path.
  const u = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < src.length; i++) {
    const h = src[i]!;
    const sign = (h & 0x8000) << 16;
    const em = h & 0x7fff;
    if (em >= 0x7c00) u[i] = sign | 0x7f800000 | ((em & 0x3ff) << 13);
    else if (em >= 0x400) u[i] = sign | ((em + 0x1c000) << 13);
    else out[i] = fromF16Bits(h);
  }
  return out;
}

/** Convert an array of f32 values to bf16 bits. */
export function f32ArrayToBf16(src: ArrayLike<number>, out = new Uint16Array(src.length)): Uint16Array {
  const f = src instanceof Float32Array ? src : Float32Array.from(src);
  const u = new Uint32Array(f.buffer, f.byteOffset, f.length);
  for (let i = 0; i < u.length; i++) out[i] = f32BitsToBf16(u[i]!);
  return out;
}

/** Convert bf16 bits to f32 values (exact). */
export function bf16ArrayToF32(src: Uint16Array, out = new Float32Array(src.length)): Float32Array {
  const u = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < src.length; i++) u[i] = src[i]! << 16;
  return out;
}
