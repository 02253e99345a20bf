/**
 * Model configuration read from a Hugging Face `config.json` (docs/architecture.md, "Model conventions"): the one
 * parser of @caldera/runtime-node and @caldera/runtime-webgpu (and of the CLI through them).
 */
import { CalderaError, describeValue } from './errors.js';

/** The architecture parameters the runtime needs, read from a Hugging Face `config.json`. */
export interface ModelConfig {
  /**
   * The model's class. `Qwen3ForCausalLM` is Qwen2's layout with no default biases and an RMSNorm of each head's
   * query and key before RoPE (`q_norm`/`k_norm`, see {@link hasQkNorm}). `SmolLM3ForCausalLM` is Llama's layout whose
   * NoPE blocks (every fourth by default) apply no RoPE ({@link ModelConfig.nopeLayers}).
   */
  architecture:
    | 'LlamaForCausalLM'
    | 'MistralForCausalLM'
    | 'Qwen2ForCausalLM'
    | 'Qwen3ForCausalLM'
    | 'SmolLM3ForCausalLM';
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  /**
   * How RoPE's frequencies are stretched for a longer context than the model was trained on (`rope_scaling`, or
   * transformers 5's `rope_parameters`): Llama 3's, YaRN (Qwen's long-context setting) or linear; null for plain RoPE.
   * {@link ropeInvFreq} and {@link ropeAttentionFactor} turn it into what the runtimes apply.
   */
  ropeScaling: RopeScaling | null;
  /**
   * The most positions the runtimes run: `max_position_embeddings`, or the `sliding_window` when that is smaller (the
   * runtimes attend to every earlier position, which is the model's sliding-window attention up to the window). With
   * YaRN, the stretched context when that is longer: `factor × original_max_position_embeddings` (Qwen3's model cards
   * add YaRN with factor 4 over 32768 positions to a config of 40960 positions to run 131072).
   */
  maxPositions: number;
  /**
   * `sliding_window` when the model uses one (Mistral; Qwen2 and Qwen3 with `use_sliding_window`, when some layer
   * slides: the layers from `max_window_layers`, default 28, on; their config classes' 4096 where the field is absent;
   * SmolLM3 with `use_sliding_window` and a `sliding_window`, whose NoPE blocks slide), else null.
   */
  slidingWindow: number | null;
  tieWordEmbeddings: boolean;
  /**
   * The attention projections have biases: q/k/v (Qwen2 always; Llama, Qwen3 and SmolLM3 with `attention_bias`, where
   * o_proj has one too; never Mistral, whose transformers model has none). See {@link declaredBias}.
   */
  attentionBias: boolean;
  /**
   * gate/up/down have biases (Llama's and SmolLM3's `mlp_bias`; Mistral, Qwen2 and Qwen3 have none). See
   * {@link declaredBias}.
   */
  mlpBias: boolean;
  bosTokenId: number | null;
  /**
   * The first end-of-sequence id of `eos_token_id` (a number or a list), or null: `eosTokenIds[0] ?? null`.
   *
   * @deprecated Use {@link ModelConfig.eosTokenIds}: models may end a sequence at several ids (Llama 3 chat models
   * list `<|end_of_text|>` and `<|eot_id|>`), and generation that stops only at the first runs on past the others.
   * Kept for compatibility.
   */
  eosTokenId: number | null;
  /**
   * Every end-of-sequence id of `eos_token_id` (Llama 3 chat models list several, e.g. `<|end_of_text|>` and
   * `<|eot_id|>`); generation should stop at any of them. Empty when there is none.
   */
  eosTokenIds: number[];
  /**
   * The blocks whose attention applies no RoPE at all (SmolLM3's NoPE layers: `no_rope_layers[i]` 0, by default every
   * fourth block, `no_rope_layer_interval` 4), in increasing order. Absent or empty: every block rotates queries and
   * keys. See {@link appliesRope}.
   */
  nopeLayers?: number[];
}

/**
 * RoPE scaling for contexts beyond the trained length, as transformers computes each type (`rope_type`, or `type` in
 * older configs). Every length is in positions.
 */
export type RopeScaling = Llama3RopeScaling | YarnRopeScaling | LinearRopeScaling;

/** Llama 3.1's scaling (`rope_type: 'llama3'`): low frequencies divided by `factor`, a smooth band between. */
export interface Llama3RopeScaling {
  type: 'llama3';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositions: number;
}

/**
 * YaRN (`rope_type: 'yarn'`, Peng et al. 2023): each frequency between its original (dimensions that turn more than
 * `betaFast` times over the original context) and divided by `factor` (fewer than `betaSlow` turns), on a linear ramp
 * over the dimensions between; cos and sin are multiplied by `attentionFactor`.
 */
export interface YarnRopeScaling {
  type: 'yarn';
  factor: number;
  /** The trained context (`original_max_position_embeddings`; `max_position_embeddings` when absent). */
  originalMaxPositions: number;
  /** `beta_fast`, default 32. */
  betaFast: number;
  /** `beta_slow`, default 1. */
  betaSlow: number;
  /** Round the ramp's ends outwards to whole dimensions (`truncate`, default true; gpt-oss sets false). */
  truncate: boolean;
  /**
   * The factor on cos and sin (so on every attention logit, squared): `attention_factor` when given, else
   * `0.1·ln(factor) + 1` (1 for factor ≤ 1), or with DeepSeek's `mscale` and `mscale_all_dim` both set the ratio of
   * that formula with each as the log's coefficient.
   */
  attentionFactor: number;
}

