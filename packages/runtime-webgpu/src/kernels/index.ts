import { CalderaError, shownValue } from '@caldera/core';
import { COMPUTE_STAGE, uniformBuffer, type CalderaDevice, type UniformField } from '../device.js';
import {
  ARGMAX_WGSL,
  NLL_WGSL,
  TOPK_GATHER_WGSL,
  topkLevelWgsl,
  attentionWgsl,
  e8pBindings,
  E8P_MAX_SEGMENTS,
  ROTATION_MAX_MEMBERS,
  ROTATION_MAX_OUTPUTS_WITH_INPUT,
  e8pF16WorkgroupBytes,
  e8pMatvecF16Wgsl,
  e8pMatvecWgsl,
  embedWgsl,
  gateSliceWgsl,
  hadamardChunkWgsl,
  normScaleWords,
  HADAMARD_MIX_WGSL,
  hadamardStrideWgsl,
  hadamardWgsl,
  mixSuffix,
  inputProjectionBindings,
  inputProjectionWgsl,
  ROWS_PER_WG,
  checkCodeBatch,
  E8P_UNROLL,
  type CodeBatch,
  matvecWgsl,
  MIX_CHUNK,
  rmsNormWgsl,
  ROPE_KV_WGSL,
  ropeKvNormWgsl,
  rotationAttentionWgsl,
  rotationNormWgsl,
  rotationRopeKvWgsl,
  rowsPerWorkgroup,
  SWIGLU_WGSL,
  UNROLLED_MIX_MAX_K,
  WG,
  type DenseDtype,
  type RowsPerLane,
  type Lanes,
  type LatticeCodec,
  type PreviousStep,
  type InputStepForm,
  type RotationInputKind,
  unrolledMixKs,
} from './wgsl.js';

export * from './wgsl.js';

/**
 * The buffers and flags of a rotation step ({@link Kernels.hadamard}, {@link Kernels.rotate}): input `x`,
 * multipliers before (`pre`) and after (`post`) the transform, the bias (null: none), `H_K`, global-memory scratch
 * `tmp`, and any small buffer `dummy` for absent bindings.
 */
export interface RotationBuffers {
  x: GPUBuffer;
  pre: GPUBuffer;
  post: GPUBuffer;
  bias: GPUBuffer | null;
  /**
   * `hadamardBase(K)` of @caldera/linalg (f32, K×K) at each member's offset: read by the global-memory path and for
   * orders above {@link UNROLLED_MIX_MAX_K}; the one-workgroup kernels write the smaller orders' signs into the shader.
   */
  hk: GPUBuffer;
  tmp: GPUBuffer;
  dummy: GPUBuffer;
  transform: boolean;
  transpose: boolean;
  accumulate: boolean;
}

/**
 * What a rotation computes from `x` as it loads it (see {@link RotationInputKind}): the RMSNorm of each row with
 * `weight` (`nIn` values), or SwiGLU with `up` (rows laid out as `x`'s).
 */
export type RotationInput =
  { kind: 'rmsNorm'; weight: GPUBuffer; eps: number } | { kind: 'swiglu'; up: GPUBuffer };

/** {@link Kernels.rotate}: rows of `xStride` values in `x`, the output buffers, and each layer's vector. */
export interface RotateOptions extends RotationBuffers {
  xStride: number;
  outs: readonly GPUBuffer[];
  members: readonly RotationMember[];
  /** Computed from `x` on the way in, by every launch that loads it; default none (`x` as it is). */
  input?: RotationInput;
}

/** The kind of a rotation's input computation, and its `aux` buffer (none: null). */
function inputOf(o: RotateOptions): { kind: RotationInputKind; aux: GPUBuffer | null; eps: number } {
  const i = o.input;
  if (!i) return { kind: 'none', aux: null, eps: 0 };
  return i.kind === 'rmsNorm'
    ? { kind: 'rmsNorm', aux: i.weight, eps: i.eps }
    : { kind: 'swiglu', aux: i.up, eps: 0 };
}

/**
 * RoPE of q and k and the KV-cache store after the q, k and v layers (see {@link Kernels.ropeKv}): the step uniform,
 * the cos/sin table, the caches and the head counts.
 */
export interface RopeKvOptions {
  step: GPUBuffer;
  cs: GPUBuffer;
  ck: GPUBuffer;
  cv: GPUBuffer;
  heads: number;
  kvHeads: number;
  hd: number;
  /**
   * Attention follows (see {@link Kernels.attention}): its score scratch, output and the cache's capacity. For a
   * CALDERA q/k/v group with one activation row, {@link Kernels.rotateRopeKv} does it in the same launch.
   */
  attention?: { scores: GPUBuffer; out: GPUBuffer; capacity: number };
  /**
   * Each head of q and k RMS-normed over its `hd` values before RoPE (Qwen3's `self_attn.q_norm`/`k_norm`): the
   * weights (`hd` f32 values each) and the epsilon. Every form applies it in its RoPE step, binding the two weights:
   * no launch more where the device allows 11 storage buffers; with fewer, the fused forms they no longer fit fall
   * back to launches apart (per decode step one more with 10 and 8 buffers, two more with 9; per prefill pass none
   * with 10 or more, one more with 9 and 8: see {@link Kernels.rotateRopeKv}, {@link Kernels.ropeKv}).
   */
  qkNorm?: { q: GPUBuffer; k: GPUBuffer; eps: number };
}

/** One layer's vector in {@link Kernels.rotate}: sizes, scale and offsets (see {@link hadamardWgsl}). */
export interface RotationMember {
  n: number;
  nIn: number;
  outLen: number;
  K: number;
  gscale: number;
  xOff: number;
  preOff: number;
  postOff: number;
  /** Offset into `bias`, or null for none. */
  biasOff: number | null;
  hkOff: number;
  outOff: number;
  outStride: number;
  /** Which of `outs` to write. */
  slot: number;
}

/** One layer's rows in a launch of {@link Kernels.e8pMatvec}. */
export interface E8pSegment {
  rows: number;
  qscale: number;
  /** Byte offset of the segment's first code in the codes buffer (default 0), and in the second plane's. */
  codeByte?: number;
  code2Byte?: number;
  /** Offset of the segment's input vector within an activation row of `x` (default 0). */
  x?: number;
  /**
   * Packed L̂ (codes of `L̂ᵀ`, `[k, rows/8]`): byte offsets of its two planes in `lowRank.codes`, its scale, and the
   * offset of its `k` inputs within a row of `z` (default: after the previous segments' ranks).
   */
  lowRank?: { k: number; scale: number; codeByte: number; code2Byte: number; z?: number };
}

/** The codes of R̂ (the layers' lattice factors) for {@link Kernels.projectInput}, and where `z = R̂·x'` goes. */
export interface ProjectionCodes {
  codec: LatticeCodec;
  codes: GPUBuffer;
  /** Second plane (see {@link Kernels.e8pMatvec}); null for 'e8p12'. */
  codes2: GPUBuffer | null;
  resScale: number;
  /** The E81B codebook buffer, for an 'rvq3' plane; else null. */
  e81b: GPUBuffer | null;
  /** The E8P source table (storage, `e8pSourcePairs()`) and the same with E81B as a uniform ({@link e8pTablesUniform}). */
  sources: GPUBuffer;
  tables: GPUBuffer;
  /** Output: every segment's `k` values back to back per activation row. */
  z: GPUBuffer;
}

/**
 * {@link Kernels.projectInput}: the input step of CALDERA layers that read the same `x` (rows of `xStride`), all of
 * width `n` (`nIn` read, the rest zero padding) and Hadamard factor `K`: `x'_w = (x ⊙ SU_w)·M_n` (or computed from
 * `x` per `input`) into `rot` (rows of `layers.length · n`, layer w's at `w·n`), and `z = R̂_w·x'_w` for the layers
 * with lattice factors (`r`: R̂'s rows, scale and code offsets; `x` is implied).
 */
export interface InputProjectionOptions {
  /** The input rows (with `gate`, only matched by identity to the gate layer's output: the step reads `gate.pending.x`). */
  x: GPUBuffer;
  xStride: number;
  input?: RotationInput;
  pre: GPUBuffer;
  hk: GPUBuffer;
  transform: boolean;
  n: number;
  nIn: number;
  K: number;
  layers: readonly { preOff: number; r: E8pSegment | null }[];
  /** Offset of H_K in `hk` (default 0). */
  hkOff?: number;
  /**
   * The layer before, whose output rotation is finished by this step (see {@link Kernels.finishesPending}): that
   * rotation (one member accumulating into `x`, the residual stream h) and the buffer that receives `h + its output`.
   * Needs `input` RMSNorm.
   */
  residual?: ResidualInput;
  /**
   * The gate and up layers before, whose output rotations this step finishes (see {@link Kernels.finishesPending}):
   * that rotation (two members, writing `x` and the SwiGLU's `up`, which are then not written). Needs `input` SwiGLU.
   */
  gate?: GateInput;
  rot: GPUBuffer;
  /** R̂'s codes; unused when no layer has lattice factors. */
  codes: ProjectionCodes | null;
  /** All ones (at least n), the global-memory rotation's scratch, any small buffer for absent bindings. */
  ones: GPUBuffer;
  tmp: GPUBuffer;
  dummy: GPUBuffer;
  /** Activation rows per invocation of R̂'s kernel (see {@link Kernels.matvec}); default 1. */
  tile?: number;
}

/**
 * A residual branch's last layer for the next input step to finish ({@link InputProjectionOptions.residual}): its
 * pending output rotation (one member, accumulating into the residual stream) and the buffer that receives the sum.
 */
export interface ResidualInput {
  pending: RotateOptions;
  out: GPUBuffer;
}

/** The gate and up layers for the next input step to finish ({@link InputProjectionOptions.gate}). */
export interface GateInput {
  pending: RotateOptions;
}

/** What `o` asks the input step to finish of the layers before it. */
function previousOf(o: InputProjectionOptions): { kind: PreviousStep; pending: RotateOptions | null } {
  if (o.residual && o.gate)
    throw new CalderaError(
      'E_VALUE',
      'projectInput: a step finishes a residual branch or gate and up, not both',
    );
  if (o.residual) return { kind: 'residual', pending: o.residual.pending };
  if (o.gate) return { kind: 'gate', pending: o.gate.pending };
  return { kind: 'none', pending: null };
}

/**
 * The gate and up members of a two-member output rotation, in that order: the one writing `gateOut`, the one writing
 * `upOut`; null when the rotation does not write both.
 */
