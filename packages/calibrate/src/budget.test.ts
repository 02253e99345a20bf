import { describe, expect, it } from 'vitest';
import { isCalderaError } from '@caldera/core';
import { allocateRanks, averageBits, bitsForBytes, rankCap, type LayerShape } from './budget.js';

// Llama-2-7B linear shapes of one block (the brief's §5 table is computed from these).
const llama7bBlock: LayerShape[] = [
  { name: 'q', m: 4096, n: 4096 },
  { name: 'k', m: 4096, n: 4096 },
  { name: 'v', m: 4096, n: 4096 },
  { name: 'o', m: 4096, n: 4096 },
  { name: 'gate', m: 11008, n: 4096 },
  { name: 'up', m: 11008, n: 4096 },
  { name: 'down', m: 4096, n: 11008 },
];

describe('averageBits', () => {
  it('reproduces the brief §5 values for Llama-2-7B (2.099 / 2.198 / 2.395 at k = 64/128/256, 4-bit factors)', () => {
    for (const [k, want] of [
      [64, 2.099],
      [128, 2.198],
      [256, 2.395],
    ] as const) {
      expect(
        averageBits(
          llama7bBlock,
          llama7bBlock.map(() => k),
        ),
      ).toBeCloseTo(want, 3);
    }
    // 16-bit factors at k = 64: 2.395
    expect(
      averageBits(
        llama7bBlock,
        llama7bBlock.map(() => 64),
        { lBits: 16, rBits: 16 },
      ),
    ).toBeCloseTo(2.395, 3);
  });
});

describe('allocateRanks', () => {
  it('never exceeds the target and lands within one granularity step of it', () => {
    for (const target of [2.1, 2.25, 2.4]) {
      const { ranks, averageBits: got } = allocateRanks(llama7bBlock, { targetBits: target });
      expect(got).toBeLessThanOrEqual(target);
      const params = llama7bBlock.reduce((a, s) => a + s.m * s.n, 0);
      const cheapestStep = Math.min(...llama7bBlock.map((s) => (16 * (4 * s.m + 4 * s.n)) / params));
      expect(target - got).toBeLessThan(cheapestStep);
      for (const k of ranks) expect(k % 16).toBe(0);
    }
  });

  it('gives the uniform rank when the target is exactly a uniform configuration', () => {
    const target = averageBits(
      llama7bBlock,
      llama7bBlock.map(() => 64),
    );
    expect(allocateRanks(llama7bBlock, { targetBits: target }).ranks).toEqual(llama7bBlock.map(() => 64));
  });

  it('reaches an exactly reachable target whatever the rounding of target × params (the whole Llama-2-7B, rank 128)', () => {
    // (target − 2)·params rounded to 1279262719.9999988 for a cost of 1279262720 bits: ranks 112/128/144 came back
    const all = Array.from({ length: 32 }, () => llama7bBlock).flat();
    const target = averageBits(
      all,
      all.map(() => 128),
    );
    const got = allocateRanks(all, { targetBits: target });
    expect(got.ranks).toEqual(all.map(() => 128));
    expect(got.averageBits).toBe(target);
    const one = [{ name: 'a', m: 243, n: 254 }];
    const widths = { lBits: 16, rBits: 2 };
    const t1 = averageBits(one, [40], widths);
    expect(allocateRanks(one, { targetBits: t1, granularity: 8, ...widths }).ranks).toEqual([40]);
  });

  it('caps ranks at min(m, n) and rejects targets below B_Q', () => {
    const tiny: LayerShape[] = [{ name: 'a', m: 32, n: 64 }];
    expect(allocateRanks(tiny, { targetBits: 100 }).ranks).toEqual([32]);
    expect(() => allocateRanks(tiny, { targetBits: 1.5 })).toThrow(/below/);
  });
});