/** Linear position interpolation (`rope_type: 'linear'`): every frequency divided by `factor`. */
export interface LinearRopeScaling {
  type: 'linear';
  factor: number;
}

const SUPPORTED = [
  'LlamaForCausalLM',
  'MistralForCausalLM',
  'Qwen2ForCausalLM',
  'Qwen3ForCausalLM',
  'SmolLM3ForCausalLM',
] as const;

/** The class `model_type` names where a config names none. */
const MODEL_TYPES: Readonly<Record<string, (typeof SUPPORTED)[number]>> = {
  llama: 'LlamaForCausalLM',
  mistral: 'MistralForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
  qwen3: 'Qwen3ForCausalLM',
  smollm3: 'SmolLM3ForCausalLM',
};

/** Older names of the supported classes (the first Hugging Face conversions of LLaMA wrote `LLaMAForCausalLM`). */
const ARCHITECTURE_ALIASES: Readonly<Record<string, (typeof SUPPORTED)[number]>> = {
  LLaMAForCausalLM: 'LlamaForCausalLM',
};

/**
 * Parse and validate a Hugging Face `config.json` object. `file` names it in errors: `E_FORMAT` listing every missing
 * or non-numeric field (a field with a default may be absent or null, as Hugging Face reads it, but not a string or
 * a non-finite number), then every invalid one (sizes not positive integers, an odd head size, a negative
 * `rms_norm_eps`, `rope_theta` ≤ 0, a Llama 3 `rope_scaling` without its four positive numbers or with
 * `high_freq_factor` ≤ `low_freq_factor`, a YaRN or linear one whose fields are not positive numbers);
 * `E_UNSUPPORTED` for a `quantization_config` (GPTQ, AWQ, FP8, …), another architecture (`architectures[0]`, or
 * `model_type` where no class is named), a `rope_scaling` other than Llama 3's, YaRN or linear (dynamic NTK, whose
 * frequencies change with the sequence's length, and LongRoPE are not read), or a `hidden_act` other than `silu`.
 * RoPE is read from transformers 5's `rope_parameters` as from the older `rope_theta`/`rope_scaling` (see
 * `ropeFields`).
 */
