import {
  appliesRope,
  CalderaError,
  f16ArrayToF32,
  hasQkNorm,
  ropeAttentionFactor,
  ropeInvFreq,
  type Rng,
} from '@caldera/core';
import type { ModelConfig } from '../config.js';
import { attentionBackward, attentionForward } from './attention.js';
import { linearBackward, linearForward, loraBackward, loraForward, type LoraPair } from './linear.js';
import { crossEntropy, softCrossEntropy } from './loss.js';
import { rmsNormBackward, rmsNormForward } from './rmsnorm.js';
import { ropeApply } from './rope.js';
import { swigluBackward, swigluForward } from './swiglu.js';
import { zerosLike, type Vec } from './types.js';

/**
 * The parts of {@link ModelConfig} the training forward uses. The last five are optional: `tieWordEmbeddings`
 * (default true: the LM head is the embedding; false: a separate `lm_head.weight`), `attentionBias` (default false;
 * true: q/k/v biases in {@link trainParamShapes}, as Qwen2 has, and o_proj's too when `architecture` is
 * `'LlamaForCausalLM'`, `'Qwen3ForCausalLM'` or `'SmolLM3ForCausalLM'`, as transformers builds them), `architecture` (`'Qwen3ForCausalLM'`
 * also adds its per-head query and key norms, `self_attn.q_norm`/`k_norm`, applied before RoPE), `ropeScaling`
 * (default null: plain RoPE; Llama 3's, YaRN or linear scaling otherwise, as the runtime applies it) and `nopeLayers`
 * (default none: the blocks that apply no RoPE, SmolLM3's).
 */
export type TrainConfig = Pick<
  ModelConfig,
  | 'hiddenSize'
  | 'intermediateSize'
  | 'numLayers'
  | 'numHeads'
  | 'numKvHeads'
  | 'headDim'
  | 'vocabSize'
  | 'rmsNormEps'
  | 'ropeTheta'
> &
  Partial<
    Pick<ModelConfig, 'tieWordEmbeddings' | 'attentionBias' | 'architecture' | 'ropeScaling' | 'nopeLayers'>
  >;

/**
 * `c`'s fields that shape the training forward, with the optional ones' defaults filled in, and `architecture` only
 * where it changes the parameters (with `attentionBias`: Llama's, Qwen3's and SmolLM3's o_proj have a bias too; Qwen3's
 * query and key norms), and `nopeLayers` only where there are some. A saved run records this and
 * compares it field by field, so a config that leaves `tieWordEmbeddings` out resumes one saved with it `true`, and a
 * parsed `config.json` (with fields training does not read) resumes one saved from a bare `TrainConfig`.
 */
export function trainConfigOf(c: TrainConfig): TrainConfig {
  const attentionBias = c.attentionBias ?? false;
  return {
    hiddenSize: c.hiddenSize,
    intermediateSize: c.intermediateSize,
    numLayers: c.numLayers,
    numHeads: c.numHeads,
    numKvHeads: c.numKvHeads,
    headDim: c.headDim,
    vocabSize: c.vocabSize,
    rmsNormEps: c.rmsNormEps,
    ropeTheta: c.ropeTheta,
    tieWordEmbeddings: tiedHead(c),
    attentionBias,
    ...((attentionBias || qkNormOf(c)) && c.architecture !== undefined
      ? { architecture: c.architecture }
      : {}),
    ropeScaling: c.ropeScaling ?? null,
    ...(c.nopeLayers?.length ? { nopeLayers: [...c.nopeLayers] } : {}),
  };
}

/** The architectures whose `attention_bias` gives o_proj a bias too (Llama's attention; Qwen2's does not). */
const O_PROJ_BIAS: readonly string[] = ['LlamaForCausalLM', 'Qwen3ForCausalLM', 'SmolLM3ForCausalLM'];

/** Whether `c` normalizes each head's query and key before RoPE (Qwen3's `q_norm`/`k_norm`). */
function qkNormOf(c: TrainConfig): boolean {
  return c.architecture !== undefined && hasQkNorm({ architecture: c.architecture });
}

/** Whether the LM head of `c` is its embedding (the default). */
function tiedHead(c: TrainConfig): boolean {
  return c.tieWordEmbeddings ?? true;
}

/**
 * Parameters by Hugging Face tensor name (`model.embed_tokens.weight`, …), row-major. A linear layer `P` may also
 * have a bias `P.bias` `[out]` and a low-rank adapter `P.lora_A` `[out, r]` and `P.lora_B` `[r, in]`: then
 * `y = x·Wᵀ + b + (x·Bᵀ)·Aᵀ`. An untied model has `lm_head.weight` `[vocab, hidden]`.
 */
