import { describe, expect, it } from 'vitest';
import { Rng, tensor } from '@caldera/core';
import { eighJacobi, orthonormalizeColumns, randomizedSvd } from './rsvd.js';
import { svd } from './svd.js';
import { qr } from './qr.js';
import { EPS, orthErr, withSpectrum } from './factor-test-util.js';
import { expectAbortable } from './abort-test-util.js';

describe('eighJacobi', () => {
  it('recovers known eigenvalues (with repeats) and orthonormal vectors: ‖A − VΛVᵀ‖ ≤ 1e-12·‖A‖', () => {
    const n = 9;
    const lam = [-2, 0, 0, 1, 1, 1, 3, 5, 8];
    // A = Q diag(λ) Qᵀ with a random orthogonal Q (Gram–Schmidt of a Gaussian matrix)
    const rng = new Rng(1);
    const q = rng.fillNormal(new Float64Array(n * n));
    for (let j = 0; j < n; j++) {
      for (let i = 0; i < j; i++) {
        let d = 0;
        for (let r = 0; r < n; r++) d += q[r * n + i]! * q[r * n + j]!;
        for (let r = 0; r < n; r++) q[r * n + j]! -= d * q[r * n + i]!;
      }
      let nr = 0;
      for (let r = 0; r < n; r++) nr += q[r * n + j]! ** 2;
      for (let r = 0; r < n; r++) q[r * n + j]! /= Math.sqrt(nr);
    }
    const a = new Float64Array(n * n);
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++)
        for (let t = 0; t < n; t++) a[i * n + j]! += q[i * n + t]! * lam[t]! * q[j * n + t]!;
    const { values, vectors } = eighJacobi(a, n);
    lam.forEach((l, i) => expect(values[i]).toBeCloseTo(l, 11));
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) {
        let r = 0;
        let o = 0;
        for (let t = 0; t < n; t++) {
          r += vectors[i * n + t]! * values[t]! * vectors[j * n + t]!;
          o += vectors[t * n + i]! * vectors[t * n + j]!;
        }
        expect(Math.abs(r - a[i * n + j]!)).toBeLessThan(1e-12 * 8);
        expect(Math.abs(o - (i === j ? 1 : 0))).toBeLessThan(1e-12);
      }
  });
});

