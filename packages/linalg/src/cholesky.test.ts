import { describe, expect, it } from 'vitest';
import { isCalderaError, Rng, tensor, type Tensor } from '@caldera/core';
import { cholesky, choleskyWithInfo } from './cholesky.js';
import { blockLDL, blockLDLFromCholesky } from './ldl.js';
import { gemmInto } from './gemm.js';
import { createPool, type Pool } from './pool/pool.js';
import { expectAbortable } from './abort-test-util.js';

/** A = GᵀG/k + εI with a seeded G (k × n): SPD, condition number controlled by k and ε. */
function spd(n: number, seed: number, eps = 1e-3, k = n + 3): Tensor<'f64'> {
  const rng = new Rng(seed);
  const g = rng.fillNormal(new Float64Array(k * n));
  const a = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j <= i; j++) {
      let s = 0;
      for (let r = 0; r < k; r++) s += g[r * n + i]! * g[r * n + j]!;
      a[i * n + j] = a[j * n + i] = s / k + (i === j ? eps : 0);
    }
  return tensor('f64', [n, n], a);
}

/**
 * The factor with one trailing update per panel (the code before updates were grouped): unblocked diagonal block,
 * the panel solved in groups of 16 columns (a product, then substitution), then A₂₂ −= L₂₁·L₂₁ᵀ on the lower triangle.
 */
function perPanelCholesky(a: Float64Array, n: number, nb: number, pool: Pool): Float64Array {
  const w = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) w[i * n + j] = a[i * n + j]!;
  const view = (r0: number, rows: number, c0: number, cols: number): Tensor<'f64'> => ({
    dtype: 'f64',
    shape: [rows, cols],
    strides: [n, 1],
    offset: r0 * n + c0,
    data: w,
  });
  const minus = { transB: true, alpha: -1, beta: 1, checkFinite: false, pool };
  for (let k = 0; k < n; k += nb) {
    const b = Math.min(nb, n - k);
    for (let j = k; j < k + b; j++) {
      let d = w[j * n + j]!;
      for (let p = k; p < j; p++) d -= w[j * n + p]! * w[j * n + p]!;
      w[j * n + j] = Math.sqrt(d);
      for (let i = j + 1; i < k + b; i++) {
        let s = w[i * n + j]!;
        for (let p = k; p < j; p++) s -= w[i * n + p]! * w[j * n + p]!;
        w[i * n + j] = s * (1 / w[j * n + j]!);
      }
    }
    const rest = n - k - b;
    if (rest === 0) break;
    for (let jb = k; jb < k + b; jb += 16) {
      const bw = Math.min(16, k + b - jb);
      if (jb > k)
        gemmInto(view(k + b, rest, jb, bw), view(k + b, rest, k, jb - k), view(jb, bw, k, jb - k), minus);
      for (let i = k + b; i < n; i++)
        for (let j = jb; j < jb + bw; j++) {
          let s = w[i * n + j]!;
          for (let p = jb; p < j; p++) s -= w[i * n + p]! * w[j * n + p]!;
          w[i * n + j] = s / w[j * n + j]!;
        }
    }
    const l21 = view(k + b, rest, k, b);
    gemmInto(view(k + b, rest, k + b, rest), l21, l21, { ...minus, triangle: 'lower' });
  }
  return w;
}

function maxAbs(x: Float64Array): number {
  return x.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
}

