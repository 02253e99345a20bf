import { CalderaError } from '@caldera/core';
import { reconstruct } from '@caldera/lowrank';
import type { LoadedModel } from '../load.js';
import type { LlamaModel } from '../model.js';
import { frozenBase, type FinetuneSetup, type LoraLayer } from './finetune.js';
import { lossAndGrad, type TrainConfig, type TrainParams } from './model.js';
import type { Objective } from './trainer.js';
import type { Vec } from './types.js';

/** A teacher: token ids → next-token probabilities `[T, vocab]` (row-major). */
export type Teacher = (tokens: readonly number[]) => ArrayLike<number>;

/** One layer whose sign vectors are trained: `Ŵ = diag(SV)·C·diag(SU)` with the fixed core `C` (`[m, n]`). */
export interface SignLayer {
  prefix: string;
  /** `g·(M_m·(Q̂ + L̂R̂)·M_nᵀ)` cropped to `[m, n]`, row-major. */
  core: Vec;
  shape: [number, number];
  padded: [number, number];
}

/**
 * The end-to-end sign-vector objective (the paper's RHT fine-tuning, algorithm brief §7.2): the model with every
 * listed layer's weight `diag(SV)·C·diag(SU)` built from the trainable `<prefix>.caldera.SU` (length np) and
 * `<prefix>.caldera.SV` (length mp), scored by cross-entropy against the teacher's next-token distribution.
 * Gradients: `dSU_j = Σ_i dŴ_ij·SV_i·C_ij`, `dSV_i = Σ_j dŴ_ij·C_ij·SU_j`; padded entries do not affect the
 * output and get zero gradient. f32, or f64 for gradient checks.
 */
export function signObjective(
  config: TrainConfig,
  frozen: TrainParams,
  layers: readonly SignLayer[],
  teacher: Teacher,
): Objective {
  const weightNames = new Set(layers.map((l) => `${l.prefix}.weight`));
  return (params, tokens, _targets, grad) => {
    const full: TrainParams = { ...frozen };
    for (const l of layers) {
      const [m, n] = l.shape;
      const su = params[`${l.prefix}.caldera.SU`]!;
      const sv = params[`${l.prefix}.caldera.SV`]!;
      const w = l.core instanceof Float64Array ? new Float64Array(m * n) : new Float32Array(m * n);
      for (let i = 0; i < m; i++)
        for (let j = 0; j < n; j++) w[i * n + j] = sv[i]! * l.core[i * n + j]! * su[j]!;
      full[`${l.prefix}.weight`] = w;
    }
    const r = lossAndGrad(full, config, tokens, { probs: teacher(tokens) }, grad, weightNames);
    if (!grad) return r;
    const grads: TrainParams = {};
    for (const l of layers) {
      const [m, n] = l.shape;
      const [mp, np] = l.padded;
      const su = params[`${l.prefix}.caldera.SU`]!;
      const sv = params[`${l.prefix}.caldera.SV`]!;
      const dw = r.grads![`${l.prefix}.weight`]!;
      const dsu = su instanceof Float64Array ? new Float64Array(np) : new Float32Array(np);
      const dsv = sv instanceof Float64Array ? new Float64Array(mp) : new Float32Array(mp);
      for (let i = 0; i < m; i++)
        for (let j = 0; j < n; j++) {
          const g = dw[i * n + j]! * l.core[i * n + j]!;
          dsu[j] = dsu[j]! + g * sv[i]!;
          dsv[i] = dsv[i]! + g * su[j]!;
        }
      grads[`${l.prefix}.caldera.SU`] = dsu;
      grads[`${l.prefix}.caldera.SV`] = dsv;
    }
    return { loss: r.loss, count: r.count, grads };
  };
}

/** A teacher from a runtime model: softmax of its logits, cached per distinct sequence (validation repeats). */
export function modelTeacher(model: LlamaModel, cacheLimit = 256): Teacher {
  const cache = new Map<string, Float32Array>();
  const V = model.config.vocabSize;
  return (tokens) => {
    const key = tokens.join(',');
    const hit = cache.get(key);
    if (hit) return hit;
    const logits = model.forward([...tokens]);
    const p = new Float32Array(logits.length);
    for (let r = 0; r < tokens.length; r++) {
      const o = r * V;
      let mx = -Infinity;
      for (let j = 0; j < V; j++) mx = Math.max(mx, logits[o + j]!);
      let s = 0;
      for (let j = 0; j < V; j++) s += p[o + j] = Math.exp(logits[o + j]! - mx);
      for (let j = 0; j < V; j++) p[o + j]! /= s;
    }
    if (cache.size < cacheLimit) cache.set(key, p);
    return p;
  };
}

/**
 * Prepares the sign vectors SU, SV of every CALDERA layer (with the Hadamard transform) for end-to-end training
 * against `teacher` (usually the uncompressed model; §7.2): everything else — Q, L, R, embeddings, norms — is
 * frozen. The trained vectors are continuous and are stored in f16 like the ±1 originals.
 */
export function prepareSignFinetune(loaded: LoadedModel, teacher: LlamaModel): FinetuneSetup {
  const { frozen, compressed } = frozenBase(loaded);
  if (teacher.config.vocabSize !== loaded.config.vocabSize)
    throw new CalderaError(
      'E_SHAPE',
      `teacher vocabulary ${teacher.config.vocabSize} differs from the model's ${loaded.config.vocabSize}`,
    );
  const layers: LoraLayer[] = [];
  const signLayers: SignLayer[] = [];
  const trainable: TrainParams = {};
  for (const { name, linear } of compressed) {
    const d0 = linear.d;
    if (!d0.hadamard || !d0.su || !d0.sv) {
      // no sign vectors to train: the layer is part of the frozen model
      frozen[`${name}.weight`] = reconstruct(d0).data;
      continue;
    }
    const d = { ...d0, su: Float32Array.from(d0.su), sv: Float32Array.from(d0.sv) };
    const ones = (k: number) => new Float32Array(k).fill(1);
    signLayers.push({
      prefix: name,
      core: reconstruct({ ...d, su: ones(d.padded[1]), sv: ones(d.padded[0]) }).data,
      shape: d.shape,
      padded: d.padded,
    });
    layers.push({ prefix: name, decomposition: d });
    trainable[`${name}.caldera.SU`] = d.su;
    trainable[`${name}.caldera.SV`] = d.sv;
  }
  if (layers.length === 0)
    throw new CalderaError(
      'E_VALUE',
      `${loaded.dir}: no CALDERA layer with sign vectors (Hadamard) to train`,
    );
  const config: TrainConfig = loaded.config;
  return {
    config,
    frozen,
    layers,
    trainable,
    objective: signObjective(config, frozen, signLayers, modelTeacher(teacher)),
  };
}