describe('orthonormalizeColumns', () => {
  it('orthonormalises the columns in place', () => {
    const z = Float64Array.of(3, 1, 4, 1, 0, 2);
    orthonormalizeColumns(z, 3, 2);
    for (const [i, j] of [
      [0, 0],
      [0, 1],
      [1, 1],
    ] as const) {
      let d = 0;
      for (let r = 0; r < 3; r++) d += z[r * 2 + i]! * z[r * 2 + j]!;
      expect(d).toBeCloseTo(i === j ? 1 : 0, 14);
    }
  });

  it('over several panels of columns: orthonormal, spanning what z spanned, equal to Householder QR up to sign', () => {
    // 150 columns are ten panels (nine of 16, one of 6): the later ones are projected off the earlier ones by gemm
    const m = 300;
    const l = 150;
    const z0 = new Rng(4).fillNormal(new Float64Array(m * l));
    for (let j = 0; j < l; j++) for (let r = 0; r < m; r++) z0[r * l + j]! *= 1 + (j % 5) ** 2; // unequal norms
    const z = Float64Array.from(z0);
    orthonormalizeColumns(z, m, l);
    // two passes leave orthogonality at rounding: ~√m·ε ≈ 4e-15 per entry, 1e-13 is a margin of 25
    for (let i = 0; i < l; i++)
      for (let j = i; j < l; j++) {
        let d = 0;
        for (let r = 0; r < m; r++) d += z[r * l + i]! * z[r * l + j]!;
        expect(Math.abs(d - (i === j ? 1 : 0))).toBeLessThan(1e-13);
      }
    // Gram–Schmidt's Q is QR's Q with R's diagonal positive: column j of each agrees up to its sign (cos ≈ ±1), an
    // independent check that column j spans z's first j + 1 columns (a wrong projection gives |cos| far from 1)
    const hh = qr(tensor('f64', [m, l], Float64Array.from(z0)));
    for (let j = 0; j < l; j++) {
      let d = 0;
      for (let r = 0; r < m; r++) d += z[r * l + j]! * hh.q.data[r * l + j]!;
      expect(Math.abs(Math.abs(d) - 1)).toBeLessThan(1e-10);
    }
  });

  it('keeps a graded basis orthonormal across panels (column scales from 1 to 1e-10, condition 1e10)', () => {
    // classical Gram–Schmidt between panels loses orthogonality like ε·κ² in one pass; the second pass restores it
    const m = 300;
    const l = 80; // five panels
    const rng = new Rng(6);
    const u = rng.fillNormal(new Float64Array(m * l));
    orthonormalizeColumns(u, m, l); // an orthonormal U
    const v = rng.fillNormal(new Float64Array(l * l));
    orthonormalizeColumns(v, l, l); // an orthogonal V
    // z = U·diag(σ)·Vᵀ with σ_t = 10^(−10·t/(l−1)): every column mixes all scales, the span is U's
    const z = new Float64Array(m * l);
    for (let r = 0; r < m; r++)
      for (let j = 0; j < l; j++) {
        let s = 0;
        for (let t = 0; t < l; t++) s += u[r * l + t]! * 10 ** ((-10 * t) / (l - 1)) * v[j * l + t]!;
        z[r * l + j] = s;
      }
    orthonormalizeColumns(z, m, l);
    let worst = 0;
    let zeros = 0;
    for (let i = 0; i < l; i++) {
      let nn = 0;
      for (let r = 0; r < m; r++) nn += z[r * l + i]! ** 2;
      if (nn === 0) zeros++;
      for (let j = i + 1; j < l; j++) {
        let d = 0;
        for (let r = 0; r < m; r++) d += z[r * l + i]! * z[r * l + j]!;
        worst = Math.max(worst, Math.abs(d));
      }
    }
    // what is kept is orthonormal to rounding (a lost pass leaves ~1e-6 here); columns whose remainder fell below
    // 1e-11 of their norm may be zeroed, never half-kept
    expect(worst).toBeLessThan(1e-12);
    expect(zeros).toBeLessThan(l);
  });

  it('zeroes the columns that earlier ones span, also across panels (rank 70 in 200 × 130)', () => {
    const m = 200;
    const l = 130;
    const rank = 70;
    const rng = new Rng(5);
    const basis = rng.fillNormal(new Float64Array(m * rank));
    const mix = rng.fillNormal(new Float64Array(rank * l));
    // columns 0..69 are independent; every later column (in the second and third panels) is a combination of them
    for (let j = 0; j < rank; j++) for (let t = 0; t < rank; t++) mix[t * l + j] = t === j ? 1 : 0;
    const z = new Float64Array(m * l);
    for (let r = 0; r < m; r++)
      for (let j = 0; j < l; j++) {
        let v = 0;
        for (let t = 0; t < rank; t++) v += basis[r * rank + t]! * mix[t * l + j]!;
        z[r * l + j] = v;
      }
    orthonormalizeColumns(z, m, l);
    const norms = Array.from({ length: l }, (_, j) => {
      let s = 0;
      for (let r = 0; r < m; r++) s += z[r * l + j]! ** 2;
      return s;
    });
    // the first 70 are unit columns, the 60 dependent ones exactly zero (not rounding error normalised to unit length)
    expect(norms.slice(0, rank).every((s) => Math.abs(s - 1) < 1e-12)).toBe(true);
    expect(norms.slice(rank).every((s) => s === 0)).toBe(true);
  });

  it('rejects a buffer that is not m·l values (E_SHAPE) and sizes that are not counts (E_VALUE)', () => {
    // before: a 4-value buffer as 3×3 ran off its end without an error
    expect(() => orthonormalizeColumns(new Float64Array(4), 3, 3)).toThrow(
      /^E_SHAPE: orthonormalizeColumns: z has 4 values for a 3×3 matrix$/,
    );
    expect(() => orthonormalizeColumns(new Float64Array(10), 3, 3)).toThrow(/E_SHAPE/);
    expect(() => orthonormalizeColumns(new Float64Array(4), -2, -2)).toThrow(
      /^E_VALUE: orthonormalizeColumns: m must be an integer ≥ 0, got -2$/,
    );
    expect(() => orthonormalizeColumns(new Float64Array(4), 2, NaN)).toThrow(/E_VALUE: .* l must be/);
    orthonormalizeColumns(new Float64Array(0), 3, 0); // no columns: nothing to do
  });
});