export function parseModelConfig(json: unknown, file = 'config.json'): ModelConfig {
  if (!json || typeof json !== 'object' || Array.isArray(json))
    throw new CalderaError('E_FORMAT', `${file}: not a JSON object (got ${describeValue(json)})`);
  const c = json as Record<string, unknown>;
  // architectures[0] names the model's class; model_type only the family, so it counts only where no class is named
  // (a LlamaForSequenceClassification has model_type 'llama' and no language-model head)
  const named = Array.isArray(c.architectures) && c.architectures.length > 0;
  const arch = named ? String((c.architectures as unknown[])[0]) : String(c.model_type ?? '');
  const archName = named
    ? (SUPPORTED.find((a) => a === arch) ??
      (Object.hasOwn(ARCHITECTURE_ALIASES, arch) ? ARCHITECTURE_ALIASES[arch]! : null))
    : typeof c.model_type === 'string' && Object.hasOwn(MODEL_TYPES, c.model_type)
      ? MODEL_TYPES[c.model_type]!
      : null;
  if (!archName)
    throw new CalderaError(
      'E_UNSUPPORTED',
      `${file}: architecture '${arch}' is not supported (supported: ${SUPPORTED.join(', ')})`,
    );
  // GPTQ, AWQ, bitsandbytes, FP8: weights stored in another form than the float matrices the runtimes read (they
  // failed later as a missing tensor or an unknown dtype, as if the file were broken)
  const q = c.quantization_config;
  if (q !== undefined && q !== null)
    throw new CalderaError(
      'E_UNSUPPORTED',
      `${file}: quantization_config (${describeQuantization(q)}): a quantized checkpoint is not read; give the unquantized model`,
    );
  const missing: string[] = [];
  // absent or null: the default where there is one (Hugging Face's configs read null as unset); anything else must
  // be a finite number (a string, say, was read as the default before: "500000" for rope_theta gave 10000)
  const num = (k: string, def?: number, v: unknown = c[k]): number => {
    if (typeof v === 'number' && Number.isFinite(v)) return v;
    if ((v === undefined || v === null) && def !== undefined) return def;
    missing.push(v === undefined ? k : `${k} (${JSON.stringify(v) ?? String(v)})`);
    return NaN;
  };
  const rope = ropeFields(c, file);
  const smol = archName === 'SmolLM3ForCausalLM';
  const hiddenSize = num('hidden_size');
  const numHeads = num('num_attention_heads');
  const eosIds = tokenIdList(c.eos_token_id);
  if (eosIds === null)
    throw new CalderaError(
      'E_FORMAT',
      `${file}: eos_token_id ${JSON.stringify(c.eos_token_id)} is not a token id or a list of token ids`,
    );
  const cfg: ModelConfig = {
    architecture: archName,
    hiddenSize,
    intermediateSize: num('intermediate_size'),
    numLayers: num('num_hidden_layers'),
    numHeads,
    numKvHeads: num('num_key_value_heads', numHeads),
    // Qwen3's config class defaults head_dim to 128, not hidden_size / num_attention_heads (Qwen3-0.6B: 1024 / 16 = 64)
    headDim: num('head_dim', archName === 'Qwen3ForCausalLM' ? QWEN3_HEAD_DIM : hiddenSize / numHeads),
    vocabSize: num('vocab_size'),
    rmsNormEps: num('rms_norm_eps', 1e-6),
    // SmolLM3's config class defaults rope_theta to 2e6 (its `default_theta`), the others to 10000
    ropeTheta: num(rope.thetaName, smol ? SMOLLM3_ROPE_THETA : 10000, rope.theta),
    ropeScaling: null,
    maxPositions: num('max_position_embeddings', 2048),
    slidingWindow: null,
    // SmolLM3's config class ties them by default (its released config.json leaves the field out); the others' do not
    tieWordEmbeddings: c.tie_word_embeddings === true || (smol && c.tie_word_embeddings == null),
    // as transformers builds them: Qwen2's q/k/v always; Llama's from these two fields, Qwen3's (a Llama attention)
    // from attention_bias; Mistral has none
    attentionBias:
      archName === 'Qwen2ForCausalLM' ||
      ((archName === 'LlamaForCausalLM' || archName === 'Qwen3ForCausalLM' || smol) &&
        c.attention_bias === true),
    mlpBias: (archName === 'LlamaForCausalLM' || smol) && c.mlp_bias === true,
    bosTokenId: typeof c.bos_token_id === 'number' ? c.bos_token_id : null,
    eosTokenId: eosIds[0] ?? null,
    eosTokenIds: eosIds,
  };
  if (missing.length)
    throw new CalderaError('E_FORMAT', `${file}: missing or non-numeric fields: ${missing.join(', ')}`);
  const invalid = invalidFields(cfg);
  if (invalid.length) throw new CalderaError('E_FORMAT', `${file}: invalid fields: ${invalid.join('; ')}`);
  if (c.hidden_act !== undefined && c.hidden_act !== 'silu' && c.hidden_act !== 'swish')
    throw new CalderaError(
      'E_UNSUPPORTED',
      `${file}: hidden_act ${JSON.stringify(c.hidden_act)} is not supported (the MLP is SwiGLU: 'silu')`,
    );
  // transformers 5 takes a top-level original_max_position_embeddings before the scaling object's own (DeepSeek-style
  // configs write it there)
  const top = c.original_max_position_embeddings;
  const rs =
    rope.scaling && top !== undefined && top !== null
      ? { ...rope.scaling, original_max_position_embeddings: top }
      : rope.scaling;
  // rope_parameters without a rope_type is the default RoPE (it holds rope_theta); a rope_scaling object names its type
  const ropeType = rs
    ? (rs.rope_type ?? rs.type ?? (rope.scalingName === 'rope_parameters' ? 'default' : undefined))
    : 'default';
  if (ropeType === 'llama3') {
    cfg.ropeScaling = llama3Scaling(rs!, file, rope.scalingName);
  } else if (ropeType === 'yarn') {
    const yarn = yarnScaling(rs!, cfg.maxPositions, file, rope.scalingName);
    cfg.ropeScaling = yarn;
    cfg.maxPositions = Math.max(cfg.maxPositions, Math.floor(yarn.factor * yarn.originalMaxPositions));
  } else if (ropeType === 'linear') {
    cfg.ropeScaling = linearScaling(rs!, file, rope.scalingName);
  } else if (ropeType !== 'default') {
    throw new CalderaError(
      'E_UNSUPPORTED',
      `${file}: ${rope.scalingName} type '${String(ropeType)}' is not supported`,
    );
  }
  // Mistral attends to the last sliding_window positions; Qwen2/Qwen3 only with use_sliding_window (configs carry the
  // field either way); Llama never (transformers' Llama ignores the field, which configs converted from Mistral or Phi-3
  // carry: it capped their context). Within the window that is full causal attention, which the runtimes compute: so
  // they stop there. Qwen's layers slide from max_window_layers on (Hugging Face's default 28): with no layer past it,
  // none does
  const qwenSlides =
    c.use_sliding_window === true && num('max_window_layers', QWEN2_MAX_WINDOW_LAYERS) < cfg.numLayers;
  if (missing.length)
    throw new CalderaError('E_FORMAT', `${file}: missing or non-numeric fields: ${missing.join(', ')}`);
  const qwen = archName === 'Qwen2ForCausalLM' || archName === 'Qwen3ForCausalLM';
  if (smol) cfg.nopeLayers = nopeLayersOf(c, cfg.numLayers, file);
  // SmolLM3 slides its NoPE layers' attention with use_sliding_window and a sliding_window (layer_types, when the
  // config writes them, say which layers)
  const smolSlides =
    smol &&
    c.use_sliding_window === true &&
    (Array.isArray(c.layer_types)
      ? (c.layer_types as unknown[]).includes('sliding_attention')
      : cfg.nopeLayers!.length > 0);
  // Qwen2Config and Qwen3Config default sliding_window to 4096 (null is no window there too)
  const sw =
    archName === 'MistralForCausalLM' || smolSlides
      ? c.sliding_window
      : qwen && qwenSlides
        ? (c.sliding_window ?? (c.sliding_window === undefined ? QWEN_SLIDING_WINDOW : null))
        : undefined;
  if (sw !== undefined && sw !== null) {
    if (!Number.isSafeInteger(sw) || (sw as number) < 1)
      throw new CalderaError(
        'E_FORMAT',
        `${file}: sliding_window ${JSON.stringify(sw)} is not a positive integer`,
      );
    cfg.slidingWindow = sw as number;
    cfg.maxPositions = Math.min(cfg.maxPositions, cfg.slidingWindow);
  }
  if (cfg.numHeads % cfg.numKvHeads !== 0) {
    throw new CalderaError(
      'E_FORMAT',
      `${file}: num_attention_heads ${cfg.numHeads} is not a multiple of num_key_value_heads ${cfg.numKvHeads}`,
    );
  }
  return cfg;
}

