import { describe, expect, it } from 'vitest';
import { isCalderaError, Rng, tensor, type Tensor } from '@caldera/core';
import { eigh, svd } from '@caldera/linalg';
import { caldera, type CalderaOptions } from './caldera.js';
import { reconstruct } from './decomposition.js';

/** W with decaying singular values plus noise (a spectral gap at every small k). */
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
  return tensor('f32', [m, n], w);
}

/** H = XᵀX/N, normalised to mean(diag) = 1, plus `reg`·I; X has N rows (N < n: H is singular, rank N). */
function hessianFrom(n: number, N: number, seed: number, reg: number): Tensor<'f64'> {
  const rng = new Rng(seed);
  const x = new Float64Array(N * n);
  for (let r = 0; r < N; r++) for (let j = 0; j < n; j++) x[r * n + j] = rng.normal() * (1 + (j % 5));
  const h = new Float64Array(n * n);
  for (let r = 0; r < N; r++)
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) h[i * n + j]! += (x[r * n + i]! * x[r * n + j]!) / N;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += h[i * n + i]! / n;
  for (let i = 0; i < n * n; i++) h[i]! /= mean;
  for (let i = 0; i < n; i++) h[i * n + i]! += reg;
  return tensor('f64', [n, n], h);
}

/** H + δ·mean(diag H)·I, independently of caldera's code. */
function dampedCopy(h: Tensor<'f64'>, delta: number): Tensor<'f64'> {
  const n = h.shape[0]!;
  const out = Float64Array.from(h.data);
  let mean = 0;
  for (let i = 0; i < n; i++) mean += h.data[i * n + i]! / n;
  for (let i = 0; i < n; i++) out[i * n + i]! += delta * mean;
  return tensor('f64', [n, n], out);
}

/** ‖(A − B)H^½‖_F / ‖W H^½‖_F in f64 (A, B m×n row-major). */
function hDistance(a: ArrayLike<number>, b: ArrayLike<number>, w: Tensor<'f32'>, h: Tensor<'f64'>): number {
  const [m, n] = w.shape as [number, number];
  let num = 0;
  let den = 0;
  for (let r = 0; r < m; r++)
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) {
        const hij = h.data[i * n + j]!;
        num += (a[r * n + i]! - b[r * n + i]!) * hij * (a[r * n + j]! - b[r * n + j]!);
        den += w.data[r * n + i]! * hij * w.data[r * n + j]!;
      }
  return Math.sqrt(num / den);
}

/** Activation-aware error of an estimate against W and H. */
const aaError = (est: ArrayLike<number>, w: Tensor<'f32'>, h: Tensor<'f64'>): number =>
  hDistance(est, w.data, w, h);

/**
 * Brute-force H-optimal rank-k approximation of W (H positive definite), in f64: whiten with H^½ = U·Λ^½·Uᵀ (eigh),
 * truncate the full SVD of W·H^½ to rank k (Eckart–Young), un-whiten with H^-½.
 */
function hOptimalRankK(w: Tensor<'f32'>, h: Tensor<'f64'>, k: number): { x: Float64Array; s: Float64Array } {
  const [m, n] = w.shape as [number, number];
  const { values, vectors } = eigh(h);
  const V = vectors.data;
  const half = new Float64Array(n * n);
  const invHalf = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      let a = 0;
      let b = 0;
      for (let p = 0; p < n; p++) {
        const vv = V[i * n + p]! * V[j * n + p]!;
        a += vv * Math.sqrt(values[p]!);
        b += vv / Math.sqrt(values[p]!);
      }
      half[i * n + j] = a;
      invHalf[i * n + j] = b;
    }
  const matmul = (x: ArrayLike<number>, y: Float64Array): Float64Array => {
    const out = new Float64Array(m * n);
    for (let r = 0; r < m; r++)
      for (let p = 0; p < n; p++) {
        const xv = x[r * n + p]!;
        for (let j = 0; j < n; j++) out[r * n + j]! += xv * y[p * n + j]!;
      }
    return out;
  };
  const s = svd(tensor('f64', [m, n], matmul(w.data, half)));
  const c = s.s.length;
  const yk = new Float64Array(m * n);
  for (let r = 0; r < m; r++)
    for (let t = 0; t < k; t++) {
      const us = s.u.data[r * c + t]! * s.s[t]!;
      for (let j = 0; j < n; j++) yk[r * n + j]! += us * s.vt.data[t * n + j]!;
    }
  return { x: matmul(yk, invHalf), s: s.s };
}

