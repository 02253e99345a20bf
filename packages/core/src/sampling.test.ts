import { describe, expect, it } from 'vitest';
import { Rng } from './rng.js';
import { sampleToken } from './sampling.js';

describe('sampleToken (the runtimes shared sampler)', () => {
  const logits = Float64Array.from([0.1, 2.0, -1.0, 1.5, 0.0]);

  it('is the argmax at temperature 0 and with top-k 1', () => {
    expect(sampleToken(logits, {}, new Rng(1))).toBe(1);
    expect(sampleToken(logits, { temperature: 0.7, topK: 1 }, new Rng(1))).toBe(1);
  });

  it('draws from the tempered softmax: frequencies over 20 000 seeded draws match the probabilities', () => {
    const rng = new Rng(5);
    const counts = new Array<number>(5).fill(0);
    const N = 20_000;
    for (let i = 0; i < N; i++) counts[sampleToken(logits, { temperature: 0.8 }, rng)]!++;
    const e = Array.from(logits, (l) => Math.exp(l / 0.8));
    const z = e.reduce((a, b) => a + b, 0);
    // binomial standard deviation ≤ √(N/4) = 71 draws; 5σ keeps a correct sampler from failing
    e.forEach((v, i) => expect(Math.abs(counts[i]! - (N * v) / z)).toBeLessThan(5 * 71));
  });

  it('top-p keeps only the smallest nucleus', () => {
    const rng = new Rng(2);
    const seen = new Set<number>();
    // probabilities at T = 1: ≈ 0.52 (id 1), 0.31 (id 3), then 0.08, 0.07, 0.03: p = 0.75 keeps ids 1 and 3
    for (let i = 0; i < 2000; i++) seen.add(sampleToken(logits, { temperature: 1, topP: 0.75 }, rng));
    expect([...seen].sort()).toEqual([1, 3]);
  });
});