/**
 * Where a config keeps its RoPE settings: transformers ≥ 5 writes them in one `rope_parameters` object (`rope_theta`,
 * `rope_type` and the type's fields), earlier versions as `rope_theta` and `rope_scaling` at the top level. Both may be
 * present (a config converted by one version and edited by hand) but must then agree (`E_FORMAT`); `rope_parameters`
 * per layer type (an object of objects, for models with sliding and full attention layers) and a
 * `partial_rotary_factor` other than 1 are `E_UNSUPPORTED` (the runtimes rotate every dimension of a head with one
 * set of frequencies). Before, `rope_parameters` was not read at all: its theta and scaling were silently dropped.
 */
function ropeFields(
  c: Record<string, unknown>,
  file: string,
): { theta: unknown; thetaName: string; scaling: Record<string, unknown> | null; scalingName: string } {
  const partial = (v: unknown, name: string) => {
    if (v !== undefined && v !== null && v !== 1)
      throw new CalderaError(
        'E_UNSUPPORTED',
        `${file}: ${name} ${JSON.stringify(v)} is not supported (RoPE over part of each head)`,
      );
  };
  partial(c.partial_rotary_factor, 'partial_rotary_factor');
  const legacy = c.rope_scaling;
  if (legacy !== undefined && legacy !== null && (typeof legacy !== 'object' || Array.isArray(legacy)))
    throw new CalderaError('E_FORMAT', `${file}: rope_scaling ${JSON.stringify(legacy)} is not an object`);
  const rp = c.rope_parameters;
  if (rp === undefined || rp === null)
    return {
      theta: c.rope_theta,
      thetaName: 'rope_theta',
      scaling: (legacy as Record<string, unknown> | null | undefined) ?? null,
      scalingName: 'rope_scaling',
    };
  if (typeof rp !== 'object' || Array.isArray(rp))
    throw new CalderaError('E_FORMAT', `${file}: rope_parameters ${JSON.stringify(rp)} is not an object`);
  const p = rp as Record<string, unknown>;
  // objects of settings per layer type; an array is a field of some RoPE type (longrope's factors), named by its type
  const nested = Object.keys(p).filter(
    (k) => p[k] !== null && typeof p[k] === 'object' && !Array.isArray(p[k]),
  );
  if (nested.length > 0)
    throw new CalderaError(
      'E_UNSUPPORTED',
      `${file}: rope_parameters per layer type (${nested.join(', ')}) is not supported`,
    );
  partial(p.partial_rotary_factor, 'rope_parameters.partial_rotary_factor');
  const conflicts: string[] = [];
  if (
    p.rope_theta !== undefined &&
    c.rope_theta !== undefined &&
    c.rope_theta !== null &&
    c.rope_theta !== p.rope_theta
  )
    conflicts.push(
      `rope_theta ${JSON.stringify(c.rope_theta)} and rope_parameters.rope_theta ${JSON.stringify(p.rope_theta)}`,
    );
  const typeOf = (r: Record<string, unknown>) => r.rope_type ?? r.type ?? 'default';
  if (legacy && typeOf(legacy as Record<string, unknown>) !== typeOf(p))
    conflicts.push(
      `rope_scaling type ${JSON.stringify(typeOf(legacy as Record<string, unknown>))} and rope_parameters.rope_type ${JSON.stringify(typeOf(p))}`,
    );
  if (conflicts.length > 0)
    throw new CalderaError('E_FORMAT', `${file}: RoPE settings disagree: ${conflicts.join('; ')}`);
  return {
    theta: p.rope_theta !== undefined ? p.rope_theta : c.rope_theta,
    thetaName: p.rope_theta !== undefined ? 'rope_parameters.rope_theta' : 'rope_theta',
    scaling: p,
    scalingName: 'rope_parameters',
  };
}

/** A config's `quantization_config` in a few words: its `quant_method` when it names one. */
function describeQuantization(q: unknown): string {
  const method =
    typeof q === 'object' && q !== null ? (q as { quant_method?: unknown }).quant_method : undefined;
  return typeof method === 'string' ? method : describeValue(q);
}

