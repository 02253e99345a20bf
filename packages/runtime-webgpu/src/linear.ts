import { CalderaError, isCalderaError } from '@caldera/core';
import { hadamardBase, hadamardFactor } from '@caldera/linalg';
import {
  checkDecompositionTerms,
  latticeDecode,
  type Decomposition,
  type LatticeCodes,
} from '@caldera/lowrank';
import { e81bCodebook, e8pSources, RVQ3_RESID_SCALE, RVQ4_RESID_SCALE } from '@caldera/quant';
import { bufferBytes, checkFits, storageBuffer, uniformWords, type CalderaDevice } from './device.js';
import {
  E8P_MAX_SEGMENTS,
  e8pTablesUniform,
  MIX_CHUNK,
  ROTATION_MAX_MEMBERS,
  type Dispatch,
  type GpuMatrix,
  type GateInput,
  type InputProjectionOptions,
  type Kernels,
  type LatticeCodec,
  type ResidualInput,
  type RopeKvOptions,
  type RotateOptions,
  type RotationInput,
} from './kernels/index.js';

/**
 * Upload a dense `[rows, cols]` matrix: f32 as is, or 16-bit bits (`format` 'f16', the default, or 'bf16') packed two
 * per u32 (rows padded to even length), as stored: the kernels widen them to f32 as they read them (bf16 exactly).
 */
export function uploadMatrix(
  dev: CalderaDevice,
  data: Float32Array | Uint16Array,
  rows: number,
  cols: number,
  label: string,
  format: 'f16' | 'bf16' = 'f16',
): GpuMatrix {
  if (data.length !== rows * cols)
    throw new CalderaError('E_SHAPE', `${label}: ${data.length} values, expected ${rows}·${cols}`);
  if (data instanceof Float32Array)
    return { buffer: storageBuffer(dev, data, label), rows, cols, dtype: 'f32', rowWords: cols };
  const rowWords = Math.ceil(cols / 2);
  checkFits(dev, rows * rowWords * 4, label);
  let packed: Uint16Array = data;
  if (cols % 2 === 1) {
    packed = new Uint16Array(rows * rowWords * 2);
    for (let i = 0; i < rows; i++) packed.set(data.subarray(i * cols, i * cols + cols), i * rowWords * 2);
  }
  return { buffer: storageBuffer(dev, packed, label), rows, cols, dtype: format, rowWords };
}

/**
 * The E8P12 source table for the GPU: four u32 words per source (256 × 16 bytes), word j holding coordinates 2j (low
 * half) and 2j + 1 (high half) as bfloat16 — the upper 16 bits of the f32, exact for the magnitudes ±½, ±1½, ±2½ —
 * with coordinate 7 negated for sources of odd coordinate sum. A kernel turns a word into two floats with a shift and
 * a mask, and flips the two signs with one XOR (see `e8pMatvecWgsl`).
 */
export function e8pSourcePairs(): Uint32Array {
  const src = e8pSources();
  const out = new Uint32Array(256 * 4);
  const f = new Float32Array(1);
  const bits = new Uint32Array(f.buffer);
  const bf16 = (v: number, a: number, i: number) => {
    f[0] = v;
    if ((bits[0]! & 0xffff) !== 0 || f[0] !== v)
      throw new CalderaError('E_VALUE', `E8P source ${a} coordinate ${i} = ${v} has no bfloat16 form`);
    return bits[0]! >>> 16;
  };
  for (let a = 0; a < 256; a++) {
    let s = 0;
    for (let i = 0; i < 8; i++) s += src[a * 8 + i]!;
    const odd = Math.round(s) % 2 === 1;
    const at = (i: number) => bf16(i === 7 && odd ? -src[a * 8 + i]! : src[a * 8 + i]!, a, i);
    for (let j = 0; j < 4; j++) out[a * 4 + j] = (at(2 * j) | (at(2 * j + 1) << 16)) >>> 0;
  }
  return out;
}

/** Buffers shared by all layers of a model: scratch vectors for the rotated domain and constant tables. */
export interface LinearContext {
  dev: CalderaDevice;
  kernels: Kernels;
  /**
   * Rotated input, rotated output and low-rank scratch, each as long as the largest group of layers needs (its
   * layers' vectors side by side) times the rows.
   */
  rotIn: GPUBuffer;
  rotOut: GPUBuffer;
  /** Scratch of the global-memory rotation (as long as `ones` times the rows). */
  rotTmp: GPUBuffer;
  z: GPUBuffer;
  /** All ones, at least as long as any padded dimension. */
  ones: GPUBuffer;
  dummy: GPUBuffer;
  sources: GPUBuffer;
  /** The E81B codebook (256×8 f32) of the 3-bit RVQ residual. */
  e81b: GPUBuffer;
  /** Both tables as one uniform buffer ({@link e8pTablesUniform}), for the one-launch input step. */
  tables: GPUBuffer;
  /** `H_K` (f32, ±1) by K, created on demand (`hkTable([K])`). */
  hk(K: number): GPUBuffer;
  /** `H_K` for each K of `Ks` back to back, and where each starts (f32 values); created on demand. */
  hkTable(Ks: readonly number[]): { buffer: GPUBuffer; offsets: number[] };
}

/** A linear layer on the GPU: `out (+)= x·Wᵀ (+ bias)` as a list of kernel launches bound to fixed buffers. */
export interface GpuLinear {
  readonly inFeatures: number;
  readonly outFeatures: number;
  /** Bytes of this layer's weights on the GPU. */
  readonly gpuBytes: number;
  /** Bits per weight of the stored form (16 or 32 for dense, the checkpoint's figure for CALDERA layers). */
  readonly bitsPerWeight: number;
  /**
   * The launches computing `out (+)= layer(x)` for every row of a batch (rows of `inFeatures` in `x`, of
   * `outFeatures` in `out`); `x` and `out` must be different buffers.
   */
  bind(ctx: LinearContext, x: GPUBuffer, out: GPUBuffer, accumulate: boolean, tile?: number): Dispatch[];
  dispose(): void;
}

/**
 * A dense (f32, or packed f16 or bf16) layer: all rows of `w` (and `bias`), or its rows `rowStart … rowStart + rows − 1` as a
 * member of a {@link GpuDenseGroup}.
 */
export class GpuDenseLinear implements GpuLinear {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly gpuBytes: number;
  readonly bitsPerWeight: number;
  private disposed = false;
  constructor(
    readonly w: GpuMatrix,
    readonly bias: GPUBuffer | null,
    /** The group this layer belongs to, and its first row in the group's matrix. */
    readonly member: { group: GpuDenseGroup; index: number; rowStart: number; rows: number } | null = null,
  ) {
    this.inFeatures = w.cols;
    this.outFeatures = member?.rows ?? w.rows;
    this.gpuBytes = member
      ? member.rows * w.rowWords * 4 + (bias ? member.rows * 4 : 0)
      : w.buffer.size + (bias?.size ?? 0);
    this.bitsPerWeight = w.dtype === 'f32' ? 32 : 16;
  }

