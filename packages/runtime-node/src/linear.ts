import {
  bf16ArrayToF32,
  CalderaError,
  f16ArrayToF32,
  tensor,
  type CalderaLayerMeta,
  type Tensor,
} from '@caldera/core';
import { gemm, gemmInto, hadamardRowsInPlace, type Pool } from '@caldera/linalg';
import { e8pDecode } from '@caldera/quant';
import {
  checkDecompositionTerms,
  codecBits,
  type Decomposition,
  latticeDecode,
  qCodecBits,
} from '@caldera/lowrank';
import { BatchWorkspace, poolOf } from './kernels/batch-workspace.js';
import { decodeExecutor, type DecodeExecutor, type DecodePool } from './kernels/decode-pool.js';
import {
  blockMixLength,
  CalderaKernel,
  groupMajorCodes,
  lowRankFactors,
  rowMajorCodes,
} from './kernels/caldera-kernel.js';
import { e8pMatvecLut } from './kernels/e8p-lut.js';
import { type HalfFormat, matvecF16, matvecF32, WasmMatrix } from './kernels/matvec.js';
import { aloneBytes, type ArenaRequest, type KernelArenas } from './kernels/kernel-arenas.js';
import type { ArenaRegion, KernelArena } from './kernels/arena.js';

export type { HalfFormat } from './kernels/matvec.js';

/** Up to this many rows a dense product runs as matrix–vector products, above it through `gemm`. */
const MATVEC_MAX_ROWS = 4;

/** Rows per call of a CALDERA layer's fused kernel. */
const CALDERA_KERNEL_ROWS = 16;

/**
 * From this many rows on, a fused CALDERA layer runs the batch path ({@link BatchWorkspace}: Q̂ decoded to f32 into
 * `gemm`) instead of the per-row kernel: measured break-even at 16–24 rows for the 100 M benchmark model's layers, with
 * and without a 2-thread pool (per row the fused kernel costs ≈ 2.5× more, the batch path ≈ 5 ms more per 2816×1024
 * layer: decoding and packing Q̂).
 */
const CALDERA_BATCH_MIN_ROWS = 20;

/**
 * What a linear layer holds resident: `own` bytes of its own arrays, and the regions its kernels place in a model's
 * {@link KernelArenas} (or, built without arenas, each in a memory of its own).
 */
export interface LinearFootprint {
  own: number;
  regions: ArenaRequest[];
}

/**
 * Bytes of a layer with this footprint: its own arrays plus its regions — in shared arenas (`inArenas`: the regions'
 * bytes, the arenas' memories counted once for the model), or each in a memory of its own (whole 64 KiB pages with the
 * fixed region).
 */
export function footprintBytes(f: LinearFootprint, inArenas: boolean): number {
  return f.regions.reduce((s, r) => s + (inArenas ? r.bytes : aloneBytes(r)), f.own);
}

/**
 * What {@link f32Product} or {@link halfProduct} holds for `W [m, n]`: the SIMD kernel's region (W and the row
 * buffers), or W's own array where the kernel is unavailable (`callerArray`: that array is also held elsewhere, so
 * nothing more).
 */
function productFootprint(
  kind: 'f32' | HalfFormat,
  m: number,
  n: number,
  callerArray = false,
): LinearFootprint {
  const region = WasmMatrix.regionBytes(kind, m, n, MATVEC_MAX_ROWS);
  if (region !== null) return { own: 0, regions: [{ arena: 'dense', bytes: region }] };
  return { own: callerArray ? 0 : m * n * (kind === 'f32' ? 4 : 2), regions: [] };
}

/** Matrix–vector products `y = x·Wᵀ` (≤ {@link MATVEC_MAX_ROWS} rows) with a contiguous `W [m, n]`. */
interface RowProduct<A extends Float32Array | Uint16Array> {
  /** W: a view into the WebAssembly memory the SIMD kernel reads, or the caller's array for the TypeScript loop. */
  weights: A;
  /** The kernel's region of its WebAssembly memory (null: the TypeScript loop). */
  region: ArenaRegion | null;
  run(x: Float32Array, rows: number, y: Float32Array): void;
}

