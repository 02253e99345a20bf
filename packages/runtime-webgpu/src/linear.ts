import { CalderaError } from '@caldera/core';
import { hadamardBase, hadamardFactor } from '@caldera/linalg';
import { latticeDecode, type Decomposition, type LatticeCodes } from '@caldera/lowrank';
import { e81bCodebook, e8pSources, RVQ3_RESID_SCALE, RVQ4_RESID_SCALE } from '@caldera/quant';
import { checkFits, storageBuffer, type CalderaDevice } from './device.js';
import type { Dispatch, GpuMatrix, Kernels, LatticeCodec } from './kernels/index.js';

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

/**
 * A CALDERA layer on the GPU, never materialising W (docs/architecture.md, "Decomposition.apply"):
 * 1. `x' = (x ⊙ SU)·M_n` (zero-padded to np): {@link Kernels.hadamard};
 * 2. `z = x'·R̂ᵀ`: {@link Kernels.e8pMatvec} on R̂'s codes (k × np);
 * 3. `y' = Q̂·x' + L̂·z`: {@link Kernels.e8pMatvec}, decoding the E8P codes of Q̂ and L̂ on the fly;
 * 4. dense factors only (f16 `L_dense`/`R_dense`, the LoRA pair `L_ft`/`R_ft` of a fine-tuned checkpoint):
 *    `y' += L_d·(R_d·x')`, two f32 {@link Kernels.matvec}s;
 * 5. `y = g·(y'·M_mᵀ ⊙ SV) (+ bias)`, first m outputs: {@link Kernels.hadamard} with the transpose.
 *
 * Quantized weights stay packed on the GPU: Q̂'s codes (u16, two per u32: 2 bits per weight; RVQ4 adds a second
 * plane, RVQ3 a u8 plane) and L̂'s and R̂'s codes (4 bits per value with the default RVQ4). Dense factors, which the
 * checkpoint stores unquantized, are uploaded as f32 `[mp, k_d]` and `[k_d, np]`, the LoRA pair appended as
 * further components. SU and SV are multipliers (±1, or continuous after `caldera finetune --signs`).
 */
export class GpuCalderaLinear implements GpuLinear {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly gpuBytes: number;
  readonly bitsPerWeight: number;
  readonly needs: ScratchNeeds;
  private readonly codes: GPUBuffer;
  private readonly codes2: GPUBuffer | null;
  /** L̂ and R̂ as codes (both factors lattice-coded, rank > 0). */
  private readonly packed: {
    k: number;
    r: GPUBuffer;
    r2: GPUBuffer | null;
    rCodec: LatticeCodec;
    rResScale: number;
    rScale: number;
    l: GPUBuffer;
    lPlane2Word: number;
    lCodec: LatticeCodec;
    lResScale: number;
    lScale: number;
  } | null;
  /** Dense factors and the LoRA pair, f32: L `[mp, k_d]`, R `[k_d, np]`. */
  private readonly dense: { l: GpuMatrix; r: GpuMatrix } | null;
  private readonly su: GPUBuffer | null;
  private readonly sv: GPUBuffer | null;
  private readonly bias: GPUBuffer | null;
  private readonly bufs: GPUBuffer[];
  private readonly K: { n: number; m: number };