function gateMembers(rot: RotateOptions, gateOut: GPUBuffer, upOut: GPUBuffer): RotationMember[] | null {
  const g = rot.members.find((m) => rot.outs[m.slot] === gateOut);
  const u = rot.members.find((m) => rot.outs[m.slot] === upOut);
  return g && u && g !== u ? [g, u] : null;
}

/** RoPE rotates pairs `(i, i + hd/2)`: the head size must be even. */
function checkHeadDim(hd: number): void {
  if (!Number.isInteger(hd) || hd < 2 || hd % 2 !== 0)
    throw new CalderaError('E_SHAPE', `RoPE needs an even head size, got ${hd}`);
}

/** Element index of a code at `bytes` in a plane of u16 codes, or of u8 codes for an rvq3 second plane. */
function codeIndex(bytes: number, plane2Codec: LatticeCodec | null, what: string): number {
  const size = plane2Codec === 'rvq3' ? 1 : 2;
  if (bytes % size !== 0) throw new CalderaError('E_VALUE', `e8p: ${what} byte offset ${bytes} is odd`);
  return bytes / size;
}

/** One recorded kernel launch: replayed into a compute pass as often as needed. */
export interface Dispatch {
  readonly label: string;
  /** The kernel's pipeline: compiled by {@link Kernels.compile}, or else on the launch's first use. */
  readonly kernel: KernelPipeline;
  readonly bindGroup: GPUBindGroup;
  readonly workgroups: number;
  /** Runs once per row of a batch (`rows` workgroups along y); false for a launch that runs once (argmax). */
  readonly batched: boolean;
  /** Activation rows per workgroup along y (row-tiled matrix kernels; 1 otherwise): `⌈rows / rowTile⌉` along y. */
  readonly rowTile: number;
  /** Computes one activation row only (the decode step's attention with q/k/v's rotation): more is `E_VALUE`. */
  readonly oneRow?: boolean;
  /** The packed-f16 form of {@link Kernels.e8pMatvec} (its label also ends with ` f16`). */
  readonly f16Products?: boolean;
  /** Rows per lane of {@link Kernels.e8pMatvec} with 32 lanes per row and one activation row, either form. */
  readonly rowsPerLane?: RowsPerLane;
}

/**
 * A dense weight matrix on the GPU: f32 rows, or f16 / bf16 rows packed two halves per u32 (`rowWords` words a row;
 * `dtype` says which).
 */
export interface GpuMatrix {
  buffer: GPUBuffer;
  rows: number;
  cols: number;
  dtype: DenseDtype;
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
  const single = dispatches.find((d) => d.oneRow);
  if (single && rows > 1)
    throw new CalderaError(
      'E_VALUE',
      `encodeDispatches: ${single.label} computes one activation row, not ${rows}`,
    );
  const pass = encoder.beginComputePass();
  for (const d of dispatches) {
    pass.setPipeline(d.kernel.pipeline);
    pass.setBindGroup(0, d.bindGroup);
    pass.dispatchWorkgroups(d.workgroups, d.batched ? Math.ceil(rows / d.rowTile) : 1);
  }
  pass.end();
}

const MAX_GROUPS = 65535;

/**
 * Fewest workgroups a packed-f16 launch keeps when the kernel picks more than one row per lane itself (a large GPU
 * has up to ~130 compute units, each wanting more than one workgroup to hide memory latency; unmeasured).
 */
export const F16_MIN_WORKGROUPS = 256;

/**
 * {@link Kernels.vectorWorkgroup}'s default on CPU fallback adapters (elsewhere {@link WG}): a CPU driver runs a
 * workgroup's invocations on one thread, switching between them at each barrier, so fewer are faster there. Measured
 * 2026-12-05 on the development machine: the random tiny model's decode step (bench/profile.ts) took 37–40 ms for
 * CALDERA with 64 against 58–68 with 256 on SwiftShader (36–39 with 32: no further gain), 5.9–6.9 against 7.0–7.8
 * on lavapipe; dense f16 21–22 against 25–26 on SwiftShader.
 */
export const FALLBACK_VECTOR_WORKGROUP = 64;

/** Smallest {@link Kernels.maxLocalHadamard}: below it, Walsh–Hadamard blocks beyond 64 values cannot be rotated. */
export const MIN_LOCAL_HADAMARD = 16;

/**
 * `E_VALUE` unless `lanes` is undefined (the default), 1 or 32 ({@link Lanes}): the kernels are written for these two
 * (another count computes wrong rows or builds invalid WGSL).
 */
export function checkLanes(lanes: unknown): asserts lanes is Lanes | undefined {
  if (lanes !== undefined && lanes !== 1 && lanes !== 32)
    throw new CalderaError('E_VALUE', `lanes must be 1 or 32, got ${shownValue(lanes)}`);
}

/**
 * `E_VALUE` unless `n` is undefined (the default: what workgroup memory holds), `Infinity` (the same) or an integer of at
 * least {@link MIN_LOCAL_HADAMARD}: the workgroup arrays of the rotation kernels hold this many values, and the
 * global-memory path rotates blocks of up to 2^⌊log2 n⌋ squared values.
 */
export function checkMaxLocalHadamard(n: unknown): asserts n is number | undefined {
  if (n !== undefined && n !== Infinity && !(Number.isInteger(n) && (n as number) >= MIN_LOCAL_HADAMARD))
    throw new CalderaError(
      'E_VALUE',
      `maxLocalHadamard must be an integer of at least ${MIN_LOCAL_HADAMARD} (or Infinity: what workgroup memory holds), got ${shownValue(n)}`,
    );
}

/** `E_VALUE` unless `rows` is undefined (the default), 1, 2 or 4 ({@link RowsPerLane}). */
export function checkRowsPerLane(rows: unknown): asserts rows is RowsPerLane | undefined {
  if (rows !== undefined && rows !== 1 && rows !== 2 && rows !== 4)
    throw new CalderaError('E_VALUE', `rowsPerLane must be 1, 2 or 4, got ${shownValue(rows)}`);
}

/**
 * `E_VALUE` unless `n` is undefined (the default, {@link WG}) or a power of two from 64 to the device's invocations per
 * workgroup (at most 1024): the invocations of {@link Kernels.vectorWorkgroup}.
 */
export function checkVectorWorkgroup(n: unknown, dev: CalderaDevice): asserts n is number | undefined {
  const most = Math.min(1024, dev.maxWorkgroupInvocations);
  const ok = typeof n === 'number' && Number.isInteger(n) && n >= 64 && n <= most && (n & (n - 1)) === 0;
  if (n !== undefined && !ok)
    throw new CalderaError(
      'E_VALUE',
      `vectorWorkgroup must be a power of two from 64 to ${most} (the device's invocations per workgroup), got ${shownValue(n)}`,
    );
}

/** {@link Kernels.lanes} for these options on `dev`: `lanes`, else 1 on CPU fallback adapters and 32 elsewhere. */
function lanesOf(options: { lanes?: Lanes }, dev: CalderaDevice): Lanes {
  return options.lanes ?? (dev.fallbackAdapter ? 1 : 32);
}

/**
 * `E_VALUE` unless `f16` is absent or a boolean, and, when true, `dev` has `shader-f16` and the kernels use 32 lanes
 * per row (`lanes` as given or by default).
 */
export function checkF16(options: { f16?: unknown; lanes?: Lanes }, dev: CalderaDevice): void {
  const { f16 } = options;
  if (f16 !== undefined && typeof f16 !== 'boolean')
    throw new CalderaError('E_VALUE', `f16 must be true or false, got ${shownValue(f16)}`);
  if (f16 && !dev.shaderF16)
    throw new CalderaError('E_VALUE', 'Kernels: f16 needs a device with the shader-f16 feature');
  if (f16 && lanesOf(options, dev) !== 32)
    throw new CalderaError('E_VALUE', 'Kernels: f16 needs 32 lanes per row');
}

/** `E_VALUE` unless `written` ({@link Kernels.writtenMix}) is undefined (the default) or a boolean. */
export function checkWrittenMix(written: unknown): asserts written is boolean | undefined {
  if (written !== undefined && typeof written !== 'boolean')
    throw new CalderaError('E_VALUE', `writtenMix must be true or false, got ${shownValue(written)}`);
}

/**
 * {@link Kernels.gateStep}: the gate step in one launch (`fused`), or in two: the second mixing the whole vector in
 * each workgroup (`split`) or spread over the mix's chunks, leaving `z` in partial sums (`chunked`).
 */
export type GateStep = 'fused' | 'split' | 'chunked';

/** `E_VALUE` unless `form` is undefined (the default, 'fused') or a {@link GateStep}. */
export function checkGateStep(form: unknown): asserts form is GateStep | undefined {
  if (form !== undefined && form !== 'fused' && form !== 'split' && form !== 'chunked')
    throw new CalderaError(
      'E_VALUE',
      `gateStep must be 'fused', 'split' or 'chunked', got ${shownValue(form)}`,
    );
}

/** A binding's declaration in WGSL: its group, its binding and (for a buffer) its address space with access. */
const BINDING_DECLARATION = /@group\((\d+)\)\s*@binding\((\d+)\)\s*var\s*(?:<([^>]*)>)?/g;

/**
 * The buffer bindings `code` declares, as a bind-group layout's buffer types by binding: `var<uniform>` is
 * `'uniform'`, `var<storage, read>` `'read-only-storage'`, `var<storage, read_write>` `'storage'`. Every kernel binds
 * buffers only, in group 0, numbered from 0 without gaps (in any order in the text); anything else is `E_VALUE`
 * naming `label`.
 */
export function bufferBindingTypes(code: string, label: string): GPUBufferBindingType[] {
  const types: GPUBufferBindingType[] = [];
  for (const [declaration, group, binding, space = ''] of code.matchAll(BINDING_DECLARATION)) {
    const where = space.replace(/\s+/g, '');
    const type =
      where === 'uniform'
        ? 'uniform'
        : where === 'storage' || where === 'storage,read'
          ? 'read-only-storage'
          : where === 'storage,read_write'
            ? 'storage'
            : null;
    const at = Number(binding);
    if (group !== '0' || type === null || types[at] !== undefined)
      throw new CalderaError(
        'E_VALUE',
        `${label}: kernels bind uniform and storage buffers in group 0, each binding once; ` +
          `found '${declaration.trim()}'`,
      );
    types[at] = type;
  }
  // a sparse array: findIndex visits the holes
  const gap = types.findIndex((t) => t === undefined);
  if (gap >= 0)
    throw new CalderaError(
      'E_VALUE',
      `${label}: binding ${gap} of group 0 is missing (bindings are numbered from 0)`,
    );
  return types;
}