  bind(ctx: LinearContext, x: GPUBuffer, out: GPUBuffer, accumulate: boolean, tile = 1): Dispatch[] {
    return [
      ctx.kernels.matvec(this.w, x, out, {
        bias: this.bias,
        accumulate,
        dummy: ctx.dummy,
        tile,
        ...(this.member ? { rowStart: this.member.rowStart, rows: this.member.rows } : {}),
      }),
    ];
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    if (this.member) this.member.group.release();
    else {
      this.w.buffer.destroy();
      this.bias?.destroy();
    }
  }
}

/**
 * Dense layers that read the same input (a block's q, k and v; gate and up) stacked in one matrix (and one bias
 * buffer), so that one matrix–vector launch computes them all, each into its own output buffer. The matrix holds
 * exactly the bytes of the layers apart; the buffers are freed when every member has been disposed.
 */
export class GpuDenseGroup {
  readonly members: readonly GpuDenseLinear[];
  private live: number;
  constructor(
    readonly w: GpuMatrix,
    readonly bias: GPUBuffer | null,
    heights: readonly number[],
  ) {
    let at = 0;
    this.members = heights.map((rows, index) => {
      const m = new GpuDenseLinear(w, bias, { group: this, index, rowStart: at, rows });
      at += rows;
      return m;
    });
    if (at !== w.rows)
      throw new CalderaError('E_SHAPE', `dense group: layers of ${at} rows in a ${w.rows}-row matrix`);
    this.live = heights.length;
  }

  /** The launch computing `outs[w] (+)= layer_{j0+w}(x)` for consecutive members from j0 (at most 3). */
  bind(
    ctx: LinearContext,
    x: GPUBuffer,
    j0: number,
    outs: readonly GPUBuffer[],
    options: { accumulate?: boolean; tile?: number } = {},
  ): Dispatch[] {
    const ms = this.members.slice(j0, j0 + outs.length);
    if (ms.length !== outs.length || ms.length < 1)
      throw new CalderaError(
        'E_VALUE',
        `dense group bind: layers ${j0}… of a group of ${this.members.length}`,
      );
    return [
      ctx.kernels.matvec(
        this.w,
        x,
        ms.map((m, i) => ({ out: outs[i]!, rows: m.outFeatures })),
        {
          bias: this.bias,
          accumulate: options.accumulate ?? false,
          dummy: ctx.dummy,
          tile: options.tile ?? 1,
          rowStart: ms[0]!.member!.rowStart,
          rows: ms.reduce((a, m) => a + m.outFeatures, 0),
        },
      ),
    ];
  }

  /** Called by each member's dispose(). */
  release(): void {
    if (this.live <= 0) return;
    this.live--;
    if (this.live === 0) {
      this.w.buffer.destroy();
      this.bias?.destroy();
    }
  }
}

/** A dense layer to upload: `[rows, cols]` f32, or 16-bit bits (f16 unless `format` says bf16). */
export interface DenseLayerInput {
  data: Float32Array | Uint16Array;
  /** The format of 16-bit `data` (default 'f16'); ignored for f32 data. */
  format?: 'f16' | 'bf16';
  rows: number;
  cols: number;
  bias: Float32Array | null;
  label: string;
}

/**
 * Upload dense layers that read the same input: one {@link GpuDenseGroup} when they share a width and a dtype (f32,
 * f16 or bf16), all
 * or none have a bias, every part takes at least 16 bytes (so the stacked buffers hold exactly the parts' bytes, as
 * `planMemory` counts them), there are 2 or 3 of them and the stacked matrix fits a binding; else a layer each.
 */
export function createDenseLinears(dev: CalderaDevice, layers: readonly DenseLayerInput[]): GpuDenseLinear[] {
  for (const l of layers)
    if (l.data.length !== l.rows * l.cols || (l.bias && l.bias.length !== l.rows))
      throw new CalderaError(
        'E_SHAPE',
        `${l.label}: ${l.data.length} weights and ${l.bias?.length ?? 0} biases for a ${l.rows}×${l.cols} layer`,
      );
  // buffers made so far are destroyed when a later upload fails
  const made: { destroy(): void }[] = [];
  const track = <T extends { destroy(): void }>(b: T): T => (made.push(b), b);
  try {
    const alone = () =>
      layers.map((l) => {
        const w = uploadMatrix(dev, l.data, l.rows, l.cols, l.label, l.format);
        track(w.buffer);
        return new GpuDenseLinear(w, l.bias ? track(storageBuffer(dev, l.bias, `${l.label}.bias`)) : null);
      });
    const first = layers[0];
    if (
      !first ||
      layers.length < 2 ||
      layers.length > 3 ||
      layers.some(
        (l) =>
          l.cols !== first.cols ||
          l.data.constructor !== first.data.constructor ||
          (l.format ?? 'f16') !== (first.format ?? 'f16') ||
          (l.bias === null) !== (first.bias === null) ||
          l.rows * Math.ceil(l.cols / (l.data instanceof Uint16Array ? 2 : 1)) * 4 < 16 ||
          (l.bias !== null && l.rows * 4 < 16),
      )
    )
      return alone();
    const rows = layers.reduce((a, l) => a + l.rows, 0);
    const data =
      first.data instanceof Uint16Array
        ? new Uint16Array(rows * first.cols)
        : new Float32Array(rows * first.cols);
    let at = 0;
    for (const l of layers) {
      data.set(l.data, at);
      at += l.data.length;
    }
    const label = layers.map((l) => l.label).join('+');
    let w: GpuMatrix;
    try {
      w = uploadMatrix(dev, data, rows, first.cols, label, first.format);
    } catch (e) {
      // a stacked matrix larger than the device binds: each layer alone (its own size was checked by the plan)
      if (isCalderaError(e, 'E_DEVICE')) return alone();
      throw e;
    }
    track(w.buffer);
    let bias: GPUBuffer | null = null;
    if (first.bias) {
      const b = new Float32Array(rows);
      let o = 0;
      for (const l of layers) {
        b.set(l.bias!, o);
        o += l.rows;
      }
      bias = track(storageBuffer(dev, b, `${label}.bias`));
    }
    return [
      ...new GpuDenseGroup(
        w,
        bias,
        layers.map((l) => l.rows),
      ).members,
    ];
  } catch (e) {
    for (const b of made) b.destroy();
    throw e;
  }
}

/** Scratch sizes (in f32 values) a CALDERA layer needs from the {@link LinearContext}. */
export interface ScratchNeeds {
  rotIn: number;
  rotOut: number;
  z: number;
  ones: number;
}

/** The GPU codec of packed lattice codes, and the divisor of their second plane. */
export function gpuCodecOf(c: LatticeCodes): { codec: LatticeCodec; resScale: number } {
  return c.bits === 2
    ? { codec: 'e8p12', resScale: 1 }
    : { codec: c.bits === 3 ? 'rvq3' : 'rvq4', resScale: c.bits === 3 ? RVQ3_RESID_SCALE : RVQ4_RESID_SCALE };
}

/**
 * The GPU layout of packed L̂ codes: both code planes in one buffer, plane 1 (u16) from byte 0, plane 2 (u16 or u8)
 * from word `plane2Word` (the `lowRank.codes` of {@link Kernels.e8pMatvec}).
 */
