import { describe, expect, it } from 'vitest';
import { Rng } from '@caldera/core';
import { packBits, packBitsWords, packedByteLength, unpackBits, unpackBitsWords } from './pack.js';

describe('bit packing', () => {
  it('round-trips every width 1..16 at odd lengths with exact byte sizes', () => {
    const rng = new Rng(1);
    for (let bits = 1; bits <= 16; bits++) {
      for (const n of [1, 3, 7, 13, 101]) {
        const codes = Array.from({ length: n }, () => rng.int(2 ** bits));
        const bytes = packBits(codes, bits);
        expect(bytes.length).toBe(Math.ceil((n * bits) / 8));
        expect(bytes.length).toBe(packedByteLength(n, bits));
        expect(Array.from(unpackBits(bytes, bits, n))).toEqual(codes);
        expect(Array.from(unpackBitsWords(packBitsWords(codes, bits), bits, n))).toEqual(codes);
      }
    }
  });

  it('uses the documented little-endian layout (code i at stream bits i·b.., LSB first)', () => {
    // 3-bit codes 1,2,3,4,5: bits 100 010 110 001 101 → bytes 0b11010001, 0b01011000
    expect(Array.from(packBits([1, 2, 3, 4, 5], 3))).toEqual([0b11010001, 0b01011000]);
    expect(Array.from(packBits([0x1234], 16))).toEqual([0x34, 0x12]); // = little-endian u16
    expect(Array.from(packBitsWords([1, 2, 3, 4, 5], 3))).toEqual([0b0101100011010001]);
  });

  it('rejects codes that do not fit and streams that are too short', () => {
    expect(() => packBits([4], 2)).toThrow(/E_VALUE/);
    expect(() => packBits([1], 0)).toThrow(/E_VALUE/);
    expect(() => unpackBits(new Uint8Array(1), 4, 3)).toThrow(/E_SHAPE/);
  });

  it('rejects a count that is not a non-negative integer with E_VALUE (-1 was a RangeError, 1.5 truncated)', () => {
    const bytes = packBits([1, 2, 3], 4);
    for (const count of [-1, 1.5, NaN])
      expect(() => unpackBits(bytes, 4, count)).toThrow(/E_VALUE: unpackBits: count/);
  });
});
