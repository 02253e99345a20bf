import { f16ArrayToF32, f32ArrayToF16, Rng } from '@caldera/core';
import { describe, expect, it } from 'vitest';
import {
  QWEN3_TEST_CONFIG,
  randomizeBiases,
  randomizeNorms,
  SCOPE_TEST_CONFIG,
} from '../testing/train-scope.js';
import {
  initTrainParams,
  lossAndGrad,
  trainParamShapes,
  type TrainConfig,
  type TrainParams,
} from './model.js';
import { adamWState, adamWStep } from './optim.js';

const cfg: TrainConfig = {
  hiddenSize: 8,
  intermediateSize: 12,
  numLayers: 2,
  numHeads: 2,
  numKvHeads: 1,
  headDim: 4,
  vocabSize: 11,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
};

/** Every parameter's gradient against central differences of the loss. */
function checkGradients(params: TrainParams, c: TrainConfig, tokens: number[], targets: number[]): void {
  // f64 throughout, h = 1e-5: truncation ≈ 1e-10, round-off ≈ 1e-11; tolerance 1e-6 (relative, floor 1).
  const { grads } = lossAndGrad(params, c, tokens, targets);
  expect(Object.keys(grads!).sort()).toEqual(Object.keys(params).sort());
  const f = () => lossAndGrad(params, c, tokens, targets, false).loss;
  const h = 1e-5;
  for (const [name, p] of Object.entries(params)) {
    for (let i = 0; i < p.length; i++) {
      const x0 = p[i]!;
      p[i] = x0 + h;
      const fp = f();
      p[i] = x0 - h;
      const fm = f();
      p[i] = x0;
      const num = (fp - fm) / (2 * h);
      const err = Math.abs(num - grads![name]![i]!);
      if (err > 1e-6 * Math.max(1, Math.abs(num)))
        throw new Error(`${name}[${i}]: ${num} vs ${grads![name]![i]}`);
    }
  }
}