export function packCodePlanes(c: LatticeCodes): { bytes: Uint8Array; plane2Word: number } {
  const p1 = c.planes[0]!;
  const plane2Word = Math.ceil(p1.byteLength / 4);
  const p2 = c.planes[1];
  const bytes = new Uint8Array(plane2Word * 4 + (p2?.byteLength ?? 0));
  bytes.set(new Uint8Array(p1.buffer, p1.byteOffset, p1.byteLength));
  if (p2) bytes.set(new Uint8Array(p2.buffer, p2.byteOffset, p2.byteLength), plane2Word * 4);
  return { bytes, plane2Word };
}

/** A CALDERA layer to upload: its decomposition, bias (null: none) and a label for errors and buffers. */
export interface CalderaLayerInput {
  d: Decomposition;
  bias: Float32Array | null;
  label: string;
}

/** The parts of one group buffer, one per layer (null: the layer has none). */
interface Layout {
  /** Byte offset of each part, and the bytes it takes (0 for none). */
  offsets: number[];
  sizes: number[];
  bytes: Uint8Array;
}

/**
 * Parts laid out back to back, each taking the bytes a buffer of its own would ({@link bufferBytes}), so a group
 * needs exactly the bytes of its layers apart.
 */
function layout(parts: readonly (ArrayBufferView | null | undefined)[]): Layout {
  const sizes = parts.map((p) => (p ? bufferBytes(p.byteLength) : 0));
  const offsets: number[] = [];
  let at = 0;
  for (const size of sizes) {
    offsets.push(at);
    at += size;
  }
  const bytes = new Uint8Array(at);
  parts.forEach((p, i) => p && bytes.set(new Uint8Array(p.buffer, p.byteOffset, p.byteLength), offsets[i]));
  return { offsets, sizes, bytes };
}

/**
 * Lattice-coded L̂ and R̂ of a layer (rank > 0) as the fused kernel reads them beside Q̂, or null (a layer without Q
 * has its factors decoded to f32: {@link Kernels.e8pMatvec} decodes L̂ only together with a Q̂).
 */
function latticeFactors(d: Decomposition): { l: LatticeCodes; r: LatticeCodes } | null {
  return d.q && d.rank > 0 && d.l.kind === 'lattice' && d.r.kind === 'lattice'
    ? { l: d.l.codes, r: d.r.codes }
    : null;
}

/** Most layers in one {@link GpuCalderaGroup} (the segments of one fused launch). */
export const MAX_GROUP_LAYERS = Math.min(E8P_MAX_SEGMENTS, ROTATION_MAX_MEMBERS);

/**
 * Whether these layers can share one {@link GpuCalderaGroup}: at most {@link MAX_GROUP_LAYERS}, the same input and
 * padded input width, rotation and Q codec, and the same codecs of L̂ and R̂ among those whose factors are
 * lattice-coded.
 */
export function groupable(layers: readonly Decomposition[]): boolean {
  if (layers.length < 1 || layers.length > MAX_GROUP_LAYERS) return false;
  const a = layers[0]!;
  const fa = layers.map(latticeFactors).find((f) => f) ?? null;
  return layers.every((b) => {
    const fb = latticeFactors(b);
    return (
      b.shape[1] === a.shape[1] &&
      b.padded[1] === a.padded[1] &&
      b.hadamard === a.hadamard &&
      (b.q?.bits ?? 0) === (a.q?.bits ?? 0) &&
      (!fb || !fa || (fb.l.bits === fa.l.bits && fb.r.bits === fa.r.bits))
    );
  });
}

/** One layer's place in its group's buffers. */
interface Member {
  d: Decomposition;
  label: string;
  /** Byte offsets of Q's planes in the group's code buffers. */
  q: number;
  q2: number;
  /** L̂ and R̂ as codes: rank, byte offsets (L̂'s plane 2 in the same buffer as its plane 1), scales. */
  packed: { k: number; r: number; r2: number; rScale: number; l: number; l2: number; lScale: number } | null;
  /** Dense factors and the LoRA pair, f32: L `[mp, k_d]`, R `[k_d, np]`. */
  dense: { l: GpuMatrix; r: GpuMatrix } | null;
  /** Offsets (in f32 values) of SU and SV in the group's buffers and of the bias in its bias buffer (null: none). */
  su: number;
  sv: number;
  bias: number | null;
  /** K of the output rotation's Hadamard factor. */
  Km: number;
  gpuBytes: number;
}

/** Options of {@link GpuCalderaGroup.bind}. */
export interface GroupBindOptions {
  /** Add to the outputs instead of writing them (default false). */
  accumulate?: boolean;
  /** Activation rows per invocation of the matrix kernels (default 1; see `Kernels.matvec`). */
  tile?: number;
  /** What the input rotation computes from `x` as it loads it (RMSNorm, SwiGLU; default none). */
  input?: RotationInput;
  /**
   * The layer before, finished by the input step: its pending output rotation (from
   * {@link GpuCalderaGroup.bindPending}) accumulating into `x`, and the buffer that receives `x + its output`. Needs
   * `input` RMSNorm and {@link GpuCalderaGroup.finishesPending}.
   */
  residual?: ResidualInput;
  /**
   * The gate and up layers before, finished by the input step: their pending output rotation (from
   * {@link GpuCalderaGroup.bindPending}) writing `x` and `input.up`, which are then not written. Needs `input` SwiGLU
   * and {@link GpuCalderaGroup.finishesPending}.
   */
  gate?: GateInput;
  /**
   * The layers are q, k and v: RoPE and the KV store (and attention, with `then.attention`) follow in their output
   * rotation.
   */
  then?: RopeKvOptions;
}

/**
 * CALDERA layers that read the same input (a block's q, k and v; gate and up), or one layer alone, on the GPU with
 * their packed codes in shared buffers, so that one launch serves them all (see {@link GpuCalderaGroup.bind}); W is
 * never materialised (docs/architecture.md, "Decomposition.apply"). Per layer j:
 * 1. `x'_j = (x ⊙ SU_j)·M_n` (zero-padded to np; `x` computed on the way in when it is an RMSNorm or SwiGLU);
 * 2. `z_j = x'_j·R̂_jᵀ` from R̂'s codes; steps 1 and 2 are one {@link Kernels.projectInput} launch for all layers
 *    (for prefill tiles and vectors larger than workgroup memory: a {@link Kernels.rotate} launch, two or three
 *    each for the larger vectors, and a {@link Kernels.e8pMatvec} launch with a segment per layer);
 * 3. `y'_j = Q̂_j·x'_j + L̂_j·z_j`: one {@link Kernels.e8pMatvec} launch decoding Q̂ and L̂ on the fly (none for
 *    layers without Q, which group only with each other);
 * 4. dense factors only (f16 `L_dense`/`R_dense`, the LoRA pair `L_ft`/`R_ft` of a fine-tuned checkpoint, and the
 *    factors of a layer without Q, lattice-coded ones decoded to f32 on upload): `y'_j += L_d·(R_d·x'_j)` (`=` without
 *    Q), two f32 {@link Kernels.matvec}s per layer;
 * 5. `y_j = g_j·(y'_j·M_mᵀ ⊙ SV_j) (+ bias_j)`, first m outputs: one {@link Kernels.rotate} launch for all
 *    layers, each writing its own output buffer (two or three each for vectors larger than workgroup memory), or
 *    left pending ({@link GpuCalderaGroup.bindPending}) for the next layers' input step to finish: a residual
 *    branch's last layer's by the next RMSNorm's layers (`bindNormed`), gate and up's by down_proj's
 *    (`bindPending` with `gate`).
 *
 * Quantized weights stay packed on the GPU: Q̂'s codes (u16, two per u32: 2 bits per weight; RVQ4 adds a second
 * plane, RVQ3 a u8 plane) and L̂'s and R̂'s codes (4 bits per value with the default RVQ4), each layer's part at a
 * 4-byte boundary (at least 16 bytes, as a buffer of its own), so a group needs exactly the bytes of its layers
 * apart. Dense factors, which the checkpoint stores unquantized, are uploaded as f32 `[mp, k_d]` and `[k_d, np]`,
 * the LoRA pair appended as further components. SU and SV are multipliers (±1, or continuous after
 * `caldera finetune --signs`).
 *
 * An explicit handle: the buffers are freed when every member has been disposed.
 */