describe('cholesky', () => {
  for (const n of [1, 7, 129, 300]) {
    it(`reconstructs A = LLᵀ for n = ${n} (blocked across panels of 128)`, () => {
      const a = spd(n, n);
      const l = cholesky(a, { blockSize: 128 }).data;
      const r = new Float64Array(n * n);
      for (let i = 0; i < n; i++)
        for (let j = 0; j < n; j++) {
          let s = 0;
          for (let p = 0; p <= Math.min(i, j); p++) s += l[i * n + p]! * l[j * n + p]!;
          r[i * n + j] = s - a.data[i * n + j]!;
        }
      for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) expect(l[i * n + j]).toBe(0);
      // backward stability of Cholesky: ‖LLᵀ − A‖ ≤ c·n·eps·‖A‖; c = 4 is generous
      expect(maxAbs(r)).toBeLessThan(4 * n * 2.2e-16 * maxAbs(a.data) + 1e-300);
    });
  }

  // groups of 4 panels share one trailing update: n = 1100 takes groups of 512 columns (two full, one of 76) with
  // panels of 128, and 9 groups of 128 with panels of 32 (not the kernel's k-block: sums grouped otherwise)
  for (const [n, blockSize] of [
    [1100, 128],
    [1100, 32],
  ] as const) {
    it(`reconstructs A = LLᵀ for n = ${n} across groups of 4 panels of ${blockSize}, with a pool`, () => {
      const a = spd(n, 7, 1e-3, 40); // rank 40 + εI: condition ~1e3·n/40
      const pool = createPool({ threads: 2 });
      try {
        const l = cholesky(a, { blockSize, pool }).data;
        let err = 0;
        for (let i = 0; i < n; i++) {
          for (let j = i + 1; j < n; j++) if (l[i * n + j] !== 0) throw new Error(`L(${i}, ${j}) is not 0`);
          for (let j = 0; j <= i; j++) {
            let s = 0; // (LLᵀ)ᵢⱼ by scalar sums, independent of the kernels
            for (let p = 0; p <= j; p++) s += l[i * n + p]! * l[j * n + p]!;
            err = Math.max(err, Math.abs(s - a.data[i * n + j]!));
          }
        }
        // as above: ‖LLᵀ − A‖ ≤ c·n·eps·‖A‖ with c = 4
        expect(err).toBeLessThan(4 * n * 2.2e-16 * maxAbs(a.data));
      } finally {
        pool.dispose();
      }
    });
  }

  it('gives the bits of one trailing update per panel (panels of 128, the kernel k-block; sizes multiples of 8)', () => {
    // the kernel applies a product's 128-column k-blocks to C one after another, as the per-panel updates did
    const pool = createPool({ threads: 2 });
    try {
      for (const n of [904, 1100 - 4]) {
        const a = spd(n, 11, 1e-3, 48);
        const want = perPanelCholesky(a.data as Float64Array, n, 128, pool);
        const got = cholesky(a, { pool }).data;
        let diffs = 0;
        for (let i = 0; i < n * n; i++) if (got[i] !== want[i]) diffs++;
        expect(diffs, `n = ${n}`).toBe(0);
      }
    } finally {
      pool.dispose();
    }
  });

  it('names the pivot of a failure in a later group of panels (global index)', () => {
    // blockSize 2: groups of 8 columns; a negative diagonal entry at 13 (group 1, panel 2) fails at pivot 13
    const n = 20;
    const d = new Float64Array(n * n);
    for (let i = 0; i < n; i++) d[i * n + i] = i === 13 ? -1 : 2;
    expect(() => cholesky(tensor('f64', [n, n], d), { blockSize: 2 })).toThrow(/pivot 13 ≤ 0/);
  });

  it('rejects a matrix that is not positive definite with E_NOT_PD, naming the pivot', () => {
    const a = tensor('f64', [3, 3], [1, 0, 0, 0, -1, 0, 0, 0, 1]);
    try {
      cholesky(a);
      expect.unreachable();
    } catch (e) {
      expect(isCalderaError(e, 'E_NOT_PD')).toBe(true);
      expect(String(e)).toMatch(/pivot 1/);
    }
  });

  it('with jitter, factors a singular PSD matrix and reports the jitter used', () => {
    const a = tensor('f64', [2, 2], [1, 1, 1, 1]); // rank 1
    const { l, jitter } = choleskyWithInfo(a, { jitter: true });
    expect(jitter).toBeGreaterThan(0);
    expect(l.data[0]! ** 2).toBeCloseTo(1 + jitter, 12);
  });

  it('jitter: a number is the first δ; true starts at 1e-10·mean(diag A) (1 for a zero mean), ×10 per try, 12 tries', () => {
    // L·Lᵀ against A + δI by brute force: 2 × 2, one rounding per entry of a value ≤ 12, so 1e-14 absolute
    const factors = (a: number[], jitter: boolean | number, want: number) => {
      const r = choleskyWithInfo(tensor('f64', [2, 2], a), { jitter });
      // δ is 1e-10·mean, then 10·δ per try: the same products here, each rounded, so 1e-12 relative
      expect(Math.abs(r.jitter - want)).toBeLessThan(1e-12 * want);
      const l = r.l.data;
      const llt = [l[0]! * l[0]!, l[0]! * l[2]!, l[2]! * l[0]!, l[2]! * l[2]! + l[3]! * l[3]!];
      const target = [a[0]! + r.jitter, a[2]!, a[2]!, a[3]! + r.jitter];
      for (let i = 0; i < 4; i++)
        expect(Math.abs(llt[i]! - target[i]!)).toBeLessThan(1e-14 * (1 + Math.abs(target[i]!)));
      expect(l[1]).toBe(0);
    };
    factors([1, 1, 1, 1], 0.5, 0.5); // singular: the given δ on the first retry
    // eigenvalues 1 and −1e-7 (mean diag ≈ 0.5): 5e-11, …, 5e-8 too small, 5e-7 the fifth try
    factors([1, 0, 0, -1e-7], true, 1e-10 * ((1 - 1e-7) / 2) * 1e4);
    factors([0, 0, 0, 0], true, 1e-10); // an all-zero A: mean 0 is taken as 1 (δ = 0 would never help)
    // eigenvalues 10.5 and −8.5 (mean diag 1): δ = 1e-10·10¹¹ = 10, the twelfth and last try, is enough
    factors([1, 9.5, 9.5, 1], true, 10);
    // eigenvalue −99: not even δ = 10 is; E_NOT_PD says the last δ tried
    try {
      choleskyWithInfo(tensor('f64', [2, 2], [1, 100, 100, 1]), { jitter: true });
      expect.unreachable();
    } catch (e) {
      expect(isCalderaError(e, 'E_NOT_PD')).toBe(true);
      const d = (e as { details: { jitter: number } }).details.jitter;
      expect(Math.abs(d - 10)).toBeLessThan(1e-12 * 10);
      expect(String(e)).toMatch(/pivot 1 ≤ 0 with jitter 10/);
    }
  });

  it('rejects non-finite input with E_VALUE', () => {
    expect(() => cholesky(tensor('f64', [2, 2], [1, 0, NaN, 1]))).toThrow(/E_VALUE/);
  });

  it('rejects a blockSize or jitter that is not usable with E_VALUE (blockSize 0 used to loop forever)', () => {
    const a = tensor('f64', [2, 2], [2, 1, 1, 2]);
    for (const blockSize of [0, -1, 2.5, NaN])
      expect(() => cholesky(a, { blockSize })).toThrow(/E_VALUE: cholesky: blockSize/);
    for (const jitter of [0, -1, NaN, Infinity])
      expect(() => cholesky(a, { jitter })).toThrow(/E_VALUE: cholesky: jitter/);
    expect(() => blockLDL(a, 2, { blockSize: 0 })).toThrow(/E_VALUE/);
    expect(() => blockLDL(null as never, 2)).toThrow(/E_VALUE: blockLDL: h is not a tensor/);
  });

  it('takes a signal, checked between panels, inside them and in the trailing updates; same bits when not aborted', () => {
    const a = spd(300, 4);
    const opts = (signal?: AbortSignal) => ({ blockSize: 64, ...(signal ? { signal } : {}) });
    // 5 panels of 64 (checks before each, and between its 16-column groups) and 4 trailing updates on the wasm gemm
    expect(expectAbortable('cholesky', (signal) => cholesky(a, opts(signal)))).toBeGreaterThanOrEqual(20);
    expectAbortable('cholesky', (signal) => choleskyWithInfo(a, opts(signal)));
    // one panel (blockSize ≥ n): checked every 16 columns inside it
    const b = spd(100, 5);
    expectAbortable('cholesky', (signal) => cholesky(b, signal ? { signal } : {}), 6);
    // the jitter retries check too
    const r = new Rng(6).fillNormal(new Float64Array(100 * 60));
    const psd = new Float64Array(100 * 100); // rank 60
    for (let i = 0; i < 100; i++)
      for (let j = 0; j <= i; j++) {
        let s = 0;
        for (let p = 0; p < 60; p++) s += r[i * 60 + p]! * r[j * 60 + p]!;
        psd[i * 100 + j] = psd[j * 100 + i] = s;
      }
    const singular = tensor('f64', [100, 100], psd);
    expect(choleskyWithInfo(singular, { jitter: true, blockSize: 32 }).jitter).toBeGreaterThan(0);
    expectAbortable('cholesky', (signal) =>
      choleskyWithInfo(singular, { jitter: true, blockSize: 32, ...(signal ? { signal } : {}) }),
    );
  });
});