/** Hugging Face's default of Qwen2's and Qwen3's `max_window_layers` (the first layer that slides with `use_sliding_window`). */
const QWEN2_MAX_WINDOW_LAYERS = 28;

/** Hugging Face's default of Qwen2's and Qwen3's `sliding_window` (used with `use_sliding_window`). */
const QWEN_SLIDING_WINDOW = 4096;

/** Hugging Face's default of SmolLM3's `rope_theta` (its config class's `default_theta`). */
const SMOLLM3_ROPE_THETA = 2000000;

/** Hugging Face's default of SmolLM3's `no_rope_layer_interval`: every fourth block applies no RoPE. */
const SMOLLM3_NOPE_INTERVAL = 4;

/**
 * SmolLM3's NoPE blocks: where `no_rope_layers` (a 1 or 0 per block, 1 meaning the block applies RoPE, as transformers
 * reads it; longer lists are allowed, as there) has a 0, or without that list every `no_rope_layer_interval`-th block
 * (default 4: blocks 3, 7, 11, …). `E_FORMAT` for a list shorter than the model or holding anything but 0 and 1, or an
 * interval that is not a positive integer.
 */
function nopeLayersOf(c: Record<string, unknown>, numLayers: number, file: string): number[] {
  const list = c.no_rope_layers;
  if (list !== undefined && list !== null) {
    if (
      !Array.isArray(list) ||
      list.length < numLayers ||
      list.some((v) => v !== 0 && v !== 1 && v !== true && v !== false)
    )
      throw new CalderaError(
        'E_FORMAT',
        `${file}: no_rope_layers must list 1 (RoPE) or 0 (no RoPE) for each of the ${numLayers} blocks, got ${describeValue(list)}`,
      );
    return Array.from({ length: numLayers }, (_, i) => i).filter((i) => !list[i]);
  }
  const every = c.no_rope_layer_interval ?? SMOLLM3_NOPE_INTERVAL;
  if (!Number.isSafeInteger(every) || (every as number) < 1)
    throw new CalderaError(
      'E_FORMAT',
      `${file}: no_rope_layer_interval ${JSON.stringify(every)} is not a positive integer`,
    );
  return Array.from({ length: numLayers }, (_, i) => i).filter((i) => (i + 1) % (every as number) === 0);
}

/**
 * Whether block `b` of `config` rotates its queries and keys (RoPE): all blocks but SmolLM3's NoPE layers
 * ({@link ModelConfig.nopeLayers}).
 */
export function appliesRope(config: Pick<ModelConfig, 'nopeLayers'>, b: number): boolean {
  return !config.nopeLayers?.includes(b);
}

/** Hugging Face's default of Qwen3's `head_dim` (its config class sets it; other classes derive it). */
const QWEN3_HEAD_DIM = 128;

/**
 * Whether `config`'s attention normalizes each head's query and key over the head dimension before RoPE — Qwen3's
 * `self_attn.q_norm` and `self_attn.k_norm` (RMSNorm with a weight of `head_dim` values and `rms_norm_eps`), which
 * the loaders then require: {@link qkNormNames}.
 */
export function hasQkNorm(config: Pick<ModelConfig, 'architecture'>): boolean {
  return config.architecture === 'Qwen3ForCausalLM';
}

/**
 * The per-head query and key norm weights of block `i` ({@link hasQkNorm}), Hugging Face names: each holds
 * `head_dim` values; an empty list for a model without them.
 */
export function qkNormNames(config: Pick<ModelConfig, 'architecture'>, i: number): string[] {
  return hasQkNorm(config)
    ? [`model.layers.${i}.self_attn.q_norm.weight`, `model.layers.${i}.self_attn.k_norm.weight`]
    : [];
}

/**
 * A Llama 3 `rope_scaling` (`rope_type` 'llama3'): its four fields, each a positive finite number (Hugging Face
 * requires them all), `original_max_position_embeddings` an integer and `high_freq_factor` above `low_freq_factor`;
 * else `E_FORMAT` naming each that is not (a missing `factor` gave NaN inverse frequencies, so NaN logits, and equal
 * frequency factors divide by zero).
 */
function llama3Scaling(rs: Record<string, unknown>, file: string, name = 'rope_scaling'): Llama3RopeScaling {
  const bad: string[] = [];
  // every field required: no default
  const field = scalingFields(rs, bad);
  const s: Llama3RopeScaling = {
    type: 'llama3',
    factor: field('factor'),
    lowFreqFactor: field('low_freq_factor'),
    highFreqFactor: field('high_freq_factor'),
    originalMaxPositions: field('original_max_position_embeddings', undefined, true),
  };
  if (!(s.highFreqFactor > s.lowFreqFactor) && bad.length === 0)
    bad.push(`high_freq_factor ${s.highFreqFactor} is not above low_freq_factor ${s.lowFreqFactor}`);
  if (bad.length)
    throw new CalderaError('E_FORMAT', `${file}: invalid fields: ${name} (llama3): ${bad.join('; ')}`);
  return s;
}