export class GpuCalderaGroup {
  /** The layers, in the order given. */
  readonly members: readonly GpuCalderaLinear[];
  readonly needs: ScratchNeeds;
  private readonly m: Member[];
  /** Q̂'s codes; null for layers without Q. */
  private readonly codes: GPUBuffer | null;
  private readonly codes2: GPUBuffer | null;
  private readonly rCodes: GPUBuffer | null;
  private readonly rCodes2: GPUBuffer | null;
  private readonly lCodes: GPUBuffer | null;
  /** SU of every layer back to back (np each), and SV (mp each); null without the rotation. */
  private readonly su: GPUBuffer | null;
  private readonly sv: GPUBuffer | null;
  /** The biases of the layers that have one, back to back. */
  private readonly bias: GPUBuffer | null;
  private readonly q: { codec: LatticeCodec; resScale: number } | null;
  private readonly r: { codec: LatticeCodec; resScale: number } | null;
  private readonly l: { codec: LatticeCodec; resScale: number } | null;
  private readonly Kn: number;
  private readonly bufs: GPUBuffer[] = [];
  private live: number;

  constructor(dev: CalderaDevice, layers: readonly CalderaLayerInput[]) {
    try {
      const decs = layers.map((x) => x.d);
      const label = layers.map((x) => x.label).join('+');
      // a layer with no term would write nothing: its rows of the output would be the last layer's
      for (const x of layers) checkDecompositionTerms(x.d, x.label);
      if (!groupable(decs))
        throw new CalderaError(
          'E_VALUE',
          `${label}: layers of different input widths, rotations or codecs (or more than ${MAX_GROUP_LAYERS}) cannot share a group`,
        );
      const d0 = decs[0]!;
      const np = d0.padded[1];
      if (np % 8 !== 0)
        throw new CalderaError('E_SHAPE', `${label}: padded input width ${np} is not a multiple of 8`);
      const Kof = (size: number, what: string) => {
        if (!d0.hadamard) return 1;
        const f = hadamardFactor(size);
        if (!f) throw new CalderaError('E_UNSUPPORTED', `${what}: no Hadamard transform of size ${size}`);
        return f.K;
      };
      this.Kn = Kof(np, label);
      const up = (a: ArrayBufferView, what: string) => {
        const b = storageBuffer(dev, a, `${label}.${what}`);
        this.bufs.push(b);
        return b;
      };
      const lat = decs.map(latticeFactors);
      const anyLat = lat.find((f) => f) ?? null;
      for (const [j, f] of lat.entries())
        if (f && decs[j]!.padded[0] % 8 !== 0)
          throw new CalderaError(
            'E_SHAPE',
            `${layers[j]!.label}: padded output height ${decs[j]!.padded[0]} is not a multiple of 8`,
          );
      // layers without Q (low rank only; a group has all or none): no Q buffers, no fused launch
      const qL = d0.q ? layout(decs.map((d) => d.q?.planes[0])) : null;
      const q2L = d0.q && d0.q.bits !== 2 ? layout(decs.map((d) => d.q?.planes[1])) : null;
      const rL = anyLat ? layout(lat.map((f) => f?.r.planes[0])) : null;
      const r2L = anyLat && anyLat.r.bits !== 2 ? layout(lat.map((f) => f?.r.planes[1])) : null;
      const lPlanes = lat.map((f) => (f ? packCodePlanes(f.l) : null));
      const lL = anyLat ? layout(lPlanes.map((p) => p?.bytes)) : null;
      this.codes = qL ? up(qL.bytes, 'Q') : null;
      this.codes2 = q2L ? up(q2L.bytes, 'Q_resid') : null;
      this.rCodes = rL ? up(rL.bytes, 'R') : null;
      this.rCodes2 = r2L ? up(r2L.bytes, 'R_resid') : null;
      this.lCodes = lL ? up(lL.bytes, 'L') : null;
      this.q = d0.q ? gpuCodecOf(d0.q) : null;
      this.r = anyLat ? gpuCodecOf(anyLat.r) : null;
      this.l = anyLat ? gpuCodecOf(anyLat.l) : null;
      // SU, SV and biases, f32
      const suL = layout(decs.map((d) => d.su));
      const svL = layout(decs.map((d) => d.sv));
      const biasL = layout(layers.map((x) => x.bias));
      this.su = d0.hadamard ? up(suL.bytes, 'SU') : null;
      this.sv = d0.hadamard ? up(svL.bytes, 'SV') : null;
      this.bias = layers.some((x) => x.bias) ? up(biasL.bytes, 'bias') : null;
      const shared = [qL, q2L, rL, r2L, lL, suL, svL, biasL];
      this.m = decs.map((d, j) => {
        const { label: name, bias } = layers[j]!;
        const [mp] = d.padded;
        const mine: GPUBuffer[] = [];
        const own = (a: ArrayBufferView, what: string) => {
          const b = up(a, `${j}.${what}`);
          mine.push(b);
          return b;
        };
        const f = lat[j];
        const lp = lPlanes[j];
        const ft = d.ft && d.ft.rank > 0 ? d.ft : null;
        const kf = ft?.rank ?? 0;
        if (ft && (ft.l.length !== mp * kf || ft.r.length !== kf * np))
          throw new CalderaError(
            'E_SHAPE',
            `${name}: LoRA factors hold ${ft.l.length} and ${ft.r.length} values, expected ${mp}·${kf} and ${kf}·${np}`,
          );
        // dense components: unquantized factors (when not lattice-coded) followed by the LoRA pair
        const kq = f ? 0 : d.rank;
        const kd = kq + kf;
        let dense: Member['dense'] = null;
        if (kd > 0) {
          const fv = (x: Decomposition['l']) => (x.kind === 'dense' ? x.values : latticeDecode(x.codes));
          const lt = kq > 0 ? fv(d.l) : new Float32Array(0); // kq × mp
          const lr = new Float32Array(mp * kd);
          for (let t = 0; t < kq; t++) for (let i = 0; i < mp; i++) lr[i * kd + t] = lt[t * mp + i]!;
          if (ft) for (let i = 0; i < mp; i++) lr.set(ft.l.subarray(i * kf, i * kf + kf), i * kd + kq);
          const rv = new Float32Array(kd * np);
          if (kq > 0) rv.set(fv(d.r).subarray(0, kq * np));
          if (ft) rv.set(ft.r, kq * np);
          dense = {
            l: { buffer: own(lr, 'L_dense'), rows: mp, cols: kd, dtype: 'f32', rowWords: kd },
            r: { buffer: own(rv, 'R_dense'), rows: kd, cols: np, dtype: 'f32', rowWords: np },
          };
        }
        const partSum = shared.reduce((sum, L) => sum + (L?.sizes[j] ?? 0), 0);
        return {
          d,
          label: name,
          q: qL?.offsets[j] ?? 0,
          q2: q2L?.offsets[j] ?? 0,
          packed:
            f && lp
              ? {
                  k: d.rank,
                  r: rL!.offsets[j]!,
                  r2: r2L?.offsets[j] ?? 0,
                  rScale: f.r.scale,
                  l: lL!.offsets[j]!,
                  l2: lL!.offsets[j]! + lp.plane2Word * 4,
                  lScale: f.l.scale,
                }
              : null,
          dense,
          su: suL.offsets[j]! / 4,
          sv: svL.offsets[j]! / 4,
          bias: bias ? biasL.offsets[j]! / 4 : null,
          Km: Kof(mp, name),
          gpuBytes: partSum + mine.reduce((s, x) => s + x.size, 0),
        };
      });
      // every part is counted as a buffer of its own would be, so the shared buffers are their sum
      const total = this.bufs.reduce((s, x) => s + x.size, 0);
      const counted = this.m.reduce((s, x) => s + x.gpuBytes, 0);
      if (total !== counted)
        throw new Error(`${label}: ${total} bytes allocated, ${counted} counted (internal error)`);
      const sumK = this.m.reduce((s, x) => s + (x.packed?.k ?? 0), 0);
      const maxKd = Math.max(0, ...this.m.map((x) => x.dense?.l.cols ?? 0));
      this.needs = {
        rotIn: np * decs.length,
        rotOut: decs.reduce((s, d) => s + d.padded[0], 0),
        // (the chunked gate step leaves z in one partial vector per chunk of its H_K mix: see Kernels.gateStep)
        z: Math.max(sumK * (this.Kn > 1 ? Math.ceil(this.Kn / MIX_CHUNK) : 1), maxKd),
        ones: Math.max(np, ...decs.map((d) => d.padded[0])),
      };
    } catch (e) {
      // nothing half-uploaded stays behind
      for (const x of this.bufs) x.destroy();
      throw e;
    }
    this.live = layers.length;
    this.members = layers.map((_, j) => new GpuCalderaLinear(this, j));
  }

