/**
 * Cuppen's divide-and-conquer eigensolver for a symmetric tridiagonal matrix, with Gu–Eisenstat
 * recomputation of the rank-one vector (orthogonal eigenvectors without extra precision) and the LAPACK
 * (dlaed2) deflation rules. The merge products run on the gemm kernels, so the O(n³) part is fast; the
 * small leaves use the implicit QL iteration. Internal to the package (used by {@link eigh}).
 */
import { throwIfAborted } from '@caldera/core';
import { gemmInto } from './gemm.js';
import type { Pool } from './pool/pool.js';
import { tridiagonalQL } from './tridiag.js';

/** Leaves of at most this size are solved by QL. */
const LEAF = 32;
const EPS = 2 ** -53;

interface Eig {
  /** ascending eigenvalues */
  lam: Float64Array;
  /** s×s row-major, column j = eigenvector of lam[j] */
  q: Float64Array;
}

/**
 * Eigenvalues (ascending) and eigenvectors (columns of the returned n×n row-major matrix) of the tridiagonal
 * (d, e) with `e[i] = T[i, i+1]`. `d` and `e` are not modified.
 */
export function tridiagonalDC(
  d: Float64Array,
  e: Float64Array,
  n: number,
  pool?: Pool,
  signal?: AbortSignal,
): Eig {
  const dd = Float64Array.from(d);
  return solve(dd, e, 0, n, pool, signal);
}

function solve(
  d: Float64Array,
  e: Float64Array,
  lo: number,
  s: number,
  pool?: Pool,
  signal?: AbortSignal,
): Eig {
  if (s <= LEAF) return leaf(d, e, lo, s, signal);
  throwIfAborted(signal, 'eigh');
  const k = s >> 1;
  const beta = e[lo + k - 1]!;
  d[lo + k - 1]! -= beta;
  d[lo + k]! -= beta;
  const a = solve(d, e, lo, k, pool, signal);
  const b = solve(d, e, lo + k, s - k, pool, signal);
  return merge(a, b, k, s, beta, pool);
}

function leaf(d: Float64Array, e: Float64Array, lo: number, s: number, signal?: AbortSignal): Eig {
  const dd = d.slice(lo, lo + s);
  const ee = new Float64Array(s);
  for (let i = 0; i + 1 < s; i++) ee[i] = e[lo + i]!;
  const zt = new Float64Array(s * s);
  for (let i = 0; i < s; i++) zt[i * s + i] = 1;
  tridiagonalQL(dd, ee, s, zt, signal);
  const order = Array.from({ length: s }, (_, i) => i).sort((x, y) => dd[x]! - dd[y]!);
  const q = new Float64Array(s * s);
  order.forEach((src, col) => {
    for (let r = 0; r < s; r++) q[r * s + col] = zt[src * s + r]!;
  });
  return { lam: Float64Array.from(order, (i) => dd[i]!), q };
}

