import { afterAll, describe, expect, it } from 'vitest';
import { Rng, tensor } from '@caldera/core';
import { eigh } from './eigh.js';
import { diffFro, EPS, fro, mul, orthErr, randSym } from './factor-test-util.js';
import { defaultExecutor } from './pool/default.js';
import { createPool, poolExecutor } from './pool/pool.js';
import {
  backTransformBlocked,
  fullReflectors,
  packReflectors,
  symvLower,
  tridiagonalizeBlocked,
  tridiagonalQL,
} from './tridiag.js';
import { secularRootsRef, tridiagonalDC } from './tridiag-dc.js';
import { createEngine, ensureMemory, HEAP_BASE } from './wasm/engine.js';

const engine = createEngine(false)!;
const pool = createPool({ threads: 2 });
afterAll(() => pool.dispose());

it('the pool these tests use really has a worker (the caller and one more thread)', () => {
  expect(pool.threads).toBe(2);
});

/** Random row-major buffer (upper triangle filled with NaN: the kernels must not read it). */
function lowerWithNanAbove(n: number, ld: number, seed: number): Float64Array {
  const a = new Rng(seed).fillNormal(new Float64Array(n * ld));
  for (let i = 0; i < n; i++) for (let j = i + 1; j < ld; j++) a[i * ld + j] = NaN;
  return a;
}

/** The plain O(n²) loop p = A·v over the symmetric matrix whose lower triangle is given, and Σ|A||v|. */
function plainSymv(a: Float64Array, ld: number, n: number, v: Float64Array): [Float64Array, Float64Array] {
  const p = new Float64Array(n);
  const abs = new Float64Array(n);
  for (let i = 0; i < n; i++)
    for (let q = 0; q < n; q++) {
      const x = i >= q ? a[i * ld + q]! : a[q * ld + i]!;
      p[i]! += x * v[q]!;
      abs[i]! += Math.abs(x * v[q]!);
    }
  return [p, abs];
}

describe('dsymvLowerRows (WebAssembly SIMD symmetric matrix–vector product)', () => {
  // Sizes around the 4-row passes and the f64x2 width (odd, even, 1×1), leading dimensions with and without
  // padding, and an odd element offset so that the rows are not 16-byte aligned.
  for (const [n, pad, shift] of [
    [1, 0, 0],
    [2, 0, 0],
    [3, 1, 1],
    [4, 0, 0],
    [5, 3, 1],
    [7, 2, 0],
    [8, 0, 1],
    [9, 1, 0],
    [31, 5, 1],
    [64, 4, 0],
    [129, 3, 1],
  ] as const) {
    it(`matches the plain loop and the TypeScript reference, n = ${n}, lda = n + ${pad}, offset ${shift}`, () => {
      const ld = n + pad;
      const a = lowerWithNanAbove(n, ld, n);
      const v = new Rng(n + 1).fillNormal(new Float64Array(n));
      const aOff = HEAP_BASE + shift * 8;
      const vOff = HEAP_BASE + 8 * (n * ld + 8) + 16;
      const pOff = vOff + 8 * (n + 2);
      const p2Off = pOff + 8 * (n + 2);
      ensureMemory(engine, p2Off + 8 * (n + 2), 'test');
      const mem = new Float64Array(engine.memory.buffer);
      mem.set(a, aOff / 8);
      mem.set(v, vOff / 8);
      mem.fill(NaN, pOff / 8, pOff / 8 + n); // the kernel zeroes its output
      engine.exports.dsymvLowerRows(aOff, ld, 0, n, vOff, pOff);
      const got = mem.slice(pOff / 8, pOff / 8 + n);
      // two row ranges into separate outputs, summed (the pool's split)
      const mid = n >> 1;
      engine.exports.dsymvLowerRows(aOff, ld, 0, mid, vOff, pOff);
      engine.exports.dsymvLowerRows(aOff, ld, mid, n, vOff, p2Off);
      const split = new Float64Array(n);
      for (let i = 0; i < n; i++) split[i] = (i < mid ? mem[pOff / 8 + i]! : 0) + mem[p2Off / 8 + i]!;
      // the TypeScript reference reads a row-major block with leading dimension ld at offset o = 0
      const ref = new Float64Array(n);
      symvLower(a, ld, 0, n, v, ref);
      const [plain, abs] = plainSymv(a, ld, n, v);
      for (let i = 0; i < n; i++) {
        // Each is a sum of the same n products in a different order: |error| ≤ γₙ·Σ|aᵢq·v_q| for each, so
        // two of them differ by at most 2·n·eps·Σ|aᵢq·v_q|.
        const tol = 2 * n * EPS * abs[i]!;
        expect(Math.abs(got[i]! - plain[i]!)).toBeLessThanOrEqual(tol);
        expect(Math.abs(split[i]! - plain[i]!)).toBeLessThanOrEqual(tol);
        expect(Math.abs(ref[i]! - plain[i]!)).toBeLessThanOrEqual(tol);
      }
    });
  }
});

