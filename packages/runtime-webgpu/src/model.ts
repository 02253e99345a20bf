import {
  assertObject,
  CalderaError,
  checkTokenIds,
  checkTokenArray,
  appliesRope,
  hasQkNorm,
  ropeAttentionFactor,
  ropeInvFreq,
  shownValue,
  throwIfAborted,
  type ModelConfig,
} from '@caldera/core';
import {
  bufferBytes,
  BufferUsage,
  checkDeviceAlive,
  deviceLostInfo,
  MAP_READ_MODE,
  scratchBuffer,
  storageBuffer,
  watchDeviceLost,
  type CalderaDevice,
} from './device.js';
import {
  ARGMAX_NAN_FLAG,
  encodeDispatches,
  Kernels,
  TOPK_MAX,
  TOPK_MAX_LEVELS,
  topkLevelBlocks,
  topkParams,
  type Dispatch,
  type GpuMatrix,
  type RowsPerLane,
  type GateStep,
  type CodeBatch,
  type Lanes,
  type RopeKvOptions,
  type RotateOptions,
} from './kernels/index.js';
import {
  bindPending,
  bindNormed,
  createLinearContext,
  GpuCalderaLinear,
  type GpuLinear,
  type LayerInput,
  type ScratchNeeds,
} from './linear.js';
import { checkCapacity, prefillThrough } from './prefill.js';
import {
  checkTuneOptions,
  KERNEL_CHOICE_KEYS,
  kernelChoiceOf,
  defaultTuningAxes,
  searchKernelChoices,
  submitSeconds,
  type Axis,
  type ChoiceRunner,
  type TuneOptions,
  type TuneReport,
} from './tune.js';
import { checkDeviceArgument } from './args.js';

/** One transformer block's weights on the GPU. */
export interface GpuBlockWeights {
  inputNorm: GPUBuffer;
  postAttnNorm: GPUBuffer;
  /**
   * Qwen3's per-head query and key RMSNorm weights (`self_attn.q_norm`/`k_norm`: `head_dim` f32 values each), applied
   * to every head of q and k before RoPE. Required where the config has them (`hasQkNorm`), refused elsewhere.
   */
  qNorm?: GPUBuffer;
  kNorm?: GPUBuffer;
  q: GpuLinear;
  k: GpuLinear;
  v: GpuLinear;
  o: GpuLinear;
  gate: GpuLinear;
  up: GpuLinear;
  down: GpuLinear;
}

/** All weights of a Llama-family model on the GPU. */
export interface GpuModelWeights {
  /** `[vocab, hidden]`, f32 or packed f16. */
  embed: GpuMatrix;
  blocks: GpuBlockWeights[];
  norm: GPUBuffer;
  /** LM head `[vocab, hidden]`; the same object as `embed` when tied. */
  head: GpuMatrix;
}

/** Options of {@link WebGpuModel}. */
export interface WebGpuModelOptions {
  /** KV-cache length in tokens, at most `config.maxPositions`. Default `min(config.maxPositions, 2048)`. */
  contextLength?: number;
  /** Threads per output row of the matrix–vector kernels, 1 or 32 (else `E_VALUE`); default by adapter (see {@link Kernels}). */
  lanes?: Lanes;
  /**
   * Largest rotation run in one workgroup, an integer of at least 16 or `Infinity` (else `E_VALUE`); default: what
   * workgroup memory holds.
   */
  maxLocalHadamard?: number;
  /**
   * Packed-f16 arithmetic for the E8P products in decode (see {@link Kernels.f16}); default: on when the device has
   * `shader-f16` and the kernels use 32 lanes per row. `false` keeps every kernel in f32; `true` on a device without
   * `shader-f16` or with one lane per row is `E_VALUE`.
   */
  f16?: boolean;
  /**
   * Most rows each lane of the E8P kernel computes in decode with 32 lanes per row, 1, 2 or 4 (see
   * {@link Kernels.rowsPerLane}); default: chosen per launch for the packed-f16 form, one for the f32 form. When set,
   * every launch takes the most its layers' rows allow up to it, however few workgroups that leaves.
   */
  rowsPerLane?: RowsPerLane;
  /**
   * Invocations of the kernels in which one workgroup computes a whole vector (RMSNorm, rotations, input steps,
   * attention): a power of two from 64 to the device's `maxWorkgroupInvocations` (else `E_VALUE`); default 256, 64 on
   * CPU fallback adapters. See {@link Kernels.vectorWorkgroup}.
   */
  vectorWorkgroup?: number;
  /**
   * The form of the gate step (the down layer's input step, which finishes the gate and up layers) where their
   * Hadamard mix has more than one chunk: 'fused' (one launch), 'split' or 'chunked' (two; else `E_VALUE`); default
   * 'fused'. The same logits to the bit with 'split', within f32 rounding with 'chunked'. See {@link Kernels.gateStep}.
   */
  gateStep?: GateStep;
  /**
   * Code groups per iteration of the E8P loops that batch their code loads (the f32 E8P kernel in decode, the input
   * steps' R̂ rows): 4, 8 or 16 (else `E_VALUE`); default 8. The same outputs to the bit. See
   * {@link Kernels.codeBatch}.
   */
  codeBatch?: CodeBatch;
  /**
   * Whether the rotation kernels write the `H_K` mix of orders 2 to 64 into the shader (true) or compute it from the
   * ±1 table in memory (false; else `E_VALUE`); default true, false on CPU fallback adapters, where the written-out mix
   * compiles about twice as slowly and runs no faster. The same outputs to the bit. See {@link Kernels.writtenMix}.
   */
  writtenMix?: boolean;
  /**
   * Prompt tokens run through the layers together in one pass (prefill batch); the activation buffers hold this many
   * rows. Default `min(32, contextLength)`; 1 makes prefill token by token.
   */
  prefillChunk?: number;
  /**
   * Whether `generate()` samples among a top k of at most {@link TOPK_MAX} (128) tokens from the k largest logits
   * found on the GPU ({@link WebGpuModel.stepTopK}: `1 + 2k` words read back, and the logits of the tokens the
   * repetition penalty changes) rather than from all the logits read back; the same tokens either way (a boolean,
   * else `E_VALUE`). Default true, false on CPU fallback adapters, where the GPU's sort costs more than reading the
   * logits back (on SwiftShader, a small model with a 32 000-token vocabulary sampled 4.96 tokens/s against 9.82).
   */
  topKOnGpu?: boolean;
}

/**
 * The options of {@link WebGpuModelOptions} that choose kernel forms: how the same model is computed, not what
 * (outputs within f32 rounding of each other; with `f16`, packed-f16 products). See {@link WebGpuModel.tuneKernels}.
 */
export type KernelChoice = Pick<
  WebGpuModelOptions,
  | 'lanes'
  | 'maxLocalHadamard'
  | 'f16'
  | 'rowsPerLane'
  | 'vectorWorkgroup'
  | 'gateStep'
  | 'codeBatch'
  | 'writtenMix'
>;

/** A config's sizes under the short names the model's buffers and launches use (`kw`: the k/v rows). */
function dimsOf(cfg: ModelConfig) {
  const { hiddenSize: d, intermediateSize: I, vocabSize: V, numHeads: H, numKvHeads: KV, headDim: hd } = cfg;
  return { d, I, V, H, KV, hd, kw: KV * hd };
}

type LinearContextOf = ReturnType<typeof createLinearContext>;

/**
 * What a model runs with one kernel choice: the kernels (pipelines and uniforms), the linear context over them
 * (scratch buffers, tables) and the launch lists recorded from them.
 */
interface Programs {
  kernels: Kernels;
  ctx: LinearContextOf;
  /**
   * Embedding and blocks (and the final norm when the last block's output rotation computes it); then `head`: the
   * final norm otherwise, LM head, argmax. One token (decode).
   */
  program: Dispatch[];
  head: Dispatch[];
  /** The final norm (unless computed in the program) and the LM head, then each row's NLL of its target. */
  score: Dispatch[];
  /** The same for batches of tokens, with row-tiled matrix kernels (prefill); the decode lists when the chunk is 1. */
  batchProgram: Dispatch[];
  batchHead: Dispatch[];
  batchScore: Dispatch[];
  /** The final norm (unless computed in the program), the LM head and the GPU's top-k, one token ({@link WebGpuModel.stepTopK}). */
  sample: Dispatch[];
}