/** Eigen-decomposition of blockdiag(T₁, T₂) + β·v·vᵀ, v = e_{k−1} + e_k, from those of T₁ and T₂. */
function merge(a: Eig, b: Eig, k: number, s: number, beta: number, pool?: Pool): Eig {
  const k2 = s - k;
  // z = blockdiag(Q₁, Q₂)ᵀ·v / √2 (unit), ρ = 2β; flip signs so that ρ > 0
  const sgn = beta < 0 ? -1 : 1;
  const rho = 2 * Math.abs(beta);
  const D = new Float64Array(s);
  const z = new Float64Array(s);
  for (let j = 0; j < k; j++) {
    D[j] = sgn * a.lam[j]!;
    z[j] = a.q[(k - 1) * k + j]! / Math.SQRT2;
  }
  for (let j = 0; j < k2; j++) {
    D[k + j] = sgn * b.lam[j]!;
    z[k + j] = b.q[j]! / Math.SQRT2;
  }
  const perm = Array.from({ length: s }, (_, i) => i).sort((x, y) => D[x]! - D[y]!);
  const ds = Float64Array.from(perm, (i) => D[i]!);
  const zs = Float64Array.from(perm, (i) => z[i]!);
  // Qw: blockdiag(Q₁, Q₂) with columns in sorted order
  const qw = new Float64Array(s * s);
  // row by row (sequential writes); each row gathers from one row of Q₁ or Q₂
  const topCols: number[] = [];
  const botCols: number[] = [];
  perm.forEach((src, col) => (src < k ? topCols : botCols).push(col));
  for (let r = 0; r < k; r++) {
    const row = r * s;
    const srcRow = r * k;
    for (const col of topCols) qw[row + col] = a.q[srcRow + perm[col]!]!;
  }
  for (let r = 0; r < k2; r++) {
    const row = (k + r) * s;
    const srcRow = r * k2 - k;
    for (const col of botCols) qw[row + col] = b.q[srcRow + perm[col]!]!;
  }
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
      for (let r = 0; r < s; r++) {
        const xp = qw[r * s + prev]!;
        const xi = qw[r * s + i]!;
        qw[r * s + prev] = c * xp - sn * xi;
        qw[r * s + i] = sn * xp + c * xi;
      }
      part[prev] = part[i] = part[prev]! | part[i]!;
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
  const f = (o: number, t: number): number => {
    let sum = 0;
    const d0 = dk[o]!;
    for (let j = 0; j < K; j++) sum += (zk[j]! * zk[j]!) / (dk[j]! - d0 - t);
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
    // safeguarded Newton on the bracket [lo, hi] (f is increasing between poles): a Newton step that leaves
    // the bracket, or does not shrink it fast enough, is replaced by bisection
    let t = 0.5 * (lo + hi);
    for (let it = 0; it < 200; it++) {
      const d0 = dk[o]!;
      let sum = 0;
      let der = 0;
      for (let q = 0; q < K; q++) {
        const z2 = zk[q]! * zk[q]!;
        const inv = 1 / (dk[q]! - d0 - t);
        sum += z2 * inv;
        der += z2 * inv * inv;
      }
      const fm = 1 + rho * sum;
      if (fm === 0) {
        lo = hi = t;
        break;
      }
      if (fm > 0) hi = t;
      else lo = t;
      const width = hi - lo;
      if (width <= 4 * EPS * Math.max(Math.abs(lo), Math.abs(hi)) || !(width > 0)) break;
      let next = t - fm / (rho * der);
      if (!(next > lo && next < hi) || (it > 3 && Math.abs(next - t) > 0.5 * width)) next = 0.5 * (lo + hi);
      if (next === t) break;
      t = next;
    }
    origin[j] = o;
    // keep the root strictly inside its interval (away from the pole at the origin)
    if (t < lo || t > hi) t = 0.5 * (lo + hi);
    if (t === 0) t = o === j ? hi : lo;
    tau[j] = t;
  }
  // λⱼ − dᵢ computed without cancellation
  const lamMinusD = (j: number, i: number): number => dk[origin[j]!]! - dk[i]! + tau[j]!;
  // Gu–Eisenstat: ẑ from the computed eigenvalues
  const zh = new Float64Array(K);
  for (let i = 0; i < K; i++) {
    let p = lamMinusD(K - 1, i) / rho;
    for (let j = 0; j < i; j++) p *= lamMinusD(j, i) / (dk[j]! - dk[i]!);
    for (let j = i; j < K - 1; j++) p *= lamMinusD(j, i) / (dk[j + 1]! - dk[i]!);
    zh[i] = Math.sqrt(Math.max(p, 0)) * (zk[i]! >= 0 ? 1 : -1);
  }
  // eigenvectors of D + ρ·ẑẑᵀ: u_j ∝ ẑᵢ/(dᵢ − λⱼ); stored as U (K×K, column j)
  const u = new Float64Array(K * K);
  const col = new Float64Array(K);
  for (let j = 0; j < K; j++) {
    let nrm = 0;
    for (let i = 0; i < K; i++) {
      const v = zh[i]! / -lamMinusD(j, i);
      col[i] = v;
      nrm += v * v;
    }
    nrm = Math.sqrt(nrm);
    for (let i = 0; i < K; i++) u[i * K + j] = col[i]! / nrm;
  }
  // new eigenvectors: Qw[:, nd]·U (s×K) plus the deflated columns of Qw
  const lam = new Float64Array(s);
  const q = new Float64Array(s * s);
  const entries: { value: number; src: number; fromProduct: boolean }[] = [];
  if (K > 0) {
    // Columns of Qw are zero outside their block(s): multiply the top rows (0..k) only by the columns living
    // there, and the bottom rows likewise — about half the flops of one full product (LAPACK dlaed3).
    const prod = new Float64Array(s * K);
    blockProduct(qw, s, nd, part, 1, 0, k, u, K, prod, pool);
    blockProduct(qw, s, nd, part, 2, k, s, u, K, prod, pool);
    for (let j = 0; j < K; j++)
      entries.push({ value: sgn * (dk[origin[j]!]! + tau[j]!), src: j, fromProduct: true });
    fill(entries, deflated, ds, sgn);
    entries.sort((x, y) => x.value - y.value);
    entries.forEach((en, c) => (lam[c] = en.value));
    const fromProd = entries.map((en) => en.fromProduct);
    const srcs = entries.map((en) => en.src);
    for (let r = 0; r < s; r++) {
      const row = r * s;
      const prow = r * K;
      for (let c = 0; c < s; c++) q[row + c] = fromProd[c] ? prod[prow + srcs[c]!]! : qw[row + srcs[c]!]!;
    }
  } else {
    fill(entries, deflated, ds, sgn);
    entries.sort((x, y) => x.value - y.value);
    entries.forEach((en, c) => {
      lam[c] = en.value;
      for (let r = 0; r < s; r++) q[r * s + c] = qw[r * s + en.src]!;
    });
  }
  return { lam, q };
}

