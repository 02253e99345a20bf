import { CalderaError } from '@caldera/core';
import { hadamardBase, hadamardFactor } from '@caldera/linalg';
import { latticeDecode, type Decomposition } from '@caldera/lowrank';
import { bumpAllocator, embeddedModule, KERNEL_BASE } from './wasm-module.js';
import { arenaBytes, placeIn, type ArenaRegion, type ArenaSpec, type KernelArena } from './arena.js';
import { CALDERA_WASM_BASE64 } from '../generated/caldera-wasm.js';
import type { CalderaBatchLayer, CodeSlice } from './batch-workspace.js';
import type { DecodeExecutor, WorkerTask } from './decode-pool.js';
import { evenRanges, SPLIT_MIN_WEIGHTS } from './row-split.js';
import { e8pLutTables } from './e8p-lut.js';

/** End of the region fixed by asm/e8p.ts: the two 256-entry maps at {@link KERNEL_BASE}, then 2 × 2 groups' tables. */
export const E8P_FIXED_END = KERNEL_BASE + 2048 + 4 * 4096;

/** The first-half and second-half patterns (128 f32 each) after the E8P region, then the layers' regions. */
const P1_AT = E8P_FIXED_END;
const P2_AT = P1_AT + 512;
const CALDERA_FIXED_END = P2_AT + 512;

/**
 * The calling thread's memories of CALDERA layers: the kernel module, the E8P tables and patterns at fixed addresses.
 */
export const CALDERA_ARENA: ArenaSpec = {
  what: 'caldera kernel',
  module: CALDERA_WASM_BASE64,
  shared: false,
  fixedEnd: CALDERA_FIXED_END,
  init: writeTables,
};

/** A decode pool worker's memories of its rows of split CALDERA layers (only the worker runs code in them). */
export const CALDERA_PART_ARENA: ArenaSpec = { ...CALDERA_ARENA, module: null, shared: true };

/** ta/ts entries as byte offsets (index·4 in each 16-bit half), as asm/e8p.ts reads them. */
export const byteOffsets = (e: number): number => (e & 0xffff) * 4 + (e >>> 16) * 4 * 65536;

/**
 * 2-bit Q's codes of rows [row0, row0 + rows) (default: all mp) group-major (`[np/8, rows]`, the transpose of the
 * checkpoint's `[mp, np/8]`) into `out`.
 */
export function groupMajorCodes(
  d: Decomposition,
  out: Uint16Array,
  row0 = 0,
  rows: number = d.padded[0],
): Uint16Array {
  if (!d.q) throw new CalderaError('E_VALUE', 'groupMajorCodes: the layer has no Q (low-rank only)');
  const codes = d.q.planes[0] as Uint16Array;
  const groups = d.padded[1] / 8;
  for (let i = 0; i < rows; i++)
    for (let g = 0; g < groups; g++) out[g * rows + i] = codes[(row0 + i) * groups + g]!;
  return out;
}

/** The inverse of {@link groupMajorCodes}: row-major `[mp, np/8]` codes from the group-major slices of all rows. */
export function rowMajorCodes(slices: readonly CodeSlice[], mp: number, np: number): Uint16Array {
  const groups = np / 8;
  const out = new Uint16Array(mp * groups);
  for (const { row0, rows, codes } of slices)
    for (let g = 0; g < groups; g++)
      for (let i = 0; i < rows; i++) out[(row0 + i) * groups + g] = codes[g * rows + i]!;
  return out;
}

/**
 * What one E8P code of the table-driven product costs in multiply-adds of the low-rank term's f32 products (measured on
 * the 2-core machine: ≈ 0.8 ns per code, ≈ 0.16 ns per multiply-add), to balance the threads' work.
 */
const CODE_COST = 5;

/**
 * The row ranges `[row0, rows]` of Q̂ over `threads` threads, the caller's first: multiples of 8 rows (so that every
 * part's rows are computed as in the whole layer), sized so that each thread has about the same work — the caller's
 * part smaller by its low-rank term `L̂·(R̂·x')` of `rank`; a single part for one thread or a small layer.
 */
