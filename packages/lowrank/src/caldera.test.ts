import { describe, expect, it } from 'vitest';
import { isCalderaError, Rng, tensor, type Tensor } from '@caldera/core';
import { cholesky, randomizedSvd } from '@caldera/linalg';
import { caldera, type CalderaOptions } from './caldera.js';
import {
  applyDecomposition,
  type Decomposition,
  fromCheckpointTensors,
  paperBitsFromMeta,
  reconstruct,
  toCheckpointTensors,
  withTrainableFactors,
} from './decomposition.js';
import { rotateWeight, unrotateWeight, randomSigns, paddedSize, rotateHessian } from './rotate.js';
import { latticeDecode, optScale, rounderFor } from './codec.js';
import { ldlq, type CodePlane } from '@caldera/quant';
import { validateLayer } from './test-util.js';

/** W with heavy-tailed singular values plus a few outlier columns, like real projection weights. */
function structuredWeight(m: number, n: number, seed: number): Tensor<'f32'> {
  const rng = new Rng(seed);
  const w = new Float32Array(m * n);
  for (let t = 0; t < 24; t++) {
    const u = rng.fillNormal(new Float32Array(m));
    const v = rng.fillNormal(new Float32Array(n));
    const s = 3 / (1 + t) ** 1.2;
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++) w[i * n + j]! += (s * u[i]! * v[j]!) / Math.sqrt(n);
  }
  for (let i = 0; i < w.length; i++) w[i]! += 0.05 * rng.normal();
  for (const j of [3, 17]) for (let i = 0; i < m; i++) w[i * n + j]! *= 6; // outlier input channels
  return tensor('f32', [m, n], w);
}

/** H = XᵀX/N (normalised, 1 % damping) from correlated activations with unequal channel scales. */
function correlatedHessian(n: number, seed: number): Tensor<'f64'> {
  const rng = new Rng(seed);
  const N = 3 * n;
  const f = 8;
  const mix = rng.fillNormal(new Float64Array(f * n));
  const x = new Float64Array(N * n);
  for (let r = 0; r < N; r++) {
    const z = Array.from({ length: f }, () => rng.normal());
    for (let j = 0; j < n; j++) {
      let v = 0.2 * rng.normal();
      for (let q = 0; q < f; q++) v += z[q]! * mix[q * n + j]!;
      x[r * n + j] = v * (1 + (j % 7));
    }
  }
  const h = new Float64Array(n * n);
  for (let r = 0; r < N; r++)
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) h[i * n + j]! += (x[r * n + i]! * x[r * n + j]!) / N;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += h[i * n + i]! / n;
  for (let i = 0; i < n * n; i++) h[i]! /= mean;
  for (let i = 0; i < n; i++) h[i * n + i]! += 0.01;
  return tensor('f64', [n, n], h);
}

function identity(n: number): Tensor<'f64'> {
  const h = new Float64Array(n * n);
  for (let i = 0; i < n; i++) h[i * n + i] = 1;
  return tensor('f64', [n, n], h);
}

const m = 256;
const n = 256;
const W = structuredWeight(m, n, 1);
const H = correlatedHessian(n, 2);
const fast: CalderaOptions = { outerIters: 3, lplrIters: 3 };

/**
 * The Q step of a rank-0 `caldera` done by hand, as the decomposition did it before it prepared LDLQ's factor itself:
 * the same signs, rotations and scales, then `ldlq` against the rotated H, which factors (and, if singular, repairs)
 * it on its own.
 */
function ldlqOfRotated(w: Tensor<'f32'>, h: Tensor<'f64'>, seed: number, tuneIters: number): CodePlane {
  const [m, n] = w.shape as [number, number];
  const mp = paddedSize(m, true);
  const np = paddedSize(n, true);
  const rng = new Rng(seed);
  const su = randomSigns(np, rng);
  const sv = randomSigns(mp, rng);
  const rms = (x: Float32Array) => {
    let s = 0;
    for (let i = 0; i < x.length; i++) s += x[i]! * x[i]!;
    return Math.sqrt(s / x.length);
  };
  const wr = rotateWeight(w, mp, np, su, sv);
  const invG = 1 / rms(w.data);
  for (let i = 0; i < wr.length; i++) wr[i]! *= invG;
  const inScale = optScale(2) / rms(wr);
  const x = new Float32Array(wr.length);
  for (let i = 0; i < x.length; i++) x[i] = wr[i]! * inScale;
  const hr = tensor('f64', [np, np], rotateHessian(h, n, np, su));
  const r = ldlq(tensor('f32', [mp, np], x), hr, {
    quantizer: rounderFor(2),
    damping: 0,
    tuneIters,
    proxyLoss: false,
  });
  return r.codes[0]!;
}