export type TrainParams = Record<string, Vec>;

/**
 * Hugging Face names and shapes of every parameter of a Llama model of config `c`: with `lm_head.weight` when its
 * embeddings are untied, q/k/v biases (and o_proj's for Llama and Qwen3) when it has `attentionBias`, and Qwen3's
 * query and key norms (`[headDim]` each).
 */
export function trainParamShapes(c: TrainConfig): Record<string, number[]> {
  const d = c.hiddenSize;
  const qd = c.numHeads * c.headDim;
  const kd = c.numKvHeads * c.headDim;
  const s: Record<string, number[]> = {
    'model.embed_tokens.weight': [c.vocabSize, d],
    'model.norm.weight': [d],
  };
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    s[`${p}input_layernorm.weight`] = [d];
    s[`${p}post_attention_layernorm.weight`] = [d];
    s[`${p}self_attn.q_proj.weight`] = [qd, d];
    s[`${p}self_attn.k_proj.weight`] = [kd, d];
    s[`${p}self_attn.v_proj.weight`] = [kd, d];
    s[`${p}self_attn.o_proj.weight`] = [d, qd];
    s[`${p}mlp.gate_proj.weight`] = [c.intermediateSize, d];
    s[`${p}mlp.up_proj.weight`] = [c.intermediateSize, d];
    s[`${p}mlp.down_proj.weight`] = [d, c.intermediateSize];
    if (c.attentionBias) {
      s[`${p}self_attn.q_proj.bias`] = [qd];
      s[`${p}self_attn.k_proj.bias`] = [kd];
      s[`${p}self_attn.v_proj.bias`] = [kd];
      if (c.architecture !== undefined && O_PROJ_BIAS.includes(c.architecture))
        s[`${p}self_attn.o_proj.bias`] = [d];
    }
    if (qkNormOf(c)) {
      s[`${p}self_attn.q_norm.weight`] = [c.headDim];
      s[`${p}self_attn.k_norm.weight`] = [c.headDim];
    }
  }
  if (!tiedHead(c)) s['lm_head.weight'] = [c.vocabSize, d];
  return s;
}

/**
 * Fresh parameters: norms 1, biases 0, matrices N(0, std²) with the residual outputs (`o_proj`, `down_proj`) scaled by
 * 1/√(2·layers) (GPT-2 style). f32 unless `f64` is set (gradient checks).
 * @param std initial standard deviation (default 0.02).
 */
export function initTrainParams(c: TrainConfig, rng: Rng, std = 0.02, f64 = false): TrainParams {
  const out: TrainParams = {};
  for (const [name, shape] of Object.entries(trainParamShapes(c))) {
    const n = shape.reduce((a, b) => a * b, 1);
    const a = f64 ? new Float64Array(n) : new Float32Array(n);
    if (name.endsWith('.bias')) a.fill(0);
    else if (shape.length === 1) a.fill(1);
    else {
      const s = /o_proj|down_proj/.test(name) ? std / Math.sqrt(2 * c.numLayers) : std;
      for (let i = 0; i < n; i++) a[i] = s * rng.normal();
    }
    out[name] = a;
  }
  return out;
}

/** Soft targets for distillation: `[T, vocab]` probabilities (e.g. a teacher model's softmax), row-major. */
export interface SoftTargets {
  probs: ArrayLike<number>;
}

/** Options of {@link lossAndGrad}. */
export interface LossAndGradOptions {
  /** Activation checkpointing: keep only block inputs, recompute each block before its backward (default false). */
  checkpoint?: boolean;
  /**
   * Frozen parameters stored as f16 bits, by name (mixed precision: half the memory of a frozen base). Each is
   * converted to f32 (exactly) where it is used and dropped again; they get no gradients. `params` takes precedence.
   */
  half?: Readonly<Record<string, Uint16Array>>;
}

/** Result of {@link lossAndGrad}. */
export interface LossAndGrad {
  /** Mean cross-entropy over the non-ignored targets. */
  loss: number;
  /** Number of targets that count. */
  count: number;
  /** Gradients by parameter name (absent when `grad` was false). */
  grads?: TrainParams;
}