describe('dlatrd panel kernels', () => {
  // x = [V | W] with row stride 2·nb; c columns of each in use (odd and even c, nb not a multiple of 2)
  for (const [n, nb, c, j] of [
    [9, 5, 1, 2],
    [17, 5, 4, 3],
    [40, 32, 31, 6],
    [40, 8, 7, 0],
  ] as const)
    it(`dlatrdColumn and dlatrdCorrect match plain loops (n = ${n}, nb = ${nb}, c = ${c})`, () => {
      const rng = new Rng(n * 31 + c);
      const ld = n + 3;
      const x = rng.fillNormal(new Float64Array(n * 2 * nb));
      const a = rng.fillNormal(new Float64Array(n * ld));
      const v = rng.fillNormal(new Float64Array(n));
      const p = rng.fillNormal(new Float64Array(n));
      const aOff = HEAP_BASE;
      const xOff = aOff + 8 * n * ld + 8; // odd element offset: unaligned rows
      const vOff = xOff + 8 * n * 2 * nb;
      const pOff = vOff + 8 * n;
      const uOff = pOff + 8 * n;
      ensureMemory(engine, uOff + 16 * nb, 'test');
      const mem = new Float64Array(engine.memory.buffer);
      mem.set(a, aOff / 8);
      mem.set(x, xOff / 8);
      mem.set(v, vOff / 8);
      mem.set(p, pOff / 8);
      const V = (i: number, q: number): number => x[i * 2 * nb + q]!;
      const W = (i: number, q: number): number => x[i * 2 * nb + nb + q]!;
      engine.exports.dlatrdColumn(aOff, ld, xOff, nb, c, j, n);
      for (let i = 0; i < n; i++) {
        let s = 0;
        let abs = 0;
        for (let q = 0; q < c && i >= j; q++) {
          s += V(i, q) * W(j, q) + W(i, q) * V(j, q);
          abs += Math.abs(V(i, q) * W(j, q)) + Math.abs(W(i, q) * V(j, q));
        }
        const want = a[i * ld + j]! - s;
        // a sum of 2c products in another order: within 2·(2c + 1)·eps·Σ|terms| of each other
        expect(Math.abs(mem[aOff / 8 + i * ld + j]! - want)).toBeLessThanOrEqual(
          2 * (2 * c + 1) * EPS * (abs + Math.abs(a[i * ld + j]!)),
        );
      }
      const o = j + 1;
      const len = n - o;
      engine.exports.dlatrdCorrect(xOff, nb, c, o, len, vOff, pOff, uOff);
      const t1 = new Float64Array(c);
      const t2 = new Float64Array(c);
      const t1abs = new Float64Array(c);
      const t2abs = new Float64Array(c);
      for (let i = 0; i < len; i++)
        for (let q = 0; q < c; q++) {
          t1[q]! += W(o + i, q) * v[i]!;
          t2[q]! += V(o + i, q) * v[i]!;
          t1abs[q]! += Math.abs(W(o + i, q) * v[i]!);
          t2abs[q]! += Math.abs(V(o + i, q) * v[i]!);
        }
      for (let i = 0; i < len; i++) {
        let s = 0;
        let abs = Math.abs(p[i]!);
        for (let q = 0; q < c; q++) {
          s += V(o + i, q) * t1[q]! + W(o + i, q) * t2[q]!;
          abs += Math.abs(V(o + i, q)) * t1abs[q]! + Math.abs(W(o + i, q)) * t2abs[q]!;
        }
        // inner sums of len terms, then row sums of 2c + 1 terms, each in another order: both results are
        // within γ_{len+2c+1}·Σ|V|·Σ|Wv| + … of the exact value, so they differ by at most twice that
        expect(Math.abs(mem[pOff / 8 + i]! - (p[i]! - s))).toBeLessThanOrEqual(
          2 * (len + 2 * c + 1) * EPS * abs,
        );
      }
    });
});