describe('rotation', () => {
  it('rotateHessian into a given array (garbage in it, padded or not) or into H itself gives the fresh result', () => {
    const rng = new Rng(4);
    for (const [n, np] of [
      [40, 40],
      [44, 48],
    ]) {
      const a = rng.fillNormal(new Float64Array(n * n));
      const h = tensor('f64', [n, n], new Float64Array(n * n));
      for (let i = 0; i < n; i++)
        for (let j = 0; j < n; j++) h.data[i * n + j] = a[i * n + j]! + a[j * n + i]!;
      for (const su of [randomSigns(np, rng), null]) {
        const want = Array.from(rotateHessian(h, n, np, su, 0.5));
        const into = new Float64Array(np * np).fill(Number.NaN);
        expect(rotateHessian(h, n, np, su, 0.5, { into })).toBe(into);
        expect(Array.from(into)).toEqual(want);
        expect(Array.from(rotateHessian(null, n, np, su, 1, { into }))).toEqual(
          Array.from(rotateHessian(null, n, np, su)),
        );
        if (np === n) {
          const own = tensor('f64', [n, n], Float64Array.from(h.data));
          expect(rotateHessian(own, n, np, su, 0.5, { into: own.data })).toBe(own.data);
          expect(Array.from(own.data)).toEqual(want);
        }
      }
    }
  });

  it('rotateWeight is undone by unrotateWeight to f32 round-off (with padding)', () => {
    const [mp, np] = [paddedSize(100, true), paddedSize(90, true)];
    const rng = new Rng(3);
    const w = tensor('f32', [100, 90], rng.fillNormal(new Float32Array(9000)));
    const su = randomSigns(np, rng);
    const sv = randomSigns(mp, rng);
    const back = unrotateWeight(rotateWeight(w, mp, np, su, sv), mp, np, 100, 90, su, sv);
    // two orthogonal transforms of length ≤ 128 in f32: error ≲ log2(n)·eps32·|w| ⇒ 1e-5 is generous
    for (let i = 0; i < 9000; i++) expect(Math.abs(back[i]! - w.data[i]!)).toBeLessThan(1e-5);
  });

  it('refuses sizes and signs that do not fit (rows were written over each other, an H too small gave NaN)', () => {
    const rng = new Rng(4);
    const w = tensor('f32', [4, 16], rng.fillNormal(new Float32Array(64)));
    const s8 = randomSigns(8, rng);
    const s16 = randomSigns(16, rng);
    expect(() => rotateWeight(w, 8, 8, null, null)).toThrow(
      /^E_SHAPE: rotateWeight: np must be an integer ≥ 16, got 8$/,
    );
    expect(() => rotateWeight(w, 8, 16, s8, s8)).toThrow(
      /^E_SHAPE: rotateWeight: su must be a Float32Array of 16/,
    );
    expect(() => rotateWeight({ ...w, offset: 1 }, 8, 16, s16, s8)).toThrow(/^E_SHAPE: rotateWeight: w view/);
    expect(rotateWeight(w, 8, 16, s16, s8)).toHaveLength(128);
    const h8 = tensor('f64', [8, 8]);
    expect(() => rotateHessian(h8, 16, 16, s16)).toThrow(
      /^E_SHAPE: rotateHessian: h is \[8, 8\], expected \[16, 16\]$/,
    );
    // `into`: its own size only, and of H's memory only H's own contiguous array (np = n)
    const h16 = tensor('f64', [16, 16], new Float64Array(256));
    expect(() => rotateHessian(h16, 16, 16, s16, 1, { into: new Float64Array(255) })).toThrow(
      /^E_SHAPE: rotateHessian: into must have 16×16 entries, got 255$/,
    );
    expect(() => rotateHessian(h16, 16, 16, s16, 1, { into: new Float32Array(256) as never })).toThrow(
      /^E_DTYPE: rotateHessian: into must be a Float64Array, got Float32Array$/,
    );
    const big = new Float64Array(512);
    const hView = tensor('f64', [16, 16], big.subarray(0, 256));
    expect(() => rotateHessian(hView, 16, 16, s16, 1, { into: big.subarray(256) })).toThrow(
      /^E_VALUE: rotateHessian: into shares h's memory/,
    );
    expect(() => rotateHessian(h8, 8, 16, s16, 1, { into: new Float64Array(256) })).not.toThrow();
    expect(() => rotateHessian(null, 16, 8, null)).toThrow(
      /^E_SHAPE: rotateHessian: np must be an integer ≥ 16/,
    );
    expect(() => unrotateWeight(new Float32Array(100), 8, 16, 4, 16, null, null)).toThrow(
      /^E_SHAPE: unrotateWeight: wr has 100 entries, expected 8×16$/,
    );
  });
});