export function splitRanges(mp: number, np: number, rank: number, threads: number): [number, number][] {
  if (threads <= 1 || mp * np < SPLIT_MIN_WEIGHTS) return [[0, mp]];
  const rowCost = (np / 8) * CODE_COST; // in multiply-adds
  const share = (mp * rowCost + rank * (np + mp)) / threads;
  const own = Math.min(mp, Math.max(0, Math.round((share - rank * (np + mp)) / rowCost / 8) * 8));
  return [[0, own], ...evenRanges(own, mp, 8, threads - 1)];
}

/** L̂ row-major `[mp, k]` and R̂ `[k, np]`, decoded to f32 (empty for rank 0). */
export function lowRankFactors(d: Decomposition): { lRows: Float32Array; r: Float32Array } {
  const [mp] = d.padded;
  const k = d.rank;
  if (k === 0) return { lRows: new Float32Array(0), r: new Float32Array(0) };
  const decoded = (f: Decomposition['l']) => (f.kind === 'dense' ? f.values : latticeDecode(f.codes));
  const lt = decoded(d.l); // [k, mp]
  const lRows = new Float32Array(mp * k);
  for (let s = 0; s < k; s++) for (let i = 0; i < mp; i++) lRows[i * k + s] = lt[s * mp + i]!;
  return { lRows, r: decoded(d.r) };
}

/** Fields of asm/caldera.ts's `Layer` record, in order (4 bytes each). */
const LAYER_FIELDS = [
  'n',
  'm',
  'np',
  'mp',
  'rank',
  'kIn',
  'kOut',
  'codes',
  'p1',
  'p2',
  'lRows',
  'r',
  'su',
  'sv',
  'mixIn',
  'mixOut',
  'x',
  'y',
  'xr',
  'yr',
  'z',
  'tmp',
  'qScale',
  'scale',
  'mq',
] as const;

/** What {@link CalderaKernel.memoryBytes} needs of a layer: a `Decomposition`'s fields, or its `caldera.json` entry's. */
export interface CalderaKernelShape {
  /** `[m, n]`. */
  shape: readonly [number, number];
  /** `[mp, np]`. */
  padded: readonly [number, number];
  /** Rank of the quantized low-rank pair (k' = k − k_ft). */
  rank: number;
  hadamard: boolean;
  /** Bits per weight of Q: 2 (E8P12), 3 or 4 (RVQ). */
  qBits: number;
  /** Rank of the trainable LoRA pair (0: none). */
  ftRank: number;
}

const kernelShape = (d: Decomposition): CalderaKernelShape => ({
  shape: d.shape,
  padded: d.padded,
  rank: d.rank,
  hadamard: d.hadamard,
  qBits: d.q?.bits ?? 0,
  ftRank: d.ft?.rank ?? 0,
});

/**
 * Where {@link CalderaKernel.create} puts each buffer of a layer in its memory (after the region fixed by asm/e8p.ts,
 * bump-allocated, 16-byte aligned), given the lengths of its two block-mixing matrices; `end` is the first address
 * past them.
 */
function kernelLayout(
  layer: CalderaKernelShape,
  mixInLength: number,
  mixOutLength: number,
  maxRows: number,
  mq: number,
  start = 0,
) {
  const [m, n] = layer.shape;
  const [mp, np] = layer.padded;
  const k = layer.rank;
  const { alloc, end } = bumpAllocator(start);
  const at = {
    layer: alloc(LAYER_FIELDS.length * 4),
    codes: alloc((mq * np) / 4),
    lr: alloc(mp * k * 4),
    r: alloc(k * np * 4),
    su: alloc(np * 4),
    sv: alloc(mp * 4),
    mixIn: alloc(mixInLength * 4),
    mixOut: alloc(mixOutLength * 4),
    x: alloc(maxRows * n * 4),
    y: alloc(maxRows * m * 4),
    xr: alloc(np * 4),
    yr: alloc(mp * 4),
    z: alloc(k * 4),
    tmp: alloc(Math.max(np, mp) * 4),
  };
  return { at, bytes: end() - start };
}