describe('randomizedSvd', () => {
  it('recovers an exactly rank-k matrix to round-off and matches its singular values', () => {
    const [m, n, k] = [60, 45, 5];
    const rng = new Rng(2);
    const sig = [10, 5, 2, 1, 0.5];
    const u = rng.fillNormal(new Float64Array(m * k));
    const v = rng.fillNormal(new Float64Array(n * k));
    const a = new Float64Array(m * n);
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++)
        for (let t = 0; t < k; t++)
          a[i * n + j]! += (u[i * k + t]! * sig[t]! * v[j * k + t]!) / Math.sqrt(m * n);
    const r = randomizedSvd(tensor('f64', [m, n], a), k, { seed: 3 });
    let err = 0;
    let nrm = 0;
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let t = 0; t < k; t++) s += r.u.data[i * k + t]! * r.s[t]! * r.vt.data[t * n + j]!;
        err += (s - a[i * n + j]!) ** 2;
        nrm += a[i * n + j]! ** 2;
      }
    // exact low rank: only round-off remains (the Gram step squares the condition number 20² ⇒ ~1e-12 relative)
    expect(Math.sqrt(err / nrm)).toBeLessThan(1e-9);
    for (let t = 1; t < k; t++) expect(r.s[t]!).toBeLessThanOrEqual(r.s[t - 1]!);
  });

  it('a matrix of rank below k + oversample whose columns live in few rows (all-zero rows): U orthonormal, σ exact', () => {
    // 4 random rows, 60 zero ones (pruned neurons, padded rows): the sketch's columns past the 4th left only rounding
    // error after the projections, which was normalised into non-orthogonal columns (‖UᵀU − I‖ = 2.8, σ too large)
    const [m, n] = [64, 64];
    for (const dtype of ['f32', 'f64'] as const) {
      const a = new Float64Array(m * n);
      a.set(Float32Array.from(new Rng(1).fillNormal(new Float64Array(4 * n)))); // the same values in f32 and f64
      const x = dtype === 'f32' ? tensor('f32', [m, n], Float32Array.from(a)) : tensor('f64', [m, n], a);
      const r = randomizedSvd(x, 4, { seed: 0 });
      const exact = svd(tensor('f64', [m, n], a));
      expect(orthErr(Float64Array.from(r.u.data), m, 4), dtype).toBeLessThan(1e-12);
      // the rank-4 matrix itself: its σ to f32's or f64's rounding
      for (let t = 0; t < 4; t++)
        expect(Math.abs(r.s[t]! - exact.s[t]!) / exact.s[0]!).toBeLessThan(dtype === 'f32' ? 1e-6 : 1e-12);
    }
  });

  it('on a full-rank matrix is within 1 % of the optimal (Eckart–Young) rank-k error with power iterations', () => {
    const [m, n, k] = [80, 70, 6];
    const rng = new Rng(4);
    // decaying spectrum: a = Σ_t 0.7^t u_t v_tᵀ + small noise
    const a = new Float64Array(m * n);
    for (let t = 0; t < 40; t++) {
      const uu = rng.fillNormal(new Float64Array(m));
      const vv = rng.fillNormal(new Float64Array(n));
      for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) a[i * n + j]! += 0.7 ** t * uu[i]! * vv[j]!;
    }
    const r = randomizedSvd(tensor('f64', [m, n], a), k, { seed: 5, powerIters: 3 });
    // optimal error² = Σ_{t>k} σ_t², from the full spectrum (Jacobi on AᵀA, independent of the randomized path)
    const full = randomizedSvd(tensor('f64', [m, n], a), Math.min(m, n), { oversample: 0, powerIters: 0 });
    let opt = 0;
    for (let t = k; t < full.s.length; t++) opt += full.s[t]! ** 2;
    let err = 0;
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let t = 0; t < k; t++) s += r.u.data[i * k + t]! * r.s[t]! * r.vt.data[t * n + j]!;
        err += (s - a[i * n + j]!) ** 2;
      }
    expect(err).toBeLessThan(opt * 1.01);
  });

  it('rejects oversample / powerIters that are not non-negative integers (negative gave garbage, Infinity hung)', () => {
    const a = tensor('f64', [12, 8], new Rng(1).fillNormal(new Float64Array(96)));
    for (const oversample of [-3, 1.5, NaN])
      expect(() => randomizedSvd(a, 3, { oversample })).toThrow(/E_VALUE: randomizedSvd: oversample/);
    for (const powerIters of [-1, 0.5, Infinity])
      expect(() => randomizedSvd(a, 3, { powerIters })).toThrow(/E_VALUE: randomizedSvd: powerIters/);
    expect(randomizedSvd(a, 3, { oversample: 0, powerIters: 0 }).s.length).toBe(3);
  });
});

