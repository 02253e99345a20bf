/**
 * Symmetric tridiagonal helpers of {@link eigh}: Householder reduction `A = Q·T·Qᵀ` (lower triangle, row
 * oriented), the implicit QL iteration with Wilkinson-type shifts on `T`, and the back-transformation
 * of eigenvectors by the stored reflectors. Internal to the package.
 */
import { CalderaError, throwIfAborted, type Tensor } from '@caldera/core';
import { gemm, gemmInto, resolveExecutor } from './gemm.js';
import { columnReflector, compactWyT } from './householder.js';
import type { Pool } from './pool/pool.js';
import { backTransformWasm, tridiagonalizeWasm } from './tridiag-wasm.js';

/** Householder tridiagonalisation result: diagonal `d`, off-diagonal `e` (`e[i] = T[i, i+1]`, `e[n−1] = 0`). */
export interface Tridiagonal {
  d: Float64Array;
  e: Float64Array;
  /** Reflector scalars τⱼ; reflector j is stored in column j of `w` below the sub-diagonal. */
  taus: Float64Array;
}

/**
 * Reduce the symmetric matrix whose lower triangle is in `w` (n×n row-major, overwritten) to tridiagonal
 * form. Reflector j (`v = [1, w[j+2.., j]]` acting on indices j+1..n−1) is kept in `w`.
 */
export function tridiagonalize(w: Float64Array, n: number, signal?: AbortSignal): Tridiagonal {
  const d = new Float64Array(n);
  const e = new Float64Array(n);
  const taus = new Float64Array(n);
  const v = new Float64Array(n);
  const p = new Float64Array(n);
  for (let j = 0; j + 2 < n; j++) {
    if ((j & 31) === 0) throwIfAborted(signal, 'eigh');
    const o = j + 1; // trailing block starts at o; x = w[o.., j]
    const len = n - o;
    d[j] = w[j * n + j]!;
    if (!columnReflector(w, n, j, n, v, e, taus)) continue;
    const tau = taus[j]!;
    // p = τ·A₂₂·v using the lower triangle only
    symvLower(w, n, o, len, v, p);
    let pv = 0;
    for (let i = 0; i < len; i++) {
      p[i]! *= tau;
      pv += p[i]! * v[i]!;
    }
    // w = p − (τ/2)(pᵀv)·v ; A₂₂ −= v·wᵀ + w·vᵀ (lower triangle)
    const k = 0.5 * tau * pv;
    for (let i = 0; i < len; i++) p[i]! -= k * v[i]!;
    for (let i = 0; i < len; i++) {
      const row = (o + i) * n + o;
      const vi = v[i]!;
      const wi = p[i]!;
      for (let c = 0; c <= i; c++) w[row + c]! -= vi * p[c]! + wi * v[c]!;
    }
  }
  if (n >= 2) {
    d[n - 2] = w[(n - 2) * n + n - 2]!;
    e[n - 2] = w[(n - 1) * n + n - 2]!;
  }
  if (n >= 1) d[n - 1] = w[(n - 1) * n + n - 1]!;
  e[n - 1] = 0;
  return { d, e, taus };
}

/**
 * Implicit QL iteration on the tridiagonal (d, e) (both overwritten; eigenvalues end in `d`, unsorted).
 * When `zt` (n×n row-major, rows = vectors) is given, each rotation is applied to its rows, so starting from
 * the identity its rows become the eigenvectors of T. Throws `E_VALUE` if an eigenvalue fails to converge.
 */
export function tridiagonalQL(
  d: Float64Array,
  e: Float64Array,
  n: number,
  zt?: Float64Array,
  signal?: AbortSignal,
): void {
  const eps = 2 ** -52;
  let f = 0;
  let tst1 = 0;
  for (let l = 0; l < n; l++) {
    throwIfAborted(signal, 'eigh');
    tst1 = Math.max(tst1, Math.abs(d[l]!) + Math.abs(e[l]!));
    let m = l;
    while (m < n - 1 && Math.abs(e[m]!) > eps * tst1) m++;
    if (m > l) {
      let iter = 0;
      do {
        if (++iter > 100) {
          throw new CalderaError(
            'E_VALUE',
            `eigh: QL iteration did not converge for eigenvalue ${l} of ${n}`,
          );
        }
        let g = d[l]!;
        let p = (d[l + 1]! - g) / (2 * e[l]!);
        let r = Math.hypot(p, 1);
        if (p < 0) r = -r;
        d[l] = e[l]! / (p + r);
        d[l + 1] = e[l]! * (p + r);
        const dl1 = d[l + 1]!;
        let h = g - d[l]!;
        for (let i = l + 2; i < n; i++) d[i]! -= h;
        f += h;
        p = d[m]!;
        let c = 1;
        let c2 = 1;
        let c3 = 1;
        const el1 = e[l + 1]!;
        let s = 0;
        let s2 = 0;
        for (let i = m - 1; i >= l; i--) {
          c3 = c2;
          c2 = c;
          s2 = s;
          g = c * e[i]!;
          h = c * p;
          r = Math.hypot(p, e[i]!);
          e[i + 1] = s * r;
          s = e[i]! / r;
          c = p / r;
          p = c * d[i]! - s * g;
          d[i + 1] = h + s * (c * g + s * d[i]!);
          if (zt) {
            const a = i * n;
            const b = (i + 1) * n;
            for (let k = 0; k < n; k++) {
              const zb = zt[b + k]!;
              const za = zt[a + k]!;
              zt[b + k] = s * za + c * zb;
              zt[a + k] = c * za - s * zb;
            }
          }
        }
        p = (-s * s2 * c3 * el1 * e[l]!) / dl1;
        e[l] = s * p;
        d[l] = c * p;
      } while (Math.abs(e[l]!) > eps * tst1);
    }
    d[l] = d[l]! + f;
    e[l] = 0;
  }
}