/**
 * One kernel's compute pipeline on one device. Its bind-group layout is explicit, read from the WGSL
 * ({@link bufferBindingTypes}), so launches bind their buffers before the pipeline exists; the pipeline is compiled
 * ahead of use by {@link KernelPipeline.compile}, or else synchronously when {@link KernelPipeline.pipeline} is first
 * read.
 */
export class KernelPipeline {
  /** The layout of the kernel's one bind group (group 0). */
  readonly layout: GPUBindGroupLayout;
  private readonly descriptor: GPUComputePipelineDescriptor;
  private compiled: GPUComputePipeline | null = null;
  private compiling: Promise<void> | null = null;
  constructor(
    private readonly device: GPUDevice,
    readonly label: string,
    code: string,
  ) {
    this.layout = device.createBindGroupLayout({
      label,
      entries: bufferBindingTypes(code, label).map((type, binding) => ({
        binding,
        visibility: COMPUTE_STAGE,
        buffer: { type },
      })),
    });
    this.descriptor = {
      label,
      layout: device.createPipelineLayout({ label, bindGroupLayouts: [this.layout] }),
      compute: { module: device.createShaderModule({ label, code }), entryPoint: 'main' },
    };
  }

  /** The compiled pipeline; compiled here, synchronously, when {@link KernelPipeline.compile} has not finished. */
  get pipeline(): GPUComputePipeline {
    return (this.compiled ??= this.device.createComputePipeline(this.descriptor));
  }

  /**
   * Compiles the pipeline unless it is compiled: `inBackground`, with `createComputePipelineAsync` (once: later calls
   * return the same promise), else now, synchronously. `E_DEVICE` naming the kernel when its WGSL fails to compile
   * (or, in the background, when the device is lost meanwhile).
   */
  compile(inBackground: boolean): Promise<void> {
    if (this.compiled) return Promise.resolve();
    const failed = (message: string, cause?: unknown) =>
      new CalderaError('E_DEVICE', `${this.label}: the kernel failed to compile: ${message}`, { cause });
    if (!inBackground) {
      this.device.pushErrorScope('validation');
      void this.pipeline;
      return this.device.popErrorScope().then((error) => {
        if (error) throw failed(error.message);
      });
    }
    return (this.compiling ??= this.device.createComputePipelineAsync(this.descriptor).then(
      (p) => {
        this.compiled ??= p;
      },
      (e: unknown) => {
        throw failed((e as Error).message, e);
      },
    ));
  }
}

/** The kernels' pipelines on each device, by WGSL source: a memo of {@link kernelPipeline}, freed with the device. */
const devicePipelines = new WeakMap<GPUDevice, Map<string, KernelPipeline>>();

/**
 * The pipeline of `code` on `device`: made on the first request, then shared by every `Kernels` on that device (a
 * second model, a reload, `tuneKernels`' candidates: only the kernels whose WGSL differs are compiled again; on a CPU
 * adapter a compile takes up to a second). A pipeline is immutable and binds nothing itself (each launch has its own
 * bind group), so sharing it changes no result. One that fails to compile is shared too: the same code fails the same
 * way on the same device.
 */
function kernelPipeline(device: GPUDevice, label: string, code: string): KernelPipeline {
  let byCode = devicePipelines.get(device);
  if (!byCode) {
    byCode = new Map();
    devicePipelines.set(device, byCode);
  }
  let p = byCode.get(code);
  if (!p) {
    p = new KernelPipeline(device, label, code);
    byCode.set(code, p);
  }
  return p;
}

/**
 * Builds kernel launches on one device. Pipelines are compiled once per kernel variant and device (shared with the
 * device's other `Kernels`; see {@link kernelPipeline}), ahead of use by {@link Kernels.compile} or else on first use;
 * the uniform buffers it creates are released by {@link Kernels.dispose}.
 */
export class Kernels {
  /** This object's pipelines by variant key: each variant's WGSL is generated once (its pipeline may be shared). */
  private readonly pipelines = new Map<string, KernelPipeline>();
  private readonly owned: GPUBuffer[] = [];
  /** Threads per output row of the matrix–vector kernels (default: 1 on CPU fallback adapters, else 32). */
  readonly lanes: Lanes;
  /** Largest rotation run in one workgroup (larger ones take the global-memory path: two or three launches). */
  readonly maxLocalHadamard: number;
  /**
   * Whether the E8P kernel's products in decode ({@link Kernels.e8pMatvec} with one activation row: Q̂'s, and R̂'s
   * where the input step takes two launches) run in packed f16 ({@link e8pMatvecF16Wgsl}) where it can (see
   * `f16Form`); default: when the device has `shader-f16` and the kernels use 32 lanes per row. Everything else
   * computes in f32 either way.
   */
  readonly f16: boolean;
  /**
   * Most rows each lane of the E8P kernel computes with 32 lanes per row in decode (1, 2 or 4), or null (the default).
   * The packed-f16 form by default chooses per launch: 4 or 2 where the segments' rows allow it and the launch keeps
   * at least {@link F16_MIN_WORKGROUPS} workgroups, else 1 (4 rows measured 2× one on an H200); the f32 form computes
   * one (its multi-row form is not yet measured on a GPU). When set, both take the most the segments' rows allow up
   * to it, however few workgroups that leaves.
   */
  readonly rowsPerLane: RowsPerLane | null;
  /**
   * Invocations of the kernels in which one workgroup computes a whole vector: RMSNorm, the one-workgroup rotations
   * and input steps, attention (a power of two from 64 to the device's `maxWorkgroupInvocations`; default
   * {@link WG}, on CPU fallback adapters {@link FALLBACK_VECTOR_WORKGROUP}). More invocations shorten the serial work
   * of each (the decode step's input steps are latency-bound chains on one compute unit) at the price of longer
   * reductions; not yet measured on a GPU. Their outputs match the default's within f32 rounding (the reductions add
   * in another order); for one value every fused form equals its launches apart, to the bit, as with the default.
   */
  readonly vectorWorkgroup: number;
  /**
   * The form of the gate step, the down layer's input step that finishes the gate and up layers (see
   * {@link Kernels.projectInput}), where their rotations have an `H_K` mix of more than one chunk (K from 9 to
   * {@link UNROLLED_MIX_MAX_K}, e.g. TinyLlama's 5632 = 44·128): `fused` (the default), one launch of a few
   * workgroups each rotating the three vectors of that width in turn; `split`, a first launch over `⌈K/8⌉`
   * workgroups that each mix only their chunk ({@link gateSliceWgsl}), then the input step with the mix alone (the
   * same outputs to the bit); `chunked`, that second launch spread over the chunks too, each workgroup mixing one
   * chunk and summing R̂'s rows over it, so that `z` is left in `⌈K/8⌉` partial sums which the E8P kernel adds (the
   * logits within f32 rounding). Which is fastest is not yet measured on a GPU (the fused step is a decode step's
   * slowest launch on an H200, 56 µs).
   */
  readonly gateStep: GateStep;
  /**
   * Code groups per iteration of the E8P loops that batch their code loads (the f32 E8P kernel in decode and the input
   * steps' R̂ rows): 4, 8 (the default) or 16, their loads issued together; the same outputs to the bit (the same
   * groups in the same order). 8 at a time against one took an H200's decode step from 12.5 to 8.9 ms; more are not
   * yet measured on a GPU (more registers held per lane).
   */
  readonly codeBatch: CodeBatch;
  /**
   * Whether the one-workgroup rotation kernels write the `H_K` mix of orders 2 to {@link UNROLLED_MIX_MAX_K} into the
   * shader, its signs as code ({@link unrolledMixKs}), or compute it from the ±1 table in memory as they do for larger
   * orders: the same outputs to the bit. Default: written out, except on CPU fallback adapters. Written out, the mix
   * took an H200's decode step from 12.5 to 8.9 ms (with 8 code loads per batch), but it is the largest part of
   * those kernels' WGSL (~4K² terms: the column form and the chunked one) and of their compile time: on SwiftShader
   * the random tiny model (K = 44) loads in about 6 s from the table against 11 s written out, and decodes as fast.
   * The two-launch gate steps ({@link Kernels.gateStep}) need it written out (else the step is fused).
   */
  readonly writtenMix: boolean;
  constructor(
    readonly dev: CalderaDevice,
    options: {
      lanes?: Lanes;
      maxLocalHadamard?: number;
      f16?: boolean;
      rowsPerLane?: RowsPerLane;
      vectorWorkgroup?: number;
      gateStep?: GateStep;
      codeBatch?: CodeBatch;
      writtenMix?: boolean;
    } = {},
  ) {
    options ??= {}; // from JavaScript: null options are none
    checkLanes(options.lanes);
    checkMaxLocalHadamard(options.maxLocalHadamard);
    checkF16(options, dev);
    this.lanes = lanesOf(options, dev);
    this.maxLocalHadamard = Math.min(
      options.maxLocalHadamard ?? Infinity,
      Math.floor(dev.maxWorkgroupStorage / 4),
    );
    this.f16 = options.f16 ?? (dev.shaderF16 && this.lanes === 32);
    checkRowsPerLane(options.rowsPerLane);
    this.rowsPerLane = options.rowsPerLane ?? null;
    checkVectorWorkgroup(options.vectorWorkgroup, dev);
    this.vectorWorkgroup = options.vectorWorkgroup ?? (dev.fallbackAdapter ? FALLBACK_VECTOR_WORKGROUP : WG);
    checkGateStep(options.gateStep);
    this.gateStep = options.gateStep ?? 'fused';
    checkCodeBatch(options.codeBatch);
    this.codeBatch = options.codeBatch ?? E8P_UNROLL;
    checkWrittenMix(options.writtenMix);
    this.writtenMix = options.writtenMix ?? !dev.fallbackAdapter;
  }

  /** The orders of `members` whose `H_K` mix a rotation kernel writes out: none unless {@link Kernels.writtenMix}. */
  private mixKsOf(members: readonly { K: number }[]): number[] {
    return this.writtenMix ? unrolledMixKs(members.map((m) => m.K)) : [];
  }

  /**
   * What the label of a rotation launch over `members` ends with: ` table mix` where an order it would write out is
   * read from the table instead (`writtenMix` false), so that launches of the two forms differ by label too.
   */
  private mixLabel(members: readonly { K: number }[]): string {
    return !this.writtenMix && unrolledMixKs(members.map((m) => m.K)).length > 0 ? ' table mix' : '';
  }

