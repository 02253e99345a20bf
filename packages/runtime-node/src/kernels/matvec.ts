import { bf16ArrayToF32, f16ArrayToF32 } from '@caldera/core';
import { bumpAllocator, embeddedModule, KERNEL_BASE } from './wasm-module.js';
import { arenaBytes, placeIn, type ArenaRegion, type ArenaSpec, type KernelArena } from './arena.js';
import { MATVEC_WASM_BASE64 } from '../generated/matvec-wasm.js';
import { MATVEC_SHARED_WASM_BASE64 } from '../generated/matvec-shared-wasm.js';
import type { DecodeExecutor, WorkerTask } from './decode-pool.js';
import { evenRanges, SPLIT_MIN_WEIGHTS } from './row-split.js';

/**
 * The output-row ranges `[i0, rows]` of a dense `m × n` layer's single-row product over `threads` threads, the
 * caller's first: blocks of 4 rows spread evenly (the last part may end with a partial block), or a single part for
 * one thread or a small layer.
 */
export function denseRanges(m: number, n: number, threads: number): [number, number][] {
  return threads <= 1 || m * n < SPLIT_MIN_WEIGHTS ? [[0, m]] : evenRanges(0, m, 4, threads);
}

/**
 * `y[r·m + i] = Σ_j x[r·n + j]·w[i·n + j]` for `rows` input rows, W row-major `[m, n]` f32. Four partial sums per
 * output; the weight row is read once per input row (decode is memory-bound, so no copy into WebAssembly memory).
 */
export function matvecF32(
  w: Float32Array,
  m: number,
  n: number,
  x: Float32Array,
  rows: number,
  y: Float32Array,
) {
  const n4 = n - (n % 4);
  for (let r = 0; r < rows; r++) {
    const xo = r * n;
    for (let i = 0; i < m; i++) {
      const wo = i * n;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      let j = 0;
      for (; j < n4; j += 4) {
        s0 += x[xo + j]! * w[wo + j]!;
        s1 += x[xo + j + 1]! * w[wo + j + 1]!;
        s2 += x[xo + j + 2]! * w[wo + j + 2]!;
        s3 += x[xo + j + 3]! * w[wo + j + 3]!;
      }
      for (; j < n; j++) s0 += x[xo + j]! * w[wo + j]!;
      y[r * m + i] = s0 + s1 + s2 + s3;
    }
  }
}

/** The 16-bit float formats a dense layer can keep its weights in: IEEE half (f16) or bfloat16 (bf16). */
export type HalfFormat = 'f16' | 'bf16';

const halfTables: Partial<Record<HalfFormat, Float32Array>> = {};

/** All 65 536 f16 or bf16 values as f32 (256 KiB each, built once): one table read converts a weight. */
function halfToF32Table(format: HalfFormat): Float32Array {
  let t = halfTables[format];
  if (!t) {
    const bits = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) bits[i] = i;
    t = halfTables[format] = format === 'f16' ? f16ArrayToF32(bits) : bf16ArrayToF32(bits);
  }
  return t;
}

/**
 * As {@link matvecF32} with W stored as f16 (or, with `format` 'bf16', bf16) bits, converted on the fly by table
 * lookup (exact), so W is never materialised in f32.
 */
export function matvecF16(
  w: Uint16Array,
  m: number,
  n: number,
  x: Float32Array,
  rows: number,
  y: Float32Array,
  format: HalfFormat = 'f16',
) {
  const t = halfToF32Table(format);
  const n4 = n - (n % 4);
  for (let r = 0; r < rows; r++) {
    const xo = r * n;
    for (let i = 0; i < m; i++) {
      const wo = i * n;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      let j = 0;
      for (; j < n4; j += 4) {
        s0 += x[xo + j]! * t[w[wo + j]!]!;
        s1 += x[xo + j + 1]! * t[w[wo + j + 1]!]!;
        s2 += x[xo + j + 2]! * t[w[wo + j + 2]!]!;
        s3 += x[xo + j + 3]! * t[w[wo + j + 3]!]!;
      }
      for (; j < n; j++) s0 += x[xo + j]! * t[w[wo + j]!]!;
      y[r * m + i] = s0 + s1 + s2 + s3;
    }
  }
}

type Kernel = (w: number, m: number, n: number, x: number, rows: number, y: number) => void;
type KernelName = 'denseF32' | 'denseBf16' | 'denseF16Finite' | 'denseF16';