/** Every number and typed-array byte of a decomposition, for byte-for-byte comparison (−0 ≠ 0, NaN = NaN). */
function canon(x: unknown): unknown {
  if (ArrayBuffer.isView(x)) return Buffer.from(x.buffer, x.byteOffset, x.byteLength).toString('base64');
  if (typeof x === 'number') return Object.is(x, -0) ? '-0' : String(x);
  if (Array.isArray(x)) return x.map(canon);
  if (x && typeof x === 'object')
    return Object.fromEntries(Object.entries(x).map(([key, v]) => [key, canon(v)]));
  return x;
}

function rejects(f: () => unknown, code: string, message: RegExp): void {
  try {
    f();
    expect.unreachable('no error');
  } catch (e) {
    expect(isCalderaError(e) && e.code).toBe(code);
    expect((e as Error).message).toMatch(message);
  }
}

const lowRankOnly: CalderaOptions = { qBits: 0, lBits: 16, rBits: 16 };

describe('caldera svd and damping defaults', () => {
  it("explicit { damping: 0, svd: 'randomized', updateOrder: 'lr-first' } is byte-identical to no options", () => {
    const cases: [Tensor<'f32'>, Tensor<'f64'> | null, CalderaOptions][] = [
      [structuredWeight(64, 64, 1), hessianFrom(64, 192, 2, 0.01), { rank: 8 }],
      [structuredWeight(64, 64, 1), hessianFrom(64, 192, 2, 0.01), { rank: 8, hessianDowndate: true }],
      [structuredWeight(64, 64, 1), hessianFrom(64, 192, 2, 0.01), { rank: 8, dataAwareLR: false }],
      [structuredWeight(64, 64, 1), hessianFrom(64, 4, 3, 0), { rank: 16, ...lowRankOnly }],
      [structuredWeight(20, 36, 4), hessianFrom(36, 100, 5, 0.01), { rank: 4 }], // padded to 24 × 40
      [structuredWeight(64, 64, 1), null, { rank: 8 }],
    ];
    for (const [w, h, options] of cases) {
      const o = { ...options, outerIters: 2, lplrIters: 2 };
      const plain = caldera(w, h, o);
      const explicit = caldera(w, h, { ...o, damping: 0, svd: 'randomized', updateOrder: 'lr-first' });
      expect(canon(explicit)).toEqual(canon(plain));
    }
  });

  it('a signal aborted before the call names caldera (not its first step); one aborted from onProgress stops it', () => {
    const w = structuredWeight(16, 32, 3);
    const h = hessianFrom(32, 64, 4, 0.01);
    const ac = new AbortController();
    ac.abort(new Error('stop'));
    expect(() => caldera(w, h, { rank: 4, signal: ac.signal })).toThrow(/^E_ABORTED: caldera was aborted$/);
    // before any work: not after copying and checking W and H (a NaN in W was found first; n = 4096 took 4 s)
    const bad = tensor(
      'f32',
      [16, 32],
      Float32Array.from(w.data, (v, i) => (i === 5 ? NaN : v)),
    );
    expect(() => caldera(bad, h, { rank: 4, signal: ac.signal })).toThrow(/^E_ABORTED: caldera was aborted$/);
    const mid = new AbortController();
    let calls = 0;
    const run = () =>
      caldera(w, h, {
        rank: 4,
        outerIters: 3,
        signal: mid.signal,
        onProgress: () => {
          if (++calls === 2) mid.abort();
        },
      });
    expect(run).toThrow(/was aborted/);
    expect(calls).toBe(2);
  });

  it('damping has no effect with H = null (identity)', () => {
    const w = structuredWeight(64, 64, 1);
    const o: CalderaOptions = { rank: 8, outerIters: 2, lplrIters: 2 };
    expect(canon(caldera(w, null, { ...o, damping: 0.05 }))).toEqual(canon(caldera(w, null, o)));
  });
});

