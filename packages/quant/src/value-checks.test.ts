import { describe, expect, it } from 'vitest';
import { isCalderaError, Rng, tensor } from '@caldera/core';
import {
  e8pDecode,
  e8pEncode,
  latticeQuantizer,
  latticeScale,
  latticeScales,
  ldlq,
  normalFloatQuantizer,
  packedByteLength,
  prepareLdlq,
  type QuantizedTensor,
  rounderFromQuantizer,
  rvqDecode,
  rvqRounder,
  uniformQuantizer,
  uniformRounder,
  unpackBits,
  unpackBitsWords,
} from './index.js';

/** The CalderaError `f` throws (fails the test when it throws nothing or something else). */
function caught(f: () => unknown): Error {
  try {
    f();
  } catch (e) {
    expect(isCalderaError(e), String(e)).toBe(true);
    return e as Error;
  }
  throw new Error('expected a CalderaError, nothing was thrown');
}

describe('uniformRounder', () => {
  it('rejects bits outside 2..8 (the u8 code plane holds codes up to 2^8 − 2) and a bad step', () => {
    // 9 bits wrapped code 455 to 199 in the u8 plane; 0 bits and a zero or NaN step were accepted
    for (const bits of [0, 1, 9, 16, 4.5, NaN])
      expect(() => uniformRounder(bits, 1)).toThrow(
        new RegExp(`^E_VALUE: uniformRounder: bits must be an integer in 2\\.\\.8, got ${bits}$`),
      );
    for (const step of [0, -1, NaN, Infinity])
      expect(() => uniformRounder(4, step)).toThrow(
        new RegExp(`^E_VALUE: uniformRounder: step must be positive and finite, got ${step}$`),
      );
    expect(() => rvqRounder(5 as never)).toThrow(/^E_VALUE: rvqRounder: bits must be 3 or 4, got 5$/);
  });

  it('8 bits: the extreme codes 0 and 254 fit the u8 plane and match the values', () => {
    const r = uniformRounder(8, 1);
    const out = new Float32Array(3);
    const plane = new Uint8Array(3);
    r.round(Float32Array.of(1000, -1000, 0), 3, out, [plane], 0, 1);
    expect(Array.from(out)).toEqual([127, -127, 0]);
    expect(Array.from(plane)).toEqual([254, 0, 127]);
  });

  it('rounds ties toward +∞ as Math.round does, as its documentation says (2.5 → 3, −2.5 → −2)', () => {
    const r = uniformRounder(4, 1);
    const out = new Float32Array(4);
    const plane = new Uint8Array(4);
    r.round(Float32Array.of(2.5, -2.5, 0.5, -0.5), 4, out, [plane], 0, 1);
    expect(Array.from(out)).toEqual([3, -2, 1, -0]);
    expect(Array.from(plane)).toEqual([10, 5, 8, 7]);
  });

  it('an LDLQ with a 0-bit rounder is refused instead of returning 0.5 everywhere', () => {
    const w = tensor('f32', [2, 2], [1, 2, 3, 4]);
    const h = tensor('f64', [2, 2], [1, 0, 0, 1]);
    expect(() => ldlq(w, h, { quantizer: uniformRounder(0, 1) })).toThrow(/^E_VALUE: uniformRounder: bits/);
  });
});