/**
 * W copied once into a WebAssembly memory (SIMD kernel; a region of `arena`, or a memory of its own), or the
 * TypeScript loop where that is unavailable. The closures are built in separate functions: one sharing this scope
 * would keep the caller's array alive.
 */
function f32Product(
  w: Float32Array,
  m: number,
  n: number,
  pool?: DecodeExecutor,
  arena?: KernelArena,
): RowProduct<Float32Array> {
  const r = WasmMatrix.create('f32', w, m, n, MATVEC_MAX_ROWS, pool, arena);
  return r
    ? wasmProduct(r)
    : { weights: w, region: null, run: (x, rows, y) => matvecF32(w, m, n, x, rows, y) };
}

function halfProduct(
  format: HalfFormat,
  w: Uint16Array,
  m: number,
  n: number,
  pool?: DecodeExecutor,
  arena?: KernelArena,
): RowProduct<Uint16Array> {
  const r = WasmMatrix.create(format, w, m, n, MATVEC_MAX_ROWS, pool, arena);
  return r
    ? wasmProduct(r)
    : { weights: w, region: null, run: (x, rows, y) => matvecF16(w, m, n, x, rows, y, format) };
}

function wasmProduct<K extends 'f32' | HalfFormat>(r: WasmMatrix<K>): RowProduct<WasmMatrix<K>['weights']> {
  return { weights: r.weights, region: r.region, run: (x, rows, y) => r.matvec(x, rows, y) };
}

/** Options of {@link Linear.forward}. Results do not depend on them (bit for bit), only speed does. */
export interface LinearRunOptions {
  /**
   * A `@caldera/linalg` worker pool for the products of batches (more than 4 rows): `gemm` splits them over its
   * threads. Default: single-threaded.
   */
  pool?: Pool;
  /**
   * Workspace of the batch paths of f16 and CALDERA layers, reused across layers and calls ({@link LlamaModel} passes
   * its own). Default: a temporary one per call.
   */
  workspace?: BatchWorkspace;
  /**
   * An array the layer may write its output into (at least `rows · outFeatures` values; the result is then a view of
   * its start), so that a caller can reuse one array across calls: dense layers do. Use the returned array, not `out`.
   * A layer built from other layers must not pass one `out` on to more than one of them. Default: a new array.
   */
  out?: Float32Array;
}

/** `options.out`'s first `length` values, or a new array when it is missing or too short. */
function outputArray(options: LinearRunOptions, length: number): Float32Array {
  const out = options.out;
  return out && out.length >= length ? out.subarray(0, length) : new Float32Array(length);
}

/** A linear layer `y = x·Wᵀ (+ b)` on `rows` row vectors. Implementations differ in how W is stored. */
export interface Linear {
  readonly inFeatures: number;
  readonly outFeatures: number;
  /** Bytes of weight storage (the format's real size). */
  readonly weightBytes: number;
  forward(x: Float32Array, rows: number, options?: LinearRunOptions): Float32Array;
}

/** `[rows, m]` row-major y seen as its transpose `[c, rows]` from column i0 on, as `gemmInto`'s output. */
function transposedView(y: Float32Array, rows: number, m: number, i0: number, c: number): Tensor<'f32'> {
  return { dtype: 'f32', shape: [c, rows], strides: [1, m], offset: i0, data: y };
}

/** `y += (x·rᵀ)·lᵀ` for `rows` rows of x (`[rows, np]`), r `[k, np]`, l `[mp, k]`, y `[rows, mp]`: two gemms. */
function addLowRankProduct(
  y: Float32Array,
  x: Float32Array,
  rows: number,
  r: Tensor<'f32'>,
  l: Tensor<'f32'>,
  pool: Pool | undefined,
): void {
  const opts = { transB: true, checkFinite: false, ...poolOf(pool) };
  const z = gemm(tensor('f32', [rows, r.shape[1]!], x), r, opts); // rows × k
  const lr = gemm(z, l, opts).data; // rows × mp
  for (let i = 0; i < y.length; i++) y[i]! += lr[i]!;
}