describe('caldera', () => {
  it('Q codes equal LDLQ of the rotated problem: H factored once from its Cholesky factor, or repaired by LDLQ', () => {
    const w = structuredWeight(64, 128, 21);
    // positive definite H (the factor comes from caldera's Cholesky), with and without a tuning pass (the kept H)
    const h = correlatedHessian(128, 22);
    for (const tuneIters of [0, 1]) {
      const d = caldera(w, h, { rank: 0, seed: 5, tuneIters });
      expect(Array.from(d.q!.planes[0]!)).toEqual(Array.from(ldlqOfRotated(w, h, 5, tuneIters)));
    }
    // rank 120 of 128 (X with 120 rows): the Cholesky factorisation needs a jitter, so LDLQ factors and repairs H
    // itself (with caldera's jittered factor instead, about a quarter of these codes differ)
    const rng = new Rng(23);
    const xs = rng.fillNormal(new Float64Array(120 * 128));
    const hs = tensor('f64', [128, 128]);
    for (let r = 0; r < 120; r++)
      for (let i = 0; i < 128; i++)
        for (let j = 0; j < 128; j++) hs.data[i * 128 + j]! += xs[r * 128 + i]! * xs[r * 128 + j]!;
    const ds = caldera(w, hs, { rank: 0, seed: 5 });
    expect(Array.from(ds.q!.planes[0]!)).toEqual(Array.from(ldlqOfRotated(w, hs, 5, 0)));
  });

  it('with H = I and 16-bit factors, low-rank only equals the truncated-SVD error (Eckart–Young)', () => {
    const k = 16;
    const d = caldera(W, identity(n), {
      rank: k,
      qBits: 0,
      lBits: 16,
      rBits: 16,
      hadamard: false,
      svdPowerIters: 6,
    });
    const full = randomizedSvd(W, Math.min(m, n), { oversample: 0, powerIters: 0 });
    let tail = 0;
    let all = 0;
    full.s.forEach((s, i) => {
      all += s * s;
      if (i >= k) tail += s * s;
    });
    // f16 storage of L, R adds ~1e-3 relative perturbation to the kept part
    expect(d.error).toBeGreaterThan(Math.sqrt(tail / all) * 0.999);
    expect(d.error).toBeLessThan(Math.sqrt(tail / all) * 1.01 + 1e-3);
  });

  it('low-rank only of a W of rank 4 (60 of its 64 rows zero): the randomized SVD finds it as the exact one does', () => {
    // the default randomized SVD gave error 3.59 (worse than Ŵ = 0) where the exact one gives 3e-4 (f16 factors):
    // its sketch orthonormalised rounding error into Q (linalg's orthonormalisation, fixed)
    const w = new Float32Array(64 * 64);
    w.set(new Rng(1).fillNormal(new Float32Array(4 * 64)));
    const opts: CalderaOptions = { rank: 8, qBits: 0, lBits: 16, rBits: 16 };
    for (const hadamard of [false, true]) {
      const rand = caldera(tensor('f32', [64, 64], w), null, { ...opts, hadamard });
      const exact = caldera(tensor('f32', [64, 64], w), null, { ...opts, hadamard, svd: 'exact' });
      // both at f16 storage's rounding of the rank-4 matrix (~1e-3 relative at most)
      expect(exact.error).toBeLessThan(1e-3);
      expect(rand.error).toBeLessThan(1e-3);
    }
  });

  it('data-aware LPLR beats the data-unaware one on the activation-aware error', () => {
    const aware = caldera(W, H, { rank: 16, qBits: 0, lBits: 16, rBits: 16, hadamard: false });
    const plain = caldera(W, H, {
      rank: 16,
      qBits: 0,
      lBits: 16,
      rBits: 16,
      hadamard: false,
      dataAwareLR: false,
    });
    expect(aware.error).toBeLessThan(plain.error);
  });

  const table: { k: number; error: number; bits: number }[] = [];
  for (const k of [0, 16, 64, 128]) {
    const d = caldera(W, H, { ...fast, rank: k });
    table.push({ k, error: d.error, bits: d.paperBitsPerWeight });
  }
  it(`error is non-increasing in k and CALDERA(k=64) beats LDLQ-only: ${table.map((r) => `k=${r.k}: ${r.error.toFixed(4)} @ ${r.bits.toFixed(2)}b`).join(', ')}`, () => {
    console.table(table);
    for (let i = 1; i < table.length; i++)
      expect(table[i]!.error).toBeLessThanOrEqual(table[i - 1]!.error * 1.0001);
    expect(table[2]!.error).toBeLessThan(table[0]!.error);
  });

  it('4-bit factors are balanced per component: the error at half and at full rank stays low (128×128)', () => {
    // Measured (default options, seeds 1 and 2): k = 64 gives 0.0174 and 0.0123, k = 128 gives 0.1771 and 0.0422;
    // with each component's scale left to the fit (L's columns of unit norm), 0.0233 and 0.0243, 0.2048 and 0.2198.
    // The bounds sit between the two (the error still rises towards full rank: the README's known limit). The change of
    // 2026-12-07 (products with H through M, R₀ = U_kᵀ·A: round-off-sized changes of the fit) moved these four from
    // 0.0147, 0.0111, 0.1298, 0.0394, all upwards (+7 to +36 %); on 40 problems of this kind (seeds 1–20, k = 32 and
    // 64) it moved single errors by up to about 20 % either way, 23 of 40 down, their geometric mean up by 0.5 %. So
    // these bounds tell balanced from unbalanced, not one version of the fit from another.
    for (const seed of [1, 2]) {
      const W = structuredWeight(128, 128, seed);
      const H = correlatedHessian(128, seed + 10);
      expect(caldera(W, H, { rank: 64 }).error).toBeLessThan(0.02);
      expect(caldera(W, H, { rank: 128 }).error).toBeLessThan(0.19);
    }
  });

  it('LDLQ-based Q beats round-to-nearest Q at rank 0', () => {
    const rtn = caldera(W, H, { rank: 0, dataAwareQ: false });
    const ldlqOnly = caldera(W, H, { rank: 0 });
    expect(ldlqOnly.error).toBeLessThan(rtn.error);
  });

  const d = caldera(W, H, { ...fast, rank: 32, seed: 5 });
  it('apply(x) equals x·reconstruct()ᵀ, and the reported error matches the dense reconstruction', () => {
    const rows = 3;
    const x = new Rng(9).fillNormal(new Float32Array(rows * n));
    const y = applyDecomposition(d, x, rows);
    const wh = reconstruct(d).data;
    for (let r = 0; r < rows; r++)
      for (let i = 0; i < m; i++) {
        let s = 0;
        for (let j = 0; j < n; j++) s += x[r * n + j]! * wh[i * n + j]!;
        // two f32 evaluation orders of a length-192 dot product (plus rotations): 1e-3 relative to ‖x‖·‖w_i‖
        expect(Math.abs(y[r * m + i]! - s)).toBeLessThan(2e-3 * (1 + Math.abs(s)));
      }
    let num = 0;
    let den = 0;
    for (let i = 0; i < m; i++)
      for (let a = 0; a < n; a++)
        for (let b = 0; b < n; b++) {
          const hab = H.data[a * n + b]!;
          num += (wh[i * n + a]! - W.data[i * n + a]!) * hab * (wh[i * n + b]! - W.data[i * n + b]!);
          den += W.data[i * n + a]! * hab * W.data[i * n + b]!;
        }
    expect(Math.sqrt(num / den)).toBeCloseTo(d.error, 3);
  });

  it('is deterministic: same seed, byte-identical decomposition', () => {
    const again = caldera(W, H, { ...fast, rank: 32, seed: 5 });
    expect(again.q!.planes.map((p) => Array.from(p))).toEqual(d.q!.planes.map((p) => Array.from(p)));
    expect(JSON.stringify(toCheckpointTensors('x', again).meta)).toBe(
      JSON.stringify(toCheckpointTensors('x', d).meta),
    );
    const a = toCheckpointTensors('x', again).tensors;
    const b = toCheckpointTensors('x', d).tensors;
    for (const key of Object.keys(b)) expect(Array.from(a[key]!.data)).toEqual(Array.from(b[key]!.data));
  });

  it('round-trips through the checkpoint tensors', () => {
    const { tensors, meta } = toCheckpointTensors('model.layers.0.mlp.up_proj', d);
    const back = fromCheckpointTensors('model.layers.0.mlp.up_proj', (name) => tensors[name], meta);
    const a = reconstruct(d).data;
    const b = reconstruct(back).data;
    // sign vectors are exact in f16; the folded global scale changes rounding of Q_scale/L_scale only (f32)
    for (let i = 0; i < a.length; i++)
      expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(1e-5 * (1 + Math.abs(a[i]!)));
    expect(() => fromCheckpointTensors('other', (name) => tensors[name], meta)).toThrow(/E_MISSING/);
  });

  it('reads checkpoint tensors given as views (an offset into a larger buffer, transposed strides) as their values', () => {
    const { tensors, meta } = toCheckpointTensors('blk', d);
    // every tensor copied 3 elements into a larger buffer of junk, and every 2-D one also as a transposed view of
    // its transpose: the same values, other layouts (both gave another Ŵ, as large as Ŵ itself, without an error)
    const offset = (t: Tensor): Tensor => {
      const n = t.data.length;
      const data = new (t.data.constructor as new (n: number) => Tensor['data'])(n + 5).fill(7);
      data.set(t.data as never, 3);
      return { ...t, data, offset: 3 };
    };
    const transposedView = (t: Tensor): Tensor => {
      if (t.shape.length !== 2) return offset(t);
      const [r, c] = t.shape as [number, number];
      const data = new (t.data.constructor as new (n: number) => Tensor['data'])(r * c);
      for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) data[j * r + i] = t.data[i * c + j]!;
      return { ...t, data, strides: [1, r], offset: 0 };
    };
    const a = reconstruct(fromCheckpointTensors('blk', (name) => tensors[name], meta)).data;
    for (const view of [offset, transposedView]) {
      const b = reconstruct(
        fromCheckpointTensors('blk', (name) => tensors[name] && view(tensors[name]), meta),
      ).data;
      expect(b).toEqual(a); // the same values: the same Ŵ, bit for bit
    }
    // a view reaching outside its data is E_SHAPE naming the tensor
    const q = Object.keys(tensors).find((k) => k.endsWith('.Q'))!;
    expect(() =>
      fromCheckpointTensors(
        'blk',
        (name) => (name === q ? { ...tensors[q]!, offset: 1 } : tensors[name]),
        meta,
      ),
    ).toThrow(new RegExp(`E_SHAPE: contiguous: tensor '${q.replace(/\./g, '\\.')}' .* outside its data`));
  });

  it('with f16 factors, the checkpoint holds the Ŵ the decomposition measured (g a power of two, folded exactly)', () => {
    for (const options of [
      { rank: 16, lBits: 16 as const, rBits: 16 as const },
      { rank: 16, qBits: 0 as const, lBits: 16 as const, rBits: 16 as const, hadamard: false },
      { rank: 8, lBits: 16 as const },
    ]) {
      const dd = caldera(W, H, { ...fast, ...options, seed: 3 });
      expect(Number.isInteger(Math.log2(dd.scale))).toBe(true);
      expect(dd.scale / Math.sqrt(W.data.reduce((s, v) => s + v * v, 0) / W.data.length)).toBeGreaterThan(
        0.7,
      );
      const { tensors, meta } = toCheckpointTensors('blk', dd);
      const back = fromCheckpointTensors('blk', (name) => tensors[name], meta);
      const a = reconstruct(dd).data;
      const b = reconstruct(back).data;
      let worst = 0;
      let largest = 0;
      for (let i = 0; i < a.length; i++) {
        worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
        largest = Math.max(largest, Math.abs(a[i]!));
      }
      // what is left: Q's scale, held in f64 and stored in f32 (relative 2^-24 ≈ 6e-8 of the Q part), and f16
      // subnormals where g shrinks a tiny factor value (3e-8 absolute at most); measured ≤ 2.4e-7 of the largest
      // entry; with g = RMS(W), folding it into the f16 factors rounded them again and moved Ŵ by 2.2e-4 of it
      expect(worst).toBeLessThan(1e-6 * largest);
    }
    // a tiny layer (RMS 1e-6): g whole in the f16 L made its values subnormal (Ŵ moved by 10 %). Folded into a
    // lattice R's f32 scale it is exact (measured 1.8e-7 of the largest entry, the rounding above); split between two
    // f16 factors (2^-10 each) their small entries still reach f16's subnormals: measured 1.1e-4 (at RMS 1e-4, 1.9e-6;
    // 8.3e-4 before), the limit of f16's exponent range for such a layer
    const rms = Math.sqrt(W.data.reduce((s, v) => s + v * v, 0) / W.data.length);
    const tiny = tensor(
      'f32',
      W.shape,
      W.data.map((v) => (v * 1e-6) / rms),
    );
    for (const options of [
      { rank: 16, qBits: 0 as const, lBits: 16 as const, rBits: 16 as const },
      { rank: 16, lBits: 16 as const, rBits: 4 as const },
    ]) {
      const dd = caldera(tiny, H, { ...fast, ...options, seed: 3 });
      const { tensors, meta } = toCheckpointTensors('blk', dd);
      const a = reconstruct(dd).data;
      const b = reconstruct(fromCheckpointTensors('blk', (name) => tensors[name], meta)).data;
      let worst = 0;
      let largest = 0;
      for (let i = 0; i < a.length; i++) {
        worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
        largest = Math.max(largest, Math.abs(a[i]!));
      }
      expect(worst).toBeLessThan((options.rBits === 16 ? 1e-3 : 1e-6) * largest);
    }
  });

  it('a low-rank-only layer has no Q: no Q tensors, codec none, its bits count L and R alone, Ŵ = L̂·R̂', () => {
    for (const options of [
      { rank: 12, qBits: 0 as const, lBits: 16 as const, rBits: 16 as const },
      { rank: 12, qBits: 0 as const, lBits: 4 as const, rBits: 4 as const },
    ]) {
      const dd = caldera(W, H, { ...fast, ...options, seed: 4 });
      expect(dd.q).toBeNull();
      const { tensors, meta } = toCheckpointTensors('blk', dd);
      expect(meta.codecs.Q).toBe('none');
      expect(Object.keys(tensors).filter((name) => name.startsWith('blk.caldera.Q'))).toEqual([]);
      // stored bits: exactly the bytes of the tensors written (before, an all-zero Q plane of 2 bits per weight too)
      const bytes = Object.values(tensors).reduce((s, t) => s + t.data.byteLength, 0);
      expect(dd.bitsPerWeight * m * n).toBeCloseTo(8 * bytes, 6);
      const lr = options.lBits;
      expect(meta.paperBitsPerWeight).toBeCloseTo((12 * lr * (m + n)) / (m * n), 12);
      expect(paperBitsFromMeta({ ...meta })).toBeCloseTo(meta.paperBitsPerWeight!, 12);
      const back = fromCheckpointTensors('blk', (name) => tensors[name], meta);
      expect(back.q).toBeNull();
      // independent reference: Ŵ from the stored factors alone, L̂·R̂ in the rotated domain, rotated back by hand
      const [mp, np] = back.padded;
      const lt = back.l.kind === 'dense' ? back.l.values : latticeDecode(back.l.codes); // k × mp
      const rv = back.r.kind === 'dense' ? back.r.values : latticeDecode(back.r.codes); // k × np
      const prod = new Float32Array(mp * np);
      for (let t = 0; t < back.rank; t++)
        for (let i = 0; i < mp; i++)
          for (let j = 0; j < np; j++) prod[i * np + j]! += lt[t * mp + i]! * rv[t * np + j]!;
      const want = unrotateWeight(prod, mp, np, m, n, back.su, back.sv);
      const got = reconstruct(back).data;
      const a = reconstruct(dd).data;
      let worst = 0;
      let largest = 0;
      for (let i = 0; i < got.length; i++) {
        worst = Math.max(worst, Math.abs(got[i]! - want[i]!), Math.abs(got[i]! - a[i]!));
        largest = Math.max(largest, Math.abs(want[i]!));
      }
      // f32 sums in other orders, and the scale g folded into the stored factors (f32 or exact): ≤ 1e-5 relative
      expect(worst).toBeLessThan(1e-5 * largest);
      // no Q and no factors left (a hand-made decomposition): refused, not written as a layer no reader accepts
      const empty = { ...dd, rank: 0, ft: null };
      expect(() => toCheckpointTensors('blk', empty)).toThrow(
        "E_VALUE: toCheckpointTensors: 'blk': no Q and no low-rank factors (rank 0): the layer would be all zeros",
      );
      // applyDecomposition skips Q: y = x·Ŵᵀ against the dense Ŵ (f32 dot products of n = 256 terms)
      const x = new Rng(9).fillNormal(new Float32Array(3 * n));
      const y = applyDecomposition(back, x, 3);
      for (let r = 0; r < 3; r++)
        for (let i = 0; i < m; i++) {
          let s = 0;
          for (let j = 0; j < n; j++) s += x[r * n + j]! * got[i * n + j]!;
          expect(Math.abs(y[r * m + i]! - s)).toBeLessThan(1e-4 * (1 + Math.abs(s)));
        }
    }
  });

  it('rejects bad input with CalderaError', () => {
    expect(() => caldera(W, identity(10))).toThrow(/E_SHAPE/);
    expect(() => caldera(W, H, { rank: 1000 })).toThrow(/E_VALUE/);
  });
});