describe("caldera svd: 'exact'", () => {
  // A Gaussian W: its flat spectrum makes the randomized SVD's subspace measurably inexact even with the default 2
  // power iterations. 64 × 64 needs no padding; H is positive definite (1 % damping built in), so the H-optimal
  // rank-k approximation exists, and it is unique given the gap σ_k > σ_k+1 of W·H^½ checked below.
  const w = tensor('f32', [64, 64], new Rng(21).fillNormal(new Float32Array(64 * 64)));
  const h = hessianFrom(64, 192, 22, 0.01);
  const k = 8;
  const { x: optimum, s: sigma } = hOptimalRankK(w, h, k);
  const optError = aaError(optimum, w, h);

  it('the LR step is the H-optimal rank-k approximation, and beats the default randomized SVD', () => {
    expect((sigma[k - 1]! - sigma[k]!) / sigma[0]!).toBeGreaterThan(1e-2);
    const exact = caldera(w, h, { ...lowRankOnly, rank: k, svd: 'exact' });
    const randomized = caldera(w, h, { ...lowRankOnly, rank: k }); // svdPowerIters 2, 10 oversampling directions
    // Reconstructions, in the H-norm relative to ‖W H^½‖: L and R are stored in f16 (unit round-off 2⁻¹¹ ≈ 4.9e-4
    // per entry, both factors perturbed), and the fit runs in f32 with f32 Hadamard rotations; measured 1.8e-4.
    // 2e-3 (≈ 4 f16 units) rejects the randomized fit (measured 5.7e-2 away).
    const tol = 2e-3;
    expect(hDistance(reconstruct(exact).data, optimum, w, h)).toBeLessThan(tol);
    expect(hDistance(reconstruct(randomized).data, optimum, w, h)).toBeGreaterThan(tol);
    // Reported error: any rank-k estimate is ≥ the optimum (f32 evaluation: 1e-5 relative slack); the optimum is
    // stationary, so an estimate within d of it (d < tol above) has error ≤ √(opt² + d²) to first order.
    const bound = Math.sqrt(optError ** 2 + tol ** 2);
    expect(exact.error).toBeGreaterThanOrEqual(optError * (1 - 1e-5));
    expect(exact.error).toBeLessThanOrEqual(bound);
    expect(randomized.error).toBeGreaterThan(bound); // measured 0.70482 vs optimum 0.70388
    expect(exact.error).toBeLessThan(randomized.error);
    // and it is the error of what reconstruct() returns
    expect(exact.error).toBeCloseTo(aaError(reconstruct(exact).data, w, h), 5);
  });

  it('ignores svdPowerIters, and runs with data-unaware LR, quantized factors, Q and the Hessian downdate', () => {
    const a = caldera(w, h, {
      rank: k,
      svd: 'exact',
      svdPowerIters: 0,
      outerIters: 2,
      hessianDowndate: true,
    });
    const b = caldera(w, h, {
      rank: k,
      svd: 'exact',
      svdPowerIters: 5,
      outerIters: 2,
      hessianDowndate: true,
    });
    expect(canon(a)).toEqual(canon(b));
    expect(Number.isFinite(a.error) && a.error < 1).toBe(true);
    const plain = caldera(w, h, { rank: k, svd: 'exact', dataAwareLR: false, outerIters: 2 });
    expect(Number.isFinite(plain.error) && plain.error < 1).toBe(true);
    // data-unaware with H = I: the plain truncated SVD (Eckart–Young), to the same f16 allowance as above
    const unaware = caldera(w, null, { ...lowRankOnly, rank: k, svd: 'exact', dataAwareLR: false });
    const all = svd(w).s;
    let tail = 0;
    let total = 0;
    all.forEach((v, i) => {
      total += v * v;
      if (i >= k) tail += v * v;
    });
    const truth = Math.sqrt(tail / total);
    expect(unaware.error).toBeGreaterThanOrEqual(truth * (1 - 1e-5));
    expect(unaware.error).toBeLessThanOrEqual(Math.sqrt(truth ** 2 + 2e-3 ** 2));
  });

  it('rejects an unknown svd mode with E_VALUE', () => {
    for (const mode of ['full', 'Exact', '', 1, null])
      rejects(() => caldera(w, h, { rank: k, svd: mode as 'exact' }), 'E_VALUE', /svd/);
  });
});