describe('dequantize checks its input', () => {
  const x = tensor('f32', [2, 8], new Rng(3).fillNormal(new Float32Array(16)));
  const cases: [string, ReturnType<typeof uniformQuantizer>, number][] = [
    ['uniformQuantizer', uniformQuantizer({ bits: 4 }), 14],
    ['uniformQuantizer', uniformQuantizer({ bits: 4, groupSize: 4, symmetric: false }), 15],
    ['uniformQuantizer', uniformQuantizer({ bits: 8, granularity: 'channel' }), 254],
    ['normalFloatQuantizer', normalFloatQuantizer({ bits: 2 }), 3],
    ['normalFloatQuantizer', normalFloatQuantizer({ bits: 4, groupSize: 4 }), 15],
  ];

  it('a code the codec never writes is E_VALUE naming its index and value (it gave 110.29 or NaN)', () => {
    for (const [name, qz, max] of cases) {
      const q = qz.quantize(x);
      const codes = Uint8Array.from(q.codes[0]!);
      codes[5] = max; // the largest valid code dequantizes
      expect(() => qz.dequantize({ ...q, codes: [codes] })).not.toThrow();
      codes[5] = max + 1;
      expect(() => qz.dequantize({ ...q, codes: [codes] })).toThrow(
        new RegExp(
          `^E_VALUE: ${name}\\.dequantize: q\\.codes\\[0\\]\\[5\\] is ${max + 1}, codes must be in 0\\.\\.${max}$`,
        ),
      );
      // codes from unpackBits are a Uint16Array: accepted, and checked the same way
      const wide = Uint16Array.from(q.codes[0]!);
      expect(Array.from(qz.dequantize({ ...q, codes: [wide] }).data)).toEqual(
        Array.from(qz.dequantize(q).data),
      );
      wide[0] = 300;
      expect(() => qz.dequantize({ ...q, codes: [wide] })).toThrow(/q\.codes\[0\]\[0\] is 300/);
    }
  });

  it('a missing or malformed shape, codes or params is a CalderaError, not a TypeError', () => {
    for (const [name, qz] of cases) {
      const q = qz.quantize(x);
      const bad = (patch: Partial<Record<keyof QuantizedTensor, unknown>>, code: string, re: RegExp) => {
        const e = caught(() => qz.dequantize({ ...q, ...patch } as QuantizedTensor));
        expect(isCalderaError(e, code as never), e.message).toBe(true);
        expect(e.message).toMatch(re);
        expect(e.message).toContain(`${name}.dequantize: `);
      };
      bad({ shape: null }, 'E_VALUE', /q\.shape must be an array of dimensions, got null/);
      bad({ shape: [2, -8] }, 'E_SHAPE', /q\.shape \[2, -8\] has a dimension -8/);
      bad({ shape: [2, 7.5] }, 'E_SHAPE', /q\.shape \[2, 7\.5\] has a dimension 7\.5/);
      bad({ codes: null }, 'E_VALUE', /q\.codes must be an array of code planes, got null/);
      bad({ codes: [null] }, 'E_VALUE', /q\.codes\[0\] must be a Uint8Array or Uint16Array, got null/);
      bad({ codes: [Array.from(q.codes[0]!)] }, 'E_VALUE', /q\.codes\[0\] must be a Uint8Array/);
      bad({ params: undefined }, 'E_VALUE', /q\.params must be an object/);
      bad({ params: {} }, 'E_VALUE', /q\.params\.scales must be a Float32Array, got undefined/);
      const scales = Float32Array.from(q.params.scales);
      scales[0] = NaN;
      bad(
        { params: { ...q.params, scales } },
        'E_VALUE',
        /q\.params\.scales\[0\] is NaN, not a finite number/,
      );
    }
    const asym = cases[1]![1];
    const q = asym.quantize(x);
    const zeros = Float32Array.from(q.params.zeros!);
    zeros[3] = Infinity;
    expect(() => asym.dequantize({ ...q, params: { ...q.params, zeros } })).toThrow(
      /^E_VALUE: uniformQuantizer\.dequantize: q\.params\.zeros\[3\] is Infinity, not a finite number$/,
    );
  });

  it('the lattice codecs check the parts the same way', () => {
    const e = latticeQuantizer('e8p12');
    const q = e.quantize(x);
    expect(() => e.dequantize({ ...q, shape: null as never })).toThrow(
      /^E_VALUE: e8p12\.dequantize: q\.shape must be an array of dimensions, got null$/,
    );
    expect(() => e.dequantize({ ...q, codes: null as never })).toThrow(
      /^E_VALUE: e8p12\.dequantize: q\.codes/,
    );
    expect(() => e.dequantize({ ...q, params: null as never })).toThrow(
      /^E_VALUE: e8p12\.dequantize: q\.params/,
    );
  });
});