function addBias(y: Float32Array, rows: number, bias: Float32Array | null): Float32Array {
  if (!bias) return y;
  const m = bias.length;
  for (let r = 0; r < rows; r++) for (let i = 0; i < m; i++) y[r * m + i]! += bias[i]!;
  return y;
}

function checkInput(what: string, x: Float32Array, rows: number, n: number): void {
  if (x.length !== rows * n)
    throw new CalderaError('E_SHAPE', `${what}: input has ${x.length} values, expected ${rows}·${n}`);
}

/** Options of {@link DenseLinear} and {@link DenseF16Linear}. */
export interface DenseLinearOptions {
  /**
   * Threads for single-row products ({@link createDecodePool}): a layer of at least 2¹⁸ weights keeps W in a shared
   * WebAssembly memory and computes one row with all of the pool's threads, each a range of the outputs, to the same
   * bits as alone. Default: none (the calling thread).
   */
  decodePool?: DecodePool;
  /**
   * The model's kernel memories: W's kernel buffers go in a region of `arenas.dense` instead of a WebAssembly memory of
   * their own (the loaders pass one per model). Built with a decode pool, the arenas must have its threads. Default:
   * a memory of its own.
   */
  arenas?: KernelArenas;
}

/**
 * The executor of `options.decodePool` (`E_VALUE` for a pool that `createDecodePool` did not make, or for `arenas` made
 * for another number of threads).
 */
function executorOf(options: DenseLinearOptions): DecodeExecutor | undefined {
  const pool = options.decodePool ? decodeExecutor(options.decodePool) : undefined;
  const threads = pool?.threads ?? 1;
  if (options.arenas && options.arenas.threads !== threads)
    throw new CalderaError(
      'E_VALUE',
      `linear: arenas made for ${options.arenas.threads} decode threads, the layer is built with ${threads}`,
    );
  return pool;
}

/**
 * Dense f32 weights `[out, in]`. A contiguous W is copied at construction into the memory of the SIMD matrix–vector
 * kernel and {@link DenseLinear.weight} is that copy (later writes to the caller's array are not seen).
 */
export class DenseLinear implements Linear {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly weightBytes: number;
  readonly weight: Tensor<'f32'>;
  private readonly product: RowProduct<Float32Array> | null;
  constructor(
    weight: Tensor<'f32'>,
    readonly bias: Float32Array | null = null,
    options: DenseLinearOptions = {},
  ) {
    const [m, n] = weight.shape as [number, number];
    [this.outFeatures, this.inFeatures] = [m, n];
    this.weightBytes = m * n * 4;
    const contiguous = weight.offset === 0 && weight.strides[0] === n && weight.strides[1] === 1;
    this.product = contiguous
      ? f32Product(weight.data, m, n, executorOf(options), options.arenas?.dense)
      : null;
    this.weight = this.product ? { ...weight, data: this.product.weights } : weight;
  }
  /**
   * What a `DenseLinear` of `W [m, n]` built from a contiguous weight holds resident: the SIMD kernel's region (W in
   * f32, buffers for 4 input and output rows), or W's f32 array where the kernel is unavailable; plus the f32 bias
   * (`m` values) when it has one.
   */
  static footprint(m: number, n: number, bias: boolean): LinearFootprint {
    const f = productFootprint('f32', m, n);
    return { own: f.own + (bias ? m * 4 : 0), regions: f.regions };
  }

  /**
   * Bytes a `DenseLinear` of `W [m, n]` built from a contiguous weight without arenas holds resident: its
   * {@link DenseLinear.footprint}, the kernel's memory in whole 64 KiB pages with its static data page.
   */
  static memoryBytes(m: number, n: number, bias: boolean): number {
    return footprintBytes(DenseLinear.footprint(m, n, bias), false);
  }