  /** Bytes of layer `j`'s weights on the GPU (its parts of the shared buffers and its own buffers). */
  memberBytes(j: number): number {
    return this.m[j]!.gpuBytes;
  }

  /** Layer `j`'s decomposition. */
  decomposition(j: number): Decomposition {
    return this.m[j]!.d;
  }

  /**
   * The launches computing `outs[w] (+)= layer_{j0+w}(x)` for the layers `j0 … j0 + outs.length − 1` (every row of a
   * batch; `x` holds rows of the layers' input width, `outs[w]` rows of layer j0+w's output width). The whole group
   * takes 3 launches when its vectors fit workgroup memory and `tile` is 1 (4 with prefill tiles; 2 more per layer
   * with dense factors, 1 fewer for layers without Q; 2 or 3 per layer and rotation for larger vectors). With `input` the layers read rows computed
   * from `x` (RMSNorm or SwiGLU), which their input rotation computes as it loads `x`. With `then` the layers are
   * q, k and v and their output rotation also applies RoPE and stores k and v in the KV cache, and attention follows
   * with `then.attention` (in the same launch when `tile` is 1: those launches then compute one row only; see
   * {@link Kernels.rotateRopeKv}). With `residual` or `gate` the input step also finishes the layers before (see
   * {@link GroupBindOptions}).
   */
  bind(
    ctx: LinearContext,
    x: GPUBuffer,
    j0: number,
    outs: GPUBuffer[],
    options: GroupBindOptions = {},
  ): Dispatch[] {
    const { list, output } = this.record(ctx, x, j0, outs, options);
    list.push(...output());
    return list;
  }

  /**
   * {@link GpuCalderaGroup.bind} without the output rotation, which is returned instead (accumulating into the outputs
   * when `accumulate`): the next layers' input step can finish it (see `bindNormed` and the function `bindPending`).
   * Not with `then`.
   */
  bindPending(
    ctx: LinearContext,
    x: GPUBuffer,
    j0: number,
    outs: GPUBuffer[],
    options: Omit<GroupBindOptions, 'then'> = {},
  ): { dispatches: Dispatch[]; pending: RotateOptions } {
    const { list, rotation } = this.record(ctx, x, j0, outs, options);
    return { dispatches: list, pending: { ...rotation, pre: ctx.ones } };
  }

  /**
   * Whether {@link GpuCalderaGroup.bind} of layers `j0 …` (as many as `outs`) with these options finishes
   * `options.residual` or `options.gate` in its input step ({@link Kernels.finishesPending}).
   */
  finishesPending(
    ctx: LinearContext,
    x: GPUBuffer,
    j0: number,
    outs: readonly GPUBuffer[],
    options: GroupBindOptions,
  ): boolean {
    return ctx.kernels.finishesPending(this.inputStep(ctx, x, this.slice(j0, outs.length), options));
  }

  /** Layers `j0 … j0 + count − 1`, checked. */
  private slice(j0: number, count: number): Member[] {
    if (!Number.isInteger(j0) || j0 < 0 || count < 1 || j0 + count > this.m.length)
      throw new CalderaError(
        'E_VALUE',
        `bind: layers ${j0}…${j0 + count - 1} of a group of ${this.m.length}`,
      );
    return this.m.slice(j0, j0 + count);
  }

  /** The options of the layers' input step (see {@link Kernels.projectInput}). */
  private inputStep(
    ctx: LinearContext,
    x: GPUBuffer,
    ms: readonly Member[],
    options: GroupBindOptions,
  ): InputProjectionOptions {
    const { tile = 1, input, residual, gate } = options;
    const d0 = ms[0]!.d;
    const n = d0.shape[1];
    const np = d0.padded[1];
    // with layers to finish, one H_K table holds both steps' factors (the pending rotation's first)
    const pending = residual?.pending ?? gate?.pending;
    const Ks = [...new Set([...(pending?.members.map((m) => m.K) ?? []), this.Kn])];
    const hks = ctx.hkTable(Ks);
    const at = (K: number) => hks.offsets[Ks.indexOf(K)]!;
    const rebased = (p: RotateOptions): RotateOptions => ({
      ...p,
      hk: hks.buffer,
      members: p.members.map((m) => ({ ...m, hkOff: at(m.K) })),
    });
    return {
      x,
      xStride: n,
      ...(input ? { input } : {}),
      ...(residual ? { residual: { out: residual.out, pending: rebased(residual.pending) } } : {}),
      ...(gate ? { gate: { pending: rebased(gate.pending) } } : {}),
      pre: this.su ?? ctx.ones,
      hk: hks.buffer,
      hkOff: at(this.Kn),
      transform: d0.hadamard,
      n: np,
      nIn: n,
      K: this.Kn,
      layers: ms.map((mb) => ({
        preOff: this.su ? mb.su : 0,
        r: mb.packed
          ? { rows: mb.packed.k, qscale: mb.packed.rScale, codeByte: mb.packed.r, code2Byte: mb.packed.r2 }
          : null,
      })),
      rot: ctx.rotIn,
      codes:
        this.r && this.rCodes
          ? {
              codec: this.r.codec,
              codes: this.rCodes,
              codes2: this.rCodes2,
              resScale: this.r.resScale,
              e81b: this.r.codec === 'rvq3' ? ctx.e81b : null,
              sources: ctx.sources,
              tables: ctx.tables,
              z: ctx.z,
            }
          : null,
      ones: ctx.ones,
      tmp: ctx.rotTmp,
      dummy: ctx.dummy,
      tile,
    };
  }

