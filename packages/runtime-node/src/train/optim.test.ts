import { describe, expect, it } from 'vitest';
import { adamWState, adamWStep, clipGradNorm, cosineLr } from './optim.js';

describe('adamWStep', () => {
  it('matches a hand-computed first and second step', () => {
    // Step 1 with g = 0.5: m = 0.05, v = 0.0125 (β2 = 0.95), m̂ = 0.5, v̂ = 0.25, update = lr·0.5/0.5 = lr.
    // Decoupled decay first: p = 1 − 0.1·0.01·1 = 0.999, then 0.999 − 0.1 = 0.899.
    const p = new Float64Array([1]);
    const s = { m: new Float64Array(1), v: new Float64Array(1) };
    adamWStep(p, new Float64Array([0.5]), s, 1, { lr: 0.1, weightDecay: 0.01, eps: 0 });
    expect(s.m[0]).toBeCloseTo(0.05, 15);
    expect(s.v[0]).toBeCloseTo(0.0125, 15);
    expect(p[0]).toBeCloseTo(0.899, 14);
    // Step 2 with g = −1: m = 0.045 − 0.1 = −0.055, v = 0.011875 + 0.05 = 0.061875,
    // m̂ = −0.055/0.19, v̂ = 0.061875/0.0975; p = 0.899·(1 − 0.001) − 0.1·m̂/sqrt(v̂).
    adamWStep(p, new Float64Array([-1]), s, 2, { lr: 0.1, weightDecay: 0.01, eps: 0 });
    const expected = 0.899 * 0.999 - (0.1 * (-0.055 / 0.19)) / Math.sqrt(0.061875 / 0.0975);
    expect(p[0]).toBeCloseTo(expected, 12);
  });

  it('rejects mismatched lengths and step 0', () => {
    expect(() => adamWStep(new Float32Array(2), new Float32Array(3), adamWState(2), 1, { lr: 1 })).toThrow(
      /differ/,
    );
    expect(() => adamWStep(new Float32Array(2), new Float32Array(2), adamWState(2), 0, { lr: 1 })).toThrow(
      /≥ 1/,
    );
  });

  it('minimises a quadratic', () => {
    const p = new Float32Array([5, -3]);
    const s = adamWState(2);
    for (let t = 1; t <= 500; t++) adamWStep(p, new Float32Array([2 * p[0]!, 2 * p[1]!]), s, t, { lr: 0.05 });
    expect(Math.abs(p[0]!)).toBeLessThan(0.05);
    expect(Math.abs(p[1]!)).toBeLessThan(0.05);
  });
});

describe('clipGradNorm', () => {
  it('scales to the maximum global norm across buffers and reports the norm before', () => {
    const a = new Float32Array([3]);
    const b = new Float32Array([4]);
    expect(clipGradNorm([a, b], 1)).toBeCloseTo(5, 6);
    expect(a[0]).toBeCloseTo(0.6, 6);
    expect(b[0]).toBeCloseTo(0.8, 6);
    expect(clipGradNorm([a, b], 10)).toBeCloseTo(1, 6);
    expect(a[0]).toBeCloseTo(0.6, 6);
  });
});

describe('cosineLr', () => {
  it('warms up linearly, peaks, and decays to minRatio·peak', () => {
    const o = { peak: 1, warmup: 10, total: 110, minRatio: 0.1 };
    expect(cosineLr(0, o)).toBeCloseTo(0.1, 12);
    expect(cosineLr(9, o)).toBeCloseTo(1, 12);
    expect(cosineLr(10, o)).toBeCloseTo(1, 12);
    expect(cosineLr(60, o)).toBeCloseTo(0.55, 12);
    expect(cosineLr(110, o)).toBeCloseTo(0.1, 12);
    expect(cosineLr(500, o)).toBeCloseTo(0.1, 12);
  });
});