/** ‖(Ŵ − W)H^½‖_F / ‖W H^½‖_F in f64, straight from the definition. */
function activationAwareError(what: Float32Array, w: Tensor<'f32'>, h: Tensor<'f64'>): number {
  const [rows, cols] = w.shape as [number, number];
  let num = 0;
  let den = 0;
  for (let i = 0; i < rows; i++)
    for (let a = 0; a < cols; a++)
      for (let b = 0; b < cols; b++) {
        const hab = h.data[a * cols + b]!;
        num +=
          (what[i * cols + a]! - w.data[i * cols + a]!) * hab * (what[i * cols + b]! - w.data[i * cols + b]!);
        den += w.data[i * cols + a]! * hab * w.data[i * cols + b]!;
      }
  return Math.sqrt(num / den);
}

describe("caldera's per-step errors", () => {
  it('each step reports the error of the estimate it made: against an f64 recomputation from the reconstruction', () => {
    // 64 × 128 needs no padding, so the error is measured in the rotated domain, where it comes from Y = (W − Q)·M and
    // the rank-k L̂·(R̂·M) (not from a product of the estimate with M). A one-iteration run's first step is what a run
    // of that step alone makes (same seed, same rotation, same input), so each step's figure is checked against the
    // f64 error of a reconstruction: lr-first's LR step against qBits 0, q-first's Q step against rank 0, the second
    // step against the run's own reconstruction.
    const w = structuredWeight(64, 128, 11);
    const h = correlatedHessian(128, 12);
    const base: CalderaOptions = { rank: 8, outerIters: 1, lplrIters: 2 };
    const lrFirst = caldera(w, h, base);
    const lrOnly = caldera(w, h, { ...base, qBits: 0 });
    const qFirst = caldera(w, h, { ...base, updateOrder: 'q-first' });
    const qOnly = caldera(w, h, { ...base, rank: 0 });
    expect(lrFirst.padded).toEqual([64, 128]);
    const pairs: [number, Decomposition][] = [
      [lrFirst.errors.LR[0]!, lrOnly],
      [lrFirst.errors.Q[0]!, lrFirst],
      [qFirst.errors.Q[0]!, qOnly],
      [qFirst.errors.LR[0]!, qFirst],
    ];
    for (const [reported, d] of pairs) {
      // f32 products of length ≤ 128 (~1e-6 relative) in a difference ≤ 30 times smaller than its terms: 1e-4 is a
      // wide margin, while the figure of another estimate (no Q, a stale Y) is off by tens of percent
      const exact = activationAwareError(reconstruct(d).data, w, h);
      expect(Math.abs(reported - exact)).toBeLessThan(1e-4 * exact);
    }
    // the four estimates differ: a step that reported the previous step's figure would fail above
    expect(new Set(pairs.map(([e]) => e.toPrecision(3))).size).toBe(4);
  });

  it('the kept iterate reports its own error on every path: several iterations, q-first, the Hessian downdate', () => {
    // the downdate's products overwrite the array that holds Y = (W − Q)·M, which the Q step then makes anew
    const w = structuredWeight(64, 128, 13);
    const h = correlatedHessian(128, 14);
    for (const options of [
      { outerIters: 3 },
      { outerIters: 2, updateOrder: 'q-first' as const },
      { outerIters: 2, hessianDowndate: true },
      { outerIters: 2, dataAwareLR: false },
    ]) {
      const d = caldera(w, h, { rank: 8, lplrIters: 2, ...options });
      const exact = activationAwareError(reconstruct(d).data, w, h);
      // as above: 1e-4 relative is round-off's margin, another iterate's figure is off by percents
      expect(Math.abs(d.error - exact), JSON.stringify(options)).toBeLessThan(1e-4 * exact);
    }
  });
});