/** The layout of a worker's region for `rows` rows of Q̂ (asm/caldera.ts's `splitRows` reads these fields only). */
function sliceLayout(rows: number, np: number, start = 0) {
  const { alloc, end } = bumpAllocator(start);
  const at = {
    layer: alloc(LAYER_FIELDS.length * 4),
    codes: alloc((rows * np) / 4),
    xr: alloc(np * 4),
    yr: alloc(rows * 4),
  };
  return { at, bytes: end() - start };
}

/** Write a layer record's fields (missing ones 0) at `at` in `buf`. */
function writeRecord(
  buf: ArrayBufferLike,
  at: number,
  values: Partial<Record<(typeof LAYER_FIELDS)[number], number>>,
) {
  const ints = new Int32Array(buf, at, LAYER_FIELDS.length);
  const floats = new Float32Array(buf, at, LAYER_FIELDS.length);
  LAYER_FIELDS.forEach((f, i) => {
    if (f === 'qScale' || f === 'scale') floats[i] = values[f] ?? 0;
    else ints[i] = values[f] ?? 0;
  });
}

/** The E8P index maps and half patterns every kernel memory holds at fixed addresses. */
function writeTables(buf: ArrayBufferLike): void {
  const t = e8pLutTables();
  new Uint32Array(buf, KERNEL_BASE, 256).set(t.ta.map(byteOffsets));
  new Uint32Array(buf, KERNEL_BASE + 1024, 256).set(t.ts.map(byteOffsets));
  new Float32Array(buf, P1_AT, t.p1.length).set(t.p1);
  new Float32Array(buf, P2_AT, t.p2.length).set(t.p2);
}

/** One worker's rows of a split layer, as the calling thread sees them. */
interface WorkerPart {
  readonly row0: number;
  readonly rows: number;
  /** Its region of the worker's memory, held so that the memory stays alive as long as the layer. */
  readonly region: ArenaRegion;
  /** x' (np values) and the part's rows of y' in the worker's memory. */
  readonly xr: Float32Array;
  readonly yr: Float32Array;
}

/**
 * Entries of the block-mixing matrix of a layer's Hadamard transform of size n ({@link blockMix}): K² (K = 1 for a
 * power of two), 0 without a rotation.
 */
export function blockMixLength(n: number, hadamard: boolean): number {
  return hadamard ? (hadamardFactor(n)?.K ?? 0) ** 2 : 0;
}

/**
 * The K×K block-mixing matrix of the Hadamard transform of size n (see asm/hadamard.ts): entry `[a2·K + a]` is the
 * coefficient of block a in output block a2 — `H[a][a2]` for `M_n` (`transpose` false), `H[a2][a]` for `M_nᵀ`, as
 * `@caldera/linalg`'s `hadamardRowsInPlace`. K = 1 (a power of two) has no mix.
 */
function blockMix(n: number, transpose: boolean): { K: number; mix: Float32Array } {
  const f = hadamardFactor(n);
  if (!f) throw new Error(`caldera kernel: ${n} is not a supported Hadamard size`); // the decomposition padded it
  const H = hadamardBase(f.K);
  const mix = new Float32Array(f.K * f.K);
  for (let a2 = 0; a2 < f.K; a2++)
    for (let a = 0; a < f.K; a++) mix[a2 * f.K + a] = transpose ? H[a2 * f.K + a]! : H[a * f.K + a2]!;
  return { K: f.K, mix };
}