/** Destroy what {@link Programs} created (its kernels' uniforms, the context's buffers); the model's stay. */
function disposePrograms(p: Programs | undefined): void {
  p?.ctx.dispose();
  p?.kernels.dispose();
}

/** The model's activation buffers (T rows each), KV caches and RoPE table, which every {@link Programs} uses. */
interface ModelBuffers {
  x: GPUBuffer;
  x2: GPUBuffer;
  h: GPUBuffer;
  q: GPUBuffer;
  k: GPUBuffer;
  v: GPUBuffer;
  att: GPUBuffer;
  g: GPUBuffer;
  u: GPUBuffer;
  scores: GPUBuffer;
  caches: { k: GPUBuffer; v: GPUBuffer }[];
  cs: GPUBuffer;
  /** The table of SmolLM3's NoPE blocks (cos 1, sin 0: the rotation leaves q and k as they are), or null. */
  csNope: GPUBuffer | null;
  topk: TopKBuffers;
}

/**
 * The GPU's top-k ({@link WebGpuModel.stepTopK}): its per-pass uniform (k, tokens left out, vocabulary, whether the
 * mask applies, each level's input count), the mask and ids of the tokens left out, the two buffers of pairs the
 * levels write in turn, the NaN flag and the result to read back.
 */
interface TopKBuffers {
  params: GPUBuffer;
  mask: GPUBuffer;
  seen: GPUBuffer;
  pairs: readonly [GPUBuffer, GPUBuffer];
  flags: GPUBuffer;
  out: GPUBuffer;
}

/** What {@link WebGpuModel.stepTopK} returns. */
export interface TopKResult {
  /** The ids of the k largest logits of the tokens not left out, in rank order (higher first, ties by lower id). */
  ids: Uint32Array;
  /** Their logits. */
  values: Float32Array;
  /** The logits of the tokens left out (`exclude`), in its order. */
  excluded: Float32Array;
}

/** The `E_VALUE` of a pass whose logits at `position` hold a NaN (the argmax's and the top-k's flag). */
function nanLogits(position: number): CalderaError {
  return new CalderaError(
    'E_VALUE',
    `WebGpuModel: the model's logits at position ${position} are NaN: its weights overflow f32 when applied or hold ` +
      'non-finite values',
  );
}

/** `E_VALUE` unless {@link WebGpuModelOptions.topKOnGpu} is absent or a boolean. */
export function checkTopKOnGpu(v: unknown): asserts v is boolean | undefined {
  if (v !== undefined && typeof v !== 'boolean')
    throw new CalderaError('E_VALUE', `topKOnGpu must be a boolean, got ${shownValue(v)}`);
}

/**
 * The KV-cache length of a model with these options (see {@link WebGpuModelOptions.contextLength}): `E_VALUE` when it is
 * not a positive integer or exceeds the config's `maxPositions` (positions the model never saw, or past its sliding
 * window; runtime-node refuses them too).
 */
export function contextLengthOf(options: WebGpuModelOptions, config: ModelConfig): number {
  const cap = options.contextLength ?? Math.min(config.maxPositions, 2048);
  if (!Number.isInteger(cap) || cap < 1)
    throw new CalderaError('E_VALUE', `contextLength must be a positive integer, got ${shownValue(cap)}`);
  if (cap > config.maxPositions)
    throw new CalderaError(
      'E_VALUE',
      `contextLength ${cap} exceeds the model's max positions (${config.maxPositions}: max_position_embeddings (YaRN's factor × original_max_position_embeddings when longer), or sliding_window when smaller)`,
    );
  return cap;
}

/** The prefill batch a model with these options uses (see {@link WebGpuModelOptions.prefillChunk}). */
export function prefillChunkOf(options: WebGpuModelOptions, contextLength: number): number {
  const c = options.prefillChunk ?? 32;
  if (!Number.isInteger(c) || c < 1)
    throw new CalderaError('E_VALUE', `prefillChunk must be a positive integer, got ${c}`);
  return Math.min(c, contextLength);
}

/** Activation rows a weight read serves in the prefill form of the matrix kernels (see {@link Kernels.matvec}). */
export const PREFILL_ROW_TILE = 8;

/**
 * Rows the activation buffers of a model with these options hold: the prefill batch rounded up to the row tile
 * (row-tiled kernels compute whole tiles; the rows past the batch are scratch).
 */
export function activationRowsOf(options: WebGpuModelOptions, contextLength: number): number {
  const T = prefillChunkOf(options, contextLength);
  return T === 1 ? 1 : Math.ceil(T / PREFILL_ROW_TILE) * PREFILL_ROW_TILE;
}

export { ropeInvFreq } from '@caldera/core';

/**
 * cos/sin pairs `[positions, headDim/2, 2]` computed in f64, times YaRN's attention factor ({@link ropeAttentionFactor};
 * 1 without YaRN) and rounded to f32 (as the CPU runtime's values are).
 */
export function ropeTable(cfg: ModelConfig, positions: number): Float32Array {
  const inv = ropeInvFreq(cfg);
  const scale = ropeAttentionFactor(cfg);
  const half = inv.length;
  const t = new Float32Array(positions * half * 2);
  for (let p = 0; p < positions; p++)
    for (let i = 0; i < half; i++) {
      const a = p * inv[i]!;
      t[(p * half + i) * 2] = Math.cos(a) * scale;
      t[(p * half + i) * 2 + 1] = Math.sin(a) * scale;
    }
  return t;
}

/**
 * The table {@link ropeTable}'s kernels read for a block without RoPE (SmolLM3's NoPE layers): every pair (1, 0), an
 * identity rotation at every position.
 */
function nopeTable(cfg: ModelConfig, positions: number): Float32Array {
  const t = new Float32Array(positions * cfg.headDim);
  for (let i = 0; i < t.length; i += 2) t[i] = 1;
  return t;
}

/**
 * An operation's hold on a model's sequence (see {@link WebGpuModel.claim}): run each of its passes through
 * {@link pass}.
 */
export interface SequenceClaim {
  /**
   * Run `op` (a step, prefill batch, reset or truncate of the claimed model): `E_VALUE` instead when anything else
   * changed the model's sequence since the previous pass of this claim (or since the claim, before the first).
   */
  pass<T>(op: () => T): T;
}

/**
 * A pass submitted to the GPU (see `WebGpuModel.submitPass`). `serial` numbers the model's passes; `start` is the
 * position of its first token and `end` the sequence's length with it; `staging` is the mappable buffer its result
 * was copied into (none for output `'none'`), `bytes` its size.
 */
interface SubmittedPass {
  readonly serial: number;
  readonly start: number;
  readonly end: number;
  readonly output: PassOutput;
  readonly staging: GPUBuffer | null;
  readonly bytes: number;
}

/** What {@link WebGpuModel.step} returns: nothing, the greedy token, or the logits. */
export type StepOutput = 'none' | 'argmax' | 'logits';

/** What {@link WebGpuModel.stepBatch} returns: {@link StepOutput} for the last token, or `'all'` logits. */
export type BatchOutput = StepOutput | 'all';

/**
 * What a pass computes and copies for reading back: a batch's output, (`'nll'`) each row's NLL of its target, or
 * (`'topk'`) the GPU's top-k of one token's logits.
 */
type PassOutput = BatchOutput | 'nll' | 'topk';

/** The integer fields of a parsed {@link ModelConfig} that `planMemory` and the model read. */
const CONFIG_SIZES = [
  'numLayers',
  'hiddenSize',
  'intermediateSize',
  'vocabSize',
  'numHeads',
  'numKvHeads',
  'headDim',
  'maxPositions',
] as const;

/**
 * `E_VALUE` unless `config` is a parsed {@link ModelConfig} (as `parseModelConfig` returns): a raw `config.json` object
 * (`hidden_size`, not `hiddenSize`) would plan NaN bytes. Internal (not exported from the package's entry).
 */
