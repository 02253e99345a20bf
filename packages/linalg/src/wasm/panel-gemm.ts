/**
 * The WebAssembly GEMM driver: packs op(A) and op(B) into the engine's memory (in chunks that fit a
 * memory budget), runs the panel kernels on the executor's threads over row blocks, and writes
 * `alpha·(A·B) + beta·C` into the strided output.
 */
import { CalderaError, throwIfAborted, type Matrix } from '@caldera/core';
import type { Executor } from '../pool/pool.js';
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
  KIND_SGEMM,
  LDC,
  NPI,
  NPJ,
  TRI,
} from '../pool/protocol.js';
import { HEAP_BASE, tryEnsureMemory } from './engine.js';
import { MR, NR_F32, NR_F64 } from './module.js';
import { packPanels, stageLines, type StridedSrc, type WasmPacker } from './pack.js';

/** Arguments of {@link panelGemmInto} (already validated; `k > 0`, `m, n > 0`). */
export interface PanelGemmArgs {
  c: Matrix;
  a: Matrix;
  b: Matrix;
  transA: boolean;
  transB: boolean;
  alpha: number;
  beta: number;
  /**
   * Only the upper (j ≥ i) or lower (j ≤ i) triangle of the square C is computed and written (`syrk`,
   * symmetric updates); tiles entirely in the other triangle are skipped.
   */
  triangle?: 'upper' | 'lower';
  /** Largest wasm scratch use per chunk in bytes (default {@link GEMM_SCRATCH_BYTES}, 256 MiB). */
  maxBytes?: number;
  /**
   * Called when a packed operand holds a non-finite value (checked on the packed copy, in wasm, which is
   * much faster than a scan in JavaScript); it must throw. Default: no check.
   */
  onNonFinite?: (operand: 'a' | 'b') => never;
  /** Checked between waves of row blocks; aborting throws `E_ABORTED` (C is then partly updated). */
  signal?: AbortSignal;
  /** Called after each wave with multiply-adds done and in total. */
  onProgress?: (p: KernelProgress) => void;
  /** K-block length (default 256 for f32, 128 for f64; for tuning). */
  kc?: number;
  /** Largest row block in 4-row panels (default 16; for tuning). */
  blockPanels?: number;
  /** Multiply-adds per wave when `signal` or `onProgress` is given (default 2³⁰; tests use less). */
  waveMadds?: number;
}

/** Progress of a long kernel call, in multiply-adds. */
export interface KernelProgress {
  done: number;
  total: number;
}

/**
 * Default scratch budget of one chunk, in bytes. The engine's memory grows to the largest chunk and is never returned,
 * so this is memory a process keeps: an n × n f64 update (a Hessian's accumulation, a Cholesky factorisation's
 * trailing update) at n = 11008 took 0.99 GB in one chunk under the 1 GiB budget of before. In chunks of at most
 * 256 MiB the output is copied in and out once all the same; only the operand panels of a chunk's rows or columns are
 * packed again per chunk (k·n values, against the chunk's k·n·n multiply-adds).
 */
const GEMM_SCRATCH_BYTES = 2 ** 28;

/** Multiply-adds per wave between abort checks / progress reports when either is requested. */
const WAVE_MADDS = 2 ** 30;

/** K-block length per dtype: one B micro-panel (kc × NR) stays in L1 (8 KiB f32, 4 KiB f64). */
const KC_F32 = 256;
export const KC_F64 = 128;
/** Largest row block, in A panels (64 rows × kc stays in L2). */
const MAX_BLOCK_PANELS = 16;

/** x rounded up to a multiple of q. */
export function roundUp(x: number, q: number): number {
  return Math.ceil(x / q) * q;
}

/**
 * `c := alpha·op(a)·op(b) + beta·c` on the WebAssembly kernels. Returns false, with c untouched, when the host refuses
 * the memory even the smallest chunks need (the caller takes its TypeScript path).
 */
export function panelGemmInto(exec: Executor, args: PanelGemmArgs, what: string): boolean {
  if (exec.busy) {
    // called again from inside a progress callback: the scratch memory holds our operands
    throw new CalderaError('E_VALUE', `${what}: executor is busy (nested call from onProgress?)`);
  }
  exec.busy = true;
  try {
    return panelGemmIntoImpl(exec, args, what);
  } finally {
    exec.busy = false;
  }
}