describe('tridiagonalisation in WebAssembly memory', () => {
  for (const [n, threads] of [
    [97, 1],
    [250, 1],
    [301, 2],
    [420, 2],
  ] as const)
    it(`gives a tridiagonal T with the reference's eigenvalues, n = ${n}, ${threads} thread(s)`, () => {
      const a = randSym(n, 7 + n);
      const ref = tridiagonalizeBlocked(a.slice(), n, undefined, undefined, 32, true);
      const got = tridiagonalizeBlocked(a.slice(), n, threads > 1 ? pool : undefined);
      const eigs = (t: { d: Float64Array; e: Float64Array }): Float64Array => {
        const d = t.d.slice();
        tridiagonalQL(d, t.e.slice(), n);
        return d.sort();
      };
      const lr = eigs(ref);
      const lg = eigs(got);
      // Both reductions are backward stable (T = Qᵀ(A + E)Q, ‖E‖ ≤ c·n·eps·‖A‖) and QL adds the same kind
      // of error, so by Weyl each spectrum is within that of A's; 2·n·eps·‖A‖_F leaves ample headroom
      // (the entries of T themselves are not compared: they are not well conditioned functions of A).
      for (let i = 0; i < n; i++) expect(Math.abs(lg[i]! - lr[i]!)).toBeLessThan(2 * n * EPS * fro(a));
    });

  it('eigh with a 2-thread pool: A = VΛVᵀ, VᵀV = I', () => {
    const n = 333;
    const a = randSym(n, 11);
    const { values, vectors } = eigh(tensor('f64', [n, n], a), { pool });
    const v = vectors.data;
    const vl = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) vl[i * n + j] = v[i * n + j]! * values[j]!;
    // the same bounds as eigh.test.ts (backward-stable reduction + divide and conquer)
    expect(diffFro(mul(vl, v, n, n, n, false, true), a)).toBeLessThan(2 * n * EPS * fro(a));
    expect(orthErr(v, n, n)).toBeLessThan(2 * n * EPS);
  });
});

describe('aborting the WebAssembly paths', () => {
  it('an abort in any phase throws E_ABORTED and leaves the executor usable', () => {
    const n = 200;
    const a = tensor('f64', [n, n], randSym(n, 21));
    const ok = eigh(a);
    for (const phase of ['tridiagonalize', 'iterate', 'backTransform'] as const) {
      for (const p of [undefined, pool]) {
        const ac = new AbortController();
        expect(() =>
          eigh(a, {
            ...(p ? { pool: p } : {}),
            signal: ac.signal,
            onProgress: (e) => {
              if (e.phase === phase) ac.abort();
            },
          }),
        ).toThrow(/abort/i);
        // the scratch memory was released: the executor is not left busy (a busy one would be silently replaced by a
        // fresh single-threaded executor, so agreeing results alone would not show it), and the same call agrees
        expect(p ? poolExecutor(p).busy : defaultExecutor()!.busy).toBe(false);
        const again = eigh(a, p ? { pool: p } : {});
        for (let i = 0; i < n; i++) expect(again.values[i]).toBeCloseTo(ok.values[i]!, 10);
      }
    }
  });
});

describe('back-transformation in WebAssembly memory', () => {
  // odd n (partial 4-column panels and 4-row tiles), block sizes that leave a last block of b % 4 ≠ 0
  for (const [n, nb, threads] of [
    [3, 64, 1],
    [5, 64, 1],
    [131, 64, 1],
    [130, 24, 2],
    [301, 64, 2],
  ] as const)
    it(`Q·Y matches the TypeScript reference, n = ${n}, nb = ${nb}, ${threads} thread(s)`, () => {
      const a = randSym(n, 3 + n);
      const w = a.slice();
      const { taus } = tridiagonalizeBlocked(w, n, undefined, undefined, 32, true);
      const y0 = new Rng(n).fillNormal(new Float64Array(n * n));
      const ref = y0.slice();
      backTransformBlocked(fullReflectors(w, n), taus, n, ref, undefined, undefined, nb, true);
      const got = y0.slice();
      backTransformBlocked(packReflectors(w, n), taus, n, got, threads > 1 ? pool : undefined, undefined, nb);
      // Both apply the same n − 2 reflectors in the same blocks; each is backward stable, Q·(Y + ΔY) with
      // ‖ΔY‖_F ≤ c·n·eps·‖Y‖_F (Higham, Lemma 19.3), so 4·n·eps·‖Y‖_F bounds their difference. (With the same
      // kernel and block sizes they even agree bit for bit today; the bound does not rely on that.)
      expect(diffFro(got, ref)).toBeLessThan(4 * n * EPS * fro(y0));
    });
});