export function checkModelConfig(config: unknown, fn: string): asserts config is ModelConfig {
  assertObject(config, fn, 'config', 'a ModelConfig (parseModelConfig of config.json)');
  for (const k of CONFIG_SIZES) {
    const v = (config as Record<string, unknown>)[k];
    if (!Number.isInteger(v) || (v as number) < 1)
      throw new CalderaError(
        'E_VALUE',
        `${fn}: config must be a ModelConfig (parseModelConfig of config.json): its ${k} must be a positive integer, ` +
          `got ${shownValue(v)}`,
      );
  }
}

/**
 * Block `b`'s query and key norm weights where `config` has them (Qwen3, `hasQkNorm`), else null: `E_MISSING` when
 * such a model's block lacks one, `E_SHAPE` when one is not a buffer of `head_dim` f32 values, `E_VALUE` when another
 * model's block has them (transformers would not apply them), as runtime-node's model checks its blocks.
 */
function qkNormOf(config: ModelConfig, w: GpuBlockWeights, b: number): { q: GPUBuffer; k: GPUBuffer } | null {
  const given = w?.qNorm !== undefined || w?.kNorm !== undefined;
  if (!hasQkNorm(config)) {
    if (given)
      throw new CalderaError(
        'E_VALUE',
        `WebGpuModel: block ${b} has query/key norm weights (qNorm, kNorm), which ${config.architecture} does not apply`,
      );
    return null;
  }
  if (!w?.qNorm || !w.kNorm)
    throw new CalderaError(
      'E_MISSING',
      `WebGpuModel: block ${b} lacks ${!w.qNorm ? 'qNorm' : 'kNorm'}: ${config.architecture} normalizes each head's ` +
        'query and key (self_attn.q_norm, self_attn.k_norm)',
    );
  const bytes = bufferBytes(config.headDim * 4);
  for (const [name, n] of [
    ['qNorm', w.qNorm],
    ['kNorm', w.kNorm],
  ] as const)
    if ((n as unknown) === null || typeof n !== 'object' || n.size !== bytes)
      throw new CalderaError(
        'E_SHAPE',
        `WebGpuModel: block ${b}: ${name} must be a buffer of head_dim (${config.headDim}) f32 values, ${bytes} ` +
          `bytes, got ${typeof n === 'object' && n !== null ? `${String(n.size)} bytes` : shownValue(n)}`,
      );
  return { q: w.qNorm, k: w.kNorm };
}

/**
 * A Llama-family causal LM on a WebGPU device. The whole step — embedding, every block, final norm, LM head and
 * argmax — is recorded once at construction as a list of kernel launches over fixed buffers and replayed into one
 * compute pass per batch of tokens: one token when decoding, up to {@link prefillChunk} prompt tokens as a matrix
 * of activation rows when prefilling (every kernel runs once per row; attention is causal within the batch). Only
 * the token ids and a 16-byte uniform (position, length) change between passes. The KV cache lives on the GPU. One
 * sequence at a time: {@link reset} starts a new one.
 *
 * An explicit handle: {@link dispose} frees every GPU buffer (the device stays the caller's). `weights` become the
 * model's once it is constructed; a constructor that fails (`E_SHAPE` for weights that do not match the config,
 * `E_DEVICE` for a buffer the device cannot hold, `E_VALUE` for a `dev`, `config` or `weights` that is not an object)
 * destroys the buffers it allocated before rethrowing and leaves `weights` to the caller (the loaders destroy them).
 */
export class WebGpuModel {
  readonly contextLength: number;
  /** Bytes of weights on the GPU (codes, factors, dense matrices, norms). */
  readonly weightBytes: number;
  /** Bytes of the KV cache and activations on the GPU. */
  readonly cacheBytes: number;
  /** Tokens per pass at most (prefill batch). */
  readonly prefillChunk: number;
  /** Whether `generate()` samples a top k from the GPU's (see {@link WebGpuModelOptions.topKOnGpu}). */
  readonly topKOnGpu: boolean;
  /** The kernels, linear context and launch lists in use (see {@link Programs}); replaced by {@link tuneKernels}. */
  private programs: Programs;
  /** The activation buffers, KV caches and RoPE table the launch lists read and write. */
  private readonly bufs: ModelBuffers;
  /** Scratch the linear context needs (from the weights), and activation rows of every buffer. */
  private readonly needs: ScratchNeeds;
  private readonly rows: number;
  private readonly tokensBuf: GPUBuffer;
  /** Per row of a scored pass: the token whose NLL it gives (u32), and that NLL (f32). */
  private readonly targetsBuf: GPUBuffer;
  private readonly nllBuf: GPUBuffer;
  private readonly readNll: GPUBuffer;
  private readonly owned: GPUBuffer[] = [];
  private readonly stepBuf: GPUBuffer;
  private readonly logitsBuf: GPUBuffer;
  private readonly argmaxBuf: GPUBuffer;
  private readonly readLogits: GPUBuffer;
  /**
   * Two staging buffers for the greedy token, taken in turn by pass serial: one read back while the GPU's next pass
   * writes the other ({@link decodeGreedy}).
   */
  private readonly readArgmax: readonly [GPUBuffer, GPUBuffer];
  /** Staging for {@link stepTopK}'s result. */
  private readonly readTopK: GPUBuffer;
  /** The serial of the pass that last copied its result into each staging buffer: a read finds its own there. */
  private readonly stagedBy = new Map<GPUBuffer, number>();
  /** Passes submitted so far (the next pass's serial is one more). */
  private passes = 0;
  /**
   * The last pass submitted: when it computed a greedy token and ends where the sequence does (not cut back since, nor
   * a pass run ahead and left behind), the pass whose argmax the next `submitPass('previous', …)` takes as its token.
   */
  private lastPass: SubmittedPass | null = null;
  private pos = 0;
  /** Token ids at positions [0, pos). */
  private readonly history: number[] = [];
  /** Changes to the sequence so far (each pass and each truncate), for {@link claim}. */
  private revision = 0;
  private busy = false;
  private disposed = false;

