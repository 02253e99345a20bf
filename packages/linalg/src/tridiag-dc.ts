/**
 * Cuppen's divide-and-conquer eigensolver for a symmetric tridiagonal matrix, with Gu–Eisenstat
 * recomputation of the rank-one vector (orthogonal eigenvectors without extra precision) and the LAPACK
 * (dlaed2) deflation rules. The merge products run on the gemm kernels, so the O(n³) part is fast; the
 * small leaves use the implicit QL iteration. Internal to the package (used by {@link eigh}).
 *
 * Memory: every subproblem works in place in its diagonal block of the one n×n output matrix (a merge only
 * permutes and rotates the columns of its block, and overwrites the block row by row with the product).
 * With WebAssembly the merge product runs in the executor's memory: a block of rows of the output is packed
 * there, the rank-one eigenvector matrix U is written there directly in the kernels' B layout and the
 * product rows go from there straight back into the output, so besides the output the solver holds only
 * O(n) vectors; it uses the memory the executor already has (in {@link eigh} the reduction left ≥ n²
 * doubles there) and grows it, when that is less, to at most 3·`budget` values (and 1 GiB) — blocks of rows
 * and of U's columns then bound the scratch. Without WebAssembly (or with `reference`) it holds two
 * scratch buffers of at most `budget` = max(n²/4, 2¹⁶) doubles each (a block of U and a block of product
 * rows) for `gemmInto`.
 */
import { throwIfAborted } from '@caldera/core';
import { gemmInto, resolveExecutor } from './gemm.js';
import type { Executor, Pool } from './pool/pool.js';
import {
  ALPHA,
  APACK,
  BETA,
  BPACK,
  CPTR,
  K as K_SLOT,
  KIND,
  KIND_SECULAR,
  LDC,
  NPI,
} from './pool/protocol.js';
import { tridiagonalQL } from './tridiag.js';
import { panelProduct } from './tridiag-wasm.js';
import { ensureMemory, HEAP_BASE, tryEnsureMemory } from './wasm/engine.js';
import { packPanels } from './wasm/pack.js';
import { roundUp } from './wasm/panel-gemm.js';

/** Leaves of at most this size are solved by QL. */
const LEAF = 32;
const EPS = 2 ** -53;

interface Eig {
  /** ascending eigenvalues */
  lam: Float64Array;
  /** n×n row-major, column j = eigenvector of lam[j] */
  q: Float64Array;
}

/** The output matrix, its order, and the bounded scratch shared by all merges. */
interface Work {
  q: Float64Array;
  n: number;
  /** TypeScript path: a column block of U (rows in group order), at most `budget` values (on first use) */
  ub?: Float64Array;
  /** TypeScript path: a block of product rows, at most `budget` values (on first use) */
  rows?: Float64Array;
  budget: number;
  /** the merge products run in this executor's memory (null: `gemmInto` on `ub` / `rows`) */
  product: Executor | null;
  /** least wasm scratch (values) the merge product may grow the memory to */
  wasmValues: number;
  /** when set (an explicit budget), the wasm scratch of the merge product in values, whatever the memory has */
  wasmMax?: number;
  /** the executor of the secular-equation kernel */
  exec: Executor | null;
  pool: Pool | undefined;
  signal: AbortSignal | undefined;
}

/**
 * Eigenvalues (ascending) and eigenvectors (columns of the returned n×n row-major matrix) of the tridiagonal
 * (d, e) with `e[i] = T[i, i+1]`. `d` and `e` are not modified. `budget` (values per scratch buffer of the
 * TypeScript merge product, default max(n²/4, 2¹⁶)) also bounds the WebAssembly merge product: when given,
 * it uses 3·`budget` values of wasm memory and no more (tests use small ones to exercise the blocked
 * product); by default it uses whatever the executor's memory already holds, or up to min(3·block, the whole
 * product's operands, 2²⁷) values (1 GiB at most). `out` (n² values, overwritten) receives the eigenvectors instead of a new
 * buffer. `reference` runs the merge products through `gemmInto` on JavaScript buffers (the secular
 * equation still uses the WebAssembly kernel); where `gemmInto` runs them on the kernels (all but small
 * products) the WebAssembly product computes every element with the same kernel calls, so the results are
 * the same bit for bit.
 */