describe('bit widths and rank lists', () => {
  const code = (f: () => unknown) => {
    try {
      f();
    } catch (e) {
      return isCalderaError(e) ? e.code : 'not a CalderaError';
    }
    return 'no error';
  };

  it('rejects non-finite or non-positive factor widths instead of returning NaN or full ranks', () => {
    // before: l = NaN gave every layer its full rank and averageBits NaN; l = −4 gave full ranks at "2 bits"
    expect(code(() => allocateRanks(llama7bBlock, { targetBits: 2.2, lBits: NaN }))).toBe('E_VALUE');
    expect(code(() => allocateRanks(llama7bBlock, { targetBits: 2.2, rBits: -4 }))).toBe('E_VALUE');
    expect(
      code(() =>
        averageBits(
          llama7bBlock,
          llama7bBlock.map(() => 64),
          { lBits: 0 },
        ),
      ),
    ).toBe('E_VALUE');
    expect(() => averageBits(llama7bBlock, [64])).toThrow(/1 ranks for 7 layers/);
    // Q may be absent (low-rank only): qBits = 0 is a width, not an error
    expect(averageBits([{ name: 'a', m: 64, n: 64 }], [8], { qBits: 0 })).toBe(
      (8 * (4 * 64 + 4 * 64)) / 4096,
    );
  });

  it('refuses the widths by their old names instead of silently using the defaults', () => {
    // before the rename to lowrank's names, { l: 16 } meant 16-bit L; ignoring it now would count 4 bits
    const old = { targetBits: 2.2, l: 16 } as unknown as Parameters<typeof allocateRanks>[1];
    expect(() => allocateRanks(llama7bBlock, old)).toThrow(
      /allocateRanks: bit width 'l' is now named 'lBits'/,
    );
    expect(
      code(() =>
        averageBits(
          llama7bBlock,
          llama7bBlock.map(() => 64),
          { q: 3 } as never,
        ),
      ),
    ).toBe('E_VALUE');
  });
});