  forward(x: Float32Array, rows: number, options: LinearRunOptions = {}): Float32Array {
    const { outFeatures: m, inFeatures: n } = this;
    checkInput('linear', x, rows, n);
    const y = outputArray(options, rows * m);
    if (rows <= MATVEC_MAX_ROWS && this.product) {
      this.product.run(x, rows, y);
      return addBias(y, rows, this.bias);
    }
    // yᵀ = W·xᵀ: W's rows are gemm's first operand, which its pool splits among threads
    gemmInto(transposedView(y, rows, m, 0, m), this.weight, tensor('f32', [rows, n], x), {
      transB: true,
      checkFinite: false,
      ...poolOf(options.pool),
    });
    return addBias(y, rows, this.bias);
  }
}

/**
 * Rows of W decoded to f32 per block where {@link DenseF16Linear} and {@link CalderaLinear} have no kernel reading
 * the stored format directly (batches; 3/4-bit Q).
 */
const BLOCK_ROWS = 512;

/**
 * `y = x·Wᵀ` (`[rows, m]`, overwritten) for `W [m, n]` that exists only in a stored format: `decodeRows(i0, c)`
 * returns rows `i0 … i0+c−1` of W in f32 (row-major, at least `c·n` values; it may reuse one buffer), at most
 * 512 (`BLOCK_ROWS`) at a time, so W is never held whole in f32. Matrix–vector products for a few rows of x, `gemm`
 * for batches.
 */
function productByRowBlocks(
  x: Float32Array,
  rows: number,
  n: number,
  m: number,
  decodeRows: (i0: number, c: number) => Float32Array,
  y: Float32Array,
  options: LinearRunOptions,
): void {
  const xt = tensor('f32', [rows, n], x);
  for (let i0 = 0; i0 < m; i0 += BLOCK_ROWS) {
    const c = Math.min(BLOCK_ROWS, m - i0);
    const w = decodeRows(i0, c);
    if (rows <= MATVEC_MAX_ROWS) {
      const part = new Float32Array(rows * c); // rows × c
      matvecF32(w, c, n, x, rows, part);
      for (let r = 0; r < rows; r++) y.set(part.subarray(r * c, r * c + c), r * m + i0);
    } else {
      // y[:, i0…i0+c)ᵀ = W_block·xᵀ (the block's rows split among the pool's threads)
      gemmInto(transposedView(y, rows, m, i0, c), tensor('f32', [c, n], w.subarray(0, c * n)), xt, {
        transB: true,
        checkFinite: false,
        ...poolOf(options.pool),
      });
    }
  }
}

/**
 * Dense weights kept as 16-bit floats `[out, in]` (half the memory of f32): f16 bits, or bf16 bits with `format`
 * 'bf16' (bf16 checkpoints, loaded as they are stored). Converted to f32 on the fly, exactly: row by row inside the
 * SIMD matrix–vector kernel for decode, in blocks of 512 (`BLOCK_ROWS`) rows fed to `gemm` for batches. W is never
 * held in f32 whole.
 */
export class DenseF16Linear implements Linear {
  readonly weightBytes: number;
  /** 16-bit float bits (`format`), row-major `[outFeatures, inFeatures]` (the SIMD kernel's copy when it is available). */
  readonly bits: Uint16Array;
  private readonly product: RowProduct<Uint16Array>;
  constructor(
    bits: Uint16Array,
    readonly outFeatures: number,
    readonly inFeatures: number,
    readonly bias: Float32Array | null = null,
    /** What `bits` hold: IEEE f16 (default) or bfloat16. */
    readonly format: HalfFormat = 'f16',
    options: DenseLinearOptions = {},
  ) {
    if (format !== 'f16' && format !== 'bf16')
      throw new CalderaError(
        'E_VALUE',
        `16-bit linear: format must be 'f16' or 'bf16', got ${String(format)}`,
      );
    if (bits.length !== outFeatures * inFeatures)
      throw new CalderaError(
        'E_SHAPE',
        `${format} linear: ${bits.length} weights, expected ${outFeatures}·${inFeatures}`,
      );
    this.weightBytes = bits.length * 2;
    this.product = halfProduct(
      format,
      bits,
      outFeatures,
      inFeatures,
      executorOf(options),
      options.arenas?.dense,
    );
    this.bits = this.product.weights;
  }