/**
 * Apply `Q = H₀·H₁·…` from {@link tridiagonalize} to each row `z` of `zt` (`z ← Q·z`), turning eigenvectors of
 * T into eigenvectors of A.
 */
export function backTransform(
  w: Float64Array,
  taus: Float64Array,
  n: number,
  zt: Float64Array,
  signal?: AbortSignal,
): void {
  const v = new Float64Array(n);
  for (let j = n - 3; j >= 0; j--) {
    const tau = taus[j]!;
    if (tau === 0) continue;
    if ((j & 31) === 0) throwIfAborted(signal, 'eigh');
    const o = j + 1;
    const len = n - o;
    v[0] = 1;
    for (let i = 1; i < len; i++) v[i] = w[(o + i) * n + j]!;
    for (let r = 0; r < n; r++) {
      const row = r * n + o;
      let s = 0;
      for (let c = 0; c < len; c++) s += v[c]! * zt[row + c]!;
      s *= tau;
      if (s === 0) continue;
      for (let c = 0; c < len; c++) zt[row + c]! -= s * v[c]!;
    }
  }
}

/**
 * The reflectors of a reduction: entry (i, j), j ≤ i − 2, of the reduced matrix (reflector j's component i)
 * is `data[row(i) + j]`.
 */
export interface Reflectors {
  data: Float64Array;
  row(i: number): number;
}

/** The reflectors where the reduction left them: the n×n row-major `w`. */
export function fullReflectors(w: Float64Array, n: number): Reflectors {
  return { data: w, row: (i) => i * n };
}

/**
 * The reflectors copied out of `w` into packed storage (row i holds its i − 1 entries; an n(n−1)/2-value buffer),
 * so that `w` itself can be reused.
 */
export function packReflectors(w: Float64Array, n: number): Reflectors {
  const row = (i: number): number => ((i - 1) * (i - 2)) / 2;
  const data = new Float64Array(n >= 2 ? row(n) + n - 1 : 0);
  for (let i = 2; i < n; i++) data.set(w.subarray(i * n, i * n + i - 1), row(i));
  return { data, row };
}

/**
 * Blocked back-transformation `Y ← Q·Y` (Y is n×n row-major, its columns the eigenvectors of T), with
 * blocks of `nb` reflectors in compact WY form `H_j…H_{j+nb−1} = I − V·T·Vᵀ` so that the O(n³) work runs on
 * the gemm kernels. Where WebAssembly SIMD is available (and `reference` is not set) y stays in wasm memory
 * for the whole product ({@link backTransformWasm}); this version is the reference the tests compare with.
 */