/**
 * A reader of a RoPE scaling object's numbers: `field(k, def)` is `rs[k]` when that is a positive finite number (an
 * integer with `integer`), `def` when it is absent or null and `def` is given, else NaN with the problem noted in `bad`
 * (Llama 3's, YaRN's and linear scaling's fields).
 */
function scalingFields(rs: Record<string, unknown>, bad: string[]) {
  return (k: string, def?: number, integer = false): number => {
    const v = rs[k];
    if ((v === undefined || v === null) && def !== undefined) return def;
    if (typeof v === 'number' && Number.isFinite(v) && v > 0 && (!integer || Number.isSafeInteger(v)))
      return v;
    bad.push(`${k} ${JSON.stringify(v) ?? 'missing'} is not a positive ${integer ? 'integer' : 'number'}`);
    return NaN;
  };
}

/** YaRN's `0.1·m·ln(scale) + 1`, 1 for a scale ≤ 1 (the paper's attention temperature, as transformers writes it). */
function yarnMscale(scale: number, m = 1): number {
  return scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1;
}

/**
 * A YaRN `rope_scaling` as transformers 5 reads it: `factor` (null: `max_position_embeddings /
 * original_max_position_embeddings`, as there; a missing `factor`, which transformers 5 refuses, is read the same way),
 * `original_max_position_embeddings` (the config's top-level one first, as there, then the object's, default
 * `max_position_embeddings`),
 * `beta_fast`/`beta_slow` (32 and 1 where absent, null or 0), `truncate` (true), and the attention factor (see
 * {@link YarnRopeScaling.attentionFactor}). `E_FORMAT` names every field that is not a positive number.
 */
function yarnScaling(
  rs: Record<string, unknown>,
  maxPositions: number,
  file: string,
  name: string,
): YarnRopeScaling {
  const bad: string[] = [];
  const field = scalingFields(rs, bad);
  const original = field('original_max_position_embeddings', maxPositions, true);
  const factor = field(
    'factor',
    rs.original_max_position_embeddings == null ? undefined : maxPositions / original,
  );
  // transformers takes `or 32` / `or 1`: a 0 there is the default too
  const betaFast = rs.beta_fast === 0 ? 32 : field('beta_fast', 32);
  const betaSlow = rs.beta_slow === 0 ? 1 : field('beta_slow', 1);
  const mscale = rs.mscale === 0 ? 0 : field('mscale', 0);
  const mscaleAllDim = rs.mscale_all_dim === 0 ? 0 : field('mscale_all_dim', 0);
  const given = field('attention_factor', 0);
  const truncate = rs.truncate ?? true;
  if (typeof truncate !== 'boolean') bad.push(`truncate ${JSON.stringify(truncate)} is not true or false`);
  if (bad.length)
    throw new CalderaError('E_FORMAT', `${file}: invalid fields: ${name} (yarn): ${bad.join('; ')}`);
  const attentionFactor =
    given > 0
      ? given
      : mscale && mscaleAllDim
        ? yarnMscale(factor, mscale) / yarnMscale(factor, mscaleAllDim)
        : yarnMscale(factor);
  return {
    type: 'yarn',
    factor,
    originalMaxPositions: original,
    betaFast,
    betaSlow,
    truncate: truncate as boolean,
    attentionFactor,
  };
}

/** A linear `rope_scaling`: its `factor`, a positive number (`E_FORMAT` otherwise). */
function linearScaling(rs: Record<string, unknown>, file: string, name: string): LinearRopeScaling {
  const bad: string[] = [];
  const factor = scalingFields(rs, bad)('factor');
  if (bad.length)
    throw new CalderaError('E_FORMAT', `${file}: invalid fields: ${name} (linear): ${bad.join('; ')}`);
  return { type: 'linear', factor };
}

/**
 * The factor RoPE's cos and sin carry (transformers' `attention_scaling`): YaRN's attention factor, else 1. Rotating
 * queries and keys by it scales every attention logit by its square.
 */
export function ropeAttentionFactor(cfg: Pick<ModelConfig, 'ropeScaling'>): number {
  const s = checkedScaling(cfg.ropeScaling, 'ropeAttentionFactor');
  return s?.type === 'yarn' ? s.attentionFactor : 1;
}

/**
 * `s` when it is null or names a known type; else `E_VALUE` (a hand-built or stored scaling without `type`, the shape
 * before YaRN and linear scaling were read, was Llama 3's: it would otherwise give plain RoPE without a word).
 */
function checkedScaling(s: RopeScaling | null, fn: string): RopeScaling | null {
  const type = (s as { type?: unknown } | null)?.type;
  if (s !== null && s !== undefined && type !== 'llama3' && type !== 'yarn' && type !== 'linear')
    throw new CalderaError(
      'E_VALUE',
      `${fn}: ropeScaling ${describeValue(s)} has no known type ('llama3', 'yarn' or 'linear'; Llama 3's fields alone, as ` +
        `configs built before YaRN was read, need type: 'llama3')`,
    );
  return s ?? null;
}

/**
 * Why `config` gives the block's linear layer of this kind (`q_proj` … `down_proj`) a bias — `'attention_bias'` (q/k/v,
 * and o_proj too, as Llama's `attention_bias` does), `'Qwen2's q/k/v biases'` (not o_proj), `'mlp_bias'` (gate, up,
 * down) — or null when it has none. The loaders require these tensors (`E_MISSING` naming the reason: a model loaded
 * without them computes something else).
 */