/**
 * Training forward of one sequence (`tokens[t]` predicts `targets[t]`; `ignoreIndex` −100 skips a position; or soft
 * targets, see {@link SoftTargets}) through embedding, `numLayers` × (RMSNorm, RoPE GQA causal attention — Qwen3's
 * queries and keys RMS-normed per head before RoPE —, residual,
 * RMSNorm, SwiGLU, residual), final RMSNorm and the LM head (the embedding when tied), then cross-entropy; with `grad`
 * (default true) the backward pass of every op in reverse, activations kept from the forward. Gradients are of the mean
 * loss of this sequence. With `trainable`, gradients are computed (and returned) only for those parameter names: frozen
 * weights skip their weight-gradient products (LoRA fine-tuning freezes everything but the adapters). With `into`,
 * gradients are added to those buffers (gradient accumulation without temporaries) and returned as `grads`. With
 * `options.checkpoint`, only each block's input is kept from the forward and the block's activations are recomputed
 * just before its backward (activation checkpointing): activation memory drops from `layers` blocks' worth to one
 * block's plus `layers·T·hidden` values, for about one more forward pass; results are bit-identical.
 */
export function lossAndGrad(
  params: TrainParams,
  c: TrainConfig,
  tokens: ArrayLike<number>,
  targets: ArrayLike<number> | SoftTargets,
  grad = true,
  trainable?: ReadonlySet<string>,
  into?: TrainParams,
  options: LossAndGradOptions = {},
): LossAndGrad {
  const T = tokens.length;
  const d = c.hiddenSize;
  const I = c.intermediateSize;
  const qd = c.numHeads * c.headDim;
  const kd = c.numKvHeads * c.headDim;
  const shape = { T, heads: c.numHeads, kvHeads: c.numKvHeads, headDim: c.headDim };
  const qkNorm = qkNormOf(c);
  const half = options.half;
  const P = (name: string): Vec => {
    const bits = params[name] ? undefined : half?.[name];
    const v = bits ? f16ArrayToF32(bits) : params[name];
    if (!v) throw new CalderaError('E_MISSING', `lossAndGrad: parameter ${name} is missing`);
    return v;
  };
  const emb = P('model.embed_tokens.weight');
  const headName = tiedHead(c) ? 'model.embed_tokens.weight' : 'lm_head.weight';
  const head = tiedHead(c) ? emb : P(headName);
  const ropeConfig = { headDim: c.headDim, ropeTheta: c.ropeTheta, ropeScaling: c.ropeScaling ?? null };
  const invFreq = ropeInvFreq(ropeConfig);
  const ropeScale = ropeAttentionFactor(ropeConfig);
  /** A linear layer's bias (`prefix.bias`), when the parameters have one. */
  const biasOf = (prefix: string): Vec | null => {
    const name = `${prefix}.bias`;
    return params[name] || half?.[name] ? P(name) : null;
  };
  const loraOf = (prefix: string, inF: number, outF: number): LoraPair | null => {
    const a = params[`${prefix}.lora_A`];
    const b = params[`${prefix}.lora_B`];
    if (!a || !b) return null;
    const rank = a.length / outF;
    if (!Number.isInteger(rank) || b.length !== rank * inF)
      throw new CalderaError(
        'E_SHAPE',
        `lossAndGrad: ${prefix}.lora_A has ${a.length} and lora_B ${b.length} values, expected [${outF}, r] and [r, ${inF}]`,
      );
    return { a, b, rank };
  };
  const zs = new Map<string, Vec>();
  /** Linear `prefix` (weight `prefix.weight`, optional bias and adapter) on `[T, inF]`. */
  const lf = (prefix: string, xin: Vec, inF: number, outF: number): Vec => {
    const y = linearForward(xin, P(`${prefix}.weight`), T, inF, outF);
    const bias = biasOf(prefix);
    if (bias) addBias(y, bias, prefix, T, outF);
    const lora = loraOf(prefix, inF, outF);
    if (lora) zs.set(prefix, loraForward(y, xin, lora, T, inF, outF));
    return y;
  };
  let x = zerosLike(emb, T * d);
  for (let t = 0; t < T; t++) {
    const id = tokens[t]!;
    if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize)
      throw new CalderaError('E_VALUE', `lossAndGrad: token ${id} at ${t} is outside [0, ${c.vocabSize})`);
    x.set(emb.subarray(id * d, id * d + d), t * d);
  }
  /** Forward of block `l` on its input `x0`: the block's output and the activations its backward needs. */
  const blockForward = (l: number, x0: Vec) => {
    const p = `model.layers.${l}.`;
    const n1 = rmsNormForward(x0, P(`${p}input_layernorm.weight`), T, d, c.rmsNormEps);
    const qRaw = lf(`${p}self_attn.q_proj`, n1.y, d, qd);
    const kRaw = lf(`${p}self_attn.k_proj`, n1.y, d, kd);
    const v = lf(`${p}self_attn.v_proj`, n1.y, d, kd);
    // Qwen3: every head's query and key RMS-normed over headDim before RoPE (rows: T·heads)
    const qn = qkNorm
      ? rmsNormForward(qRaw, P(`${p}self_attn.q_norm.weight`), T * c.numHeads, c.headDim, c.rmsNormEps)
      : null;
    const kn = qkNorm
      ? rmsNormForward(kRaw, P(`${p}self_attn.k_norm.weight`), T * c.numKvHeads, c.headDim, c.rmsNormEps)
      : null;
    // SmolLM3's NoPE blocks attend with the queries and keys as they are
    const rotates = appliesRope(c, l);
    const q = rotates
      ? ropeApply(qn?.y ?? qRaw, T, c.numHeads, c.headDim, invFreq, { scale: ropeScale })
      : (qn?.y ?? qRaw);
    const k = rotates
      ? ropeApply(kn?.y ?? kRaw, T, c.numKvHeads, c.headDim, invFreq, { scale: ropeScale })
      : (kn?.y ?? kRaw);
    const att = attentionForward(q, k, v, shape);
    const ao = lf(`${p}self_attn.o_proj`, att.out, qd, d);
    const x1 = zerosLike(x0, T * d);
    for (let i = 0; i < T * d; i++) x1[i] = x0[i]! + ao[i]!;
    const n2 = rmsNormForward(x1, P(`${p}post_attention_layernorm.weight`), T, d, c.rmsNormEps);
    const gate = lf(`${p}mlp.gate_proj`, n2.y, d, I);
    const up = lf(`${p}mlp.up_proj`, n2.y, d, I);
    const h = swigluForward(gate, up);
    const mo = lf(`${p}mlp.down_proj`, h, I, d);
    const out = zerosLike(x0, T * d);
    for (let i = 0; i < T * d; i++) out[i] = x1[i]! + mo[i]!;
    return { out, cache: { x0, n1, qRaw, kRaw, qn, kn, q, k, v, att, x1, n2, gate, up, h } };
  };
  type BlockCache = ReturnType<typeof blockForward>['cache'];
  const checkpoint = (options.checkpoint ?? false) && grad;
  const caches: BlockCache[] = [];
  const inputs: Vec[] = []; // with checkpointing: each block's input only
  for (let l = 0; l < c.numLayers; l++) {
    const r = blockForward(l, x);
    if (checkpoint) inputs.push(x);
    else if (grad) caches.push(r.cache);
    x = r.out;
  }
  const nf = rmsNormForward(x, P('model.norm.weight'), T, d, c.rmsNormEps);
  const logits = linearForward(nf.y, head, T, d, c.vocabSize);
  const ce =
    'probs' in targets
      ? softCrossEntropy(logits, T, c.vocabSize, targets.probs)
      : crossEntropy(logits, T, c.vocabSize, targets);
  if (!grad) return { loss: ce.loss, count: ce.count };

  const g: TrainParams = {};
  for (const [name, v] of Object.entries(params))
    if (!trainable || trainable.has(name)) {
      const buf = into?.[name];
      if (into && (!buf || buf.length !== v.length))
        throw new CalderaError(
          'E_SHAPE',
          `lossAndGrad: gradient buffer for ${name} is missing or of the wrong size`,
        );
      g[name] = buf ?? zerosLike(v, v.length);
    }
  const G = (name: string): Vec | null => g[name] ?? null;
  /** Backward of {@link lf}: returns dx; accumulates the gradients of the trainable weight / bias / adapter. */
  const lb = (prefix: string, dy: Vec, xin: Vec, inF: number, outF: number): Vec => {
    const dx = linearBackward(dy, xin, P(`${prefix}.weight`), G(`${prefix}.weight`), T, inF, outF);
    const db = G(`${prefix}.bias`);
    for (let t = 0; db && t < T; t++) for (let o = 0; o < outF; o++) db[o] = db[o]! + dy[t * outF + o]!;
    const lora = loraOf(prefix, inF, outF);
    if (lora)
      loraBackward(
        dx,
        dy,
        xin,
        zs.get(prefix)!,
        lora,
        G(`${prefix}.lora_A`),
        G(`${prefix}.lora_B`),
        T,
        inF,
        outF,
      );
    return dx;
  };
  const dNf = linearBackward(ce.dLogits, nf.y, head, G(headName), T, d, c.vocabSize);
  const fb = rmsNormBackward(dNf, x, P('model.norm.weight'), nf.cache, T, d);
  addIfTrainable(G('model.norm.weight'), fb.dw);
  let dx = fb.dx;
  for (let l = c.numLayers - 1; l >= 0; l--) {
    const p = `model.layers.${l}.`;
    // recomputing the block also refreshes its adapters' intermediates in `zs`
    const a = checkpoint ? blockForward(l, inputs[l]!).cache : caches[l]!;
    // x = x1 + down(swiglu(gate(n2), up(n2)))
    const dh = lb(`${p}mlp.down_proj`, dx, a.h, I, d);
    const sw = swigluBackward(dh, a.gate, a.up);
    const dn2 = lb(`${p}mlp.gate_proj`, sw.dGate, a.n2.y, d, I);
    addInto(dn2, lb(`${p}mlp.up_proj`, sw.dUp, a.n2.y, d, I));
    const b2 = rmsNormBackward(dn2, a.x1, P(`${p}post_attention_layernorm.weight`), a.n2.cache, T, d);
    addIfTrainable(G(`${p}post_attention_layernorm.weight`), b2.dw);
    const dx1 = dx;
    addInto(dx1, b2.dx);
    // x1 = x0 + o(attn(rope(q(n1)), rope(k(n1)), v(n1)))
    const dAtt = lb(`${p}self_attn.o_proj`, dx1, a.att.out, qd, d);
    const ab = attentionBackward(dAtt, a.q, a.k, a.v, a.att.cache, shape);
    const rotates = appliesRope(c, l);
    let dqRaw = rotates
      ? ropeApply(ab.dq, T, c.numHeads, c.headDim, invFreq, { scale: ropeScale, transpose: true })
      : ab.dq;
    let dkRaw = rotates
      ? ropeApply(ab.dk, T, c.numKvHeads, c.headDim, invFreq, { scale: ropeScale, transpose: true })
      : ab.dk;
    if (a.qn && a.kn) {
      const qName = `${p}self_attn.q_norm.weight`;
      const kName = `${p}self_attn.k_norm.weight`;
      const bq = rmsNormBackward(dqRaw, a.qRaw, P(qName), a.qn.cache, T * c.numHeads, c.headDim);
      const bk = rmsNormBackward(dkRaw, a.kRaw, P(kName), a.kn.cache, T * c.numKvHeads, c.headDim);
      addIfTrainable(G(qName), bq.dw);
      addIfTrainable(G(kName), bk.dw);
      dqRaw = bq.dx;
      dkRaw = bk.dx;
    }
    const dn1 = lb(`${p}self_attn.q_proj`, dqRaw, a.n1.y, d, qd);
    addInto(dn1, lb(`${p}self_attn.k_proj`, dkRaw, a.n1.y, d, kd));
    addInto(dn1, lb(`${p}self_attn.v_proj`, ab.dv, a.n1.y, d, kd));
    const b1 = rmsNormBackward(dn1, a.x0, P(`${p}input_layernorm.weight`), a.n1.cache, T, d);
    addIfTrainable(G(`${p}input_layernorm.weight`), b1.dw);
    addInto(dx1, b1.dx);
    dx = dx1;
  }
  const dEmb = G('model.embed_tokens.weight');
  for (let t = 0; dEmb && t < T; t++) {
    const o = tokens[t]! * d;
    for (let j = 0; j < d; j++) dEmb[o + j] = dEmb[o + j]! + dx[t * d + j]!;
  }
  return { loss: ce.loss, count: ce.count, grads: into ?? g };
}

/** Adds `bias` (`[outF]`) to every row of `y` (`[T, outF]`) in place. */
function addBias(y: Vec, bias: Vec, prefix: string, T: number, outF: number): void {
  if (bias.length !== outF)
    throw new CalderaError(
      'E_SHAPE',
      `lossAndGrad: ${prefix}.bias has ${bias.length} values, expected ${outF}`,
    );
  for (let t = 0; t < T; t++) for (let o = 0; o < outF; o++) y[t * outF + o] = y[t * outF + o]! + bias[o]!;
}

function addIfTrainable(acc: Vec | null, v: Vec): void {
  if (acc) addInto(acc, v);
}

function addInto(acc: Vec, v: Vec): void {
  for (let i = 0; i < acc.length; i++) acc[i] = acc[i]! + v[i]!;
}