  constructor(
    readonly dev: CalderaDevice,
    readonly config: ModelConfig,
    readonly weights: GpuModelWeights,
    options: WebGpuModelOptions = {},
  ) {
    checkDeviceArgument(dev, 'WebGpuModel');
    checkModelConfig(config, 'WebGpuModel');
    assertObject(weights, 'WebGpuModel', 'weights');
    options ??= {}; // from JavaScript: null options are none
    const cfg = config;
    watchDeviceLost(dev.device);
    const { d, I, V, H, hd, kw } = dimsOf(cfg);
    if (!Array.isArray(weights.blocks))
      throw new CalderaError(
        'E_VALUE',
        `WebGpuModel: weights must be ModelWeights (blocks, embed, head, norm), got blocks ${shownValue(weights.blocks)}`,
      );
    // an embedding or head of another vocabulary read past its rows (zeros) or left tokens unreachable, silently
    for (const [what, m] of [
      ['embedding', weights.embed],
      ['LM head', weights.head],
    ] as const)
      if (m?.rows !== V || m.cols !== d)
        throw new CalderaError(
          'E_SHAPE',
          `WebGpuModel: the ${what} is ${m?.rows}×${m?.cols}, the config needs ${V}×${d} (vocabSize × hiddenSize)`,
        );
    if (weights.blocks.length !== cfg.numLayers)
      throw new CalderaError(
        'E_SHAPE',
        `model has ${weights.blocks.length} blocks, config says ${cfg.numLayers}`,
      );
    weights.blocks.forEach((w, b) => qkNormOf(cfg, w, b));
    const cap = contextLengthOf(options, cfg);
    this.contextLength = cap;
    this.prefillChunk = prefillChunkOf(options, cap);
    checkTopKOnGpu(options.topKOnGpu);
    this.topKOnGpu = options.topKOnGpu ?? !dev.fallbackAdapter;
    const T = activationRowsOf(options, cap);
    const choice = kernelChoiceOf(options);
    // everything allocated from here on is destroyed again when construction fails (the weights stay the caller's)
    try {
      const buf = (n: number, label: string) => {
        const b = scratchBuffer(dev, n * 4, label);
        this.owned.push(b);
        return b;
      };
      // activations: T rows each
      // the residual stream, in x or x2: a step that finishes a residual branch's output rotation in the next layers'
      // input step writes the sum to the other one (see bindNormed; only one-row decode steps do, but x2 has T rows
      // like every activation buffer, so that any recorded program may use it)
      const x = buf(T * d, 'x');
      const x2 = buf(T * d, 'x2');
      const h = buf(T * d, 'h');
      const q = buf(T * H * hd, 'q');
      // k and v are written only where RoPE and the KV store run as a launch of their own (dense or ungrouped q/k/v)
      const k = buf(T * kw, 'k');
      const v = buf(T * kw, 'v');
      const att = buf(T * H * hd, 'att');
      const g = buf(T * I, 'gate');
      const u = buf(T * I, 'up');
      const scores = buf(T * H * cap, 'scores');
      this.logitsBuf = buf(T * V, 'logits');
      this.argmaxBuf = buf(4, 'argmax');
      this.tokensBuf = buf(Math.max(4, T), 'tokens');
      this.targetsBuf = buf(Math.max(4, T), 'targets');
      this.nllBuf = buf(Math.max(4, T), 'nll');
      const caches = weights.blocks.map((_, b) => ({
        k: buf(cap * kw, `cacheK${b}`),
        v: buf(cap * kw, `cacheV${b}`),
      }));
      this.cacheBytes = this.owned.reduce((s, b) => s + b.size, 0);
      this.stepBuf = dev.device.createBuffer({
        label: 'step',
        size: 16,
        usage: BufferUsage.UNIFORM | BufferUsage.COPY_DST,
      });
      this.owned.push(this.stepBuf);
      const cs = storageBuffer(dev, ropeTable(cfg, cap), 'rope table');
      this.owned.push(cs);
      // SmolLM3's blocks without RoPE run the same kernels on a table of identity rotations (exact: x·1 − y·0 = x)
      const csNope = cfg.nopeLayers?.length
        ? storageBuffer(dev, nopeTable(cfg, cap), 'rope table (blocks without RoPE)')
        : null;
      if (csNope) this.owned.push(csNope);
      this.readLogits = dev.device.createBuffer({
        size: T * V * 4,
        usage: BufferUsage.MAP_READ | BufferUsage.COPY_DST,
      });
      this.owned.push(this.readLogits);
      this.readNll = dev.device.createBuffer({
        label: 'read nll',
        size: Math.max(4, T) * 4,
        usage: BufferUsage.MAP_READ | BufferUsage.COPY_DST,
      });
      this.owned.push(this.readNll);
      const argmaxStaging = (i: number) =>
        dev.device.createBuffer({
          label: `read argmax ${i}`,
          size: 16,
          usage: BufferUsage.MAP_READ | BufferUsage.COPY_DST,
        });
      this.readArgmax = [argmaxStaging(0), argmaxStaging(1)];
      this.owned.push(...this.readArgmax);
      // the GPU's top-k: the levels' pairs for TOPK_MAX, the result for TOPK_MAX and as many tokens left out as fit
      // the cache
      const topkOutBytes = (1 + 2 * TOPK_MAX + cap) * 4;
      const topkPairs = topkLevelBlocks(V)[0]! * TOPK_MAX * 2; // words: level 0's (key, id) pairs, the most of any level
      const topk: TopKBuffers = {
        params: dev.device.createBuffer({
          label: 'topk params',
          size: (4 + TOPK_MAX_LEVELS) * 4,
          usage: BufferUsage.UNIFORM | BufferUsage.COPY_DST,
        }),
        mask: buf(Math.ceil(V / 32), 'topk mask'),
        seen: buf(cap, 'topk left out'),
        pairs: [buf(topkPairs, 'topk pairs 0'), buf(topkPairs, 'topk pairs 1')],
        flags: buf(4, 'topk flags'),
        out: buf(topkOutBytes / 4, 'topk out'),
      };
      this.owned.push(topk.params);
      this.readTopK = dev.device.createBuffer({
        label: 'read topk',
        size: topkOutBytes,
        usage: BufferUsage.MAP_READ | BufferUsage.COPY_DST,
      });
      this.owned.push(this.readTopK);

      const needs: ScratchNeeds = { rotIn: 4, rotOut: 4, z: 4, ones: 4 };
      for (const blk of weights.blocks)
        for (const lin of [blk.q, blk.k, blk.v, blk.o, blk.gate, blk.up, blk.down])
          if (lin instanceof GpuCalderaLinear)
            for (const key of Object.keys(needs) as (keyof ScratchNeeds)[])
              needs[key] = Math.max(needs[key], lin.needs[key]);
      this.needs = needs;
      this.rows = T;
      this.bufs = { x, x2, h, q, k, v, att, g, u, scores, caches, cs, csNope, topk };
      this.programs = this.record(choice);

      let wb = weights.embed.buffer.size + weights.norm.size;
      if (weights.head !== weights.embed) wb += weights.head.buffer.size;
      for (const blk of weights.blocks) {
        wb += blk.inputNorm.size + blk.postAttnNorm.size + (blk.qNorm?.size ?? 0) + (blk.kNorm?.size ?? 0);
        for (const lin of [blk.q, blk.k, blk.v, blk.o, blk.gate, blk.up, blk.down]) wb += lin.gpuBytes;
      }
      this.weightBytes = wb;
    } catch (e) {
      this.destroyOwn();
      throw e;
    }
  }