describe('caldera on an ill-conditioned H', () => {
  it('reports errors from LDLQ residuals as accurately as products: the diagonal of M spread past 1e-6, no jitter', () => {
    // XᵀX of 132 rows over 128 channels scaled from 1 down to 1e-6: positive definite (a plain Cholesky factors it,
    // so LDLQ's factor is derived from M and Y comes from LDLQ's residuals), M's diagonal spread over nearly seven
    // decades. The residuals' feedback sums run through L = M·chol(D)⁻¹, whose entries grow as the pivots spread; the
    // errors stayed within 2e-7 of the f64 recomputation in trials, 1e-4 is round-off's margin as above
    const n = 128;
    const N = 132;
    const rng = new Rng(21);
    const x = rng.fillNormal(new Float64Array(N * n));
    for (let r = 0; r < N; r++) for (let j = 0; j < n; j++) x[r * n + j]! *= 10 ** ((-6 * j) / n);
    const hd = new Float64Array(n * n);
    for (let r = 0; r < N; r++)
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) hd[i * n + j]! += x[r * n + i]! * x[r * n + j]!;
    const h = tensor('f64', [n, n], hd);
    const c = cholesky(h); // throws E_NOT_PD where a jitter would be needed
    let lo = Infinity;
    let hi = 0;
    for (let i = 0; i < n; i++)
      [lo, hi] = [Math.min(lo, c.data[i * n + i]!), Math.max(hi, c.data[i * n + i]!)];
    expect(lo / hi).toBeLessThan(1e-6);
    const w = structuredWeight(64, n, 22);
    for (const options of [
      { hadamard: false },
      { hadamard: true },
      { hadamard: false, updateOrder: 'q-first' as const },
    ]) {
      const d = caldera(w, h, { rank: 8, lplrIters: 2, outerIters: 3, ...options });
      const exact = activationAwareError(reconstruct(d).data, w, h);
      expect(Math.abs(d.error - exact), JSON.stringify(options)).toBeLessThan(1e-4 * exact);
    }
  });
});

