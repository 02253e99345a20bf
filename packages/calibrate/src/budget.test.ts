import { describe, expect, it } from 'vitest';
import { isCalderaError } from '@caldera/core';
import { allocateRanks, averageBits, type LayerShape } from './budget.js';

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