function panelGemmIntoImpl(exec: Executor, args: PanelGemmArgs, what: string): boolean {
  const { c, a, b, transA, transB, alpha, beta } = args;
  const triangle = args.triangle;
  const upper = triangle !== undefined; // one triangle: square chunks on the diagonal
  const f64 = c.dtype === 'f64';
  const es = f64 ? 8 : 4;
  const nr = f64 ? NR_F64 : NR_F32;
  const m = c.shape[0]!;
  const n = c.shape[1]!;
  const k = transA ? a.shape[0]! : a.shape[1]!;
  const srcA: StridedSrc = {
    data: a.data,
    offset: a.offset,
    sShort: transA ? a.strides[1]! : a.strides[0]!,
    sK: transA ? a.strides[0]! : a.strides[1]!,
  };
  const srcB: StridedSrc = {
    data: b.data,
    offset: b.offset,
    sShort: transB ? b.strides[0]! : b.strides[1]!,
    sK: transB ? b.strides[1]! : b.strides[0]!,
  };

  // Chunk sizes: the whole problem when it fits the budget, else halve the larger side.
  const q = 8; // multiple of MR and of NR for both dtypes
  const bytes = (x: number, y: number): number => es * (x * k + k * y + x * y);
  const chunks = (budget: number): [number, number] => {
    let mc = roundUp(m, q);
    let nc = roundUp(n, q);
    while (bytes(mc, nc) > budget && (mc > q || nc > q)) {
      if (upper || mc >= nc) mc = Math.max(q, roundUp(mc / 2, q));
      if (upper || nc > mc) nc = Math.max(q, roundUp(nc / 2, q));
    }
    return [mc, nc];
  };
  let [mc, nc] = chunks(args.maxBytes ?? GEMM_SCRATCH_BYTES);
  // f32: a staging area after the operands for packing lines in WebAssembly (see packPanels)
  const stagingBytes = f64 ? 0 : stageLines(k) * k * es;
  let staged = !f64;
  const end = (x: number, y: number): number =>
    roundUp(HEAP_BASE + bytes(x, y), 16) + (staged ? stagingBytes : 0);
  if (!tryEnsureMemory(exec.engine, end(mc, nc), what)) {
    // the host refused to grow the memory (a browser's cap): chunks that fit what there is, without staging, or
    // nothing (the caller takes its TypeScript path)
    staged = false;
    const have = exec.engine.memory.buffer.byteLength;
    [mc, nc] = chunks(have - HEAP_BASE);
    if (end(mc, nc) > have) return false;
  }
  const total = upper ? (m * (m + 1) * k) / 2 : m * n * k;
  let done = 0;
  const aOff = HEAP_BASE;
  const bOff = aOff + mc * k * es;
  const cOff = bOff + k * nc * es;
  const packer: WasmPacker | undefined = staged
    ? { exports: exec.engine.exports, staging: roundUp(cOff + mc * nc * es, 16), stagingBytes }
    : undefined;

  for (let i0 = 0; i0 < m; i0 += mc) {
    const mcnt = Math.min(mc, m - i0);
    let aPacked = false;
    for (let j0 = 0; j0 < n; j0 += nc) {
      if (triangle === 'upper' && j0 + nc <= i0) continue;
      if (triangle === 'lower' && j0 >= i0 + mc) continue;
      const ncnt = Math.min(nc, n - j0);
      const buf = exec.engine.memory.buffer;
      const view = f64 ? new Float64Array(buf) : new Float32Array(buf);
      const mcp = roundUp(mcnt, MR);
      const ncp = roundUp(ncnt, nr);
      if (!aPacked) {
        packPanels(view, aOff / es, srcA, i0, mcnt, m, k, MR, packer);
        aPacked = true;
        if (args.onNonFinite && !allFinite(exec, aOff, mcp * k * es, f64)) args.onNonFinite('a');
      }
      packPanels(view, bOff / es, srcB, j0, ncnt, n, k, nr, packer);
      if (args.onNonFinite && !allFinite(exec, bOff, ncp * k * es, f64)) args.onNonFinite('b');
      const npi = mcp / MR;
      const bp = Math.max(
        1,
        Math.min(args.blockPanels ?? MAX_BLOCK_PANELS, Math.floor(npi / (4 * exec.threads))),
      );
      const tri = upper && i0 === j0 ? (triangle === 'upper' ? 1 : 2) : 0;
      if (beta !== 0) readIn(c, view, cOff / es, ncp, i0, mcnt, j0, ncnt);
      // Waves of row panels: one wave unless abort checks or progress reports are wanted.
      const wantWaves = args.signal !== undefined || args.onProgress !== undefined;
      const rowMadds = Math.max(1, ncp * k);
      const wavePanels = wantWaves
        ? Math.max(bp * exec.threads, Math.ceil((args.waveMadds ?? WAVE_MADDS) / (rowMadds * MR)))
        : npi;
      for (let w0 = 0; w0 < npi; w0 += wavePanels) {
        throwIfAborted(args.signal, what);
        const w1 = Math.min(npi, w0 + wavePanels);
        exec.run(Math.ceil((w1 - w0) / bp), ({ i32: ctrl, f64: scal }) => {
          scal[ALPHA] = alpha;
          scal[BETA] = beta;
          ctrl[KIND] = f64 ? KIND_DGEMM : KIND_SGEMM;
          ctrl[APACK] = aOff;
          ctrl[BPACK] = bOff;
          ctrl[CPTR] = cOff;
          ctrl[K] = k;
          ctrl[IP_BASE] = w0;
          ctrl[NPI] = w1;
          ctrl[BP] = bp;
          ctrl[NPJ] = ncp / nr;
          ctrl[LDC] = ncp;
          ctrl[KC] = args.kc ?? (f64 ? KC_F64 : KC_F32);
          ctrl[TRI] = tri;
          ctrl[BPS] = 0;
          ctrl[CPS] = 0;
        });
        if (args.onProgress) {
          const rows = Math.min(mcnt, w1 * MR) - Math.min(mcnt, w0 * MR);
          done += tri ? waveTriMadds(i0 + w0 * MR, rows, j0, ncnt, k, tri === 1) : rows * ncnt * k;
          args.onProgress({ done: Math.min(done, total), total });
        }
      }
      writeOut(c, view, cOff / es, ncp, i0, mcnt, j0, ncnt, triangle);
    }
  }
  return true;
}

