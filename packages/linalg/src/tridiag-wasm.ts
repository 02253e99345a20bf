/**
 * The blocked Householder tridiagonalisation of {@link tridiagonalizeBlocked} with the matrix kept in the
 * executor's WebAssembly memory for the whole reduction: the memory-bound symmetric matrix–vector product
 * (half of the O(n³) work) runs on the `dsymvLowerRows` SIMD kernel, split over the pool's threads, and the
 * trailing rank-2b update `A₂₂ −= V·Wᵀ + W·Vᵀ` runs on the `dgemmPanels` kernel in place (one product of
 * inner dimension 2b, lower-triangle tiles only). The O(n²·b) panel bookkeeping stays in TypeScript, on
 * views of the same memory. Internal to the package (used by {@link eigh}).
 */
import { throwIfAborted } from '@caldera/core';
import type { Executor } from './pool/pool.js';
import {
  ALPHA,
  APACK,
  BETA,
  BP,
  BPACK,
  BPS,
  CPS,
  CPTR,
  IP_BASE,
  K,
  KC,
  KIND,
  KIND_DGEMM,
  KIND_DSYMV,
  LDC,
  NPI,
  NPJ,
  symvSplit,
  TRI,
} from './pool/protocol.js';
import { columnReflector, compactWyT } from './householder.js';
import type { Reflectors, Tridiagonal } from './tridiag.js';
import { HEAP_BASE, tryEnsureMemory } from './wasm/engine.js';
import { MAX_PAGES } from './wasm/module.js';
import { KC_F64, roundUp } from './wasm/panel-gemm.js';

/** Bytes a wasm32 memory can hold. */
const WASM_LIMIT = MAX_PAGES * 65536;

/** Rows of the symmetric product below which one thread does it all (the hand-off costs more). */
const SYMV_SPLIT_MIN = 256;

/**
 * Same contract as {@link tridiagonalizeBlocked} (`w` holds the lower triangle on entry and the reflectors
 * on return), on the executor's kernels. `n ≥ 3` and `nb ≥ 1` are assumed. Returns `null`, having changed
 * nothing, when the matrix does not fit a wasm32 memory (n ≳ 23 000); the caller then uses TypeScript.
 */