  /**
   * What a 16-bit layer of `W [m, n]` holds resident: the SIMD kernel's region (W's 16-bit bits, buffers for 4 input
   * and output rows), or the bits' array where the kernel is unavailable; plus the f32 bias (`m` values) when it has
   * one. The same for f16 and bf16.
   */
  static footprint(m: number, n: number, bias: boolean): LinearFootprint {
    const f = productFootprint('f16', m, n);
    return { own: f.own + (bias ? m * 4 : 0), regions: f.regions };
  }

  /**
   * Bytes a 16-bit layer of `W [m, n]` built without arenas holds resident: its {@link DenseF16Linear.footprint}, the
   * kernel's memory in whole 64 KiB pages with its static data page.
   */
  static memoryBytes(m: number, n: number, bias: boolean): number {
    return footprintBytes(DenseF16Linear.footprint(m, n, bias), false);
  }

  /** W in f32 `[outFeatures, inFeatures]` (a new array; exact: every f16 and bf16 value is an f32 value). */
  weightF32(): Float32Array {
    return this.format === 'bf16' ? bf16ArrayToF32(this.bits) : f16ArrayToF32(this.bits);
  }

  forward(x: Float32Array, rows: number, options: LinearRunOptions = {}): Float32Array {
    const { outFeatures: m, inFeatures: n, format } = this;
    checkInput(`${format} linear`, x, rows, n);
    const y = outputArray(options, rows * m);
    if (rows <= MATVEC_MAX_ROWS) {
      this.product.run(x, rows, y);
      return addBias(y, rows, this.bias);
    }
    // blocks of rows converted exactly in SIMD (the workspace), else in TypeScript
    const ws = options.workspace ?? new BatchWorkspace();
    const block = ws.available ? null : new Float32Array(BLOCK_ROWS * n);
    const toF32 = format === 'bf16' ? bf16ArrayToF32 : f16ArrayToF32;
    const decode = (i0: number, c: number) => {
      if (block) return toF32(this.bits.subarray(i0 * n, (i0 + c) * n), block);
      return format === 'bf16' ? ws.bf16Rows(this.bits, n, i0, c) : ws.f16Rows(this.bits, n, i0, c);
    };
    productByRowBlocks(x, rows, n, m, decode, y, options);
    return addBias(y, rows, this.bias);
  }
}

/** Options of {@link CalderaLinear}. */
export interface CalderaLinearOptions {
  /**
   * Run 2-bit layers through the fused WebAssembly SIMD kernel (default true). false: the TypeScript path (table-driven
   * E8P product for ≤ 4 rows, Q̂ decoded into gemm above), which is also what runs where WebAssembly SIMD is missing.
   */
  kernel?: boolean;
  /**
   * Threads for single-row products ({@link createDecodePool}): with the fused kernel, a layer of at least 2¹⁸ weights
   * has its rows of Q̂ split over the pool's threads, each holding its rows' codes, and computes one row with all of
   * them, to the same bits as alone. Larger inputs (prompts) go through the batch path and `LinearRunOptions.pool`.
   * Default: none (the calling thread).
   */
  decodePool?: DecodePool;
  /**
   * The model's kernel memories: the fused kernel's buffers go in a region of `arenas.caldera` (and each worker's rows
   * in one of its arena), an unfused layer's L̂ and R̂ in `arenas.dense`, instead of WebAssembly memories of their own
   * (the loaders pass one per model). Built with a decode pool, the arenas must have its threads. Default: memories of
   * its own.
   */
  arenas?: KernelArenas;
}