  /** The launches of `bind` up to the output rotation, and that rotation. */
  private record(
    ctx: LinearContext,
    x: GPUBuffer,
    j0: number,
    outs: GPUBuffer[],
    options: GroupBindOptions,
  ): { list: Dispatch[]; rotation: Omit<RotateOptions, 'pre'>; output: () => Dispatch[] } {
    const { accumulate = false, tile = 1, then } = options;
    const J = outs.length;
    const ms = this.slice(j0, J);
    const d0 = ms[0]!.d;
    const np = d0.padded[1];
    const K = ctx.kernels;
    const withFactors = ms.map((mb, w) => ({ mb, w })).filter(({ mb }) => mb.packed);
    // L̂'s codes are bound only when a bound layer has them
    const lowRank = withFactors.length > 0 ? this.l : null;
    const q = this.q;
    const e81b = q?.codec === 'rvq3' || lowRank?.codec === 'rvq3' ? ctx.e81b : null;
    const xRow = J * np;
    let zOff = 0;
    const zAt = ms.map((mb) => {
      const at = zOff;
      zOff += mb.packed?.k ?? 0;
      return at;
    });
    // the input rotation and R̂·x' (one launch when they fit); z in partial sums from the chunked gate step
    const step = this.inputStep(ctx, x, ms, options);
    const list: Dispatch[] = K.projectInput(step);
    const zParts = K.inputStepParts(step);
    const rowStart: number[] = [];
    let rows = 0;
    for (const mb of ms) {
      rowStart.push(rows);
      rows += mb.d.padded[0];
    }
    // y' = Q̂·x' (+ L̂·z): layers without Q have only dense factors, whose first product below writes y'
    if (q && this.codes)
      list.push(
        K.e8pMatvec({
          codes: this.codes,
          codes2: this.codes2,
          codec: q.codec,
          e81b,
          sources: ctx.sources,
          x: ctx.rotIn,
          out: ctx.rotOut,
          np,
          resScale: q.resScale,
          xRow,
          segments: ms.map((mb, w) => ({
            rows: mb.d.padded[0],
            qscale: mb.d.q?.scale ?? 0,
            codeByte: mb.q,
            code2Byte: mb.q2,
            x: w * np,
            ...(mb.packed
              ? {
                  lowRank: {
                    k: mb.packed.k,
                    scale: mb.packed.lScale,
                    codeByte: mb.packed.l,
                    code2Byte: mb.packed.l2,
                    z: zAt[w]!,
                  },
                }
              : {}),
          })),
          ...(lowRank && this.lCodes
            ? {
                lowRank: {
                  codec: lowRank.codec,
                  codes: this.lCodes,
                  resScale: lowRank.resScale,
                  z: ctx.z,
                  zRow: zParts * zOff,
                  zParts,
                },
              }
            : {}),
          tile,
        }),
      );
    ms.forEach((mb, w) => {
      if (!mb.dense) return;
      // z is free again: the fused kernel above has consumed it (dispatches of a pass run in order)
      const opts = { bias: null, dummy: ctx.dummy, tile };
      list.push(K.matvec(mb.dense.r, ctx.rotIn, ctx.z, { ...opts, accumulate: false, xRow, xOff: w * np }));
      list.push(
        K.matvec(mb.dense.l, ctx.z, ctx.rotOut, {
          ...opts,
          accumulate: q !== null,
          outRow: rows,
          outOff: rowStart[w]!,
        }),
      );
    });
    // the output rotations: one launch for all in workgroup memory
    const Ks = [...new Set(ms.map((mb) => mb.Km))];
    const hks = ctx.hkTable(Ks);
    const rotation: Omit<RotateOptions, 'pre'> = {
      x: ctx.rotOut,
      xStride: rows,
      post: this.sv ?? ctx.ones,
      bias: this.bias,
      hk: hks.buffer,
      tmp: ctx.rotTmp,
      dummy: ctx.dummy,
      outs,
      transform: d0.hadamard,
      transpose: true,
      accumulate,
      members: ms.map((mb, w) => ({
        n: mb.d.padded[0],
        nIn: mb.d.padded[0],
        outLen: mb.d.shape[0],
        K: mb.Km,
        gscale: mb.d.scale,
        xOff: rowStart[w]!,
        preOff: 0,
        postOff: this.sv ? mb.sv : 0,
        biasOff: mb.bias,
        hkOff: hks.offsets[Ks.indexOf(mb.Km)]!,
        outOff: 0,
        outStride: mb.d.shape[0],
        slot: w,
      })),
    };
    const output = () =>
      then
        ? K.rotateRopeKv({ ...rotation, ones: ctx.ones }, then, tile)
        : K.rotate({ ...rotation, pre: ctx.ones });
    return { list, rotation, output };
  }

  /** Called by each member's dispose(): the buffers go when the last member is disposed. */
  release(): void {
    if (this.live <= 0) return;
    this.live--;
    if (this.live === 0) for (const b of this.bufs) b.destroy();
  }
}

/**
 * A CALDERA layer on the GPU: one member of a {@link GpuCalderaGroup} (`new GpuCalderaLinear(dev, d, bias, label)`
 * makes a group of its own; {@link createCalderaLinears} groups layers that share an input).
 */
export class GpuCalderaLinear implements GpuLinear {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly gpuBytes: number;
  readonly bitsPerWeight: number;
  /** Scratch this layer's group needs from the {@link LinearContext}. */
  readonly needs: ScratchNeeds;
  readonly group: GpuCalderaGroup;
  /** This layer's place in {@link group}. */
  readonly index: number;
  private disposed = false;

  constructor(dev: CalderaDevice, d: Decomposition, bias: Float32Array | null, label: string);
  /** A member of `group` (used by {@link GpuCalderaGroup}). */
  constructor(group: GpuCalderaGroup, index: number);
  constructor(
    a: CalderaDevice | GpuCalderaGroup,
    b: Decomposition | number,
    bias: Float32Array | null = null,
    label = 'layer',
  ) {
    if (a instanceof GpuCalderaGroup) {
      this.group = a;
      this.index = b as number;
    } else {
      const g = new GpuCalderaGroup(a, [{ d: b as Decomposition, bias, label }]);
      this.group = g;
      this.index = 0;
      // the group made its own member object; this one takes its place
      (g.members as GpuCalderaLinear[])[0] = this;
    }
    const d = this.group.decomposition(this.index);
    [this.outFeatures, this.inFeatures] = d.shape;
    this.gpuBytes = this.group.memberBytes(this.index);
    this.bitsPerWeight = d.bitsPerWeight;
    this.needs = this.group.needs;
  }