/** Memories of dense matrices that only the calling thread reads: the module's static data page, then the regions. */
export const DENSE_ARENA: ArenaSpec = {
  what: 'matvec kernel',
  module: MATVEC_WASM_BASE64,
  shared: false,
  fixedEnd: KERNEL_BASE,
};

/** Memories of dense matrices that a decode pool's threads read together (the shared-memory build of the module). */
export const DENSE_SHARED_ARENA: ArenaSpec = {
  what: 'matvec kernel (shared)',
  module: MATVEC_SHARED_WASM_BASE64,
  shared: true,
  fixedEnd: KERNEL_BASE,
};

/** Where {@link WasmMatrix} puts W, x and y in its region (from `start`), and the region's bytes. */
function wasmMatrixLayout(kind: 'f32' | HalfFormat, m: number, n: number, maxRows: number, start = 0) {
  const { alloc, end } = bumpAllocator(start);
  const wAt = alloc(m * n * (kind === 'f32' ? 4 : 2));
  const xAt = alloc(maxRows * n * 4);
  const yAt = alloc(maxRows * m * 4);
  return { wAt, xAt, yAt, bytes: end() - start };
}

/**
 * A dense matrix `W [m, n]` (f32, or f16 or bf16 bits) resident in a region of a WebAssembly memory (a model's arena,
 * or a memory of its own), multiplied by `x` (up to `maxRows` rows) with the SIMD kernels of asm/matvec.ts: the weights
 * are copied in once at construction and read in place on every call (decode is memory-bound, so no per-call copy of
 * W); only x and y cross the boundary. `weights` is the view of W inside that memory (later writes to it must keep f16
 * values finite when they were: the kernel for finite matrices is chosen once). With a decode pool of several threads
 * and at least {@link SPLIT_MIN_WEIGHTS} weights the memory is shared (a shared arena's holds unsplit matrices too):
 * for one input row every thread's kernel instance computes a range of the output rows from the same W
 * ({@link denseRanges}), to the same bits. {@link WasmMatrix.create} returns null when WebAssembly SIMD is unavailable
 * or W does not fit in one memory (4 GiB) or none can be reserved, and callers keep the TypeScript loops.
 */
export class WasmMatrix<K extends 'f32' | HalfFormat> {
  private constructor(
    readonly kind: K,
    readonly m: number,
    readonly n: number,
    readonly maxRows: number,
    /** W inside the WebAssembly memory (row-major). */
    readonly weights: K extends 'f32' ? Float32Array : Uint16Array,
    /** The matrix's buffers, held so that its memory stays alive as long as the matrix. */
    readonly region: ArenaRegion,
    private readonly kernel: Kernel,
    private readonly wAt: number,
    private readonly xAt: number,
    private readonly yAt: number,
    /** Views of the x and y regions (the memory never grows, so they stay valid). */
    private readonly xView: Float32Array,
    private readonly yView: Float32Array,
    /** With the rows split: the pool, the layer's job id, and the caller's rows (the first ones). */
    private readonly split: { pool: DecodeExecutor; id: number; rows: number } | null,
  ) {}