/**
 * A CALDERA layer executed without materialising W (docs/architecture.md): the input is rotated (signs + Hadamard),
 * multiplied by Q̂ whose E8P codes are decoded on the fly from the codebook table, plus the low-rank term
 * `(x'·R̂ᵀ)·L̂ᵀ`, and rotated back. L̂ and R̂ (k·(m+n) values) are decoded once at construction.
 */
export class CalderaLinear implements Linear {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly weightBytes: number;
  /**
   * 2-bit Q without a LoRA part: the whole layer in one SIMD kernel, for any number of rows (one row at a time: on the
   * 2-core machine it beat decoding Q̂ into gemm at every prompt length measured, 4–256 tokens, 1.3–3× for the 100 M
   * benchmark model and on par for the reference model).
   */
  private readonly kernel: CalderaKernel | null;
  /** The decomposition as held: without Q's code planes when the kernel holds them (see {@link d}). */
  private readonly stored: Decomposition;
  /** Without the kernel: L̂ `[mp, k]` and R̂ `[k, np]` (f32, decoded once) for the batch path's gemm. */
  private readonly l: Tensor<'f32'> | null;
  private readonly r: Tensor<'f32'> | null;
  /** Without the kernel: 2-bit Q codes group-major `[np/8, mp]` and the decode-path products z = x'·R̂ᵀ, y += z·L̂ᵀ. */
  private readonly qCodesT: Uint16Array | null;
  private readonly rProduct: RowProduct<Float32Array> | null;
  private readonly lProduct: RowProduct<Float32Array> | null;
  /** The trainable LoRA pair (L_ft `[mp, kf]` row-major, R_ft `[kf, np]`), when the checkpoint has one. */
  private readonly ftL: Tensor<'f32'> | null;
  private readonly ftR: Tensor<'f32'> | null;
  constructor(
    d: Decomposition,
    readonly bias: Float32Array | null = null,
    options: CalderaLinearOptions = {},
  ) {
    checkDecompositionTerms(d, 'CalderaLinear');
    [this.outFeatures, this.inFeatures] = d.shape;
    const [mp, np] = d.padded;
    const k = d.rank;
    const pool = executorOf(options); // checked even when the kernel is not used
    const { arenas } = options;
    this.kernel =
      options.kernel === false ? null : CalderaKernel.create(d, CALDERA_KERNEL_ROWS, pool, arenas);
    // with the kernel, Q's codes live in its memory (group-major, read by the row and the batch paths): the planes of
    // `d` are not kept, so a layer holds its codes once; `d` rebuilds them on demand
    this.stored = this.kernel && d.q ? { ...d, q: { ...d.q, planes: [] } } : d;
    if (this.kernel || k === 0) {
      this.rProduct = null;
      this.lProduct = null;
    } else {
      const { lRows, r } = lowRankFactors(d);
      this.rProduct = f32Product(r, k, np, undefined, arenas?.dense);
      this.lProduct = f32Product(lRows, mp, k, undefined, arenas?.dense);
    }
    this.l = this.lProduct ? tensor('f32', [mp, k], this.lProduct.weights) : null;
    this.r = this.rProduct ? tensor('f32', [k, np], this.rProduct.weights) : null;
    this.qCodesT =
      !this.kernel && d.q?.bits === 2
        ? groupMajorCodes(d, new Uint16Array((d.q.planes[0] as Uint16Array).length))
        : null;
    const ft = d.ft && d.ft.rank > 0 ? d.ft : null;
    this.ftL = ft ? tensor('f32', [mp, ft.rank], ft.l) : null;
    this.ftR = ft ? tensor('f32', [ft.rank, np], ft.r) : null;
    // bits·m·n/8 is the stored tensors' whole bytes up to f64 rounding (1020.0000000000001): rounded, not ceiled
    this.weightBytes = Math.round((d.bitsPerWeight * this.inFeatures * this.outFeatures) / 8);
  }

