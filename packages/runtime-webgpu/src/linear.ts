import { CalderaError } from '@caldera/core';
import { hadamardBase, hadamardFactor } from '@caldera/linalg';
import { latticeDecode, type Decomposition } from '@caldera/lowrank';
import { e81bCodebook, e8pSources, RVQ3_RESID_SCALE, RVQ4_RESID_SCALE } from '@caldera/quant';
import { checkFits, storageBuffer, type CalderaDevice } from './device.js';
import type { Dispatch, GpuMatrix, Kernels } from './kernels/index.js';

/** Upload a dense `[rows, cols]` matrix: f32 as is, or f16 bits packed two per u32 (rows padded to even length). */
export function uploadMatrix(
  dev: CalderaDevice,
  data: Float32Array | Uint16Array,
  rows: number,
  cols: number,
  label: string,
): GpuMatrix {
  if (data.length !== rows * cols)
    throw new CalderaError('E_SHAPE', `${label}: ${data.length} values, expected ${rows}·${cols}`);
  if (data instanceof Float32Array)
    return { buffer: storageBuffer(dev, data, label), rows, cols, f16: false, rowWords: cols };
  const rowWords = Math.ceil(cols / 2);
  checkFits(dev, rows * rowWords * 4, label);
  let packed: Uint16Array = data;
  if (cols % 2 === 1) {
    packed = new Uint16Array(rows * rowWords * 2);
    for (let i = 0; i < rows; i++) packed.set(data.subarray(i * cols, i * cols + cols), i * rowWords * 2);
  }
  return { buffer: storageBuffer(dev, packed, label), rows, cols, f16: true, rowWords };
}

/** The E8P12 source table for the GPU: 256×8 magnitudes, coordinate 7 negated for sources of odd coordinate sum. */
export function e8pSourceTable(): Float32Array {
  const src = e8pSources().slice();
  for (let a = 0; a < 256; a++) {
    let s = 0;
    for (let i = 0; i < 8; i++) s += src[a * 8 + i]!;
    if (Math.round(s) % 2 === 1) src[a * 8 + 7] = -src[a * 8 + 7]!;
  }
  return src;
}

/** Buffers shared by all layers of a model: scratch vectors for the rotated domain and constant tables. */
export interface LinearContext {
  dev: CalderaDevice;
  kernels: Kernels;
  /** Rotated input, rotated output and low-rank scratch, each as long as the largest layer needs times the rows. */
  rotIn: GPUBuffer;
  rotOut: GPUBuffer;
  /** Scratch of the multi-pass rotation (as long as `ones` times the rows). */
  rotTmp: GPUBuffer;
  z: GPUBuffer;
  /** All ones, at least as long as any padded dimension. */
  ones: GPUBuffer;
  dummy: GPUBuffer;
  sources: GPUBuffer;
  /** The E81B codebook (256×8 f32) of the 3-bit RVQ residual. */
  e81b: GPUBuffer;
  /** `H_K` (f32, ±1) by K, created on demand. */
  hk(K: number): GPUBuffer;
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

/** A dense (f32 or packed f16) layer. */
export class GpuDenseLinear implements GpuLinear {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly gpuBytes: number;
  readonly bitsPerWeight: number;
  constructor(
    readonly w: GpuMatrix,
    readonly bias: GPUBuffer | null,
  ) {
    this.inFeatures = w.cols;
    this.outFeatures = w.rows;
    this.gpuBytes = w.buffer.size + (bias?.size ?? 0);
    this.bitsPerWeight = w.f16 ? 16 : 32;
  }

  bind(ctx: LinearContext, x: GPUBuffer, out: GPUBuffer, accumulate: boolean, tile = 1): Dispatch[] {
    return [ctx.kernels.matvec(this.w, x, out, { bias: this.bias, accumulate, dummy: ctx.dummy, tile })];
  }