describe('caldera on padded shapes', () => {
  it('reports the error of reconstruct() against W and H, not of the padded rotated matrices', () => {
    // 20 × 36 works at 24 × 40: the padded rows and columns are cropped away by reconstruct()
    const w = structuredWeight(20, 36, 4);
    const h = correlatedHessian(36, 5);
    for (const options of [{ rank: 4 }, { rank: 0 }, { rank: 4, qBits: 0 as const }]) {
      const d = caldera(w, h, { ...options, outerIters: 2, lplrIters: 2 });
      expect(d.padded).toEqual([24, 40]);
      // both sides come from the same f32 estimate; the f32 products and f64 sums differ by ~1e-6 relative, while
      // the padded-domain figure this replaces was 5–35 % off
      expect(d.error).toBeCloseTo(activationAwareError(reconstruct(d).data, w, h), 4);
    }
  });
});

describe("caldera does not depend on H's scale", () => {
  it('H and c·H give the same decomposition, bit for bit, from c = 1e-50 to 1e38 (it reported 0 or NaN, or threw)', () => {
    const w = structuredWeight(20, 36, 4); // padded to 24 × 40: the error is measured in the original domain
    const h = correlatedHessian(36, 5);
    for (const options of [{ rank: 0 }, { rank: 4 }, { rank: 4, damping: 0.01 }]) {
      const base = caldera(w, h, { ...options, outerIters: 2, lplrIters: 2 });
      expect(base.error).toBeGreaterThan(0);
      for (const c of [2 ** -166, 1e-50, 1e30, 1e38]) {
        const scaled = tensor(
          'f64',
          h.shape,
          Float64Array.from(h.data, (v) => v * c),
        );
        const d = caldera(w, scaled, { ...options, outerIters: 2, lplrIters: 2 });
        // a power of two scales exactly (the same bits); another c rounds H's entries by 2^-53 relative, which moves
        // the estimate by f32 round-off at most: its error agrees to 1e-6
        if (Number.isInteger(Math.log2(c))) expect(reconstruct(d).data).toEqual(reconstruct(base).data);
        // the caller's H is left as it was (it was scaled in place when given as a contiguous f64 tensor)
        expect(scaled.data).toEqual(Float64Array.from(h.data, (v) => v * c));
        expect(Math.abs(d.error - base.error), `rank ${options.rank}, c = ${c}`).toBeLessThan(
          1e-6 * base.error,
        );
      }
    }
  });
});

