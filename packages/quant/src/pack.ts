/**
 * Bit packing of codes into little-endian streams (the layout both runtimes read).
 *
 * Layout of `packBits(codes, b)`: code i occupies stream bits `[i·b, (i+1)·b)`, least significant bit first;
 * stream bit j is bit `j mod 8` of byte `⌊j/8⌋`. The byte length is exactly `⌈count·b/8⌉`; unused high bits of
 * the last byte are zero. Viewed as little-endian u32 words (`packBitsWords`, zero-padded to a whole word),
 * stream bit j is bit `j mod 32` of word `⌊j/32⌋`, so a code may straddle two words.
 * E8P12 codes are 16 bits per 8 weights and are stored unpacked as little-endian u16 (`packBits(codes, 16)`
 * gives exactly those bytes).
 */
import { assertObject, CalderaError, describeValue } from '@caldera/core';

function checkBits(bits: number, what: string): void {
  if (!Number.isInteger(bits) || bits < 1 || bits > 16) {
    throw new CalderaError('E_VALUE', `${what}: bits must be an integer in 1..16, got ${bits}`);
  }
}

/** `E_VALUE` unless `count` is a safe integer ≥ 0. */
function checkCount(count: number, what: string): void {
  if (!Number.isSafeInteger(count) || count < 0) {
    throw new CalderaError('E_VALUE', `${what}: count must be an integer ≥ 0, got ${count}`);
  }
}

/** Bytes needed for `count` codes of `bits` bits (`E_VALUE` for a count or width that is not one, as elsewhere here). */
export function packedByteLength(count: number, bits: number): number {
  checkBits(bits, 'packedByteLength');
  checkCount(count, 'packedByteLength');
  return Math.ceil((count * bits) / 8);
}

/** Pack codes (each `< 2^bits`, else `E_VALUE`) into a little-endian bit stream of exactly ⌈count·bits/8⌉ bytes. */
export function packBits(codes: ArrayLike<number>, bits: number): Uint8Array {
  checkBits(bits, 'packBits');
  assertObject(codes, 'packBits', 'codes', 'an array of codes');
  const out = new Uint8Array(packedByteLength(codes.length, bits));
  const limit = 2 ** bits;
  let acc = 0; // pending bits, fewer than 8 + bits ≤ 24 of them
  let nacc = 0;
  let o = 0;
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i]!;
    if (!(c >= 0 && c < limit && Number.isInteger(c))) {
      throw new CalderaError('E_VALUE', `packBits: code ${c} at index ${i} does not fit in ${bits} bits`);
    }
    acc |= c << nacc;
    nacc += bits;
    while (nacc >= 8) {
      out[o++] = acc & 0xff;
      acc >>>= 8;
      nacc -= 8;
    }
  }
  if (nacc > 0) out[o] = acc & 0xff;
  return out;
}

/** Unpack `count` codes of `bits` bits from a stream made by {@link packBits} (`E_SHAPE` if it is too short). */
export function unpackBits(bytes: Uint8Array, bits: number, count: number): Uint16Array {
  checkBits(bits, 'unpackBits');
  // bytes, nothing else: an array of 300 was read as 44, a Uint16Array's entries as bytes
  if (!(bytes instanceof Uint8Array))
    throw new CalderaError('E_VALUE', `unpackBits: bytes must be a Uint8Array, got ${describeValue(bytes)}`);
  checkCount(count, 'unpackBits');
  if (bytes.length < packedByteLength(count, bits)) {
    throw new CalderaError(
      'E_SHAPE',
      `unpackBits: ${bytes.length} bytes hold fewer than ${count} codes of ${bits} bits (need ${packedByteLength(count, bits)})`,
    );
  }
  const out = new Uint16Array(count);
  const mask = 2 ** bits - 1;
  let acc = 0;
  let nacc = 0;
  let p = 0;
  for (let i = 0; i < count; i++) {
    while (nacc < bits) {
      acc |= bytes[p++]! << nacc;
      nacc += 8;
    }
    out[i] = acc & mask;
    acc >>>= bits;
    nacc -= bits;
  }
  return out;
}

/** {@link packBits} as little-endian u32 words, zero-padded to ⌈count·bits/32⌉ words (for GPU storage buffers). */
export function packBitsWords(codes: ArrayLike<number>, bits: number): Uint32Array {
  const bytes = packBits(codes, bits);
  const words = new Uint32Array(Math.ceil(bytes.length / 4));
  const view = new DataView(words.buffer);
  for (let i = 0; i < bytes.length; i++) view.setUint8(i, bytes[i]!);
  // DataView wrote bytes in memory order; re-read as little-endian words so the result is endian-independent
  for (let w = 0; w < words.length; w++) words[w] = view.getUint32(w * 4, true);
  return words;
}

/** Inverse of {@link packBitsWords}. */
export function unpackBitsWords(words: Uint32Array, bits: number, count: number): Uint16Array {
  if (!(words instanceof Uint32Array))
    throw new CalderaError(
      'E_VALUE',
      `unpackBitsWords: words must be a Uint32Array, got ${describeValue(words)}`,
    );
  const bytes = new Uint8Array(words.length * 4);
  for (let w = 0; w < words.length; w++) {
    const v = words[w]!;
    bytes[4 * w] = v & 0xff;
    bytes[4 * w + 1] = (v >>> 8) & 0xff;
    bytes[4 * w + 2] = (v >>> 16) & 0xff;
    bytes[4 * w + 3] = v >>> 24;
  }
  return unpackBits(bytes, bits, count);
}
