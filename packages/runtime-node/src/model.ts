import {
  assertBooleanOptions,
  assertObject,
  bf16ArrayToF32,
  CalderaError,
  describeValue,
  f16ArrayToF32,
  linearShape,
  appliesRope,
  hasQkNorm,
  ropeAttentionFactor,
  ropeInvFreq,
  shownValue,
  type Tensor,
} from '@caldera/core';
import type { Pool } from '@caldera/linalg';
import { blockLinearNames, type ModelConfig } from './config.js';
import { AttentionKernel, type AttentionShape } from './kernels/attention-kernel.js';
import { BatchWorkspace } from './kernels/batch-workspace.js';
import { DenseLinear, type Linear, type LinearRunOptions } from './linear.js';

/** One transformer block's weights. */
export interface BlockWeights {
  inputNorm: Float32Array;
  postAttnNorm: Float32Array;
  /**
   * Qwen3's per-head query and key RMSNorm weights (`self_attn.q_norm`/`k_norm`, `head_dim` values each), applied to
   * every head of q and k before RoPE. Required where the config has them (`hasQkNorm`), refused elsewhere.
   */
  qNorm?: Float32Array;
  kNorm?: Float32Array;
  q: Linear;
  k: Linear;
  v: Linear;
  o: Linear;
  gate: Linear;
  up: Linear;
  down: Linear;
}

type LinearKey = 'q' | 'k' | 'v' | 'o' | 'gate' | 'up' | 'down';

/** Bytes of keys and values of all layers for `positions` positions. */
function kvBytes(cfg: ModelConfig, positions: number): number {
  return 2 * cfg.numLayers * positions * cfg.numKvHeads * cfg.headDim * 4;
}

/** The largest temporary KV cache a forward without a cache allocates (see {@link LlamaModel.forward}). */
const TEMP_CACHE_MAX_BYTES = 256 * 2 ** 20;

/** All weights of a Llama-family model. Linear layers are pluggable (dense or CALDERA). */
export interface ModelWeights {
  /**
   * Token embeddings `[vocab, hidden]`: f32, or f16/bf16 bits (each looked-up row widened to f32, exactly). A tied
   * 16-bit model passes a view of its head's bits here (`tensor(head.format, [vocab, hidden], head.bits)`), so the
   * table is held once.
   */
  embed: Tensor<'f32'> | Tensor<'f16'> | Tensor<'bf16'>;
  blocks: BlockWeights[];
  norm: Float32Array;
  /**
   * The LM head's f32 weight `[vocab, hidden]` (the embedding when tied), used when `head` is not given; a tied f32
   * head and the embedding share one table.
   */
  lmHead?: Tensor<'f32'>;
  /** The LM head layer used for logits (e.g. an f16 `DenseF16Linear`); default: a dense f32 layer of `lmHead`. */
  head?: Linear;
}

/** Per-layer key/value cache of one sequence. */
export class KVCache {
  readonly k: Float32Array[];
  readonly v: Float32Array[];
  length = 0;
  /**
   * Keys and values inside the SIMD attention kernel's memory, or null: plain arrays and the TypeScript loops (no
   * WebAssembly SIMD, a cache over 4 GiB, or `{ kernel: false }`).
   */
  readonly kernel: AttentionKernel | null;
  /**
   * A cache of `capacity` positions (an integer ≥ 1) for a model of `config`; `E_VALUE` for a config that is not an
   * object or a capacity that is not a positive integer (NaN or a string failed at the first forward, -1 with a
   * RangeError).
   */
  constructor(
    readonly config: ModelConfig,
    readonly capacity: number,
    options: KVCacheOptions = {},
  ) {
    assertObject(config, 'KVCache', 'config', 'a ModelConfig');
    if (!Number.isSafeInteger(capacity) || capacity < 1)
      throw new CalderaError(
        'E_VALUE',
        `KVCache: capacity must be a positive integer, got ${shownValue(capacity)}`,
      );
    options ??= {}; // from JavaScript: null options are none
    this.kernel = options.kernel === false ? null : AttentionKernel.create(attentionShape(config), capacity);
    const w = config.numKvHeads * config.headDim;
    try {
      this.k =
        this.kernel?.k ?? Array.from({ length: config.numLayers }, () => new Float32Array(capacity * w));
      this.v =
        this.kernel?.v ?? Array.from({ length: config.numLayers }, () => new Float32Array(capacity * w));
    } catch (e) {
      if (!(e instanceof RangeError)) throw e;
      throw new CalderaError(
        'E_VALUE',
        `KVCache: ${capacity} positions (${2 * config.numLayers} arrays of ${capacity * w} values) cannot be allocated here`,
        { cause: e },
      );
    }
  }
}