  /**
   * Kernels of `choice` (`E_VALUE` naming an option outside its values), the linear context over them and the launch
   * lists of a token and of a batch, over the model's buffers and weights (`E_SHAPE` for a layer whose shape the
   * config does not give). A failure destroys what it created.
   */
  private record(choice: KernelChoice): Programs {
    const { dev, config: cfg, weights } = this;
    const { d, I, V, H, KV, hd, kw } = dimsOf(cfg);
    const cap = this.contextLength;
    const { x, x2, h, q, k, v, att, g, u, scores, caches, cs, csNope, topk } = this.bufs;
    // checked by Kernels (E_VALUE naming the option)
    const K = new Kernels(dev, choice);
    let made: LinearContextOf | undefined;
    try {
      const ctx = (made = createLinearContext(dev, K, this.needs, this.rows));
      const check = (lin: GpuLinear, name: string, n: number, m: number) => {
        if (lin.inFeatures !== n || lin.outFeatures !== m)
          throw new CalderaError(
            'E_SHAPE',
            `${name}: layer is ${lin.outFeatures}×${lin.inFeatures}, the config needs ${m}×${n}`,
          );
      };
      // with `sampled`, the top-k list too (decode only)
      const lists = (
        tile: number,
        sampled = false,
      ): { program: Dispatch[]; head: Dispatch[]; score: Dispatch[]; sample: Dispatch[] } => {
        const p: Dispatch[] = [K.embed(this.tokensBuf, weights.embed, x)];
        // where the residual stream is; the output rotation of the last residual branch, and of gate and up, when still
        // pending (finished by the next layers' input step when they can, else run first)
        let res = x;
        let pending: RotateOptions | null = null;
        let gatePending: RotateOptions | null = null;
        // the layers after an RMSNorm of the residual stream: each RMSNorm (and the SwiGLU) is computed by the next
        // layers' input rotation when they are CALDERA layers
        const normedLayers = (
          weight: GPUBuffer,
          layers: { layer: GpuLinear; out: GPUBuffer }[],
          options: { then?: RopeKvOptions; defer?: boolean } = {},
        ): Dispatch[] => {
          const r = bindNormed(
            ctx,
            { pending, x: res, out: res === x ? x2 : x, norm: { weight, eps: cfg.rmsNormEps, scratch: h } },
            layers,
            { tile, ...options },
          );
          pending = null;
          res = r.residual;
          if (gatePending)
            throw new CalderaError('E_VALUE', 'model: gate and up left their rotation unfinished');
          gatePending = r.pending;
          return r.dispatches;
        };
        // a residual branch's last layer: out += layer(input), its output rotation left pending when it is CALDERA
        const branchEnd = (input: GPUBuffer | LayerInput, layer: GpuLinear): Dispatch[] => {
          const r = bindPending(ctx, input, layer, res, { tile, gate: gatePending });
          gatePending = null;
          pending = r.pending;
          return r.dispatches;
        };
        weights.blocks.forEach((w, b) => {
          const name = `model.layers.${b}`;
          check(w.q, `${name}.self_attn.q_proj`, d, H * hd);
          check(w.k, `${name}.self_attn.k_proj`, d, kw);
          check(w.v, `${name}.self_attn.v_proj`, d, kw);
          check(w.o, `${name}.self_attn.o_proj`, H * hd, d);
          check(w.gate, `${name}.mlp.gate_proj`, d, I);
          check(w.up, `${name}.mlp.up_proj`, d, I);
          check(w.down, `${name}.mlp.down_proj`, I, d);
          const qkNorm = qkNormOf(cfg, w, b);
          p.push(
            ...normedLayers(
              w.inputNorm,
              [
                { layer: w.q, out: q },
                { layer: w.k, out: k },
                { layer: w.v, out: v },
              ],
              {
                // RoPE, the KV store and attention (in q/k/v's output rotation when they can)
                then: {
                  step: this.stepBuf,
                  cs: appliesRope(cfg, b) ? cs : csNope!,
                  ck: caches[b]!.k,
                  cv: caches[b]!.v,
                  heads: H,
                  kvHeads: KV,
                  hd,
                  attention: { scores, out: att, capacity: cap },
                  // Qwen3: each head of q and k RMS-normed before RoPE, in the launch that applies RoPE
                  ...(qkNorm ? { qkNorm: { ...qkNorm, eps: cfg.rmsNormEps } } : {}),
                },
              },
            ),
          );
          p.push(...branchEnd(att, w.o));
          p.push(
            ...normedLayers(
              w.postAttnNorm,
              [
                { layer: w.gate, out: g },
                { layer: w.up, out: u },
              ],
              { defer: true },
            ),
          );
          // the SwiGLU is computed by down_proj's input rotation when it is a CALDERA layer (in place over g else),
          // which also finishes gate and up's output rotation when it can
          p.push(...branchEnd({ x: g, compute: { kind: 'swiglu', up: u } }, w.down));
        });
        // the final RMSNorm, in the last residual branch's output rotation when that is pending
        const finalNorm = { weight: weights.norm, eps: cfg.rmsNormEps, out: h };
        if (pending) p.push(...K.rotateNorm(pending, finalNorm));
        const logits = [
          ...(pending ? [] : [K.rmsNorm(res, weights.norm, h, d, cfg.rmsNormEps)]),
          K.matvec(weights.head, h, this.logitsBuf, {
            bias: null,
            accumulate: false,
            dummy: ctx.dummy,
            tile,
          }),
        ];
        // the top-k's levels for TOPK_MAX (a smaller k needs no more; see stepTopK), from row 0 of the logits
        const blocks = sampled ? topkLevelBlocks(V) : [];
        const levels = blocks.map((b, level) =>
          level === 0
            ? K.topkLevel({
                params: topk.params,
                level,
                blocks: b,
                out: topk.pairs[0],
                x: this.logitsBuf,
                mask: topk.mask,
                flags: topk.flags,
              })
            : K.topkLevel({
                params: topk.params,
                level,
                blocks: b,
                out: topk.pairs[level % 2]!,
                input: topk.pairs[(level + 1) % 2]!,
              }),
        );
        return {
          program: p,
          head: [...logits, K.argmax(this.logitsBuf, this.argmaxBuf, V, this.stepBuf)],
          score: [...logits, K.nll(this.logitsBuf, this.targetsBuf, this.nllBuf, V)],
          sample: !sampled
            ? []
            : [
                ...logits,
                ...levels,
                K.topkGather({
                  params: topk.params,
                  fin: topk.pairs[(blocks.length - 1) % 2]!,
                  seen: topk.seen,
                  x: this.logitsBuf,
                  flags: topk.flags,
                  out: topk.out,
                }),
              ],
        };
      };
      const one = lists(1, true);
      const batch = this.prefillChunk > 1 ? lists(Math.min(PREFILL_ROW_TILE, this.rows)) : one;
      return {
        kernels: K,
        ctx,
        ...one,
        batchProgram: batch.program,
        batchHead: batch.head,
        batchScore: batch.score,
      };
    } catch (e) {
      made?.dispose();
      K.dispose();
      throw e;
    }
  }

  /** Tokens in the KV cache (the position of the next token). */
  get length(): number {
    return this.pos;
  }

  /**
   * The token ids in the KV cache, in position order: a copy (the model's own array, passed back as a prompt, was cut
   * by `generate`'s truncation while it was read, and its last token dropped).
   */
  get tokens(): readonly number[] {
    return this.history.slice();
  }

  /** Kernel launches per token. */
  get dispatchesPerToken(): number {
    return this.programs.program.length + this.programs.head.length;
  }

  /** What each of a token's kernel launches does (their labels, in order; e.g. `e8p 768x256 k=8 f16`). */
  get launchLabels(): readonly string[] {
    return [...this.programs.program, ...this.programs.head].map((d) => d.label);
  }

  /** Whether decoding computes E8P products in packed f16 (see {@link WebGpuModelOptions.f16}) in any launch. */
  get f16Products(): boolean {
    return this.programs.program.some((d) => d.f16Products === true);
  }

  /**
   * The kernel choice this model runs, every option resolved (what the defaults chose where the loader's options left
   * it unset; `rowsPerLane` only when set): JSON, which the loaders take as options.
   */
  get kernelChoice(): KernelChoice {
    // the kernels' resolved options go by the same names (rowsPerLane null when unset)
    const k = this.programs.kernels;
    const out: Record<string, unknown> = {};
    for (const key of KERNEL_CHOICE_KEYS) if (k[key] !== null) out[key] = k[key];
    return out as KernelChoice;
  }

  /**
   * Compiles the pipelines of the model's kernels now rather than each on its first use: all at once in the background
   * (in a browser, by default) or one after another (in Node), as the device's `asyncCompile` says. The loaders call it
   * before they resolve (and {@link tuneKernels} for each candidate); a model constructed directly may. `E_VALUE` after
   * {@link dispose}; `E_DEVICE` naming a kernel that fails to compile.
   */
  async compile(): Promise<void> {
    this.checkNotDisposed();
    await this.programs.kernels.compile();
  }

