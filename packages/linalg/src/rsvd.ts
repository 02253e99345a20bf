/**
 * Randomized truncated SVD (Halko, Martinsson & Tropp 2011) and the small dense kernels it needs: a cyclic Jacobi
 * symmetric eigensolver for the l×l core and block Gram–Schmidt orthonormalisation. The large products run on
 * the gemm kernels; everything of size l = k + oversample is done in f64.
 */
import { assertObject, CalderaError, Rng, throwIfAborted, type Matrix, type Tensor } from '@caldera/core';
import { abortingAs } from './abort.js';
import { assertCount, assertFiniteMatrix, assertMatrix } from './check.js';
import { gemm, gemmInto, type GemmOptions } from './gemm.js';
import type { Pool } from './pool/pool.js';
import { svdBuf } from './svd.js';
import { scaleToUnit, unitScale } from './dense.js';

/** Eigen-decomposition of a small symmetric matrix `a` (n×n row-major, f64) by cyclic Jacobi rotations. */
export function eighJacobi(a: Float64Array, n: number): { values: Float64Array; vectors: Float64Array } {
  assertObject(a, 'eighJacobi', 'a', 'a Float64Array');
  assertCount(n, 0, 'eighJacobi', 'n');
  if (a.length !== n * n)
    throw new CalderaError('E_SHAPE', `eighJacobi: ${a.length} values for a ${n}×${n} matrix`);
  const A = Float64Array.from(a);
  if (!A.every(Number.isFinite))
    throw new CalderaError('E_VALUE', 'eighJacobi: a has a non-finite value (NaN or ±Infinity)');
  // on 2^k·A with its largest entry near 1 (exact; see unitScale): the same rotations, bit for bit, where the sum of
  // squares and its tolerance stay in range, and eigenvalues beyond about 1e±150 instead of zeros
  const unit = scaleToUnit(A);
  const V = new Float64Array(n * n);
  for (let i = 0; i < n; i++) V[i * n + i] = 1;
  let scale = 0;
  for (let i = 0; i < n * n; i++) scale += A[i]! * A[i]!;
  const tol = 1e-30 * scale;
  for (let sweep = 0; sweep < 60; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += A[p * n + q]! * A[p * n + q]!;
    if (off <= tol) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = A[p * n + q]!;
        if (apq === 0) continue;
        const app = A[p * n + p]!;
        const aqq = A[q * n + q]!;
        const theta = (aqq - app) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = A[k * n + p]!;
          const akq = A[k * n + q]!;
          A[k * n + p] = c * akp - s * akq;
          A[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = A[p * n + k]!;
          const aqk = A[q * n + k]!;
          A[p * n + k] = c * apk - s * aqk;
          A[q * n + k] = s * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = V[k * n + p]!;
          const vkq = V[k * n + q]!;
          V[k * n + p] = c * vkp - s * vkq;
          V[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  const order = [...Array(n).keys()].sort((i, j) => A[i * n + i]! - A[j * n + j]!);
  const values = Float64Array.from(order, (i) => A[i * n + i]! / unit);
  const vectors = new Float64Array(n * n);
  order.forEach((src, dst) => {
    for (let k = 0; k < n; k++) vectors[k * n + dst] = V[k * n + src]!;
  });
  return { values, vectors };
}

/**
 * Orthonormalise the `l` columns of `z` (m×l row-major, f64) in place by two passes of block Gram–Schmidt: each panel
 * of 16 columns is projected off the columns before it by two products (classical Gram–Schmidt, on the gemm kernels),
 * then orthonormalised by modified Gram–Schmidt within itself. A column that the earlier ones span (what is left
 * after the projections is below 1e-11 of its norm) becomes zero. `m` and `l` must be non-negative integers
 * (`E_VALUE`) and `z` hold exactly m·l values (`E_SHAPE`).
 */
export function orthonormalizeColumns(z: Float64Array, m: number, l: number): void {
  assertObject(z, 'orthonormalizeColumns', 'z', 'a Float64Array');
  assertCount(m, 0, 'orthonormalizeColumns', 'm');
  assertCount(l, 0, 'orthonormalizeColumns', 'l');
  if (z.length !== m * l)
    throw new CalderaError(
      'E_SHAPE',
      `orthonormalizeColumns: z has ${z.length} values for a ${m}×${l} matrix`,
    );
  orthonormalizeInPlace(z, m, l, {}, 'orthonormalizeColumns');
}

/**
 * Columns per panel of {@link orthonormalizeInPlace}. Column by column, Gram–Schmidt on a row-major z read every
 * value with a stride of l (43 s of a 147 s decomposition at l = 310, m = 4096); by panels, all but the within-panel
 * work (m·16·l of its m·l² multiply-adds) runs as gemm. A randomized SVD of rank 300 of a 4096² matrix took 8.6 s with
 * panels of 64, 6.0–6.4 s with 32, 5.2 s with 16 and 5.3–5.8 s with 8.
 */
const ORTH_PANEL = 16;

/**
 * {@link orthonormalizeColumns} on the pool, checking `signal` before each panel (abort names `what`). With two
 * passes ("twice is enough"), the classical projections leave the columns orthonormal to rounding, like modified
 * Gram–Schmidt's; a single panel (l ≤ 16) is modified Gram–Schmidt column by column.
 */
function orthonormalizeInPlace(
  z: Float64Array,
  m: number,
  l: number,
  run: { pool?: Pool; signal?: AbortSignal },
  what: string,
): void {
  const { signal } = run;
  const view = (col: number, cols: number): Tensor<'f64'> => ({
    dtype: 'f64',
    shape: [m, cols],
    strides: [l, 1],
    offset: col,
    data: z,
  });
  const products = { checkFinite: false, ...(run.pool ? { pool: run.pool } : {}) };
  const cols = new Float64Array(Math.min(l, ORTH_PANEL) * m); // the panel's columns, each contiguous
  const before = new Float64Array(ORTH_PANEL);
  for (let pass = 0; pass < 2; pass++) {
    for (let p0 = 0; p0 < l; p0 += ORTH_PANEL) {
      throwIfAborted(signal, what);
      const w = Math.min(ORTH_PANEL, l - p0);
      for (let j = 0; j < w; j++) {
        const c = j * m;
        for (let r = 0; r < m; r++) cols[c + r] = z[r * l + p0 + j]!;
        // column j at 2^k times itself, its largest entry near 1 (exact): the same unit column, bit for bit, where its
        // sums of squares stay in range, and not a zero column where they left it (entries beyond about 1e±150)
        if (pass === 0) {
          let mx = 0;
          for (let r = 0; r < m; r++) mx = Math.max(mx, Math.abs(cols[c + r]!));
          const scale = unitScale(mx);
          if (scale !== 1) for (let r = 0; r < m; r++) cols[c + r]! *= scale;
        }
        let sq = 0;
        for (let r = 0; r < m; r++) sq += cols[c + r]! ** 2;
        before[j] = sq;
      }
      if (p0 > 0) {
        // Z_p ← Z_p − Q·(Qᵀ·Z_p) against the orthonormal (or zero) columns before the panel
        for (let j = 0; j < w; j++) for (let r = 0; r < m; r++) z[r * l + p0 + j] = cols[j * m + r]!;
        const qPrev = view(0, p0);
        const panel = view(p0, w);
        const c = abortingAs(what, () => gemm(qPrev, panel, { ...products, transA: true }));
        abortingAs(what, () => gemmInto(panel, qPrev, c, { ...products, alpha: -1, beta: 1 }));
        for (let j = 0; j < w; j++) for (let r = 0; r < m; r++) cols[j * m + r] = z[r * l + p0 + j]!;
      }
      for (let j = 0; j < w; j++) {
        const cj = j * m;
        for (let i = 0; i < j; i++) {
          const ci = i * m;
          let d = 0;
          for (let r = 0; r < m; r++) d += cols[ci + r]! * cols[cj + r]!;
          for (let r = 0; r < m; r++) cols[cj + r]! -= d * cols[ci + r]!;
        }
        let nrm = 0;
        for (let r = 0; r < m; r++) nrm += cols[cj + r]! ** 2;
        nrm = Math.sqrt(nrm);
        // a dependent column becomes zero (rank-deficient input). Dependent means: what the projections left is at the
        // level of their rounding (~√m·ε of the column's norm), not only below an absolute 1e-300 — else that rounding
        // error was normalised into a unit column inside the span of the earlier ones (it stays there when the span is
        // the whole space the columns live in: W with all-zero rows), and Q was not orthonormal. 1e-11 is ~400× the
        // rounding of a 16384-row column and far below a direction that matters (σ/σ₁ ≥ 1e-11 in the first sketch).
        const inv = nrm > 1e-300 && nrm > 1e-11 * Math.sqrt(before[j]!) ? 1 / nrm : 0;
        for (let r = 0; r < m; r++) cols[cj + r]! *= inv;
      }
      for (let j = 0; j < w; j++) for (let r = 0; r < m; r++) z[r * l + p0 + j] = cols[j * m + r]!;
    }
  }
}

/** Options of {@link randomizedSvd}. */
export interface RandomizedSvdOptions {
  /** Extra random directions beyond k, a non-negative integer (else `E_VALUE`). Default 10. */
  oversample?: number;
  /**
   * Subspace (power) iterations, each sharpening the spectrum by one power of A·Aᵀ; a non-negative integer (else
   * `E_VALUE`). Default 2.
   */
  powerIters?: number;
  /** Seed of the Gaussian test matrix. Default 0. */
  seed?: number;
  pool?: Pool;
  /**
   * Abort (`E_ABORTED`) between the waves of the products, the panels of each orthonormalisation, and during the
   * small SVD.
   */
  signal?: AbortSignal;
}

/** A truncated SVD `A ≈ U·diag(s)·Vᵀ` (f64): `u` m×k, `s` descending, `vt` k×n. */
export interface TruncatedSvd {
  u: Tensor<'f64'>;
  s: Float64Array;
  vt: Tensor<'f64'>;
}

function toDType(x: Float64Array, dtype: 'f32' | 'f64', shape: [number, number]): Matrix {
  return dtype === 'f64'
    ? { dtype, shape, strides: [shape[1], 1], offset: 0, data: x }
    : { dtype, shape, strides: [shape[1], 1], offset: 0, data: Float32Array.from(x) };
}

/** Rank-k randomized SVD of `a` (m×n, f32 or f64). Deterministic given the seed (and with or without a `signal`). */
export function randomizedSvd(a: Matrix, k: number, options: RandomizedSvdOptions = {}): TruncatedSvd {
  assertMatrix(a, 'randomizedSvd', 'a');
  assertFiniteMatrix(a, 'randomizedSvd', 'a');
  const [m, n] = a.shape as [number, number];
  if (!Number.isInteger(k) || k < 0 || k > Math.min(m, n)) {
    throw new CalderaError(
      'E_VALUE',
      `randomizedSvd: rank ${k} must be an integer in [0, ${Math.min(m, n)}]`,
    );
  }
  const oversample = options.oversample ?? 10;
  const powerIters = options.powerIters ?? 2;
  assertCount(oversample, 0, 'randomizedSvd', 'oversample');
  assertCount(powerIters, 0, 'randomizedSvd', 'powerIters');
  const l = Math.min(k + oversample, Math.min(m, n));
  const what = 'randomizedSvd';
  const signal = options.signal;
  throwIfAborted(signal, what);
  // the products check the signal between their waves (about 10⁹ multiply-adds)
  const long: GemmOptions = {
    checkFinite: false,
    ...(options.pool ? { pool: options.pool } : {}),
    ...(signal ? { signal } : {}),
  };
  const mul = (x: Matrix, y: Matrix, transA = false): Matrix =>
    abortingAs(what, () => gemm(x, y, transA ? { ...long, transA } : long));
  const orth = (z: Float64Array, rows: number): void =>
    orthonormalizeInPlace(
      z,
      rows,
      l,
      { ...(options.pool ? { pool: options.pool } : {}), ...(signal ? { signal } : {}) },
      what,
    );
  const dt = a.dtype;
  const rng = new Rng(options.seed ?? 0);
  const omega = toDType(rng.fillNormal(new Float64Array(n * l)), dt, [n, l]);
  // the sketches Q (m × l) and Z (n × l) in f64, and for an f32 A their f32 copies and the products before their
  // copy to f64: each array made once, not per product (fresh arrays of this size cost their page faults each time)
  /** `d` as a rows × l row-major matrix of its dtype. */
  const sketch = (d: Float32Array | Float64Array, rows: number): Matrix =>
    ({
      dtype: d instanceof Float64Array ? 'f64' : 'f32',
      shape: [rows, l],
      strides: [l, 1],
      offset: 0,
      data: d,
    }) as Matrix;
  const out32 = new Float32Array(dt === 'f64' ? 0 : Math.max(m, n) * l);
  const in32 = new Float32Array(dt === 'f64' || powerIters === 0 ? 0 : Math.max(m, n) * l);
  /** `out` (f64, rows × l) = A·Y (`transA`: Aᵀ·Y), Y in A's dtype, the product made in A's dtype. */
  const mulInto = (out: Float64Array, rows: number, y: Matrix, transA: boolean): void => {
    const o = sketch(dt === 'f64' ? out : out32.subarray(0, rows * l), rows);
    abortingAs(what, () => gemmInto(o, a, y, transA ? { ...long, transA } : long));
    if (dt !== 'f64') out.set(o.data);
  };
  /** The f64 sketch `d` (rows × l) as an operand in A's dtype. */
  const operand = (d: Float64Array, rows: number): Matrix => {
    if (dt === 'f64') return sketch(d, rows);
    const c = in32.subarray(0, rows * l);
    c.set(d);
    return sketch(c, rows);
  };
  const q = new Float64Array(m * l);
  const z = new Float64Array(powerIters > 0 ? n * l : 0);
  mulInto(q, m, omega, false);
  orth(q, m);
  for (let it = 0; it < powerIters; it++) {
    mulInto(z, n, operand(q, m), true);
    orth(z, n);
    mulInto(q, m, operand(z, n), false);
    orth(q, m);
  }
  // B = Qᵀ·A (l×n) = U_B·S·Vᵀ by the accurate QR + one-sided Jacobi SVD (no Gram matrix, so small singular
  // values keep their relative accuracy); U = Q·U_B
  const bT = mul(toDType(q, dt, [m, l]), a, true);
  const small = svdBuf(Float64Array.from(bT.data), l, n, signal ? { signal } : {}, what);
  const s = small.s.slice(0, k);
  const ub = new Float64Array(l * k);
  for (let i = 0; i < l; i++) for (let t = 0; t < k; t++) ub[i * k + t] = small.u[i * l + t]!;
  const u = mul(
    { dtype: 'f64', shape: [m, l], strides: [l, 1], offset: 0, data: q },
    { dtype: 'f64', shape: [l, k], strides: [k, 1], offset: 0, data: ub },
  ).data as Float64Array;
  const vt = small.vt.slice(0, k * n);
  return {
    u: { dtype: 'f64', shape: [m, k], strides: [k, 1], offset: 0, data: u },
    s,
    vt: { dtype: 'f64', shape: [k, n], strides: [n, 1], offset: 0, data: vt },
  };
}