describe('caldera damping', () => {
  // rank-deficient calibration: 4 rows for 64 inputs, so H has rank 4 and no damping of its own
  const w = structuredWeight(64, 64, 11);
  const hSingular = hessianFrom(64, 4, 13, 0);

  const runs: {
    k: number;
    q: string;
    none: number;
    damped: number;
    vsH: number;
    vsDampedH: number;
    finite: boolean;
  }[] = [];
  for (const k of [16, 32])
    for (const q of ['no Q', 'Q 2-bit'] as const) {
      const o: CalderaOptions = { rank: k, ...(q === 'no Q' ? { qBits: 0 as const } : {}) };
      const none = caldera(w, hSingular, o);
      const damped = caldera(w, hSingular, { ...o, damping: 0.01 });
      const rec = reconstruct(damped).data;
      const finite = [none, damped].every(
        (d) => Number.isFinite(d.error) && reconstruct(d).data.every(Number.isFinite),
      );
      runs.push({
        k,
        q,
        none: none.error,
        damped: damped.error,
        vsH: aaError(rec, w, hSingular),
        vsDampedH: aaError(rec, w, dampedCopy(hSingular, 0.01)),
        finite,
      });
    }

  it(`at k ≥ 16 > rank(H) = 4, 1 % damping lowers the (undamped-H) error with Q, and at k=32 without: ${runs.map((r) => `k=${r.k} ${r.q}: ${r.none.toFixed(4)} → ${r.damped.toFixed(4)}`).join(', ')}`, () => {
    console.table(runs);
    for (const r of runs) {
      expect(r.finite).toBe(true);
      // Undamped, the fit's components in H's null space are set by rounding (a change of summation order moved k=16
      // no Q from 0.1726 to 0.1196): over seeds 0–7 damping lowered the error in every run with Q and at k=32 without
      // (k=32 no Q: 0.248–0.402 → 0.074–0.128), but at k=16 without Q only in 5 of 8 (mean 0.163 → 0.135; seed 0,
      // this run: 0.120 → 0.126), so that case is left out of this claim.
      if (!(r.k === 16 && r.q === 'no Q')) expect(r.damped).toBeLessThan(r.none);
      // The reported error is against the caller's (undamped) H, not the damped H the fit used: it matches the f64
      // recomputation against H to f32 evaluation round-off (measured ≤ 5e-8), while the damped-H figure is
      // 1.9e-5 to 1.8e-3 away, so the two checks, 10× apart, tell the measures apart.
      expect(Math.abs(r.damped - r.vsH)).toBeLessThan(1e-6);
      expect(Math.abs(r.damped - r.vsDampedH)).toBeGreaterThan(1e-5);
    }
  });

  it('rejects a negative, non-finite or non-number damping with E_VALUE', () => {
    const h = hessianFrom(64, 192, 12, 0.01);
    for (const bad of [-0.01, -Infinity, Infinity, NaN, '0.01' as unknown as number])
      rejects(() => caldera(w, h, { rank: 8, damping: bad }), 'E_VALUE', /damping/);
  });
});