  /**
   * W copied into a region of `arena` (a shared arena's memories serve matrices split over a pool as well as the rest;
   * a split matrix given an unshared arena, or none, or one that cannot hold it, gets a memory of its own).
   */
  static create<K extends 'f32' | HalfFormat>(
    kind: K,
    w: K extends 'f32' ? Float32Array : Uint16Array,
    m: number,
    n: number,
    maxRows: number,
    pool?: DecodeExecutor,
    arena?: KernelArena,
  ): WasmMatrix<K> | null {
    const ranges = denseRanges(m, n, pool?.threads ?? 1);
    const shared = ranges.length > 1;
    if (w.length !== m * n) return null;
    const { bytes } = wasmMatrixLayout(kind, m, n, maxRows);
    const spec = shared ? DENSE_SHARED_ARENA : DENSE_ARENA;
    // a split matrix needs shared memory: an unshared arena cannot take it
    const region = placeIn(spec, arena && (arena.spec.shared || !shared) ? arena : undefined, bytes);
    if (!region) return null; // no SIMD, more than a memory holds, or the address space could not be reserved
    const { memory } = region;
    const exports = region.exports!;
    const { wAt, xAt, yAt } = wasmMatrixLayout(kind, m, n, maxRows, region.at);
    const view = (
      kind === 'f32'
        ? new Float32Array(memory.buffer, wAt, m * n)
        : new Uint16Array(memory.buffer, wAt, m * n)
    ) as K extends 'f32' ? Float32Array : Uint16Array;
    view.set(w as never);
    // f16 without infinities or NaNs (every real checkpoint) takes the shorter exact conversion
    const finite =
      kind === 'f16' && (exports.finiteHalves as (w: number, count: number) => number)(wAt, m * n) === 1;
    const fn: KernelName =
      kind === 'f32' ? 'denseF32' : kind === 'bf16' ? 'denseBf16' : finite ? 'denseF16Finite' : 'denseF16';
    const kernel = exports[fn] as Kernel;
    const xView = new Float32Array(memory.buffer, xAt, maxRows * n);
    const yView = new Float32Array(memory.buffer, yAt, maxRows * m);
    let split: { pool: DecodeExecutor; id: number; rows: number } | null = null;
    if (shared) {
      // each worker: its rows of y for input row 0, read from the same W (4 bytes per f32 weight, 2 per 16-bit one)
      const bytes = kind === 'f32' ? 4 : 2;
      const tasks: (WorkerTask | null)[] = Array.from({ length: pool!.threads - 1 }, (_, t) => {
        const part = ranges[t + 1];
        if (!part) return null;
        const [i0, rows] = part;
        return { memory, module: 'matvec', fn, args: [wAt + i0 * n * bytes, rows, n, xAt, 1, yAt + i0 * 4] };
      });
      split = { pool: pool!, id: pool!.register(tasks), rows: ranges[0]![1] };
    }
    const matrix = new WasmMatrix(
      kind,
      m,
      n,
      maxRows,
      view,
      region,
      kernel,
      wAt,
      xAt,
      yAt,
      xView,
      yView,
      split,
    );
    if (split) split.pool.track(matrix, split.id); // the workers drop their instances once it is collected
    return matrix;
  }

  /**
   * Bytes of the region {@link WasmMatrix.create} places in an arena for these arguments (W, x and y, each 16-byte
   * aligned), or null where it returns null — WebAssembly SIMD unavailable, or more than a memory holds — and the
   * caller keeps W in its own array. Computed without allocating anything (memory plans).
   */
  static regionBytes(kind: 'f32' | HalfFormat, m: number, n: number, maxRows: number): number | null {
    if (!embeddedModule(MATVEC_WASM_BASE64)) return null;
    const { bytes } = wasmMatrixLayout(kind, m, n, maxRows);
    return arenaBytes(DENSE_ARENA, [bytes]) === 0 ? null : bytes;
  }

  /**
   * Bytes of the WebAssembly memory {@link WasmMatrix.create} allocates for these arguments without an arena (whole
   * 64 KiB pages: the module's static data page, then the {@link WasmMatrix.regionBytes}), or null where it returns
   * null.
   */
  static memoryBytes(kind: 'f32' | HalfFormat, m: number, n: number, maxRows: number): number | null {
    const bytes = WasmMatrix.regionBytes(kind, m, n, maxRows);
    return bytes === null ? null : arenaBytes(DENSE_ARENA, [bytes]);
  }

  /** `y[r·m + i] = Σ_j x[r·n + j]·W[i, j]` for `rows ≤ maxRows` input rows. */
  matvec(x: Float32Array, rows: number, y: Float32Array): void {
    const { m, n } = this;
    // a split layer's y is written by the workers too: with a stopped worker, none of its products is safe
    if (this.split && rows > 1) this.split.pool.assertRunnable();
    if (this.split && rows === 1) {
      const { pool, id, rows: own } = this.split;
      this.xView.set(x.length === n ? x : x.subarray(0, n));
      pool.run(id, () => this.kernel(this.wAt, own, n, this.xAt, 1, this.yAt));
      y.set(this.yView.subarray(0, m));
      return;
    }
    this.xView.set(rows === this.maxRows && x.length === rows * n ? x : x.subarray(0, rows * n));
    this.kernel(this.wAt, m, n, this.xAt, rows, this.yAt);
    y.set(rows === this.maxRows ? this.yView : this.yView.subarray(0, rows * m));
  }
}