/** Options of {@link KVCache}. */
export interface KVCacheOptions {
  /** Keep keys and values in the SIMD attention kernel's memory when it is available (default true). */
  kernel?: boolean;
}

function attentionShape(cfg: ModelConfig): AttentionShape {
  return { layers: cfg.numLayers, heads: cfg.numHeads, kvHeads: cfg.numKvHeads, headDim: cfg.headDim };
}

function rmsNorm(x: Float32Array, rows: number, w: Float32Array, eps: number): Float32Array {
  const d = w.length;
  const y = new Float32Array(x.length);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let j = 0; j < d; j++) ss += x[r * d + j]! * x[r * d + j]!;
    const inv = 1 / Math.sqrt(ss / d + eps);
    for (let j = 0; j < d; j++) y[r * d + j] = x[r * d + j]! * inv * w[j]!;
  }
  return y;
}

/**
 * Causal grouped-query attention in TypeScript (the reference of asm/attention.ts, and the path without a cache or
 * without WebAssembly SIMD): `rows` query rows at positions pos0 + r over K/V `[positions, kvHeads·headDim]`.
 */
function attention(
  q: Float32Array,
  K: Float32Array,
  V: Float32Array,
  rows: number,
  pos0: number,
  cfg: ModelConfig,
): Float32Array {
  const { numHeads: H, numKvHeads: KV, headDim: hd } = cfg;
  const group = H / KV;
  const kw = KV * hd;
  const att = new Float32Array(rows * H * hd);
  const scale = 1 / Math.sqrt(hd);
  const scores = new Float32Array(pos0 + rows);
  for (let r = 0; r < rows; r++) {
    const len = pos0 + r + 1;
    for (let hh = 0; hh < H; hh++) {
      const kvh = Math.floor(hh / group);
      const qo = (r * H + hh) * hd;
      let mx = -Infinity;
      for (let t = 0; t < len; t++) {
        const ko = t * kw + kvh * hd;
        let s = 0;
        for (let i = 0; i < hd; i++) s += q[qo + i]! * K[ko + i]!;
        s *= scale;
        scores[t] = s;
        if (s > mx) mx = s;
      }
      let sum = 0;
      for (let t = 0; t < len; t++) {
        const e = Math.exp(scores[t]! - mx);
        scores[t] = e;
        sum += e;
      }
      const ao = (r * H + hh) * hd;
      for (let t = 0; t < len; t++) {
        const p = scores[t]! / sum;
        const vo = t * kw + kvh * hd;
        for (let i = 0; i < hd; i++) att[ao + i]! += p * V[vo + i]!;
      }
    }
  }
  return att;
}

export { ropeInvFreq } from '@caldera/core';

/**
 * Apply RoPE (Hugging Face rotate-half layout) in place to `rows` vectors of `heads` heads at positions pos0+r, cos and
 * sin times `scale` (YaRN's attention factor, {@link ropeAttentionFactor}; 1 otherwise).
 */
function rope(
  x: Float32Array,
  rows: number,
  heads: number,
  hd: number,
  pos0: number,
  inv: Float64Array,
  scale: number,
): void {
  const half = hd / 2;
  for (let r = 0; r < rows; r++) {
    const pos = pos0 + r;
    for (let i = 0; i < half; i++) {
      const a = pos * inv[i]!;
      const c = Math.cos(a) * scale;
      const s = Math.sin(a) * scale;
      for (let h = 0; h < heads; h++) {
        const o = (r * heads + h) * hd;
        const x1 = x[o + i]!;
        const x2 = x[o + i + half]!;
        x[o + i] = x1 * c - x2 * s;
        x[o + i + half] = x2 * c + x1 * s;
      }
    }
  }
}

/** Called with the input of each linear group (`attn`, `o`, `mlp`, `down`) during a block's forward. */
export type CaptureFn = (input: string, x: Float32Array, rows: number) => void;

