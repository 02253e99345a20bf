import { describe, expect, it } from 'vitest';
import {
  bf16ArrayToF32,
  f16ArrayToF32,
  f32ArrayToBf16,
  f32ArrayToF16,
  f32Bits,
  f32BitsRoundToOdd,
  f32BitsToBf16,
  f32BitsToF16,
  f32FromBits,
  fromBf16Bits,
  fromF16Bits,
  toBf16Bits,
  toF16Bits,
} from './half.js';
import { Rng } from './rng.js';
import { cast, tensor } from './tensor.js';

/** Independent decoder: IEEE 754 binary16 value from the definition (sign, biased exponent, fraction). */
function refF16(h: number): number {
  const s = h >> 15 ? -1 : 1;
  const e = (h >> 10) & 31;
  const f = h & 1023;
  if (e === 31) return f ? NaN : s * Infinity;
  if (e === 0) return s * Math.pow(2, -14) * (f / 1024);
  return s * Math.pow(2, e - 15) * (1 + f / 1024);
}

/** Independent decoder for bfloat16: 8-bit exponent (bias 127), 7-bit fraction. */
function refBf16(b: number): number {
  const s = b >> 15 ? -1 : 1;
  const e = (b >> 7) & 255;
  const f = b & 127;
  if (e === 255) return f ? NaN : s * Infinity;
  if (e === 0) return s * Math.pow(2, -126) * (f / 128);
  return s * Math.pow(2, e - 127) * (1 + f / 128);
}

const isF16NaN = (h: number) => (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
const isBf16NaN = (b: number) => (b & 0x7f80) === 0x7f80 && (b & 0x7f) !== 0;

/**
 * Brute-force correctly rounded encoder: nearest of all non-negative finite patterns (sorted by value),
 * ties to the even pattern. Overflow follows IEEE 754: +Inf takes part as the "next" value after the
 * largest finite one (2^16 for f16, 2^128 for bf16), which is exactly where round-to-nearest sends a
 * value to infinity. Differences are computed in f64, where they are exact: both operands have at most
 * 24 significant bits and lie within 2^40 of each other (or one is zero).
 */
function makeRefEncoder(decode: (bits: number) => number, infBits: number, infValue: number) {
  const vals: number[] = [];
  const bits: number[] = [];
  for (let p = 0; p < infBits; p++) {
    vals.push(decode(p));
    bits.push(p);
  }
  vals.push(infValue);
  bits.push(infBits);
  return (x: number): number | 'nan' => {
    if (Number.isNaN(x)) return 'nan';
    const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
    const a = Math.abs(x);
    if (a >= infValue) return sign | infBits;
    let lo = 0;
    let hi = vals.length - 1; // vals[hi] > a
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (vals[mid]! <= a) lo = mid;
      else hi = mid;
    }
    const dLo = a - vals[lo]!;
    const dHi = vals[hi]! - a;
    if (dLo < dHi) return sign | bits[lo]!;
    if (dHi < dLo) return sign | bits[hi]!;
    return sign | ((bits[lo]! & 1) === 0 ? bits[lo]! : bits[hi]!);
  };
}

const refToF16 = makeRefEncoder(refF16, 0x7c00, 65536);
const refToBf16 = makeRefEncoder(refBf16, 0x7f80, 2 ** 128);

describe('f16 decode', () => {
  it('matches the IEEE 754 definition for all 65 536 patterns', () => {
    for (let h = 0; h < 65536; h++) {
      const got = fromF16Bits(h);
      const want = refF16(h);
      if (Number.isNaN(want)) expect(Number.isNaN(got)).toBe(true);
      else if (!Object.is(got, want)) expect(got, `pattern 0x${h.toString(16)}`).toBe(want);
    }
  });

  it('decode → encode is the identity on every non-NaN pattern; NaN stays NaN', () => {
    let failures = 0;
    for (let h = 0; h < 65536; h++) {
      const back = toF16Bits(fromF16Bits(h));
      if (isF16NaN(h)) {
        if (!isF16NaN(back)) failures++;
      } else if (back !== h) failures++;
    }
    expect(failures).toBe(0);
  });

  it('array conversions agree with the scalar ones', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const f = f16ArrayToF32(all);
    for (let h = 0; h < 65536; h++) {
      if (isF16NaN(h)) expect(Number.isNaN(f[h]!)).toBe(true);
      else if (!Object.is(f[h], refF16(h))) expect(f[h], `pattern 0x${h.toString(16)}`).toBe(refF16(h));
    }
    const back = f32ArrayToF16(f);
    for (let h = 0; h < 65536; h++) {
      if (isF16NaN(h)) continue;
      if (back[h] !== h) expect(back[h]).toBe(h);
    }
  });
});