describe('secularRoots (WebAssembly) against the TypeScript reference', () => {
  for (const k of [1, 2, 3, 16, 37, 300])
    it(`K = ${k}: every root in its interval and within 1e-12 of the interval's width of the reference`, () => {
      const rng = new Rng(k);
      const dk = Float64Array.from({ length: k }, () => rng.normal()).sort();
      const z2 = Float64Array.from({ length: k }, () => rng.uniform() + 1e-3);
      let zz = 0;
      for (const x of z2) zz += x;
      const rho = 0.5 + rng.uniform();
      const o1 = new Int32Array(k);
      const t1 = new Float64Array(k);
      secularRootsRef(dk, z2, k, rho, zz, o1, t1);
      const base = HEAP_BASE;
      ensureMemory(engine, base + 32 * (k + 2), 'test');
      const mem = new Float64Array(engine.memory.buffer);
      mem.set(dk, base / 8);
      mem.set(z2, base / 8 + k + 1);
      const oOff = base + 8 * (2 * k + 2);
      const tOff = oOff + 8 * k;
      engine.exports.secularRoots(base, base + 8 * (k + 1), k, rho, zz, 0, k, oOff, tOff);
      for (let j = 0; j < k; j++) {
        const lw = dk[mem[oOff / 8 + j]!]! + mem[tOff / 8 + j]!;
        const lr = dk[o1[j]!]! + t1[j]!;
        const right = j < k - 1 ? dk[j + 1]! : dk[j]! + rho * zz;
        expect(lw).toBeGreaterThan(dk[j]!);
        expect(lw).toBeLessThanOrEqual(right);
        // both stop at a rounding-level residual; the roots' difference is a sanity bound far above the
        // observed ulps and far below what a wrong root (another interval, a bisection left unfinished) gives
        expect(Math.abs(lw - lr)).toBeLessThanOrEqual(1e-12 * (right - dk[j]!));
      }
    });
});

