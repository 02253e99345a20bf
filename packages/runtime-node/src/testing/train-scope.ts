import { tensor, type Rng } from '@caldera/core';
import { blockLinearNames, parseModelConfig, type ModelConfig } from '../config.js';
import { DenseLinear } from '../linear.js';
import { LlamaModel, type BlockWeights } from '../model.js';
import type { TrainParams } from '../train/model.js';

/**
 * A tiny model with everything the training engine supports beyond the reference model: an untied LM head, q/k/v
 * biases and Llama 3's RoPE scaling. headDim 4 gives frequencies 1 and 0.01 (wavelengths 6.3 and 628): with an
 * original context of 16 the first is blended and the second divided by 8, so the scaling changes both.
 */
export const SCOPE_TEST_CONFIG: ModelConfig = parseModelConfig({
  architectures: ['LlamaForCausalLM'],
  hidden_size: 16,
  intermediate_size: 24,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 13,
  max_position_embeddings: 256,
  tie_word_embeddings: false,
  attention_bias: true,
  rope_theta: 10000,
  rope_scaling: {
    rope_type: 'llama3',
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 16,
  },
});

/**
 * The runtime's model of f32 training parameters `p` (biases and Qwen3's query/key norms wherever `p` has them; the
 * head as `cfg` says).
 */
export function runtimeModelOf(cfg: ModelConfig, p: TrainParams): LlamaModel {
  const f32 = (name: string) => {
    const v = p[name];
    if (!(v instanceof Float32Array)) throw new Error(`runtimeModelOf: ${name} is missing or not f32`);
    return v;
  };
  const lin = (name: string, shape: [number, number]) =>
    new DenseLinear(
      tensor('f32', shape, f32(`${name}.weight`)),
      p[`${name}.bias`] ? f32(`${name}.bias`) : null,
    );
  const { hiddenSize: d, intermediateSize: I, numHeads: H, numKvHeads: KV, headDim: hd, vocabSize: V } = cfg;
  const shapes: [number, number][] = [
    [H * hd, d],
    [KV * hd, d],
    [KV * hd, d],
    [d, H * hd],
    [I, d],
    [I, d],
    [d, I],
  ];
  const blocks: BlockWeights[] = Array.from({ length: cfg.numLayers }, (_, b) => {
    const [q, k, v, o, gate, up, down] = blockLinearNames(b).map(({ name }, i) => lin(name, shapes[i]!));
    return {
      inputNorm: f32(`model.layers.${b}.input_layernorm.weight`),
      postAttnNorm: f32(`model.layers.${b}.post_attention_layernorm.weight`),
      // Qwen3's per-head query and key norms, where the parameters have them
      ...(p[`model.layers.${b}.self_attn.q_norm.weight`]
        ? {
            qNorm: f32(`model.layers.${b}.self_attn.q_norm.weight`),
            kNorm: f32(`model.layers.${b}.self_attn.k_norm.weight`),
          }
        : {}),
      q: q!,
      k: k!,
      v: v!,
      o: o!,
      gate: gate!,
      up: up!,
      down: down!,
    };
  });
  const embed = tensor('f32', [V, d], f32('model.embed_tokens.weight'));
  const lmHead = cfg.tieWordEmbeddings ? embed : tensor('f32', [V, d], f32('lm_head.weight'));
  return new LlamaModel(cfg, { embed, blocks, norm: f32('model.norm.weight'), lmHead });
}

/** Gives every bias of `params` (initialised to 0 by `initTrainParams`) N(0, std²) values from `rng`, in place. */
export function randomizeBiases(params: TrainParams, rng: Rng, std: number): TrainParams {
  for (const [name, p] of Object.entries(params))
    if (name.endsWith('.bias')) for (let i = 0; i < p.length; i++) p[i] = std * rng.normal();
  return params;
}

/** The Hugging Face config.json of {@link QWEN3_TEST_CONFIG}. */
export const QWEN3_HF = {
  architectures: ['Qwen3ForCausalLM'],
  hidden_size: 16,
  intermediate_size: 24,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 8,
  vocab_size: 13,
  max_position_embeddings: 256,
  tie_word_embeddings: true,
  attention_bias: true,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000,
};

/**
 * The tiny model of {@link SCOPE_TEST_CONFIG} as Qwen3 lays it out: per-head query and key norms, and (Qwen3's
 * `attention_bias`, a Llama attention) q/k/v/o biases; head_dim 8, not hidden_size / heads (4), as Qwen3-0.6B's 128
 * is not 64.
 */
export const QWEN3_TEST_CONFIG: ModelConfig = parseModelConfig(QWEN3_HF);

/** Gives every norm weight of `params` (initialised to 1 by `initTrainParams`) 1 + N(0, std²) values, in place. */
export function randomizeNorms(params: TrainParams, rng: Rng, std: number): TrainParams {
  for (const [name, p] of Object.entries(params))
    if (name.endsWith('norm.weight')) for (let i = 0; i < p.length; i++) p[i] = 1 + std * rng.normal();
  return params;
}