describe('quantizer options and helpers', () => {
  it('uniformQuantizer: symmetric must be a boolean, seed an integer', () => {
    expect(() => uniformQuantizer({ bits: 4, symmetric: 'no' as never })).toThrow(
      /^E_VALUE: uniformQuantizer: symmetric must be true or false, got a string "no"$/,
    );
    expect(() => uniformQuantizer({ bits: 4, symmetric: 0 as never })).toThrow(
      /symmetric must be true or false/,
    );
    for (const seed of [NaN, 1.5, Infinity, '3'])
      expect(() => uniformQuantizer({ bits: 4, rounding: 'stochastic', seed: seed as never })).toThrow(
        new RegExp(`^E_VALUE: uniformQuantizer: seed must be an integer, got ${String(seed)}$`),
      );
    // (a NaN seed was accepted, became null in the JSON descriptor, and quantized as seed 0 does)
    expect(uniformQuantizer({ bits: 4, symmetric: false }).descriptor).toMatchObject({ symmetric: false });
  });

  it('bitsPerWeight rejects shapes of no values or with bad dimensions (it gave NaN or −28)', () => {
    for (const [name, qz] of [
      ['uniformQuantizer', uniformQuantizer({ bits: 4 })],
      ['normalFloatQuantizer', normalFloatQuantizer({ bits: 4 })],
      ['e8p12', latticeQuantizer('e8p12')],
    ] as const) {
      expect(() => qz.bitsPerWeight([0])).toThrow(
        new RegExp(`^E_SHAPE: ${name}\\.bitsPerWeight: shape \\[0\\] has no values, so no bits per value$`),
      );
      expect(() => qz.bitsPerWeight([4, 0])).toThrow(/E_SHAPE: .*has no values/);
      expect(() => qz.bitsPerWeight([-1])).toThrow(
        new RegExp(
          `^E_SHAPE: ${name}\\.bitsPerWeight: shape \\[-1\\] has a dimension -1 that is not a non-negative integer$`,
        ),
      );
      expect(() => qz.bitsPerWeight([2.5])).toThrow(/E_SHAPE: .*dimension 2\.5/);
      expect(() => qz.bitsPerWeight([8, NaN])).toThrow(/E_SHAPE: .*dimension NaN/);
      expect(qz.bitsPerWeight([8, 8])).toBeGreaterThan(2);
    }
    expect(uniformQuantizer({ bits: 4 }).bitsPerWeight([])).toBe(36); // a scalar: 4 bits + one f32 scale
  });

  it('latticeScale(s) reject non-finite values and a bad inputScale (they gave 1 and Infinity)', () => {
    expect(() => latticeScale([1, NaN], 1)).toThrow(
      /^E_VALUE: latticeScale: x has a non-finite value NaN at index 1$/,
    );
    expect(() => latticeScales([Infinity], 1)).toThrow(
      /^E_VALUE: latticeScales: x has a non-finite value Infinity at index 0$/,
    );
    for (const s of [0, -1, NaN, Infinity])
      expect(() => latticeScale([1], s)).toThrow(
        new RegExp(`^E_VALUE: latticeScale: inputScale must be positive and finite, got ${s}$`),
      );
    expect(() => latticeScales([1e200, 1e200], 1)).toThrow(/E_VALUE: latticeScales: the sum of squares/);
    expect(latticeScale([3, 4], 1)).toBe(Math.fround(Math.sqrt(12.5)));
    expect(latticeScales([0, 0], 1)).toEqual({ divisor: 1, stored: 0 });
  });
});

describe('groupSize', () => {
  it('is checked whatever the granularity (0 with tensor granularity was accepted)', () => {
    for (const make of [uniformQuantizer, normalFloatQuantizer])
      expect(() => make({ bits: 4, granularity: 'tensor', groupSize: 0 })).toThrow(
        /^E_VALUE: .*groupSize must be a positive integer, got 0/,
      );
    expect(() => uniformQuantizer({ bits: 4, granularity: 'tensor' })).not.toThrow();
  });
});