export function tridiagonalDC(
  d: Float64Array,
  e: Float64Array,
  n: number,
  pool?: Pool,
  signal?: AbortSignal,
  budget?: number,
  out?: Float64Array,
  reference = false,
): Eig {
  const dd = Float64Array.from(d);
  const q = out ? out.fill(0, 0, n * n) : new Float64Array(n * n);
  const b = budget ?? Math.max(2 ** 16, Math.ceil((n * n) / 4));
  const exec = n > LEAF ? resolveExecutor(pool) : null;
  const work: Work = {
    q,
    n,
    budget: b,
    product: reference ? null : exec,
    wasmValues: 3 * b,
    exec,
    pool,
    signal,
  };
  if (budget !== undefined) work.wasmMax = 3 * budget;
  const lam = solve(dd, e, 0, n, work);
  // ascending order: one permutation of the columns
  const order = Int32Array.from(argsort(lam));
  permuteColumns(q, n, 0, n, order);
  return { lam: Float64Array.from(order, (i) => lam[i]!), q };
}

function argsort(x: Float64Array): number[] {
  return Array.from({ length: x.length }, (_, i) => i).sort((a, b) => x[a]! - x[b]!);
}

/** Columns lo..lo+s of rows lo..lo+s of q: new column c = old column src[c] (one row at a time). */
function permuteColumns(q: Float64Array, n: number, lo: number, s: number, src: Int32Array): void {
  const tmp = new Float64Array(s);
  for (let r = lo; r < lo + s; r++) {
    const row = r * n + lo;
    for (let c = 0; c < s; c++) tmp[c] = q[row + src[c]!]!;
    q.set(tmp, row);
  }
}

/** Solve the block (lo, s) into q[lo.., lo..]; returns its eigenvalues in the order of the block's columns. */
function solve(d: Float64Array, e: Float64Array, lo: number, s: number, work: Work): Float64Array {
  if (s <= LEAF) return leaf(d, e, lo, s, work);
  throwIfAborted(work.signal, 'eigh');
  const k = s >> 1;
  const beta = e[lo + k - 1]!;
  d[lo + k - 1]! -= beta;
  d[lo + k]! -= beta;
  const a = solve(d, e, lo, k, work);
  const b = solve(d, e, lo + k, s - k, work);
  return merge(a, b, lo, k, s, beta, work);
}

function leaf(d: Float64Array, e: Float64Array, lo: number, s: number, work: Work): Float64Array {
  const dd = d.slice(lo, lo + s);
  const ee = new Float64Array(s);
  for (let i = 0; i + 1 < s; i++) ee[i] = e[lo + i]!;
  const zt = new Float64Array(s * s);
  for (let i = 0; i < s; i++) zt[i * s + i] = 1;
  tridiagonalQL(dd, ee, s, zt, work.signal);
  const { q, n } = work;
  for (let c = 0; c < s; c++) for (let r = 0; r < s; r++) q[(lo + r) * n + lo + c] = zt[c * s + r]!;
  return dd;
}

/**
 * Eigen-decomposition of blockdiag(T₁, T₂) + β·v·vᵀ, v = e_{k−1} + e_k, from those of T₁ and T₂ (in the
 * block's columns 0..k−1 and k..s−1, eigenvalues `la`, `lb`). On return the block's first K columns are the
 * eigenvectors from the secular equation, the others the deflated ones.
 */
