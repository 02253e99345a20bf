/**
 * Tiny Hugging Face model directories for the CLI tests (not part of the build): random weights under Hugging Face
 * names, the reference model's tokenizer, optionally sharded, in f32 / f16 / bf16, optionally with Qwen2 q/k/v biases
 * or as Qwen3 (per-head query and key norms).
 */
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cast, Rng, tensor, writeSafetensors, type Tensor } from '@caldera/core';
import { referenceModelDir } from '@caldera/reference-model';

export interface TinyModelOptions {
  /** Storage dtype of every tensor (default f32). */
  dtype?: 'f32' | 'f16' | 'bf16';
  /** Qwen2ForCausalLM with q/k/v biases of this standard deviation (default: Llama, no biases). */
  qwen2BiasStd?: number;
  /**
   * Qwen3ForCausalLM: per-head `q_norm`/`k_norm` weights (1 + N(0, 0.3²)) and head_dim hidden/2, twice
   * hidden / heads (as Qwen3-0.6B's 128 against 1024 / 16). Not with `qwen2BiasStd`.
   */
  qwen3?: boolean;
  /** Split the tensors over this many `model-0000i-of-0000n.safetensors` files with an index (default 1: none). */
  shards?: number;
  /** Hidden size (default 64); 4 heads of hidden/4, 2 KV heads, intermediate 2·hidden. */
  hidden?: number;
  /** Decoder layers (default 2). */
  layers?: number;
  /** Tied embeddings: no `lm_head.weight` (default false). */
  tied?: boolean;
  /** `max_position_embeddings` (default 256). */
  maxPositions?: number;
  /** `vocab_size`, at least the tokenizer's 2048 (default 2048; more: padded embedding rows). */
  vocab?: number;
  seed?: number;
  /**
   * Fields added to (or replacing) config.json's, e.g. another architecture of Llama's layout (SmolLM3) or a
   * `rope_scaling` (default none).
   */
  config?: Record<string, unknown>;
  /** Changes the f32 values before they are stored (e.g. an outlier in a norm weight). */
  patch?: (raw: Record<string, Tensor<'f32'>>) => void;
}

/** Write a tiny random model into `dir` (created); returns `dir` and the f32 values of its tensors. */
export async function writeTinyModel(
  dir: string,
  o: TinyModelOptions = {},
): Promise<{ dir: string; raw: Record<string, Tensor<'f32'>> }> {
  const d = o.hidden ?? 64;
  if (o.qwen3 && o.qwen2BiasStd !== undefined)
    throw new Error('writeTinyModel: qwen3 or qwen2BiasStd, not both');
  const [I, L, H, KV, hd, V] = [2 * d, o.layers ?? 2, 4, 2, o.qwen3 ? d / 2 : d / 4, o.vocab ?? 2048];
  const rng = new Rng(o.seed ?? 1);
  const raw: Record<string, Tensor<'f32'>> = {};
  const put = (name: string, shape: number[], std: number, mean = 0) =>
    (raw[name] = tensor(
      'f32',
      shape,
      rng.fillNormal(new Float32Array(shape.reduce((a, b) => a * b, 1)), mean, std),
    ));
  put('model.embed_tokens.weight', [V, d], 1);
  for (let b = 0; b < L; b++) {
    const p = `model.layers.${b}`;
    put(`${p}.input_layernorm.weight`, [d], 0.1, 1);
    for (const [n, m] of [
      ['q', H * hd],
      ['k', KV * hd],
      ['v', KV * hd],
    ] as const) {
      put(`${p}.self_attn.${n}_proj.weight`, [m, d], 0.15);
      if (o.qwen2BiasStd !== undefined) put(`${p}.self_attn.${n}_proj.bias`, [m], o.qwen2BiasStd);
    }
    if (o.qwen3) {
      put(`${p}.self_attn.q_norm.weight`, [hd], 0.3, 1);
      put(`${p}.self_attn.k_norm.weight`, [hd], 0.3, 1);
    }
    put(`${p}.self_attn.o_proj.weight`, [d, H * hd], 0.15);
    put(`${p}.post_attention_layernorm.weight`, [d], 0.1, 1);
    put(`${p}.mlp.gate_proj.weight`, [I, d], 0.15);
    put(`${p}.mlp.up_proj.weight`, [I, d], 0.15);
    put(`${p}.mlp.down_proj.weight`, [d, I], 0.1);
  }
  put('model.norm.weight', [d], 0.1, 1);
  if (!o.tied) put('lm_head.weight', [V, d], 0.2);
  o.patch?.(raw);
  const dtype = o.dtype ?? 'f32';
  const stored: Record<string, Tensor> = {};
  for (const [k, t] of Object.entries(raw)) {
    stored[k] = dtype === 'f32' ? t : cast(t, dtype);
    // the values the model really has (rounded to the storage dtype)
    if (dtype !== 'f32') raw[k] = cast(stored[k]!, 'f32');
  }
  mkdirSync(dir, { recursive: true });
  const qwen = o.qwen2BiasStd !== undefined;
  const config = {
    architectures: [o.qwen3 ? 'Qwen3ForCausalLM' : qwen ? 'Qwen2ForCausalLM' : 'LlamaForCausalLM'],
    model_type: o.qwen3 ? 'qwen3' : qwen ? 'qwen2' : 'llama',
    hidden_act: 'silu',
    tie_word_embeddings: o.tied ?? false,
    max_position_embeddings: o.maxPositions ?? 256,
    torch_dtype: { f32: 'float32', f16: 'float16', bf16: 'bfloat16' }[dtype],
    bos_token_id: 0,
    eos_token_id: 0,
    hidden_size: d,
    intermediate_size: I,
    num_hidden_layers: L,
    num_attention_heads: H,
    num_key_value_heads: KV,
    head_dim: hd,
    vocab_size: V,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    ...o.config,
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  for (const f of ['tokenizer.json', 'tokenizer_config.json'])
    copyFileSync(join(referenceModelDir(), f), join(dir, f));
  const shards = o.shards ?? 1;
  if (shards <= 1) {
    await writeSafetensors(join(dir, 'model.safetensors'), stored);
    return { dir, raw };
  }
  const names = Object.keys(stored);
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (let s = 0; s < shards; s++) {
    const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const part: Record<string, Tensor> = {};
    for (const n of names.slice(
      Math.floor((s * names.length) / shards),
      Math.floor(((s + 1) * names.length) / shards),
    )) {
      part[n] = stored[n]!;
      weightMap[n] = file;
      total += stored[n]!.data.byteLength;
    }
    await writeSafetensors(join(dir, file), part);
  }
  writeFileSync(
    join(dir, 'model.safetensors.index.json'),
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2),
  );
  return { dir, raw };
}
