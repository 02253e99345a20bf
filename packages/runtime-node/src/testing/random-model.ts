import { Rng, tensor, type Tensor } from '@caldera/core';
import { latticeRound, paddedSize, type Decomposition } from '@caldera/lowrank';
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
  const norm = (name: string) => {
    const t = rand([d], 0.1);
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

/**
 * A random CALDERA decomposition of an m×n layer (Hadamard rotation, random signs, uniformly random 16-bit E8P codes,
 * random 4-bit lattice L/R of `rank`) for kernel tests and speed benchmarks: the values are not an approximation of
 * anything, but every part of the format is exercised.
 */
export function randomDecomposition(m: number, n: number, rank: number, rng: Rng): Decomposition {
  const mp = paddedSize(m, true);
  const np = paddedSize(n, true);
  const codes = new Uint16Array((mp * np) / 8);
  for (let i = 0; i < codes.length; i++) codes[i] = rng.nextU32() & 0xffff;
  const l = latticeRound(rng.fillNormal(new Float32Array(rank * mp)), 4).codes;
  const r = latticeRound(rng.fillNormal(new Float32Array(rank * np)), 4).codes;
  const bits = 2 * mp * np + 32 + 2 * (4 * rank * (mp + np) + 32) + 16 * (mp + np);
  return {
    shape: [m, n],
    padded: [mp, np],
    rank,
    scale: 0.02,
    hadamard: true,
    su: rng.fillRademacher(new Float32Array(np)),
    sv: rng.fillRademacher(new Float32Array(mp)),
    q: { bits: 2, planes: [codes], scale: 0.3 },
    l: { kind: 'lattice', codes: l },
    r: { kind: 'lattice', codes: r },
    bitsPerWeight: bits / (m * n),
    paperBitsPerWeight: 2 + (rank * 4 * (m + n)) / (m * n),
    error: 0,
    errors: { LR: [], Q: [] },
    seed: 0,
  };
}