function merge(
  la: Float64Array,
  lb: Float64Array,
  lo: number,
  k: number,
  s: number,
  beta: number,
  work: Work,
): Float64Array {
  const { q, n } = work;
  const k2 = s - k;
  // z = blockdiag(Q₁, Q₂)ᵀ·v / √2 (unit), ρ = 2β; flip signs so that ρ > 0
  const sgn = beta < 0 ? -1 : 1;
  const rho = 2 * Math.abs(beta);
  const D = new Float64Array(s);
  const z = new Float64Array(s);
  for (let j = 0; j < k; j++) {
    D[j] = sgn * la[j]!;
    z[j] = q[(lo + k - 1) * n + lo + j]! / Math.SQRT2;
  }
  for (let j = 0; j < k2; j++) {
    D[k + j] = sgn * lb[j]!;
    z[k + j] = q[(lo + k) * n + lo + k + j]! / Math.SQRT2;
  }
  // sorted position i ↦ block column perm[i]; Qw = the block's columns in sorted order (not moved yet)
  const perm = argsort(D);
  const ds = Float64Array.from(perm, (i) => D[i]!);
  const zs = Float64Array.from(perm, (i) => z[i]!);
  const part = Uint8Array.from(perm, (src) => (src < k ? 1 : 2));
  let dmax = 0;
  for (const x of ds) dmax = Math.max(dmax, Math.abs(x));
  const tol = 8 * EPS * Math.max(dmax, rho);
  const deflated: number[] = [];
  const nd: number[] = [];
  let prev = -1;
  for (let i = 0; i < s; i++) {
    if (rho * Math.abs(zs[i]!) <= tol) {
      deflated.push(i);
      continue;
    }
    if (prev < 0) {
      prev = i;
      continue;
    }
    const t = Math.hypot(zs[prev]!, zs[i]!);
    const c = zs[i]! / t;
    const sn = zs[prev]! / t;
    if (Math.abs(c * sn * (ds[i]! - ds[prev]!)) <= tol) {
      zs[i] = t;
      zs[prev] = 0;
      const dp = ds[prev]!;
      const di = ds[i]!;
      ds[prev] = c * c * dp + sn * sn * di;
      ds[i] = sn * sn * dp + c * c * di;
      const bits = part[prev]! | part[i]!;
      const r0 = bits & 1 ? lo : lo + k;
      const r1 = bits & 2 ? lo + s : lo + k;
      const cp = lo + perm[prev]!;
      const ci = lo + perm[i]!;
      for (let r = r0; r < r1; r++) {
        const xp = q[r * n + cp]!;
        const xi = q[r * n + ci]!;
        q[r * n + cp] = c * xp - sn * xi;
        q[r * n + ci] = sn * xp + c * xi;
      }
      part[prev] = part[i] = bits;
      deflated.push(prev);
    } else nd.push(prev);
    prev = i;
  }
  if (prev >= 0) nd.push(prev);
  nd.sort((x, y) => ds[x]! - ds[y]!);
  const K = nd.length;
  const dk = Float64Array.from(nd, (i) => ds[i]!);
  const zk = Float64Array.from(nd, (i) => zs[i]!);
  // secular equation 1 + ρ·Σ zⱼ²/(dⱼ − λ) = 0: root j is λⱼ = d[origin[j]] + tau[j]
  const origin = new Int32Array(K);
  const tau = new Float64Array(K);
  let zz = 0;
  for (const x of zk) zz += x * x;
  const z2 = Float64Array.from(zk, (x) => x * x);
  secularRoots(dk, z2, K, rho, zz, origin, tau, work);
  // λⱼ − dᵢ is computed without cancellation as (d_origin(j) − dᵢ) + τⱼ
  const dOrg = Float64Array.from(origin, (o) => dk[o]!);
  // Gu–Eisenstat: ẑ from the computed eigenvalues
  const zh = new Float64Array(K);
  for (let i = 0; i < K; i++) {
    const di = dk[i]!;
    let p = (dOrg[K - 1]! - di + tau[K - 1]!) / rho;
    for (let j = 0; j < i; j++) p *= (dOrg[j]! - di + tau[j]!) / (dk[j]! - di);
    for (let j = i; j < K - 1; j++) p *= (dOrg[j]! - di + tau[j]!) / (dk[j + 1]! - di);
    zh[i] = Math.sqrt(Math.max(p, 0)) * (zk[i]! >= 0 ? 1 : -1);
  }
  // Group the secular equation's columns by where they are nonzero — top block only, both, bottom only
  // (LAPACK dlaed2) — so that the top rows' product reads columns [0, n1 + n3) and the bottom rows'
  // [n1, K): contiguous views, about half the flops of one full product (dlaed3).
  const g: number[] = [];
  for (const bits of [1, 3, 2]) for (let i = 0; i < K; i++) if (part[nd[i]!] === bits) g.push(i);
  let n1 = 0;
  let n3 = 0;
  for (let i = 0; i < K; i++) {
    if (part[nd[i]!] === 1) n1++;
    else if (part[nd[i]!] === 3) n3++;
  }
  // new block layout: columns 0..K−1 = Qw[:, nd[g[t]]], then the deflated columns (in place, row by row)
  const src = new Int32Array(s);
  for (let t = 0; t < K; t++) src[t] = perm[nd[g[t]!]!]!;
  deflated.forEach((i, m) => (src[K + m] = perm[i]!));
  permuteColumns(q, n, lo, s, src);
  const lam = new Float64Array(s);
  for (let j = 0; j < K; j++) lam[j] = sgn * (dk[origin[j]!]! + tau[j]!);
  deflated.forEach((i, m) => (lam[K + m] = sgn * ds[i]!));
  if (K === 0) return lam;
  // norms of the rank-one eigenvectors u_j ∝ ẑᵢ/(dᵢ − λⱼ); where the sum of squares leaves the f64 range (eigenvalues
  // spanning more than ~1e160: it overflowed, and the whole eigenvector came out 0), summed again scaled by its largest
  const inrm = new Float64Array(K);
  for (let j = 0; j < K; j++) {
    let nrm = 0;
    const dj = dOrg[j]!;
    const tj = tau[j]!;
    for (let i = 0; i < K; i++) {
      const v = zh[i]! / (dj - dk[i]! + tj);
      nrm += v * v;
    }
    if (nrm > 0 && nrm < Infinity) {
      inrm[j] = 1 / Math.sqrt(nrm);
      continue;
    }
    let mx = 0;
    for (let i = 0; i < K; i++) mx = Math.max(mx, Math.abs(zh[i]! / (dj - dk[i]! + tj)));
    let sum = 0;
    for (let i = 0; i < K; i++) {
      const v = zh[i]! / (dj - dk[i]! + tj) / mx;
      sum += v * v;
    }
    inrm[j] = 1 / mx / Math.sqrt(sum);
  }
  if (
    work.product &&
    mergeProductWasm(work, work.product, { lo, k, s, K, n1, n3, g, zh, dk, dOrg, tau, inrm })
  )
    return lam;
  // U′ (K×K, rows in group order) in column blocks of cb: ub[t·cb + j − j0] = U[g[t], j]
  const cb = Math.max(1, Math.min(K, Math.floor(work.budget / K)));
  const ub = (work.ub ??= new Float64Array(Math.min(work.budget, n * n)));
  const tmp = (work.rows ??= new Float64Array(Math.min(work.budget, n * n)));
  const fillU = (j0: number, j1: number): void => {
    const w = j1 - j0;
    for (let t = 0; t < K; t++) {
      const i = g[t]!;
      const zi = zh[i]!;
      const di = dk[i]!;
      const row = t * w - j0;
      for (let j = j0; j < j1; j++) ub[row + j] = (zi / (di - dOrg[j]! - tau[j]!)) * inrm[j]!;
    }
  };
  if (cb === K) fillU(0, K);
  // rows of the block: product into tmp (rb rows at a time), then over the block's first K columns
  const rb = Math.max(1, Math.floor(work.budget / K));
  const opts = { checkFinite: false, ...(work.pool ? { pool: work.pool } : {}) };
  for (const [r0, r1, t0, t1] of [
    [lo, lo + k, 0, n1 + n3],
    [lo + k, lo + s, n1, K],
  ] as const) {
    for (let i0 = r0; i0 < r1; i0 += rb) {
      const m = Math.min(rb, r1 - i0);
      if (t1 === t0) {
        for (let r = i0; r < i0 + m; r++) q.fill(0, r * n + lo, r * n + lo + K);
        continue;
      }
      for (let j0 = 0; j0 < K; j0 += cb) {
        const j1 = Math.min(K, j0 + cb);
        if (cb < K) fillU(j0, j1);
        gemmInto(
          { dtype: 'f64', shape: [m, j1 - j0], strides: [K, 1], offset: j0, data: tmp },
          { dtype: 'f64', shape: [m, t1 - t0], strides: [n, 1], offset: i0 * n + lo + t0, data: q },
          {
            dtype: 'f64',
            shape: [t1 - t0, j1 - j0],
            strides: [j1 - j0, 1],
            offset: t0 * (j1 - j0),
            data: ub,
          },
          opts,
        );
      }
      for (let r = 0; r < m; r++) q.set(tmp.subarray(r * K, r * K + K), (i0 + r) * n + lo);
    }
  }
  return lam;
}