  constructor(
    dev: CalderaDevice,
    readonly d: Decomposition,
    bias: Float32Array | null,
    label: string,
  ) {
    [this.outFeatures, this.inFeatures] = d.shape;
    const [mp, np] = d.padded;
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
    const kq = d.rank;
    const ft = d.ft && d.ft.rank > 0 ? d.ft : null;
    const kf = ft?.rank ?? 0;
    if (ft && (ft.l.length !== mp * kf || ft.r.length !== kf * np))
      throw new CalderaError(
        'E_SHAPE',
        `${label}: LoRA factors hold ${ft.l.length} and ${ft.r.length} values, expected ${mp}·${kf} and ${kf}·${np}`,
      );
    const lattice =
      kq > 0 && d.l.kind === 'lattice' && d.r.kind === 'lattice' ? { l: d.l.codes, r: d.r.codes } : null;
    if (lattice) {
      if (mp % 8 !== 0)
        throw new CalderaError('E_SHAPE', `${label}: padded output height ${mp} is not a multiple of 8`);
      const l = packCodePlanes(lattice.l);
      const lc = gpuCodecOf(lattice.l);
      const rc = gpuCodecOf(lattice.r);
      this.packed = {
        k: kq,
        r: up(lattice.r.planes[0]!, 'R'),
        r2: lattice.r.bits === 2 ? null : up(lattice.r.planes[1]!, 'R_resid'),
        rCodec: rc.codec,
        rResScale: rc.resScale,
        rScale: lattice.r.scale,
        l: up(l.bytes, 'L'),
        lPlane2Word: l.plane2Word,
        lCodec: lc.codec,
        lResScale: lc.resScale,
        lScale: lattice.l.scale,
      };
    } else this.packed = null;
    // dense components: unquantized factors (when not lattice-coded) followed by the LoRA pair
    const kd = (lattice ? 0 : kq) + kf;
    if (kd > 0) {
      const kdq = kd - kf;
      const fv = (f: Decomposition['l']) => (f.kind === 'dense' ? f.values : latticeDecode(f.codes));
      const lt = kdq > 0 ? fv(d.l) : new Float32Array(0); // kdq × mp
      const lr = new Float32Array(mp * kd);
      for (let t = 0; t < kdq; t++) for (let i = 0; i < mp; i++) lr[i * kd + t] = lt[t * mp + i]!;
      if (ft) for (let i = 0; i < mp; i++) lr.set(ft.l.subarray(i * kf, i * kf + kf), i * kd + kdq);
      const rv = new Float32Array(kd * np);
      if (kdq > 0) rv.set(fv(d.r).subarray(0, kdq * np));
      if (ft) rv.set(ft.r, kdq * np);
      this.dense = {
        l: { buffer: up(lr, 'L_dense'), rows: mp, cols: kd, f16: false, rowWords: kd },
        r: { buffer: up(rv, 'R_dense'), rows: kd, cols: np, f16: false, rowWords: np },
      };
    } else this.dense = null;
    this.su = d.su ? up(d.su, 'SU') : null;
    this.sv = d.sv ? up(d.sv, 'SV') : null;
    this.bias = bias ? up(bias, 'bias') : null;
    this.bufs = bufs;
    this.gpuBytes = bufs.reduce((s, b) => s + b.size, 0);
    this.bitsPerWeight = d.bitsPerWeight;
    this.needs = {
      rotIn: np,
      rotOut: mp,
      z: Math.max(this.packed?.k ?? 0, kd),
      ones: Math.max(mp, np),
    };
  }

  bind(ctx: LinearContext, x: GPUBuffer, out: GPUBuffer, accumulate: boolean, tile = 1): Dispatch[] {
    const d = this.d;
    const [m, n] = d.shape;
    const [mp, np] = d.padded;
    const K = ctx.kernels;
    const q = gpuCodecOf(d.q);
    const pk = this.packed;
    const e81b = q.codec === 'rvq3' || pk?.lCodec === 'rvq3' ? ctx.e81b : null;
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
    if (pk)
      list.push(
        K.e8pMatvec({
          codes: pk.r,
          codes2: pk.r2,
          codec: pk.rCodec,
          e81b: pk.rCodec === 'rvq3' ? ctx.e81b : null,
          sources: ctx.sources,
          x: ctx.rotIn,
          out: ctx.z,
          mp: pk.k,
          np,
          qscale: pk.rScale,
          resScale: pk.rResScale,
          tile,
        }),
      );
    list.push(
      K.e8pMatvec({
        codes: this.codes,
        codes2: this.codes2,
        codec: q.codec,
        e81b,
        sources: ctx.sources,
        x: ctx.rotIn,
        out: ctx.rotOut,
        mp,
        np,
        qscale: d.q.scale,
        resScale: q.resScale,
        ...(pk
          ? {
              lowRank: {
                codec: pk.lCodec,
                codes: pk.l,
                plane2Word: pk.lPlane2Word,
                k: pk.k,
                scale: pk.lScale,
                resScale: pk.lResScale,
                z: ctx.z,
              },
            }
          : {}),
        tile,
      }),
    );
    if (this.dense) {
      // z is free again: the fused kernel above has consumed it (dispatches of a pass run in order)
      const opts = { bias: null, dummy: ctx.dummy, tile };
      list.push(K.matvec(this.dense.r, ctx.rotIn, ctx.z, { ...opts, accumulate: false }));
      list.push(K.matvec(this.dense.l, ctx.z, ctx.rotOut, { ...opts, accumulate: true }));
    }
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
    for (const b of this.bufs) b.destroy();
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