/** Multiply-adds of rows [r0, r0 + rows) of a diagonal block (columns j0 … j0 + ncnt − 1). */
function waveTriMadds(
  r0: number,
  rows: number,
  j0: number,
  ncnt: number,
  k: number,
  upperTri: boolean,
): number {
  let s = 0;
  for (let i = r0; i < r0 + rows; i++) {
    s += upperTri ? Math.max(0, j0 + ncnt - Math.max(i, j0)) : Math.max(0, Math.min(i + 1, j0 + ncnt) - j0);
  }
  return s * k;
}

function allFinite(exec: Executor, ptr: number, bytes: number, f64: boolean): boolean {
  const ex = exec.engine.exports;
  return (f64 ? ex.allFinite64(ptr, bytes) : ex.allFinite32(ptr, bytes)) === 1;
}

/** Copy the block of C at (i0, j0) into the padded wasm C buffer (for beta ≠ 0). */
function readIn(
  c: Matrix,
  dst: Float32Array | Float64Array,
  off: number,
  ld: number,
  i0: number,
  mcnt: number,
  j0: number,
  ncnt: number,
): void {
  const cd = c.data;
  const [s0, s1] = c.strides as [number, number];
  const cOff = c.offset + i0 * s0 + j0 * s1;
  if (s1 !== 1) {
    copyBanded(dst, off, ld, 1, cd, cOff, s0, s1, mcnt, ncnt);
    return;
  }
  for (let r = 0; r < mcnt; r++) dst.set(cd.subarray(cOff + r * s0, cOff + r * s0 + ncnt), off + r * ld);
}

/** Rows per band of {@link copyBanded}. */
const STRIDED_BAND = 64;

/**
 * `dst[dOff + r·dRow + j·dCol] = src[sOff + r·sRow + j·sCol]` for a `rows × cols` block, in bands of 64 rows, column
 * by column: where C's rows are strided (a transposed view, `s0 = 1`), the accesses to C then run along its short
 * stride and the band's lines of the packed side stay in cache (row by row, every access to a wide C missed the
 * cache: 2.4× the product's own time for a 49152 × 255 C).
 */
function copyBanded(
  dst: Float32Array | Float64Array,
  dOff: number,
  dRow: number,
  dCol: number,
  src: Float32Array | Float64Array,
  sOff: number,
  sRow: number,
  sCol: number,
  rows: number,
  cols: number,
): void {
  for (let r0 = 0; r0 < rows; r0 += STRIDED_BAND) {
    const r1 = Math.min(rows, r0 + STRIDED_BAND);
    for (let j = 0; j < cols; j++) {
      let d = dOff + r0 * dRow + j * dCol;
      let s = sOff + r0 * sRow + j * sCol;
      for (let r = r0; r < r1; r++, d += dRow, s += sRow) dst[d] = src[s]!;
    }
  }
}

/** Copy the finished block (alpha and beta already applied by the kernel) back into C. */
function writeOut(
  c: Matrix,
  src: Float32Array | Float64Array,
  off: number,
  ld: number,
  i0: number,
  mcnt: number,
  j0: number,
  ncnt: number,
  triangle: 'upper' | 'lower' | undefined,
): void {
  const cd = c.data;
  const [s0, s1] = c.strides as [number, number];
  if (s1 !== 1 && triangle === undefined) {
    copyBanded(cd, c.offset + i0 * s0 + j0 * s1, s0, s1, src, off, ld, 1, mcnt, ncnt);
    return;
  }
  for (let r = 0; r < mcnt; r++) {
    const i = i0 + r;
    const jStart = triangle === 'upper' ? Math.min(ncnt, Math.max(0, i - j0)) : 0;
    const jEnd = triangle === 'lower' ? Math.max(0, Math.min(ncnt, i - j0 + 1)) : ncnt;
    const s = off + r * ld + jStart;
    const d = c.offset + i * s0 + (j0 + jStart) * s1;
    if (s1 === 1) cd.set(src.subarray(s, s + jEnd - jStart), d);
    else for (let j = 0; j < jEnd - jStart; j++) cd[d + j * s1] = src[s + j]!;
  }
}