/** What the merge product needs from {@link merge}: the block, the groups and U's ingredients. */
interface MergeProduct {
  lo: number;
  k: number;
  s: number;
  K: number;
  n1: number;
  n3: number;
  /** group order: row t of U′ is row g[t] of U */
  g: number[];
  zh: Float64Array;
  dk: Float64Array;
  dOrg: Float64Array;
  tau: Float64Array;
  inrm: Float64Array;
}

/**
 * B panels per kernel call of the merge product: 256 columns, so a K-block slice of B (128 × 256 doubles,
 * 256 KiB) stays in L2 while the row blocks stream past it (at n = 2048 on one thread the product's kernel
 * time went from ≈ 0.73 s with U′'s ≈ 1 750 columns in one call to ≈ 0.5 s).
 */
const PRODUCT_PANELS = 64;

/** Most wasm scratch (values) the merge product grows the memory to by default: 1 GiB (gemm's chunks: 256 MiB). */
const WASM_SCRATCH_MAX = 2 ** 27;

/** Largest multiple of 4 not above x (at least 4). */
const floor4 = (x: number): number => Math.max(4, Math.floor(x / 4) * 4);

/**
 * The merge product of {@link merge} in the executor's memory: for the top rows (U′ rows [0, n1 + n3)) and
 * then the bottom rows (U′ rows [n1, K)), blocks of rb rows of the block's first columns are packed as A
 * panels, U′ is written directly as B panels (cb columns at a time; once per pass when cb covers K) and each
 * product block goes straight back into those rows of q — their old values are in the packed copy. Every
 * element is one `dgemmPanels` computation over the same packed values and K blocks as `gemmInto`'s, so the
 * result equals the TypeScript path's.
 */
