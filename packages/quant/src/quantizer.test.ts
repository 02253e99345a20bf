import { describe, expect, it } from 'vitest';
import { Rng, tensor } from '@caldera/core';
import { e8pDecode } from './e8p.js';
import { latticeQuantizer } from './lattice-quantizer.js';
import { ldlq } from './ldlq.js';
import { rounderFromQuantizer } from './quantizer-rounder.js';
import { normalFloatQuantizer } from './normal-float.js';
import { packBits, unpackBits } from './pack.js';
import { quantizerFromDescriptor } from './registry.js';
import { uniformQuantizer } from './uniform.js';

const x = tensor('f32', [16, 64], new Rng(3).fillNormal(new Float32Array(1024), 0, 0.02));

describe('Quantizer interface', () => {
  const all = [
    uniformQuantizer({ bits: 3, groupSize: 16, symmetric: false, rounding: 'stochastic', seed: 2 }),
    normalFloatQuantizer({ bits: 2, granularity: 'channel' }),
    latticeQuantizer('e8p12'),
    latticeQuantizer('e8p12-rvq3'),
    latticeQuantizer('e8p12-rvq4'),
  ];
  for (const q of all) {
    it(`${q.descriptor.kind}: descriptor survives JSON and rebuilds an identical codec`, () => {
      const again = quantizerFromDescriptor(JSON.parse(JSON.stringify(q.descriptor)));
      const a = q.quantize(x);
      expect(Array.from(again.dequantize(a).data)).toEqual(Array.from(q.dequantize(a).data));
      expect(again.bitsPerWeight([16, 64])).toBe(q.bitsPerWeight([16, 64]));
    });
  }

  it('lattice codecs: one f32 scale per tensor, 2/3/4 bits + 32/n; error shrinks with bits', () => {
    const errs = ['e8p12', 'e8p12-rvq3', 'e8p12-rvq4'].map((k, i) => {
      const q = latticeQuantizer(k as 'e8p12');
      expect(q.bitsPerWeight([16, 64])).toBe(2 + i + 32 / 1024);
      const y = q.dequantize(q.quantize(x)).data;
      let e = 0;
      for (let j = 0; j < 1024; j++) e += (y[j]! - x.data[j]!) ** 2;
      return e;
    });
    expect(errs[1]).toBeLessThan(errs[0]!);
    expect(errs[2]).toBeLessThan(errs[1]!);
  });

  it('e8p12 codes are the u16 [rows, cols/8] layout and decode to x̂/scale', () => {
    const q = latticeQuantizer('e8p12');
    const qt = q.quantize(x);
    expect(qt.codes[0]!.length).toBe(16 * 8);
    const dec = e8pDecode(qt.codes[0] as Uint16Array);
    const y = q.dequantize(qt).data;
    for (let i = 0; i < 1024; i++) expect(y[i]).toBeCloseTo(dec[i]! * qt.params.scales[0]!, 7);
  });

  it('scalar codes pack to exactly bits·n/8 bytes and unpack to the same reconstruction', () => {
    const q = uniformQuantizer({ bits: 3, groupSize: 16 });
    const qt = q.quantize(x);
    const bytes = packBits(qt.codes[0]!, 3);
    expect(bytes.length).toBe((1024 * 3) / 8);
    const back = { ...qt, codes: [Uint8Array.from(unpackBits(bytes, 3, 1024))] };
    expect(Array.from(q.dequantize(back).data)).toEqual(Array.from(q.dequantize(qt).data));
  });

  it('rejects tensors from another codec, lattice sizes not a multiple of 8, unknown descriptors', () => {
    const qt = uniformQuantizer({ bits: 4 }).quantize(x);
    expect(() => normalFloatQuantizer({ bits: 4 }).dequantize(qt)).toThrow(/E_VALUE/);
    expect(() => latticeQuantizer('e8p12').quantize(tensor('f32', [12]))).toThrow(/E_SHAPE/);
    expect(() => quantizerFromDescriptor({ kind: 'nope' } as never)).toThrow(/E_VALUE/);
  });

  it('an all-zero tensor dequantizes to zeros (scale 0), for every lattice codec and through LDLQ', () => {
    // no E8P12 codeword is 0, so with the old scale 1 the zeros came back as ±¼, ±¾
    const z = tensor('f32', [2, 16]);
    for (const kind of ['e8p12', 'e8p12-rvq3', 'e8p12-rvq4'] as const) {
      const qz = latticeQuantizer(kind);
      const q = qz.quantize(z);
      expect(q.params.scales[0]).toBe(0);
      expect(Array.from(qz.dequantize(q).data).every((v) => v === 0)).toBe(true);
      const { rounder, params } = rounderFromQuantizer(qz, z);
      const eye = tensor('f64', [16, 16]);
      for (let i = 0; i < 16; i++) eye.data[i * 17] = 1;
      const r = ldlq(z, eye, { quantizer: rounder });
      expect(Array.from(r.wHat.data).every((v) => v === 0)).toBe(true);
      const back = qz.dequantize({ descriptor: qz.descriptor, shape: [2, 16], codes: r.codes, params });
      expect(Array.from(back.data).every((v) => v === 0)).toBe(true);
    }
  });

  it('lattice dequantize rejects code planes that do not match the shape', () => {
    const qz = latticeQuantizer('e8p12-rvq4');
    const q = qz.quantize(tensor('f32', [2, 16], new Rng(1).fillNormal(new Float32Array(32))));
    expect(() => qz.dequantize({ ...q, shape: [4, 16] })).toThrow(
      /E_SHAPE: e8p12-rvq4.dequantize: code plane 0/,
    );
    expect(() => qz.dequantize({ ...q, codes: [q.codes[0]!] })).toThrow(/E_SHAPE: .*codes has 1 entries/);
  });
});

describe('rounderFromQuantizer + ldlq', () => {
  const w = tensor('f32', [16, 64], new Rng(4).fillNormal(new Float32Array(1024)));
  const eye = tensor('f64', [64, 64]);
  for (let i = 0; i < 64; i++) eye.data[i * 65] = 1;
  const codecs = [
    uniformQuantizer({ bits: 3, groupSize: 16 }),
    uniformQuantizer({ bits: 4, granularity: 'channel', symmetric: false }),
    normalFloatQuantizer({ bits: 4, groupSize: 32 }),
    latticeQuantizer('e8p12'),
    latticeQuantizer('e8p12-rvq3'),
  ];
  for (const q of codecs) {
    it(`${JSON.stringify(q.descriptor)}: with H = I, LDLQ codes equal the quantizer's own (RTN)`, () => {
      const { rounder, params } = rounderFromQuantizer(q, w);
      const res = ldlq(w, eye, { quantizer: rounder });
      const own = q.quantize(w);
      for (let p = 0; p < own.codes.length; p++)
        expect(Array.from(res.codes[p]!)).toEqual(Array.from(own.codes[p]!));
      const back = q.dequantize({ descriptor: q.descriptor, shape: [16, 64], codes: res.codes, params });
      // LDLQ's Ŵ and the codec's reconstruction agree to f32 round-off of s·level
      for (let i = 0; i < 1024; i++) expect(Math.abs(back.data[i]! - res.wHat.data[i]!)).toBeLessThan(1e-5);
    });
  }
});
