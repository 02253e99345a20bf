/**
 * IEEE 754 half precision (f16) and bfloat16 conversions. Both are stored as raw 16-bit patterns.
 * f32 → 16-bit conversions round to nearest, ties to even; NaN stays NaN (quiet), ±Inf and signed zero
 * are preserved, f16 subnormals are produced and read exactly.
 */
import { typedArrayName } from './dtype.js';
import { CalderaError, describeValue } from './errors.js';

// Scratch views for bit casts. They hold no state between calls.
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** Bit pattern of `x` rounded to f32. */
export function f32Bits(x: number): number {
  scratchF32[0] = x;
  return scratchU32[0]!;
}

/**
 * Bit pattern of `x` rounded to f32 with round-to-odd: an inexact result takes the f32 neighbour of `x` whose last bit
 * is odd. Rounding that to nearest in a format of at most 22 significant bits (f16 has 11, bfloat16 8) gives the
 * correctly rounded value of `x`; rounding `x` to the nearest f32 first can land on a tie of the narrower format that
 * `x` was not on, and round the wrong way (double rounding).
 */
export function f32BitsRoundToOdd(x: number): number {
  const b = f32Bits(x);
  const f = f32FromBits(b);
  if (f === x || (b & 1) !== 0 || !Number.isFinite(f) || Number.isNaN(x)) return b;
  // the other f32 neighbour of x: one step from f towards x (same sign; the magnitude up or down)
  return (Math.abs(x) > Math.abs(f) ? b + 1 : b - 1) >>> 0;
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

/** Nearest f16 bit pattern of a number (ties to even; correctly rounded from f64 too, see {@link f32BitsRoundToOdd}). */
export function toF16Bits(x: number): number {
  return f32BitsToF16(f32BitsRoundToOdd(x));
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

/** Nearest bfloat16 bit pattern of a number (ties to even; correctly rounded from f64 too). */
export function toBf16Bits(x: number): number {
  return f32BitsToBf16(f32BitsRoundToOdd(x));
}

/** Value of a bfloat16 bit pattern. */
export function fromBf16Bits(b: number): number {
  return f32FromBits((b & 0xffff) << 16);
}

/**
 * The output array of an array conversion: `out` when it holds at least `src.length` values, a new one when absent;
 * `E_VALUE` for a `src` that is not an array (null, a number), `E_SHAPE` for an `out` too short (the values past its
 * end were dropped silently).
 */
function conversionOut<T extends Uint16Array | Float32Array>(
  src: ArrayLike<number>,
  out: T | undefined,
  make: new (n: number) => T,
  fn: string,
): T {
  if (src === null || typeof src !== 'object' || typeof src.length !== 'number')
    throw new CalderaError('E_VALUE', `${fn}: src must be an array of numbers, got ${describeValue(src)}`);
  if (out === undefined) return new make(src.length);
  // by its tag, not instanceof: a typed array of another realm (a VM context, a frame) is one too
  if (typedArrayName(out) !== make.name)
    throw new CalderaError('E_VALUE', `${fn}: out must be a ${make.name}, got ${describeValue(out)}`);
  if (out.length < src.length)
    throw new CalderaError('E_SHAPE', `${fn}: out has ${out.length} elements, src ${src.length}`);
  return out;
}

/**
 * Convert a whole array of numbers to f16 bits (nearest, ties to even). An f32 array is converted bit by bit; any other
 * (e.g. f64) value by value with {@link toF16Bits}, so it is correctly rounded too.
 */
export function f32ArrayToF16(src: ArrayLike<number>, out?: Uint16Array): Uint16Array {
  out = conversionOut(src, out, Uint16Array, 'f32ArrayToF16');
  if (!(src instanceof Float32Array)) {
    for (let i = 0; i < src.length; i++) out[i] = toF16Bits(src[i]!);
    return out;
  }
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < u.length; i++) out[i] = f32BitsToF16(u[i]!);
  return out;
}

/** Convert f16 bits to f32 values (exact; every f16 value is an f32 value). */
export function f16ArrayToF32(src: Uint16Array, out?: Float32Array): Float32Array {
  out = conversionOut(src, out, Float32Array, 'f16ArrayToF32');
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

/** Convert an array of numbers to bf16 bits (nearest, ties to even; non-f32 arrays value by value, as {@link f32ArrayToF16}). */
export function f32ArrayToBf16(src: ArrayLike<number>, out?: Uint16Array): Uint16Array {
  out = conversionOut(src, out, Uint16Array, 'f32ArrayToBf16');
  if (!(src instanceof Float32Array)) {
    for (let i = 0; i < src.length; i++) out[i] = toBf16Bits(src[i]!);
    return out;
  }
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < u.length; i++) out[i] = f32BitsToBf16(u[i]!);
  return out;
}

/** Convert bf16 bits to f32 values (exact). */
export function bf16ArrayToF32(src: Uint16Array, out?: Float32Array): Float32Array {
  out = conversionOut(src, out, Float32Array, 'bf16ArrayToF32');
  const u = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < src.length; i++) u[i] = src[i]! << 16;
  return out;
}