/** Options of {@link LlamaModel}. */
export interface LlamaModelOptions {
  /**
   * A `@caldera/linalg` worker pool (`createPool`): the linear layers' products for several tokens at once (prompts,
   * perplexity windows, calibration) are split over its threads. Single-token decode uses a decode pool instead, given
   * to the CALDERA layers when they are built (`LoadOptions.decodePool`, `CalderaLinearOptions.decodePool`).
   * Outputs are bit for bit the same with or without it. The caller owns the pool (and disposes of it). Default: none.
   */
  pool?: Pool;
}

/** A Llama-family causal language model on the CPU. */
export class LlamaModel {
  private readonly invFreq: Float64Array;
  private readonly ropeScale: number;
  private readonly head: Linear;
  readonly weights: ModelWeights;
  /** What every linear layer's forward gets: the pool and one batch workspace for all layers. */
  private readonly run: LinearRunOptions;
  constructor(
    readonly config: ModelConfig,
    weights: ModelWeights,
    options: LlamaModelOptions = {},
  ) {
    this.run = { workspace: new BatchWorkspace(), ...(options.pool ? { pool: options.pool } : {}) };
    if (weights.blocks.length !== config.numLayers) {
      throw new CalderaError(
        'E_SHAPE',
        `model has ${weights.blocks.length} blocks, config says ${config.numLayers}`,
      );
    }
    this.invFreq = ropeInvFreq(config);
    this.ropeScale = ropeAttentionFactor(config);
    const { vocabSize: V, hiddenSize: d } = config;
    if (weights.embed.shape.length !== 2 || weights.embed.shape[0] !== V || weights.embed.shape[1] !== d)
      throw new CalderaError(
        'E_SHAPE',
        `embedding has shape [${weights.embed.shape.join(', ')}], config implies [${V}, ${d}]`,
      );
    if (weights.head) this.head = weights.head;
    else if (!weights.lmHead)
      throw new CalderaError(
        'E_VALUE',
        'model weights have neither an LM head layer (head) nor its weight (lmHead)',
      );
    else {
      const head = new DenseLinear(weights.lmHead);
      this.head = head;
      // the head's weight is the kernel's copy from now on (the caller's array is not kept beside it); a tied f32 head:
      // the embedding lookup reads that copy too, so the table is held once
      const tied = weights.lmHead === weights.embed;
      weights = { ...weights, lmHead: head.weight, ...(tied ? { embed: head.weight } : {}) };
    }
    this.weights = weights;
  }

  /** Token embeddings `[tokens, hidden]`. */
  embed(tokens: ArrayLike<number>): Float32Array {
    const d = this.config.hiddenSize;
    const out = new Float32Array(tokens.length * d);
    for (let t = 0; t < tokens.length; t++) {
      const id = tokens[t]!;
      if (!Number.isInteger(id) || id < 0 || id >= this.config.vocabSize)
        throw new CalderaError('E_VALUE', `token id ${id} out of range [0, ${this.config.vocabSize})`);
      const e = this.weights.embed;
      if (e.dtype === 'f32') out.set(e.data.subarray(id * d, id * d + d), t * d);
      else {
        const row = e.data.subarray(id * d, id * d + d);
        const to = out.subarray(t * d, t * d + d);
        if (e.dtype === 'f16') f16ArrayToF32(row, to);
        else bf16ArrayToF32(row, to);
      }
    }
    return out;
  }

  /**
   * Run block `b` on `rows` hidden states at positions `cache.length…` (the cache is extended), or from 0 without a
   * cache. A `b` that is not a block of the model (an integer in [0, `numLayers`)) is `E_VALUE`, and so are positions
   * past the model's max positions (`config.maxPositions`) or a sliding window (`config.slidingWindow`).
   */
  runBlock(b: number, x: Float32Array, rows: number, cache?: KVCache, capture?: CaptureFn): Float32Array {
    return this.block('runBlock', b, x, [rows], cache, capture, true)!;
  }

