import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { f16ArrayToF32, parseModelConfig, Rng } from '@caldera/core';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../load.js';
import type { LlamaModel } from '../model.js';
import {
  QWEN3_HF,
  QWEN3_TEST_CONFIG,
  randomizeBiases,
  randomizeNorms,
  runtimeModelOf,
  SCOPE_TEST_CONFIG,
} from '../testing/train-scope.js';
import { initTrainParams, lossAndGrad, type TrainParams } from './model.js';

const dir = fileURLToPath(new URL('../../../reference-model/model/', import.meta.url));

/** Minimal independent safetensors reader (f16 only) so the check does not share the runtime's loader. */
function readF16Params(path: string): TrainParams {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<
    string,
    { dtype: string; data_offsets: [number, number] }
  >;
  const out: TrainParams = {};
  for (const [name, h] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    expect(h.dtype).toBe('F16');
    const [a, b] = h.data_offsets;
    const bytes = buf.subarray(8 + n + a, 8 + n + b);
    const u16 = new Uint16Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    out[name] = f16ArrayToF32(u16);
  }
  return out;
}

/** Mean next-token cross-entropy of the runtime's logits, in f64. */
function runtimeLoss(model: LlamaModel, tokens: number[], targets: number[]): number {
  const V = model.config.vocabSize;
  const logits = model.forward(tokens);
  let ref = 0;
  for (let t = 0; t < tokens.length; t++) {
    const o = t * V;
    let mx = -Infinity;
    for (let j = 0; j < V; j++) mx = Math.max(mx, logits[o + j]!);
    let s = 0;
    for (let j = 0; j < V; j++) s += Math.exp(logits[o + j]! - mx);
    ref += mx + Math.log(s) - logits[o + targets[t]!]!;
  }
  return ref / tokens.length;
}