  /** What the labels of the launches that batch code loads end with: the batch, when not the default. */
  private get codeBatchLabel(): string {
    return this.codeBatch === E8P_UNROLL ? '' : ` ×${this.codeBatch} codes`;
  }

  /** The workgroup array of a one-workgroup kernel over vectors of up to `n` values: `n` rounded up to whole passes of its invocations. */
  private vectorWords(n: number): number {
    return Math.ceil(n / this.vectorWorkgroup) * this.vectorWorkgroup;
  }

  private pipeline(key: string, code: () => string): KernelPipeline {
    let p = this.pipelines.get(key);
    if (!p) {
      p = kernelPipeline(this.dev.device, key, code());
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
    kernel: KernelPipeline,
    buffers: GPUBuffer[],
    workgroups: number,
    batched = true,
    rowTile = 1,
  ): Dispatch {
    if (workgroups > MAX_GROUPS)
      throw new CalderaError('E_DEVICE', `${label}: ${workgroups} workgroups exceed the limit ${MAX_GROUPS}`);
    const bindGroup = this.dev.device.createBindGroup({
      label,
      layout: kernel.layout,
      entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })),
    });
    return { label, kernel, bindGroup, workgroups: Math.max(1, workgroups), batched, rowTile };
  }

  /**
   * Compiles the pipelines of every launch built so far that are not compiled yet, instead of each on its first use:
   * all at once in the background, or one after another, as the device's {@link CalderaDevice.asyncCompile} says.
   * Resolves when all are compiled; `E_DEVICE` naming a kernel that failed to compile.
   */
  async compile(): Promise<void> {
    await Promise.all([...this.pipelines.values()].map((p) => p.compile(this.dev.asyncCompile)));
  }

  /** Row r of `out` (`d` values) = `table[tokens[r]]`; `tokens` is a u32 storage buffer. */
  embed(tokens: GPUBuffer, table: GpuMatrix, out: GPUBuffer): Dispatch {
    const p = this.pipeline(`embed_${table.dtype}`, () => embedWgsl(table.dtype));
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
    const vw = this.vectorWorkgroup;
    const p = this.pipeline(`rmsnorm_${vw}`, () => rmsNormWgsl(vw));
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
   * `out` may be several buffers with their row counts (`parts`): W's rows split over them in order, each a whole row
   * of its buffer per activation row (a group of dense layers stacked in one matrix, in one launch).
   */
  matvec(
    w: GpuMatrix,
    x: GPUBuffer,
    out: GPUBuffer | readonly { out: GPUBuffer; rows: number }[],
    o: {
      bias: GPUBuffer | null;
      accumulate: boolean;
      dummy: GPUBuffer;
      tile?: number;
      /** Values per activation row of `x` (default `cols`) and the input's offset in a row (default 0). */
      xRow?: number;
      xOff?: number;
      /** Values per activation row of `out` (default the rows computed) and the output's offset in a row (default 0). */
      outRow?: number;
      outOff?: number;
      /** The rows of W (and of `bias`) computed: `rows` from `rowStart` (default all of them). */
      rowStart?: number;
      rows?: number;
    },
  ): Dispatch {
    const tile = o.tile ?? 1;
    const start = o.rowStart ?? 0;
    const m = o.rows ?? w.rows - start;
    if (!Number.isInteger(start) || start < 0 || !Number.isInteger(m) || m < 1 || start + m > w.rows)
      throw new CalderaError('E_VALUE', `matvec: rows ${start}…${start + m - 1} of a ${w.rows}-row matrix`);
    const parts = Array.isArray(out)
      ? (out as readonly { out: GPUBuffer; rows: number }[])
      : [{ out: out as GPUBuffer, rows: m }];
    if (
      parts.length < 1 ||
      parts.length > 3 ||
      parts.some((q) => !Number.isInteger(q.rows) || q.rows < 1) ||
      parts.reduce((a, q) => a + q.rows, 0) !== m
    )
      throw new CalderaError('E_VALUE', `matvec: 1 to 3 outputs of at least one row each, adding up to ${m}`);
    if (parts.length > 1 && (o.outRow !== undefined || o.outOff !== undefined))
      throw new CalderaError('E_VALUE', 'matvec: several outputs take whole rows (no outRow/outOff)');
    const p = this.pipeline(`matvec_${w.dtype}_${this.lanes}_${tile}_${parts.length}`, () =>
      matvecWgsl(w.dtype, this.lanes, tile, parts.length),
    );
    const s1 = parts[0]!.rows;
    const u = this.uniform(
      [
        ['u32', m],
        ['u32', w.cols],
        ['u32', w.rowWords],
        ['u32', o.accumulate ? 1 : 0],
        ['u32', o.bias ? 1 : 0],
        ['u32', o.xRow ?? w.cols],
        ['u32', o.xOff ?? 0],
        ['u32', o.outRow ?? m],
        ['u32', o.outOff ?? 0],
        ['u32', start],
        ['u32', s1],
        ['u32', s1 + (parts[1]?.rows ?? 0)],
      ],
      'matvec params',
    );
    return this.make(
      `matvec ${m}x${w.cols}${w.dtype === 'f32' ? '' : ` ${w.dtype}`}${parts.length > 1 ? ` →${parts.length}` : ''}`,
      p,
      [u, w.buffer, x, o.bias ?? o.dummy, ...parts.map((q) => q.out)],
      Math.ceil(m / rowsPerWorkgroup(this.lanes)),
      true,
      tile,
    );
  }

  /**
   * The sign/rotation/padding step of a CALDERA layer on one vector per activation row (see {@link hadamardWgsl}):
   * reads `nIn` values of `x`, transforms `n` (K·P) values, writes `outLen`. `hk` is the ±1 `H_K` (f32, K×K). One
   * launch when the vector fits workgroup memory ({@link Kernels.maxLocalHadamard}), else two or three launches over
   * `tmp` (≥ n values per row). {@link Kernels.rotate} is the form for several layers at once.
   */
  hadamard(
    o: RotationBuffers & {
      out: GPUBuffer;
      n: number;
      nIn: number;
      outLen: number;
      K: number;
      gscale: number;
    },
  ): Dispatch[] {
    return this.rotate({
      ...o,
      xStride: o.nIn,
      outs: [o.out],
      members: [
        {
          n: o.n,
          nIn: o.nIn,
          outLen: o.outLen,
          K: o.K,
          gscale: o.gscale,
          xOff: 0,
          preOff: 0,
          postOff: 0,
          biasOff: o.bias ? 0 : null,
          hkOff: 0,
          outOff: 0,
          outStride: o.outLen,
          slot: 0,
        },
      ],
    });
  }

  /**
   * The rotation step of several layers (see {@link hadamardWgsl}): member w reads `x` at `xOff` within rows of
   * `xStride`, its multipliers and `H_K` at its offsets into `pre`, `post` and `hk` (and `bias` unless `biasOff` is
   * null), and writes `outs[slot]` at `outOff` within rows of `outStride`. One launch for all when every vector fits
   * workgroup memory ({@link Kernels.maxLocalHadamard}) and there are at most {@link ROTATION_MAX_MEMBERS}; else a
   * launch per member that fits and two or three over `tmp` (≥ n values per row) per member that does not. With an
   * `input` computation every launch that loads `x` computes it (a launch in workgroup memory then takes at most
   * {@link ROTATION_MAX_OUTPUTS_WITH_INPUT} outputs: its buffer takes a storage binding).
   */
  rotate(o: RotateOptions): Dispatch[] {
    const fits = (m: RotationMember) => m.n <= this.maxLocalHadamard;
    if (o.members.length <= ROTATION_MAX_MEMBERS && o.members.every(fits)) return [this.rotationLaunch(o)];
    return o.members.flatMap((m) =>
      fits(m) ? [this.rotationLaunch({ ...o, members: [m] })] : this.globalRotation(o, m),
    );
  }

  /**
   * A residual branch's last output rotation (`o`: one member accumulating whole rows into the residual stream
   * `o.outs[0]`, no input computation) and then the RMSNorm of the updated rows (weight, `eps`) into `norm.out` (rows
   * of the member's `outLen`): one launch ({@link rotationNormWgsl}) when the vector fits workgroup memory, else
   * {@link Kernels.rotate} and {@link Kernels.rmsNorm} apart. For the layers after a residual branch that do not
   * finish its rotation in their own input step (dense layers, the final norm before the LM head).
   */
  rotateNorm(o: RotateOptions, norm: { weight: GPUBuffer; eps: number; out: GPUBuffer }): Dispatch[] {
    const m = o.members[0];
    const res = o.outs[0];
    if (
      !m ||
      !res ||
      o.members.length !== 1 ||
      o.outs.length !== 1 ||
      m.slot !== 0 ||
      !o.accumulate ||
      o.input ||
      m.outOff !== 0 ||
      m.outStride !== m.outLen
    )
      throw new CalderaError(
        'E_VALUE',
        'rotateNorm: one member accumulating whole rows into one output, with no input computation',
      );
    const vw = this.vectorWorkgroup;
    const words = this.vectorWords(m.n);
    if (m.n > this.maxLocalHadamard || Math.max(words, normScaleWords(vw)) * 4 > this.dev.maxWorkgroupStorage)
      return [...this.rotate(o), this.rmsNorm(res, norm.weight, norm.out, m.outLen, norm.eps)];
    if (m.biasOff !== null) this.boundBias(o.bias);
    const mixKs = this.mixKsOf([m]);
    return [
      this.make(
        `hadamard n=${m.n} K=${m.K}${o.transpose ? ' T' : ''} +rmsnorm${this.mixLabel([m])}`,
        this.pipeline(`hadamard_norm_${words}_k${mixKs.join('.')}_${vw}_${mixSuffix(o.transpose)}`, () =>
          rotationNormWgsl(words, mixKs, vw, o.transpose),
        ),
        [
          this.uniform(this.rotationFields(o, o.members, norm.eps), 'rotation params'),
          o.x,
          o.pre,
          o.post,
          o.hk,
          res,
          o.bias ?? o.dummy,
          norm.weight,
          norm.out,
        ],
        1,
      ),
    ];
  }

  /**
   * The output rotations of q, k and v (`o.outs` = [q, k, v], members 0–2 writing slots 0–2, no accumulation, no
   * multipliers before the transform) and then RoPE with the KV store ({@link Kernels.ropeKv}): one launch
   * ({@link rotationRopeKvWgsl}) when the three vectors fit workgroup memory, else {@link Kernels.rotate} (with `pre`
   * = `ones`, all ones) and {@link Kernels.ropeKv} apart (which also write the k and v buffers). With
   * `rope.attention`, attention follows; for one activation row (`tile` 1, the decode step) all of it is one launch
   * ({@link rotationAttentionWgsl}; it runs for one row only, and q is not written) when the head fits a workgroup,
   * the arrays fit workgroup memory and the device allows 9 storage buffers. With `rope.qkNorm` (Qwen3) each form
   * norms the heads of q and k in its RoPE step and binds the two norm weights: the one launch with attention then
   * needs 11 storage buffers and the rotation with RoPE 10 (else the rotation and {@link Kernels.ropeKv} apart, which
   * needs 8).
   */
  rotateRopeKv(
    o: Omit<RotateOptions, 'pre' | 'input'> & { ones: GPUBuffer },
    rope: RopeKvOptions,
    tile = 1,
  ): Dispatch[] {
    checkHeadDim(rope.hd);
    const [q, k, v] = o.outs;
    if (!q || !k || !v || o.outs.length !== 3)
      throw new CalderaError('E_VALUE', `rotateRopeKv: 3 outputs (q, k, v), got ${o.outs.length}`);
    const widths = [rope.heads * rope.hd, rope.kvHeads * rope.hd, rope.kvHeads * rope.hd];
    if (
      o.members.length !== 3 ||
      o.members.some(
        (m, w) => m.slot !== w || m.outLen !== widths[w] || m.outOff !== 0 || m.outStride !== m.outLen,
      )
    )
      throw new CalderaError(
        'E_VALUE',
        'rotateRopeKv: members must be q, k and v writing whole rows of their outputs',
      );
    if (o.accumulate) throw new CalderaError('E_VALUE', 'rotateRopeKv: outputs are not accumulated');
    const maxN = Math.max(...o.members.map((m) => m.n));
    const vw = this.vectorWorkgroup;
    const words = this.vectorWords(maxN);
    // Qwen3's per-head norms: two more storage buffers in the fused forms, a pipeline of its own
    const norm = rope.qkNorm;
    const normBuffers = norm ? [norm.q, norm.k] : [];
    const normKey = norm ? '_qkn' : '';
    // with the norms, the rotation with RoPE keeps a factor pair per head (⌊words / hd⌋ of them: q's heads fit
    // `words`), the one with attention two
    const normWords = norm ? 2 * Math.floor(words / rope.hd) : 0;
    if (
      maxN > this.maxLocalHadamard ||
      (words + normWords) * 4 > this.dev.maxWorkgroupStorage ||
      (norm !== undefined && this.dev.maxStorageBuffers < 10)
    )
      return [...this.rotate({ ...o, pre: o.ones }), ...this.ropeKvAttention({ ...rope, q, k, v })];
    for (const m of o.members) if (m.biasOff !== null) this.boundBias(o.bias);
    const att = rope.attention;
    const mixKs = this.mixKsOf(o.members);
    // the buffers both one-launch forms read after their parameters: raw rows, SV, H_K, biases, cos/sin
    const rotationInputs = [o.x, o.post, o.hk, o.bias ?? o.dummy, rope.cs];
    // with attention, one activation row, a head that fits a workgroup and the workgroup arrays in memory: one launch
    const together =
      att !== undefined &&
      tile === 1 &&
      rope.hd <= vw &&
      (words + 3 * rope.hd + vw + (norm ? 4 : 0)) * 4 <= this.dev.maxWorkgroupStorage &&
      this.dev.maxStorageBuffers >= 9 + normBuffers.length;
    if (together)
      return [
        this.oneRow(
          this.make(
            `hadamard n=${maxN} T ×3 ${norm ? '+qknorm' : ''}+rope+kv+attention${this.mixLabel(o.members)}`,
            this.pipeline(
              `hadamard_attention_${words}_${rope.hd}_k${mixKs.join('.')}_${vw}_${mixSuffix(o.transpose)}${normKey}`,
              () => rotationAttentionWgsl(words, rope.hd, mixKs, vw, o.transpose, norm !== undefined),
            ),
            [
              this.uniform(this.rotationFields({ ...o, pre: o.ones }, o.members), 'rotation params'),
              rope.step,
              this.attentionParams(rope, att.capacity, norm?.eps),
              ...rotationInputs,
              rope.ck,
              rope.cv,
              att.scores,
              att.out,
              ...normBuffers,
            ],
            rope.heads,
            false,
          ),
        ),
      ];
    return [
      this.make(
        `hadamard n=${maxN} T ×3 ${norm ? '+qknorm' : ''}+rope+kv${this.mixLabel(o.members)}`,
        this.pipeline(
          `hadamard_rope_kv_${words}_k${mixKs.join('.')}_${vw}_${mixSuffix(o.transpose)}${norm ? `_qkn${rope.hd}` : ''}`,
          () => rotationRopeKvWgsl(words, mixKs, vw, o.transpose, norm ? rope.hd : 0),
        ),
        [
          this.uniform(this.rotationFields({ ...o, pre: o.ones }, o.members), 'rotation params'),
          rope.step,
          this.ropeParams(rope),
          ...rotationInputs,
          q,
          rope.ck,
          rope.cv,
          ...normBuffers,
        ],
        3,
      ),
      ...(att ? [this.attentionAfter(rope, q)] : []),
    ];
  }

  private oneRow(d: Dispatch): Dispatch {
    return { ...d, oneRow: true };
  }

  /** {@link Kernels.ropeKv}, then the attention `rope` asks for. */
  ropeKvAttention(o: RopeKvOptions & { q: GPUBuffer; k: GPUBuffer; v: GPUBuffer }): Dispatch[] {
    return [this.ropeKv(o), ...(o.attention ? [this.attentionAfter(o, o.q)] : [])];
  }

  /** The attention `rope.attention` asks for, reading q from `q`. */
  private attentionAfter(rope: RopeKvOptions, q: GPUBuffer): Dispatch {
    const a = rope.attention!;
    return this.attention({ ...rope, q, scores: a.scores, out: a.out, capacity: a.capacity });
  }

  /** The rotation of a vector larger than workgroup memory, two or three launches over `tmp` (see {@link rotate}). */
  private globalRotation(o: RotateOptions, m: RotationMember): Dispatch[] {
    const P = m.n / m.K;
    const label = `hadamard n=${m.n} K=${m.K}${o.transpose ? ' T' : ''}`;
    if (o.tmp.size < m.n * 4)
      throw new CalderaError('E_SHAPE', `${label}: scratch of ${o.tmp.size} bytes, needs ${m.n * 4}`);
    // chunks of B values (a power of two dividing P, at most a workgroup's worth), S chunks per block; without the
    // transform (K = 1, P = n only a multiple of 8) chunks of the largest power of two dividing n
    const cap = 2 ** Math.floor(Math.log2(this.maxLocalHadamard));
    const B = o.transform ? Math.min(P, cap) : Math.min(cap, m.n & -m.n);
    const S = o.transform ? P / B : 1;
    if (S > cap)
      throw new CalderaError(
        'E_UNSUPPORTED',
        `${label}: a Walsh–Hadamard block of ${P} exceeds ${cap}² (workgroup memory holds ${cap} values)`,
      );
    const input = inputOf(o);
    const list = [
      this.make(
        `${label} chunk ${B}${input.aux ? ` ${input.kind}` : ''}`,
        this.pipeline(`had_chunk_${B}_${input.kind}_${this.vectorWorkgroup}`, () =>
          hadamardChunkWgsl(B, input.kind, this.vectorWorkgroup),
        ),
        [
          this.uniform(
            [
              ['u32', m.n],
              ['u32', m.nIn],
              ['u32', B],
              ['u32', o.transform ? 1 : 0],
              ['u32', o.xStride],
              ['u32', m.xOff],
              ['u32', m.preOff],
              ['f32', input.eps],
            ],
            'hadamard chunk',
          ),
          o.x,
          o.pre,
          o.tmp,
          ...(input.aux ? [input.aux] : []),
        ],
        m.n / B,
      ),
    ];
    if (S > 1) {
      const C = Math.min(B, cap / S);
      list.push(
        this.make(
          `${label} stride ${S}`,
          this.pipeline(`had_stride_${S * C}`, () => hadamardStrideWgsl(S * C)),
          [
            this.uniform(
              [
                ['u32', m.n],
                ['u32', P],
                ['u32', B],
                ['u32', S],
                ['u32', C],
              ],
              'hadamard stride',
            ),
            o.tmp,
          ],
          (m.K * B) / C,
        ),
      );
    }

    list.push(
      this.make(
        `${label} mix`,
        this.pipeline('had_mix', () => HADAMARD_MIX_WGSL),
        [
          this.uniform(this.rotationFields(o, [m]), 'hadamard params'),
          o.tmp,
          o.post,
          m.biasOff === null ? o.dummy : this.boundBias(o.bias),
          o.hk,
          this.output(o.outs, m.slot),
        ],
        Math.ceil(m.outLen / WG),
      ),
    );
    return list;
  }

  /** One launch rotating every member's vector in workgroup memory (one workgroup each; see {@link rotate}). */
  private rotationLaunch(o: RotateOptions): Dispatch {
    const J = o.members.length;
    if (o.outs.length < 1 || o.outs.length > ROTATION_MAX_MEMBERS)
      throw new CalderaError('E_VALUE', `rotate: 1 to ${ROTATION_MAX_MEMBERS} outputs, got ${o.outs.length}`);
    if (o.input && o.outs.length > ROTATION_MAX_OUTPUTS_WITH_INPUT)
      throw new CalderaError(
        'E_VALUE',
        `rotate: at most ${ROTATION_MAX_OUTPUTS_WITH_INPUT} outputs with an input computation, got ${o.outs.length}`,
      );
    for (const m of o.members) {
      this.output(o.outs, m.slot);
      if (m.biasOff !== null) this.boundBias(o.bias);
    }
    // one pipeline per power-of-two bucket of the workgroup array size and per output count
    const maxN = Math.max(...o.members.map((m) => m.n));
    const bucket = Math.min(Math.max(256, 2 ** Math.ceil(Math.log2(maxN))), this.maxLocalHadamard);
    const S = o.outs.length;
    const input = inputOf(o);
    const mixKs = this.mixKsOf(o.members);
    const vw = this.vectorWorkgroup;
    const p = this.pipeline(
      `hadamard_${bucket}_${S}_${input.kind}_k${mixKs.join('.')}_${vw}_${mixSuffix(o.transpose)}`,
      () => hadamardWgsl(bucket, S, input.kind, mixKs, vw, o.transpose),
    );
    const m0 = o.members[0]!;
    return this.make(
      `hadamard n=${m0.n} K=${m0.K}${o.transpose ? ' T' : ''}${J > 1 ? ` ×${J}` : ''}${input.aux ? ` ${input.kind}` : ''}${this.mixLabel(o.members)}`,
      p,
      [
        this.uniform(this.rotationFields(o, o.members), 'rotation params'),
        o.x,
        o.pre,
        o.post,
        o.hk,
        ...o.outs,
        o.bias ?? o.dummy,
        ...(input.aux ? [input.aux] : []),
      ],
      J,
    );
  }

  /**
   * The uniform of the rotation kernels (the WGSL `U` of {@link hadamardWgsl}) for these members; `eps` that of the
   * input computation's RMSNorm by default.
   */
  private rotationFields(
    o: RotateOptions,
    members: readonly RotationMember[],
    eps = inputOf(o).eps,
  ): UniformField[] {
    const fields: UniformField[] = [
      ['u32', o.xStride],
      ['u32', o.transform ? 1 : 0],
      ['u32', o.transpose ? 1 : 0],
      ['u32', o.accumulate ? 1 : 0],
      ['f32', eps],
      ['u32', 0],
      ['u32', 0],
      ['u32', 0],
    ];
    for (const m of members)
      fields.push(
        ['u32', m.n],
        ['u32', m.nIn],
        ['u32', m.outLen],
        ['u32', m.K],
        ['u32', m.n / m.K],
        ['f32', 1 / Math.sqrt(m.n)],
        ['f32', m.gscale],
        ['u32', m.xOff],
        ['u32', m.preOff],
        ['u32', m.postOff],
        ['u32', m.biasOff ?? 0],
        ['u32', m.biasOff === null ? 0 : 1],
        ['u32', m.hkOff],
        ['u32', m.outOff],
        ['u32', m.outStride],
        ['u32', m.slot],
      );
    while (fields.length < 8 + 16 * ROTATION_MAX_MEMBERS) fields.push(['u32', 0]);
    return fields;
  }

  /**
   * The uniform of the RoPE kernels ({@link ROPE_KV_WGSL}, {@link rotationRopeKvWgsl}, {@link ropeKvNormWgsl}): head
   * counts and size, and the per-head norms' epsilon with `qkNorm`.
   */
  private ropeParams(rope: RopeKvOptions): GPUBuffer {
    return this.uniform(
      [
        ['u32', rope.heads],
        ['u32', rope.kvHeads],
        ['u32', rope.hd],
        ...(rope.qkNorm ? [['f32', rope.qkNorm.eps] as UniformField] : []),
      ],
      'rope params',
    );
  }

  private output(outs: readonly GPUBuffer[], slot: number): GPUBuffer {
    const b = outs[slot];
    if (!b) throw new CalderaError('E_VALUE', `rotate: output slot ${slot} is not bound`);
    return b;
  }

  private boundBias(bias: GPUBuffer | null): GPUBuffer {
    if (!bias) throw new CalderaError('E_VALUE', 'rotate: a member reads a bias, none is bound');
    return bias;
  }

  /**
   * Fused E8P12/RVQ matvec over the stacked rows of one or more layers (segments; see {@link e8pMatvecWgsl}), with
   * the packed low-rank term `L̂·z` when `lowRank` is given; without one it also computes `z = R̂·x` from R̂'s codes.
   * Output rows: all segments' rows, in order.
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
    /** Width of every segment's rows (a multiple of 8). */
    np: number;
    /** Divisor of Q's second plane (`RVQ4_RESID_SCALE` or `RVQ3_RESID_SCALE`); unused for 'e8p12'. */
    resScale: number;
    segments: readonly E8pSegment[];
    /** Values per activation row of `x` (default `np`: one segment's input). */
    xRow?: number;
    /**
     * L̂ packed, and `z` with `zRow` values per activation row (default: the segments' ranks summed); with `zParts`
     * (default 1; one segment) each z_t the sum of that many partial values `k` apart, in order (see
     * {@link Kernels.inputStepParts}).
     */
    lowRank?: {
      codec: LatticeCodec;
      codes: GPUBuffer;
      resScale: number;
      z: GPUBuffer;
      zRow?: number;
      zParts?: number;
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
    const segs = o.segments;
    if (segs.length < 1 || segs.length > E8P_MAX_SEGMENTS)
      throw new CalderaError('E_VALUE', `e8pMatvec: 1 to ${E8P_MAX_SEGMENTS} segments, got ${segs.length}`);
    const zParts = lr?.zParts ?? 1;
    if (!Number.isInteger(zParts) || zParts < 1 || (zParts > 1 && segs.length !== 1))
      throw new CalderaError(
        'E_VALUE',
        `e8pMatvec: zParts must be a positive integer (above 1 with one segment), got ${shownValue(zParts)}`,
      );
    const G = o.np / 8;
    // activation values are read as 16-byte vectors: every offset must be a multiple of 8 values
    const xRow = o.xRow ?? o.np;
    for (const [what, v] of [
      ['np', o.np],
      ['xRow', xRow],
      ...segs.map((sg, j) => [`segment ${j} x offset`, sg.x ?? 0] as const),
    ] as const)
      if (!Number.isInteger(v) || v % 8 !== 0)
        throw new CalderaError('E_VALUE', `e8pMatvec: ${what} ${v} is not a multiple of 8`);
    const fields: UniformField[] = [];
    let start = 0;
    let zOff = 0;
    for (const [j, sg] of segs.entries()) {
      const l = sg.lowRank;
      if (l && !lr)
        throw new CalderaError('E_VALUE', `e8pMatvec: segment ${j} has a low-rank term, the launch none`);
      if (l && sg.rows % 8 !== 0)
        throw new CalderaError(
          'E_SHAPE',
          `e8pMatvec: packed L̂ needs rows divisible by 8, segment ${j} has ${sg.rows}`,
        );
      fields.push(
        ['u32', start],
        ['u32', sg.x ?? 0],
        ['u32', l?.z ?? zOff],
        ['u32', l?.k ?? 0],
        ['u32', sg.rows / 8],
        ['u32', codeIndex(sg.codeByte ?? 0, null, 'code')],
        ['u32', codeIndex(sg.code2Byte ?? 0, o.codec, 'second-plane code')],
        ['u32', codeIndex(l?.codeByte ?? 0, null, 'L̂ code')],
        ['u32', codeIndex(l?.code2Byte ?? 0, lr?.codec ?? null, 'L̂ second-plane code')],
        ['f32', sg.qscale],
        ['f32', l?.scale ?? 0],
        ['u32', 0],
      );
      start += sg.rows;
      zOff += l?.k ?? 0;
    }
    // the uniform holds every segment slot
    while (fields.length < 12 * E8P_MAX_SEGMENTS) fields.push(['u32', 0]);
    const mp = start;
    const tile = o.tile ?? 1;
    const f16 = this.f16Form(o.codec, G, segs, mp, tile);
    // the f32 form's rows per lane (32 lanes, one activation row): up to `rowsPerLane` (default 1) as the rows allow
    const f32Rows =
      f16 !== null || this.lanes !== 32 || tile !== 1
        ? null
        : ([4, 2, 1] as const).find(
            (r) => r <= (this.rowsPerLane ?? 1) && segs.every((sg) => sg.rows % r === 0),
          )!;
    const rows = f16?.rows ?? f32Rows;
    // the label ends with the rows per lane when more than one and, for the f16 form, ' f16' (after its activation
    // chunks when there are several)
    const chunks = f16 === null ? 0 : Math.ceil(G / f16.chunk);
    const formLabel = `${chunks > 1 ? ` ${chunks} chunks` : ''}${rows !== null && rows > 1 ? ` ${rows} rows/lane` : ''}${
      f16 === null ? '' : ' f16'
    }${f16 === null && tile === 1 ? this.codeBatchLabel : ''}`;
    const p =
      f16 !== null
        ? this.pipeline(`e8p_matvec_f16_${o.codec}_${lr?.codec ?? 'none'}_${f16.chunk}_${f16.rows}`, () =>
            e8pMatvecF16Wgsl(o.codec as 'e8p12' | 'rvq4', lr?.codec ?? null, f16.chunk, f16.rows),
          )
        : this.pipeline(
            `e8p_matvec_${o.codec}_${lr?.codec ?? 'none'}_${this.lanes}_${tile}_${f32Rows ?? 1}_${this.codeBatch}`,
            () => e8pMatvecWgsl(o.codec, lr?.codec ?? null, this.lanes, tile, f32Rows ?? 1, this.codeBatch),
          );
    const u = this.uniform(
      [
        ['u32', mp],
        ['u32', G],
        ['u32', xRow],
        ['u32', lr?.zRow ?? zOff],
        ['f32', o.resScale],
        ['f32', lr?.resScale ?? 1],
        ['u32', segs.length],
        ['u32', zParts],
        ...fields,
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
    const k = segs.reduce((s, sg) => s + (sg.lowRank?.k ?? 0), 0);
    const launch = this.make(
      `e8p ${mp}x${o.np}${segs.length > 1 ? ` (${segs.length} layers)` : ''}${lr ? ` k=${k}` : ''}${formLabel}`,
      p,
      bufs,
      Math.ceil(mp / (rows === null ? rowsPerWorkgroup(this.lanes) : ROWS_PER_WG * rows)),
      true,
      tile,
    );
    return {
      ...launch,
      ...(f16 !== null ? { f16Products: true } : {}),
      ...(rows !== null ? { rowsPerLane: rows } : {}),
    };
  }

  /**
   * The packed-f16 Q̂ kernel's shape ({@link e8pMatvecF16Wgsl}) for a launch, or null for the f32 form: f16 off, row
   * tiles, an RVQ3 plane, an odd number of groups per row, a segment whose rows are not a multiple of 8 or whose first
   * code index is odd. Rows per lane: the most r (up to `rowsPerLane`, default 4) such that 8·r divides every segment's
   * rows and, unless `rowsPerLane` is set, the launch keeps {@link F16_MIN_WORKGROUPS} workgroups, and its activation chunk
   * (groups of 8) fits workgroup memory: the whole row (rounded up to 64 groups) when it does, else the most that fits.
   */
  private f16Form(
    codec: LatticeCodec,
    G: number,
    segs: readonly E8pSegment[],
    mp: number,
    tile: number,
  ): { chunk: number; rows: RowsPerLane } | null {
    if (!this.f16 || tile !== 1 || codec === 'rvq3' || G % 2 !== 0) return null;
    if (!segs.every((sg) => (sg.codeByte ?? 0) % 4 === 0 && (sg.code2Byte ?? 0) % 4 === 0)) return null;
    for (const rows of [4, 2, 1] as const) {
      if (
        rows > (this.rowsPerLane ?? 4) ||
        !segs.every((sg) => sg.rows % (ROWS_PER_WG * rows) === 0) ||
        (rows > 1 && this.rowsPerLane === null && mp / (ROWS_PER_WG * rows) < F16_MIN_WORKGROUPS)
      )
        continue;
      const chunk = this.f16ChunkFor(G, rows);
      if (chunk !== null) return { chunk, rows };
    }
    return null;
  }

  /** The activation chunk of {@link Kernels.f16Form} for `rows` rows per lane, or null when not even 64 groups fit. */
  private f16ChunkFor(G: number, rows: RowsPerLane): number | null {
    const fits = (chunk: number) => e8pF16WorkgroupBytes(chunk, rows) <= this.dev.maxWorkgroupStorage;
    // the whole row in one chunk: rounded up to 64 groups (fewer pipeline variants), or exactly
    const whole = Math.ceil(G / 64) * 64;
    if (fits(whole)) return whole;
    if (fits(G)) return G;
    // the most that fits: every group takes at least 16 bytes
    let most = Math.floor(this.dev.maxWorkgroupStorage / 16 / 64) * 64;
    while (most >= 64 && !fits(most)) most -= 64;
    return most >= 64 ? most : null;
  }

  /**
   * The workgroup array size of the one-launch input step for `o` ({@link inputProjectionWgsl}), or null when it
   * cannot run in one launch: prefill tiles, more than {@link ROTATION_MAX_MEMBERS} layers, vectors (the input's and,
   * with `residual`, the output before) larger than {@link Kernels.maxLocalHadamard} or than workgroup memory beside
   * the kernel's tables, or more storage bindings than the device allows.
   */
  private projectionWords(o: InputProjectionOptions): number | null {
    const c = o.codes;
    if (!c || (o.tile ?? 1) !== 1 || o.layers.length > ROTATION_MAX_MEMBERS) return null;
    const prev = previousOf(o);
    const widths = [o.n, ...(prev.pending?.members.map((m) => m.n) ?? [])];
    const maxN = Math.max(...widths);
    if (maxN > this.maxLocalHadamard) return null;
    const vw = this.vectorWorkgroup;
    const words = this.vectorWords(maxN);
    // the source table (256 × 16 bytes) and the lanes' partial sums, and E81B for an rvq3 R̂ (see inputProjectionWgsl)
    const extra = this.lanes === 1 ? 0 : 256 * 16 + vw * 4 + (c.codec === 'rvq3' ? 2048 * 4 : 0);
    if (
      Math.max(words, o.input?.kind === 'rmsNorm' ? normScaleWords(vw) : 0) * 4 + extra >
      this.dev.maxWorkgroupStorage
    )
      return null;
    const storage = inputProjectionBindings(c.codec, o.input?.kind ?? 'none', prev.kind).filter(
      (name) => name !== 'prevParams',
    ).length;
    return storage <= this.dev.maxStorageBuffers ? words : null;
  }

  /**
   * Whether {@link Kernels.projectInput} can finish the layers before in the same launch as this step's input
   * computation and rotation: with `o.residual`, a residual branch's last layer (its output rotation accumulating into
   * the residual stream `o.x`; this step computing RMSNorm); with `o.gate`, the gate and up layers (their output
   * rotation writing `o.x` and the SwiGLU's `up`; this step computing SwiGLU). Needs: that rotation with one member
   * (residual) or two (gate), each over this step's rows at offset 0 and as wide as its input, multipliers `pre` of 1
   * (`o.ones`), its H_K in `o.hk`, its bias bound when read, no input computation of its own; R̂ rows to compute; and
   * the one-launch input step to fit (see `projectionWords`: on a device with the baseline 8 storage buffers the
   * residual step does not, as it binds up to 12; the gate step binds up to 9).
   */
  finishesPending(o: InputProjectionOptions): boolean {
    const prev = previousOf(o);
    const rot = prev.pending;
    if (!rot || !o.layers.some((l) => l.r)) return false;
    const shaped = rot.members.every(
      (m) =>
        m.outOff === 0 &&
        m.outStride === o.xStride &&
        m.outLen === o.nIn &&
        (m.biasOff === null || rot.bias !== null),
    );
    const common =
      shaped &&
      rot.input === undefined &&
      rot.pre === o.ones &&
      rot.hk === o.hk &&
      this.projectionWords(o) !== null;
    if (prev.kind === 'residual')
      return (
        common &&
        o.input?.kind === 'rmsNorm' &&
        rot.members.length === 1 &&
        rot.members[0]!.slot === 0 &&
        rot.accumulate &&
        rot.outs.length === 1 &&
        rot.outs[0] === o.x &&
        o.residual!.out !== o.x
      );
    const input = o.input;
    return (
      common &&
      input?.kind === 'swiglu' &&
      !rot.accumulate &&
      rot.members.length === 2 &&
      gateMembers(rot, o.x, input.up) !== null
    );
  }

  /**
   * The input step of CALDERA layers that share an input (see {@link InputProjectionOptions}): one launch
   * ({@link inputProjectionWgsl}) when R̂ has rows to compute, the vectors fit workgroup memory beside the kernel's
   * tables, there are at most {@link ROTATION_MAX_MEMBERS} layers, `tile` is 1 and the device allows the storage
   * buffers it binds; else the rotation ({@link Kernels.rotate}) and R̂'s kernel ({@link Kernels.e8pMatvec}) apart,
   * with the same operations in the same order (bit-identical on SwiftShader, tested). With `o.residual` or `o.gate`
   * it also finishes the layers before (see {@link Kernels.finishesPending}; `E_VALUE` when it cannot: run their
   * rotation first instead); with `o.gate` in two launches where {@link Kernels.gateStep} asks for it and the step
   * allows it (see `gateSplit`).
   */
  projectInput(o: InputProjectionOptions): Dispatch[] {
    return this.inputStep(o, 'whole');
  }

  /**
   * Partial vectors per row of `z` that {@link Kernels.projectInput} of `o` leaves (k apart, to be added in order:
   * the E8P kernel's `lowRank.zParts`): the chunks of the mix with the `chunked` gate step, else 1.
   */
  inputStepParts(o: InputProjectionOptions): number {
    const split = this.gateStep === 'chunked' && o.gate ? this.gateSplit(o) : null;
    return split ? split.chunks : 1;
  }

  /** {@link Kernels.projectInput} in the given form (see {@link InputStepForm} and `gateSplit`). */
  private inputStep(o: InputProjectionOptions, form: InputStepForm): Dispatch[] {
    const J = o.layers.length;
    const { n, nIn, K } = o;
    const members: RotationMember[] = o.layers.map((l, w) => ({
      n,
      nIn,
      outLen: n,
      K,
      gscale: 1,
      xOff: 0,
      preOff: l.preOff,
      postOff: 0,
      biasOff: null,
      hkOff: o.hkOff ?? 0,
      outOff: w * n,
      outStride: J * n,
      slot: 0,
    }));
    const rotation: RotateOptions = {
      x: o.x,
      xStride: o.xStride,
      ...(o.input ? { input: o.input } : {}),
      pre: o.pre,
      post: o.ones,
      bias: null,
      hk: o.hk,
      tmp: o.tmp,
      dummy: o.dummy,
      outs: [o.rot],
      transform: o.transform,
      transpose: false,
      accumulate: false,
      members,
    };
    const segments = o.layers.flatMap((l, w) => (l.r ? [{ ...l.r, x: w * n }] : []));
    const c = o.codes;
    const prev = previousOf(o);
    if (prev.pending && !this.finishesPending(o))
      throw new CalderaError(
        'E_VALUE',
        'projectInput: this step cannot finish the layers before it in one launch (see finishesPending); run ' +
          'their output rotation with rotate() first',
      );
    if (segments.length === 0 || !c) return this.rotate(rotation);
    const split = o.gate ? this.gateSlices(o) : null;
    if (split) return split;
    const chunks = form === 'chunks' ? Math.ceil(K / MIX_CHUNK) : 1;
    const tile = o.tile ?? 1;
    const words = this.projectionWords(o);
    if (words === null) {
      if (form !== 'whole')
        throw new CalderaError(
          'E_VALUE',
          'projectInput: blocks rotated before need the one-launch input step',
        );
      return [
        ...this.rotate(rotation),
        this.e8pMatvec({
          codes: c.codes,
          codes2: c.codes2,
          codec: c.codec,
          e81b: c.e81b,
          sources: c.sources,
          x: o.rot,
          out: c.z,
          np: n,
          resScale: c.resScale,
          xRow: J * n,
          segments,
          tile,
        }),
      ];
    }
    if ((c.codec === 'e8p12') !== (c.codes2 === null))
      throw new CalderaError('E_VALUE', `projectInput: codec ${c.codec} and the second plane disagree`);
    const vw = this.vectorWorkgroup;
    const rpw = this.lanes === 1 ? vw : vw / 32;
    const seg: UniformField[] = [];
    let wg = 0;
    let zOff = 0;
    for (const l of o.layers) {
      const k = l.r?.rows ?? 0;
      seg.push(
        ['u32', wg],
        ['u32', k],
        ['u32', codeIndex(l.r?.codeByte ?? 0, null, 'R̂ code')],
        ['u32', codeIndex(l.r?.code2Byte ?? 0, c.codec, 'R̂ second-plane code')],
        ['u32', zOff],
        ['f32', l.r?.qscale ?? 0],
        ['u32', Math.max(1, Math.ceil(k / rpw))],
        ['u32', 0],
      );
      wg += chunks * Math.max(1, Math.ceil(k / rpw));
      zOff += k;
    }
    while (seg.length < 8 * ROTATION_MAX_MEMBERS) seg.push(['u32', 0]);
    const input = inputOf(rotation);
    // the orders of this step's rotation and of the pending one
    const mixed = [{ K }, ...(prev.pending?.members ?? [])];
    const mixKs = this.mixKsOf(mixed);
    // the mixes' directions: the pipeline's, as the uniforms' flags
    const directions = `${mixSuffix(rotation.transpose)}${prev.pending ? mixSuffix(prev.pending.transpose) : ''}`;
    const p = this.pipeline(
      `project_${words}_${c.codec}_${this.lanes}_${input.kind}_${prev.kind}_k${mixKs.join('.')}_${vw}_${form}_${this.codeBatch}_${directions}`,
      () =>
        inputProjectionWgsl(
          words,
          c.codec,
          this.lanes,
          input.kind,
          prev.kind,
          mixKs,
          vw,
          form,
          this.codeBatch,
          rotation.transpose,
          prev.pending?.transpose ?? true,
        ),
    );
    // the pending rotation's members as the kernel reads them (gate first in the gate step)
    const pendingMembers = o.gate
      ? gateMembers(o.gate.pending, o.x, (o.input as { up: GPUBuffer }).up)!
      : prev.pending?.members;
    const named: Record<string, GPUBuffer | null> = {
      // the gate step reads the gate and up layers' outputs before their rotation
      x: o.gate ? o.gate.pending.x : o.x,
      pre: o.pre,
      hkb: o.hk,
      rot: o.rot,
      codes: c.codes,
      z: c.z,
      codes2: c.codes2,
      aux: input.aux,
      // (prevOut and hOut are bound by the residual step only: see inputProjectionBindings)
      ...(prev.pending && pendingMembers
        ? {
            prevOut: prev.pending.x,
            prevPost: prev.pending.post,
            prevBias: prev.pending.bias ?? o.dummy,
            hOut: o.residual?.out ?? null,
            prevParams: this.uniform(
              this.rotationFields(prev.pending, pendingMembers),
              `${prev.kind} rotation params`,
            ),
          }
        : {}),
    };
    return [
      this.make(
        `project n=${n} K=${K}${J > 1 ? ` ×${J}` : ''} k=${zOff}${input.aux ? ` ${input.kind}` : ''}${prev.kind === 'none' ? '' : ` +${prev.kind}`}${form === 'whole' ? '' : ` ${form}`}${this.codeBatchLabel}${this.mixLabel(mixed)}`,
        p,
        [
          this.uniform(this.rotationFields(rotation, members), 'rotation params'),
          this.uniform(
            [['u32', n / 8], ['u32', chunks * zOff], ['f32', c.resScale], ['u32', J], ...seg],
            'projection params',
          ),
          c.tables,
          ...inputProjectionBindings(c.codec, input.kind, prev.kind).map((name) => named[name]!),
        ],
        wg,
      ),
    ];
  }

  /**
   * The gate step `o` in two launches, when {@link Kernels.gateStep} asks for it and it can (else null): the mix
   * written out ({@link Kernels.writtenMix}), one layer after gate and up (whose rotation the fused step could finish:
   * {@link Kernels.finishesPending}), every vector of this step's width, order K and rotation, K from 9 to
   * {@link UNROLLED_MIX_MAX_K}, and room in workgroup memory for a chunk's 8 blocks beside the vector. Then {@link gateSliceWgsl} writes SwiGLU's blocks, transformed, into `o.tmp`,
   * from where `mixed` (the input step `x` = `o.tmp`, multipliers 1) mixes them; `chunks` of the mix.
   */
  private gateSplit(o: InputProjectionOptions): { mixed: InputProjectionOptions; chunks: number } | null {
    const rot = o.gate!.pending;
    const { n, K } = o;
    const fits =
      this.gateStep !== 'fused' &&
      this.writtenMix &&
      o.layers.length === 1 &&
      o.transform &&
      rot.transform &&
      K > MIX_CHUNK &&
      K <= UNROLLED_MIX_MAX_K &&
      rot.members.every((m) => m.n === n && m.K === K) &&
      (this.vectorWords(n) + (MIX_CHUNK * n) / K) * 4 <= this.dev.maxWorkgroupStorage &&
      this.finishesPending(o);
    if (!fits) return null;
    const mixed: InputProjectionOptions = {
      ...o,
      x: o.tmp,
      xStride: n,
      nIn: n,
      pre: o.ones,
      layers: o.layers.map((l) => ({ ...l, preOff: 0 })),
    };
    delete mixed.gate;
    delete mixed.input;
    return this.projectionWords(mixed) === null ? null : { mixed, chunks: Math.ceil(K / MIX_CHUNK) };
  }

  /** The gate step `o` in two launches where {@link Kernels.gateSplit} allows it, else null. */
  private gateSlices(o: InputProjectionOptions): Dispatch[] | null {
    const split = this.gateSplit(o);
    if (!split) return null;
    const rot = o.gate!.pending;
    const { n, K } = o;
    const P = n / K;
    const vw = this.vectorWorkgroup;
    const words = this.vectorWords(n);
    const p = this.pipeline(`gate_slice_${words}_${K}_${P}_${vw}_${mixSuffix(rot.transpose)}`, () =>
      gateSliceWgsl(words, K, P, vw, rot.transpose),
    );
    const members = gateMembers(rot, o.x, (o.input as { up: GPUBuffer }).up)!;
    const first = this.make(
      `gate slices n=${n} K=${K}`,
      p,
      [
        this.uniform(this.rotationFields(rot, members), 'gate rotation params'),
        this.uniform(
          [
            ['u32', o.nIn],
            ['u32', o.layers[0]!.preOff],
            ['u32', n],
            ['u32', 0],
          ],
          'gate slice params',
        ),
        rot.x,
        rot.post,
        rot.bias ?? o.dummy,
        o.pre,
        o.tmp,
      ],
      split.chunks,
    );
    return [first, ...this.inputStep(split.mixed, this.gateStep === 'chunked' ? 'chunks' : 'mix')];
  }

  /**
   * RoPE at `step.pos + r` on row r of `q` (in place, `heads` heads of `hd`) and of `k` (`kvHeads` heads), which is
   * stored with row r of `v` at that position of the caches `ck`, `cv` (see {@link ROPE_KV_WGSL}). With `qkNorm`
   * each head is RMS-normed first, in the same launch ({@link ropeKvNormWgsl}: one workgroup per head and row).
   */
  ropeKv(o: RopeKvOptions & { q: GPUBuffer; k: GPUBuffer; v: GPUBuffer }): Dispatch {
    checkHeadDim(o.hd);
    if (o.qkNorm)
      return this.make(
        'qknorm+rope+kv',
        this.pipeline(`rope_kv_norm_${o.hd}`, () => ropeKvNormWgsl(o.hd)),
        [o.step, this.ropeParams(o), o.cs, o.q, o.k, o.v, o.ck, o.cv, o.qkNorm.q, o.qkNorm.k],
        o.heads + o.kvHeads,
      );
    const p = this.pipeline('rope_kv', () => ROPE_KV_WGSL);
    return this.make(
      'rope+kv',
      p,
      [o.step, this.ropeParams(o), o.cs, o.q, o.k, o.v, o.ck, o.cv],
      Math.ceil(((o.heads + o.kvHeads) * o.hd) / 2 / WG),
    );
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
    const vw = this.vectorWorkgroup;
    const p = this.pipeline(`attention_${vw}`, () => attentionWgsl(vw));
    const u = this.attentionParams(o, o.capacity);
    return this.make('attention', p, [o.step, u, o.q, o.ck, o.cv, o.scores, o.out], o.heads);
  }

  /** The uniform of the attention kernels ({@link attentionWgsl}, {@link rotationAttentionWgsl}). */
  private attentionParams(
    o: { heads: number; kvHeads: number; hd: number },
    capacity: number,
    normEps?: number,
  ): GPUBuffer {
    return this.uniform(
      [
        ['u32', o.heads],
        ['u32', o.heads / o.kvHeads],
        ['u32', o.hd],
        ['u32', o.kvHeads * o.hd],
        ['u32', capacity],
        ['f32', 1 / Math.sqrt(o.hd)],
        // the per-head norms' epsilon (rotationAttentionWgsl with qkNorm)
        ...(normEps === undefined ? [] : [['f32', normEps] as UniformField]),
      ],
      'attention params',
    );
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

  /**
   * `out[r]` = the negative log-likelihood of token `targets[r]` (u32) under row r of the logits `x` (rows of `n`):
   * −log softmax(x_r)[targets[r]], in f32. Batched: one workgroup per row.
   */
  nll(x: GPUBuffer, targets: GPUBuffer, out: GPUBuffer, n: number): Dispatch {
    const p = this.pipeline('nll', () => NLL_WGSL);
    const u = this.uniform([['u32', n]], 'nll params');
    return this.make('nll', p, [u, x, targets, out], 1);
  }

  /**
   * Level `level` of the GPU's top-k ({@link topkLevelWgsl}) in `blocks` workgroups: from the logits `x` (row 0;
   * `mask` the tokens left out, `flags` the NaN flag) at level 0, else from the pairs `input` of the level before;
   * its pairs to `out`. `params` is the pass's uniform (k, the tokens read back, the vocabulary, whether the mask
   * applies, each level's input count), written before each pass. Runs once, whatever the row count.
   */
  topkLevel(
    o: { params: GPUBuffer; level: number; blocks: number; out: GPUBuffer } & (
      { x: GPUBuffer; mask: GPUBuffer; flags: GPUBuffer } | { input: GPUBuffer }
    ),
  ): Dispatch {
    const fromLogits = 'x' in o;
    const p = this.pipeline(fromLogits ? 'topk0' : 'topk', () => topkLevelWgsl(fromLogits));
    const lv = this.uniform([['u32', o.level]], `topk level ${o.level}`);
    const buffers = 'x' in o ? [o.params, lv, o.x, o.mask, o.out, o.flags] : [o.params, lv, o.input, o.out];
    return this.make(`topk ${o.level}`, p, buffers, o.blocks, false);
  }

  /**
   * The GPU's top-k for reading back ({@link TOPK_GATHER_WGSL}): the NaN flag, the last level's ids (`fin`) and
   * logits, and the logits of the tokens `seen` (row 0 of `x`), into `out`. Runs once.
   */
  topkGather(o: {
    params: GPUBuffer;
    fin: GPUBuffer;
    seen: GPUBuffer;
    x: GPUBuffer;
    flags: GPUBuffer;
    out: GPUBuffer;
  }): Dispatch {
    const p = this.pipeline('topk gather', () => TOPK_GATHER_WGSL);
    return this.make('topk gather', p, [o.params, o.fin, o.seen, o.x, o.flags, o.out], 1, false);
  }

  /** Release the uniform buffers created so far. */
  dispose(): void {
    for (const b of this.owned) b.destroy();
    this.owned.length = 0;
    this.pipelines.clear();
  }
}