export function backTransformBlocked(
  refl: Reflectors,
  taus: Float64Array,
  n: number,
  y: Float64Array,
  pool?: Pool,
  signal?: AbortSignal,
  nb = 64,
  reference = false,
): void {
  const exec = reference || n < 3 ? null : resolveExecutor(pool);
  if (exec) {
    exec.busy = true;
    try {
      if (backTransformWasm(refl, taus, n, y, exec, signal, nb)) return;
    } finally {
      exec.busy = false;
    }
  }
  const nref = Math.max(0, n - 2);
  const opts = { checkFinite: false, ...(pool ? { pool } : {}) };
  for (let j1 = nref; j1 > 0; j1 -= nb) {
    throwIfAborted(signal, 'eigh');
    const j0 = Math.max(0, j1 - nb);
    const b = j1 - j0;
    const r0 = j0 + 1; // first row touched by the block
    const rows = n - r0;
    // V: rows × b, column c = reflector j0+c (unit at row j0+c+1, zeros above); row by row (w is row-major)
    const v = new Float64Array(rows * b);
    for (let i = r0; i < n; i++) {
      const row = (i - r0) * b;
      const src = refl.row(i) + j0;
      const cEnd = Math.min(b, i - j0 - 1); // reflector j0+c has entries below row j0+c+1
      for (let c = 0; c < cEnd; c++) v[row + c] = refl.data[src + c]!;
      if (i - j0 - 1 < b) v[row + i - j0 - 1] = 1;
    }
    const vt: Tensor<'f64'> = { dtype: 'f64', shape: [rows, b], strides: [b, 1], offset: 0, data: v };
    // T (b×b upper): T[c,c] = τ, T[0:c, c] = −τ·T[0:c,0:c]·(V[:,0:c]ᵀ·v_c), with S = VᵀV on the kernels
    const sg = gemm(vt, vt, { transA: true, ...opts }).data;
    const t = new Float64Array(b * b);
    compactWyT(taus, j0, b, sg, b, t, b);
    const ysub: Tensor<'f64'> = { dtype: 'f64', shape: [rows, n], strides: [n, 1], offset: r0 * n, data: y };
    const wmat = gemm(vt, ysub, { transA: true, ...opts }); // b × n
    const tw = gemm({ dtype: 'f64', shape: [b, b], strides: [b, 1], offset: 0, data: t }, wmat, opts);
    gemmInto(ysub, vt, tw, { alpha: -1, beta: 1, ...opts });
  }
}

/**
 * Blocked version of {@link tridiagonalize} (LAPACK dlatrd scheme): each panel of `nb` reflectors is built
 * against the not-yet-updated trailing matrix corrected by `V·Wᵀ + W·Vᵀ`, and the trailing update
 * `A₂₂ −= V·Wᵀ + W·Vᵀ` (half of the O(n³) work) runs on the gemm kernels. Same output and reflector storage.
 * Where WebAssembly SIMD is available (and `reference` is not set) the whole reduction runs with the matrix
 * in wasm memory ({@link tridiagonalizeWasm}); this TypeScript version is the reference the tests compare with.
 */
export function tridiagonalizeBlocked(
  w: Float64Array,
  n: number,
  pool?: Pool,
  signal?: AbortSignal,
  nb = 32,
  reference = false,
): Tridiagonal {
  if (n < 3 * nb) return tridiagonalize(w, n, signal);
  const exec = reference ? null : resolveExecutor(pool);
  if (exec) {
    exec.busy = true;
    try {
      const t = tridiagonalizeWasm(w, n, exec, signal, nb);
      if (t) return t;
    } finally {
      exec.busy = false;
    }
  }
  const d = new Float64Array(n);
  const e = new Float64Array(n);
  const taus = new Float64Array(n);
  const V = new Float64Array(n * nb);
  const W = new Float64Array(n * nb);
  const v = new Float64Array(n);
  const p = new Float64Array(n);
  const t1 = new Float64Array(nb);
  const t2 = new Float64Array(nb);
  const opts = {
    checkFinite: false,
    triangle: 'lower' as const,
    alpha: -1,
    beta: 1,
    ...(pool ? { pool } : {}),
  };
  for (let j0 = 0; j0 < n - 2; j0 += nb) {
    throwIfAborted(signal, 'eigh');
    const b = Math.min(nb, n - 2 - j0);
    V.fill(0);
    W.fill(0);
    for (let c = 0; c < b; c++) {
      const j = j0 + c;
      // 1. bring column j (rows ≥ j) up to date with the panel's previous reflectors
      if (c > 0) {
        for (let i = j; i < n; i++) {
          let s = 0;
          const ri = i * nb;
          const rj = j * nb;
          for (let q = 0; q < c; q++) s += V[ri + q]! * W[rj + q]! + W[ri + q]! * V[rj + q]!;
          w[i * n + j]! -= s;
        }
      }
      d[j] = w[j * n + j]!;
      // 2. reflector from w[j+1.., j], also as column c of the panel V
      const o = j + 1;
      const len = n - o;
      if (!columnReflector(w, n, j, n, v, e, taus)) continue;
      const tau = taus[j]!;
      for (let i = 0; i < len; i++) V[(o + i) * nb + c] = v[i]!;
      // 3. p = A₂₂(original)·v − V(Wᵀv) − W(Vᵀv), rows/cols ≥ o
      symvLower(w, n, o, len, v, p);
      if (c > 0) {
        t1.fill(0);
        t2.fill(0);
        for (let i = 0; i < len; i++) {
          const r = (o + i) * nb;
          const vi = v[i]!;
          for (let q = 0; q < c; q++) {
            t1[q]! += W[r + q]! * vi;
            t2[q]! += V[r + q]! * vi;
          }
        }
        for (let i = 0; i < len; i++) {
          const r = (o + i) * nb;
          let s = 0;
          for (let q = 0; q < c; q++) s += V[r + q]! * t1[q]! + W[r + q]! * t2[q]!;
          p[i]! -= s;
        }
      }
      // 4. w = τp − (τ/2)(τpᵀv)·v
      let pv = 0;
      for (let i = 0; i < len; i++) {
        p[i]! *= tau;
        pv += p[i]! * v[i]!;
      }
      const k = 0.5 * tau * pv;
      for (let i = 0; i < len; i++) W[(o + i) * nb + c] = p[i]! - k * v[i]!;
    }
    // trailing update of rows/cols ≥ j0 + b: A −= V·Wᵀ + W·Vᵀ (lower triangle)
    const r0 = j0 + b;
    const rows = n - r0;
    const vs: Tensor<'f64'> = { dtype: 'f64', shape: [rows, b], strides: [nb, 1], offset: r0 * nb, data: V };
    const ws: Tensor<'f64'> = { dtype: 'f64', shape: [rows, b], strides: [nb, 1], offset: r0 * nb, data: W };
    const a22: Tensor<'f64'> = {
      dtype: 'f64',
      shape: [rows, rows],
      strides: [n, 1],
      offset: r0 * n + r0,
      data: w,
    };
    gemmInto(a22, vs, ws, { transB: true, ...opts });
    gemmInto(a22, ws, vs, { transB: true, ...opts });
  }
  d[n - 2] = w[(n - 2) * n + n - 2]!;
  e[n - 2] = w[(n - 1) * n + n - 2]!;
  d[n - 1] = w[(n - 1) * n + n - 1]!;
  e[n - 1] = 0;
  return { d, e, taus };
}