describe('randomizedSvd abort signal', () => {
  it('is checked in the products, per panel of each orthonormalisation and in the small SVD; same bits otherwise', () => {
    const rng = new Rng(50);
    for (const [m, n, dtype] of [
      [200, 150, 'f32'],
      [120, 180, 'f64'],
    ] as const) {
      const x = rng.fillNormal(new Float64Array(m * n));
      const a = dtype === 'f32' ? tensor('f32', [m, n], Float32Array.from(x)) : tensor('f64', [m, n], x);
      // 5 orthonormalisations × 2 passes × 2 panels (l = 20) = 20, the small SVD's QR (20 columns: 2 × 20) and its
      // Jacobi sweeps (a check per row, 20 per sweep): every one of them is aborted at in turn
      const checks = expectAbortable('randomizedSvd', (signal) =>
        randomizedSvd(a, 10, { seed: 3, ...(signal ? { signal } : {}) }),
      );
      expect(checks).toBeGreaterThan(200);
    }
  });
});

describe('randomizedSvd accuracy against the exact svd', () => {
  it('orthonormal factors and σ matching svd on a fast-decaying spectrum (κ over the top 20 ≈ 1e8)', () => {
    const m = 120;
    const n = 90;
    const sTrue = Array.from({ length: n }, (_, i) => 10 ** (-i / 2.5));
    const a = withSpectrum(m, n, sTrue, 77);
    const at = tensor('f64', [m, n], a);
    const k = 20;
    const r = randomizedSvd(at, k, { seed: 3, powerIters: 2 });
    const exact = svd(at);
    // with oversampling 10 and the spectrum dropping by 10⁴ over the extra directions, σ₁..σ_k are exact to
    // ~eps·n·σ₁ absolute (the relative error bound of HMT §10 is far below that)
    for (let i = 0; i < k; i++)
      expect(Math.abs(r.s[i]! - exact.s[i]!)).toBeLessThan(100 * n * EPS * sTrue[0]!);
    expect(orthErr(r.u.data, m, k)).toBeLessThan(100 * m * EPS);
    const v = new Float64Array(n * k);
    for (let i = 0; i < k; i++) for (let j = 0; j < n; j++) v[j * k + i] = r.vt.data[i * n + j]!;
    expect(orthErr(v, n, k)).toBeLessThan(100 * n * EPS);
  });
});

describe('scale: the results of a matrix times a power of two, whatever the power (zeros beyond about 1e±150 before)', () => {
  it('randomizedSvd and orthonormalizeColumns at 2^±500 and 2^600: σ scaled exactly, the same unit vectors', () => {
    const m = 60;
    const n = 40;
    const a = withSpectrum(
      m,
      n,
      Array.from({ length: n }, (_, i) => 2 ** -i),
      8,
    );
    const base = randomizedSvd(tensor('f64', [m, n], a), 3, { seed: 1 });
    for (const p of [-500, 500, 600]) {
      const r = randomizedSvd(
        tensor(
          'f64',
          [m, n],
          a.map((x) => x * 2 ** p),
        ),
        3,
        { seed: 1 },
      );
      // multiplying by a power of two is exact and every step commutes with it: the same bits, σ scaled
      expect(Array.from(r.s), `2^${p}`).toEqual(Array.from(base.s, (x) => x * 2 ** p));
      expect(r.u.data).toEqual(base.u.data);
    }
    const z = Float64Array.from([1e200, 1e200, 1e200, -1e200]);
    orthonormalizeColumns(z, 2, 2);
    for (const x of z) expect(Math.abs(Math.abs(x) - Math.SQRT1_2)).toBeLessThan(EPS);
  });

  it('eighJacobi at 1e±160, and its bad arguments: NaN and a negative size are E_VALUE (NaN values, a RangeError)', () => {
    for (const t of [1e160, 1e-170]) {
      const { values } = eighJacobi(Float64Array.from([0, t, t, 0]), 2);
      // ±t to rounding (one rotation)
      expect(Math.abs(values[0]! / -t - 1)).toBeLessThan(4 * EPS);
      expect(Math.abs(values[1]! / t - 1)).toBeLessThan(4 * EPS);
    }
    expect(() => eighJacobi(Float64Array.from([1, NaN, NaN, 1]), 2)).toThrow(
      'E_VALUE: eighJacobi: a has a non-finite value (NaN or ±Infinity)',
    );
    expect(() => eighJacobi(new Float64Array(1), -1)).toThrow(/^E_VALUE: eighJacobi: n /);
  });
});
