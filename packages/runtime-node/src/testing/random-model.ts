import { hasQkNorm, Rng, tensor, type Tensor } from '@caldera/core';
import type { ModelConfig } from '../config.js';
import { DenseLinear } from '../linear.js';
import { LlamaModel, type BlockWeights } from '../model.js';

/** A random dense model of `cfg` for tests, with its tensors under Hugging Face names. */
export function randomModel(
  cfg: ModelConfig,
  seed: number,
): { model: LlamaModel; raw: Record<string, Tensor<'f32'>> } {
  const rng = new Rng(seed);
  const { hiddenSize: d, intermediateSize: I, vocabSize: V, numHeads: H, numKvHeads: KV, headDim: hd } = cfg;
  const rand = (shape: number[], std: number) =>
    tensor('f32', shape, rng.fillNormal(new Float32Array(shape.reduce((a, b) => a * b, 1)), 0, std));
  const raw: Record<string, Tensor<'f32'>> = { 'model.embed_tokens.weight': rand([V, d], 1) };
  const norm = (name: string, n = d) => {
    const t = rand([n], 0.1);
    t.data.forEach((v, i, a) => (a[i] = 1 + v));
    return (raw[name] = t).data;
  };
  const blocks: BlockWeights[] = [];
  for (let b = 0; b < cfg.numLayers; b++) {
    const p = `model.layers.${b}`;
    const w = (n: string, shape: number[]) => new DenseLinear((raw[`${p}.${n}.weight`] = rand(shape, 0.2)));
    blocks.push({
      inputNorm: norm(`${p}.input_layernorm.weight`),
      postAttnNorm: norm(`${p}.post_attention_layernorm.weight`),
      // Qwen3's per-head query and key norms
      ...(hasQkNorm(cfg)
        ? { qNorm: norm(`${p}.self_attn.q_norm.weight`, hd), kNorm: norm(`${p}.self_attn.k_norm.weight`, hd) }
        : {}),
      q: w('self_attn.q_proj', [H * hd, d]),
      k: w('self_attn.k_proj', [KV * hd, d]),
      v: w('self_attn.v_proj', [KV * hd, d]),
      o: w('self_attn.o_proj', [d, H * hd]),
      gate: w('mlp.gate_proj', [I, d]),
      up: w('mlp.up_proj', [I, d]),
      down: w('mlp.down_proj', [d, I]),
    });
  }
  const embed = raw['model.embed_tokens.weight']!;
  const normW = norm('model.norm.weight');
  return { model: new LlamaModel(cfg, { embed, blocks, norm: normW, lmHead: embed }), raw };
}