describe('blockLDL', () => {
  it('H = L·blockdiag(D)·Lᵀ with L unit block-lower-triangular (n = 48, b = 8)', () => {
    const n = 48;
    const b = 8;
    const h = spd(n, 3, 1e-2, 20); // ill-conditioned: rank-20 Gram + 1e-2
    const { L, D } = blockLDL(h, b);
    const l = L.data;
    const d = D.data;
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) {
        const bi = Math.floor(i / b);
        const bj = Math.floor(j / b);
        if (bj > bi) expect(l[i * n + j]).toBe(0);
        if (bi === bj) expect(l[i * n + j]).toBe(i === j ? 1 : 0);
      }
    let err = 0;
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let k = 0; k < n / b; k++)
          for (let p = 0; p < b; p++)
            for (let q = 0; q < b; q++)
              s += l[i * n + k * b + p]! * d[k * b * b + p * b + q]! * l[j * n + k * b + q]!;
        err = Math.max(err, Math.abs(s - h.data[i * n + j]!));
      }
    // error grows with κ(Cᵢᵢ) of the inverted blocks; 1e-10 ≫ eps·n·κ for κ ≲ 1e3 here
    expect(err).toBeLessThan(1e-10);
  });

  it('rejects sizes that are not a multiple of b', () => {
    expect(() => blockLDL(spd(10, 1), 8)).toThrow(/E_SHAPE/);
  });

  it('rejects a block size that is not a positive integer with E_VALUE, not as a size mismatch', () => {
    // before: E_SHAPE "size 3 is not a multiple of the block size 0" for b = 0, −3 or 1.5
    const h = spd(3, 1);
    const c = cholesky(h);
    for (const b of [0, -3, 1.5, NaN]) {
      expect(() => blockLDL(h, b)).toThrow(
        new RegExp(`^E_VALUE: blockLDL: block size b must be an integer ≥ 1, got ${b}$`),
      );
      expect(() => blockLDLFromCholesky(c, b)).toThrow(/^E_VALUE: blockLDLFromCholesky: block size b /);
    }
    expect(() => blockLDL(h, '3' as never)).toThrow(/E_VALUE: blockLDL: block size b .* got 3/);
    expect(blockLDL(h, 3).D.shape).toEqual([1, 3, 3]);
  });

  it('blockLDLFromCholesky refuses a non-finite entry below the diagonal (it spread NaN through L, silently)', () => {
    const c = cholesky(spd(8, 2));
    for (const bad of [NaN, Infinity]) {
      const d = Float64Array.from(c.data);
      d[5 * 8 + 2] = bad;
      expect(() => blockLDLFromCholesky(tensor('f64', [8, 8], d), 4)).toThrow(
        `E_VALUE: blockLDLFromCholesky: c has entry ${bad} at (5, 2)`,
      );
    }
    // above the diagonal nothing is read: a NaN there changes nothing
    const d = Float64Array.from(c.data);
    d[2 * 8 + 5] = NaN;
    expect(blockLDLFromCholesky(tensor('f64', [8, 8], d), 4).L.data).toEqual(
      blockLDLFromCholesky(c, 4).L.data,
    );
  });

  it('takes a signal (Cholesky and per block), aborts naming blockLDL; same bits when not aborted', () => {
    const h = spd(96, 6);
    // entry, 1 + 5 inside the single Cholesky panel, 12 blocks
    const checks = expectAbortable('blockLDL', (signal) => blockLDL(h, 8, signal ? { signal } : {}));
    expect(checks).toBeGreaterThan(12);
    const big = spd(256, 7);
    expectAbortable('blockLDL', (signal) =>
      blockLDL(big, 16, { blockSize: 64, ...(signal ? { signal } : {}) }),
    );
  });

  it('blockLDLFromCholesky gives blockLDL bit for bit from the same Cholesky factor; f32 L is that L rounded once', () => {
    const n = 200; // two Cholesky panels of 128, 25 blocks
    const h = spd(n, 11, 1e-2, 60);
    const ref = blockLDL(h, 8);
    const c = cholesky(h);
    const f64 = blockLDLFromCholesky(c, 8);
    expect(f64.L.dtype).toBe('f64');
    expect(f64.L.data).toEqual(ref.L.data);
    expect(f64.D.data).toEqual(ref.D.data);
    const f32 = blockLDLFromCholesky(c, 8, { dtype: 'f32' });
    expect(f32.L.dtype).toBe('f32');
    expect(f32.L.data).toEqual(Float32Array.from(ref.L.data));
    expect(f32.D.data).toEqual(ref.D.data);
    // and independently of blockLDL: L·blockdiag(D)·Lᵀ gives H back from the f32 L (entries rounded once, 6e-8
    // relative; |L| ≲ 10 here, so 1e-5·max|H| leaves a wide margin over the f32 rounding of the products)
    const l = f32.L.data;
    const d = f32.D.data;
    let err = 0;
    let hmax = 0;
    for (let i = 0; i < n; i++)
      for (let j = 0; j <= i; j++) {
        let s = 0;
        for (let k = 0; k <= Math.floor(j / 8); k++)
          for (let p = 0; p < 8; p++)
            for (let q = 0; q < 8; q++)
              s += l[i * n + k * 8 + p]! * d[k * 64 + p * 8 + q]! * l[j * n + k * 8 + q]!;
        err = Math.max(err, Math.abs(s - h.data[i * n + j]!));
        hmax = Math.max(hmax, Math.abs(h.data[i * n + j]!));
      }
    expect(err).toBeLessThan(1e-5 * hmax);
  });

  it('blockLDLFromCholesky rejects a non-contiguous or non-f64 factor, a zero pivot and a bad block size', () => {
    const c = cholesky(spd(16, 2));
    expect(() => blockLDLFromCholesky(c, 5)).toThrow(
      /E_SHAPE: blockLDLFromCholesky: size 16 is not a multiple/,
    );
    expect(() =>
      blockLDLFromCholesky(tensor('f32', [16, 16], Float32Array.from(c.data)) as never, 8),
    ).toThrow(/E_VALUE: blockLDLFromCholesky: c must be a contiguous f64/);
    const view: Tensor<'f64'> = { ...c, shape: [8, 8], strides: [16, 1] };
    expect(() => blockLDLFromCholesky(view, 8)).toThrow(/contiguous f64 \[8, 8\]/);
    const zero = Float64Array.from(c.data);
    zero[5 * 16 + 5] = 0;
    expect(() => blockLDLFromCholesky(tensor('f64', [16, 16], zero), 8)).toThrow(
      /E_VALUE: blockLDLFromCholesky: c has diagonal entry 0 at \(5, 5\)/,
    );
    expect(() => blockLDLFromCholesky(c, 8, { dtype: 'f16' as never })).toThrow(
      /dtype must be 'f32' or 'f64'/,
    );
    expectAbortable('blockLDLFromCholesky', (signal) => blockLDLFromCholesky(c, 8, signal ? { signal } : {}));
  });
});
