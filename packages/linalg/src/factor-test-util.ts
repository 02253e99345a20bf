/**
 * Helpers for the factorisation tests (not exported from the package): naive products, norms, random
 * orthogonal matrices and matrices with prescribed spectra, all in row-major f64.
 */
import { Rng, type Tensor } from '@caldera/core';

/** Double-precision unit roundoff ×2 (machine epsilon). */
export const EPS = 2 ** -52;

/** Dense row-major data of a tensor (any strides). */
export function dense(t: Tensor<'f64'> | Tensor<'f32'>): Float64Array {
  const [m, n] = t.shape as [number, number];
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) out[i * n + j] = t.data[t.offset + i * t.strides[0]! + j * t.strides[1]!]!;
  return out;
}

/** Naive `op(A)·op(B)` of row-major buffers (A is m×k after op, B is k×n after op). */
export function mul(
  a: Float64Array,
  b: Float64Array,
  m: number,
  k: number,
  n: number,
  ta = false,
  tb = false,
): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++)
        s += (ta ? a[p * m + i]! : a[i * k + p]!) * (tb ? b[j * k + p]! : b[p * n + j]!);
      c[i * n + j] = s;
    }
  return c;
}

/** Frobenius norm. */
export function fro(a: Float64Array): number {
  let s = 0;
  for (const x of a) s += x * x;
  return Math.sqrt(s);
}

/** ‖a − b‖_F. */
export function diffFro(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i]! - b[i]!) ** 2;
  return Math.sqrt(s);
}

/** max |QᵀQ − I| for an m×k row-major Q. */
export function orthErr(q: Float64Array, m: number, k: number): number {
  const g = mul(q, q, k, m, k, true, false);
  let e = 0;
  for (let i = 0; i < k; i++)
    for (let j = 0; j < k; j++) e = Math.max(e, Math.abs(g[i * k + j]! - (i === j ? 1 : 0)));
  return e;
}

/** A seeded random orthogonal `n × n` matrix (Gram–Schmidt, twice, of a Gaussian matrix). */
export function randOrth(n: number, seed: number): Float64Array {
  const rng = new Rng(seed);
  const q = rng.fillNormal(new Float64Array(n * n));
  for (let pass = 0; pass < 2; pass++)
    for (let j = 0; j < n; j++) {
      for (let p = 0; p < j; p++) {
        let s = 0;
        for (let i = 0; i < n; i++) s += q[i * n + j]! * q[i * n + p]!;
        for (let i = 0; i < n; i++) q[i * n + j]! -= s * q[i * n + p]!;
      }
      let s = 0;
      for (let i = 0; i < n; i++) s += q[i * n + j]! ** 2;
      s = Math.sqrt(s);
      for (let i = 0; i < n; i++) q[i * n + j]! /= s;
    }
  return q;
}

/** `U·diag(s)·Vᵀ` with seeded random orthogonal U (m×m) and V (n×n); `s` has min(m, n) entries. */
export function withSpectrum(m: number, n: number, s: readonly number[], seed: number): Float64Array {
  const u = randOrth(m, seed);
  const v = randOrth(n, seed + 1);
  const k = Math.min(m, n);
  const us = new Float64Array(m * k);
  for (let i = 0; i < m; i++) for (let j = 0; j < k; j++) us[i * k + j] = u[i * m + j]! * s[j]!;
  return mulTopRows(us, v, m, k, n);
}

function mulTopRows(us: Float64Array, v: Float64Array, m: number, k: number, n: number): Float64Array {
  // (U_k·S)·V_kᵀ where V_k = first k columns of V
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let p = 0; p < k; p++) acc += us[i * k + p]! * v[j * n + p]!;
      c[i * n + j] = acc;
    }
  return c;
}

/** Symmetric `Q·diag(λ)·Qᵀ` with a seeded random orthogonal Q. */
export function symWithEigs(lambda: readonly number[], seed: number): Float64Array {
  return symFrom(lambda, seed);
}

function symFrom(lambda: readonly number[], seed: number): Float64Array {
  const n = lambda.length;
  const q = randOrth(n, seed);
  const a = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j <= i; j++) {
      let s = 0;
      for (let p = 0; p < n; p++) s += q[i * n + p]! * lambda[p]! * q[j * n + p]!;
      a[i * n + j] = a[j * n + i] = s;
    }
  return a;
}

/** Seeded random symmetric n×n matrix (G + Gᵀ)/2, row-major. */
export function randSym(n: number, seed: number): Float64Array {
  const g = new Rng(seed).fillNormal(new Float64Array(n * n));
  const a = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) a[i * n + j] = (g[i * n + j]! + g[j * n + i]!) / 2;
  return a;
}