  /**
   * Time kernel choices on this device and keep the fastest: see {@link TuneOptions} (default: a coordinate search over
   * lanes per row, the one-workgroup kernels' invocations, rows per lane, the gate step's form, the code loads per
   * batch, the written-out or table mix and the global-memory rotation for the widest vectors, from the model's
   * choice). Each candidate's programs are built over the model's weights and buffers (no reload), run one decode step
   * whose logits must agree with the model's within 1 % of their scale (kernel choices reorder f32 sums, about 1e-6 of
   * the scale; packed-f16 products about 1e-3; a kernel the device miscompiles or fails, far more) with no WebGPU
   * error, and are timed in alternation with the best so far: the GPU time of decode steps submitted together at the
   * next position (the host's share is the same for every choice). Returns what it found; the model runs
   * {@link TuneReport.choice} from then on, its sequence unchanged (the timed steps write only the next position's keys
   * and values, which the next token's pass overwrites; an operation suspended meanwhile, such as a generation, fails
   * at its next token as after any other call). Pass the choice to the loader next time to skip tuning. `E_VALUE` for
   * options outside their values, while a step runs, or when the KV cache is full; `E_ABORTED` (the model keeping its
   * choice) when `signal` fires; `E_DEVICE` when the device is lost.
   */
  async tuneKernels(options: TuneOptions = {}): Promise<TuneReport> {
    options ??= {}; // from JavaScript: null options are none
    this.checkIdle('tuneKernels');
    checkDeviceAlive(this.dev, 'WebGpuModel');
    checkTuneOptions(options, this.dev);
    if (this.pos >= this.contextLength)
      throw new CalderaError(
        'E_VALUE',
        `tuneKernels: the KV cache is full (${this.contextLength} tokens); it times steps at the next position: ` +
          'truncate() first',
      );
    const dev = this.dev.device;
    const V = this.config.vocabSize;
    this.busy = true;
    this.revision++;
    this.lastPass = null;
    this.stagedBy.delete(this.readLogits);
    try {
      dev.queue.writeBuffer(this.tokensBuf, 0, Uint32Array.of(this.history[this.pos - 1] ?? 0));
      dev.queue.writeBuffer(this.stepBuf, 0, Uint32Array.of(this.pos, this.pos + 1, 0, 0));
      const step = (p: Programs) => [...p.program, ...p.head];
      const stepLogits = async (p: Programs): Promise<Float32Array> => {
        const enc = dev.createCommandEncoder();
        encodeDispatches(enc, step(p));
        enc.copyBufferToBuffer(this.logitsBuf, 0, this.readLogits, 0, V * 4);
        dev.queue.submit([enc.finish()]);
        return new Float32Array(await this.readStaging(this.readLogits, V * 4));
      };
      const reference = await stepLogits(this.programs);
      const scale = reference.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      const scopes = ['validation', 'out-of-memory', 'internal'] as const;
      // dispose() during the search ends it (it built and timed every candidate on destroyed buffers, resolved with
      // nonsense timings, and could install a candidate's programs on the disposed model, never to be freed)
      const disposedMeanwhile = () =>
        new CalderaError('E_VALUE', 'WebGpuModel: disposed while its kernels were tuned');
      const runner: ChoiceRunner<Programs> = {
        build: async (choice) => {
          if (this.disposed) throw disposedMeanwhile();
          for (const scope of scopes) dev.pushErrorScope(scope);
          let programs: Programs | undefined;
          let why: string | null = null;
          try {
            programs = this.record(choice);
            await programs.kernels.compile();
            const logits = await stepLogits(programs);
            let diff = 0;
            for (let i = 0; i < V; i++) diff = Math.max(diff, Math.abs(logits[i]! - reference[i]!));
            // NaN compares false: a NaN logit is a disagreement too
            if (!(diff <= 0.01 * scale))
              why = `its logits differ from the model's by ${diff.toPrecision(3)} (scale ${scale.toPrecision(3)})`;
          } catch (e) {
            why = (e as Error).message;
          }
          for (const _ of scopes) {
            const error = await dev.popErrorScope();
            if (error) why ??= `WebGPU error: ${error.message}`;
          }
          // a lost device ends the search (E_DEVICE), this candidate's buffers destroyed first like a rejected one's
          let lost: unknown = null;
          try {
            checkDeviceAlive(this.dev, 'WebGpuModel');
          } catch (e) {
            lost = e;
          }
          if (why !== null || lost !== null || this.disposed) disposePrograms(programs);
          if (lost !== null) throw lost;
          if (this.disposed) throw disposedMeanwhile();
          return why === null ? programs! : { rejected: why };
        },
        time: async (p, steps) => {
          if (this.disposed) throw disposedMeanwhile();
          const seconds = await submitSeconds(this.dev, step(p), steps);
          if (this.disposed) throw disposedMeanwhile();
          return seconds;
        },
        labels: (p) => step(p).map((d) => d.label),
        dispose: disposePrograms,
      };
      const axes: Axis[] = options.candidates
        ? [{ name: 'candidates', candidates: () => [...options.candidates!] }]
        : defaultTuningAxes(this.dev, this.needs.ones);
      const start = { choice: this.kernelChoice, programs: this.programs };
      const { programs, report } = await searchKernelChoices(runner, start, axes, options);
      if (this.disposed) {
        if (programs !== this.programs) disposePrograms(programs);
        throw disposedMeanwhile();
      }
      if (programs !== this.programs) {
        const old = this.programs;
        this.programs = programs;
        disposePrograms(old);
      }
      return report;
    } finally {
      this.busy = false;
    }
  }

  /** Forget the sequence: the next token is at position 0. */
  reset(): void {
    this.truncate(0);
  }

  /**
   * Keep the first `length` tokens of the sequence and forget the rest: the next token is at position `length`.
   * The cached keys and values of those tokens depend on nothing after them, so they stay valid.
   */
  truncate(length: number): void {
    this.checkIdle('truncate');
    if (!Number.isInteger(length) || length < 0 || length > this.pos)
      throw new CalderaError(
        'E_VALUE',
        `truncate: length must be an integer in [0, ${this.pos}], got ${length}`,
      );
    this.pos = length;
    this.history.length = length;
    this.revision++;
  }

  /**
   * Claim the sequence for an operation that runs several passes with awaits between them ({@link generate},
   * {@link perplexity}, {@link prefill}, {@link forward}). A model holds one sequence: when another call changes it
   * while the operation is suspended (a second `generate()` or `perplexity()` on this model, a step, `reset()` or
   * `truncate()`), the operation's next pass fails with `E_VALUE` instead of continuing from the other call's cache.
   */
  claim(what: string): SequenceClaim {
    this.checkNotDisposed();
    let seen = this.revision;
    return {
      pass: <T>(op: () => T): T => {
        if (this.revision !== seen)
          throw new CalderaError(
            'E_VALUE',
            `${what}: the model's sequence was changed by another call while this one was suspended (another ` +
              'generate() or perplexity() on the same model, or a step, reset or truncate): a WebGpuModel runs one ' +
              'sequence at a time; finish (or break out of) one generation before starting the next, or load a ' +
              'second model',
          );
        // the op changes the sequence before its first await (a step submits its pass synchronously)
        const out = op();
        seen = this.revision;
        return out;
      },
    };
  }

  /** `E_VALUE` after {@link dispose}. */
  private checkNotDisposed(): void {
    if (this.disposed) throw new CalderaError('E_VALUE', 'WebGpuModel: used after dispose()');
  }

  /** `E_VALUE` after {@link dispose} or while a step is running. */
  private checkIdle(what: string): void {
    this.checkNotDisposed();
    if (this.busy)
      throw new CalderaError(
        'E_VALUE',
        `WebGpuModel: ${what} called while a step is running (await it; one sequence at a time per model)`,
      );
  }

  /**
   * Run one token at the next position (appending it to the KV cache) and return, per `output`, nothing, the argmax
   * of the logits (greedy token, computed on the GPU: 4 bytes read back) or the logits (`vocab` floats).
   */
  async step(token: number, output: 'none'): Promise<null>;
  async step(token: number, output: 'argmax'): Promise<number>;
  async step(token: number, output: 'logits'): Promise<Float32Array>;
  async step(token: number, output: StepOutput): Promise<null | number | Float32Array>;
  async step(token: number, output: StepOutput): Promise<null | number | Float32Array> {
    if (output !== 'none' && output !== 'argmax' && output !== 'logits')
      throw new CalderaError(
        'E_VALUE',
        `step: output must be 'none', 'argmax' or 'logits', got ${shownValue(output)}`,
      );
    return this.stepBatch([token], output);
  }