/**
 * `p[0..len) = A·v` for the symmetric trailing block `A = w[o.., o..]` of which only the lower triangle is
 * read; four rows per pass so that each load of `v[q]` and update of `p[q]` serves four matrix elements.
 * The TypeScript reference of the `dsymvLowerRows` kernel.
 */
export function symvLower(
  w: Float64Array,
  n: number,
  o: number,
  len: number,
  v: Float64Array,
  p: Float64Array,
): void {
  p.fill(0, 0, len);
  let i = 0;
  // four rows per pass: one load of v[q] and one update of p[q] per four matrix elements
  for (; i + 3 < len; i += 4) {
    const r0 = (o + i) * n + o;
    const r1 = r0 + n;
    const r2 = r1 + n;
    const r3 = r2 + n;
    const v0 = v[i]!;
    const v1 = v[i + 1]!;
    const v2 = v[i + 2]!;
    const v3 = v[i + 3]!;
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    for (let q = 0; q < i; q++) {
      const a0 = w[r0 + q]!;
      const a1 = w[r1 + q]!;
      const a2 = w[r2 + q]!;
      const a3 = w[r3 + q]!;
      const vq = v[q]!;
      s0 += a0 * vq;
      s1 += a1 * vq;
      s2 += a2 * vq;
      s3 += a3 * vq;
      p[q]! += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3;
    }
    // the 4×4 diagonal block (lower triangle)
    const a10 = w[r1 + i]!;
    const a20 = w[r2 + i]!;
    const a21 = w[r2 + i + 1]!;
    const a30 = w[r3 + i]!;
    const a31 = w[r3 + i + 1]!;
    const a32 = w[r3 + i + 2]!;
    p[i]! += s0 + w[r0 + i]! * v0 + a10 * v1 + a20 * v2 + a30 * v3;
    p[i + 1]! += s1 + a10 * v0 + w[r1 + i + 1]! * v1 + a21 * v2 + a31 * v3;
    p[i + 2]! += s2 + a20 * v0 + a21 * v1 + w[r2 + i + 2]! * v2 + a32 * v3;
    p[i + 3]! += s3 + a30 * v0 + a31 * v1 + a32 * v2 + w[r3 + i + 3]! * v3;
  }
  for (; i + 1 < len; i += 2) {
    const row0 = (o + i) * n + o;
    const row1 = row0 + n;
    const v0 = v[i]!;
    const v1 = v[i + 1]!;
    let s0 = 0;
    let s1 = 0;
    for (let q = 0; q < i; q++) {
      const a0 = w[row0 + q]!;
      const a1 = w[row1 + q]!;
      const vq = v[q]!;
      s0 += a0 * vq;
      s1 += a1 * vq;
      p[q]! += a0 * v0 + a1 * v1;
    }
    const a10 = w[row1 + i]!;
    s1 += a10 * v0;
    p[i]! += s0 + a10 * v1 + w[row0 + i]! * v0;
    p[i + 1]! += s1 + w[row1 + i + 1]! * v1;
  }
  if (i < len) {
    const row = (o + i) * n + o;
    const vi = v[i]!;
    let s = 0;
    for (let q = 0; q < i; q++) {
      const a = w[row + q]!;
      s += a * v[q]!;
      p[q]! += a * vi;
    }
    p[i]! += s + w[row + i]! * vi;
  }
}
