import { Rng, serializeSafetensors, tensor, type CalderaLayerMeta, type Tensor } from '@caldera/core';
import { caldera, calderaCheckpointMeta, toCheckpointTensors } from '@caldera/lowrank';

/** Sizes and spreads of {@link randomLlamaTensors}. */
export interface RandomLlamaShape {
  hidden: number;
  /** Rows of k_proj and v_proj (KV heads × head size). */
  kvDim: number;
  intermediate: number;
  vocab: number;
  /** Standard deviation of the linear layers' weights. */
  std: number;
  /** An untied `lm_head.weight` of this standard deviation (default: none, tied). */
  lmHeadStd?: number;
  /** q/k/v biases of this standard deviation (Qwen2; default: none). */
  biasStd?: number;
  /** Rows of q_proj and columns of o_proj (heads × head size; default `hidden`). */
  qDim?: number;
  /**
   * Qwen3's per-head query and key norms (`self_attn.q_norm`, `self_attn.k_norm`) of this many values (the head size),
   * 1 ± 0.3, drawn after each block's linears (default: none).
   */
  qkNormDim?: number;
}

/**
 * The f32 tensors of a random 2-block Llama under Hugging Face names, drawn from `rng` in a fixed order: the embedding
 * (std 1), the LM head when untied, the final norm (1 ± 0.1), then per block its two norms and its seven linears
 * (each followed by its bias when q/k/v have biases), and its query and key norms with `qkNormDim`.
 */
export function randomLlamaTensors(rng: Rng, s: RandomLlamaShape): Record<string, Tensor> {
  const t: Record<string, Tensor> = {};
  const r = (name: string, shape: number[], std: number, mean = 0) =>
    (t[name] = tensor(
      'f32',
      shape,
      rng.fillNormal(new Float32Array(shape.reduce((a, b) => a * b, 1)), mean, std),
    ));
  const [d, kv, I, qd] = [s.hidden, s.kvDim, s.intermediate, s.qDim ?? s.hidden];
  r('model.embed_tokens.weight', [s.vocab, d], 1);
  if (s.lmHeadStd !== undefined) r('lm_head.weight', [s.vocab, d], s.lmHeadStd);
  r('model.norm.weight', [d], 0.1, 1);
  for (let b = 0; b < 2; b++) {
    const p = `model.layers.${b}`;
    r(`${p}.input_layernorm.weight`, [d], 0.1, 1);
    r(`${p}.post_attention_layernorm.weight`, [d], 0.1, 1);
    for (const [n, shape] of [
      ['self_attn.q_proj', [qd, d]],
      ['self_attn.k_proj', [kv, d]],
      ['self_attn.v_proj', [kv, d]],
      ['self_attn.o_proj', [d, qd]],
      ['mlp.gate_proj', [I, d]],
      ['mlp.up_proj', [I, d]],
      ['mlp.down_proj', [d, I]],
    ] as const) {
      r(`${p}.${n}.weight`, [...shape], s.std);
      if (s.biasStd !== undefined && /[qkv]_proj/.test(n)) r(`${p}.${n}.bias`, [shape[0]], s.biasStd);
    }
    if (s.qkNormDim !== undefined)
      for (const n of ['q_norm', 'k_norm']) r(`${p}.self_attn.${n}.weight`, [s.qkNormDim], 0.3, 1);
  }
  return t;
}

/**
 * Replaces the dense weights of the linear layers `names` in `tensors` by their CALDERA tensors (a quick
 * decomposition: rank 4, one outer and one inner iteration, no Hessian); returns their caldera.json entries.
 */
export function compressLayers(
  tensors: Record<string, Tensor>,
  names: readonly string[],
): Record<string, CalderaLayerMeta> {
  const layers: Record<string, CalderaLayerMeta> = {};
  for (const name of names) {
    const ck = toCheckpointTensors(
      name,
      caldera(tensors[`${name}.weight`]!, null, { rank: 4, outerIters: 1, lplrIters: 1 }),
    );
    delete tensors[`${name}.weight`];
    Object.assign(tensors, ck.tensors);
    layers[name] = ck.meta;
  }
  return layers;
}

/**
 * A random tiny Llama with block 0's up_proj compressed, as tensors and caldera.json layers: the LM head tied to the
 * embedding, or with `lmHeadStd` an untied one of that spread (a tied head's greedy tokens tend to repeat the last
 * one; an untied head's change from token to token).
 */
export function tinyModel(options: { lmHeadStd?: number } = {}): {
  config: object;
  tensors: Record<string, Tensor>;
  layers: Record<string, CalderaLayerMeta>;
} {
  const t = randomLlamaTensors(new Rng(31), {
    hidden: 32,
    kvDim: 16,
    intermediate: 48,
    vocab: 30,
    std: 0.2,
    ...(options.lmHeadStd === undefined ? {} : { lmHeadStd: options.lmHeadStd }),
  });
  const layers = compressLayers(t, ['model.layers.0.mlp.up_proj']);
  const config = {
    architectures: ['LlamaForCausalLM'],
    hidden_size: 32,
    intermediate_size: 48,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 30,
    tie_word_embeddings: options.lmHeadStd === undefined,
  };
  return { config, tensors: t, layers };
}

/**
 * {@link tinyModel} as a loader's in-memory source: its config, its caldera.json (`calderaMeta`) and its tensors as
 * one safetensors file (`weights`), for `loadModelFromBuffer`.
 */
export async function tinyModelSource(options: { lmHeadStd?: number } = {}): Promise<{
  config: object;
  calderaMeta: ReturnType<typeof calderaCheckpointMeta>;
  weights: Uint8Array;
}> {
  const { config, tensors, layers } = tinyModel(options);
  return { config, calderaMeta: calderaCheckpointMeta(layers), weights: await serializeSafetensors(tensors) };
}