/**
 * One CALDERA layer with 2-bit E8P Q resident in a region of a WebAssembly memory — a model's arena, or a memory of its
 * own (input rows go through it `maxRows` at a time): the whole forward — signs and Hadamard rotation of the input, the
 * table-driven E8P product, the low-rank term `L̂·(R̂·x')`, the inverse rotation, signs and scale — runs in the SIMD
 * kernel of asm/caldera.ts, so only x and y cross the boundary. Codes are stored group-major (`[np/8, mp]`); L̂
 * (`[mp, k]`) and R̂ (`[k, np]`) are decoded once to f32. With a decode pool of several threads, a large layer's rows
 * of Q̂ are split: the first part stays in this region, each other part lives in a region of a worker's shared memory
 * ({@link splitRanges}), and single rows are computed by all threads together, to the same bits.
 * {@link CalderaKernel.create} returns null without WebAssembly SIMD or for a decomposition it does not cover (3/4-bit
 * Q, a trainable LoRA part), and the caller keeps its TypeScript path.
 */
export class CalderaKernel {
  private constructor(
    private readonly exports: CalderaExports,
    /** The layer's buffers, held so that its memory stays alive as long as the layer. */
    readonly region: ArenaRegion,
    private readonly layerAt: number,
    /** Views of the input and output rows (the memory never grows, so they stay valid). */
    private readonly xView: Float32Array,
    private readonly yView: Float32Array,
    /** x' and y' (np and mp values) in this memory: the split path copies between them and the workers'. */
    private readonly xrView: Float32Array,
    private readonly yrView: Float32Array,
    readonly n: number,
    readonly m: number,
    readonly maxRows: number,
    /** The same layer for {@link BatchWorkspace}'s batch path (L̂, R̂ and the codes are views of the memories). */
    readonly batch: CalderaBatchLayer,
    /** With the rows split: the pool, the layer's job id and the workers' parts. */
    private readonly split: { pool: DecodeExecutor; id: number; parts: readonly WorkerPart[] } | null,
  ) {}

  /**
   * The regions {@link CalderaKernel.create} asks of its arenas for a layer of this shape with a decode pool of
   * `threads` threads: `own` bytes in the calling thread's arena (the layer record, Q's codes group-major of its rows,
   * L̂ and R̂ in f32, the signs, the block-mixing matrices, the row buffers for `maxRows` rows), and with the rows
   * split, `parts[t]` bytes in worker t's arena (its record, its rows' codes, x', its rows of y'); null when `create`
   * returns null for it (no WebAssembly SIMD, 3/4-bit Q, a LoRA part, an odd `mp`, a region beyond what a memory
   * holds). Computed without allocating.
   */
  static regionBytes(
    layer: CalderaKernelShape,
    maxRows: number,
    threads = 1,
  ): { own: number; parts: number[] } | null {
    if (!CalderaKernel.covers(layer)) return null;
    const [mp, np] = layer.padded;
    const [[, mq], ...parts] = splitRanges(mp, np, layer.rank, threads);
    const { bytes } = kernelLayout(
      layer,
      blockMixLength(np, layer.hadamard),
      blockMixLength(mp, layer.hadamard),
      maxRows,
      mq!,
    );
    const partBytes = parts.map(([, rows]) => sliceLayout(rows, np).bytes);
    // a region no memory holds (beyond 4 GiB with the fixed region): create finds no memory for it
    const fits = (b: number) => arenaBytes(CALDERA_ARENA, [b]) > 0;
    return fits(bytes) && partBytes.every(fits) ? { own: bytes, parts: partBytes } : null;
  }

  /**
   * Bytes of the WebAssembly memories {@link CalderaKernel.create} allocates for a layer of this shape without arenas
   * (a memory of its own, and one per worker part: whole 64 KiB pages with the module's static data and the E8P tables
   * before the {@link CalderaKernel.regionBytes}), or null when `create` returns null for it.
   */
  static memoryBytes(layer: CalderaKernelShape, maxRows: number, threads = 1): number | null {
    const r = CalderaKernel.regionBytes(layer, maxRows, threads);
    if (!r) return null;
    return r.parts.reduce(
      (s, p) => s + arenaBytes(CALDERA_PART_ARENA, [p]),
      arenaBytes(CALDERA_ARENA, [r.own]),
    );
  }

