import { describe, expect, it } from 'vitest';
import { Rng, tensor, type Tensor } from '@caldera/core';
import { e8pDecode, e8pEncode } from './e8p.js';
import { cholesky } from '@caldera/linalg';
import { ldlq, prepareLdlq, proxyLoss, type LdlqOptions } from './ldlq.js';
import { rvqRounder, uniformRounder } from './rounder.js';
import { rvqDecode, rvqEncode } from './rvq.js';

/** H = XᵀX/N + 0.01·mean(diag)·I from activations with strongly correlated, unequal-variance channels. */
function correlatedHessian(n: number, seed: number): Tensor<'f64'> {
  const rng = new Rng(seed);
  const N = 4 * n;
  const f = 6;
  const mix = rng.fillNormal(new Float64Array(f * n));
  const x = new Float64Array(N * n);
  for (let r = 0; r < N; r++) {
    const z = Array.from({ length: f }, () => rng.normal());
    for (let j = 0; j < n; j++) {
      let v = 0.3 * rng.normal();
      for (let k = 0; k < f; k++) v += z[k]! * mix[k * n + j]!;
      x[r * n + j] = v * (1 + (j % 5));
    }
  }
  const h = new Float64Array(n * n);
  for (let r = 0; r < N; r++)
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) h[i * n + j]! += (x[r * n + i]! * x[r * n + j]!) / N;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += h[i * n + i]! / n;
  for (let i = 0; i < n; i++) h[i * n + i]! += 0.01 * mean;
  return tensor('f64', [n, n], h);
}

function gaussian(m: number, n: number, seed: number): Tensor<'f32'> {
  return tensor('f32', [m, n], new Rng(seed).fillNormal(new Float32Array(m * n)));
}

function identity(n: number): Tensor<'f64'> {
  const h = new Float64Array(n * n);
  for (let i = 0; i < n; i++) h[i * n + i] = 1;
  return tensor('f64', [n, n], h);
}

/** H = XᵀX/rows from `rows` rows of N(0, 1) activations: singular (rank `rows`) when rows < n, undamped. */
function gramHessian(rows: number, n: number, seed: number): Tensor<'f64'> {
  const x = new Rng(seed).fillNormal(new Float64Array(rows * n));
  const h = new Float64Array(n * n);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) h[i * n + j]! += (x[r * n + i]! * x[r * n + j]!) / rows;
  return tensor('f64', [n, n], h);
}

/** H + 1e-6·mean|diag H|·I: the H LDLQ factors when H is PSD but singular (the repair's first jitter). */
function firstJitter(h: Tensor<'f64'>): Tensor<'f64'> {
  const n = h.shape[0]!;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += Math.abs(h.data[i * n + i]!);
  const out = Float64Array.from(h.data);
  for (let i = 0; i < n; i++) out[i * n + i]! += 1e-6 * (mean / n);
  return tensor('f64', [n, n], out);
}

/** `tr((Ŵ − W)H(Ŵ − W)ᵀ) / tr(WHWᵀ)` from its definition, in f64 loops (no gemm, no factor of H). */
function directLoss(w: Tensor<'f32'>, wHat: Tensor<'f32'>, h: Tensor<'f64'>): number {
  const [m, n] = w.shape as [number, number];
  let num = 0;
  let den = 0;
  for (let r = 0; r < m; r++)
    for (let i = 0; i < n; i++) {
      const ei = wHat.data[r * n + i]! - w.data[r * n + i]!;
      for (let j = 0; j < n; j++) {
        const hij = h.data[i * n + j]!;
        num += ei * hij * (wHat.data[r * n + j]! - w.data[r * n + j]!);
        den += w.data[r * n + i]! * hij * w.data[r * n + j]!;
      }
    }
  return num / den;
}

