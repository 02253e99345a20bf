import { describe, expect, it } from 'vitest';
import { isCalderaError, Rng } from '@caldera/core';
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
      // no error is known (it approximates no weight): none recorded, where `error: 0` read as a perfect fit
      expect(d.error).toBeNaN();
      expect(ck.meta.error).toBeUndefined();
      let bytes = 0;
      for (const t of Object.values(ck.tensors)) bytes += t.data.byteLength;
      expect(d.bitsPerWeight * m * n).toBe(8 * bytes);
      expect(d.paperBitsPerWeight).toBeCloseTo(2 + (rank * 4 * (m + n)) / (m * n), 12);
    });

  it('is deterministic in the seed and uses the whole code range', () => {
    const a = randomDecomposition(64, 64, 4, new Rng(1));
    const b = randomDecomposition(64, 64, 4, new Rng(1));
    const c = randomDecomposition(64, 64, 4, new Rng(2));
    expect(a.q!.planes[0]).toEqual(b.q!.planes[0]);
    expect(a.q!.planes[0]).not.toEqual(c.q!.planes[0]);
    const codes = a.q!.planes[0] as Uint16Array;
    // 512 uniform 16-bit codes: both halves of the range occur (probability of failing 2^-511)
    expect(codes.some((x) => x >= 32768) && codes.some((x) => x < 32768)).toBe(true);
  });

  it('rejects sizes that are not positive integers and a rank beyond min(m, n) (E_VALUE)', () => {
    // before: m = -1 gave a decomposition of shape [-1, 16], rank 100 one of a 16×16 layer
    const rejects = (f: () => unknown, message: RegExp) => {
      let caught: unknown;
      try {
        f();
      } catch (e) {
        caught = e;
      }
      expect(isCalderaError(caught, 'E_VALUE'), String(caught)).toBe(true);
      expect((caught as Error).message).toMatch(message);
    };
    rejects(
      () => randomDecomposition(-1, 16, 2, new Rng(0)),
      /^E_VALUE: randomDecomposition: m -1 must be a positive integer$/,
    );
    rejects(() => randomDecomposition(16, 0, 0, new Rng(0)), /n 0 must be a positive integer/);
    rejects(() => randomDecomposition(16, 1.5, 0, new Rng(0)), /n 1.5 must be/);
    rejects(
      () => randomDecomposition(16, 16, 100, new Rng(0)),
      /^E_VALUE: randomDecomposition: rank 100 must be an integer in \[0, 16\] for a 16×16 layer$/,
    );
    rejects(() => randomDecomposition(16, 32, -1, new Rng(0)), /rank -1 must be/);
    rejects(() => randomDecomposition(16, 32, NaN, new Rng(0)), /rank NaN must be/);
    expect(randomDecomposition(16, 32, 16, new Rng(0)).rank).toBe(16);
  });
});