function mergeProductWasm(work: Work, exec: Executor, p: MergeProduct): boolean {
  const { q, n } = work;
  const { lo, k, s, K, n1, n3, g, zh, dk, dOrg, tau, inrm } = p;
  const Kp = roundUp(K, 4);
  // the smallest scratch either pass works in (one 4×4 tile, see `avail`) must exist before q is touched; where the
  // host refuses even that (a browser's memory cap), the caller merges in TypeScript
  const kkMax = Math.max(n1 + n3, K - n1);
  if (!tryEnsureMemory(exec.engine, HEAP_BASE + 8 * (8 * kkMax + 16), 'eigh')) return false;
  const have = Math.floor((exec.engine.memory.buffer.byteLength - HEAP_BASE) / 8);
  exec.busy = true;
  try {
    for (const [r0, r1, t0, t1] of [
      [lo, lo + k, 0, n1 + n3],
      [lo + k, lo + s, n1, K],
    ] as const) {
      if (t1 === t0) {
        for (let r = r0; r < r1; r++) q.fill(0, r * n + lo, r * n + lo + K);
        continue;
      }
      const kk = t1 - t0;
      const mp = roundUp(r1 - r0, 4);
      // scratch (values): what the memory has (or the explicit budget), at least what one 4×4 tile needs
      const whole = kk * Kp + mp * kk + mp * Kp;
      const blocks = (avail: number): { rb: number; cb: number } => {
        // U′ whole (filled once) with as many rows as fit, unless square-ish blocks take all the rows at once
        let cb = Kp;
        let rb = Math.min(mp, avail > kk * Kp ? floor4((avail - kk * Kp) / (kk + Kp)) : 0);
        if (rb < mp) {
          const rb2 = Math.min(mp, floor4(Math.sqrt(kk * kk + avail) - kk));
          if (rb2 === mp || rb < 64) {
            rb = rb2;
            cb = Math.min(Kp, floor4((avail - rb * kk) / (kk + rb)));
          }
        }
        return { rb, cb };
      };
      const wanted = work.wasmMax ?? Math.max(have, Math.min(work.wasmValues, whole, WASM_SCRATCH_MAX));
      let { rb, cb } = blocks(Math.max(8 * kk + 16, wanted));
      if (!tryEnsureMemory(exec.engine, HEAP_BASE + 8 * (rb * kk + kk * cb + rb * cb), 'eigh')) {
        // growth refused: blocks that fit the memory there is (at least the tile checked above)
        const there = Math.floor((exec.engine.memory.buffer.byteLength - HEAP_BASE) / 8);
        ({ rb, cb } = blocks(Math.max(8 * kk + 16, there)));
      }
      const aOff = HEAP_BASE;
      const bOff = aOff + 8 * rb * kk;
      const cOff = bOff + 8 * kk * cb;
      ensureMemory(exec.engine, cOff + 8 * rb * cb, 'eigh');
      const view = new Float64Array(exec.engine.memory.buffer);
      const src = { data: q, offset: lo + t0, sShort: n, sK: 1 };
      /** U′[t0 + t, j] for j in [j0, j1) as 4-column B panels: view[b + (jp·kk + t)·4 + l], zeros past j1 */
      const fillB = (j0: number, j1: number): void => {
        const b = bOff / 8;
        for (let jp = 0; j0 + 4 * jp < j1; jp++) {
          for (let l = 0; l < 4; l++) {
            const j = j0 + 4 * jp + l;
            let at = b + jp * kk * 4 + l;
            if (j >= j1) {
              for (let t = 0; t < kk; t++, at += 4) view[at] = 0;
              continue;
            }
            const dj = dOrg[j]!;
            const tj = tau[j]!;
            const nj = inrm[j]!;
            for (let t = 0; t < kk; t++, at += 4) {
              const i = g[t0 + t]!;
              view[at] = (zh[i]! / (dk[i]! - dj - tj)) * nj;
            }
          }
        }
      };
      if (cb >= K) fillB(0, K);
      for (let i0 = r0; i0 < r1; i0 += rb) {
        throwIfAborted(work.signal, 'eigh');
        const m = Math.min(rb, r1 - i0);
        const npi = Math.ceil(m / 4);
        packPanels(view, aOff / 8, src, i0, m, i0 + m, kk, 4);
        for (let j0 = 0; j0 < K; j0 += cb) {
          const j1 = Math.min(K, j0 + cb);
          const ncp = roundUp(j1 - j0, 4);
          if (cb < K) fillB(j0, j1);
          // B in column chunks whose K-block slices stay in L2 (a full slice of a wide U′ does not)
          for (let jp0 = 0; jp0 < ncp / 4; jp0 += PRODUCT_PANELS) {
            panelProduct(exec, {
              apack: aOff,
              bpack: bOff + jp0 * kk * 32,
              c: cOff + jp0 * 32,
              k: kk,
              npi,
              npj: Math.min(PRODUCT_PANELS, ncp / 4 - jp0),
              ldc: ncp,
              alpha: 1,
              beta: 0,
              bps: 0,
              cps: 0,
            });
          }
          const c = cOff / 8;
          for (let r = 0; r < m; r++)
            q.set(view.subarray(c + r * ncp, c + r * ncp + j1 - j0), (i0 + r) * n + lo + j0);
        }
      }
    }
  } finally {
    exec.busy = false;
  }
  return true;
}