describe('caldera updateOrder', () => {
  // 64 × 64 (no padding), H positive definite (1 % damping built in)
  const w = structuredWeight(64, 64, 31);
  const h = hessianFrom(64, 192, 32, 0.01);
  const k = 8;
  const steps = (o: CalderaOptions) => {
    const seen: string[] = [];
    const d = caldera(w, h, { ...o, onProgress: (p) => seen.push(`${p.iteration}${p.step}`) });
    return { d, seen };
  };

  it("'q-first', one outer iteration: Q is LDLQ of W itself (rank 0's codes), L·R the H-optimal rank-k fit of W − Q", () => {
    const ldlqOnly = caldera(w, h, { rank: 0, seed: 3 });
    const qHat = reconstruct(ldlqOnly).data; // LDLQ of W, as caldera gives it at rank 0
    const residual = tensor(
      'f32',
      [64, 64],
      Float32Array.from(w.data, (v, i) => v - qHat[i]!),
    );
    // rank 5: the residual's relative gap σ₅ − σ₆ is 1.4e-2 of σ₁ (at k = 8 only 4.7e-3), so the optimum is unique
    // and well separated
    const k5 = 5;
    const { x: optimum, s: sigma } = hOptimalRankK(residual, h, k5);
    expect((sigma[k5 - 1]! - sigma[k5]!) / sigma[0]!).toBeGreaterThan(1e-2);
    // 16-bit factors and the exact SVD: the LR step is the H-optimal rank-k approximation of its input (as in the
    // `svd: 'exact'` test above)
    const o: CalderaOptions = { rank: k5, lBits: 16, rBits: 16, svd: 'exact', outerIters: 1, seed: 3 };
    const qFirst = steps({ ...o, updateOrder: 'q-first' });
    const lrFirst = steps(o);
    expect(qFirst.seen).toEqual(['1Q', '1LR']);
    expect(lrFirst.seen).toEqual(['1LR', '1Q']);
    // Q: the same codes, bit for bit (the same signs, rotation and LDLQ factor as at rank 0). With 16-bit factors the
    // global scale g is RMS(W) rounded to a power of two, so Q's own scale differs and only g times it is the same, to
    // the f32 rounding of W/g (1e-6 relative is 8 f32 units); with the default 4-bit factors g is RMS(W) as at rank 0,
    // and Q is the same bit for bit, scale included.
    expect(canon(qFirst.d.q!.planes)).toEqual(canon(ldlqOnly.q!.planes));
    const gq = (d: typeof ldlqOnly) => d.scale * d.q!.scale;
    expect(Math.abs(gq(qFirst.d) / gq(ldlqOnly) - 1)).toBeLessThan(1e-6);
    const quantized = caldera(w, h, { rank: k5, outerIters: 1, updateOrder: 'q-first', seed: 3 });
    expect(canon(quantized.q)).toEqual(canon(ldlqOnly.q));
    // L·R = Ŵ − Q̂, measured relative to ‖(W − Q̂)H^½‖: f16 storage of L and R (unit round-off 4.9e-4) and the f32
    // rotations and sums, as in the `svd: 'exact'` test (measured there 1.8e-4 relative to ‖W H^½‖); 2e-3 allows 4 f16
    // units (measured 2.2e-4). 'lr-first' fits W itself and then quantizes W − L·R, so neither of its parts is this
    // pair: its Q codes differ, and its Ŵ − Q̂ is far from this optimum (measured 0.57).
    const lrPart = (d: typeof qFirst.d) => Float64Array.from(reconstruct(d).data, (v, i) => v - qHat[i]!);
    const tol = 2e-3;
    expect(hDistance(lrPart(qFirst.d), optimum, residual, h)).toBeLessThan(tol);
    expect(hDistance(lrPart(lrFirst.d), optimum, residual, h)).toBeGreaterThan(10 * tol);
    expect(canon(lrFirst.d.q)).not.toEqual(canon(ldlqOnly.q));
    // errors: one per step, and the kept iterate is the only one with both parts
    expect(qFirst.d.errors.Q).toHaveLength(1);
    expect(qFirst.d.errors.LR).toEqual([qFirst.d.error]);
    expect(qFirst.d.error).toBeCloseTo(aaError(reconstruct(qFirst.d).data, w, h), 5);
  });

  it("'q-first' with the Hessian downdate: the first Q step, before any L·R, is LDLQ against H itself", () => {
    // (it found no LDLQ factor prepared and rounded to nearest instead)
    const ldlqOnly = caldera(w, h, { rank: 0, seed: 3 });
    const d = caldera(w, h, {
      rank: k,
      outerIters: 1,
      hessianDowndate: true,
      updateOrder: 'q-first',
      seed: 3,
    });
    expect(canon(d.q)).toEqual(canon(ldlqOnly.q));
    // later Q steps follow an LR step and downdate (so they differ from those without it)
    const o: CalderaOptions = { rank: k, outerIters: 2, updateOrder: 'q-first', seed: 3 };
    const down = caldera(w, h, { ...o, hessianDowndate: true });
    const plain = caldera(w, h, o);
    expect(down.errors.Q[0]).toBe(plain.errors.Q[0]);
    expect(down.errors.Q[1]).not.toBe(plain.errors.Q[1]);
  });

  it("'q-first' is deterministic, alternates Q then LR, keeps the best iterate with both parts, and can be aborted", () => {
    const o: CalderaOptions = { rank: k, outerIters: 3, lplrIters: 2, updateOrder: 'q-first', seed: 5 };
    const a = steps(o);
    const b = steps(o);
    expect(canon(a.d)).toEqual(canon(b.d));
    expect(a.seen).toEqual(['1Q', '1LR', '2Q', '2LR', '3Q', '3LR']);
    // the kept error is the least of those after both parts exist (from the first LR step on)
    const candidates = [...a.d.errors.LR, ...a.d.errors.Q.slice(1)];
    expect(a.d.error).toBe(Math.min(...candidates));
    expect(a.d.error).toBeCloseTo(aaError(reconstruct(a.d).data, w, h), 5);
    expect(canon(a.d)).not.toEqual(canon(caldera(w, h, { ...o, updateOrder: 'lr-first' })));
    // an abort fired after the first (Q) step stops the run before the LR step
    const ac = new AbortController();
    const seen: string[] = [];
    expect(() =>
      caldera(w, h, {
        ...o,
        signal: ac.signal,
        onProgress: (p) => {
          seen.push(p.step);
          ac.abort();
        },
      }),
    ).toThrow(/^E_ABORTED: caldera was aborted$/);
    expect(seen).toEqual(['Q']);
  });

  it('has no effect with one step per iteration (rank 0, or qBits 0)', () => {
    for (const o of [{ rank: 0 }, { rank: k, ...lowRankOnly }] as CalderaOptions[])
      expect(canon(caldera(w, h, { ...o, updateOrder: 'q-first' }))).toEqual(canon(caldera(w, h, o)));
  });

  it('rejects any other updateOrder with E_VALUE naming it, before any work', () => {
    for (const bad of ['Q-first', 'q', 'LR', '', 1, null, true])
      for (const rank of [0, k])
        rejects(
          () => caldera(w, h, { rank, updateOrder: bad as 'q-first' }),
          'E_VALUE',
          /^E_VALUE: caldera: updateOrder .* must be 'lr-first' or 'q-first'$/,
        );
  });
});