  /**
   * Run one token at the next position (as {@link step}) and return the k largest of its logits among the tokens not
   * in `exclude`, with their ids, and the logits of the tokens in `exclude`: found on the GPU, so that `1 + 2k +
   * exclude.length` words are read back instead of `vocab` floats. What `generate()` samples from when it samples
   * among the top k (with `exclude` the tokens its repetition penalty changes; core's `GenerationRules.pickTopK`
   * then gives the token that the whole logits would). The order is the CPU sampler's rank order: higher logit
   * first, equal logits (−0 and 0 among them) by lower id. Where fewer than k tokens are left, the ids run out and
   * the result is shorter. `E_VALUE` for a `k` that is not an integer in [1, min(TOPK_MAX, vocab − 1)] (TOPK_MAX is
   * 128), an `exclude` of more than {@link contextLength} ids or with ids outside the vocabulary, a token as in
   * `step`, and for NaN logits (any token's: weights that overflow f32 when applied or hold non-finite values).
   */
  async stepTopK(token: number, k: number, exclude: ArrayLike<number> = []): Promise<TopKResult> {
    exclude ??= []; // from JavaScript: null is none
    this.checkIdle('stepTopK()');
    checkDeviceAlive(this.dev, 'WebGpuModel');
    const V = this.config.vocabSize;
    if (!Number.isInteger(k) || k < 1 || k > Math.min(TOPK_MAX, V - 1))
      throw new CalderaError(
        'E_VALUE',
        `stepTopK: k must be an integer in [1, ${Math.min(TOPK_MAX, V - 1)}], got ${shownValue(k)}`,
      );
    checkTokenArray(exclude, 'stepTopK', 'exclude');
    const n = exclude.length;
    if (n > this.contextLength)
      throw new CalderaError(
        'E_VALUE',
        `stepTopK: ${n} tokens to exclude, at most ${this.contextLength} (contextLength)`,
      );
    checkTokenIds(exclude, V, 'stepTopK: exclude');
    const ids = this.batchIds([token], 'stepTopK');
    checkCapacity(this, 1, 'stepTopK');
    const { topk } = this.bufs;
    const queue = this.dev.device.queue;
    queue.writeBuffer(topk.params, 0, topkParams(V, k, n));
    queue.writeBuffer(topk.flags, 0, new Uint32Array(1));
    if (n > 0) {
      const mask = new Uint32Array(Math.ceil(V / 32));
      const seen = Uint32Array.from(exclude);
      for (const t of seen) mask[t >> 5]! |= 1 << (t & 31);
      queue.writeBuffer(topk.mask, 0, mask);
      queue.writeBuffer(topk.seen, 0, seen);
    }
    const words = (await this.readPass(this.submitPass(ids, 'topk', (1 + 2 * k + n) * 4))) as Uint32Array;
    if (words[0] !== 0) throw nanLogits(this.pos - 1);
    const bits = (a: Uint32Array) => new Float32Array(a.buffer, a.byteOffset, a.length);
    // padding where fewer than k tokens were left: ids from the first one beyond the vocabulary
    let found = 0;
    while (found < k && words[1 + found]! < V) found++;
    return {
      ids: words.slice(1, 1 + found),
      values: bits(words.slice(1 + k, 1 + k + found)),
      excluded: bits(words.slice(1 + 2 * k, 1 + 2 * k + n)),
    };
  }

  /**
   * Run up to {@link prefillChunk} tokens at the next positions in one pass (appending them to the KV cache) and
   * return, per `output`, nothing, the argmax or the logits of the last token, or (`'all'`) the logits of every token
   * (`[tokens, vocab]`). With `'none'` the LM head is skipped (and the final norm, unless the last block's output
   * rotation computes it).
   */
  async stepBatch(tokens: ArrayLike<number>, output: 'none'): Promise<null>;
  async stepBatch(tokens: ArrayLike<number>, output: 'argmax'): Promise<number>;
  async stepBatch(tokens: ArrayLike<number>, output: 'logits' | 'all'): Promise<Float32Array>;
  async stepBatch(tokens: ArrayLike<number>, output: BatchOutput): Promise<null | number | Float32Array>;
  async stepBatch(tokens: ArrayLike<number>, output: BatchOutput): Promise<null | number | Float32Array> {
    this.checkIdle('step()');
    checkDeviceAlive(this.dev, 'WebGpuModel');
    if (output !== 'none' && output !== 'argmax' && output !== 'logits' && output !== 'all')
      throw new CalderaError(
        'E_VALUE',
        `stepBatch: output must be 'none', 'argmax', 'logits' or 'all', got ${shownValue(output)}`,
      );
    const ids = this.batchIds(tokens, 'stepBatch');
    checkCapacity(this, ids.length, 'stepBatch');
    const pass = this.submitPass(ids, output);
    return output === 'none' ? null : (this.readPass(pass) as Promise<number | Float32Array>);
  }

  /**
   * Run up to {@link prefillChunk} tokens at the next positions in one pass, as {@link stepBatch} does, and return
   * for each row r the negative log-likelihood of `targets[r]` under its logits, −log softmax(logits_r)[targets[r]]:
   * computed on the GPU (f32, the row's maximum subtracted before the exponentials), so that `tokens.length` floats
   * are read back instead of as many rows of `vocab` logits. What {@link perplexity} scores with.
   */
  async scoreBatch(tokens: ArrayLike<number>, targets: ArrayLike<number>): Promise<Float32Array> {
    this.checkIdle('scoreBatch()');
    checkDeviceAlive(this.dev, 'WebGpuModel');
    const ids = this.batchIds(tokens, 'scoreBatch');
    checkTokenArray(targets, 'scoreBatch', 'targets');
    if (targets.length !== ids.length)
      throw new CalderaError(
        'E_VALUE',
        `scoreBatch: ${targets.length} targets for ${ids.length} tokens (one target per token)`,
      );
    checkTokenIds(targets, this.config.vocabSize, 'scoreBatch: targets');
    checkCapacity(this, ids.length, 'scoreBatch');
    this.dev.device.queue.writeBuffer(this.targetsBuf, 0, Uint32Array.from(targets));
    return (await this.readPass(this.submitPass(ids, 'nll'))) as Float32Array;
  }

  /** `tokens` as the ids of one pass: `E_VALUE` naming `what` unless 1 to {@link prefillChunk} ids in [0, vocab). */
  private batchIds(tokens: ArrayLike<number>, what: string): Uint32Array<ArrayBuffer> {
    checkTokenArray(tokens, what);
    const T = tokens.length;
    if (T < 1 || T > this.prefillChunk)
      throw new CalderaError('E_VALUE', `${what}: ${T} tokens, expected 1 to ${this.prefillChunk}`);
    checkTokenIds(tokens, this.config.vocabSize, what);
    return Uint32Array.from(tokens);
  }

  /**
   * Greedy decoding with the GPU a pass ahead of the host: the `count` greedy tokens after `token` (the next
   * position's), each the argmax of the pass over the one before, as {@link step}(…, `'argmax'`) would give them one
   * at a time. Each pass after the first takes its token from the previous pass's argmax on the GPU, and is submitted
   * before that token is read back: the GPU runs it while the host reads, yields and encodes, instead of waiting for
   * the host between tokens. The pass run ahead joins the sequence only when the consumer asks for the next token:
   * while the consumer holds a token (the generator suspended) and after it stops (or drops the generator), the
   * sequence is what one-at-a-time decoding would hold — the passes on `token` and the tokens before the last one
   * yielded; the pass ahead only wrote that next position's keys and values, which the next pass there overwrites.
   * Runs through `claim` (default: a claim of its own; `generate()` passes the one its prefill ran through): `E_VALUE`
   * at the next token when another call changed the sequence meanwhile. `E_VALUE` for a bad token id, or when `count`
   * passes do not fit the KV cache.
   */
  async *decodeGreedy(token: number, count: number, claim?: SequenceClaim): AsyncGenerator<number> {
    const seq = claim ?? this.claim('decodeGreedy');
    checkTokenIds([token], this.config.vocabSize, 'decodeGreedy');
    if (!Number.isInteger(count) || count < 0)
      throw new CalderaError(
        'E_VALUE',
        `decodeGreedy: count must be an integer ≥ 0, got ${shownValue(count)}`,
      );
    checkCapacity(this, count, 'decodeGreedy');
    if (count === 0) return;
    let pass = seq.pass(() => this.submitPass(Uint32Array.of(token), 'argmax'));
    let last = token;
    for (let n = 1; n <= count; n++) {
      // the pass run ahead over the token yielded last joins the sequence, now that the consumer goes on
      if (n > 1) seq.pass(() => this.commitAhead(pass, last));
      const following = n < count ? seq.pass(() => this.submitPass('previous', 'argmax')) : null;
      last = (await seq.pass(() => this.readPass(pass))) as number;
      yield last;
      if (following) pass = following;
    }
  }

