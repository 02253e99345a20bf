/**
 * Training benchmark (JSON Lines): a whole-model training step vs the forward pass of the same sequence on a
 * ~10 M-parameter Llama (`train_step_ratio`, target ≤ 3.5), training tokens/s, and LoRA fine-tuning throughput on a
 * ~100 M-parameter model whose 56 linears carry rank-64 trainable CALDERA factors behind random rotations (speed
 * does not depend on the values). `--quick`: shorter sequences and fewer repetitions.
 */
import { Rng } from '@caldera/core';
import { emit } from './emit.js';
import { paddedSize } from '@caldera/lowrank';
import {
  adamWState,
  adamWStep,
  clipGradNorm,
  initTrainParams,
  lossAndGrad,
  loraObjective,
  type LayerRotation,
  type TrainConfig,
  type TrainParams,
} from '../src/train/index.js';

const quick = process.argv.includes('--quick');

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function time(fn: () => void, reps: number): number {
  fn(); // warm-up (JIT, WASM instantiation)
  const t: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    fn();
    t.push((performance.now() - t0) / 1000);
  }
  return median(t);
}

function sequence(T: number, vocab: number, rng: Rng) {
  const s = Array.from({ length: T + 1 }, () => rng.int(vocab));
  return { tokens: s.slice(0, -1), targets: s.slice(1) };
}

const count = (p: TrainParams) => Object.values(p).reduce((a, v) => a + v.length, 0);

// 1. full training step vs forward, ~10 M parameters
{
  const c: TrainConfig = {
    hiddenSize: 384,
    intermediateSize: 1024,
    numLayers: 6,
    numHeads: 6,
    numKvHeads: 2,
    headDim: 64,
    vocabSize: 2048,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
  };
  const rng = new Rng(1);
  const params = initTrainParams(c, rng);
  // one optimizer step of the Trainer's shape: B sequences (gradient accumulation), clipping, AdamW
  const T = quick ? 64 : 128;
  const B = quick ? 4 : 8;
  const batch = Array.from({ length: B }, () => sequence(T, c.vocabSize, rng));
  const states = Object.fromEntries(Object.entries(params).map(([k, v]) => [k, adamWState(v.length)]));
  let step = 0;
  const reps = 5;
  const fwd = time(() => {
    for (const s of batch) lossAndGrad(params, c, s.tokens, s.targets, false);
  }, reps);
  const acc: TrainParams = {};
  for (const [k, v] of Object.entries(params)) acc[k] = new Float32Array(v.length);
  const full = time(() => {
    for (const a of Object.values(acc)) a.fill(0);
    for (const s of batch) lossAndGrad(params, c, s.tokens, s.targets, true, undefined, acc);
    for (const a of Object.values(acc)) for (let i = 0; i < a.length; i++) a[i] = a[i]! / B;
    clipGradNorm(Object.values(acc), 1);
    step++;
    for (const [k, v] of Object.entries(params)) adamWStep(v, acc[k]!, states[k]!, step, { lr: 1e-4 });
  }, reps);
  const shape = { params: count(params), tokens: T * B, sequences: B };
  emit('train_step_ratio', full / fwd, 'x forward', { stepSeconds: full, forwardSeconds: fwd }, shape);
  emit('train_tok_s', (T * B) / full, 'tokens/s', {}, shape);
}

// 2. LoRA on CALDERA factors of a ~100 M-parameter model (frozen dense base, rank-64 trainable pairs)
{
  const c: TrainConfig = {
    hiddenSize: 1024,
    intermediateSize: 2816,
    numLayers: 8,
    numHeads: 16,
    numKvHeads: 8,
    headDim: 64,
    vocabSize: 8192,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
  };
  const rng = new Rng(2);
  const frozen = initTrainParams(c, rng);
  const kf = 64;
  const layers: { prefix: string; rotation: LayerRotation; ftRank: number }[] = [];
  const trainable: TrainParams = {};
  const dims: Record<string, [number, number]> = {
    'self_attn.q_proj': [1024, 1024],
    'self_attn.k_proj': [512, 1024],
    'self_attn.v_proj': [512, 1024],
    'self_attn.o_proj': [1024, 1024],
    'mlp.gate_proj': [2816, 1024],
    'mlp.up_proj': [2816, 1024],
    'mlp.down_proj': [1024, 2816],
  };
  for (let l = 0; l < c.numLayers; l++)
    for (const [sub, [m, n]] of Object.entries(dims)) {
      const prefix = `model.layers.${l}.${sub}`;
      const mp = paddedSize(m, true);
      const np = paddedSize(n, true);
      const rotation: LayerRotation = {
        shape: [m, n],
        padded: [mp, np],
        hadamard: true,
        scale: 0.02,
        su: rng.fillRademacher(new Float32Array(np)),
        sv: rng.fillRademacher(new Float32Array(mp)),
      };
      layers.push({ prefix, rotation, ftRank: kf });
      trainable[`${prefix}.caldera.L_ft`] = rng.fillNormal(new Float32Array(mp * kf)).map((v) => 0.1 * v);
      trainable[`${prefix}.caldera.R_ft`] = rng.fillNormal(new Float32Array(kf * np)).map((v) => 0.1 * v);
    }
  const objective = loraObjective(c, frozen, layers);
  const T = quick ? 32 : 64;
  const { tokens, targets } = sequence(T, c.vocabSize, rng);
  const states = Object.fromEntries(Object.entries(trainable).map(([k, v]) => [k, adamWState(v.length)]));
  let step = 0;
  const reps = quick ? 2 : 3;
  const fwd = time(() => lossAndGrad(frozen, c, tokens, targets, false), reps);
  const full = time(() => {
    const r = objective(trainable, tokens, targets, true);
    step++;
    for (const [k, v] of Object.entries(trainable))
      adamWStep(v, r.grads![k]!, states[k]!, step, { lr: 1e-4 });
  }, reps);
  const shape = { params: count(frozen), trainable: count(trainable), tokens: T, ftRank: kf };
  emit('lora_step_ratio_100m', full / fwd, 'x forward', { stepSeconds: full, forwardSeconds: fwd }, shape);
  emit('lora_train_tok_s_100m', T / full, 'tokens/s', {}, shape);
}