  dispose(): void {
    this.w.buffer.destroy();
    this.bias?.destroy();
  }
}

/** Scratch sizes (in f32 values) a CALDERA layer needs from the {@link LinearContext}. */
export interface ScratchNeeds {
  rotIn: number;
  rotOut: number;
  z: number;
  ones: number;
}

/** Total rank of the low-rank term: the quantized components plus the LoRA pair (`d.ft`), when there is one. */
function lowRank(d: Decomposition): number {
  return d.rank + (d.ft?.rank ?? 0);
}

/**
 * A CALDERA layer on the GPU, never materialising W (docs/architecture.md, "Decomposition.apply"):
 * 1. `x' = (x ⊙ SU)·M_n` (zero-padded to np): {@link Kernels.hadamard};
 * 2. `z = x'·R̂ᵀ`: dense f32 matvec (k × np);
 * 3. `y' = Q̂·x' + L̂·z`: {@link Kernels.e8pMatvec}, decoding the E8P codes on the fly;
 * 4. `y = g·(y'·M_mᵀ ⊙ SV) (+ bias)`, first m outputs: {@link Kernels.hadamard} with the transpose.
 *
 * Q's codes stay packed on the GPU (u16, two per u32: 2 bits per weight; RVQ4 adds a second plane). L̂ and R̂ are
 * decoded to f32 on the CPU before upload (they hold k·(m+n) values, small next to m·n), with the LoRA pair of a
 * fine-tuned checkpoint (`L_ft`, `R_ft`) appended as further rank components, so that step 2–3 compute
 * `(x'·R̂ᵀ)·L̂ᵀ + (x'·R_ftᵀ)·L_ftᵀ` in one pass. SU and SV are multipliers (±1, or continuous after `caldera finetune
 * --signs`). Q codecs: E8P12, RVQ4 (two u16 planes) and RVQ3 (u16 + u8 E81B plane).
 */
export class GpuCalderaLinear implements GpuLinear {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly gpuBytes: number;
  readonly bitsPerWeight: number;
  readonly needs: ScratchNeeds;
  private readonly codes: GPUBuffer;
  private readonly codes2: GPUBuffer | null;
  private readonly r: GpuMatrix | null;
  private readonly l: GPUBuffer | null;
  private readonly su: GPUBuffer | null;
  private readonly sv: GPUBuffer | null;
  private readonly bias: GPUBuffer | null;
  private readonly K: { n: number; m: number };

  constructor(
    dev: CalderaDevice,
    readonly d: Decomposition,
    bias: Float32Array | null,
    label: string,
  ) {
    [this.outFeatures, this.inFeatures] = d.shape;
    const [mp, np] = d.padded;
    const k = lowRank(d);
    if (np % 8 !== 0)
      throw new CalderaError('E_SHAPE', `${label}: padded input width ${np} is not a multiple of 8`);
    if (d.hadamard) {
      const fn = hadamardFactor(np);
      const fm = hadamardFactor(mp);
      if (!fn || !fm)
        throw new CalderaError('E_UNSUPPORTED', `${label}: no Hadamard transform of size ${np} or ${mp}`);
      this.K = { n: fn.K, m: fm.K };
    } else this.K = { n: 1, m: 1 };
    const bufs: GPUBuffer[] = [];
    const up = (a: ArrayBufferView, what: string) => {
      const b = storageBuffer(dev, a, `${label}.${what}`);
      bufs.push(b);
      return b;
    };
    this.codes = up(d.q.planes[0]!, 'Q');
    this.codes2 = d.q.bits === 2 ? null : up(d.q.planes[1]!, 'Q_resid');
    if (k > 0) {
      // the quantized components (decoded) and the LoRA pair, concatenated along the rank: L̂ [mp, kq + kf], R̂ [kq + kf, np]
      const kq = d.rank;
      const ft = d.ft && d.ft.rank > 0 ? d.ft : null;
      const kf = ft?.rank ?? 0;
      if (ft && (ft.l.length !== mp * kf || ft.r.length !== kf * np))
        throw new CalderaError(
          'E_SHAPE',
          `${label}: LoRA factors hold ${ft.l.length} and ${ft.r.length} values, expected ${mp}·${kf} and ${kf}·${np}`,
        );
      const fv = (f: Decomposition['l']) => (f.kind === 'dense' ? f.values : latticeDecode(f.codes));
      const lt = kq > 0 ? fv(d.l) : new Float32Array(0); // kq × mp
      const lr = new Float32Array(mp * k);
      for (let t = 0; t < kq; t++) for (let i = 0; i < mp; i++) lr[i * k + t] = lt[t * mp + i]!;
      if (ft) for (let i = 0; i < mp; i++) lr.set(ft.l.subarray(i * kf, i * kf + kf), i * k + kq);
      this.l = up(lr, 'L');
      const rv = new Float32Array(k * np);
      if (kq > 0) rv.set(fv(d.r).subarray(0, kq * np));
      if (ft) rv.set(ft.r, kq * np);
      this.r = { buffer: up(rv, 'R'), rows: k, cols: np, f16: false, rowWords: np };
    } else {
      this.l = null;
      this.r = null;
    }
    this.su = d.su ? up(d.su, 'SU') : null;
    this.sv = d.sv ? up(d.sv, 'SV') : null;
    this.bias = bias ? up(bias, 'bias') : null;
    this.gpuBytes = bufs.reduce((s, b) => s + b.size, 0);
    this.bitsPerWeight = d.bitsPerWeight;
    this.needs = { rotIn: np, rotOut: mp, z: k, ones: Math.max(mp, np) };
  }

