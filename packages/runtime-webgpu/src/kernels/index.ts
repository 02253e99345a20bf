import { CalderaError } from '@caldera/core';
import { uniformBuffer, type CalderaDevice, type UniformField } from '../device.js';
import {
  ARGMAX_WGSL,
  ATTENTION_WGSL,
  e8pBindings,
  e8pMatvecWgsl,
  embedWgsl,
  HADAMARD_GLOBAL_WGSL,
  hadamardWgsl,
  KV_STORE_WGSL,
  matvecWgsl,
  RMSNORM_WGSL,
  ROPE_WGSL,
  rowsPerWorkgroup,
  SWIGLU_WGSL,
  WG,
  type Lanes,
  type LatticeCodec,
} from './wgsl.js';

export * from './wgsl.js';

/** One recorded kernel launch: replayed into a compute pass as often as needed. */
export interface Dispatch {
  readonly label: string;
  readonly pipeline: GPUComputePipeline;
  readonly bindGroup: GPUBindGroup;
  readonly workgroups: number;
  /** Runs once per row of a batch (`rows` workgroups along y); false for a launch that runs once (argmax). */
  readonly batched: boolean;
  /** Activation rows per workgroup along y (row-tiled matrix kernels; 1 otherwise): `⌈rows / rowTile⌉` along y. */
  readonly rowTile: number;
}

/** A dense weight matrix on the GPU: f32 rows, or f16 rows packed two halves per u32 (`rowWords` words a row). */
export interface GpuMatrix {
  buffer: GPUBuffer;
  rows: number;
  cols: number;
  f16: boolean;
  rowWords: number;
}

/**
 * Record `dispatches` into one compute pass of `encoder`, for a batch of `rows` activation vectors (default 1; the
 * buffers must hold that many rows, see the kernels' batch convention in wgsl.ts).
 */
export function encodeDispatches(
  encoder: GPUCommandEncoder,
  dispatches: readonly Dispatch[],
  rows = 1,
): void {
  if (!Number.isInteger(rows) || rows < 1 || rows > MAX_GROUPS)
    throw new CalderaError(
      'E_VALUE',
      `encodeDispatches: rows must be an integer in [1, ${MAX_GROUPS}], got ${rows}`,
    );
  const pass = encoder.beginComputePass();
  for (const d of dispatches) {
    pass.setPipeline(d.pipeline);
    pass.setBindGroup(0, d.bindGroup);
    pass.dispatchWorkgroups(d.workgroups, d.batched ? Math.ceil(rows / d.rowTile) : 1);
  }
  pass.end();
}

const MAX_GROUPS = 65535;

/**
 * Builds kernel launches on one device. Pipelines are compiled once per kernel variant and cached in this object
 * (not globally); the uniform buffers it creates are released by {@link Kernels.dispose}.
 */
export class Kernels {
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private readonly owned: GPUBuffer[] = [];
  /** Threads per output row of the matrix–vector kernels (default: 1 on CPU fallback adapters, else 32). */
  readonly lanes: Lanes;
  /** Largest rotation run in one workgroup (larger ones take the multi-pass global-memory path). */
  readonly maxLocalHadamard: number;
  constructor(
    readonly dev: CalderaDevice,
    options: { lanes?: Lanes; maxLocalHadamard?: number } = {},
  ) {
    this.lanes = options.lanes ?? (dev.fallbackAdapter ? 1 : 32);
    this.maxLocalHadamard = Math.min(
      options.maxLocalHadamard ?? Infinity,
      Math.floor(dev.maxWorkgroupStorage / 4),
    );
  }

  private pipeline(key: string, code: () => string): GPUComputePipeline {
    let p = this.pipelines.get(key);
    if (!p) {
      const module = this.dev.device.createShaderModule({ label: key, code: code() });
      p = this.dev.device.createComputePipeline({
        label: key,
        layout: 'auto',
        compute: { module, entryPoint: 'main' },
      });
      this.pipelines.set(key, p);
    }
    return p;
  }

  private uniform(fields: UniformField[], label: string): GPUBuffer {
    const b = uniformBuffer(this.dev, fields, label);
    this.owned.push(b);
    return b;
  }