  /**
   * What a `CalderaLinear` built from the checkpoint tensors of `layer` (its `caldera.json` entry, as the loaders read
   * it with `fromCheckpointTensors`) holds resident, with an f32 bias of `m` values when `bias`:
   * - fused (2-bit Q, no LoRA part, WebAssembly SIMD: {@link CalderaLinear.fused}): the kernel's region (Q's codes
   *   group-major, L̂ and R̂ decoded to f32, the signs, the block-mixing matrices, buffers for 16 rows; with a decode
   *   pool of `decodeThreads` threads that splits it, each worker's region of its rows), and beside it the
   *   decomposition without Q's planes — L and R as stored (code planes, or f32 for an f16 factor), SU and SV in f32
   *   (ones when the layer has no rotation) — and the two K×K block-mixing matrices of the Hadamard sizes in f32;
   * - otherwise: the whole decomposition (Q's planes, L and R as stored, SU/SV in f32 with a rotation, the LoRA pair in
   *   f32), 2-bit Q's codes again group-major, and L̂ `[mp, k]` and R̂ `[k, np]` in f32 for the matrix–vector kernel
   *   (each a region, or a plain array without SIMD; an f16 R then shares the decomposition's array).
   * The E8P tables shared by all layers are not counted.
   */
  static footprint(layer: CalderaLayerMeta, bias: boolean, decodeThreads = 1): LinearFootprint {
    const [m] = layer.shape;
    const [mp, np] = layer.padded;
    const kf = layer.ftRank ?? 0;
    const k = layer.rank - kf;
    const qBits = qCodecBits(layer.codecs.Q);
    // a group of 8 entries is `bits` bytes: its u16 code, and a residual plane of u8 (rvq3) or u16 (rvq4)
    const planes = (codec: string, groups: number) => groups * codecBits(codec);
    const factor = (f: 'L' | 'R', dim: number) =>
      k === 0 ? 0 : layer.codecs[f] === 'f16' ? k * dim * 4 : planes(layer.codecs[f], (k * dim) / 8);
    const stored = factor('L', mp) + factor('R', np) + kf * (mp + np) * 4 + (bias ? m * 4 : 0);
    const shape = {
      shape: layer.shape,
      padded: layer.padded,
      rank: k,
      hadamard: layer.hadamard,
      qBits,
      ftRank: kf,
    };
    const kernel = CalderaKernel.regionBytes(shape, CALDERA_KERNEL_ROWS, decodeThreads);
    if (kernel !== null) {
      const mixes = (blockMixLength(np, layer.hadamard) + blockMixLength(mp, layer.hadamard)) * 4;
      return {
        own: stored + (np + mp) * 4 + mixes,
        regions: [
          { arena: 'caldera', bytes: kernel.own },
          ...kernel.parts.map((bytes, t) => ({ arena: t, bytes })),
        ],
      };
    }
    const q = qBits === 0 ? 0 : planes(layer.codecs.Q, (mp * np) / 8) + (qBits === 2 ? (mp * np) / 4 : 0);
    const signs = layer.hadamard ? (np + mp) * 4 : 0;
    const lowRank: LinearFootprint[] =
      k === 0
        ? []
        : [productFootprint('f32', k, np, layer.codecs.R === 'f16'), productFootprint('f32', mp, k)];
    return {
      own: lowRank.reduce((s, f) => s + f.own, stored + q + signs),
      regions: lowRank.flatMap((f) => f.regions),
    };
  }

  /**
   * Bytes a `CalderaLinear` built without arenas holds resident: its {@link CalderaLinear.footprint}, each kernel
   * region in a memory of its own (whole 64 KiB pages, with the module's static data and the E8P tables).
   */
  static memoryBytes(layer: CalderaLayerMeta, bias: boolean, decodeThreads = 1): number {
    return footprintBytes(CalderaLinear.footprint(layer, bias, decodeThreads), false);
  }

  /**
   * The layer's decomposition. With the fused kernel, Q's code planes are rebuilt from the kernel's copy on each access
   * (a new object: read it once, e.g. to set up fine-tuning; `forward` does not use it).
   */
  get d(): Decomposition {
    const q = this.stored.q;
    if (!this.kernel || !q) return this.stored;
    const [mp, np] = this.stored.padded;
    return { ...this.stored, q: { ...q, planes: [rowMajorCodes(this.kernel.batch.codes, mp, np)] } };
  }