  /** True when {@link CalderaKernel.create} runs a layer of this shape (2-bit Q, no LoRA part, even `mp`, SIMD). */
  static covers(layer: CalderaKernelShape): boolean {
    const t = e8pLutTables();
    // fixed at the start (asm/e8p.ts): 32 patterns per half; the kernel computes two rows at a time
    return (
      embeddedModule(CALDERA_WASM_BASE64) !== null &&
      layer.qBits === 2 &&
      layer.ftRank === 0 &&
      t.p1.length === 128 &&
      t.p2.length === 128 &&
      layer.padded[0] % 2 === 0
    );
  }

  /**
   * The kernel of `d`, its rows split over `pool`'s threads when the layer is large enough ({@link splitRanges}), its
   * buffers in regions of `arenas` (the calling thread's, and worker t's for its part) or, without them or where an
   * arena cannot hold it, in memories of its own.
   */
  static create(
    d: Decomposition,
    maxRows: number,
    pool?: DecodeExecutor,
    arenas?: CalderaArenas,
  ): CalderaKernel | null {
    if (!CalderaKernel.covers(kernelShape(d))) return null;
    const [m, n] = d.shape;
    const [mp, np] = d.padded;
    const k = d.rank;
    let ranges = splitRanges(mp, np, k, pool?.threads ?? 1);
    // the workers' regions first: where they cannot all be placed (a browser process holds about 120 WebAssembly
    // memories) the layer runs whole on the calling thread instead
    let parts: NonNullable<ReturnType<typeof workerPart>>[] = [];
    if (pool && ranges.length > 1) {
      const made = ranges.slice(1).map(([row0, rows], t) => workerPart(d, row0, rows, arenas?.parts[t]));
      if (made.every((p) => p !== null)) parts = made as typeof parts;
      else ranges = [[0, mp]];
    }
    const mq = ranges[0]![1];
    const mixIn = d.hadamard ? blockMix(np, false) : null;
    const mixOut = d.hadamard ? blockMix(mp, true) : null;
    const shape = kernelShape(d);
    const mixLengths = [mixIn?.mix.length ?? 0, mixOut?.mix.length ?? 0] as const;
    const { bytes } = kernelLayout(shape, ...mixLengths, maxRows, mq);
    const region = placeIn(CALDERA_ARENA, arenas?.caldera, bytes);
    if (!region) {
      // e.g. the address space could not be reserved. Without arenas the workers' memories of their own may have taken
      // the last room: dropped first (so that the collector V8 runs on a failed reservation can take them), the layer
      // can still run whole here. In arenas their regions stay (the arenas hold them), so the caller keeps its
      // TypeScript path
      if (parts.length === 0 || arenas) return null;
      parts = [];
      return CalderaKernel.create(d, maxRows);
    }
    const { at } = kernelLayout(shape, ...mixLengths, maxRows, mq, region.at);
    const exports = region.exports as unknown as CalderaExports;
    const buf = region.memory.buffer;
    const f32 = (addr: number, len: number) => new Float32Array(buf, addr, len);
    const codes = groupMajorCodes(d, new Uint16Array(buf, at.codes, (mq * np) / 8), 0, mq);
    const { lRows, r } = lowRankFactors(d);
    f32(at.lr, mp * k).set(lRows);
    f32(at.r, k * np).set(r);
    const su = d.su ?? new Float32Array(np).fill(1);
    const sv = d.sv ?? new Float32Array(mp).fill(1);
    f32(at.su, np).set(su);
    f32(at.sv, mp).set(sv);
    if (mixIn) f32(at.mixIn, mixIn.mix.length).set(mixIn.mix);
    if (mixOut) f32(at.mixOut, mixOut.mix.length).set(mixOut.mix);
    writeRecord(buf, at.layer, {
      n,
      m,
      np,
      mp,
      rank: k,
      kIn: mixIn?.K ?? 0,
      kOut: mixOut?.K ?? 0,
      codes: at.codes,
      p1: P1_AT,
      p2: P2_AT,
      lRows: at.lr,
      r: at.r,
      su: at.su,
      sv: at.sv,
      mixIn: at.mixIn,
      mixOut: at.mixOut,
      x: at.x,
      y: at.y,
      xr: at.xr,
      yr: at.yr,
      z: at.z,
      tmp: at.tmp,
      qScale: d.q!.scale, // covers(): 2-bit Q
      scale: d.scale,
      mq,
    });
    const codeSlices: CodeSlice[] = [{ row0: 0, rows: mq, codes }];
    let split: { pool: DecodeExecutor; id: number; parts: WorkerPart[] } | null = null;
    if (pool && parts.length > 0) {
      codeSlices.push(...parts.map((p) => p.codes));
      const tasks: (WorkerTask | null)[] = Array.from(
        { length: pool.threads - 1 },
        (_, t) => parts[t]?.task ?? null,
      );
      split = { pool, id: pool.register(tasks), parts: parts.map((p) => p.part) };
    }
    const batch: CalderaBatchLayer = {
      n,
      m,
      np,
      mp,
      rank: k,
      su,
      sv,
      mixIn,
      mixOut,
      codes: codeSlices, // the kernels' own group-major copies (their memories never grow, so the views stay valid)
      qScale: d.q!.scale, // covers(): 2-bit Q
      scale: d.scale,
      lRows: f32(at.lr, mp * k),
      r: f32(at.r, k * np),
    };
    const kernel = new CalderaKernel(
      exports,
      region,
      at.layer,
      f32(at.x, maxRows * n),
      f32(at.y, maxRows * m),
      f32(at.xr, np),
      f32(at.yr, mp),
      n,
      m,
      maxRows,
      batch,
      split,
    );
    if (split) pool!.track(kernel, split.id); // the workers drop its rows once it is collected
    return kernel;
  }

