import { Rng } from '@caldera/core';
import { describe, expect, it } from 'vitest';
import { crossEntropy } from './loss.js';
import { rmsNormBackward, rmsNormForward } from './rmsnorm.js';
import { swigluBackward, swigluForward } from './swiglu.js';

// Gradient checks: each analytic gradient is compared with a central finite difference in f64,
// (f(x+h) − f(x−h)) / 2h with h = 1e-5. Truncation error is O(h²·f''') ≈ 1e-10 and round-off
// ≈ 1e-16/h ≈ 1e-11, so a relative tolerance of 1e-6 has several orders of margin yet catches any
// wrong term (which shows up at O(1) relative error).
const H = 1e-5;

function randn(rng: Rng, n: number): Float64Array {
  const a = new Float64Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.normal();
  return a;
}

/** Checks d(scalar f)/d(x) at every element of x against `analytic`. */
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

function dot(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

describe('crossEntropy', () => {
  it('matches a brute-force log-softmax and its finite-difference gradient, skipping ignored rows', () => {
    const rng = new Rng(1);
    const rows = 5;
    const vocab = 7;
    const logits = randn(rng, rows * vocab).map((v) => 3 * v);
    const targets = [2, -100, 6, 0, 3];
    const r = crossEntropy(logits, rows, vocab, targets);
    let ref = 0;
    for (const [row, t] of targets.entries()) {
      if (t === -100) continue;
      let z = 0;
      for (let j = 0; j < vocab; j++) z += Math.exp(logits[row * vocab + j]!);
      ref += Math.log(z) - logits[row * vocab + t]!;
    }
    expect(r.count).toBe(4);
    expect(r.loss).toBeCloseTo(ref / 4, 12);
    for (let j = 0; j < vocab; j++) expect(r.dLogits[vocab + j]).toBe(0);
    checkGrad(logits, () => crossEntropy(logits, rows, vocab, targets).loss, r.dLogits as Float64Array);
  });

  it('is stable for huge logits and rejects bad targets', () => {
    const r = crossEntropy(new Float64Array([1000, 0, -1000]), 1, 3, [0]);
    expect(r.loss).toBeCloseTo(Math.log1p(Math.exp(-1000) + Math.exp(-2000)), 12);
    expect(() => crossEntropy(new Float64Array(3), 1, 3, [3])).toThrow(/outside/);
    expect(() => crossEntropy(new Float64Array(4), 1, 3, [0])).toThrow(/expected/);
  });
});

describe('rmsNorm', () => {
  it('backward equals central differences of <dy, y> for x and w', () => {
    const rng = new Rng(2);
    const rows = 3;
    const d = 8;
    const x = randn(rng, rows * d);
    const w = randn(rng, d);
    const dy = randn(rng, rows * d);
    const { cache } = rmsNormForward(x, w, rows, d, 1e-5);
    const { dx, dw } = rmsNormBackward(dy, x, w, cache, rows, d);
    const f = () => dot(dy, rmsNormForward(x, w, rows, d, 1e-5).y as Float64Array);
    checkGrad(x, f, dx as Float64Array);
    checkGrad(w, f, dw as Float64Array);
  });

  it('normalises each row to unit RMS when w = 1', () => {
    const x = new Float64Array([3, 4, 0, 0]);
    const { y } = rmsNormForward(x, new Float64Array([1, 1, 1, 1]), 1, 4, 0);
    expect(
      Array.from(y)
        .map((v) => v * v)
        .reduce((a, b) => a + b) / 4,
    ).toBeCloseTo(1, 14);
  });
});

describe('swiglu', () => {
  it('backward equals central differences for gate and up', () => {
    const rng = new Rng(3);
    const n = 20;
    const g = randn(rng, n).map((v) => 3 * v);
    const u = randn(rng, n);
    const dh = randn(rng, n);
    const { dGate, dUp } = swigluBackward(dh, g, u);
    const f = () => dot(dh, swigluForward(g, u) as Float64Array);
    checkGrad(g, f, dGate as Float64Array);
    checkGrad(u, f, dUp as Float64Array);
  });
});