describe('bf16 decode', () => {
  it('matches the bfloat16 definition for all 65 536 patterns', () => {
    for (let b = 0; b < 65536; b++) {
      const got = fromBf16Bits(b);
      const want = refBf16(b);
      if (Number.isNaN(want)) expect(Number.isNaN(got)).toBe(true);
      else if (!Object.is(got, want)) expect(got, `pattern 0x${b.toString(16)}`).toBe(want);
    }
  });

  it('decode → encode is the identity on every non-NaN pattern; NaN stays NaN', () => {
    let failures = 0;
    const all = new Uint16Array(65536).map((_, i) => i);
    const arr = f32ArrayToBf16(bf16ArrayToF32(all));
    for (let b = 0; b < 65536; b++) {
      const back = toBf16Bits(fromBf16Bits(b));
      if (isBf16NaN(b)) {
        if (!isBf16NaN(back) || !isBf16NaN(arr[b]!)) failures++;
      } else if (back !== b || arr[b] !== b) failures++;
    }
    expect(failures).toBe(0);
  });
});

/** f32 test inputs: random bit patterns, every f16/bf16 midpoint and its f32 neighbours, special values. */
function testInputs(kind: 'f16' | 'bf16'): Uint32Array {
  const out: number[] = [];
  const rng = new Rng(kind === 'f16' ? 1601 : 1602);
  for (let i = 0; i < 100_000; i++) out.push(rng.nextU32()); // whole f32 range incl. NaN/Inf/subnormals
  for (let i = 0; i < 100_000; i++) {
    // Exponents around the f16 range (2^-26 … 2^17), where rounding is interesting.
    const exp = 101 + rng.int(44);
    out.push(((rng.nextU32() & 0x80000000) | (exp << 23) | (rng.nextU32() & 0x7fffff)) >>> 0);
  }
  for (let p = 0; p < 0x7c00 + 1; p += 1) {
    // Midpoint between pattern p and p+1, as an f32 (exactly representable), and its two neighbours.
    const v = kind === 'f16' ? (refF16(p) + refF16(p + 1 === 0x7c00 ? 0x7c00 : p + 1)) / 2 : NaN;
    if (kind === 'f16' && Number.isFinite(v)) {
      const b = f32Bits(v);
      out.push(b, b + 1, b - 1, (b | 0x80000000) >>> 0, (b + 1) | 0x80000000);
    }
  }
  if (kind === 'f16') {
    // 65504 + 16 = 65520 is the overflow threshold (ties to even → Inf).
    for (const v of [
      65504,
      65519,
      65520,
      65521,
      2 ** -24,
      2 ** -25,
      3 * 2 ** -26,
      2 ** -14,
      2 ** -14 - 2 ** -25,
    ]) {
      const b = f32Bits(v);
      out.push(b, b + 1, b - 1);
    }
  } else {
    for (let p = 0; p < 0x7f80; p++) {
      const mid = ((p << 16) | 0x8000) >>> 0; // exact midpoint between bf16 patterns p and p+1
      out.push(mid, mid + 1, mid - 1, (mid | 0x80000000) >>> 0);
    }
  }
  out.push(0, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0xffffffff, 0x00000001, 0x007fffff);
  return Uint32Array.from(out);
}