describe('divide and conquer with bounded scratch', () => {
  it('the blocked merge product (small budget) gives the same decomposition', () => {
    const n = 300;
    const rng = new Rng(5);
    const d = rng.fillNormal(new Float64Array(n));
    const e = rng.fillNormal(new Float64Array(n));
    e[n - 1] = 0;
    const full = tridiagonalDC(d, e, n);
    // 4096 values: U is built 13 columns at a time at the top merge and the product runs 13 rows at a time
    const small = tridiagonalDC(d, e, n, undefined, undefined, 4096);
    let tn = 0;
    for (let i = 0; i < n; i++) tn += d[i]! ** 2 + 2 * e[i]! ** 2;
    tn = Math.sqrt(tn);
    for (let i = 0; i < n; i++) expect(Math.abs(small.lam[i]! - full.lam[i]!)).toBeLessThan(n * EPS * tn);
    // T·q_j = λ_j·q_j for every column, to O(n·eps·‖T‖)
    const q = small.q;
    let res = 0;
    for (let j = 0; j < n; j++)
      for (let i = 0; i < n; i++) {
        let s = d[i]! * q[i * n + j]! - small.lam[j]! * q[i * n + j]!;
        if (i > 0) s += e[i - 1]! * q[(i - 1) * n + j]!;
        if (i + 1 < n) s += e[i]! * q[(i + 1) * n + j]!;
        res += s * s;
      }
    expect(Math.sqrt(res)).toBeLessThan(2 * n * EPS * tn);
    expect(orthErr(q, n, n)).toBeLessThan(2 * n * EPS);
  });

  // The WebAssembly merge product packs the same rows, builds the same U′ values (same expression) and runs
  // the same dgemmPanels K blocks per element as gemmInto on the JavaScript buffers, so with the default
  // budget (every gemmInto product large enough for the kernels) the decompositions are equal bit for bit.
  // Small budgets make gemmInto's products small enough for its TypeScript loop, which rounds differently:
  // then each product element (a row of Q, norm ≤ 1, times a unit column of U) may differ by the dot
  // product's error bound, k·eps with k ≤ n, and the eigenvalues computed from those rows by n·eps·‖T‖.
  // A layout bug (wrong panel, row or column) gives O(1) differences.
  it.each([
    ['default executor, default budget', 300, undefined, false, false],
    ['default executor, 4096 values (blocks of rows and of U′)', 300, 4096, false, false],
    ['pool, default budget (U′ in 256-column kernel calls)', 700, undefined, true, false],
    ['pool, 5000 values', 517, 5000, true, false],
    ['pool, 600 values (blocks of a few rows and columns)', 130, 600, true, false],
    ['pool, heavy deflation (all three column groups)', 400, undefined, true, true],
  ] as const)(
    'the merge product in wasm memory equals the TypeScript one (%s)',
    (_, n, budget, usePool, deflating) => {
      const rng = new Rng(n);
      let d: Float64Array;
      let e: Float64Array;
      if (deflating) {
        // a random tridiagonal (its halves' eigenvectors are localised: most of z deflates) with a repeated
        // stretch (rotations between the halves)
        d = rng.fillNormal(new Float64Array(n));
        e = rng.fillNormal(new Float64Array(n));
        e[n - 1] = 0;
        for (let i = 40; i < 60; i++) d[i] = 1;
        for (let i = 40; i < 60; i++) e[i] = 0;
      } else {
        // the tridiagonal of a random dense matrix: little deflation, K ≈ n at the top merge
        ({ d, e } = tridiagonalizeBlocked(rng.fillNormal(new Float64Array(n * n)), n, pool));
      }
      const p = usePool ? pool : undefined;
      const wasm = tridiagonalDC(d, e, n, p, undefined, budget);
      const ref = tridiagonalDC(d, e, n, p, undefined, budget, undefined, true);
      let diff = 0;
      for (let i = 0; i < n * n; i++) diff = Math.max(diff, Math.abs(wasm.q[i]! - ref.q[i]!));
      if (budget === undefined) {
        expect(wasm.lam).toEqual(ref.lam);
        expect(diff).toBe(0);
      } else {
        let tn = 0;
        for (let i = 0; i < n; i++) tn += d[i]! ** 2 + 2 * e[i]! ** 2;
        tn = Math.sqrt(tn);
        for (let i = 0; i < n; i++) expect(Math.abs(wasm.lam[i]! - ref.lam[i]!)).toBeLessThan(n * EPS * tn);
        expect(diff).toBeLessThan(n * EPS);
      }
    },
  );

  it('eigh with a pool whose memory cannot grow (a browser cap): every phase fits or takes its TypeScript path', () => {
    const n = 300;
    const own = createPool({ threads: 2 });
    try {
      const exec = poolExecutor(own);
      // the host refuses to grow the memory from its first two pages on (RangeError, as browsers throw)
      exec.engine.memory.grow = () => {
        throw new RangeError('WebAssembly.Memory.grow(): maximum memory size exceeded');
      };
      const a = randSym(n, 12);
      const { values, vectors } = eigh(tensor('f64', [n, n], a), { pool: own });
      const v = vectors.data;
      const vl = new Float64Array(n * n);
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) vl[i * n + j] = v[i * n + j]! * values[j]!;
      // V·Λ·Vᵀ = A and VᵀV = I within the divide and conquer's backward-error bound, as in the tests above
      expect(diffFro(mul(vl, v, n, n, n, false, true), a)).toBeLessThan(2 * n * EPS * fro(a));
      expect(orthErr(v, n, n)).toBeLessThan(2 * n * EPS);
      expect(exec.engine.memory.buffer.byteLength).toBe(2 * 65536);
    } finally {
      own.dispose();
    }
  });

  it('eigh: the divide and conquer works in the memory the reduction left (it does not grow it)', () => {
    const n = 400;
    const own = createPool({ threads: 2 });
    try {
      const exec = poolExecutor(own);
      const sizes: Record<string, number> = {};
      const a = tensor('f64', [n, n]);
      new Rng(9).fillNormal(a.data);
      // symmetric (eigh refuses anything else): the lower triangle mirrored
      for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) a.data[j * n + i] = a.data[i * n + j]!;
      eigh(a, {
        pool: own,
        onProgress: ({ phase, fraction }) => {
          if (fraction === 0) sizes[phase] = exec.engine.memory.buffer.byteLength;
        },
      });
      // the reduction holds the n × n matrix there: at least n² doubles for the merge products
      expect(sizes.iterate!).toBeGreaterThanOrEqual(HEAP_BASE + 8 * n * n);
      expect(sizes.backTransform).toBe(sizes.iterate);
    } finally {
      own.dispose();
    }
  });
});