describe('ldlq', () => {
  it('with H = I equals round-to-nearest exactly', () => {
    const w = gaussian(24, 64, 1);
    const res = ldlq(w, identity(64), { bufferCols: 32 });
    expect(Array.from(res.codes[0]!)).toEqual(Array.from(e8pEncode(w.data)));
    expect(Array.from(res.wHat.data)).toEqual(Array.from(e8pDecode(e8pEncode(w.data))));
  });

  const n = 128;
  const w = gaussian(64, n, 2);
  const h = correlatedHessian(n, 3);
  const rtn = tensor('f32', [64, n], e8pDecode(e8pEncode(w.data)));
  const rtnLoss = proxyLoss(w, rtn, h);
  const plain = ldlq(w, h, { bufferCols: 32, damping: 0 });
  const ldlqLoss = proxyLoss(w, plain.wHat, h);
  it(`beats RTN on a correlated Hessian (proxy loss LDLQ/RTN = ${(ldlqLoss / rtnLoss).toFixed(3)})`, () => {
    expect(ldlqLoss).toBeLessThan(rtnLoss);
  });

  it('tuning passes do not increase the proxy loss', () => {
    const tuned = ldlq(w, h, { bufferCols: 32, tuneIters: 3, damping: 0 });
    expect(proxyLoss(w, tuned.wHat, h)).toBeLessThanOrEqual(ldlqLoss * (1 + 1e-6));
    // the reported loss is the directly computed one (f32 gemm accumulation: 1e-4 relative)
    expect(Math.abs(tuned.proxyLoss - proxyLoss(w, tuned.wHat, h)) / tuned.proxyLoss).toBeLessThan(1e-4);
  });

  it('reports the proxy loss Σ tr(r_k D_k r_kᵀ)/tr(WHWᵀ) equal to the direct trace formula', () => {
    // f32 products of O(1) values over n = 128 terms: relative agreement to 1e-4 is ample
    expect(Math.abs(plain.proxyLoss - ldlqLoss) / ldlqLoss).toBeLessThan(1e-4);
  });

  it('skipping the proxy-loss diagnostic changes nothing else (identical codes and Ŵ, loss NaN)', () => {
    const quiet = ldlq(w, h, { bufferCols: 32, damping: 0, proxyLoss: false });
    expect(quiet.proxyLoss).toBeNaN();
    expect(quiet.codes.map((p) => Array.from(p))).toEqual(plain.codes.map((p) => Array.from(p)));
    expect(Array.from(quiet.wHat.data)).toEqual(Array.from(plain.wHat.data));
  });

  describe('weightedErrorInto receives (W − Ŵ)·M, M the Cholesky factor of H, without changing the codes', () => {
    // the reference: a textbook f64 Cholesky of H and the product (W − Ŵ)·M in f64 loops
    const M = new Float64Array(n * n);
    for (let j = 0; j < n; j++) {
      let d = h.data[j * n + j]!;
      for (let p = 0; p < j; p++) d -= M[j * n + p]! ** 2;
      M[j * n + j] = Math.sqrt(d);
      for (let i = j + 1; i < n; i++) {
        let v = h.data[i * n + j]!;
        for (let p = 0; p < j; p++) v -= M[i * n + p]! * M[j * n + p]!;
        M[i * n + j] = v / M[j * n + j]!;
      }
    }
    const m = 64;
    let den = 0;
    for (let r = 0; r < m; r++)
      for (let i = 0; i < n; i++)
        for (let j = 0; j < n; j++) den += w.data[r * n + i]! * h.data[i * n + j]! * w.data[r * n + j]!;
    // the prepared case is how @caldera/lowrank calls it: H's own Cholesky factor, no proxy loss
    const cases: [string, LdlqOptions, boolean][] = [
      ['E8P, 4 full buffers', { bufferCols: 32 }, false],
      [
        'E8P, buffers of 80 and 48 columns (sub-buffer products inside the partial one)',
        { bufferCols: 80 },
        false,
      ],
      [
        'a scalar rounder (g = 1), buffers of 40, 40, 40 and 8 columns',
        { bufferCols: 40, quantizer: uniformRounder(2, 0.5) },
        false,
      ],
      [
        'E8P on an H prepared from its Cholesky factor, without the proxy loss',
        { bufferCols: 32, proxyLoss: false },
        true,
      ],
    ];
    it.each(cases)('%s', (_, opts, fromCholesky) => {
      const hq = fromCholesky ? prepareLdlq(h, { damping: 0, cholesky: cholesky(h) }) : h;
      const damping = fromCholesky ? {} : { damping: 0 };
      const without = ldlq(w, hq, { ...damping, ...opts });
      const into = tensor('f32', [m, n]);
      const res = ldlq(w, hq, { ...damping, ...opts, weightedErrorInto: into });
      expect(Array.from(res.wHat.data)).toEqual(Array.from(without.wHat.data));
      const ref = new Float64Array(m * n);
      for (let r = 0; r < m; r++)
        for (let p = 0; p < n; p++) {
          const e = w.data[r * n + p]! - res.wHat.data[r * n + p]!;
          for (let j = 0; j <= p; j++) ref[r * n + j]! += e * M[p * n + j]!;
        }
      let rms = 0;
      let worst = 0;
      let sq = 0;
      for (let i = 0; i < ref.length; i++) {
        rms += ref[i]! ** 2;
        worst = Math.max(worst, Math.abs(into.data[i]! - ref[i]!));
        sq += into.data[i]! ** 2;
      }
      rms = Math.sqrt(rms / ref.length);
      // LDLQ's residuals come from f32 feedback sums over ≤ n = 128 terms of O(1) values (errors ~1e-5 absolute);
      // 1e-4 of Y's RMS is a margin of ~10 over that, and a wrong block (C vs Cᵀ, a missing term) is off by O(RMS)
      expect(worst).toBeLessThan(1e-4 * rms);
      // and its squared norm is the proxy loss's numerator (the same tolerance as the loss itself above)
      if (opts.proxyLoss !== false)
        expect(Math.abs(sq / den - res.proxyLoss) / res.proxyLoss).toBeLessThan(1e-4);
      else expect(res.proxyLoss).toBeNaN();
    });
  });

  it('weightedErrorInto of the wrong shape, dtype or layout, or with tuning passes, is refused', () => {
    const code = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return String((e as Error).message);
      }
      return 'no error';
    };
    const run = (t: unknown, tuneIters = 0) =>
      code(() => ldlq(w, h, { damping: 0, tuneIters, weightedErrorInto: t as Tensor<'f32'> }));
    expect(run(tensor('f32', [64, n + 8]))).toMatch(
      /^E_SHAPE: ldlq: weightedErrorInto has shape \[64, 136\]/,
    );
    expect(run(tensor('f64', [64, n]))).toMatch(
      /^E_DTYPE: ldlq: weightedErrorInto must be an f32 tensor, got dtype 'f64'/,
    );
    const big = tensor('f32', [64, 2 * n]);
    const view = { ...big, shape: [64, n] };
    expect(run(view)).toMatch(/^E_VALUE: ldlq: weightedErrorInto must be contiguous/);
    expect(run(null)).toMatch(/^E_DTYPE: ldlq: weightedErrorInto must be an f32 tensor, got null/);
    const plainData = { ...tensor('f32', [64, n]), data: new Array<number>(64 * n).fill(0) };
    expect(run(plainData)).toMatch(/^E_VALUE: ldlq: weightedErrorInto.data must be a Float32Array/);
    expect(run(tensor('f32', [64, n]), 2)).toMatch(/^E_VALUE: ldlq: weightedErrorInto .*tuneIters \(2\)/);
  });

  describe('wHatInto and overwriteW: the same codes and Ŵ, Ŵ in the given array, W − Ŵ left in W', () => {
    const cases: [string, LdlqOptions, boolean][] = [
      ['LDLQ alone, 4 full buffers', { bufferCols: 32 }, false],
      ['buffers of 80 and 48 columns', { bufferCols: 80 }, false],
      [
        'with a tuning pass (W − Ŵ updated in place: equal up to round-off)',
        { bufferCols: 32, tuneIters: 1 },
        false,
      ],
      [
        'with weightedErrorInto, on an H prepared from its Cholesky factor (as @caldera/lowrank calls it)',
        { bufferCols: 32, proxyLoss: false },
        true,
      ],
    ];
    it.each(cases)('%s', (_, opts, fromCholesky) => {
      const hq = fromCholesky ? prepareLdlq(h, { damping: 0, cholesky: cholesky(h) }) : h;
      const damping = fromCholesky ? {} : { damping: 0 };
      const y0 = fromCholesky ? tensor('f32', [64, n]) : undefined;
      const y1 = fromCholesky ? tensor('f32', [64, n]) : undefined;
      const plainRun = ldlq(w, hq, { ...damping, ...opts, ...(y0 ? { weightedErrorInto: y0 } : {}) });
      const scratch = tensor('f32', [64, n], Float32Array.from(w.data));
      const into = tensor('f32', [64, n], new Float32Array(64 * n).fill(Number.NaN)); // every entry must be written
      const res = ldlq(scratch, hq, {
        ...damping,
        ...opts,
        ...(y1 ? { weightedErrorInto: y1 } : {}),
        wHatInto: into,
        overwriteW: true,
      });
      expect(res.wHat.data).toBe(into.data);
      expect(Array.from(into.data)).toEqual(Array.from(plainRun.wHat.data));
      expect(res.codes.map((p) => Array.from(p))).toEqual(plainRun.codes.map((p) => Array.from(p)));
      if (y0 && y1) expect(Array.from(y1.data)).toEqual(Array.from(y0.data));
      if (opts.proxyLoss !== false) expect(res.proxyLoss).toBe(plainRun.proxyLoss);
      let worst = 0;
      for (let i = 0; i < 64 * n; i++)
        worst = Math.max(worst, Math.abs(scratch.data[i]! - Math.fround(w.data[i]! - into.data[i]!)));
      // after LDLQ alone each entry is the f32 difference itself; a tuning pass subtracts its changes from it,
      // one f32 rounding per change of O(1) values (≤ 2.4e-7 each)
      if (opts.tuneIters) expect(worst).toBeLessThan(1e-6);
      else expect(worst).toBe(0);
    });

    it('is refused for a W that is not a plain f32 array, or outputs sharing memory', () => {
      const code = (f: () => unknown) => {
        try {
          f();
        } catch (e) {
          return String((e as Error).message);
        }
        return 'no error';
      };
      const w64 = tensor('f64', [64, n], Float64Array.from(w.data));
      expect(code(() => ldlq(w64, h, { damping: 0, overwriteW: true }))).toMatch(
        /^E_VALUE: ldlq: overwriteW needs W as a contiguous, row-major f32 tensor \(got f64/,
      );
      const big = tensor('f32', [64, 2 * n]);
      expect(code(() => ldlq({ ...big, shape: [64, n] }, h, { damping: 0, overwriteW: true }))).toMatch(
        /^E_VALUE: ldlq: overwriteW needs W as a contiguous/,
      );
      // a view that starts 8 entries into its data (row-major otherwise): refused as W and as an output
      const shifted: Tensor<'f32'> = {
        dtype: 'f32',
        shape: [64, n],
        strides: [n, 1],
        offset: 8,
        data: new Float32Array(64 * n + 8),
      };
      shifted.data.set(w.data, 8);
      expect(code(() => ldlq(shifted, h, { damping: 0, overwriteW: true }))).toMatch(
        /^E_VALUE: ldlq: overwriteW needs W as a contiguous.*offset 8/,
      );
      expect(code(() => ldlq(w, h, { damping: 0, wHatInto: shifted }))).toMatch(
        /^E_VALUE: ldlq: wHatInto must be contiguous/,
      );
      expect(code(() => ldlq(shifted, h, { damping: 0 }))).toBe('no error'); // read through its offset otherwise
      expect(code(() => ldlq(w, h, { damping: 0, overwriteW: 'yes' as unknown as boolean }))).toMatch(
        /^E_VALUE: ldlq:.*overwriteW/,
      );
      expect(code(() => ldlq(w, h, { damping: 0, wHatInto: w }))).toMatch(
        /^E_VALUE: ldlq: wHatInto shares memory with W/,
      );
      // views of one buffer: apart they are fine, overlapping by 8 entries they are refused
      const shared = new Float32Array(2 * 64 * n);
      const first = tensor('f32', [64, n], shared.subarray(0, 64 * n));
      const apart = tensor('f32', [64, n], shared.subarray(64 * n));
      const overlapping = tensor('f32', [64, n], shared.subarray(64 * n - 8, 2 * 64 * n - 8));
      expect(code(() => ldlq(w, h, { damping: 0, weightedErrorInto: first, wHatInto: apart }))).toBe(
        'no error',
      );
      expect(code(() => ldlq(w, h, { damping: 0, weightedErrorInto: first, wHatInto: overlapping }))).toMatch(
        /^E_VALUE: ldlq: wHatInto shares memory with weightedErrorInto/,
      );
      expect(code(() => ldlq(w, h, { damping: 0, wHatInto: tensor('f32', [64, n + 8]) }))).toMatch(
        /^E_SHAPE: ldlq: wHatInto has shape \[64, 136\]/,
      );
      expect(code(() => ldlq(w, h, { damping: 0, wHatInto: tensor('f64', [64, n]) as never }))).toMatch(
        /^E_DTYPE: ldlq: wHatInto must be an f32 tensor/,
      );
    });
  });

  it('buffer size changes only the summation order (identical codes up to rare rounding ties)', () => {
    const other = ldlq(w, h, { bufferCols: 8, damping: 0 });
    let same = 0;
    for (let i = 0; i < plain.codes[0]!.length; i++) if (plain.codes[0]![i] === other.codes[0]![i]) same++;
    expect(same / plain.codes[0]!.length).toBeGreaterThan(0.99);
  });

  it('the scalar rounder works with groups of 1 and H = I gives RTN', () => {
    const r = uniformRounder(2, 0.5);
    const res = ldlq(w, identity(n), { quantizer: r });
    for (let i = 0; i < w.data.length; i++)
      expect(res.wHat.data[i]).toBe(Math.max(-1, Math.min(1, Math.round(w.data[i]! / 0.5))) * 0.5);
  });

  it('a singular Hessian (dead input channels) is repaired, never NaN', () => {
    const hs = correlatedHessian(64, 4);
    for (let j = 0; j < 64; j++) hs.data[5 * 64 + j] = hs.data[j * 64 + 5] = 0; // channel 5 never active
    const res = ldlq(gaussian(16, 64, 5), hs, { damping: 0 });
    expect(res.repaired).toBe(true);
    expect(res.wHat.data.every(Number.isFinite)).toBe(true);
    const damped = ldlq(gaussian(16, 64, 5), hs); // default 1 % damping makes it positive definite
    expect(damped.repaired).toBe(false);
    expect(Number.isFinite(damped.proxyLoss)).toBe(true);
  });

  it('tuning on a rank-deficient H (damping 0) uses the repaired H: the loss falls and is reported correctly', () => {
    // H from 2 and 4 rows for 64 inputs: every 8×8 block H_kk is singular. Before, the passes inverted the
    // unrepaired H_kk: with 2 rows an exact zero pivot (E_VALUE, NaN into e8pEncode), with 4 rows a reported loss of
    // −1.7e3 (one pass) for a real 0.66 (LDLQ alone: 0.0146). Now 0.0082 → 0.0012 and 0.0146 → 0.0026.
    const wl = gaussian(32, 64, 10);
    for (const rows of [2, 4]) {
      const hl = gramHessian(rows, 64, 11 + rows);
      const hf = firstJitter(hl); // the H that was factored, which proxyLoss is documented against
      const base = ldlq(wl, hl, { damping: 0 });
      expect(base.repaired).toBe(true);
      for (const tuneIters of [1, 3]) {
        const tuned = ldlq(wl, hl, { damping: 0, tuneIters });
        expect(tuned.repaired).toBe(true);
        const direct = directLoss(wl, tuned.wHat, hf);
        expect(Number.isFinite(tuned.proxyLoss) && tuned.proxyLoss >= 0).toBe(true);
        // the reported loss is tr(E·H·Eᵀ) with E·H an f32 gemm (64 terms each), then exact f64 block updates: f32
        // round-off of random sign, measured ≤ 1.1e-5 relative here; 1e-4 leaves a 9× margin
        expect(Math.abs(tuned.proxyLoss - direct) / direct).toBeLessThan(1e-4);
        // a pass never increases the loss (its guard compares block objectives built on the f32 product E·H: 1e-6
        // relative slack for that round-off)
        expect(direct).toBeLessThanOrEqual(directLoss(wl, base.wHat, hf) * (1 + 1e-6));
      }
    }
  });

  it('tuning with a dead input channel (damping 0, no Hadamard) is finite and does not increase the loss', () => {
    const hs = correlatedHessian(64, 4);
    for (let j = 0; j < 64; j++) hs.data[5 * 64 + j] = hs.data[j * 64 + 5] = 0; // channel 5 never active
    const ws = gaussian(16, 64, 5);
    const hf = firstJitter(hs);
    const base = ldlq(ws, hs, { damping: 0 });
    // before: E_VALUE: e8pEncode: non-finite input NaN (H_kk of the dead channel's block inverted without jitter)
    const tuned = ldlq(ws, hs, { damping: 0, tuneIters: 2 });
    expect(tuned.repaired).toBe(true);
    expect(tuned.wHat.data.every(Number.isFinite)).toBe(true);
    const direct = directLoss(ws, tuned.wHat, hf);
    // f32 E·H products as above (measured 2e-7 relative on a loss of 0.0062, from 0.0209 untuned): 1e-4 is ample
    expect(Math.abs(tuned.proxyLoss - direct) / direct).toBeLessThan(1e-4);
    expect(direct).toBeLessThanOrEqual(directLoss(ws, base.wHat, hf) * (1 + 1e-6));
    // the kept H is the one factored: H plus the repair's jitter, which factors without another jitter
    const kept = prepareLdlq(hs, { damping: 0, keepHessian: true }).hessian!;
    expect(Array.from(kept)).toEqual(Array.from(hf.data));
    expect(() => cholesky(tensor('f64', [64, 64], kept))).not.toThrow();
  });

  it('sub-buffered run (bufferCols 128 on n = 256, 32-column sub-buffers) matches bufferCols 8', () => {
    const w2 = gaussian(32, 256, 6);
    const h2 = correlatedHessian(256, 7);
    const a = ldlq(w2, h2, { bufferCols: 128 });
    const b = ldlq(w2, h2, { bufferCols: 8 });
    let same = 0;
    for (let i = 0; i < a.codes[0]!.length; i++) if (a.codes[0]![i] === b.codes[0]![i]) same++;
    // only f32 summation order differs; a flipped near-tie changes later feedback slightly
    expect(same / a.codes[0]!.length).toBeGreaterThan(0.97);
    expect(Math.abs(a.proxyLoss - b.proxyLoss) / b.proxyLoss).toBeLessThan(0.02);
    // tuning through the sub-buffer gemm updates: same loss as the unbuffered-like run, and no worse than LDLQ
    const ta = ldlq(w2, h2, { bufferCols: 128, tuneIters: 2 });
    const tb = ldlq(w2, h2, { bufferCols: 8, tuneIters: 2 });
    expect(ta.proxyLoss).toBeLessThanOrEqual(a.proxyLoss * (1 + 1e-6));
    expect(Math.abs(ta.proxyLoss - tb.proxyLoss) / tb.proxyLoss).toBeLessThan(0.02);
  });

  const rvqRtn = tensor('f32', [64, n], rvqDecode(rvqEncode(w.data, 4), 4));
  const rvqRes = ldlq(w, h, { quantizer: rvqRounder(4), damping: 0 });
  const rvqRatio = proxyLoss(w, rvqRes.wHat, h) / proxyLoss(w, rvqRtn, h);
  it(`RVQ4 codebook: LDLQ beats RTN too (ratio ${rvqRatio.toFixed(3)}), two u16 code planes`, () => {
    expect(rvqRatio).toBeLessThan(1);
    expect(rvqRes.codes.length).toBe(2);
    expect(rvqRes.codes[1]).toBeInstanceOf(Uint16Array);
  });

  it('huge dynamic range (channel scales 1e-6..1e6) and an all-zero H give finite codes, never NaN', () => {
    const hd = correlatedHessian(64, 8);
    const sc = Array.from({ length: 64 }, (_, i) => 10 ** (((i % 13) - 6) as number));
    for (let i = 0; i < 64; i++) for (let j = 0; j < 64; j++) hd.data[i * 64 + j]! *= sc[i]! * sc[j]!;
    const r1 = ldlq(gaussian(8, 64, 9), hd);
    expect(r1.wHat.data.every(Number.isFinite)).toBe(true);
    expect(Number.isFinite(r1.proxyLoss)).toBe(true);
    const r2 = ldlq(gaussian(8, 64, 9), tensor('f64', [64, 64]));
    expect(r2.repaired).toBe(true);
    expect(Array.from(r2.codes[0]!)).toEqual(Array.from(e8pEncode(gaussian(8, 64, 9).data))); // H ∝ I: RTN
    const bad = identity(16);
    bad.data[5] = Infinity;
    expect(() => ldlq(gaussian(4, 16, 1), bad)).toThrow(/E_VALUE/);
    const asym = identity(16);
    asym.data[1] = 0.5; // H[0][1] without H[1][0]
    expect(() => ldlq(gaussian(4, 16, 1), asym)).toThrow(/not symmetric/);
  });

  it('a prepared H gives the same codes, Ŵ and proxy loss as H itself, for several W (tuning included)', () => {
    const same = (a: ReturnType<typeof ldlq>, b: ReturnType<typeof ldlq>) => {
      expect(a.codes.map((p) => Array.from(p))).toEqual(b.codes.map((p) => Array.from(p)));
      expect(Array.from(a.wHat.data)).toEqual(Array.from(b.wHat.data));
      expect(a.proxyLoss).toBe(b.proxyLoss);
      expect(a.repaired).toBe(b.repaired);
    };
    const prepared = prepareLdlq(h, { keepHessian: true }); // default damping 0.01, as ldlq's
    for (const seed of [2, 12]) {
      const wi = gaussian(40, n, seed);
      same(ldlq(wi, prepared, { bufferCols: 32 }), ldlq(wi, h, { bufferCols: 32 }));
      same(
        ldlq(wi, prepared, { bufferCols: 32, tuneIters: 1 }),
        ldlq(wi, h, { bufferCols: 32, tuneIters: 1 }),
      );
    }
    // from a Cholesky factor of the damped H: the factor blockLDL would compute, so the same bits again
    const fromChol = prepareLdlq(h, { damping: 0, cholesky: cholesky(h) });
    expect(fromChol.hessian).toBeNull();
    same(ldlq(w, fromChol, { bufferCols: 32 }), plain);
    // a singular H: the repair is recorded on the prepared H and reported by every ldlq that uses it
    const hs = correlatedHessian(64, 4);
    for (let j = 0; j < 64; j++) hs.data[5 * 64 + j] = hs.data[j * 64 + 5] = 0;
    const ps = prepareLdlq(hs, { damping: 0 });
    expect(ps.repaired).toBe(true);
    same(ldlq(gaussian(16, 64, 5), ps), ldlq(gaussian(16, 64, 5), hs, { damping: 0 }));
  });

  it('prepared from a Cholesky factor with keepHessian, tuning gives what the plain path gives, with the same loss', () => {
    // the damped H built here (H + 0.01·mean(diag H)·I, ldlq's default), factored by linalg's cholesky
    const hd = Float64Array.from(h.data);
    let mean = 0;
    for (let i = 0; i < n; i++) mean += h.data[i * n + i]!;
    for (let i = 0; i < n; i++) hd[i * n + i]! += (0.01 * mean) / n;
    const c = cholesky(tensor('f64', [n, n], hd));
    const ref = ldlq(w, h, { bufferCols: 32, tuneIters: 2 }); // factors the same damped H itself
    // a contiguous H (checked in place unless kept) and a transposed view of it (always copied)
    for (const hv of [h, { ...h, strides: [1, n] } as Tensor<'f64'>]) {
      const p = prepareLdlq(hv, { damping: 0.01, cholesky: c, keepHessian: true });
      // the kept H is the damped one: the same sum, its mean taken in another order (1e-15 relative of the diagonal)
      for (let i = 0; i < n * n; i++) expect(Math.abs(p.hessian![i]! - hd[i]!)).toBeLessThan(1e-13);
      const r = ldlq(w, p, { bufferCols: 32, tuneIters: 2 });
      // the LDL from the Cholesky factor is the one blockLDL computes (as above), and the tuning passes run on the kept
      // H, the plain path's: the same codes, Ŵ and loss, bit for bit (a tuning pass on another H, or none, differs)
      expect(r.codes.map((q) => Array.from(q))).toEqual(ref.codes.map((q) => Array.from(q)));
      expect(Array.from(r.wHat.data)).toEqual(Array.from(ref.wHat.data));
      expect(r.proxyLoss).toBe(ref.proxyLoss);
      // and the loss is the direct trace formula's on the damped H (f32 gemm accumulation: 1e-4 relative)
      const direct = directLoss(w, r.wHat, tensor('f64', [n, n], hd));
      expect(Math.abs(r.proxyLoss - direct) / direct).toBeLessThan(1e-4);
    }
  });

  it('a prepared H must match the quantizer, W and options', () => {
    const prepared = prepareLdlq(h, { damping: 0 });
    expect(() => ldlq(gaussian(4, 64, 1), prepared)).toThrow(
      /E_SHAPE: ldlq: H has shape \[128, 128\], expected \[64, 64\]/,
    );
    expect(() => ldlq(w, prepared, { quantizer: uniformRounder(2, 0.5) })).toThrow(
      /E_VALUE: ldlq: the prepared H is blocked by 8, the quantizer's dimension is 1/,
    );
    expect(() => ldlq(w, prepared, { damping: 0 })).toThrow(/E_VALUE: ldlq: damping belongs to prepareLdlq/);
    // ldlq(W, H, signal): the signal would abort nothing (it ran to the end)
    expect(() => ldlq(w, prepared, AbortSignal.abort() as never)).toThrow(
      'E_VALUE: ldlq: options must be an object such as { signal }, got an AbortSignal',
    );
    expect(() => ldlq(w, prepared, { tuneIters: 1 })).toThrow(
      /E_VALUE: ldlq: tuneIters needs H: .*keepHessian/,
    );
    expect(() => prepareLdlq(h, { dim: 3 })).toThrow(
      /E_SHAPE: prepareLdlq: n = 128 is not a multiple of .* 3/,
    );
    expect(() => prepareLdlq(h, { cholesky: cholesky(identity(64)) })).toThrow(
      /E_SHAPE: prepareLdlq: cholesky has shape \[64, 64\], expected \[128, 128\]/,
    );
    expect(() => prepareLdlq(tensor('f64', [8, 16]))).toThrow(/E_SHAPE: prepareLdlq: H must be square/);
    expect(() => prepareLdlq(h, { damping: -1 })).toThrow(/E_VALUE: prepareLdlq: damping must be/);
    // with a Cholesky factor, H is still checked (in place, no copy)
    const asym = tensor('f64', [n, n], Float64Array.from(h.data));
    asym.data[3 * n + 1]! += 1;
    expect(() => prepareLdlq(asym, { damping: 0, cholesky: cholesky(h) })).toThrow(
      /E_VALUE: prepareLdlq: H \[128, 128\] is not symmetric at \(3, 1\)/,
    );
    expect(() => prepareLdlq(h, { damping: NaN, cholesky: cholesky(h) })).toThrow(/damping must be/);
    expect(() => prepareLdlq(h, { cholesky: cholesky(h) })).toThrow(
      /E_VALUE: prepareLdlq: with cholesky, pass damping/,
    );
    expect(() => ldlq(w, { ...prepared, L: new Float32Array(8) })).toThrow(
      /E_VALUE: ldlq: the prepared H is malformed/,
    );
    const ac = new AbortController();
    ac.abort();
    expect(() => prepareLdlq(h, { signal: ac.signal })).toThrow(/prepareLdlq was aborted/);
  });

  it('stops with E_ABORTED when the signal fires and reports progress up to 1', () => {
    const ac = new AbortController();
    ac.abort();
    expect(() => ldlq(w, h, { signal: ac.signal })).toThrow(/ldlq was aborted/);
    const seen: number[] = [];
    ldlq(w, h, { bufferCols: 32, tuneIters: 1, onProgress: (f) => seen.push(f) });
    expect(seen.at(-1)).toBeCloseTo(1, 12);
    expect(seen.every((f, i) => i === 0 || f >= seen[i - 1]!)).toBe(true);
  });

  it('rejects mismatched shapes and non-finite input with CalderaError', () => {
    expect(() => ldlq(gaussian(4, 16, 1), identity(8))).toThrow(/E_SHAPE/);
    expect(() => ldlq(gaussian(4, 12, 1), identity(12))).toThrow(/multiple of the codebook/);
    const bad = gaussian(4, 16, 1);
    bad.data[3] = NaN;
    expect(() => ldlq(bad, identity(16))).toThrow(/E_VALUE/);
  });

  it('rejects tuneIters that are not integers ≥ 0 (Infinity never returned, -1 reported progress Infinity)', () => {
    const w = tensor('f32', [2, 8], new Rng(1).fillNormal(new Float32Array(16)));
    const h = tensor('f64', [8, 8]);
    for (let i = 0; i < 8; i++) h.data[i * 9] = 1;
    for (const tuneIters of [-1, 1.5, NaN, Infinity])
      expect(() => ldlq(w, h, { tuneIters })).toThrow(/E_VALUE: ldlq: tuneIters/);
  });

  it('missing or integer operands are CalderaErrors, and proxyLoss checks that W and Ŵ match', () => {
    const w = tensor('f32', [2, 8], new Rng(1).fillNormal(new Float32Array(16)));
    const h = tensor('f64', [8, 8]);
    for (let i = 0; i < 8; i++) h.data[i * 9] = 1;
    expect(() => ldlq(null as never, h)).toThrow(/E_VALUE: ldlq: W is not a tensor/);
    expect(() => ldlq(w, null as never)).toThrow(/E_VALUE: ldlq: H is not a tensor/);
    expect(() => ldlq(w, tensor('i32', [8, 8]) as never)).toThrow(/E_DTYPE: ldlq: H has dtype 'i32'/);
    expect(() => proxyLoss(w, tensor('f32', [2, 4]), h)).toThrow(/E_SHAPE: proxyLoss/);
  });

  it('proxyLoss refuses what gave a perfect 0: a NaN in W, Ŵ or H, an indefinite H; an H of another size is named', () => {
    const w = tensor('f32', [2, 4], Float32Array.of(1, 2, 3, 4, -1, 0.5, 2, 1));
    const wHat = tensor('f32', [2, 4], Float32Array.of(1, 2, 3, 4.1, -1, 0.5, 2, 1));
    const eye = (n: number, v = 1) => {
      const h = tensor('f64', [n, n]);
      for (let i = 0; i < n; i++) h.data[i * (n + 1)] = v;
      return h;
    };
    // H = I: 0.1² / (1 + 4 + 9 + 16 + 1 + 0.25 + 4 + 1) = 0.01 / 36.25, by hand
    expect(proxyLoss(w, wHat, eye(4))).toBeCloseTo(0.01 / 36.25, 7);
    expect(proxyLoss(tensor('f32', [2, 4]), tensor('f32', [2, 4]), eye(4))).toBe(0); // W = 0 = Ŵ: tr(WHWᵀ) = 0
    const nan = (t: Tensor, i: number) => {
      const c = { ...t, data: t.data.slice() } as Tensor;
      c.data[i] = NaN;
      return c as never;
    };
    expect(() => proxyLoss(nan(w, 1), wHat, eye(4))).toThrow(
      /^E_VALUE: proxyLoss: W has a non-finite value \(NaN\)/,
    );
    expect(() => proxyLoss(w, nan(wHat, 1), eye(4))).toThrow(/^E_VALUE: proxyLoss: Ŵ has a non-finite/);
    expect(() => proxyLoss(w, wHat, nan(eye(4), 5))).toThrow(/^E_VALUE: proxyLoss: H has a non-finite/);
    expect(() => proxyLoss(w, wHat, eye(4, -1))).toThrow(/^E_VALUE: proxyLoss: tr\(WHWᵀ\) = -36\.25 < 0/);
    expect(() => proxyLoss(w, wHat, tensor('f64', [4, 5]))).toThrow(
      /^E_SHAPE: proxyLoss: .*H \[4, 5\] must be 4×4/,
    );
    expect(() => proxyLoss(w, wHat, null as never)).toThrow(/^E_VALUE: proxyLoss: H is not a tensor/);
  });

  it('reads an H given as a reversed view (negative strides) through its strides, and checks all of it', () => {
    const n = 16;
    const w = gaussian(4, n, 2);
    const h = gramHessian(40, n, 3);
    // element (i, j) of the view is rev[n² − 1 − i·n − j] = h[i][j]: the same matrix, another layout
    const reversed = (t: Tensor<'f64'>): Tensor<'f64'> => ({
      ...t,
      data: Float64Array.from(t.data).reverse(),
      strides: [-n, -1],
      offset: n * n - 1,
    });
    const plain = ldlq(w, h);
    const viewed = ldlq(w, reversed(h)); // was E_SHAPE naming an internal copy ("blockLDL: h view ...")
    expect(Array.from(viewed.wHat.data)).toEqual(Array.from(plain.wHat.data));
    // with a Cholesky factor given, H is only checked: a non-symmetric reversed H passed unchecked
    const c = cholesky(h);
    const bad = tensor('f64', [n, n], Float64Array.from(h.data));
    bad.data[15 * n + 14]! += 1;
    expect(() => prepareLdlq(bad, { cholesky: c, damping: 0 })).toThrow(
      /E_VALUE: .*not symmetric at \(15, 14\)/,
    );
    expect(() => prepareLdlq(reversed(bad), { cholesky: c, damping: 0 })).toThrow(
      /E_VALUE: .*not symmetric at \(15, 14\)/,
    );
  });

  it("checks W and H with linalg's assertMatrix: a view outside its data or a tensor without strides is named", () => {
    const w = gaussian(4, 16, 1);
    const h = identity(16);
    // before, the W view was silently read as zeros past the end of its data, and the H view failed as "non-finite"
    expect(() => ldlq({ ...w, offset: 10 }, h)).toThrow(
      /^E_SHAPE: ldlq: W view \(shape \[4, 16\], strides \[16, 1\], offset 10\) reaches outside its data of length 64$/,
    );
    expect(() => ldlq(w, { ...h, strides: [17, 1] })).toThrow(
      /^E_SHAPE: ldlq: H view .* reaches outside its data/,
    );
    expect(() => ldlq({ ...w, strides: undefined } as never, h)).toThrow(
      /^E_VALUE: ldlq: W is not a tensor$/,
    );
    expect(() => ldlq(tensor('f32', [2, 2, 16]), h)).toThrow(
      /^E_SHAPE: ldlq: W must be 2-D, got shape \[2, 2, 16\]$/,
    );
    expect(() => ldlq(w, tensor('f64', [16]))).toThrow(/^E_SHAPE: ldlq: H must be 2-D, got shape \[16\]$/);
  });
});