export function tridiagonalizeWasm(
  w: Float64Array,
  n: number,
  exec: Executor,
  signal?: AbortSignal,
  nb = 32,
): Tridiagonal | null {
  // Leading dimension: a multiple of 4 with room for the 3 columns past n that the last gemm tiles touch,
  // and not a power of two (n = 2048 rows 16 KiB apart would alias in the caches). 3 padding rows likewise.
  const ld = roundUp(n, 4) + 4;
  const aLen = (n + 4) * ld;
  const npad = roundUp(n, 4);
  const threads = exec.threads;
  const aOff = HEAP_BASE;
  const xOff = aOff + aLen * 8; // packed [V W] (A panels of the update)
  const yOff = xOff + npad * 2 * nb * 8; // packed [W V] (B panels)
  const vOff = yOff + npad * 2 * nb * 8;
  const pOff = vOff + npad * 8; // one partial product per thread
  const pnOff = pOff + threads * npad * 8; // the panel [V | W], n × 2nb
  const uOff = pnOff + n * 2 * nb * 8; // 2nb scratch values of the panel correction
  // too large for wasm32, or the host will not grow the memory: the TypeScript reduction
  if (uOff + 2 * nb * 8 > WASM_LIMIT || !tryEnsureMemory(exec.engine, uOff + 2 * nb * 8, 'eigh')) return null;
  const buf = exec.engine.memory.buffer;
  const A = new Float64Array(buf, aOff, aLen);
  const X = new Float64Array(buf, xOff, npad * 2 * nb);
  const Y = new Float64Array(buf, yOff, npad * 2 * nb);
  const v = new Float64Array(buf, vOff, npad);
  const pp = new Float64Array(buf, pOff, threads * npad);
  const p = pp.subarray(0, npad);
  const VW = new Float64Array(buf, pnOff, n * 2 * nb);
  A.fill(0);
  for (let i = 0; i < n; i++) A.set(w.subarray(i * n, i * n + i + 1), i * ld);

  const d = new Float64Array(n);
  const e = new Float64Array(n);
  const taus = new Float64Array(n);
  const ldx = 2 * nb;
  const ex = exec.engine.exports;

  /** p[0..len) = A[o.., o..]·v (lower triangle), on up to `threads` threads. */
  const symv = (o: number, len: number): void => {
    const a = aOff + (o * ld + o) * 8;
    const parts = len >= SYMV_SPLIT_MIN ? threads : 1;
    if (parts === 1) {
      ex.dsymvLowerRows(a, ld, 0, len, vOff, pOff);
      return;
    }
    exec.run(parts, ({ i32: ctrl }) => {
      ctrl[KIND] = KIND_DSYMV;
      ctrl[APACK] = a;
      ctrl[LDC] = ld;
      ctrl[K] = len;
      ctrl[BPACK] = vOff;
      ctrl[CPTR] = pOff;
      ctrl[NPJ] = npad;
      ctrl[NPI] = parts;
    });
    // part t wrote p_t[0..end_t) (end_t: the end of its rows) and nothing beyond; p (= p_0) gets the sum
    let prevEnd = symvSplit(1, parts, len);
    for (let t = 1; t < parts; t++) {
      const base = t * npad;
      const end = symvSplit(t + 1, parts, len);
      for (let i = 0; i < prevEnd; i++) p[i]! += pp[base + i]!;
      for (let i = prevEnd; i < end; i++) p[i] = pp[base + i]!;
      prevEnd = end;
    }
  };

  for (let j0 = 0; j0 < n - 2; j0 += nb) {
    throwIfAborted(signal, 'eigh');
    const b = Math.min(nb, n - 2 - j0);
    VW.fill(0);
    for (let c = 0; c < b; c++) {
      const j = j0 + c;
      // 1. bring column j (rows ≥ j) up to date with the panel's previous reflectors
      if (c > 0) ex.dlatrdColumn(aOff, ld, pnOff, nb, c, j, n);
      d[j] = A[j * ld + j]!;
      // 2. reflector from A[j+1.., j], also as column c of the panel
      const o = j + 1;
      const len = n - o;
      if (!columnReflector(A, ld, j, n, v, e, taus)) continue;
      const tau = taus[j]!;
      for (let i = 0; i < len; i++) VW[(o + i) * ldx + c] = v[i]!;
      // 3. p = A₂₂(not yet updated)·v − V(Wᵀv) − W(Vᵀv), rows/cols ≥ o
      symv(o, len);
      if (c > 0) ex.dlatrdCorrect(pnOff, nb, c, o, len, vOff, pOff, uOff);
      // 4. w = τp − (τ/2)(τpᵀv)·v
      let pv = 0;
      for (let i = 0; i < len; i++) {
        p[i]! *= tau;
        pv += p[i]! * v[i]!;
      }
      const k = 0.5 * tau * pv;
      for (let i = 0; i < len; i++) VW[(o + i) * ldx + nb + c] = p[i]! - k * v[i]!;
    }
    // trailing update of rows/cols ≥ r0: A −= [V W]·[W V]ᵀ (lower-triangle tiles), in place in wasm memory
    const r0 = j0 + b;
    const rows = n - r0;
    if (rows <= 0) continue;
    const kk = 2 * b;
    const npi = Math.ceil(rows / 4);
    packPair(X, VW, r0, rows, npi, b, nb, false);
    packPair(Y, VW, r0, rows, npi, b, nb, true);
    panelProduct(exec, {
      apack: xOff,
      bpack: yOff,
      c: aOff + (r0 * ld + r0) * 8,
      k: kk,
      npi,
      npj: npi,
      ldc: ld,
      alpha: -1,
      beta: 1,
      bps: 0,
      cps: 0,
      tri: 2,
    });
  }
  d[n - 2] = A[(n - 2) * ld + n - 2]!;
  e[n - 2] = A[(n - 1) * ld + n - 2]!;
  d[n - 1] = A[(n - 1) * ld + n - 1]!;
  e[n - 1] = 0;
  // the reflectors (and the rest of the lower triangle) back into w for the back-transformation
  for (let i = 0; i < n; i++) w.set(A.subarray(i * ld, i * ld + i + 1), i * n);
  return { d, e, taus };
}

/**
 * Pack rows r0.. of `[V W]` (`swap`: `[W V]`; first b columns of each, from the panel `VW` of row stride
 * 2nb) into 4-row panels of inner dimension 2b (`asm/kernels.ts` layout: panel ip holds, for each k, rows
 * 4ip..4ip+3); rows past the end are zero.
 */