describe('lossAndGrad (whole tiny model)', () => {
  it('gradient of every parameter matches central differences in f64', () => {
    // std 0.3 so that every path (attention mixing, SwiGLU curvature) carries a non-trivial gradient
    checkGradients(initTrainParams(cfg, new Rng(7), 0.3, true), cfg, [1, 5, 3, 9, 2], [5, 3, -100, 2, 7]);
  });

  it('an untied head, q/k/v/o (and down) biases and Llama 3 RoPE scaling: every gradient matches central differences', () => {
    const c = SCOPE_TEST_CONFIG;
    const shapes = trainParamShapes(c);
    expect(shapes['lm_head.weight']).toEqual([13, 16]);
    expect(shapes['model.layers.1.self_attn.q_proj.bias']).toEqual([16]);
    expect(shapes['model.layers.1.self_attn.k_proj.bias']).toEqual([8]);
    // transformers' Llama gives o_proj a bias too under attention_bias; Qwen2 does not
    expect(shapes['model.layers.1.self_attn.o_proj.bias']).toEqual([16]);
    expect(
      trainParamShapes({ ...c, architecture: 'Qwen2ForCausalLM' })['model.layers.1.self_attn.o_proj.bias'],
    ).toBe(undefined);
    expect(shapes['model.layers.1.mlp.down_proj.bias']).toBe(undefined);
    const rng = new Rng(8);
    const params = initTrainParams(c, rng, 0.3, true);
    // biases start at 0; random ones (and a down_proj bias, which only presence turns on) exercise the forward too
    params['model.layers.0.mlp.down_proj.bias'] = new Float64Array(16);
    randomizeBiases(params, rng, 0.3);
    checkGradients(params, c, [1, 5, 3, 9, 2, 12, 0, 7], [5, 3, -100, 2, 7, 11, 4, 6]);
  });

  it("Qwen3's per-head query and key norms (and its q/k/v/o biases): every gradient matches central differences", () => {
    // 2 heads sharing 1 key/value head keep the central differences quick (one loss pair per parameter value)
    const c = { ...QWEN3_TEST_CONFIG, numHeads: 2, numKvHeads: 1 };
    const shapes = trainParamShapes(c);
    expect(shapes['model.layers.1.self_attn.q_norm.weight']).toEqual([8]);
    expect(shapes['model.layers.1.self_attn.k_norm.weight']).toEqual([8]);
    expect(shapes['model.layers.1.self_attn.q_proj.weight']).toEqual([16, 16]);
    expect(shapes['model.layers.1.self_attn.o_proj.bias']).toEqual([16]);
    expect(trainParamShapes(SCOPE_TEST_CONFIG)['model.layers.1.self_attn.q_norm.weight']).toBe(undefined);
    const rng = new Rng(10);
    const params = initTrainParams(c, rng, 0.3, true);
    // norms start at 1 and biases at 0: random values exercise the norms' weights and the bias paths
    randomizeBiases(params, rng, 0.3);
    randomizeNorms(params, rng, 0.3);
    checkGradients(params, c, [1, 5, 3, 9, 2, 12, 0], [5, 3, -100, 2, 7, 11, 4]);
  });

  it("YaRN's frequencies and attention factor: every gradient matches central differences", () => {
    // original context 4 (head_dim 4, θ 10⁴): the ramp covers both pairs; attention factor 1.139 on cos and sin
    const c: TrainConfig = {
      ...cfg,
      ropeScaling: {
        type: 'yarn',
        factor: 4,
        originalMaxPositions: 4,
        betaFast: 32,
        betaSlow: 1,
        truncate: true,
        attentionFactor: 0.1 * Math.log(4) + 1,
      },
    };
    checkGradients(initTrainParams(c, new Rng(13), 0.3, true), c, [1, 5, 3, 9, 2, 4], [5, 3, -100, 2, 7, 1]);
  });

  it("SmolLM3's block without RoPE (block 1 of 2): every gradient matches central differences", () => {
    const c: TrainConfig = { ...cfg, architecture: 'SmolLM3ForCausalLM', nopeLayers: [1] };
    checkGradients(initTrainParams(c, new Rng(15), 0.3, true), c, [1, 5, 3, 9, 2, 4], [5, 3, -100, 2, 7, 1]);
  });

  it('activation checkpointing gives bit-identical loss and gradients (plain, LoRA adapters, frozen, into)', () => {
    // recomputing a block runs the same operations on the same inputs, so equality is exact, not approximate
    const params = initTrainParams(cfg, new Rng(3), 0.3);
    const rng = new Rng(4);
    for (const [name, [outF, inF]] of [
      ['model.layers.1.mlp.down_proj', [8, 12]],
      ['model.layers.0.self_attn.q_proj', [8, 8]],
    ] as const) {
      params[`${name}.lora_A`] = rng.fillNormal(new Float32Array(outF * 2)).map((v) => 0.1 * v);
      params[`${name}.lora_B`] = rng.fillNormal(new Float32Array(2 * inF)).map((v) => 0.1 * v);
    }
    const tokens = [1, 5, 3, 9, 2, 7, 4];
    const targets = [5, 3, -100, 2, 7, 4, 1];
    const plain = lossAndGrad(params, cfg, tokens, targets);
    const ckpt = lossAndGrad(params, cfg, tokens, targets, true, undefined, undefined, { checkpoint: true });
    expect(ckpt.loss).toBe(plain.loss);
    expect(Object.keys(ckpt.grads!).sort()).toEqual(Object.keys(plain.grads!).sort());
    for (const [k, g] of Object.entries(plain.grads!))
      expect(Array.from(ckpt.grads![k]!), k).toEqual(Array.from(g));
    // only the adapters trainable, accumulating into caller buffers
    const trainable = new Set(Object.keys(params).filter((k) => k.includes('lora_')));
    const into = () =>
      Object.fromEntries([...trainable].map((k) => [k, new Float32Array(params[k]!.length)]));
    const a = lossAndGrad(params, cfg, tokens, targets, true, trainable, into());
    const b = lossAndGrad(params, cfg, tokens, targets, true, trainable, into(), { checkpoint: true });
    for (const k of trainable) expect(Array.from(b.grads![k]!), k).toEqual(Array.from(a.grads![k]!));
    // without gradients the option changes nothing
    expect(
      lossAndGrad(params, cfg, tokens, targets, false, undefined, undefined, { checkpoint: true }).loss,
    ).toBe(plain.loss);
  });

  it('frozen parameters stored as f16 (mixed precision) give exactly the f32 result of their rounded values', () => {
    // f16 → f32 conversion is exact, so the half-stored run must equal an all-f32 run on the f16-rounded weights
    const params = initTrainParams(cfg, new Rng(5), 0.3);
    const halfNames = Object.keys(params).filter((k) => k.endsWith('_proj.weight'));
    const half = Object.fromEntries(halfNames.map((k) => [k, f32ArrayToF16(params[k] as Float32Array)]));
    const rounded = { ...params };
    for (const k of halfNames) rounded[k] = f16ArrayToF32(half[k]!);
    const rest = Object.fromEntries(Object.entries(params).filter(([k]) => !halfNames.includes(k)));
    const tokens = [1, 5, 3, 9, 2, 7, 4];
    const targets = [5, 3, -100, 2, 7, 4, 1];
    const trainable = new Set(Object.keys(rest));
    const want = lossAndGrad(rounded, cfg, tokens, targets, true, trainable);
    for (const checkpoint of [false, true]) {
      const got = lossAndGrad(rest, cfg, tokens, targets, true, trainable, undefined, { half, checkpoint });
      expect(got.loss).toBe(want.loss);
      expect(Object.keys(got.grads!).sort()).toEqual([...trainable].sort());
      for (const k of trainable) expect(Array.from(got.grads![k]!), k).toEqual(Array.from(want.grads![k]!));
    }
    // and it is not the f32 result: the rounding is real (≈ 1e-3 relative on the weights)
    expect(lossAndGrad(params, cfg, tokens, targets, false).loss).not.toBe(want.loss);
  });

  it('an untied head and biases stored as f16 give exactly the f32 result of their rounded values', () => {
    const c = SCOPE_TEST_CONFIG;
    const rng = new Rng(6);
    const params = initTrainParams(c, rng, 0.3);
    randomizeBiases(params, rng, 0.3);
    const halfNames = Object.keys(params).filter((k) => k.endsWith('.bias') || k === 'lm_head.weight');
    const half = Object.fromEntries(halfNames.map((k) => [k, f32ArrayToF16(params[k] as Float32Array)]));
    const rounded = { ...params };
    for (const k of halfNames) rounded[k] = f16ArrayToF32(half[k]!);
    const rest = Object.fromEntries(Object.entries(params).filter(([k]) => !halfNames.includes(k)));
    const tokens = [1, 5, 3, 9, 2, 7, 4, 12, 0, 11];
    const targets = [5, 3, -100, 2, 7, 4, 1, 0, 6, 8];
    const trainable = new Set(Object.keys(rest));
    const want = lossAndGrad(rounded, c, tokens, targets, true, trainable);
    for (const checkpoint of [false, true]) {
      const got = lossAndGrad(rest, c, tokens, targets, true, trainable, undefined, { half, checkpoint });
      expect(got.loss).toBe(want.loss);
      for (const k of trainable) expect(Array.from(got.grads![k]!), k).toEqual(Array.from(want.grads![k]!));
    }
    // without the half-stored biases the loss is another one: they are read from `half`, not skipped
    expect(
      lossAndGrad(rest, c, tokens, targets, false, undefined, undefined, {
        half: { 'lm_head.weight': half['lm_head.weight']! },
      }).loss,
    ).not.toBe(want.loss);
  });

  it('overfits a repeated sentence with AdamW (loss → near 0)', () => {
    const params = initTrainParams({ ...cfg, hiddenSize: 16, headDim: 8 }, new Rng(1));
    const c = { ...cfg, hiddenSize: 16, headDim: 8 };
    const sentence = [1, 4, 7, 2, 9, 3, 1, 4, 7, 2, 9, 3, 1, 4, 7];
    const tokens = sentence.slice(0, -1);
    const targets = sentence.slice(1);
    const states = Object.fromEntries(Object.entries(params).map(([k, v]) => [k, adamWState(v.length)]));
    const first = lossAndGrad(params, c, tokens, targets, false).loss;
    let last = first;
    for (let step = 1; step <= 150; step++) {
      const r = lossAndGrad(params, c, tokens, targets);
      for (const [k, v] of Object.entries(params)) adamWStep(v, r.grads![k]!, states[k]!, step, { lr: 1e-2 });
      last = r.loss;
    }
    expect(first).toBeGreaterThan(2); // ≈ ln 11 at init
    expect(lossAndGrad(params, c, tokens, targets, false).loss).toBeLessThan(0.05);
    expect(last).toBeLessThan(0.1);
  });
});
