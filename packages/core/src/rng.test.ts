import { describe, expect, it } from 'vitest';
import { CalderaError } from './errors.js';
import { Rng } from './rng.js';

/**
 * Independent xoshiro128** step written from the published algorithm (Blackman & Vigna) over a
 * Uint32Array, so wrap-around is done by the array rather than by `>>> 0`.
 */
function refXoshiro(state: Uint32Array): number {
  const s = state;
  const rotl = (x: number, k: number) => (x << k) | (x >>> (32 - k));
  const out = new Uint32Array(1);
  out[0] = Math.imul(rotl(Math.imul(s[1]!, 5), 7), 9);
  const t = s[1]! << 9;
  s[2]! ^= s[0]!;
  s[3]! ^= s[1]!;
  s[1]! ^= s[2]!;
  s[0]! ^= s[3]!;
  s[2]! ^= t;
  s[3] = rotl(s[3]!, 11);
  return out[0]!;
}

function moments(xs: Float64Array): { mean: number; variance: number; m4: number } {
  let mean = 0;
  for (const x of xs) mean += x;
  mean /= xs.length;
  let v = 0;
  let m4 = 0;
  for (const x of xs) {
    const d = x - mean;
    v += d * d;
    m4 += d ** 4;
  }
  return { mean, variance: v / xs.length, m4: m4 / xs.length };
}

describe('Rng', () => {
  it('implements xoshiro128** exactly (checked against an independent step function)', () => {
    const r = new Rng(12345);
    const st = Uint32Array.from(r.getState().slice(0, 4));
    for (let i = 0; i < 10_000; i++) expect(r.nextU32()).toBe(refXoshiro(st));
  });

  it('is deterministic given a seed and differs between seeds', () => {
    const a = new Rng(7);
    const b = new Rng(7);
    const c = new Rng(8);
    const sa = Array.from({ length: 100 }, () => a.normal());
    const sb = Array.from({ length: 100 }, () => b.normal());
    const sc = Array.from({ length: 100 }, () => c.normal());
    expect(sa).toEqual(sb);
    expect(sa).not.toEqual(sc);
    expect(new Rng('layer.0').uniform()).toBe(new Rng('layer.0').uniform());
    expect(new Rng('layer.0').uniform()).not.toBe(new Rng('layer.1').uniform());
  });

  // n = 200 000 samples: the standard error of the mean is σ/√n; tolerances are 5 standard errors, so a
  // correct generator fails with probability < 1e-6, while a biased one (e.g. a wrong scale) fails surely.
  const n = 200_000;
  const se = (sigma: number) => (5 * sigma) / Math.sqrt(n);

  it('uniform() lies in [0, 1) with mean 1/2 and variance 1/12', () => {
    const r = new Rng(1);
    const xs = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      xs[i] = r.uniform();
      if (!(xs[i]! >= 0 && xs[i]! < 1)) throw new Error(`out of range: ${xs[i]}`);
    }
    const m = moments(xs);
    expect(Math.abs(m.mean - 0.5)).toBeLessThan(se(Math.sqrt(1 / 12)));
    // Var of (x-μ)² for U(0,1) is 1/80 − 1/144 ≈ 0.00556.
    expect(Math.abs(m.variance - 1 / 12)).toBeLessThan(se(Math.sqrt(1 / 80 - 1 / 144)));
  });

  it('normal() has mean 0, variance 1 and kurtosis 3; fillNormal scales and shifts', () => {
    const r = new Rng(2);
    const xs = new Float64Array(n);
    for (let i = 0; i < n; i++) xs[i] = r.normal();
    const m = moments(xs);
    expect(Math.abs(m.mean)).toBeLessThan(se(1));
    expect(Math.abs(m.variance - 1)).toBeLessThan(se(Math.SQRT2)); // Var(x²) = 2
    expect(Math.abs(m.m4 - 3)).toBeLessThan(se(Math.sqrt(96))); // Var(x⁴) = 105 − 9
    const f = moments(r.fillNormal(new Float64Array(n), 3, 2));
    expect(Math.abs(f.mean - 3)).toBeLessThan(se(2));
    expect(Math.abs(f.variance - 4)).toBeLessThan(se(4 * Math.SQRT2));
  });

  it('rademacher() gives ±1 with equal probability', () => {
    const r = new Rng(3);
    const xs = r.fillRademacher(new Float64Array(n));
    expect(xs.every((x) => x === 1 || x === -1)).toBe(true);
    expect(Math.abs(moments(xs).mean)).toBeLessThan(se(1));
  });

  it('int(k) is uniform over [0, k) (chi-square test)', () => {
    const r = new Rng(4);
    const k = 10;
    const counts = new Array<number>(k).fill(0);
    for (let i = 0; i < n; i++) counts[r.int(k)]!++;
    const e = n / k;
    const chi2 = counts.reduce((s, c) => s + (c - e) ** 2 / e, 0);
    expect(chi2).toBeLessThan(40); // 9 d.o.f.: P(χ² > 40) ≈ 7e-6
    expect(() => r.int(0)).toThrow(CalderaError);
    expect(() => r.int(2.5)).toThrow(CalderaError);
  });

  it('fillUniform respects its bounds', () => {
    const xs = new Rng(5).fillUniform(new Float32Array(1000), -2, 3);
    expect(xs.every((x) => x >= -2 && x <= 3)).toBe(true);
  });

  it('shuffle() returns a permutation, deterministically', () => {
    const a = new Rng(6).shuffle([...Array(50).keys()]);
    expect([...a].sort((x, y) => x - y)).toEqual([...Array(50).keys()]);
    expect(a).toEqual(new Rng(6).shuffle([...Array(50).keys()]));
    expect(a).not.toEqual([...Array(50).keys()]);
  });

  it('getState/fromState resumes bit-exactly, including a pending normal sample', () => {
    const r = new Rng(9);
    r.normal(); // leaves a spare sample pending
    const s = r.getState();
    const json = JSON.parse(JSON.stringify(s.map((x) => (Number.isNaN(x) ? null : x)))) as (number | null)[];
    const q = Rng.fromState(json.map((x) => (x === null ? NaN : x)));
    for (let i = 0; i < 100; i++) expect(q.normal()).toBe(r.normal());
    expect(() => Rng.fromState([1, 2, 3])).toThrow(CalderaError);
  });

  it('fromState takes null for no spare (JSON) and rejects words, an all-zero state or a spare it cannot hold', () => {
    const r = new Rng(9);
    const q = Rng.fromState(JSON.parse(JSON.stringify(r.getState())) as number[]); // NaN → null
    for (let i = 0; i < 10; i++) expect(q.normal()).toBe(r.normal());
    for (const bad of [
      [1.5, 2, 3, 4, NaN],
      [-1, 2, 3, 4, NaN],
      [2 ** 32, 2, 3, 4, NaN],
      [null, 2, 3, 4, NaN],
    ])
      expect(() => Rng.fromState(bad as number[])).toThrow(/^E_VALUE: Rng.fromState: the first 4 numbers/);
    expect(() => Rng.fromState([0, 0, 0, 0, NaN])).toThrow(/all-zero state/);
    expect(() => Rng.fromState([1, 2, 3, 4, Infinity])).toThrow(/the 5th number/);
    expect(() => Rng.fromState([1, 2, 3, 4, '0.5' as never])).toThrow(/the 5th number/);
  });

  it('fork() gives independent deterministic streams', () => {
    const a = new Rng(10);
    const f1 = a.fork();
    const f2 = a.fork();
    expect(f1.uniform()).not.toBe(f2.uniform());
    const b = new Rng(10);
    expect(b.fork().getState()).toEqual(new Rng(10).fork().getState());
  });
});