describe('f32 → f16 rounding', () => {
  it('is correctly rounded (nearest, ties to even) against a brute-force reference', () => {
    const inputs = testInputs('f16');
    expect(inputs.length).toBeGreaterThan(300_000);
    let failures = 0;
    let first = '';
    for (const bits of inputs) {
      const x = f32FromBits(bits);
      const got = f32BitsToF16(bits);
      const want = refToF16(x);
      const ok = want === 'nan' ? isF16NaN(got) : got === want;
      if (!ok) {
        failures++;
        if (!first) first = `f32 0x${bits.toString(16)} (${x}): got 0x${got.toString(16)}, want ${want}`;
      }
    }
    expect(first).toBe('');
    expect(failures).toBe(0);
  });

  it('handles the named edge cases', () => {
    expect(toF16Bits(65520)).toBe(0x7c00); // tie between max finite (odd) and Inf → Inf
    expect(toF16Bits(65519)).toBe(0x7bff);
    expect(toF16Bits(2 ** -25)).toBe(0); // tie between 0 and min subnormal → 0 (even)
    expect(toF16Bits(3 * 2 ** -25)).toBe(2); // tie between subnormals 1 and 2 → 2
    expect(toF16Bits(-0)).toBe(0x8000);
    expect(toF16Bits(-Infinity)).toBe(0xfc00);
    expect(isF16NaN(toF16Bits(NaN))).toBe(true);
    expect(toF16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie at 1 → even (1.0)
    expect(toF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02);
  });
});

describe('f32 → bf16 rounding', () => {
  it('is correctly rounded (nearest, ties to even) against a brute-force reference', () => {
    const inputs = testInputs('bf16');
    let failures = 0;
    let first = '';
    for (const bits of inputs) {
      const x = f32FromBits(bits);
      const got = f32BitsToBf16(bits);
      const want = refToBf16(x);
      const ok = want === 'nan' ? isBf16NaN(got) : got === want;
      if (!ok) {
        failures++;
        if (!first) first = `f32 0x${bits.toString(16)} (${x}): got 0x${got.toString(16)}, want ${want}`;
      }
    }
    expect(first).toBe('');
    expect(failures).toBe(0);
  });

  it('keeps NaN quiet and signed', () => {
    expect(isBf16NaN(f32BitsToBf16(0x7f800001))).toBe(true); // signalling NaN with a low payload
    expect(f32BitsToBf16(0xff800001) & 0x8000).toBe(0x8000);
    expect(toBf16Bits(-0)).toBe(0x8000);
    expect(toBf16Bits(Infinity)).toBe(0x7f80);
  });
});

describe('f64 → f16 / bf16 rounding', () => {
  /**
   * f64 values on either side of every tie of the narrow format in a range, closer to the tie than f32 resolves (so
   * rounding to the nearest f32 first lands exactly on the tie, and then ties to even, right only half the time), plus
   * random f64 values with all 53 bits.
   */
  function f64Inputs(decode: (bits: number) => number, patterns: number[]): number[] {
    const out: number[] = [];
    for (const p of patterns) {
      const [a, b] = [decode(p), decode(p + 1)];
      const tie = (a + b) / 2; // exact in f32 (one more bit than the narrow format)
      for (const s of [1, -1]) for (const side of [-1, 1]) out.push(s * (tie + side * tie * 2 ** -40));
    }
    const rng = new Rng(5);
    for (let i = 0; i < 20_000; i++)
      out.push((rng.uniform() - 0.5) * 2 ** Math.floor(rng.uniform() * 40 - 20));
    return out;
  }
  const range = (from: number, to: number, step: number) =>
    Array.from({ length: Math.floor((to - from) / step) }, (_, i) => from + i * step);

  it('is correctly rounded (nearest, ties to even) against the brute-force reference, not double rounded', () => {
    // f16: subnormals, normals up to the largest finite; bf16: a spread of exponents
    const f16 = f64Inputs(refF16, [...range(1, 0x3ff, 3), ...range(0x400, 0x7bfe, 7)]);
    const bf16 = f64Inputs(refBf16, [...range(1, 0x7f, 3), ...range(0x80, 0x7f7e, 13)]);
    expect(f16.length).toBeGreaterThan(30_000);
    const wrong = (xs: number[], enc: (x: number) => number, ref: (x: number) => number | 'nan') =>
      xs.filter((x) => enc(x) !== ref(x)).map((x) => `${x}: got 0x${enc(x).toString(16)}, want ${ref(x)}`);
    expect(wrong(f16, toF16Bits, refToF16).slice(0, 3)).toEqual([]);
    expect(wrong(bf16, toBf16Bits, refToBf16).slice(0, 3)).toEqual([]);
    // the case that double rounding gets wrong: just above the tie between 1 and 1 + 2⁻¹⁰ is the odd neighbour
    const x = 1 + 2 ** -11 + 2 ** -40;
    expect(f32BitsToF16(f32Bits(x))).toBe(0x3c00); // via the nearest f32: the tie, then even (wrong)
    expect(toF16Bits(x)).toBe(0x3c01);
    // arrays and cast take the same path
    const xs = Float64Array.from(f16.slice(0, 4000));
    expect(Array.from(f32ArrayToF16(xs))).toEqual(Array.from(xs, toF16Bits));
    expect(Array.from(cast(tensor('f64', [xs.length], xs), 'f16').data)).toEqual(Array.from(xs, toF16Bits));
    expect(Array.from(cast(tensor('f64', [xs.length], xs), 'bf16').data)).toEqual(Array.from(xs, toBf16Bits));
  });

  it('round-to-odd keeps f32 values, infinities, NaN and signed zero, and marks inexact ones odd', () => {
    for (const v of [0, -0, 1.5, -3.25, Infinity, -Infinity, 3.4028234663852886e38])
      expect(f32BitsRoundToOdd(v)).toBe(f32Bits(v));
    expect(Number.isNaN(f32FromBits(f32BitsRoundToOdd(NaN)))).toBe(true);
    expect(f32BitsRoundToOdd(1e-50)).toBe(1); // the smallest subnormal, not 0
    expect(f32BitsRoundToOdd(-1e-50)).toBe(0x80000001);
    expect(f32BitsRoundToOdd(1 + 2 ** -40) & 1).toBe(1);
    expect(f32BitsRoundToOdd(1 - 2 ** -40)).toBe(f32Bits(1) - 1);
  });
});

describe('array conversions: their arguments', () => {
  it('an out array too short is E_SHAPE (the values past its end were dropped), a src that is no array E_VALUE', () => {
    const f32 = Float32Array.of(1, 2, 3);
    const bits = f32ArrayToF16(f32);
    const cases: [() => unknown, string][] = [
      [() => f32ArrayToF16(f32, new Uint16Array(2)), 'E_SHAPE: f32ArrayToF16: out has 2 elements, src 3'],
      [() => f32ArrayToBf16(f32, new Uint16Array(1)), 'E_SHAPE: f32ArrayToBf16: out has 1 elements, src 3'],
      [() => f16ArrayToF32(bits, new Float32Array(1)), 'E_SHAPE: f16ArrayToF32: out has 1 elements, src 3'],
      [() => bf16ArrayToF32(bits, new Float32Array(0)), 'E_SHAPE: bf16ArrayToF32: out has 0 elements, src 3'],
      [
        () => f32ArrayToF16(null as never),
        'E_VALUE: f32ArrayToF16: src must be an array of numbers, got null',
      ],
      [
        () => bf16ArrayToF32(5 as never),
        'E_VALUE: bf16ArrayToF32: src must be an array of numbers, got a number',
      ],
      [
        () => f16ArrayToF32(bits, [] as never),
        'E_VALUE: f16ArrayToF32: out must be a Float32Array, got an array',
      ],
    ];
    for (const [f, message] of cases) expect(f, message).toThrow(message);
    // a longer out is filled at the front, the rest left as it was
    const out = new Float32Array(5).fill(7);
    expect(Array.from(f16ArrayToF32(bits, out))).toEqual([1, 2, 3, 7, 7]);
    expect(f16ArrayToF32(bits, out)).toBe(out);
  });
});