  /** `y = x·Ŵᵀ` for `rows` input rows of `n` values (a new array of rows·m values), `maxRows` per kernel call. */
  forward(x: Float32Array, rows: number): Float32Array {
    const { n, m, maxRows } = this;
    if (this.split) {
      const y = new Float32Array(rows * m);
      for (let r = 0; r < rows; r++) y.set(this.splitRow(x.subarray(r * n, (r + 1) * n)), r * m);
      return y;
    }
    if (rows === 1) {
      this.xView.set(x.length === n ? x : x.subarray(0, n));
      this.exports.forward(this.layerAt, 1);
      return this.yView.slice(0, m);
    }
    const y = new Float32Array(rows * m);
    for (let r0 = 0; r0 < rows; r0 += maxRows) {
      const c = Math.min(maxRows, rows - r0);
      this.xView.set(x.subarray(r0 * n, (r0 + c) * n));
      this.exports.forward(this.layerAt, c);
      y.set(this.yView.subarray(0, c * m), r0 * m);
    }
    return y;
  }

  /** Run the split path's entry points `calls` times on this (unsplit) kernel's layer, input row 0 as it is. */
  warmUp(calls: number): void {
    const ex = this.exports;
    for (let i = 0; i < calls; i++) {
      ex.splitIn(this.layerAt);
      ex.splitOwn(this.layerAt);
      ex.splitEnd(this.layerAt);
    }
  }

  /** One input row with Q̂'s rows computed by every thread of the pool (x: n values). */
  private splitRow(x: Float32Array): Float32Array {
    const { pool, id, parts } = this.split!;
    const ex = this.exports;
    this.xView.set(x);
    ex.splitIn(this.layerAt);
    for (const p of parts) p.xr.set(this.xrView);
    pool.run(id, () => ex.splitOwn(this.layerAt));
    for (const p of parts) this.yrView.set(p.yr, p.row0);
    ex.splitEnd(this.layerAt);
    return this.yView.slice(0, this.m);
  }
}