/**
 * Roots of the secular equation 1 + ρ·Σ z2ⱼ/(dkⱼ − λ) = 0 (dk ascending, z2 > 0, ρ > 0): root j lies in
 * (dkⱼ, dkⱼ₊₁) (the last in (dk_{K−1}, dk_{K−1} + ρ·zz]) and is returned as dk[origin[j]] + tau[j] relative
 * to the nearer end. On the WebAssembly kernel (`secularRoots`, f64x2 sums, the roots split over the pool's
 * threads) where available, else {@link secularRootsRef}.
 */
function secularRoots(
  dk: Float64Array,
  z2: Float64Array,
  K: number,
  rho: number,
  zz: number,
  origin: Int32Array,
  tau: Float64Array,
  work: Work,
): void {
  const exec = K >= 16 ? work.exec : null;
  const dOff = HEAP_BASE;
  const zOff = dOff + 8 * roundUp(K, 2);
  const oOff = zOff + 8 * roundUp(K, 2);
  const tOff = oOff + 8 * roundUp(K, 2);
  if (!exec || !tryEnsureMemory(exec.engine, tOff + 8 * K, 'eigh')) {
    secularRootsRef(dk, z2, K, rho, zz, origin, tau);
    return;
  }
  exec.busy = true;
  try {
    const mem = new Float64Array(exec.engine.memory.buffer);
    mem.set(dk.subarray(0, K), dOff / 8);
    mem.set(z2.subarray(0, K), zOff / 8);
    const parts = K >= 256 ? Math.min(exec.threads * 4, Math.ceil(K / 64)) : 1;
    exec.run(parts, ({ i32: ctrl, f64: scal }) => {
      ctrl[KIND] = KIND_SECULAR;
      ctrl[APACK] = dOff;
      ctrl[BPACK] = zOff;
      ctrl[CPTR] = oOff;
      ctrl[LDC] = tOff;
      ctrl[K_SLOT] = K;
      ctrl[NPI] = parts;
      scal[ALPHA] = rho;
      scal[BETA] = zz;
    });
    for (let j = 0; j < K; j++) {
      origin[j] = mem[oOff / 8 + j]!;
      tau[j] = mem[tOff / 8 + j]!;
    }
  } finally {
    exec.busy = false;
  }
}