  bind(ctx: LinearContext, x: GPUBuffer, out: GPUBuffer, accumulate: boolean, tile = 1): Dispatch[] {
    return this.group.bind(ctx, x, this.index, [out], { accumulate, tile });
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.group.release();
  }
}

/**
 * Upload CALDERA layers that read the same input (a block's q, k and v; or gate and up): one shared
 * {@link GpuCalderaGroup} when they are {@link groupable} and the combined buffers fit the device, else a group each.
 */
export function createCalderaLinears(
  dev: CalderaDevice,
  layers: readonly CalderaLayerInput[],
): GpuCalderaLinear[] {
  if (layers.length > 1 && groupable(layers.map((x) => x.d)))
    try {
      return [...new GpuCalderaGroup(dev, layers).members];
    } catch (e) {
      // a shared buffer larger than the device binds: each layer alone (its own parts were checked by the plan)
      if (!isCalderaError(e, 'E_DEVICE')) throw e;
    }
  return layers.map((x) => new GpuCalderaLinear(dev, x.d, x.bias, x.label));
}

/**
 * What layers read: the rows of `x` as they are, or rows computed from them (`compute`): the RMSNorm with `weight`,
 * or SwiGLU `silu(x) ⊙ up` (see {@link RotationInput}). CALDERA layers compute it as their input rotation loads `x`,
 * with no launch of its own (`x` is left as it is); other layers read it after a launch that writes it to `scratch`
 * (RMSNorm) or over `x` in place (SwiGLU).
 */
export interface LayerInput {
  x: GPUBuffer;
  compute?:
    | { kind: 'rmsNorm'; weight: GPUBuffer; eps: number; scratch: GPUBuffer }
    | { kind: 'swiglu'; up: GPUBuffer };
}

/**
 * The launches computing `out (+)= layer(input)` for layers that read the same input (`x`, or a {@link LayerInput}),
 * in order. Consecutive members of one {@link GpuCalderaGroup} or {@link GpuDenseGroup} run as one launch set (the
 * block's q, k and v; gate and up); other layers run each their own. With `then` the layers are q, k and v (in
 * that order, not accumulated) and RoPE with the KV-cache store follows ({@link Kernels.ropeKv}), then attention when
 * `then.attention` asks for it; the output rotation of a group of exactly those three computes them (attention too
 * with one activation row: {@link Kernels.rotateRopeKv}).
 */
export function bindLayers(
  ctx: LinearContext,
  input: GPUBuffer | LayerInput,
  layers: readonly { layer: GpuLinear; out: GPUBuffer }[],
  options: { accumulate?: boolean; tile?: number; then?: RopeKvOptions } = {},
): Dispatch[] {
  const { x, compute } = 'x' in input ? input : { x: input, compute: undefined };
  const accumulate = options.accumulate ?? false;
  const tile = options.tile ?? 1;
  const then = options.then;
  if (then && (layers.length !== 3 || accumulate))
    throw new CalderaError('E_VALUE', 'bindLayers: RoPE and the KV store follow q, k and v, not accumulated');
  if (layers.length === 0) return [];
  const runs = runsOf(layers);
  // with CALDERA layers only, each run computes the input in its input rotation, and a single run of q, k and v
  // applies RoPE and the KV store in its output rotation
  const caldera = layers.every(({ layer }) => layer instanceof GpuCalderaLinear);
  const ropeInRotation = then !== undefined && caldera && runs.length === 1;
  const list: Dispatch[] = [];
  let src = x;
  if (!caldera && compute) {
    const n = layers[0]!.layer.inFeatures;
    if (compute.kind === 'rmsNorm') {
      list.push(ctx.kernels.rmsNorm(x, compute.weight, compute.scratch, n, compute.eps));
      src = compute.scratch;
    } else list.push(ctx.kernels.swiglu(x, compute.up, n));
  }
  for (const { layers: run, outs } of runs) {
    const first = run[0]!;
    if (first instanceof GpuCalderaLinear)
      list.push(
        ...first.group.bind(ctx, src, first.index, outs, {
          accumulate,
          tile,
          ...(compute && caldera ? { input: compute } : {}),
          ...(ropeInRotation ? { then } : {}),
        }),
      );
    else if (first instanceof GpuDenseLinear && first.member && run.length > 1)
      list.push(...first.member.group.bind(ctx, src, first.member.index, outs, { accumulate, tile }));
    else run.forEach((l, i) => list.push(...l.bind(ctx, src, outs[i]!, accumulate, tile)));
  }
  if (then && !ropeInRotation)
    list.push(
      ...ctx.kernels.ropeKvAttention({ ...then, q: layers[0]!.out, k: layers[1]!.out, v: layers[2]!.out }),
    );
  return list;
}

/**
 * The launches computing `out += layer(input)` for a residual branch's last layer (o_proj, down_proj), leaving a
 * CALDERA layer's output rotation pending: it is returned for {@link bindNormed}, which finishes it with the next
 * layers' input step when it can. `gate` is the gate and up layers' pending output rotation (from `bindNormed` with
 * `defer`) that writes `input` (SwiGLU's `x` and `up`): this layer's input step finishes it when it can, else it runs
 * first. Other layers are bound whole (`pending` null).
 */
export function bindPending(
  ctx: LinearContext,
  input: GPUBuffer | LayerInput,
  layer: GpuLinear,
  out: GPUBuffer,
  options: { tile?: number; gate?: RotateOptions | null } = {},
): { dispatches: Dispatch[]; pending: RotateOptions | null } {
  const tile = options.tile ?? 1;
  const gate = options.gate ?? null;
  const { x, compute } = 'x' in input ? input : { x: input, compute: undefined };
  // gate and up's rotation, when this layer's input step does not finish it
  const first = () => (gate ? ctx.kernels.rotate(gate) : []);
  if (layer instanceof GpuCalderaLinear) {
    const g = layer.group;
    const opts = { accumulate: true, tile, ...(compute ? { input: compute } : {}) };
    if (gate && compute?.kind === 'swiglu') {
      const gated = { ...opts, gate: { pending: gate } };
      if (g.finishesPending(ctx, x, layer.index, [out], gated))
        return g.bindPending(ctx, x, layer.index, [out], gated);
    }
    const before = first();
    const r = g.bindPending(ctx, x, layer.index, [out], opts);
    return { dispatches: [...before, ...r.dispatches], pending: r.pending };
  }
  return {
    dispatches: [...first(), ...bindLayers(ctx, input, [{ layer, out }], { accumulate: true, tile })],
    pending: null,
  };
}

/**
 * Layers reading the RMSNorm of the residual stream: `out_w = layer_w(RMSNorm(h) ⊙ weight)` with `h = x` plus, when
 * `step.pending` is a residual branch's pending output rotation ({@link bindPending}), that branch's output. When the
 * layers are one run of a CALDERA group whose input step can finish that rotation
 * ({@link GpuCalderaGroup.finishesPending}), h is written to `step.out` by that step (one launch fewer); else the
 * rotation runs first, accumulating into `x`, and h stays there — computing the RMSNorm into `norm.scratch` in the
 * same launch ({@link Kernels.rotateNorm}) when the layers are not all CALDERA (they read it from there). With `defer` (not with `then`), a CALDERA run's own
 * output rotation is left pending and returned (for the gate and up layers: see {@link bindPending}'s `gate`).
 * Returns the launches, the buffer holding h and the pending rotation (null when none).
 */
