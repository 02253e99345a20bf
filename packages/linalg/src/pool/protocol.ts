/**
 * The shared control block between the calling thread and pool workers: an `Int32Array` over a
 * SharedArrayBuffer. A task is a list of blocks of one kernel call (a panel-GEMM's row blocks, or the blocks of
 * eigh's symv or secular-equation kernels); every thread (the caller included)
 * claims blocks with `Atomics.add(NEXT)` until none are left, so a worker that starts late or is
 * descheduled never holds the task up, and the caller never depends on a worker having started.
 *
 * Publishing a task: NEXT = CLOSED, write the parameters, FIN = 0, NEXT = 0, GEN += 1, notify GEN.
 * A thread that claims block `b` reads NBLOCKS after the claim; `b >= NBLOCKS` means nothing is left
 * (CLOSED exceeds any block count, so late claims against a finished task find nothing). After a block
 * it adds one to FIN and notifies; the caller waits until FIN = NBLOCKS.
 */
import type { KernelExports } from '../wasm/module.js';

export const GEN = 0;
export const QUIT = 1;
export const NEXT = 2;
export const FIN = 3;
export const NBLOCKS = 4;
export const KIND = 5;
export const APACK = 6;
export const BPACK = 7;
export const CPTR = 8;
export const K = 9;
export const NPI = 10;
export const BP = 11;
export const NPJ = 12;
export const LDC = 13;
export const KC = 14;
export const TRI = 15;
/** First A panel of the task (blocks cover panels IP_BASE + b·BP …, up to NPI). */
export const IP_BASE = 16;
/** f64 GEMM only: stride of B's panels and of C's 4-column blocks, in elements (0: packed / row-major). */
export const BPS = 18;
export const CPS = 19;
/** i32 slots (even, so the f64 slots that follow are 8-byte aligned). Mirrored in `worker-source.ts`. */
export const CTRL_SLOTS = 20;
/** Two f64 slots after the i32 slots: alpha and beta. */
export const ALPHA = 0;
export const BETA = 1;
/** Bytes of the control block: 20 i32 slots, then 2 f64 slots. */
export const CTRL_BYTES = CTRL_SLOTS * 4 + 16;

/** The control block's two views. */
export interface Ctrl {
  readonly i32: Int32Array;
  readonly f64: Float64Array;
}

/** Views over a control block buffer of {@link CTRL_BYTES} bytes. */
export function ctrlViews(buffer: ArrayBufferLike): Ctrl {
  return { i32: new Int32Array(buffer, 0, CTRL_SLOTS), f64: new Float64Array(buffer, CTRL_SLOTS * 4, 2) };
}
/** NEXT while no task is open: larger than any block count, far from overflow. */
export const CLOSED = 1 << 30;

/** Kinds of task. */
export const KIND_SGEMM = 0;
export const KIND_DGEMM = 1;
/**
 * Symmetric matrix–vector product (f64, lower triangle): APACK = A, LDC = its leading dimension, K = its
 * order, BPACK = v, CPTR = the first of NPI partial outputs NPJ elements apart; block b computes the rows
 * [{@link symvSplit}(b), symvSplit(b + 1)) into output b (the caller adds the partial outputs).
 */
export const KIND_DSYMV = 2;

/**
 * Roots of the divide-and-conquer secular equation: APACK = dk, BPACK = z², K = their length, CPTR = origin
 * (f64), LDC = tau, ALPHA = ρ, BETA = ‖z‖²; block b of NPI solves roots [⌊b·K/NPI⌋, ⌊(b+1)·K/NPI⌋).
 */
export const KIND_SECULAR = 3;

/**
 * First row of part `b` of `parts` of an order-`len` lower triangle, so that the parts hold about the
 * same number of elements (row i holds i + 1). Mirrored in `worker-source.ts`.
 */
export function symvSplit(b: number, parts: number, len: number): number {
  return b >= parts ? len : Math.round(len * Math.sqrt(b / parts));
}

/** Columns per micro-tile by kind (MR is 4 for both). */
export function nrOfKind(kind: number): number {
  return kind === KIND_SGEMM ? 8 : 4;
}

/**
 * Claim and run blocks of the open task until none are left (the caller-thread side; the worker side
 * is the same loop in `worker-source.ts`). Returns the number of blocks this thread ran.
 */
export function runBlocks(c: Ctrl, ex: KernelExports): number {
  const ctrl = c.i32;
  let ran = 0;
  for (;;) {
    const b = Atomics.add(ctrl, NEXT, 1);
    const nb = Atomics.load(ctrl, NBLOCKS);
    if (b >= nb) return ran;
    runBlock(c, ex, b);
    ran++;
    Atomics.add(ctrl, FIN, 1);
    Atomics.notify(ctrl, FIN);
  }
}

/** Run block `b` of the open task. */
export function runBlock(c: Ctrl, ex: KernelExports, b: number): void {
  const ctrl = c.i32;
  const kind = ctrl[KIND]!;
  if (kind === KIND_SECULAR) {
    const k = ctrl[K]!;
    const parts = ctrl[NPI]!;
    const j0 = Math.floor((b * k) / parts);
    const j1 = Math.floor(((b + 1) * k) / parts);
    const [dk, z2, o, t] = [ctrl[APACK]!, ctrl[BPACK]!, ctrl[CPTR]!, ctrl[LDC]!].map((x) => x >>> 0);
    ex.secularRoots(dk!, z2!, k, c.f64[ALPHA]!, c.f64[BETA]!, j0, j1, o!, t!);
    return;
  }
  if (kind === KIND_DSYMV) {
    const parts = ctrl[NPI]!;
    const len = ctrl[K]!;
    const p = (ctrl[CPTR]! >>> 0) + b * ctrl[NPJ]! * 8;
    const i0 = symvSplit(b, parts, len);
    const i1 = symvSplit(b + 1, parts, len);
    ex.dsymvLowerRows(ctrl[APACK]! >>> 0, ctrl[LDC]!, i0, i1, ctrl[BPACK]! >>> 0, p);
    return;
  }
  const bp = ctrl[BP]!;
  const ip0 = ctrl[IP_BASE]! + b * bp;
  const ip1 = Math.min(ip0 + bp, ctrl[NPI]!);
  const nr = nrOfKind(kind);
  // TRI 1: only columns j ≥ first row (upper); TRI 2: only columns j ≤ last row (lower)
  const tri = ctrl[TRI]!;
  const jp0 = tri === 1 ? Math.floor((ip0 * 4) / nr) : 0;
  const jp1 = tri === 2 ? Math.min(ctrl[NPJ]!, Math.ceil((ip1 * 4) / nr)) : ctrl[NPJ]!;
  const f = kind === KIND_SGEMM ? ex.sgemmPanels : ex.dgemmPanels;
  f(
    ctrl[APACK]! >>> 0,
    ctrl[BPACK]! >>> 0,
    ctrl[CPTR]! >>> 0,
    ctrl[K]!,
    ip0,
    ip1,
    jp0,
    jp1,
    ctrl[LDC]!,
    ctrl[KC]!,
    c.f64[ALPHA]!,
    c.f64[BETA]!,
    ctrl[BPS]!,
    ctrl[CPS]!,
  );
}