describe('required target and layer shapes', () => {
  const layers: LayerShape[] = [
    { name: 'a', m: 64, n: 64 },
    { name: 'b', m: 32, n: 64 },
  ];
  const thrown = (f: () => unknown): unknown => {
    try {
      f();
    } catch (e) {
      return e;
    }
    return 'no error';
  };
  const expectValueError = (f: () => unknown, message: RegExp) => {
    const e = thrown(f);
    expect(isCalderaError(e, 'E_VALUE'), String(e)).toBe(true);
    expect((e as Error).message).toMatch(message);
  };

  it('requires a finite targetBits instead of comparing undefined with the bits of Q', () => {
    // before: "target undefined bits/weight is below the 2 bits of Q alone"
    expectValueError(
      () => allocateRanks(layers, {} as never),
      /^E_VALUE: allocateRanks: options\.targetBits must be a finite number of bits per weight, got undefined$/,
    );
    expectValueError(() => allocateRanks(layers, { targetBits: NaN }), /targetBits .* got NaN/);
    expectValueError(() => allocateRanks(layers, { targetBits: Infinity }), /targetBits .* got Infinity/);
    expectValueError(() => allocateRanks(layers, { targetBits: '2.4' as never }), /got the string '2\.4'/);
  });

  it('validates every layer shape, naming the function and the layer', () => {
    // before: m −5 gave rank 0, m '4096' a rank of 192 computed from text
    const bad = (i: number, patch: Record<string, unknown>) =>
      layers.map((l, k) => (k === i ? { ...l, ...patch } : l)) as LayerShape[];
    expectValueError(
      () => allocateRanks(bad(1, { m: -5 }), { targetBits: 2.4 }),
      /^E_VALUE: allocateRanks: layers\[1\] \('b'\) m must be a positive integer, got -5$/,
    );
    expectValueError(
      () => allocateRanks(bad(0, { m: '4096' }), { targetBits: 2.4 }),
      /allocateRanks: layers\[0\] \('a'\) m must be a positive integer, got the string '4096'/,
    );
    expectValueError(
      () => averageBits(bad(1, { n: 1.5 }), [0, 0]),
      /averageBits: layers\[1\] \('b'\) n must be a positive integer, got 1\.5/,
    );
    expectValueError(
      () => averageBits(bad(0, { n: 0 }), [0, 0]),
      /averageBits: layers\[0\] \('a'\) n must be a positive integer, got 0/,
    );
    expectValueError(
      () => bitsForBytes(bad(0, { name: 7 }), 1000),
      /^E_VALUE: bitsForBytes: layers\[0\] name must be a string, got 7$/,
    );
    expectValueError(
      () => bitsForBytes([null as never], 1000),
      /bitsForBytes: layers\[0\] must be a layer shape/,
    );
    expectValueError(
      () => rankCap({ name: 'c', m: -5, n: 8 }),
      /^E_VALUE: rankCap: layer \('c'\) m must be a positive integer, got -5$/,
    );
    expectValueError(() => rankCap({ name: 'c', m: 8, n: NaN }), /rankCap: layer \('c'\) n .* got NaN/);
  });

  it('validates granularity and maxRank (rankCap, allocateRanks), maxBytes and the ranks, naming them', () => {
    // before: maxRank NaN or −16 gave every layer rank 0; rankCap granularity 0 NaN, −16 the full rank 64
    for (const maxRank of [NaN, -16, '32'])
      expectValueError(
        () => allocateRanks(layers, { targetBits: 3, maxRank: maxRank as never }),
        /^E_VALUE: allocateRanks: options\.maxRank must be a non-negative number \(Infinity: no bound\), got /,
      );
    expectValueError(
      () => allocateRanks(layers, { targetBits: 3, granularity: 0 }),
      /^E_VALUE: allocateRanks: options\.granularity must be a positive integer, got 0$/,
    );
    for (const g of [0, -16, 1.5, NaN])
      expectValueError(
        () => rankCap(layers[0]!, g),
        /^E_VALUE: rankCap: granularity must be a positive integer/,
      );
    expectValueError(() => rankCap(layers[0]!, 1, NaN), /^E_VALUE: rankCap: maxRank .* got NaN$/);
    expectValueError(() => rankCap(layers[0]!, 16, -16), /rankCap: maxRank .* got -16/);
    expect(rankCap(layers[0]!, 16, 0)).toBe(0);
    expect(rankCap(layers[0]!, 16, 40)).toBe(32);
    expect(allocateRanks(layers, { targetBits: 99, maxRank: 16 }).ranks).toEqual([16, 16]);
    // before: NaN and −0.0007 bits per weight
    for (const bytes of [NaN, -1, Infinity])
      expectValueError(
        () => bitsForBytes(layers, bytes),
        /^E_VALUE: bitsForBytes: maxBytes must be a finite non-negative number of bytes, got /,
      );
    expect(bitsForBytes(layers, 0)).toBe(0);
    // before: NaN, and 1.85 bits (below Q's 2) for a rank of −5
    expectValueError(
      () => averageBits(layers, [NaN, 1]),
      /^E_VALUE: averageBits: ranks\[0\] \('a'\) must be an integer in \[0, \d+\] \(min\(m, n\)\), got NaN$/,
    );
    expectValueError(() => averageBits(layers, [16, -5]), /ranks\[1\] \('b'\) .* got -5/);
    // a rank no decomposition of the layer has (it was counted)
    const full = Math.min(layers[1]!.m, layers[1]!.n);
    expectValueError(
      () => averageBits(layers, [16, full + 1]),
      new RegExp(
        `ranks\\[1\\] \\('b'\\) must be an integer in \\[0, ${full}\\] \\(min\\(m, n\\)\\), got ${full + 1}`,
      ),
    );
    expect(averageBits(layers, [16, full])).toBeGreaterThan(averageBits(layers, [16, full - 1]));
    expectValueError(() => averageBits(layers, [16, 1.5]), /ranks\[1\] .* got 1\.5/);
    const holed: number[] = [16];
    holed.length = 2; // a hole, which forEach would skip
    expectValueError(() => averageBits(layers, holed), /ranks\[1\] .* got undefined/);
  });

  it('caps an unreachable target at full rank, visibly in the returned averageBits', () => {
    const got = allocateRanks(layers, { targetBits: 99 });
    expect(got.ranks).toEqual([64, 32]);
    expect(got.averageBits).toBe(averageBits(layers, [64, 32]));
    expect(got.averageBits).toBeLessThan(99);
  });
});