/** The TypeScript reference of {@link secularRoots} (same iteration, scalar sums). */
export function secularRootsRef(
  dk: Float64Array,
  z2: Float64Array,
  K: number,
  rho: number,
  zz: number,
  origin: Int32Array,
  tau: Float64Array,
): void {
  const f = (o: number, t: number): number => {
    let sum = 0;
    const d0 = dk[o]!;
    for (let j = 0; j < K; j++) sum += z2[j]! / (dk[j]! - d0 - t);
    return 1 + rho * sum;
  };
  for (let j = 0; j < K; j++) {
    let o: number;
    let lo: number;
    let hi: number;
    if (j < K - 1) {
      const gap = dk[j + 1]! - dk[j]!;
      if (f(j, gap / 2) >= 0) {
        o = j;
        lo = 0;
        hi = gap / 2;
      } else {
        o = j + 1;
        lo = -gap / 2;
        hi = 0;
      }
    } else {
      o = j;
      lo = 0;
      hi = rho * zz;
      // widen for rounding: ensure f(hi) ≥ 0
      while (f(o, hi) < 0) hi *= 2;
    }
    // Safeguarded rational iteration on the bracket [lo, hi] (f is increasing between its poles). The sum
    // is split at the root's interval into ψ (poles dₖ, k ≤ j) and φ (poles k > j); each is modelled by a
    // constant plus one pole at the interval's end, matching value and slope at t (the "middle way" of
    // R.-C. Li / LAPACK dlaed4), and the model's root in the interval is the next iterate — quadratic
    // convergence without Newton's slow start near a pole. A step that leaves the bracket bisects it.
    const d0 = dk[o]!;
    const dl = dk[j]! - d0; // the interval's poles, relative to the origin pole (one of them is 0)
    const dr = j < K - 1 ? dk[j + 1]! - d0 : Infinity;
    let t = 0.5 * (lo + hi);
    for (let it = 0; it < 200; it++) {
      let psi = 0;
      let dpsi = 0;
      let phi = 0;
      let dphi = 0;
      for (let q = 0; q <= j; q++) {
        const inv = 1 / (dk[q]! - d0 - t);
        const w = z2[q]! * inv;
        psi += w;
        dpsi += w * inv;
      }
      for (let q = j + 1; q < K; q++) {
        const inv = 1 / (dk[q]! - d0 - t);
        const w = z2[q]! * inv;
        phi += w;
        dphi += w * inv;
      }
      const fm = 1 + rho * (psi + phi);
      // converged when f(t) is at the level of its rounding error (ψ's terms are negative, φ's positive)
      if (Math.abs(fm) <= 8 * EPS * (1 + rho * (phi - psi))) {
        lo = hi = t;
        break;
      }
      if (fm > 0) hi = t;
      else lo = t;
      const width = hi - lo;
      if (width <= 4 * EPS * Math.max(Math.abs(lo), Math.abs(hi)) || !(width > 0)) break;
      const e1 = dl - t; // < 0
      const bl = rho * dpsi * e1 * e1; // model ψ ≈ const + bl/(ρ(dl − x))
      let next = NaN;
      if (j === K - 1) {
        // no pole on the right: c + bl/(dl − x) = 0 with c = fm − bl/e1
        const c = fm - bl / e1;
        if (c > 0) next = dl + bl / c;
      } else {
        const e2 = dr - t; // > 0
        const br = rho * dphi * e2 * e2;
        const c = fm - bl / e1 - br / e2;
        // c + bl/(e1 − η) + br/(e2 − η) = 0  ⇔  c·η² − a·η + e1·e2·fm = 0
        const a = c * (e1 + e2) + bl + br;
        const pr = e1 * e2 * fm;
        const disc = Math.sqrt(Math.max(0, a * a - 4 * c * pr));
        const h = 0.5 * (a + (a >= 0 ? disc : -disc));
        const eta1 = h !== 0 ? pr / h : NaN;
        const eta2 = c !== 0 ? h / c : NaN;
        next = t + eta1 > lo && t + eta1 < hi ? t + eta1 : t + eta2;
      }
      if (!(next > lo && next < hi)) next = 0.5 * (lo + hi);
      if (next === t) break;
      const step = Math.abs(next - t);
      t = next;
      if (step <= 2 * EPS * Math.abs(t)) break;
    }
    origin[j] = o;
    // keep the root strictly inside its interval (away from the pole at the origin)
    if (t < lo || t > hi) t = 0.5 * (lo + hi);
    if (t === 0) t = o === j ? hi : lo;
    tau[j] = t;
  }
}