function fill(
  entries: { value: number; src: number; fromProduct: boolean }[],
  deflated: number[],
  ds: Float64Array,
  sgn: number,
): void {
  for (const i of deflated) entries.push({ value: sgn * ds[i]!, src: i, fromProduct: false });
}

/** `prod[r0..r1, :] = Qw[r0..r1, nd[c] for c with part & bit]·U[those c, :]`. */
function blockProduct(
  qw: Float64Array,
  s: number,
  nd: number[],
  part: Uint8Array,
  bit: number,
  r0: number,
  r1: number,
  u: Float64Array,
  K: number,
  prod: Float64Array,
  pool?: Pool,
): void {
  const cols: number[] = [];
  for (let c = 0; c < K; c++) if (part[nd[c]!]! & bit) cols.push(c);
  const rows = r1 - r0;
  const kk = cols.length;
  if (rows === 0 || kk === 0) return;
  const a = new Float64Array(rows * kk);
  for (let r = 0; r < rows; r++)
    for (let t = 0; t < kk; t++) a[r * kk + t] = qw[(r0 + r) * s + nd[cols[t]!]!]!;
  const b = new Float64Array(kk * K);
  for (let t = 0; t < kk; t++) b.set(u.subarray(cols[t]! * K, cols[t]! * K + K), t * K);
  gemmInto(
    { dtype: 'f64', shape: [rows, K], strides: [K, 1], offset: r0 * K, data: prod },
    { dtype: 'f64', shape: [rows, kk], strides: [kk, 1], offset: 0, data: a },
    { dtype: 'f64', shape: [kk, K], strides: [K, 1], offset: 0, data: b },
    { checkFinite: false, ...(pool ? { pool } : {}) },
  );
}