describe('descriptors, null options and the edges of the lattice scale (a review of the package)', () => {
  it('dequantizes with a descriptor whose keys come in another order (JSON written with sorted keys)', () => {
    for (const q of [latticeQuantizer('e8p12', { inputScale: 1.03 }), uniformQuantizer({ bits: 4 })]) {
      const t = tensor(
        'f32',
        [2, 8],
        Float32Array.from({ length: 16 }, (_, i) => Math.sin(i)),
      );
      const z = q.quantize(t);
      const sorted = Object.fromEntries(Object.entries(z.descriptor).sort(([a], [b]) => (a < b ? -1 : 1)));
      expect(Object.keys(sorted)).not.toEqual(Object.keys(z.descriptor)); // the test reorders something
      const back = q.dequantize({ ...z, descriptor: sorted as QuantizedTensor['descriptor'] });
      expect(back.data).toEqual(q.dequantize(z).data);
      // a field more or less is still another codec
      expect(() => q.dequantize({ ...z, descriptor: { ...z.descriptor, extra: 1 } as never })).toThrow(
        /E_VALUE: .*dequantize: quantized tensor was made by/,
      );
    }
  });

  it('latticeQuantizer refuses names inherited from Object.prototype as a kind', () => {
    for (const kind of ['constructor', 'toString', '__proto__'])
      expect(() => latticeQuantizer(kind as never, { inputScale: 1 })).toThrow(
        `E_VALUE: latticeQuantizer: unknown kind ${kind}`,
      );
  });

  it('null options are none (ldlq, prepareLdlq, e8pEncode, latticeQuantizer); malformed codes are E_VALUE', () => {
    const w = tensor(
      'f32',
      [2, 8],
      Float32Array.from({ length: 16 }, (_, i) => Math.cos(i)),
    );
    const h = tensor(
      'f64',
      [8, 8],
      Float64Array.from({ length: 64 }, (_, i) => (i % 9 === 0 ? 1 : 0)),
    );
    expect(ldlq(w, h, null as never).codes).toEqual(ldlq(w, h).codes);
    expect(ldlq(w, prepareLdlq(h, null as never)).codes).toEqual(ldlq(w, h).codes);
    expect(e8pEncode(w.data, undefined, null as never)).toEqual(e8pEncode(w.data));
    expect(latticeQuantizer('e8p12', null as never).descriptor).toEqual(latticeQuantizer('e8p12').descriptor);
    expect(caught(() => rvqDecode({} as never, 4)).message).toBe(
      'E_VALUE: rvqDecode: codes.stage1 must be a Uint16Array, got undefined',
    );
    expect(caught(() => rvqDecode({ stage1: new Uint16Array(1) } as never, 3)).message).toBe(
      'E_VALUE: rvqDecode: codes.stage2 must be a Uint8Array, got undefined',
    );
    expect(caught(() => rounderFromQuantizer({ descriptor: null } as never, w)).message).toMatch(
      /^E_VALUE: rounderFromQuantizer: q.descriptor must be a quantizer descriptor/,
    );
    expect(caught(() => e8pDecode(new Uint16Array(1), [] as never)).message).toMatch(
      /^E_VALUE: e8pDecode: out must be a Float32Array/,
    );
  });

  it('refuses codes and bytes of the wrong width instead of wrapping them', () => {
    // a Uint8Array kept E8P codes modulo 256 (56064 → 0)
    expect(caught(() => e8pEncode(new Float32Array(8), new Uint8Array(1) as never)).message).toMatch(
      /^E_VALUE: e8pEncode: out must be a Uint16Array/,
    );
    // an array of 300 was unpacked as 44
    expect(caught(() => unpackBits([300, 2] as never, 8, 2)).message).toMatch(
      /^E_VALUE: unpackBits: bytes must be a Uint8Array/,
    );
    expect(caught(() => unpackBits(new Uint16Array(2) as never, 8, 2)).message).toMatch(/Uint8Array/);
    expect(caught(() => unpackBitsWords(new Uint8Array(4) as never, 8, 2)).message).toMatch(
      /^E_VALUE: unpackBitsWords: words must be a Uint32Array/,
    );
    // packedByteLength(-1, 3) was -0, (5, 2.5) was 2
    for (const [count, bits] of [
      [-1, 3],
      [5, 0],
      [5, 2.5],
      [1.5, 4],
    ])
      expect(caught(() => packedByteLength(count!, bits!)).message).toMatch(/^E_VALUE: packedByteLength: /);
    expect(packedByteLength(3, 3)).toBe(2);
    // as quantize: one code per 8 values
    expect(caught(() => latticeQuantizer('e8p12').bitsPerWeight([3])).message).toBe(
      'E_SHAPE: e8p12.bitsPerWeight: shape [3] has 3 values, not a multiple of 8',
    );
  });

  it('a scale beyond the f32 range is E_VALUE at quantize; one below it stores the tensor as zeros', () => {
    // an infinite scale was stored, and its own dequantize refused it
    const big = tensor('f32', [8], new Float32Array(8).fill(2e38));
    expect(caught(() => latticeQuantizer('e8p12', { inputScale: 0.5 }).quantize(big)).message).toMatch(
      /^E_VALUE: latticeScales: the scale RMS\/inputScale = .* exceeds the f32 range/,
    );
    // subnormals gave a zero divisor, then "non-finite input Infinity" from the encoder
    const tiny = tensor('f32', [8], Float32Array.of(1e-45, 0, 0, 0, 0, 0, 0, 0));
    for (const kind of ['e8p12', 'e8p12-rvq3', 'e8p12-rvq4'] as const) {
      const q = latticeQuantizer(kind);
      const z = q.quantize(tiny);
      expect(z.params.scales[0]).toBe(0);
      expect(q.dequantize(z).data.every((v) => v === 0)).toBe(true); // ±0
    }
    expect(latticeScales(tiny.data, 1.03)).toEqual({ divisor: 1, stored: 0 });
  });
});