export function bindNormed(
  ctx: LinearContext,
  step: {
    pending: RotateOptions | null;
    x: GPUBuffer;
    out: GPUBuffer;
    norm: { weight: GPUBuffer; eps: number; scratch: GPUBuffer };
  },
  layers: readonly { layer: GpuLinear; out: GPUBuffer }[],
  options: { tile?: number; then?: RopeKvOptions; defer?: boolean } = {},
): { dispatches: Dispatch[]; residual: GPUBuffer; pending: RotateOptions | null } {
  const { x, pending, out, norm } = step;
  const { then, defer = false } = options;
  if (then && defer)
    throw new CalderaError('E_VALUE', 'bindNormed: q, k and v with RoPE cannot leave their rotation');
  const tile = options.tile ?? 1;
  const input = { kind: 'rmsNorm' as const, weight: norm.weight, eps: norm.eps };
  const runs = runsOf(layers);
  const first = runs.length === 1 ? runs[0]!.layers[0] : undefined;
  // (q, k and v with RoPE are one run of three; other `then` uses go to bindLayers, which rejects them)
  if (first instanceof GpuCalderaLinear && (!then || layers.length === 3)) {
    const g = first.group;
    const outs = runs[0]!.outs;
    const base: GroupBindOptions = { tile, input, ...(then ? { then } : {}) };
    const fused: GroupBindOptions | null = pending ? { ...base, residual: { pending, out } } : null;
    const fuses = fused !== null && g.finishesPending(ctx, x, first.index, outs, fused);
    const opts = fuses ? fused : base;
    const before = pending && !fuses ? ctx.kernels.rotate(pending) : [];
    const residual = fuses ? out : x;
    if (defer) {
      const r = g.bindPending(ctx, x, first.index, outs, opts);
      return { dispatches: [...before, ...r.dispatches], residual, pending: r.pending };
    }
    return { dispatches: [...before, ...g.bind(ctx, x, first.index, outs, opts)], residual, pending: null };
  }
  const rest = then ? { tile, then } : { tile };
  // layers that compute the RMSNorm apart (not all CALDERA) take it from the rotation's launch
  const normedApart = layers.some(({ layer }) => !(layer instanceof GpuCalderaLinear));
  if (pending && normedApart) {
    if (pending.outs[0] !== x)
      throw new CalderaError('E_VALUE', 'bindNormed: the pending rotation must accumulate into step.x');
    const normed = ctx.kernels.rotateNorm(pending, { weight: norm.weight, eps: norm.eps, out: norm.scratch });
    return {
      dispatches: [...normed, ...bindLayers(ctx, norm.scratch, layers, rest)],
      residual: x,
      pending: null,
    };
  }
  return {
    dispatches: [
      ...(pending ? ctx.kernels.rotate(pending) : []),
      ...bindLayers(ctx, { x, compute: { kind: 'rmsNorm', ...norm } }, layers, rest),
    ],
    residual: x,
    pending: null,
  };
}

/** Split layers into runs of consecutive members of one group (CALDERA or dense); other layers are runs of one. */
function runsOf(
  layers: readonly { layer: GpuLinear; out: GPUBuffer }[],
): { layers: GpuLinear[]; outs: GPUBuffer[] }[] {
  const place = (l: GpuLinear): { group: object; index: number } | null =>
    l instanceof GpuCalderaLinear
      ? { group: l.group, index: l.index }
      : l instanceof GpuDenseLinear && l.member
        ? { group: l.member.group, index: l.member.index }
        : null;
  const runs: { layers: GpuLinear[]; outs: GPUBuffer[] }[] = [];
  let prev: { group: object; index: number } | null = null;
  for (const { layer, out } of layers) {
    const at = place(layer);
    const last = runs[runs.length - 1];
    if (last && at && prev && at.group === prev.group && at.index === prev.index + 1) {
      last.layers.push(layer);
      last.outs.push(out);
    } else runs.push({ layers: [layer], outs: [out] });
    prev = at;
  }
  return runs;
}

/**
 * Create the shared context buffers for layers with the given scratch needs (per row), for batches of up to `rows`
 * activation vectors. When one cannot be created (`E_DEVICE`: too large for the device), those created before it are
 * destroyed before the error is rethrown.
 */
export function createLinearContext(
  dev: CalderaDevice,
  kernels: Kernels,
  needs: ScratchNeeds,
  rows = 1,
): LinearContext & {
  dispose(): void;
} {
  // every buffer created below, in order, so that a failure part way destroys those before it
  const made: GPUBuffer[] = [];
  const keep = (b: GPUBuffer) => (made.push(b), b);
  const f = (n: number, label: string, fill = 0) =>
    keep(storageBuffer(dev, new Float32Array(Math.max(4, n)).fill(fill), label));
  const scratch = (n: number, label: string) => f(n * rows, label);
  const tables = new Map<string, { buffer: GPUBuffer; offsets: number[] }>();
  const pairs = e8pSourcePairs();
  const e81b = e81bCodebook();
  let buffers;
  try {
    buffers = {
      rotIn: scratch(needs.rotIn, 'rotIn'),
      rotOut: scratch(needs.rotOut, 'rotOut'),
      rotTmp: scratch(needs.ones, 'rotTmp'),
      z: scratch(needs.z, 'z'),
      ones: f(needs.ones, 'ones', 1),
      dummy: f(4, 'dummy'),
      sources: keep(storageBuffer(dev, pairs, 'e8p sources')),
      e81b: keep(storageBuffer(dev, e81b, 'e81b codebook')),
      tables: keep(uniformWords(dev, e8pTablesUniform(pairs, e81b), 'e8p tables')),
    };
  } catch (e) {
    for (const b of made) b.destroy();
    throw e;
  }
  const ctx = {
    dev,
    kernels,
    ...buffers,
    hkTable(Ks: readonly number[]): { buffer: GPUBuffer; offsets: number[] } {
      const key = Ks.join(',');
      let t = tables.get(key);
      if (!t) {
        const offsets: number[] = [];
        let at = 0;
        for (const K of Ks) {
          offsets.push(at);
          at += K * K;
        }
        const all = new Float32Array(at);
        Ks.forEach((K, i) => all.set(hadamardBase(K), offsets[i]));
        t = { buffer: storageBuffer(dev, all, `H_{${key}}`), offsets };
        tables.set(key, t);
      }
      return t;
    },
    hk(K: number): GPUBuffer {
      return ctx.hkTable([K]).buffer;
    },
    dispose() {
      for (const b of [
        ctx.rotIn,
        ctx.rotOut,
        ctx.rotTmp,
        ctx.z,
        ctx.ones,
        ctx.dummy,
        ctx.sources,
        ctx.e81b,
        ctx.tables,
        ...[...tables.values()].map((t) => t.buffer),
      ])
        b.destroy();
    },
  };
  return ctx;
}