  bind(ctx: LinearContext, x: GPUBuffer, out: GPUBuffer, accumulate: boolean, tile = 1): Dispatch[] {
    const d = this.d;
    const [m, n] = d.shape;
    const [mp, np] = d.padded;
    const k = lowRank(d);
    const K = ctx.kernels;
    const list: Dispatch[] = [
      ...K.hadamard({
        x,
        out: ctx.rotIn,
        pre: this.su ?? ctx.ones,
        post: ctx.ones,
        bias: null,
        hk: ctx.hk(this.K.n),
        tmp: ctx.rotTmp,
        dummy: ctx.dummy,
        n: np,
        nIn: n,
        outLen: np,
        K: this.K.n,
        transform: d.hadamard,
        transpose: false,
        accumulate: false,
        gscale: 1,
      }),
    ];
    if (this.r)
      list.push(
        K.matvec(this.r, ctx.rotIn, ctx.z, { bias: null, accumulate: false, dummy: ctx.dummy, tile }),
      );
    list.push(
      K.e8pMatvec({
        codes: this.codes,
        codes2: this.codes2,
        codec: d.q.bits === 2 ? 'e8p12' : d.q.bits === 4 ? 'rvq4' : 'rvq3',
        e81b: d.q.bits === 3 ? ctx.e81b : null,
        sources: ctx.sources,
        x: ctx.rotIn,
        z: k > 0 ? ctx.z : ctx.dummy,
        l: this.l ?? ctx.dummy,
        out: ctx.rotOut,
        mp,
        np,
        k,
        qscale: d.q.scale,
        resScale: d.q.bits === 3 ? RVQ3_RESID_SCALE : RVQ4_RESID_SCALE,
        tile,
      }),
    );
    list.push(
      ...K.hadamard({
        x: ctx.rotOut,
        out,
        pre: ctx.ones,
        post: this.sv ?? ctx.ones,
        bias: this.bias,
        hk: ctx.hk(this.K.m),
        tmp: ctx.rotTmp,
        dummy: ctx.dummy,
        n: mp,
        nIn: mp,
        outLen: m,
        K: this.K.m,
        transform: d.hadamard,
        transpose: true,
        accumulate,
        gscale: d.scale,
      }),
    );
    return list;
  }

  dispose(): void {
    for (const b of [this.codes, this.codes2, this.l, this.r?.buffer, this.su, this.sv, this.bias])
      b?.destroy();
  }
}

/**
 * Create the shared context buffers for layers with the given scratch needs (per row), for batches of up to `rows`
 * activation vectors.
 */
export function createLinearContext(
  dev: CalderaDevice,
  kernels: Kernels,
  needs: ScratchNeeds,
  rows = 1,
): LinearContext & {
  dispose(): void;
} {
  const f = (n: number, label: string, fill = 0) =>
    storageBuffer(dev, new Float32Array(Math.max(4, n)).fill(fill), label);
  const scratch = (n: number, label: string) => f(n * rows, label);
  const hks = new Map<number, GPUBuffer>();
  const ctx = {
    dev,
    kernels,
    rotIn: scratch(needs.rotIn, 'rotIn'),
    rotOut: scratch(needs.rotOut, 'rotOut'),
    rotTmp: scratch(needs.ones, 'rotTmp'),
    z: scratch(needs.z, 'z'),
    ones: f(needs.ones, 'ones', 1),
    dummy: f(4, 'dummy'),
    sources: storageBuffer(dev, e8pSourceTable(), 'e8p sources'),
    e81b: storageBuffer(dev, e81bCodebook(), 'e81b codebook'),
    hk(K: number): GPUBuffer {
      let b = hks.get(K);
      if (!b) {
        b = storageBuffer(dev, Float32Array.from(hadamardBase(K)), `H_${K}`);
        hks.set(K, b);
      }
      return b;
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
        ...hks.values(),
      ])
        b.destroy();
    },
  };
  return ctx;
}
