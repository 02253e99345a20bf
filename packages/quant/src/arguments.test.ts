import { describe, expect, it } from 'vitest';
import { isCalderaError, Rng, tensor } from '@caldera/core';
import * as quant from './index.js';

const w = tensor('f32', [8, 16], new Rng(1).fillNormal(new Float32Array(128)));
const h = tensor('f64', [16, 16]);
for (let i = 0; i < 16; i++) h.data[i * 17] = 1;
const u4 = quant.uniformQuantizer({ bits: 4 });
const nf = quant.normalFloatQuantizer({ bits: 4 });
const e8p = quant.latticeQuantizer('e8p12');

/**
 * Every public entry point with a required object argument (an array, a tensor, an options object, a descriptor):
 * valid arguments, and the positions that must be objects.
 */
const entries: [
  name: string,
  call: (...args: never[]) => unknown,
  args: unknown[],
  required: [index: number, argument: string][],
][] = [
  ['e8pEncode', quant.e8pEncode, [new Float32Array(8)], [[0, 'x']]],
  ['e8pDecode', quant.e8pDecode, [new Uint16Array(1)], [[0, 'codes']]],
  ['rvqEncode', quant.rvqEncode, [new Float32Array(8), 4], [[0, 'x']]],
  [
    'rvqDecode',
    quant.rvqDecode,
    [{ stage1: new Uint16Array(1), stage2: new Uint16Array(1) }, 4],
    [[0, 'codes']],
  ],
  [
    'ldlq',
    quant.ldlq,
    [w, h],
    [
      [0, 'W'],
      [1, 'H'],
    ],
  ],
  [
    'proxyLoss',
    quant.proxyLoss,
    [w, w, h],
    [
      [0, 'W'],
      [1, 'Ŵ'],
      [2, 'H'],
    ],
  ],
  ['uniformQuantizer', quant.uniformQuantizer, [{ bits: 4 }], [[0, 'options']]],
  ['normalFloatQuantizer', quant.normalFloatQuantizer, [{ bits: 4 }], [[0, 'options']]],
  ['quantizerFromDescriptor', quant.quantizerFromDescriptor, [u4.descriptor], [[0, 'd']]],
  ['uniformQuantizer.quantize', (t: never) => u4.quantize(t), [w], [[0, 't']]],
  ['uniformQuantizer.dequantize', (q: never) => u4.dequantize(q), [u4.quantize(w)], [[0, 'q']]],
  ['uniformQuantizer.bitsPerWeight', (s: never) => u4.bitsPerWeight(s), [[8, 16]], [[0, 'shape']]],
  ['normalFloatQuantizer.quantize', (t: never) => nf.quantize(t), [w], [[0, 't']]],
  ['normalFloatQuantizer.dequantize', (q: never) => nf.dequantize(q), [nf.quantize(w)], [[0, 'q']]],
  ['normalFloatQuantizer.bitsPerWeight', (s: never) => nf.bitsPerWeight(s), [[8, 16]], [[0, 'shape']]],
  ['e8p12.quantize', (t: never) => e8p.quantize(t), [w], [[0, 't']]],
  ['e8p12.dequantize', (q: never) => e8p.dequantize(q), [e8p.quantize(w)], [[0, 'q']]],
  ['e8p12.bitsPerWeight', (s: never) => e8p.bitsPerWeight(s), [[8, 16]], [[0, 'shape']]],
  [
    'rounderFromQuantizer',
    quant.rounderFromQuantizer,
    [u4, w],
    [
      [0, 'q'],
      [1, 'W'],
    ],
  ],
  ['packBits', quant.packBits, [[1, 2, 3], 4], [[0, 'codes']]],
  ['unpackBits', quant.unpackBits, [new Uint8Array(2), 4, 3], [[0, 'bytes']]],
  ['packBits', quant.packBitsWords, [[1, 2, 3], 4], [[0, 'codes']]],
  ['unpackBitsWords', quant.unpackBitsWords, [new Uint32Array(1), 4, 3], [[0, 'words']]],
  ['allocPlanes', quant.allocPlanes, [quant.e8pRounder(), 4], [[0, 'r']]],
  ['latticeScale', quant.latticeScale, [new Float32Array(8), 1], [[0, 'x']]],
  ['latticeScales', quant.latticeScales, [new Float32Array(8), 1], [[0, 'x']]],
];

describe('required object arguments', () => {
  it('e8pEncode(null) and quantizerFromDescriptor(null) throw E_VALUE naming the argument', () => {
    expect(() => quant.e8pEncode(null as never)).toThrow(
      /^E_VALUE: e8pEncode: x must be an array of numbers, got null$/,
    );
    expect(() => quant.quantizerFromDescriptor(null as never)).toThrow(
      /^E_VALUE: quantizerFromDescriptor: d must be a quantizer descriptor, got null$/,
    );
    expect(() => quant.quantizerFromDescriptor(undefined as never)).toThrow(
      /^E_VALUE: quantizerFromDescriptor: d must be a quantizer descriptor, got undefined$/,
    );
  });

  for (const [name, call, args, required] of entries)
    it(`${name}: null or undefined for ${required.map(([, a]) => a).join(', ')} is E_VALUE naming it`, () => {
      expect(() => call(...(args as never[]))).not.toThrow();
      for (const [i, argument] of required)
        for (const bad of [null, undefined]) {
          const a = args.slice();
          a[i] = bad;
          let caught: unknown;
          try {
            call(...(a as never[]));
          } catch (e) {
            caught = e;
          }
          expect(isCalderaError(caught, 'E_VALUE'), `${argument} = ${String(bad)}: ${String(caught)}`).toBe(
            true,
          );
          expect((caught as Error).message).toContain(`${name}: ${argument} `);
        }
    });
});

describe('callbacks', () => {
  it('ldlq: an onProgress that is not a function is E_VALUE before any work (a TypeError at its first call before)', () => {
    expect(() => quant.ldlq(w, h, { onProgress: 3 as never })).toThrow(
      /^E_VALUE: ldlq: onProgress must be a function, got a number$/,
    );
    expect(() => quant.ldlq(w, h, { proxyLoss: 'no' as never })).toThrow(
      "E_VALUE: ldlq: proxyLoss must be true or false, got 'no'",
    );
  });
});
