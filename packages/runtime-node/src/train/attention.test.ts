import { Rng, ropeInvFreq } from '@caldera/core';
import { describe, expect, it } from 'vitest';
import { attentionBackward, attentionForward } from './attention.js';
import { ropeApply } from './rope.js';

// Central differences in f64 with h = 1e-5: truncation ≈ 1e-10, round-off ≈ 1e-11, so 1e-6 relative
// tolerance leaves ample margin while any wrong term gives O(1) error.
const H = 1e-5;

function randn(rng: Rng, n: number): Float64Array {
  const a = new Float64Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.normal();
  return a;
}
function dot(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}
function checkGrad(x: Float64Array, f: () => number, analytic: Float64Array): void {
  for (let i = 0; i < x.length; i++) {
    const x0 = x[i]!;
    x[i] = x0 + H;
    const fp = f();
    x[i] = x0 - H;
    const fm = f();
    x[i] = x0;
    const num = (fp - fm) / (2 * H);
    expect(Math.abs(num - analytic[i]!)).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(num)));
  }
}

describe('ropeApply', () => {
  it('its transpose undoes it, it preserves norms, and its backward matches finite differences', () => {
    const rng = new Rng(4);
    const [T, heads, d] = [5, 2, 8];
    const x = randn(rng, T * heads * d);
    const inv = ropeInvFreq({ headDim: d, ropeTheta: 10000, ropeScaling: null });
    // θ where the inverse frequencies belong (the argument before them) is refused, not turned into NaN angles
    expect(() => ropeApply(x, T, heads, d, 10000 as never)).toThrow(/E_VALUE: ropeApply: invFreq must be/);
    // the sixth argument was the backward's boolean before: refused, not read as a forward rotation
    expect(() => ropeApply(x, T, heads, d, inv, true as never)).toThrow(
      /E_VALUE: ropeApply: options must be/,
    );
    expect(() => ropeApply(x, T, heads, d, inv, { scale: NaN })).toThrow(
      /E_VALUE: ropeApply: scale must be a finite/,
    );
    const y = ropeApply(x, T, heads, d, inv) as Float64Array;
    const back = ropeApply(y, T, heads, d, inv, { transpose: true });
    for (let i = 0; i < x.length; i++) expect(back[i]).toBeCloseTo(x[i]!, 12);
    expect(dot(y, y)).toBeCloseTo(dot(x, x), 10);
    // position 0 is the identity
    for (let i = 0; i < heads * d; i++) expect(y[i]).toBe(x[i]);
    const dy = randn(rng, x.length);
    checkGrad(
      x,
      () => dot(dy, ropeApply(x, T, heads, d, inv) as Float64Array),
      ropeApply(dy, T, heads, d, inv, { transpose: true }) as Float64Array,
    );
  });

  it("with YaRN's attention factor: the rotation times the factor, and its backward still the transpose", () => {
    const rng = new Rng(14);
    const [T, heads, d, scale] = [4, 3, 8, 1.1386];
    const x = randn(rng, T * heads * d);
    const inv = ropeInvFreq({ headDim: d, ropeTheta: 10000, ropeScaling: null });
    const plain = ropeApply(x, T, heads, d, inv) as Float64Array;
    const scaled = ropeApply(x, T, heads, d, inv, { scale }) as Float64Array;
    // (s·c)·x1 − (s·n)·x2 against s·(c·x1 − n·x2): a few ulps of f64
    for (let i = 0; i < x.length; i++) expect(scaled[i]).toBeCloseTo(scale * plain[i]!, 12);
    // the transpose of s·R is s·Rᵀ: applying both gives s²·x, not x
    const both = ropeApply(scaled, T, heads, d, inv, { scale, transpose: true });
    for (let i = 0; i < x.length; i++) expect(both[i]).toBeCloseTo(scale * scale * x[i]!, 12);
    const dy = randn(rng, x.length);
    checkGrad(
      x,
      () => dot(dy, ropeApply(x, T, heads, d, inv, { scale }) as Float64Array),
      ropeApply(dy, T, heads, d, inv, { scale, transpose: true }) as Float64Array,
    );
  });
});

describe('attention', () => {
  const shape = { T: 5, heads: 4, kvHeads: 2, headDim: 3 };
  const rng = new Rng(5);
  const q = randn(rng, 5 * 4 * 3);
  const k = randn(rng, 5 * 2 * 3);
  const v = randn(rng, 5 * 2 * 3);

  it('first position returns its own value and later outputs ignore future keys', () => {
    const { out } = attentionForward(q, k, v, shape);
    for (let h = 0; h < 4; h++)
      for (let j = 0; j < 3; j++) expect(out[h * 3 + j]).toBeCloseTo(v[Math.floor(h / 2) * 3 + j]!, 14);
    const k2 = Float64Array.from(k);
    k2[4 * 6] = 100; // last position's key changes only the last position's output
    const out2 = attentionForward(q, k2, v, shape).out;
    for (let i = 0; i < 4 * 12; i++) expect(out2[i]).toBe(out[i]);
  });

  it('backward matches finite differences for q, k and v (GQA)', () => {
    const dO = randn(rng, 5 * 4 * 3);
    const { cache } = attentionForward(q, k, v, shape);
    const { dq, dk, dv } = attentionBackward(dO, q, k, v, cache, shape);
    const f = () => dot(dO, attentionForward(q, k, v, shape).out as Float64Array);
    checkGrad(q, f, dq as Float64Array);
    checkGrad(k, f, dk as Float64Array);
    checkGrad(v, f, dv as Float64Array);
  });
});