describe('caldera input checks', () => {
  const w = structuredWeight(32, 48, 6);
  const h = correlatedHessian(48, 7);
  const quick: CalderaOptions = { rank: 8, outerIters: 1, lplrIters: 1 };
  const rejects = (f: () => unknown, code: string, message: RegExp) => {
    try {
      f();
      expect.unreachable('no error');
    } catch (e) {
      expect(isCalderaError(e) && e.code).toBe(code);
      expect((e as Error).message).toMatch(message);
    }
  };

  it('rejects bit widths, iteration counts and seeds it cannot honour, naming the option', () => {
    // before: qBits 5 / lBits 8 ran silently (as 4-bit codes recorded under an unknown codec) and outerIters 0
    // failed with a TypeError after the work
    rejects(
      () => caldera(w, h, { ...quick, qBits: 5 as never }),
      'E_VALUE',
      /qBits 5 must be one of 0, 2, 3, 4/,
    );
    rejects(() => caldera(w, h, { ...quick, lBits: 8 as never }), 'E_VALUE', /lBits 8 must be one of/);
    rejects(() => caldera(w, h, { ...quick, rBits: 1 as never }), 'E_VALUE', /rBits 1 must be one of/);
    rejects(() => caldera(w, h, { ...quick, outerIters: 0 }), 'E_VALUE', /outerIters 0 must be a positive/);
    rejects(() => caldera(w, h, { ...quick, outerIters: NaN }), 'E_VALUE', /outerIters NaN/);
    rejects(
      () => caldera(w, h, { ...quick, lplrIters: -1 }),
      'E_VALUE',
      /lplrIters -1 must be a non-negative/,
    );
    rejects(() => caldera(w, h, { ...quick, tuneIters: 1.5 }), 'E_VALUE', /tuneIters 1.5/);
    rejects(() => caldera(w, h, { ...quick, seed: 0.5 }), 'E_VALUE', /seed 0.5 must be an integer/);
    rejects(() => caldera(w, h, { ...quick, rank: -1 }), 'E_VALUE', /rank -1 must be in \[0, 32\]/);
    rejects(() => caldera(tensor('f32', [0, 8]), null, { rank: 0 }), 'E_SHAPE', /W \[0, 8\] is empty/);
  });

  it('says the rank is the default one when the default 64 does not fit W, and is not clamped', () => {
    // before: "rank 64 must be in [0, 16]", naming a rank the caller never passed
    const small = structuredWeight(16, 32, 3);
    rejects(
      () => caldera(small, null),
      'E_VALUE',
      /^E_VALUE: caldera: the default rank 64 exceeds min\(m, n\) = 16 of W \[16, 32\]; pass options\.rank$/,
    );
    rejects(() => caldera(small, null, { rank: undefined }), 'E_VALUE', /the default rank 64/);
    // a rank the caller passed is named as theirs
    rejects(
      () => caldera(small, null, { rank: 64 }),
      'E_VALUE',
      /^E_VALUE: caldera: rank 64 must be in \[0, 16\]$/,
    );
  });

  it('rejects a non-finite, non-symmetric, negative-diagonal or zero H up front, whatever the options', () => {
    const edit = (f: (d: Float64Array) => void) => {
      const d = Float64Array.from(h.data);
      f(d);
      return tensor('f64', [48, 48], d);
    };
    // qBits 0 never runs LDLQ, whose own symmetry check used to be the only one (after the first LR step)
    const lrOnly: CalderaOptions = { ...quick, qBits: 0 };
    const nan = edit((d) => (d[3 * 48 + 5] = NaN));
    rejects(() => caldera(w, nan, lrOnly), 'E_VALUE', /caldera: H has a non-finite value at \(3, 5\)/);
    const asym = edit((d) => (d[2 * 48 + 1]! += 0.5));
    rejects(() => caldera(w, asym, lrOnly), 'E_VALUE', /caldera: H is not symmetric at \(2, 1\)/);
    const neg = edit((d) => (d[0] = -1));
    rejects(() => caldera(w, neg, quick), 'E_VALUE', /negative diagonal entry -1 at \(0, 0\)/);
    rejects(() => caldera(w, tensor('f64', [48, 48]), quick), 'E_VALUE', /all-zero diagonal/);
  });

  it('rejects an indefinite H (E_NOT_PD): its fit and error would be no norm; a singular PSD H, undamped, is taken', () => {
    // tridiagonal, 1 on the diagonal and 0.9 beside it: smallest eigenvalue 1 + 1.8·cos(48π/49) ≈ −0.8
    const tri = tensor(
      'f64',
      [48, 48],
      Array.from({ length: 48 * 48 }, (_, i) => {
        const [r, c] = [Math.floor(i / 48), i % 48];
        return r === c ? 1 : Math.abs(r - c) === 1 ? 0.9 : 0;
      }),
    );
    for (const options of [quick, { ...quick, qBits: 0 as const }, { ...quick, rank: 0 }])
      rejects(
        () => caldera(w, tri, options),
        'E_NOT_PD',
        /caldera: H is not positive semidefinite: .*× its mean diagonal/,
      );
    // XᵀX of 20 rows for 48 inputs: rank 20, singular but PSD
    const x = new Rng(8).fillNormal(new Float64Array(20 * 48));
    const gram = new Float64Array(48 * 48);
    for (let a = 0; a < 48; a++)
      for (let b = 0; b < 48; b++)
        for (let r = 0; r < 20; r++) gram[a * 48 + b]! += x[r * 48 + a]! * x[r * 48 + b]!;
    expect(caldera(w, tensor('f64', [48, 48], gram), { ...quick, damping: 0 }).error).toBeLessThan(1);
  });

  it('rejects a W or H that is not a tensor, and options that are not an object, as E_VALUE; null options are none', () => {
    // before: {} for H or W, or null options, failed with a TypeError from deep inside
    rejects(
      () => caldera(w, {} as never, quick),
      'E_VALUE',
      /^E_VALUE: caldera: H must be a tensor or null \(an object with dtype, shape, strides, offset and data\), got an object$/,
    );
    // shape and data without strides and offset: a TypeError in the contiguity check
    for (const like of [
      { shape: [16, 16], data: new Float32Array(256) },
      { dtype: 'f32', shape: [16, 16], data: new Float32Array(256) },
    ])
      rejects(
        () => caldera(like as never, null, quick),
        'E_VALUE',
        /^E_VALUE: caldera: W must be a tensor \(an object/,
      );
    rejects(
      () => caldera(w, [1, 2] as never, quick),
      'E_VALUE',
      /caldera: H must be a tensor or null .*an array/,
    );
    rejects(
      () => caldera({} as never, h, quick),
      'E_VALUE',
      /^E_VALUE: caldera: W must be a tensor \(an object/,
    );
    rejects(
      () => caldera(w, h, 5 as never),
      'E_VALUE',
      /^E_VALUE: caldera: options must be an object, got a number$/,
    );
    // caldera(W, H, signal): the signal would abort nothing
    rejects(
      () => caldera(w, h, AbortSignal.abort() as never),
      'E_VALUE',
      /^E_VALUE: caldera: options must be an object such as \{ signal \}, got an AbortSignal$/,
    );
    // null options are the defaults: on an 8×8 W, the default rank's own error (not a TypeError)
    rejects(() => caldera(structuredWeight(8, 8, 1), null, null as never), 'E_VALUE', /the default rank 64/);
  });

  it('checks onProgress and the boolean options before the first sub-step, and keeps booleans boolean', () => {
    // before: onProgress 5 threw a TypeError after the first LR step had run; hadamard 'no' ran as true and was
    // recorded as 'no', which parseCalderaMeta then refused in the checkpoint
    let ran = false;
    const signal = {
      get aborted() {
        ran = true;
        return false;
      },
    } as AbortSignal;
    rejects(
      () => caldera(w, h, { ...quick, signal, onProgress: 5 as never }),
      'E_VALUE',
      /^E_VALUE: caldera: options\.onProgress must be a function, got a number$/,
    );
    expect(ran).toBe(false);
    for (const key of ['hadamard', 'dataAwareQ', 'dataAwareLR', 'hessianDowndate'] as const) {
      rejects(
        () => caldera(w, h, { ...quick, [key]: 'no' as never }),
        'E_VALUE',
        new RegExp(`^E_VALUE: caldera: ${key} 'no' must be true or false$`),
      );
      rejects(
        () => caldera(w, h, { ...quick, [key]: 1 as never }),
        'E_VALUE',
        new RegExp(`${key} 1 must be`),
      );
    }
    // undefined and null callbacks are none
    expect(caldera(w, h, { ...quick, onProgress: undefined, hadamard: undefined }).hadamard).toBe(true);
    expect(() => caldera(w, h, { ...quick, onProgress: null as never })).not.toThrow();
  });
});

describe('codecs and layouts across options (apply, checkpoint round trip, bits)', () => {
  const w = structuredWeight(24, 40, 12);
  const h = correlatedHessian(40, 13);
  const h13 = correlatedHessian(13, 17);
  const cases: [string, Tensor<'f32'>, Tensor<'f64'> | null, CalderaOptions, number][] = [
    ['3-bit L and R', w, h, { rank: 8, lBits: 3, rBits: 3 }, 0],
    ['2-bit L and R', w, h, { rank: 8, lBits: 2, rBits: 2 }, 0],
    ['no Hadamard', w, h, { rank: 8, hadamard: false }, 0],
    ['3-bit Q', w, h, { rank: 8, qBits: 3 }, 0],
    ['no Q', w, h, { rank: 8, qBits: 0 }, 0],
    ['f16 factors, 4 trainable', w, h, { rank: 8, lBits: 16, rBits: 16 }, 4],
    ['3-bit factors, 4 trainable', w, h, { rank: 8, lBits: 3, rBits: 3 }, 4],
    ['rank 0 without Hadamard', w, h, { rank: 0, hadamard: false }, 0],
    ['f16 factors, all trainable', w, h, { rank: 8, lBits: 16, rBits: 16 }, 8],
    ['H = null', w, null, { rank: 8 }, 0],
    ['round-to-nearest 2-bit Q', w, h, { rank: 8, dataAwareQ: false }, 0],
    [
      'padded 10×13',
      tensor('f32', [10, 13], new Rng(15).fillNormal(new Float32Array(130))),
      h13,
      { rank: 4 },
      0,
    ],
  ];
  it.each(cases)('%s', (_, w, h, options, ftRank) => {
    const [m, n] = w.shape as [number, number];
    let d = caldera(w, h, { ...options, outerIters: 1, lplrIters: 1, seed: 4 });
    if (ftRank) d = withTrainableFactors(d, ftRank);
    const wh = reconstruct(d).data;
    const rows = 3;
    const x = new Rng(16).fillNormal(new Float32Array(rows * n));
    const y = applyDecomposition(d, x, rows);
    for (let r = 0; r < rows; r++)
      for (let i = 0; i < m; i++) {
        let s = 0;
        let abs = 0;
        for (let j = 0; j < n; j++) {
          s += x[r * n + j]! * wh[i * n + j]!;
          abs += Math.abs(x[r * n + j]! * wh[i * n + j]!);
        }
        // apply works in the rotated, padded basis (≤ 64 wide) in f32, reconstruct rotates back first: both are
        // exact up to a few f32 roundings per term, ≲ 64·eps32 ≈ 4e-6 of Σ|x_j ŵ_ij|; a wrong codec, sign or
        // layout is off by O(1) of it
        expect(Math.abs(y[r * m + i]! - s)).toBeLessThan(1e-4 * (1e-3 + abs));
      }
    // the error it reports is that of the Ŵ its codes decode to (H = I when null): f64 here, from the f32 Ŵ there,
    // ~1e-6 relative apart; codes that decode to other values than the fit used miss by far more than 1e-3
    let num = 0;
    let den = 0;
    for (let i = 0; i < m; i++)
      for (let a = 0; a < n; a++)
        for (let b = 0; b < n; b++) {
          const hab = h ? h.data[a * n + b]! : a === b ? 1 : 0;
          num += (wh[i * n + a]! - w.data[i * n + a]!) * hab * (wh[i * n + b]! - w.data[i * n + b]!);
          den += w.data[i * n + a]! * hab * w.data[i * n + b]!;
        }
    expect(Math.abs(Math.sqrt(num / den) - d.error)).toBeLessThan(1e-3 * d.error);
    const { tensors, meta } = toCheckpointTensors('p', d);
    validateLayer('p', { tensors, meta });
    expect(meta.bitsPerWeight).toBe(d.bitsPerWeight);
    // what the checkpoint stores is the bits it reports: withTrainableFactors updates the count by a difference over
    // m·n (15.899999999999999 for 15.9 here), so to 1e-12 (one bit of 24×40 is 1e-3); else exactly
    const stored = Object.values(tensors).reduce((a, t) => a + 8 * t.data.byteLength, 0);
    if (ftRank) expect(Math.abs(stored / (m * n) - d.bitsPerWeight)).toBeLessThan(1e-12);
    else expect(stored / (m * n)).toBe(d.bitsPerWeight);
    // read back and written again: the same tensors bit for bit (the scale is folded once, exactly), the same Ŵ up to
    // the f32 rounding of the fold (1e-5 relative, as in 'round-trips through the checkpoint tensors')
    const back = fromCheckpointTensors('p', (name) => tensors[name], meta);
    const again = toCheckpointTensors('p', back);
    expect(again.meta).toEqual(meta);
    expect(Object.keys(again.tensors).sort()).toEqual(Object.keys(tensors).sort());
    for (const [k, t] of Object.entries(tensors)) expect(again.tensors[k]!.data).toEqual(t.data);
    const wb = reconstruct(back).data;
    for (let i = 0; i < wh.length; i++)
      expect(Math.abs(wb[i]! - wh[i]!)).toBeLessThan(1e-5 * (1 + Math.abs(wh[i]!)));
  });
});

describe('caldera storage accounting', () => {
  it('bitsPerWeight is the bits its checkpoint tensors store, also for a low-rank-only layer', () => {
    const w = structuredWeight(32, 48, 8);
    for (const options of [
      { rank: 8 },
      { rank: 0 },
      { rank: 8, qBits: 0 as const },
      { rank: 8, lBits: 16 as const },
    ]) {
      const d = caldera(w, null, { ...options, outerIters: 1, lplrIters: 1 });
      const stored = Object.values(toCheckpointTensors('x', d).tensors).reduce(
        (a, t) => a + 8 * t.data.byteLength,
        0,
      );
      // both are exact integer bit counts over the same m·n
      expect(d.bitsPerWeight).toBe(stored / (32 * 48));
    }
  });
});