describe('training forward vs inference forward', () => {
  it('gives the same cross-entropy as the runtime logits on the reference model', async () => {
    const { model, config } = await loadModel(dir);
    const params = readF16Params(`${dir}model.safetensors`);
    const rng = new Rng(3);
    const seq = Array.from({ length: 33 }, () => rng.int(config.vocabSize));
    const tokens = seq.slice(0, -1);
    const targets = seq.slice(1);
    const ref = runtimeLoss(model, tokens, targets);
    const ours = lossAndGrad(params, config, tokens, targets, false).loss;
    // Both compute in f32 from the same f16 weights with different summation orders; over 4 layers the
    // logits agree to ~1e-5 relative, so the mean NLL (≈ 5–9 nats) must agree to well within 1e-3.
    expect(Math.abs(ours - ref)).toBeLessThan(1e-3);
    expect(ref).toBeGreaterThan(1);
  });

  it('and on a model with an untied head, q/k/v/o and down biases and Llama 3 RoPE scaling', () => {
    const c = SCOPE_TEST_CONFIG;
    const rng = new Rng(9);
    const params = initTrainParams(c, rng, 0.3);
    params['model.layers.1.mlp.down_proj.bias'] = new Float32Array(16);
    randomizeBiases(params, rng, 0.5);
    // 40 positions: past the RoPE scaling's original context of 16, where its frequencies differ most
    const seq = Array.from({ length: 41 }, () => rng.int(c.vocabSize));
    const tokens = seq.slice(0, -1);
    const targets = seq.slice(1);
    const ref = runtimeLoss(runtimeModelOf(c, params), tokens, targets);
    const ours = lossAndGrad(params, c, tokens, targets, false).loss;
    // f32 in both with different summation orders over 2 tiny layers: the losses (≈ 3.3 nats) agreed to 2e-8; 1e-5
    // is far below what leaving out any one of the three features moves them (0.14–0.28, checked below)
    expect(Math.abs(ours - ref)).toBeLessThan(1e-5);
    const without = [
      lossAndGrad(params, { ...c, ropeScaling: null }, tokens, targets, false).loss,
      lossAndGrad(params, { ...c, tieWordEmbeddings: true }, tokens, targets, false).loss,
      lossAndGrad(
        Object.fromEntries(Object.entries(params).filter(([k]) => !k.endsWith('.bias'))),
        c,
        tokens,
        targets,
        false,
      ).loss,
    ];
    for (const loss of without) expect(Math.abs(loss - ref)).toBeGreaterThan(1e-3);
  });

  it("and with YaRN (Qwen3's long-context setting): scaled frequencies and the attention factor on cos and sin", () => {
    // original context 16 with head_dim 8 and θ 10⁶: pairs kept, blended and divided; attention factor 1.139
    const c = {
      ...QWEN3_TEST_CONFIG,
      ropeScaling: parseModelConfig({
        ...QWEN3_HF,
        rope_scaling: { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 16 },
      }).ropeScaling,
    };
    const rng = new Rng(12);
    const params = initTrainParams(c, rng, 0.3);
    randomizeNorms(params, rng, 0.3);
    const seq = Array.from({ length: 41 }, () => rng.int(c.vocabSize));
    const [tokens, targets] = [seq.slice(0, -1), seq.slice(1)];
    const ref = runtimeLoss(runtimeModelOf(c, params), tokens, targets);
    // as above: f32 in both, different summation orders over 2 tiny layers; YaRN moves the loss far more
    expect(Math.abs(lossAndGrad(params, c, tokens, targets, false).loss - ref)).toBeLessThan(1e-5);
    const plain = lossAndGrad(params, { ...c, ropeScaling: null }, tokens, targets, false).loss;
    expect(Math.abs(plain - ref)).toBeGreaterThan(1e-3);
  });

  it("and on SmolLM3's layout: block 1 of 2 without RoPE", () => {
    const c = { ...SCOPE_TEST_CONFIG, architecture: 'SmolLM3ForCausalLM' as const, nopeLayers: [1] };
    const rng = new Rng(13);
    const params = initTrainParams(c, rng, 0.3);
    randomizeBiases(params, rng, 0.5);
    const seq = Array.from({ length: 25 }, () => rng.int(c.vocabSize));
    const [tokens, targets] = [seq.slice(0, -1), seq.slice(1)];
    const ref = runtimeLoss(runtimeModelOf(c, params), tokens, targets);
    // as above: f32 in both, different summation orders over 2 tiny layers; rotating block 1 moves the loss far more
    expect(Math.abs(lossAndGrad(params, c, tokens, targets, false).loss - ref)).toBeLessThan(1e-5);
    const rotating = lossAndGrad(params, { ...c, nopeLayers: [] }, tokens, targets, false).loss;
    expect(Math.abs(rotating - ref)).toBeGreaterThan(1e-3);
  });

  it("and on Qwen3's layout: per-head query and key norms before RoPE, q/k/v/o biases, head_dim ≠ hidden / heads", () => {
    const c = QWEN3_TEST_CONFIG;
    const rng = new Rng(11);
    const params = initTrainParams(c, rng, 0.3);
    randomizeBiases(params, rng, 0.5);
    randomizeNorms(params, rng, 0.3);
    const seq = Array.from({ length: 25 }, () => rng.int(c.vocabSize));
    const tokens = seq.slice(0, -1);
    const targets = seq.slice(1);
    const ref = runtimeLoss(runtimeModelOf(c, params), tokens, targets);
    const ours = lossAndGrad(params, c, tokens, targets, false).loss;
    // as above: f32 in both, different summation orders over 2 tiny layers; the norms move the loss far more
    expect(Math.abs(ours - ref)).toBeLessThan(1e-5);
    const withoutNorms = lossAndGrad(
      Object.fromEntries(Object.entries(params).filter(([k]) => !/_norm\.weight$/.test(k))),
      { ...c, architecture: 'LlamaForCausalLM' },
      tokens,
      targets,
      false,
    ).loss;
    expect(Math.abs(withoutNorms - ref)).toBeGreaterThan(1e-3);
  });
});