describe('Rng seeds', () => {
  const first3 = (r: Rng) => [r.nextU32(), r.nextU32(), r.nextU32()];

  it('the streams of integer and string seeds are unchanged (checkpoints and tests depend on them)', () => {
    expect(first3(new Rng())).toEqual([3809008728, 1133695204, 53579671]);
    expect(first3(new Rng(0))).toEqual([3809008728, 1133695204, 53579671]);
    expect(first3(new Rng(1))).toEqual([2442144158, 3238099751, 3819917871]);
    expect(first3(new Rng(12345))).toEqual([518667457, 440444462, 4232892992]);
    expect(first3(new Rng(2 ** 32 - 1))).toEqual([835879718, 1921286648, 2356205009]);
    expect(first3(new Rng('abc'))).toEqual([210338963, 3748574140, 3696474706]);
    expect(first3(new Rng(''))).toEqual([2040553127, 2671230994, 3535833209]);
  });

  it('integers outside [0, 2³²) are taken modulo 2³², as derived seeds (seed + offset) rely on', () => {
    expect(first3(new Rng(-1))).toEqual(first3(new Rng(2 ** 32 - 1)));
    expect(first3(new Rng(2 ** 32))).toEqual(first3(new Rng(0)));
    expect(first3(new Rng(2 ** 32 + 12345))).toEqual(first3(new Rng(12345)));
    expect(first3(new Rng(-(2 ** 32) + 1))).toEqual(first3(new Rng(1)));
  });

  it('a fraction, NaN, ±Infinity or a non-number is E_VALUE (NaN seeded as 0 and 1.9 as 1, silently)', () => {
    for (const [seed, shown] of [
      [NaN, 'NaN'],
      [1.9, '1.9'],
      [-0.5, '-0.5'],
      [Infinity, 'Infinity'],
      [-Infinity, '-Infinity'],
      [null, 'null'],
      [true, 'a boolean'],
      [5n, 'a bigint'],
      [{}, 'an object'],
      [[1], 'an array'],
    ] as const) {
      let caught: unknown;
      try {
        new Rng(seed as never);
      } catch (e) {
        caught = e;
      }
      expect(caught, String(shown)).toBeInstanceOf(CalderaError);
      expect((caught as CalderaError).code).toBe('E_VALUE');
      expect((caught as Error).message).toBe(
        `E_VALUE: Rng: seed must be an integer or a string, got ${shown}`,
      );
    }
  });
});

describe('fillUniform', () => {
  it('never stores hi, also where lo + (hi − lo)·u rounds up to it in f32 (seed 8: twice in 2^24 draws before)', () => {
    const out = new Rng(8).fillUniform(new Float32Array(1 << 24));
    let top = 0;
    let min = 1;
    for (const x of out) {
      if (x >= 1) top++;
      if (x < min) min = x;
    }
    expect(top).toBe(0);
    expect(min).toBeGreaterThanOrEqual(0);
    // a degenerate range gives lo (no endless redraw)
    expect(Array.from(new Rng(1).fillUniform(new Float64Array(3), 2, 2))).toEqual([2, 2, 2]);
  });
});