describe('caldera overwriteH', () => {
  /** The decomposition's reconstruction and error, to compare runs bit for bit. */
  const run = (w: Tensor<'f32'>, h: Tensor, o: CalderaOptions) => {
    const d = caldera(w, h, { rank: 8, outerIters: 2, ...o });
    return { w: Array.from(reconstruct(d).data), error: d.error };
  };

  it('gives the same decomposition; writes into H only where H is contiguous f64, unpadded, undamped', () => {
    // 64 × 128: no padding (both sizes supported), so the rotated H may go into H's own array; the error is measured
    // in the rotated domain, which does not read H again
    const w = structuredWeight(64, 128, 1);
    const h = hessianFrom(128, 40, 2, 0.01);
    const hBefore = Array.from(h.data);
    // also where the rotated H is read after its factor is made: the downdate's copy, LDLQ's tuning passes
    for (const o of [{}, { hessianDowndate: true }, { tuneIters: 1 }]) {
      const want = run(w, h, o);
      expect(Array.from(h.data)).toEqual(hBefore); // not without overwriteH
      const own = tensor('f64', [128, 128], Float64Array.from(h.data));
      expect(run(w, own, { ...o, overwriteH: true })).toEqual(want);
      expect(Array.from(own.data)).not.toEqual(hBefore); // used as work space
    }
    // where H is read again, or is not the caller's own contiguous f64 array, it is left alone, same result
    const cases: [Tensor<'f32'>, Tensor, CalderaOptions][] = [
      [structuredWeight(60, 128, 1), h, {}], // W padded to 64 rows: the error is measured against H
      [w, h, { damping: 0.01 }], // damping: the rotation goes into the damped copy; the error reads H
      [w, tensor('f32', [128, 128], Float32Array.from(h.data)), {}], // f32 H: toF64's copy is ours
      [w, { ...h, shape: [128, 128], strides: [1, 128] }, {}], // a transposed view (H symmetric): copied
    ];
    for (const [wc, hc, o] of cases) {
      const before = Array.from(hc.data);
      const plain = run(wc, hc, o);
      expect(run(wc, hc, { ...o, overwriteH: true })).toEqual(plain);
      expect(Array.from(hc.data)).toEqual(before);
    }
  });

  it('rejects an overwriteH that is not a boolean with E_VALUE', () => {
    expect(() => caldera(structuredWeight(16, 16, 1), null, { rank: 4, overwriteH: 1 as never })).toThrow(
      /^E_VALUE: caldera: overwriteH 1 must be true or false$/,
    );
  });
});
