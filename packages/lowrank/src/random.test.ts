import { describe, expect, it } from 'vitest';
import { Rng } from '@caldera/core';
import { toCheckpointTensors } from './decomposition.js';
import { randomDecomposition } from './random.js';
import { validateLayer } from './test-util.js';

describe('randomDecomposition', () => {
  for (const [m, n, rank] of [
    [20, 36, 3], // pads to 24 × 40 (K = 12 · 2, 20 · 2)
    [64, 128, 0],
  ] as const)
    it(`${m}×${n}, rank ${rank}: a valid checkpoint layer whose bitsPerWeight is its stored bytes`, () => {
      const d = randomDecomposition(m, n, rank, new Rng(5));
      expect(d.padded).toEqual(m === 20 ? [24, 40] : [64, 128]);
      const ck = toCheckpointTensors('layer', d);
      // the checkpoint validator checks every tensor's name, dtype and shape against the layer's metadata
      validateLayer('layer', ck);
      let bytes = 0;
      for (const t of Object.values(ck.tensors)) bytes += t.data.byteLength;
      expect(d.bitsPerWeight * m * n).toBe(8 * bytes);
      expect(d.paperBitsPerWeight).toBeCloseTo(2 + (rank * 4 * (m + n)) / (m * n), 12);
    });

  it('is deterministic in the seed and uses the whole code range', () => {
    const a = randomDecomposition(64, 64, 4, new Rng(1));
    const b = randomDecomposition(64, 64, 4, new Rng(1));
    const c = randomDecomposition(64, 64, 4, new Rng(2));
    expect(a.q.planes[0]).toEqual(b.q.planes[0]);
    expect(a.q.planes[0]).not.toEqual(c.q.planes[0]);
    const codes = a.q.planes[0] as Uint16Array;
    // 512 uniform 16-bit codes: both halves of the range occur (probability of failing 2^-511)
    expect(codes.some((x) => x >= 32768) && codes.some((x) => x < 32768)).toBe(true);
  });
});
