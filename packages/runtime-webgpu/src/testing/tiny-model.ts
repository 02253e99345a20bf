import { Rng, tensor, type CalderaLayerMeta, type Tensor } from '@caldera/core';
import { caldera, toCheckpointTensors } from '@caldera/lowrank';

/** A random tiny Llama (tied head) with block 0's up_proj compressed, as tensors and caldera.json layers. */
export function tinyModel(): {
  config: object;
  tensors: Record<string, Tensor>;
  layers: Record<string, CalderaLayerMeta>;
} {
  const rng = new Rng(31);
  const t: Record<string, Tensor> = {};
  const r = (name: string, shape: number[], std: number, mean = 0) =>
    (t[name] = tensor(
      'f32',
      shape,
      rng.fillNormal(new Float32Array(shape.reduce((a, b) => a * b, 1)), mean, std),
    ));
  r('model.embed_tokens.weight', [30, 32], 1);
  r('model.norm.weight', [32], 0.1, 1);
  for (let b = 0; b < 2; b++) {
    const p = `model.layers.${b}`;
    r(`${p}.input_layernorm.weight`, [32], 0.1, 1);
    r(`${p}.post_attention_layernorm.weight`, [32], 0.1, 1);
    for (const [n, shape] of [
      ['self_attn.q_proj', [32, 32]],
      ['self_attn.k_proj', [16, 32]],
      ['self_attn.v_proj', [16, 32]],
      ['self_attn.o_proj', [32, 32]],
      ['mlp.gate_proj', [48, 32]],
      ['mlp.up_proj', [48, 32]],
      ['mlp.down_proj', [32, 48]],
    ] as const)
      r(`${p}.${n}.weight`, [...shape], 0.2);
  }
  const name = 'model.layers.0.mlp.up_proj';
  const ck = toCheckpointTensors(
    name,
    caldera(t[`${name}.weight`]!, null, { rank: 4, outerIters: 1, lplrIters: 1 }),
  );
  delete t[`${name}.weight`];
  Object.assign(t, ck.tensors);
  const config = {
    architectures: ['LlamaForCausalLM'],
    hidden_size: 32,
    intermediate_size: 48,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 30,
    tie_word_embeddings: true,
  };
  return { config, tensors: t, layers: { [name]: ck.meta } };
}