function packPair(
  dst: Float64Array,
  VW: Float64Array,
  r0: number,
  rows: number,
  npi: number,
  b: number,
  nb: number,
  swap: boolean,
): void {
  const kk = 2 * b;
  const f0 = swap ? nb : 0;
  const g0 = swap ? 0 : nb;
  for (let ip = 0; ip < npi; ip++) {
    const base = ip * kk * 4;
    for (let l = 0; l < 4; l++) {
      const r = 4 * ip + l;
      if (r >= rows) {
        for (let q = 0; q < kk; q++) dst[base + q * 4 + l] = 0;
        continue;
      }
      const src = (r0 + r) * 2 * nb;
      for (let q = 0; q < b; q++) {
        dst[base + q * 4 + l] = VW[src + f0 + q]!;
        dst[base + (b + q) * 4 + l] = VW[src + g0 + q]!;
      }
    }
  }
}

/** Arguments of one f64 panel product on the executor (see `dgemmPanels` in `asm/kernels.ts`). */
export interface PanelProduct {
  apack: number;
  bpack: number;
  c: number;
  k: number;
  /** 4-row panels of A (= of C) */
  npi: number;
  /** 4-column panels of B (= of C) */
  npj: number;
  ldc: number;
  alpha: number;
  beta: number;
  /** B panel stride in elements (0: packed, 4k) */
  bps: number;
  /** C 4-column block stride in elements (0: row-major, 4) */
  cps: number;
  /** Which tiles of C: 0 all (default), 2 the lower triangle's (the symmetric rank-2b update) */
  tri?: number;
}

/** Run one panel product over the executor's threads, in blocks of 4-row panels. */
export function panelProduct(exec: Executor, a: PanelProduct): void {
  const bp = Math.max(1, Math.min(16, Math.floor(a.npi / (4 * exec.threads))));
  exec.run(Math.ceil(a.npi / bp), ({ i32: ctrl, f64: scal }) => {
    scal[ALPHA] = a.alpha;
    scal[BETA] = a.beta;
    ctrl[KIND] = KIND_DGEMM;
    ctrl[APACK] = a.apack;
    ctrl[BPACK] = a.bpack;
    ctrl[CPTR] = a.c;
    ctrl[K] = a.k;
    ctrl[IP_BASE] = 0;
    ctrl[NPI] = a.npi;
    ctrl[BP] = bp;
    ctrl[NPJ] = a.npj;
    ctrl[LDC] = a.ldc;
    ctrl[KC] = KC_F64;
    ctrl[TRI] = a.tri ?? 0;
    ctrl[BPS] = a.bps;
    ctrl[CPS] = a.cps;
  });
}

/**
 * Same contract as {@link backTransformBlocked} (`y ← Q·y`, Q from the reflectors in `w` and `taus`), with
 * y kept in the executor's wasm memory for the whole product, stored as 4-column panels — the kernels' B
 * layout — so that every block of reflectors `I − V·T·Vᵀ` is applied with four panel products (S = VᵀV among them) and no
 * repacking of y: `W = Vᵀ·Y` (Y read in place as B), `W ← T·W` (W written directly in B layout) and
 * `Y −= V·W` (Y updated in place as C). Only V, T and W (O(n·nb) each) are packed per block. Returns false,
 * having changed nothing, when y does not fit a wasm32 memory; the caller then uses TypeScript.
 */