export function declaredBias(
  config: Pick<ModelConfig, 'architecture' | 'attentionBias' | 'mlpBias'>,
  kind: string,
): string | null {
  const qwen = config.architecture === 'Qwen2ForCausalLM';
  switch (kind) {
    case 'q_proj':
    case 'k_proj':
    case 'v_proj':
      return config.attentionBias ? (qwen ? "Qwen2's q/k/v biases" : 'attention_bias') : null;
    case 'o_proj':
      return config.attentionBias && !qwen ? 'attention_bias' : null;
    case 'gate_proj':
    case 'up_proj':
    case 'down_proj':
      return config.mlpBias === true ? 'mlp_bias' : null;
    default:
      return null;
  }
}

/**
 * For loaders: `E_MISSING` when the weights have no `lm_head.weight` (`has` says which tensors they hold) and `config`
 * does not tie the head to the embedding: transformers would give such a model a random head, and the runtimes used
 * the embedding without a word (an export then kept the untied config without a head). `prefix` leads the message.
 */
export function assertHeadPresent(
  config: Pick<ModelConfig, 'tieWordEmbeddings'>,
  has: (tensor: string) => boolean,
  prefix = '',
): void {
  if (!config.tieWordEmbeddings && !has('lm_head.weight'))
    throw new CalderaError(
      'E_MISSING',
      `${prefix}missing tensor lm_head.weight, and config.json does not tie the head to the embedding ` +
        '(tie_word_embeddings is not true): set "tie_word_embeddings": true if the embedding is the head',
    );
}

/**
 * For loaders: `E_MISSING` when `config` declares a bias for the block's linear layer `name` ({@link declaredBias})
 * and the weights have no `<name>.bias` (`has` says which tensors they hold): loaded without it, the layer would
 * compute something else. `prefix` leads the message (e.g. the model's folder and ': ').
 */
export function assertDeclaredBias(
  config: Pick<ModelConfig, 'architecture' | 'attentionBias' | 'mlpBias'>,
  name: string,
  has: (tensor: string) => boolean,
  prefix = '',
): void {
  const why = declaredBias(config, name.slice(name.lastIndexOf('.') + 1));
  if (why !== null && !has(`${name}.bias`))
    throw new CalderaError('E_MISSING', `${prefix}tensor '${name}.bias' is missing (config.json: ${why})`);
}

/**
 * A token-id field that may be absent (`null` or missing: no ids), one id or a list of ids, as Hugging Face configs
 * write `eos_token_id`; `null` when it is something else.
 */
export function tokenIdList(v: unknown): number[] | null {
  if (v === undefined || v === null) return [];
  const list = Array.isArray(v) ? (v as unknown[]) : [v];
  return list.every((x) => Number.isSafeInteger(x) && (x as number) >= 0)
    ? [...new Set(list as number[])]
    : null;
}

/**
 * The ids generation stops at: `config.eosTokenIds` and the `eos_token_id` of the model's parsed
 * `generation_config.json` (null when it has none; Llama 3 chat models list `<|eot_id|>` only there), without
 * duplicates. `E_FORMAT` naming `file` when it is not a JSON object (a list, a string) or that field is not a token id
 * or a list of them; `E_VALUE` when `config`
 * is not a parsed config (null, undefined).
 */
export function stopTokenIdsOf(
  config: ModelConfig,
  generationConfig: unknown,
  file = 'generation_config.json',
): number[] {
  if (config === null || typeof config !== 'object' || !Array.isArray(config.eosTokenIds))
    throw new CalderaError(
      'E_VALUE',
      `stopTokenIdsOf: config must be a parsed config.json (parseModelConfig), got ${
        config !== null && typeof config === 'object'
          ? 'an object without eosTokenIds'
          : describeValue(config)
      }`,
    );
  // a file that holds a list, a string or a number is no generation config (it was read as one without stop ids)
  if (
    generationConfig !== undefined &&
    (typeof generationConfig !== 'object' || Array.isArray(generationConfig))
  )
    throw new CalderaError('E_FORMAT', `${file} is ${describeValue(generationConfig)}, not a JSON object`);
  const ids = tokenIdList((generationConfig as { eos_token_id?: unknown } | null)?.eos_token_id);
  if (ids === null)
    throw new CalderaError('E_FORMAT', `${file}: eos_token_id is not a token id or a list of token ids`);
  return [...new Set([...config.eosTokenIds, ...ids])];
}

/**
 * The values of a parsed config that would not fail to load but give non-finite or meaningless logits (a negative
 * `rms_norm_eps`, `rope_theta` 0, fractional sizes, an odd head size, which RoPE cannot rotate), each described.
 */