  /** True when forward runs the fused WebAssembly SIMD kernel (2-bit Q, no LoRA part, SIMD available, not opted out). */
  get fused(): boolean {
    return this.kernel !== null;
  }

  forward(x: Float32Array, rows: number, options: LinearRunOptions = {}): Float32Array {
    const d = this.stored;
    const [m, n] = d.shape;
    const [mp, np] = d.padded;
    checkInput('caldera linear', x, rows, n);
    if (this.kernel && rows >= CALDERA_BATCH_MIN_ROWS) {
      const ws = options.workspace ?? new BatchWorkspace();
      if (ws.available)
        return addBias(ws.calderaForward(this.kernel.batch, x, rows, options.pool), rows, this.bias);
    }
    if (this.kernel) return addBias(this.kernel.forward(x, rows), rows, this.bias);
    const xr = new Float32Array(rows * np);
    for (let r = 0; r < rows; r++)
      for (let j = 0; j < n; j++) xr[r * np + j] = d.su ? x[r * n + j]! * d.su[j]! : x[r * n + j]!;
    if (d.hadamard) hadamardRowsInPlace(xr, rows, np, { transpose: false });
    const yr = new Float32Array(rows * mp);
    const q = d.q; // null: a low-rank-only layer, y' = L̂·R̂·x' alone
    if (q?.bits === 2 && rows <= MATVEC_MAX_ROWS) {
      // decode: the table-driven kernel reads the E8P codes directly
      e8pMatvecLut(this.qCodesT!, mp, np, xr, rows, yr);
      for (let i = 0; i < yr.length; i++) yr[i]! *= q.scale;
    } else if (q?.bits === 2) {
      // batches: Q̂ decoded a block of rows at a time (without its scale) into gemm
      const codes = q.planes[0] as Uint16Array;
      const groups = np / 8;
      const block = new Float32Array(BLOCK_ROWS * np);
      const decode = (i0: number, c: number) => {
        e8pDecode(codes.subarray(i0 * groups, (i0 + c) * groups), block);
        return block;
      };
      productByRowBlocks(xr, rows, np, mp, decode, yr, options);
      for (let i = 0; i < yr.length; i++) yr[i]! *= q.scale;
    } else if (q) {
      // 3/4-bit RVQ Q: a block of rows decoded at a time (codes + residual, scale included)
      const groups = np / 8;
      const decode = (i0: number, c: number) =>
        latticeDecode({ ...q, planes: q.planes.map((p) => p.subarray(i0 * groups, (i0 + c) * groups)) });
      productByRowBlocks(xr, rows, np, mp, decode, yr, options);
    }
    if (this.l && this.r) {
      const k = d.rank;
      if (rows <= MATVEC_MAX_ROWS) {
        // z = x'·R̂ᵀ (rows × k), then yr += z·L̂ᵀ, both as matrix–vector products with contiguous rows
        const z = new Float32Array(rows * k);
        this.rProduct!.run(xr, rows, z);
        const lr = new Float32Array(rows * mp);
        this.lProduct!.run(z, rows, lr);
        for (let i = 0; i < lr.length; i++) yr[i]! += lr[i]!;
      } else addLowRankProduct(yr, xr, rows, this.r, this.l, options.pool);
    }
    // LoRA part: yr += (x'·R_ftᵀ)·L_ftᵀ
    if (this.ftL && this.ftR) addLowRankProduct(yr, xr, rows, this.ftR, this.ftL, options.pool);
    if (d.hadamard) hadamardRowsInPlace(yr, rows, mp, { transpose: true });
    const y = new Float32Array(rows * m);
    for (let r = 0; r < rows; r++)
      for (let i = 0; i < m; i++)
        y[r * m + i] = d.scale * (d.sv ? yr[r * mp + i]! * d.sv[i]! : yr[r * mp + i]!);
    return addBias(y, rows, this.bias);
  }
}