export function backTransformWasm(
  refl: Reflectors,
  taus: Float64Array,
  n: number,
  y: Float64Array,
  exec: Executor,
  signal?: AbortSignal,
  nb = 64,
): boolean {
  const np = Math.ceil(n / 4); // column panels of Y
  const ph = (n + 4) * 4; // elements per panel: n rows + 3 rows touched by the last row tiles
  const kbMax = roundUp(nb, 4);
  const n4 = roundUp(n, 4);
  const yOff = HEAP_BASE;
  const vtOff = yOff + np * ph * 8; // Vᵀ as A panels (= V as B panels): kb × rows
  const vaOff = vtOff + kbMax * n4 * 8; // V as A panels: rows × kb
  const sOff = vaOff + n4 * kbMax * 8; // S = VᵀV, kb × kb row-major
  const tOff = sOff + kbMax * kbMax * 8; // T as A panels
  const wOff = tOff + kbMax * kbMax * 8; // W = Vᵀ·Y in B layout (kb × 4 per panel)
  const twOff = wOff + np * kbMax * 4 * 8; // T·W in B layout
  const end = twOff + np * kbMax * 4 * 8;
  if (end > WASM_LIMIT || !tryEnsureMemory(exec.engine, end, 'eigh')) return false; // the TypeScript back-transform
  const buf = exec.engine.memory.buffer;
  const Y = new Float64Array(buf, yOff, np * ph);
  const VT = new Float64Array(buf, vtOff, kbMax * n4);
  const VA = new Float64Array(buf, vaOff, n4 * kbMax);
  const S = new Float64Array(buf, sOff, kbMax * kbMax);
  const T = new Float64Array(buf, tOff, kbMax * kbMax);
  Y.fill(0);
  for (let r = 0; r < n; r++) {
    const src = r * n;
    for (let c = 0; c < n; c++) Y[(c >> 2) * ph + r * 4 + (c & 3)] = y[src + c]!;
  }
  const t = new Float64Array(kbMax * kbMax);
  const w = refl.data;
  const nref = Math.max(0, n - 2);
  for (let j1 = nref; j1 > 0; j1 -= nb) {
    throwIfAborted(signal, 'eigh');
    const j0 = Math.max(0, j1 - nb);
    const b = j1 - j0;
    const kb = roundUp(b, 4); // columns b..kb−1 of V and rows/columns of T are zero
    const r0 = j0 + 1; // first row touched by the block
    const rows = n - r0;
    const npi = Math.ceil(rows / 4);
    // V (rows × kb): column c = reflector j0+c, unit at row c, entries w[r0+p, j0+c] below, zeros above
    VT.fill(0, 0, kb * rows);
    VA.fill(0, 0, npi * 4 * kb);
    for (let p = 0; p < rows; p++) {
      const src = refl.row(r0 + p) + j0;
      const cEnd = Math.min(b, p);
      const at = (p >> 2) * kb * 4 + (p & 3);
      for (let c = 0; c < cEnd; c++) {
        const x = w[src + c]!;
        VT[(c >> 2) * rows * 4 + p * 4 + (c & 3)] = x;
        VA[at + c * 4] = x;
      }
      if (p < b) {
        VT[(p >> 2) * rows * 4 + p * 4 + (p & 3)] = 1;
        VA[at + p * 4] = 1;
      }
    }
    // S = VᵀV, then T (b×b upper): T[c,c] = τ, T[0:c, c] = −τ·T[0:c,0:c]·S[0:c, c]
    const kp = kb / 4;
    panelProduct(exec, {
      apack: vtOff,
      bpack: vtOff,
      c: sOff,
      k: rows,
      npi: kp,
      npj: kp,
      ldc: kb,
      alpha: 1,
      beta: 0,
      bps: 0,
      cps: 0,
    });
    t.fill(0, 0, kb * kb);
    compactWyT(taus, j0, b, S, kb, t, kb);
    for (let i = 0; i < kb; i++)
      for (let p = 0; p < kb; p++) T[(i >> 2) * kb * 4 + p * 4 + (i & 3)] = t[i * kb + p]!;
    // W = Vᵀ·Y[r0:, :] (kb × n, B layout), W ← T·W, Y[r0:, :] −= V·W
    panelProduct(exec, {
      apack: vtOff,
      bpack: yOff + r0 * 32,
      c: wOff,
      k: rows,
      npi: kp,
      npj: np,
      ldc: 4,
      alpha: 1,
      beta: 0,
      bps: ph,
      cps: kb * 4,
    });
    panelProduct(exec, {
      apack: tOff,
      bpack: wOff,
      c: twOff,
      k: kb,
      npi: kp,
      npj: np,
      ldc: 4,
      alpha: 1,
      beta: 0,
      bps: 0,
      cps: kb * 4,
    });
    panelProduct(exec, {
      apack: vaOff,
      bpack: twOff,
      c: yOff + r0 * 32,
      k: kb,
      npi,
      npj: np,
      ldc: 4,
      alpha: -1,
      beta: 1,
      bps: 0,
      cps: ph,
    });
  }
  for (let r = 0; r < n; r++) {
    const dst = r * n;
    for (let c = 0; c < n; c++) y[dst + c] = Y[(c >> 2) * ph + r * 4 + (c & 3)]!;
  }
  return true;
}