function invalidFields(cfg: ModelConfig): string[] {
  const out: string[] = [];
  const sizes: [string, number][] = [
    ['hidden_size', cfg.hiddenSize],
    ['intermediate_size', cfg.intermediateSize],
    ['num_hidden_layers', cfg.numLayers],
    ['num_attention_heads', cfg.numHeads],
    ['num_key_value_heads', cfg.numKvHeads],
    ['vocab_size', cfg.vocabSize],
    ['max_position_embeddings', cfg.maxPositions],
  ];
  for (const [k, v] of sizes)
    if (!Number.isSafeInteger(v) || v < 1) out.push(`${k} ${v} is not a positive integer`);
  if (!Number.isSafeInteger(cfg.headDim) || cfg.headDim < 2 || cfg.headDim % 2 !== 0)
    out.push(
      `head_dim ${cfg.headDim} (hidden_size / num_attention_heads when absent) is not an even positive integer`,
    );
  if (!(cfg.rmsNormEps >= 0)) out.push(`rms_norm_eps ${cfg.rmsNormEps} is negative`);
  if (!(cfg.ropeTheta > 0)) out.push(`rope_theta ${cfg.ropeTheta} is not positive`);
  return out;
}

/**
 * The seven linear layers of block `i`, Hugging Face names, in the order q, k, v, o, gate, up, down, each with its
 * kind (the name's last part, `q_proj` … `down_proj`, as `linearShape` and `declaredBias` take it) and the activation
 * it reads (`attn`: the normed block input, `o`: the attention output, `mlp`: the normed MLP input,
 * `down`: the SwiGLU product); layers with the same `input` share their input activations and so their Hessian.
 */
export function blockLinearNames(
  i: number,
): { name: string; kind: string; input: 'attn' | 'o' | 'mlp' | 'down' }[] {
  const p = `model.layers.${i}`;
  const named = [
    { name: `${p}.self_attn.q_proj`, input: 'attn' },
    { name: `${p}.self_attn.k_proj`, input: 'attn' },
    { name: `${p}.self_attn.v_proj`, input: 'attn' },
    { name: `${p}.self_attn.o_proj`, input: 'o' },
    { name: `${p}.mlp.gate_proj`, input: 'mlp' },
    { name: `${p}.mlp.up_proj`, input: 'mlp' },
    { name: `${p}.mlp.down_proj`, input: 'down' },
  ] as const;
  return named.map((l) => ({ ...l, kind: l.name.slice(l.name.lastIndexOf('.') + 1) }));
}

/** The weight shape `[out, in]` of a block's linear layer by kind (`q_proj` … `down_proj`, the last part of its name). */
export function linearShape(cfg: ModelConfig, kind: string): [number, number] {
  const { hiddenSize: d, intermediateSize: I, numHeads: H, numKvHeads: KV, headDim: hd } = cfg;
  switch (kind) {
    case 'q_proj':
      return [H * hd, d];
    case 'k_proj':
    case 'v_proj':
      return [KV * hd, d];
    case 'o_proj':
      return [d, H * hd];
    case 'gate_proj':
    case 'up_proj':
      return [I, d];
    case 'down_proj':
      return [d, I];
    default:
      throw new CalderaError('E_VALUE', `linearShape: unknown linear layer kind '${kind}'`);
  }
}

/**
 * Inverse frequencies of RoPE (`θ^(−2i/headDim)` for pair i), scaled as `ropeScaling` says (the fields of a config it
 * reads): Llama 3's bands, YaRN's ramp between each frequency and it divided by the factor, or all divided by it.
 */
export function ropeInvFreq(cfg: Pick<ModelConfig, 'headDim' | 'ropeTheta' | 'ropeScaling'>): Float64Array {
  const half = cfg.headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = cfg.ropeTheta ** (-(2 * i) / cfg.headDim);
  const s = checkedScaling(cfg.ropeScaling, 'ropeInvFreq');
  if (s?.type === 'linear') for (let i = 0; i < half; i++) inv[i]! /= s.factor;
  if (s?.type === 'yarn') {
    // the (fractional) pair index whose wavelength turns `turns` times over the original context
    const dimOf = (turns: number) =>
      (cfg.headDim * Math.log(s.originalMaxPositions / (turns * 2 * Math.PI))) /
      (2 * Math.log(cfg.ropeTheta));
    let low = dimOf(s.betaFast);
    let high = dimOf(s.betaSlow);
    if (s.truncate) [low, high] = [Math.floor(low), Math.ceil(high)];
    low = Math.max(low, 0);
    high = Math.min(high, cfg.headDim - 1);
    if (low === high) high += 0.001; // transformers' guard against a zero-width ramp
    for (let i = 0; i < half; i++) {
      // 1 keeps the frequency (fast dimensions, below `low`), 0 divides it by the factor (slow ones, above `high`)
      const keep = 1 - Math.min(Math.max((i - low) / (high - low), 0), 1);
      inv[i] = (inv[i]! / s.factor) * (1 - keep) + inv[i]! * keep;
    }
  }
  if (s?.type === 'llama3') {
    const lowWl = s.originalMaxPositions / s.lowFreqFactor;
    const highWl = s.originalMaxPositions / s.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const wl = (2 * Math.PI) / inv[i]!;
      if (wl > lowWl) inv[i]! /= s.factor;
      else if (wl >= highWl) {
        const t = (s.originalMaxPositions / wl - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        inv[i] = (1 - t) * (inv[i]! / s.factor) + t * inv[i]!;
      }
    }
  }
  return inv;
}