  /**
   * Block `b` on several windows at once, for calibration: `x` holds their hidden states one after another
   * (`Σ lengths × hiddenSize`), each window attending within itself at positions from 0. The same as
   * {@link LlamaModel.runBlock} on each window in turn — the outputs one after another, `capture` called once per input
   * key with all windows' rows — but each linear runs once on all the rows, which spreads its per-call costs (a bf16
   * weight's conversion, a packed operand, a CALDERA layer's decoding) over them. Bit for bit where each window's
   * products take the kernels the group's take: windows of 20 rows or more whose products reach linalg's 4096
   * multiply-adds (calibration's windows of 128 tokens on any real layer); a shorter window may go through a
   * matrix–vector kernel, or a tiny layer's product through the TypeScript one, summed otherwise. Without `output` the
   * block's output is not computed (null is returned): the last linear (down_proj) and the residual after it are not
   * run, a quarter of a Llama block's multiply-adds. The same errors as `runBlock`, for each window.
   */
  runWindows(
    b: number,
    x: Float32Array,
    lengths: readonly number[],
    capture?: CaptureFn,
    options: { output?: boolean } = {},
  ): Float32Array | null {
    assertObject(options, 'runWindows', 'options', 'an object such as { output: false }');
    assertBooleanOptions(options, 'runWindows', ['output']);
    if (!Array.isArray(lengths) || lengths.length === 0 || lengths.some((n) => !Number.isInteger(n) || n < 1))
      throw new CalderaError(
        'E_VALUE',
        `runWindows: lengths must be a non-empty array of positive integers, got ${describeValue(lengths)}`,
      );
    const rows = lengths.reduce((a: number, n: number) => a + n, 0);
    assertObject(x, 'runWindows', 'x', 'a Float32Array');
    if (x.length !== rows * this.config.hiddenSize)
      throw new CalderaError(
        'E_SHAPE',
        `runWindows: x has ${x.length} values, the windows' ${rows} rows of ${this.config.hiddenSize} need ` +
          `${rows * this.config.hiddenSize}`,
      );
    return this.block('runWindows', b, x, lengths, undefined, capture, options.output ?? true);
  }