/** The kernel module's entry points (asm/caldera.ts). */
interface CalderaExports {
  forward(layer: number, rows: number): void;
  splitIn(layer: number): void;
  splitOwn(layer: number): void;
  splitEnd(layer: number): void;
}

/** The arenas a {@link CalderaKernel} places its regions in: the calling thread's, and worker t's at `parts[t]`. */
export interface CalderaArenas {
  readonly caldera: KernelArena;
  readonly parts: readonly KernelArena[];
}

/** A worker's region for rows [row0, row0 + rows) of `d`'s Q̂: record, codes group-major, x', y'; null: no room. */
function workerPart(
  d: Decomposition,
  row0: number,
  rows: number,
  arena?: KernelArena,
): { part: WorkerPart; task: WorkerTask; codes: CodeSlice } | null {
  const np = d.padded[1];
  const region = placeIn(CALDERA_PART_ARENA, arena, sliceLayout(rows, np).bytes);
  if (!region) return null; // no room for the memory (a browser process holds about 120 WebAssembly memories)
  const { at } = sliceLayout(rows, np, region.at);
  const { memory } = region;
  const buf = memory.buffer;
  const codes = groupMajorCodes(d, new Uint16Array(buf, at.codes, (rows * np) / 8), row0, rows);
  writeRecord(buf, at.layer, {
    n: np,
    m: rows,
    np,
    mp: rows,
    mq: rows,
    codes: at.codes,
    p1: P1_AT,
    p2: P2_AT,
    xr: at.xr,
    yr: at.yr,
    qScale: d.q!.scale, // covers(): 2-bit Q
  });
  return {
    part: {
      row0,
      rows,
      region,
      xr: new Float32Array(buf, at.xr, np),
      yr: new Float32Array(buf, at.yr, rows),
    },
    task: { memory, module: 'caldera', fn: 'splitRows', args: [at.layer] },
    codes: { row0, rows, codes },
  };
}

/**
 * Calls of the split path on a tiny layer with which a decode pool's threads start (the caller in
 * {@link warmUpCaller}, each worker on its {@link warmUpSlice}; ≈ 25 ms each), so that V8 has compiled them optimised
 * before the first token. Measured on the 2-core machine with the benchmark's 100 M model: without it the first 25
 * tokens decoded at 70 tokens/s where later ones reach 85 (the optimising compiler's background thread competes with
 * the busy threads); with it, 76.
 */
export const WARM_UP_CALLS = 3000;

/** A 256 × 256 layer of rank 8 with all-zero codes and factors, with rotations: what the warm-up runs on. */
function tinyLayer(): Decomposition {
  const n = 256;
  const k = 8;
  return {
    shape: [n, n],
    padded: [n, n],
    rank: k,
    scale: 1,
    hadamard: true,
    su: null,
    sv: null,
    q: { bits: 2, planes: [new Uint16Array((n * n) / 8)], scale: 1 },
    l: { kind: 'dense', values: new Float32Array(k * n) },
    r: { kind: 'dense', values: new Float32Array(k * n) },
    bitsPerWeight: 2,
    paperBitsPerWeight: 2,
    error: 0,
    errors: { LR: [], Q: [] },
    seed: 0,
  };
}

/** Warm the calling thread's split path up ({@link WARM_UP_CALLS}); nothing without WebAssembly SIMD. */
export function warmUpCaller(): void {
  CalderaKernel.create(tinyLayer(), 1)?.warmUp(WARM_UP_CALLS);
}

/** A worker's own tiny slice to warm its `splitRows` up on ({@link WARM_UP_CALLS} calls). */
export function warmUpSlice(): WorkerTask {
  const part = workerPart(tinyLayer(), 0, 256);
  if (!part) throw new Error("decode pool: no memory for a worker's warm-up slice");
  return part.task;
}