  /**
   * Encode and submit one pass without waiting for it: over `ids` at the next positions, or (`'previous'`, one
   * token) over the greedy token of the pass just before, copied on the GPU from that pass's argmax. The result per
   * `output` is copied into a staging buffer for {@link readPass}. A `'previous'` pass runs ahead: at the next
   * position, without joining the sequence (its token is not known on the host yet) until {@link commitAhead}; when
   * another pass comes first (which the queue runs after it) it is simply left behind.
   */
  private submitPass(
    ids: Uint32Array<ArrayBuffer> | 'previous',
    output: PassOutput,
    topkBytes = 0,
  ): SubmittedPass {
    this.checkIdle('step()');
    checkDeviceAlive(this.dev, 'WebGpuModel');
    const before = this.lastPass;
    if (ids === 'previous' && (before?.output !== 'argmax' || before.end !== this.pos))
      throw new CalderaError(
        'E_VALUE',
        "WebGpuModel: a pass over the previous greedy token needs the greedy pass just before it, at the sequence's end",
      );
    const dev = this.dev.device;
    const V = this.config.vocabSize;
    const T = ids === 'previous' ? 1 : ids.length;
    const enc = dev.createCommandEncoder();
    // queue order: the previous pass has written its argmax (and read the token buffer) before this copy or write
    if (ids === 'previous') enc.copyBufferToBuffer(this.argmaxBuf, 0, this.tokensBuf, 0, 4);
    else dev.queue.writeBuffer(this.tokensBuf, 0, ids);
    dev.queue.writeBuffer(this.stepBuf, 0, Uint32Array.of(this.pos, this.pos + T, 0, 0));
    const lists = this.programs;
    const [prog, head, score] =
      T === 1
        ? [lists.program, lists.head, lists.score]
        : [lists.batchProgram, lists.batchHead, lists.batchScore];
    const tail = output === 'none' ? [] : output === 'nll' ? score : output === 'topk' ? lists.sample : head;
    encodeDispatches(enc, [...prog, ...tail], T);
    const serial = ++this.passes;
    let staging: GPUBuffer | null = null;
    let bytes = 0;
    if (output === 'logits' || output === 'all') {
      staging = this.readLogits;
      bytes = output === 'all' ? T * V * 4 : V * 4;
      enc.copyBufferToBuffer(this.logitsBuf, output === 'all' ? 0 : (T - 1) * V * 4, staging, 0, bytes);
    } else if (output === 'argmax') {
      staging = this.readArgmax[serial & 1]!;
      bytes = 16;
      enc.copyBufferToBuffer(this.argmaxBuf, 0, staging, 0, bytes);
    } else if (output === 'nll') {
      staging = this.readNll;
      bytes = T * 4;
      enc.copyBufferToBuffer(this.nllBuf, 0, staging, 0, bytes);
    } else if (output === 'topk') {
      staging = this.readTopK;
      bytes = topkBytes;
      enc.copyBufferToBuffer(this.bufs.topk.out, 0, staging, 0, bytes);
    }
    dev.queue.submit([enc.finish()]);
    if (staging) this.stagedBy.set(staging, serial);
    const pass: SubmittedPass = { serial, start: this.pos, end: this.pos + T, output, staging, bytes };
    this.lastPass = pass;
    if (ids !== 'previous') {
      this.pos += T;
      this.revision++;
      for (const id of ids) this.history.push(id);
    }
    return pass;
  }

  /**
   * `pass`, run ahead over `token` at the next position, joins the sequence: `E_VALUE` (a bug of the caller, which
   * its claim prevents) unless it is still the last pass submitted and the sequence has not moved since.
   */
  private commitAhead(pass: SubmittedPass, token: number): void {
    this.checkIdle('step()');
    if (pass !== this.lastPass || pass.start !== this.pos)
      throw new CalderaError('E_VALUE', 'WebGpuModel: a pass run ahead was overtaken by another pass');
    this.pos++;
    this.revision++;
    this.history.push(token);
  }

  /**
   * The result of `pass` (submitted by {@link submitPass} with an output): the greedy token, or the logits.
   * `E_VALUE` when a later pass overwrote it first, or when the greedy token's logits held a NaN (the argmax kernel's
   * flag: weights that overflow f32 when applied, or non-finite values; the CPU's sampler refuses them too).
   */
  private async readPass(pass: SubmittedPass): Promise<number | Float32Array | Uint32Array> {
    const { staging, bytes } = pass;
    if (staging === null || this.stagedBy.get(staging) !== pass.serial)
      throw new CalderaError('E_VALUE', "WebGpuModel: a pass's result was overwritten before it was read");
    this.busy = true;
    try {
      const data = await this.readStaging(staging, bytes);
      if (pass.output === 'topk') return new Uint32Array(data);
      if (pass.output !== 'argmax') return new Float32Array(data);
      const token = new Uint32Array(data)[0]!;
      if ((token & ARGMAX_NAN_FLAG) !== 0) throw nanLogits(pass.end - 1);
      return token;
    } finally {
      this.busy = false;
    }
  }

  /** A copy of the first `bytes` of `staging` once the GPU has written them (errors: see readbackError). */
  private async readStaging(staging: GPUBuffer, bytes: number): Promise<ArrayBuffer> {
    try {
      await staging.mapAsync(MAP_READ_MODE, 0, bytes);
    } catch (e) {
      throw this.readbackError(e);
    }
    try {
      return staging.getMappedRange(0, bytes).slice(0);
    } finally {
      staging.unmap();
    }
  }

  /**
   * Append `tokens` to the sequence without reading anything back: batches of {@link prefillChunk} tokens, each
   * one pass through the layers. `signal` is checked between batches.
   */
  async prefill(tokens: ArrayLike<number>, options: { signal?: AbortSignal } = {}): Promise<void> {
    checkTokenArray(tokens, 'prefill');
    await prefillThrough(this, this.claim('prefill'), tokens, options?.signal, 'prefill');
  }

  /** Why a read-back failed: the model disposed meanwhile (`E_VALUE`), else the device (`E_DEVICE`). */
  private readbackError(e: unknown): CalderaError {
    if (this.disposed)
      return new CalderaError('E_VALUE', 'WebGpuModel: disposed while a step was running', { cause: e });
    const lost = deviceLostInfo(this.dev.device);
    return new CalderaError(
      'E_DEVICE',
      lost
        ? `WebGpuModel: the WebGPU device was lost (${lost.reason}: ${lost.message})`
        : `WebGpuModel: reading the step's result back failed (${(e as Error).message || String(e)}); the device ` +
            'may have been lost or destroyed',
      { cause: e },
    );
  }

  /** Wait until the GPU has finished the submitted work. */
  async finish(): Promise<void> {
    await this.dev.device.queue.onSubmittedWorkDone();
  }

  /**
   * Logits `[tokens, vocab]` of every position of `tokens`, continuing the cached sequence (batches of
   * {@link prefillChunk} tokens; like runtime-node's `LlamaModel.forward(tokens, cache)`). `signal` is checked before
   * each batch, as {@link prefill} does: an abort fails with `E_ABORTED` (the signal's reason as its cause), the
   * batches already run staying in the cache.
   */
  async forward(tokens: ArrayLike<number>, options: { signal?: AbortSignal } = {}): Promise<Float32Array> {
    const signal = options?.signal; // from JavaScript: null options are none
    checkTokenArray(tokens, 'forward');
    const V = this.config.vocabSize;
    const all = Array.from(tokens);
    // the whole request up front: ids in range, and room in the KV cache (not a cache filled batch by batch first)
    checkTokenIds(all, V, 'forward');
    checkCapacity(this, all.length, 'forward');
    const out = new Float32Array(all.length * V);
    const seq = this.claim('forward');
    for (let t = 0; t < all.length; t += this.prefillChunk) {
      throwIfAborted(signal, 'forward');
      out.set(await seq.pass(() => this.stepBatch(all.slice(t, t + this.prefillChunk), 'all')), t * V);
    }
    return out;
  }

  /**
   * Destroy the buffers the model allocated itself (activations, KV cache, uniforms, the linear context's scratch and
   * tables, the kernels' uniforms), not its weights: {@link dispose}, and a constructor that fails part way (then
   * `programs` may not exist yet).
   */
  private destroyOwn(): void {
    for (const b of this.owned) b.destroy();
    this.owned.length = 0;
    disposePrograms(this.programs as Programs | undefined);
  }

  /** Free every GPU buffer of the model (weights, cache, uniforms). The device is not destroyed. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.destroyOwn();
    const w = this.weights;
    w.embed.buffer.destroy();
    if (w.head !== w.embed) w.head.buffer.destroy();
    w.norm.destroy();
    for (const blk of w.blocks) {
      blk.inputNorm.destroy();
      blk.postAttnNorm.destroy();
      blk.qNorm?.destroy();
      blk.kNorm?.destroy();
      for (const lin of [blk.q, blk.k, blk.v, blk.o, blk.gate, blk.up, blk.down]) lin.dispose();
    }
  }
}