  /**
   * {@link LlamaModel.runBlock} on the windows of `lengths` (one when there is a cache), or without `output` only up to
   * the last capture (then null).
   */
  private block(
    what: string,
    b: number,
    x: Float32Array,
    lengths: readonly number[],
    cache: KVCache | undefined,
    capture: CaptureFn | undefined,
    output: boolean,
  ): Float32Array | null {
    const cfg = this.config;
    if (!Number.isInteger(b) || b < 0 || b >= cfg.numLayers)
      throw new CalderaError(
        'E_VALUE',
        `${what}: block ${b} is not a block of the model (0…${cfg.numLayers - 1})`,
      );
    const rows = lengths.reduce((a, n) => a + n, 0);
    // positions are checked for the longest window: each starts at 0 (a cache comes with one window)
    const span = lengths.reduce((a, n) => Math.max(a, n), 0);
    const w = this.weights.blocks[b]!;
    const { numHeads: H, numKvHeads: KV, headDim: hd } = cfg;
    const pos0 = cache ? cache.length : 0;
    // attention here is full causal attention, which is a sliding-window model's only up to its window
    if (cfg.slidingWindow !== null && pos0 + span > cfg.slidingWindow)
      throw new CalderaError(
        'E_VALUE',
        `positions ${pos0}…${pos0 + span - 1} exceed the model's sliding window of ${cfg.slidingWindow} tokens: this ` +
          'runtime attends to every earlier position, which is sliding-window attention only within the window',
      );
    // as generate(), perplexity() and runtime-webgpu: positions the model was never trained at give logits of no use
    if (pos0 + span > cfg.maxPositions)
      throw new CalderaError(
        'E_VALUE',
        `positions ${pos0}…${pos0 + span - 1} exceed the model's max positions (${cfg.maxPositions})`,
      );
    const h = rmsNorm(x, rows, w.inputNorm, cfg.rmsNormEps);
    capture?.('attn', h, rows);
    let q = w.q.forward(h, rows, this.run);
    let k = w.k.forward(h, rows, this.run);
    const v = w.v.forward(h, rows, this.run);
    // Qwen3: each head's query and key RMS-normed over the head dimension, before RoPE
    const qkNorm = this.qkNorm(b, w);
    if (qkNorm) {
      q = rmsNorm(q, rows * H, qkNorm.q, cfg.rmsNormEps);
      k = rmsNorm(k, rows * KV, qkNorm.k, cfg.rmsNormEps);
    }
    const kw = KV * hd;
    // SmolLM3's NoPE blocks attend with the queries and keys as they are
    if (appliesRope(cfg, b)) {
      for (let w = 0, r0 = 0; w < lengths.length; r0 += lengths[w++]!) {
        const n = lengths[w]!;
        rope(q.subarray(r0 * H * hd, (r0 + n) * H * hd), n, H, hd, pos0, this.invFreq, this.ropeScale);
        rope(k.subarray(r0 * kw, (r0 + n) * kw), n, KV, hd, pos0, this.invFreq, this.ropeScale);
      }
    }
    let K: Float32Array;
    let V: Float32Array;
    if (cache) {
      if (pos0 + rows > cache.capacity)
        throw new CalderaError('E_VALUE', `KV cache capacity ${cache.capacity} exceeded`);
      cache.k[b]!.set(k, pos0 * kw);
      cache.v[b]!.set(v, pos0 * kw);
      K = cache.k[b]!;
      V = cache.v[b]!;
    } else {
      K = k;
      V = v;
    }
    let att: Float32Array;
    if (cache?.kernel) att = cache.kernel.attend(b, q, rows, pos0);
    else if (lengths.length === 1) att = attention(q, K, V, rows, pos0, cfg);
    else {
      // each window attends within itself
      att = new Float32Array(rows * H * hd);
      for (let w = 0, r0 = 0; w < lengths.length; r0 += lengths[w++]!) {
        const n = lengths[w]!;
        const at = (a: Float32Array, width: number) => a.subarray(r0 * width, (r0 + n) * width);
        att.set(attention(at(q, H * hd), at(K, kw), at(V, kw), n, 0, cfg), r0 * H * hd);
      }
    }
    capture?.('o', att, rows);
    const o = w.o.forward(att, rows, this.run);
    const x1 = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) x1[i] = x[i]! + o[i]!;
    const h2 = rmsNorm(x1, rows, w.postAttnNorm, cfg.rmsNormEps);
    capture?.('mlp', h2, rows);
    const g = w.gate.forward(h2, rows, this.run);
    const u = w.up.forward(h2, rows, this.run);
    for (let i = 0; i < g.length; i++) {
      const gi = g[i]!;
      g[i] = (gi / (1 + Math.exp(-gi))) * u[i]!;
    }
    capture?.('down', g, rows);
    if (!output) return null;
    const dn = w.down.forward(g, rows, this.run);
    for (let i = 0; i < x1.length; i++) x1[i]! += dn[i]!;
    return x1;
  }

  /**
   * Final norm + LM head: logits `[rows, vocab]`, written into `out` when it is given and long enough (a dense head
   * does; see `LinearRunOptions.out`: use the returned array).
   */
  logits(x: Float32Array, rows: number, out?: Float32Array): Float32Array {
    const h = rmsNorm(x, rows, this.weights.norm, this.config.rmsNormEps);
    return this.head.forward(h, rows, out ? { ...this.run, out } : this.run);
  }

  /**
   * Logits for every position of `tokens` (`[tokens, vocab]`), or with `{ last: true }` for the last position only
   * (`[vocab]`: what generation needs, without the LM head on the rest of a prompt). With a cache, the tokens continue
   * the cached sequence (prefill or single-token decode) and the cache is extended.
   */
  forward(tokens: ArrayLike<number>, cache?: KVCache, options: { last?: boolean } = {}): Float32Array {
    const x = this.hidden(tokens, cache);
    const rows = tokens.length;
    if (options.last && rows > 1) {
      const d = this.config.hiddenSize;
      return this.logits(x.subarray((rows - 1) * d), 1);
    }
    return this.logits(x, rows);
  }

  /**
   * The last block's output for every position of `tokens` (`[tokens, hiddenSize]`, before the final norm): what
   * {@link forward} applies the final norm and the LM head to ({@link logits}), with the same cache rules.
   */
  hidden(tokens: ArrayLike<number>, cache?: KVCache): Float32Array {
    let x = this.embed(tokens);
    const rows = tokens.length;
    // without a cache, a sequence of several tokens gets a temporary one (positions from 0, as without a cache) so
    // that its attention runs in the SIMD kernel — unless its keys and values for all layers would exceed 256 MiB
    const c = cache ?? (rows > 1 ? this.temporaryCache(rows) : undefined);
    for (let b = 0; b < this.config.numLayers; b++) x = this.runBlock(b, x, rows, c);
    if (cache) cache.length += rows;
    return x;
  }

  /**
   * The cache {@link forward} uses for a prompt of `positions` tokens without a cache of the caller's: a fresh
   * kernel-backed cache, or undefined (no SIMD kernel, or over the 256 MiB limit: the TypeScript attention then). Block
   * by block callers (`BlockLazyRunner.perplexity`) take it to compute exactly what `forward` computes.
   */
  temporaryCache(positions: number): KVCache | undefined {
    if (kvBytes(this.config, positions) > TEMP_CACHE_MAX_BYTES) return undefined;
    if (!AttentionKernel.available()) return undefined;
    const c = new KVCache(this.config, positions);
    return c.kernel ? c : undefined;
  }

  /** The linear layer with a Hugging Face prefix such as `model.layers.0.mlp.up_proj`. */
  linear(name: string): Linear {
    const [blk, key] = this.locate(name);
    return blk[key];
  }

  /**
   * Replace a linear layer (e.g. with its CALDERA form). The layer must have the shape the config gives the name
   * (`E_SHAPE` naming the layer and both shapes, `[out, in]`), and be a layer (`E_VALUE`); a name that is not a linear
   * layer of the model is `E_MISSING`.
   */
  setLinear(name: string, layer: Linear): void {
    const [blk, key] = this.locate(name);
    const l = layer as Partial<Linear> | null;
    if (l === null || typeof l !== 'object' || typeof l.forward !== 'function')
      throw new CalderaError(
        'E_VALUE',
        `setLinear: layer '${name}' must be a Linear (an object with forward), got ${describeValue(layer)}`,
      );
    const [m, n] = linearShape(this.config, `${key}_proj`);
    if (l.outFeatures !== m || l.inFeatures !== n)
      throw new CalderaError(
        'E_SHAPE',
        `setLinear: layer '${name}' is [${String(l.outFeatures)}, ${String(l.inFeatures)}] (out, in), the model ` +
          `needs [${m}, ${n}]`,
      );
    blk[key] = layer;
  }

  /**
   * Block `b`'s query and key norm weights where the config has them ({@link BlockWeights.qNorm}), else null;
   * `E_MISSING` when such a model's block lacks them, `E_VALUE` when another model's block has them (transformers
   * would not apply them) and `E_SHAPE` when one is not `head_dim` long.
   */
  private qkNorm(b: number, w: BlockWeights): { q: Float32Array; k: Float32Array } | null {
    const hd = this.config.headDim;
    const given = w.qNorm !== undefined || w.kNorm !== undefined;
    if (!hasQkNorm(this.config)) {
      if (given)
        throw new CalderaError(
          'E_VALUE',
          `block ${b} has query/key norm weights (qNorm, kNorm), which ${this.config.architecture} does not apply`,
        );
      return null;
    }
    if (!w.qNorm || !w.kNorm)
      throw new CalderaError(
        'E_MISSING',
        `block ${b} lacks ${!w.qNorm ? 'qNorm' : 'kNorm'}: ${this.config.architecture} normalizes each head's ` +
          'query and key (self_attn.q_norm, self_attn.k_norm)',
      );
    for (const [name, n] of [
      ['qNorm', w.qNorm],
      ['kNorm', w.kNorm],
    ] as const)
      if (n.length !== hd)
        throw new CalderaError('E_SHAPE', `block ${b}: ${name} has ${n.length} values, head_dim is ${hd}`);
    return { q: w.qNorm, k: w.kNorm };
  }

  private locate(name: string): [BlockWeights, LinearKey] {
    const m = /^model\.layers\.(\d+)\.(?:self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj$/.exec(name);
    const blk = m ? this.weights.blocks[Number(m[1])] : undefined;
    if (!m || !blk) throw new CalderaError('E_MISSING', `no linear layer named '${name}'`);
    return [blk, m[2] as LinearKey];
  }

  /** Total bytes of linear-layer weights (the storage format's real size). */
  linearBytes(): number {
    let s = 0;
    for (let b = 0; b < this.config.numLayers; b++)
      for (const { name } of blockLinearNames(b)) s += this.linear(name).weightBytes;
    return s;
  }
}