  private make(
    label: string,
    pipeline: GPUComputePipeline,
    buffers: GPUBuffer[],
    workgroups: number,
    batched = true,
    rowTile = 1,
  ): Dispatch {
    if (workgroups > MAX_GROUPS)
      throw new CalderaError('E_DEVICE', `${label}: ${workgroups} workgroups exceed the limit ${MAX_GROUPS}`);
    const bindGroup = this.dev.device.createBindGroup({
      label,
      layout: pipeline.getBindGroupLayout(0),
      entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })),
    });
    return { label, pipeline, bindGroup, workgroups: Math.max(1, workgroups), batched, rowTile };
  }

  /** Row r of `out` (`d` values) = `table[tokens[r]]`; `tokens` is a u32 storage buffer. */
  embed(tokens: GPUBuffer, table: GpuMatrix, out: GPUBuffer): Dispatch {
    const p = this.pipeline(`embed_${table.f16 ? 'f16' : 'f32'}`, () => embedWgsl(table.f16));
    const u = this.uniform(
      [
        ['u32', table.cols],
        ['u32', table.rowWords],
      ],
      'embed params',
    );
    return this.make('embed', p, [tokens, u, table.buffer, out], Math.ceil(table.cols / WG));
  }

  /** `out = rmsnorm(x) ⊙ w` over `n` values. */
  rmsNorm(x: GPUBuffer, w: GPUBuffer, out: GPUBuffer, n: number, eps: number): Dispatch {
    const p = this.pipeline('rmsnorm', () => RMSNORM_WGSL);
    const u = this.uniform(
      [
        ['u32', n],
        ['f32', eps],
      ],
      'rmsnorm params',
    );
    return this.make('rmsnorm', p, [u, x, w, out], 1);
  }

  /**
   * `out (+)= W·x (+ bias)` per activation row; `bias` null = none. `dummy` is any small storage buffer for absent
   * bindings. `tile` > 1: each weight read serves `tile` rows (prefill; buffers must hold `⌈rows/tile⌉·tile` rows).
   */
  matvec(
    w: GpuMatrix,
    x: GPUBuffer,
    out: GPUBuffer,
    o: { bias: GPUBuffer | null; accumulate: boolean; dummy: GPUBuffer; tile?: number },
  ): Dispatch {
    const tile = o.tile ?? 1;
    const p = this.pipeline(`matvec_${w.f16 ? 'f16' : 'f32'}_${this.lanes}_${tile}`, () =>
      matvecWgsl(w.f16, this.lanes, tile),
    );
    const u = this.uniform(
      [
        ['u32', w.rows],
        ['u32', w.cols],
        ['u32', w.rowWords],
        ['u32', o.accumulate ? 1 : 0],
        ['u32', o.bias ? 1 : 0],
      ],
      'matvec params',
    );
    return this.make(
      `matvec ${w.rows}x${w.cols}${w.f16 ? ' f16' : ''}`,
      p,
      [u, w.buffer, x, o.bias ?? o.dummy, out],
      Math.ceil(w.rows / rowsPerWorkgroup(this.lanes)),
      true,
      tile,
    );
  }

  /**
   * The sign/rotation/padding step of a CALDERA layer (see {@link hadamardWgsl}): reads `nIn` values of `x`,
   * transforms `n` (K·P) values, writes `outLen`. `hk` is the ±1 `H_K` (f32, K×K). One launch when the vector fits
   * workgroup memory ({@link Kernels.maxLocalHadamard}), else `2 + log2(P)` launches over `tmp` (≥ n values).
   */
  hadamard(o: {
    x: GPUBuffer;
    out: GPUBuffer;
    pre: GPUBuffer;
    post: GPUBuffer;
    bias: GPUBuffer | null;
    hk: GPUBuffer;
    tmp: GPUBuffer;
    dummy: GPUBuffer;
    n: number;
    nIn: number;
    outLen: number;
    K: number;
    transform: boolean;
    transpose: boolean;
    accumulate: boolean;
    gscale: number;
  }): Dispatch[] {
    const P = o.n / o.K;
    const fields = (h: number): UniformField[] => [
      ['u32', o.n],
      ['u32', o.nIn],
      ['u32', o.outLen],
      ['u32', o.K],
      ['u32', P],
      ['u32', o.transform ? 1 : 0],
      ['u32', o.transpose ? 1 : 0],
      ['u32', o.accumulate ? 1 : 0],
      ['u32', o.bias ? 1 : 0],
      ['f32', 1 / Math.sqrt(o.n)],
      ['f32', o.gscale],
      ['u32', h],
    ];
    const label = `hadamard n=${o.n} K=${o.K}${o.transpose ? ' T' : ''}`;
    if (o.n <= this.maxLocalHadamard) {
      // one pipeline per power-of-two bucket of the workgroup array size
      const bucket = Math.min(Math.max(256, 2 ** Math.ceil(Math.log2(o.n))), this.maxLocalHadamard);
      const p = this.pipeline(`hadamard_${bucket}`, () => hadamardWgsl(bucket));
      const u = this.uniform(fields(0), 'hadamard params');
      return [this.make(label, p, [u, o.x, o.pre, o.post, o.bias ?? o.dummy, o.hk, o.out], 1)];
    }
    if (o.tmp.size < o.n * 4)
      throw new CalderaError('E_SHAPE', `${label}: scratch of ${o.tmp.size} bytes, needs ${o.n * 4}`);
    const G = HADAMARD_GLOBAL_WGSL;
    const u0 = this.uniform(fields(0), 'hadamard params');
    const list = [
      this.make(
        `${label} load`,
        this.pipeline('had_load', () => G.load),
        [u0, o.x, o.pre, o.tmp],
        Math.ceil(o.n / WG),
      ),
    ];
    if (o.transform)
      for (let h = 1; h < P; h *= 2)
        list.push(
          this.make(
            `${label} stage ${h}`,
            this.pipeline('had_stage', () => G.stage),
            [this.uniform(fields(h), 'hadamard stage'), o.tmp],
            Math.ceil(o.n / 2 / WG),
          ),
        );
    list.push(
      this.make(
        `${label} mix`,
        this.pipeline('had_mix', () => G.mix),
        [u0, o.tmp, o.post, o.bias ?? o.dummy, o.hk, o.out],
        Math.ceil(o.outLen / WG),
      ),
    );
    return list;
  }

  /**
   * Fused E8P12/RVQ matvec, with the packed low-rank term `L̂·z` when `lowRank` is given (see {@link e8pMatvecWgsl});
   * without one it also computes `z = R̂·x` from R̂'s codes.
   */
  e8pMatvec(o: {
    codes: GPUBuffer;
    /** Second plane: E8P12 u16 codes (`codec` 'rvq4') or E81B u8 codes ('rvq3'); null for 'e8p12'. */
    codes2: GPUBuffer | null;
    codec: LatticeCodec;
    /** The E81B codebook (256×8 f32), for a 'rvq3' plane of Q or L̂. */
    e81b: GPUBuffer | null;
    sources: GPUBuffer;
    x: GPUBuffer;
    out: GPUBuffer;
    mp: number;
    np: number;
    qscale: number;
    /** Divisor of Q's second plane (`RVQ4_RESID_SCALE` or `RVQ3_RESID_SCALE`); unused for 'e8p12'. */
    resScale: number;
    /** L̂ packed (`k` components), and `z` with `k` values per activation row; absent: no low-rank term. */
    lowRank?: {
      codec: LatticeCodec;
      /** Plane 1 (u16 codes of L̂ᵀ, `[k, mp/8]`) from word 0, plane 2 from word `plane2Word`. */
      codes: GPUBuffer;
      plane2Word: number;
      k: number;
      scale: number;
      resScale: number;
      z: GPUBuffer;
    };
    /** Activation rows per invocation (see {@link Kernels.matvec}); default 1. */
    tile?: number;
  }): Dispatch {
    if ((o.codec === 'e8p12') !== (o.codes2 === null))
      throw new CalderaError(
        'E_VALUE',
        `e8pMatvec: codec ${o.codec} needs ${o.codec === 'e8p12' ? 'no' : 'a'} second plane`,
      );
    const lr = o.lowRank ?? null;
    if ((o.codec === 'rvq3' || lr?.codec === 'rvq3') !== (o.e81b !== null))
      throw new CalderaError('E_VALUE', 'e8pMatvec: the E81B table is needed exactly when a plane is rvq3');
    if (lr && o.mp % 8 !== 0)
      throw new CalderaError('E_SHAPE', `e8pMatvec: packed L̂ needs mp divisible by 8, got ${o.mp}`);
    const tile = o.tile ?? 1;
    const p = this.pipeline(`e8p_matvec_${o.codec}_${lr?.codec ?? 'none'}_${this.lanes}_${tile}`, () =>
      e8pMatvecWgsl(o.codec, lr?.codec ?? null, this.lanes, tile),
    );
    const u = this.uniform(
      [
        ['u32', o.mp],
        ['u32', o.np / 8],
        ['u32', lr?.k ?? 0],
        ['u32', o.mp / 8],
        ['f32', o.qscale],
        ['f32', o.resScale],
        ['f32', lr?.scale ?? 0],
        ['f32', lr?.resScale ?? 1],
        ['u32', lr?.plane2Word ?? 0],
      ],
      'e8p params',
    );
    const named: Record<string, GPUBuffer | null> = {
      codes: o.codes,
      src: o.sources,
      x: o.x,
      outv: o.out,
      codes2: o.codes2,
      z: lr?.z ?? null,
      lcodes: lr?.codes ?? null,
      e81b: o.e81b,
    };
    const bufs = [u, ...e8pBindings(o.codec, lr?.codec ?? null).map((n) => named[n]!)];
    return this.make(
      `e8p ${o.mp}x${o.np}${lr ? ` k=${lr.k}` : ''}`,
      p,
      bufs,
      Math.ceil(o.mp / rowsPerWorkgroup(this.lanes)),
      true,
      tile,
    );
  }

  /** RoPE in place on `heads` heads of `hd` at `step.pos`. */
  rope(step: GPUBuffer, cs: GPUBuffer, x: GPUBuffer, heads: number, hd: number): Dispatch {
    const p = this.pipeline('rope', () => ROPE_WGSL);
    const u = this.uniform(
      [
        ['u32', heads],
        ['u32', hd],
      ],
      'rope params',
    );
    return this.make('rope', p, [step, u, cs, x], Math.ceil((heads * hd) / 2 / WG));
  }

  /** Rotate `k` and store `k`, `v` at row `step.pos` of the caches. */
  kvStore(
    step: GPUBuffer,
    cs: GPUBuffer,
    k: GPUBuffer,
    v: GPUBuffer,
    ck: GPUBuffer,
    cv: GPUBuffer,
    heads: number,
    hd: number,
  ): Dispatch {
    const p = this.pipeline('kv_store', () => KV_STORE_WGSL);
    const u = this.uniform(
      [
        ['u32', heads],
        ['u32', hd],
      ],
      'kv params',
    );
    return this.make('kv_store', p, [step, u, cs, k, v, ck, cv], Math.ceil((heads * hd) / 2 / WG));
  }

  /** Causal attention of each query row r over the `step.pos + r + 1` cached positions up to its own. */
  attention(o: {
    step: GPUBuffer;
    q: GPUBuffer;
    ck: GPUBuffer;
    cv: GPUBuffer;
    scores: GPUBuffer;
    out: GPUBuffer;
    heads: number;
    kvHeads: number;
    hd: number;
    capacity: number;
  }): Dispatch {
    const p = this.pipeline('attention', () => ATTENTION_WGSL);
    const u = this.uniform(
      [
        ['u32', o.heads],
        ['u32', o.heads / o.kvHeads],
        ['u32', o.hd],
        ['u32', o.kvHeads * o.hd],
        ['u32', o.capacity],
        ['f32', 1 / Math.sqrt(o.hd)],
      ],
      'attention params',
    );
    return this.make('attention', p, [o.step, u, o.q, o.ck, o.cv, o.scores, o.out], o.heads);
  }

  /** `g = silu(g)·u` over `n` values. */
  swiglu(g: GPUBuffer, u: GPUBuffer, n: number): Dispatch {
    const p = this.pipeline('swiglu', () => SWIGLU_WGSL);
    const un = this.uniform([['u32', n]], 'swiglu params');
    return this.make('swiglu', p, [un, g, u], Math.ceil(n / WG));
  }

  /**
   * `out[0] = argmax` (u32) of the last row of `x` (rows of `n`): row `step.len − step.pos − 1`, or row 0 without
   * `step`. Not batched: one launch whatever the row count.
   */
  argmax(x: GPUBuffer, out: GPUBuffer, n: number, step?: GPUBuffer): Dispatch {
    const p = this.pipeline('argmax', () => ARGMAX_WGSL);
    const u = this.uniform([['u32', n]], 'argmax params');
    const s =
      step ??
      this.uniform(
        [
          ['u32', 0],
          ['u32', 1],
        ],
        'argmax row 0',
      );
    return this.make('argmax', p, [s, u, x, out], 1, false);
  }

  /** Release the uniform buffers created so far. */
  dispose(): void {
    for (const b of this.owned) b.destroy();
    this.owned.length = 0;
    this.pipelines.clear();
  }
}
