/**
 * Random-weight Llama-shaped checkpoints for speed measurements on a real GPU (the values only matter for speed):
 * a dense f16 one, and a CALDERA one of the same shape (every linear a {@link randomDecomposition}: 2-bit E8P12 Q,
 * 4-bit lattice L/R of `rank`; f16 embedding, tied LM head). Written tensor by tensor (nothing holds the whole model).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  blockLinearNames,
  linearShape,
  parseModelConfig,
  Rng,
  writeSafetensors,
  type CalderaLayerMeta,
  type RawTensorEntry,
  type WritableTensor,
} from '@caldera/core';
import {
  calderaCheckpointMeta,
  randomDecomposition,
  toCheckpointTensors,
  type Decomposition,
} from '@caldera/lowrank';

/** A Llama shape: hidden size, MLP size, blocks, attention heads, KV heads, vocabulary. */
export interface LlamaShape {
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
}

/**
 * `1b`: TinyLlama-1.1B's shape (1.10 B parameters with the tied head); `tiny`: a small one to check the path;
 * `tiny32k`: the small one with TinyLlama's vocabulary of 32 000 tokens (where reading back the logits and the
 * sampler's work on them weigh).
 */
export const SHAPES: Record<'1b' | 'tiny' | 'tiny32k', LlamaShape> = {
  '1b': { hidden: 2048, intermediate: 5632, layers: 22, heads: 32, kvHeads: 4, vocab: 32000 },
  tiny: { hidden: 256, intermediate: 704, layers: 2, heads: 4, kvHeads: 2, vocab: 1024 },
  tiny32k: { hidden: 256, intermediate: 704, layers: 2, heads: 4, kvHeads: 2, vocab: 32000 },
};

/** Parameters of the shape (embedding tied with the LM head). */
export function parameterCount(s: LlamaShape): number {
  const hd = s.hidden / s.heads;
  const attn = 2 * s.hidden * s.hidden + 2 * s.kvHeads * hd * s.hidden;
  return s.vocab * s.hidden + s.layers * (attn + 3 * s.hidden * s.intermediate + 2 * s.hidden) + s.hidden;
}

function config(s: LlamaShape) {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: s.hidden,
    intermediate_size: s.intermediate,
    num_hidden_layers: s.layers,
    num_attention_heads: s.heads,
    num_key_value_heads: s.kvHeads,
    vocab_size: s.vocab,
    max_position_embeddings: 2048,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: true,
    torch_dtype: 'float16',
  };
}

/**
 * `count` random halves of magnitude in [2⁻⁶, 2⁻⁵) with random signs (an LCG's high bits): no infinities or NaNs,
 * and activations keep their scale through the blocks.
 */
function randomHalves(count: number, seed: number): Uint8Array {
  const h = new Uint16Array(count);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < count; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    h[i] = ((s >>> 16) & 0x83ff) | 0x2400;
  }
  return new Uint8Array(h.buffer);
}

function halves(shape: number[], seed: number): RawTensorEntry {
  return {
    dtype: 'F16',
    shape,
    data: () =>
      randomHalves(
        shape.reduce((a, b) => a * b, 1),
        seed,
      ),
  };
}

function ones(n: number): RawTensorEntry {
  return { dtype: 'F16', shape: [n], data: new Uint8Array(new Uint16Array(n).fill(0x3c00).buffer) };
}

/** Tensors shared by both checkpoints: embedding and norms. */
function common(s: LlamaShape): Record<string, WritableTensor> {
  const t: Record<string, WritableTensor> = { 'model.embed_tokens.weight': halves([s.vocab, s.hidden], 1) };
  for (let b = 0; b < s.layers; b++) {
    t[`model.layers.${b}.input_layernorm.weight`] = ones(s.hidden);
    t[`model.layers.${b}.post_attention_layernorm.weight`] = ones(s.hidden);
  }
  t['model.norm.weight'] = ones(s.hidden);
  return t;
}

/** Write the dense f16 checkpoint of `shape` into `dir`. */
export async function writeRandomF16Model(dir: string, shape: LlamaShape): Promise<void> {
  await mkdir(dir, { recursive: true });
  const tensors = common(shape);
  const cfg = parseModelConfig(config(shape));
  let seed = 2;
  for (let b = 0; b < shape.layers; b++)
    for (const { name } of blockLinearNames(b)) {
      const kind = name.slice(name.lastIndexOf('.') + 1);
      tensors[`${name}.weight`] = halves(linearShape(cfg, kind), seed++);
    }
  await writeSafetensors(join(dir, 'model.safetensors'), tensors);
  await writeFile(join(dir, 'config.json'), JSON.stringify(config(shape)));
}

/**
 * Write the CALDERA checkpoint of `shape` into `dir`: one random decomposition per distinct layer shape, shared by
 * all blocks (the values only matter for speed; every layer still gets buffers of its own on the GPU), or with
 * `distinct` one per layer.
 */
export async function writeRandomCalderaModel(
  dir: string,
  shape: LlamaShape,
  rank: number,
  options: { distinct?: boolean } = {},
): Promise<void> {
  await mkdir(dir, { recursive: true });
  const tensors = common(shape);
  const cfg = parseModelConfig(config(shape));
  const rng = new Rng(3);
  const byShape = new Map<string, Decomposition>();
  const layers: Record<string, CalderaLayerMeta> = {};
  for (let b = 0; b < shape.layers; b++)
    for (const { name } of blockLinearNames(b)) {
      const [m, n] = linearShape(cfg, name.slice(name.lastIndexOf('.') + 1));
      // one decomposition per shape (fast for large models; speed does not depend on the values), or with `distinct`
      // one per layer (for tests that must tell layers apart)
      let d = options.distinct ? undefined : byShape.get(`${m}x${n}`);
      if (!d) byShape.set(`${m}x${n}`, (d = randomDecomposition(m, n, rank, rng)));
      const ck = toCheckpointTensors(name, d);
      Object.assign(tensors, ck.tensors);
      layers[name] = ck.meta;
    }
  await writeSafetensors(join(dir, 'model.safetensors'), tensors);
  await writeFile(join(dir, 'config.json'), JSON.stringify(config(shape)));
  const meta = calderaCheckpointMeta(layers, { method: 'random', options: { rank }, seed: 3 });
  await writeFile(join(dir, 'caldera.json'), JSON.stringify(meta));
}
