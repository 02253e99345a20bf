import {
  assertCallbacks,
  assertNotAbortSignal,
  CalderaError,
  checkNumberOptions,
  definedOptions,
  contiguous,
  f32ArrayToF16,
  MODEL_SIDE_FILES,
  openCheckpointDir,
  parseCalderaTensorName,
  POSITIVE_INT,
  throwIfAborted,
  toF32,
  writeCheckpointDir,
  type CalderaCheckpointMeta,
  type CalderaLayerMeta,
  type WriteCheckpointOptions,
  type Tensor,
} from '@caldera/core';
import { nodeFs, nodePath } from '../node-builtins.js';
import {
  calderaCheckpointMeta,
  reconstruct,
  toCheckpointTensors,
  withTrainableFactors,
  type Decomposition,
} from '@caldera/lowrank';
import { blockLinearNames } from '../config.js';
import { CalderaLinear, DenseF16Linear, DenseLinear, type Linear } from '../linear.js';
import type { LoadedModel } from '../load.js';
import { loraFromRotated, loraGradToRotated, type LayerRotation } from './caldera-lora.js';
import { lossAndGrad, type LossAndGradOptions, type TrainConfig, type TrainParams } from './model.js';
import type { Teacher } from './rht.js';
import { createSha256 } from './sha256.js';
import { settingsDiff, tokenDigest, Trainer, type Objective } from './trainer.js';
import { FINETUNE_RULES } from './option-rules.js';

/** One CALDERA layer under LoRA fine-tuning. */
export interface LoraLayer {
  /** Hugging Face prefix, e.g. `model.layers.0.self_attn.q_proj`. */
  prefix: string;
  /** The decomposition after {@link withTrainableFactors}: its `ft` arrays are the ones being trained. */
  decomposition: Decomposition;
}

/** A compressed model prepared for fine-tuning ({@link prepareLoraFinetune}, `prepareSignFinetune`). */
export interface FinetuneSetup {
  config: TrainConfig;
  /** Frozen parameters by Hugging Face name: embeddings (and an untied head), norms, biases, dense base weights. */
  frozen: TrainParams;
  /** The layers being trained; their decompositions alias `trainable`, so they hold the trained values. */
  layers: LoraLayer[];
  /** The trainable tensors by checkpoint name (e.g. `<prefix>.caldera.L_ft`), aliasing `layers`. */
  trainable: TrainParams;
  /** Loss of one sequence and the gradients of the trainable tensors. */
  objective: Objective;
}

function denseWeightOf(layer: Linear): Float32Array {
  if (layer instanceof DenseLinear) return contiguous(layer.weight).data;
  if (layer instanceof DenseF16Linear) return layer.weightF32();
  if (layer instanceof CalderaLinear) return reconstruct(layer.d).data;
  throw new CalderaError('E_UNSUPPORTED', 'fine-tuning: unknown linear layer type');
}

/**
 * The frozen part of a loaded CALDERA checkpoint for training: embeddings (and an untied LM head), norms, biases and
 * the dense weights of layers that are not compressed, plus the list of compressed layers (whose weights the caller
 * provides).
 */
export function frozenBase(loaded: LoadedModel): {
  frozen: TrainParams;
  compressed: { name: string; linear: CalderaLinear }[];
} {
  if (!loaded.calderaMeta)
    throw new CalderaError('E_VALUE', `${loaded.dir} is not a CALDERA checkpoint (no caldera.json)`);
  const w = loaded.model.weights;
  const frozen: TrainParams = {
    // a 16-bit embedding widened (exactly) for the trainer
    'model.embed_tokens.weight': toF32(w.embed).data,
    'model.norm.weight': w.norm,
  };
  if (!loaded.config.tieWordEmbeddings)
    frozen['lm_head.weight'] = w.head ? denseWeightOf(w.head) : contiguous(w.lmHead!).data;
  const compressed: { name: string; linear: CalderaLinear }[] = [];
  const keys = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const;
  w.blocks.forEach((blk, b) => {
    frozen[`model.layers.${b}.input_layernorm.weight`] = blk.inputNorm;
    frozen[`model.layers.${b}.post_attention_layernorm.weight`] = blk.postAttnNorm;
    // Qwen3's per-head query and key norms
    if (blk.qNorm) frozen[`model.layers.${b}.self_attn.q_norm.weight`] = blk.qNorm;
    if (blk.kNorm) frozen[`model.layers.${b}.self_attn.k_norm.weight`] = blk.kNorm;
    blockLinearNames(b).forEach(({ name }, i) => {
      const lin = blk[keys[i]!];
      const bias =
        lin instanceof DenseLinear || lin instanceof DenseF16Linear || lin instanceof CalderaLinear
          ? lin.bias
          : null;
      if (bias) frozen[`${name}.bias`] = bias;
      if (lin instanceof CalderaLinear) compressed.push({ name, linear: lin });
      else frozen[`${name}.weight`] = denseWeightOf(lin);
    });
  });
  return { frozen, compressed };
}

/**
 * Prepares a loaded CALDERA checkpoint for LoRA fine-tuning (algorithm brief §7.1): in every compressed layer the
 * first `ftRank` components of L̂ and R̂ (clamped to the layer's rank) become trainable f32 factors initialised from
 * their dequantized values; Q̂, the remaining quantized factors, signs, embeddings and norms stay frozen. For
 * training, each frozen part is a dense f32 base weight (so the model computes the same function as the
 * checkpoint), and the trainable pair enters through {@link loraFromRotated}.
 *
 * With a `teacher` (see `modelTeacher`), the factors are trained to reproduce its next-token distributions
 * (distillation, a stronger signal per token than the data's next tokens when recovering compression loss).
 * The training engine covers the Llama family the runtime loads: tied or untied embeddings, q/k/v (and any other
 * linear's) biases, Qwen3's query and key norms, SmolLM3's NoPE blocks, RoPE scaling (Llama 3's, YaRN, linear); the head,
 * the biases and the norms stay frozen.
 */
export function prepareLoraFinetune(
  loaded: LoadedModel,
  ftRank: number,
  teacher?: Teacher,
  options: LoraPrepareOptions = {},
): FinetuneSetup {
  checkNumberOptions('prepareLoraFinetune', { ftRank }, { ftRank: POSITIVE_INT });
  const { frozen, compressed } = frozenBase(loaded);
  // the dense base of each compressed layer: f32, or f16 bits with `halfBase` (converted back where used)
  const half: Record<string, Uint16Array> = {};
  const freeze = (name: string, w: Float32Array) => {
    if (options.halfBase) half[name] = f32ArrayToF16(w);
    else frozen[name] = w;
  };
  const layers: LoraLayer[] = [];
  const trainable: TrainParams = {};
  for (const { name, linear } of compressed) {
    if (ftRank > 0 && linear.d.rank + (linear.d.ft?.rank ?? 0) > 0) {
      const d = withTrainableFactors(linear.d, ftRank);
      freeze(`${name}.weight`, reconstruct({ ...d, ft: null }).data);
      layers.push({ prefix: name, decomposition: d });
      trainable[`${name}.caldera.L_ft`] = d.ft!.l;
      trainable[`${name}.caldera.R_ft`] = d.ft!.r;
    } else freeze(`${name}.weight`, reconstruct(linear.d).data);
  }
  const config: TrainConfig = loaded.config;
  const objective = loraObjective(
    config,
    frozen,
    layers.map((l) => ({ prefix: l.prefix, rotation: l.decomposition, ftRank: l.decomposition.ft!.rank })),
    teacher,
    { checkpoint: options.checkpoint ?? false, ...(options.halfBase ? { half } : {}) },
  );
  return { config, frozen, layers, trainable, objective };
}

/** Options of {@link prepareLoraFinetune}. */
export interface LoraPrepareOptions {
  /** Activation checkpointing in the objective (see `lossAndGrad`; default false). */
  checkpoint?: boolean;
  /**
   * Keep the frozen dense base of the compressed layers as f16 bits instead of f32 (mixed precision: half its
   * memory; the base is rounded to f16, ≈ 1e-3 relative; default false).
   */
  halfBase?: boolean;
}

/**
 * The LoRA fine-tuning loss of one sequence: the model `frozen` (dense weights by Hugging Face name) plus, for each
 * listed CALDERA layer, the adapter of its trainable pair (`<prefix>.caldera.L_ft`, `<prefix>.caldera.R_ft` in the
 * params) mapped to the original domain by {@link loraFromRotated}; gradients flow back through the rotation by
 * {@link loraGradToRotated}. Works in f32 or, for gradient checks, f64 (frozen and trainable of the same type).
 * With a `teacher` (e.g. the uncompressed model) the loss is cross-entropy against its next-token distribution
 * (distillation) instead of the data's next tokens.
 */
export function loraObjective(
  config: TrainConfig,
  frozen: TrainParams,
  layers: readonly { prefix: string; rotation: LayerRotation; ftRank: number }[],
  teacher?: Teacher,
  options: LossAndGradOptions = {},
): Objective {
  const loraNames = new Set(layers.flatMap((l) => [`${l.prefix}.lora_A`, `${l.prefix}.lora_B`]));
  return (params, tokens, targets, grad) => {
    const full: TrainParams = { ...frozen };
    for (const l of layers) {
      const { a, b } = loraFromRotated(
        l.rotation,
        params[`${l.prefix}.caldera.L_ft`]!,
        params[`${l.prefix}.caldera.R_ft`]!,
        l.ftRank,
      );
      full[`${l.prefix}.lora_A`] = a;
      full[`${l.prefix}.lora_B`] = b;
    }
    const r = lossAndGrad(
      full,
      config,
      tokens,
      teacher ? { probs: teacher(tokens) } : targets,
      grad,
      loraNames,
      undefined,
      options,
    );
    if (!grad) return r;
    const grads: TrainParams = {};
    for (const l of layers) {
      const { dL, dR } = loraGradToRotated(
        l.rotation,
        r.grads![`${l.prefix}.lora_A`]!,
        r.grads![`${l.prefix}.lora_B`]!,
        l.ftRank,
      );
      grads[`${l.prefix}.caldera.L_ft`] = dL;
      grads[`${l.prefix}.caldera.R_ft`] = dR;
    }
    return { loss: r.loss, count: r.count, grads };
  };
}

/** Options of {@link runFinetune}. */
export interface LoraFinetuneOptions {
  /** Optimizer steps at most (default 200). */
  steps?: number;
  /** Tokens per sequence (default 128). */
  seqLen?: number;
  /** Sequences per step (default 4). */
  batch?: number;
  /**
   * Peak learning rate, relative: each tensor's step is scaled by the RMS of its initial values (so L_ft, R_ft
   * and sign vectors move by about `lr` of their size per step whatever scale they are stored at). Default 1e-2.
   */
  lr?: number;
  /** Warmup steps (default 10). */
  warmup?: number;
  /** Decoupled weight decay (default 0). */
  weightDecay?: number;
  /** Validate every this many steps (default 20). */
  evalEvery?: number;
  /** Stop after this many validations without improvement (default 3). */
  patience?: number;
  /** Validation tokens used, in non-overlapping windows of `seqLen` (default 4096). */
  evalTokens?: number;
  /** Seed of the data order (default 0). */
  seed?: number;
  /**
   * Resumable state file: saved atomically every `evalEvery` steps and on abort; when it exists at the start,
   * training continues from it with identical results. It is kept when the run completes, so that a rerun before the
   * result is saved returns it at once instead of training again: delete it once the checkpoint is written (`caldera
   * finetune` keeps it in `<out>.partial`, removed with the rest). A state saved with other settings (the trainer's: `seqLen`,
   * `batch`, `lr`, …, the data and model config; this function's: see `settingLabels`) is refused with one `E_VALUE`
   * that lists every setting that differs.
   */
  statePath?: string;
  /**
   * What else determines the result and is not visible here (e.g. the teacher's identity), recorded with the state:
   * a resumed run must pass the same (default none).
   */
  runKey?: Record<string, unknown>;
  /**
   * How to name each setting when a resumed run is refused (as `labels` of `Trainer.load`'s resume check; this
   * function's own are `evalEvery`, `patience`, `evalTokens`, `validation` and `starting factors`), e.g. the
   * command-line flags; also in the refusal of an `evalTokens` or validation text shorter than `seqLen` + 1.
   */
  settingLabels?: Record<string, string>;
  signal?: AbortSignal;
  onProgress?: (e: FinetuneProgress) => void;
}

/** Progress of {@link runFinetune}. */
export interface FinetuneProgress {
  event: 'step' | 'eval';
  step: number;
  steps: number;
  loss: number;
  lr: number;
  valLoss?: number;
  bestValLoss: number;
  tokensPerSecond: number;
  etaSeconds: number;
}

/** What {@link runFinetune} did. */
export interface FinetuneResult {
  /** Steps taken in total (including steps before a resume). */
  steps: number;
  stoppedEarly: boolean;
  /** Step whose weights were kept (best validation loss; 0 = the untrained model). */
  bestStep: number;
  initialValLoss: number;
  bestValLoss: number;
  history: { step: number; trainLoss: number; valLoss: number }[];
  seconds: number;
}

interface EarlyStopState {
  initialValLoss: number;
  bestValLoss: number;
  bestStep: number;
  badEvals: number;
  history: FinetuneResult['history'];
  trainLossSinceEval: number[];
}

async function exists(path: string): Promise<boolean> {
  return (await nodeFs()).stat(path).then(
    () => true,
    () => false,
  );
}

/** Mean loss of `objective` over non-overlapping windows of `seqLen` + 1 tokens of `tokens` (at most `maxTokens`). */
export function validationLoss(
  objective: Objective,
  params: TrainParams,
  tokens: ArrayLike<number>,
  seqLen: number,
  maxTokens = Infinity,
): number {
  const n = Math.min(tokens.length, maxTokens);
  let sum = 0;
  let count = 0;
  for (let s = 0; s + seqLen + 1 <= n; s += seqLen) {
    const t = Array.from({ length: seqLen }, (_, i) => tokens[s + i]!);
    const g = Array.from({ length: seqLen }, (_, i) => tokens[s + i + 1]!);
    const r = objective(params, t, g, false);
    sum += r.loss * r.count;
    count += r.count;
  }
  if (count === 0)
    throw new CalderaError(
      'E_VALUE',
      n < tokens.length
        ? `validation scores ${n} tokens (the evalTokens cap; the text has ${tokens.length}), fewer than seqLen ${seqLen} + 1`
        : `validation text has ${n} tokens, fewer than seqLen ${seqLen} + 1`,
    );
  return sum / count;
}

/**
 * Fine-tuning of a prepared CALDERA model (LoRA factors or sign vectors): AdamW on the trainable tensors over random
 * windows of `train`,
 * validation loss on `valid` every `evalEvery` steps, early stopping after `patience` validations without
 * improvement, and at the end the best weights are written back into `setup.layers` (and `setup.trainable`).
 * Deterministic given the seed; resumable through `statePath`.
 */
export async function runFinetune(
  setup: FinetuneSetup,
  train: ArrayLike<number>,
  valid: ArrayLike<number>,
  options: LoraFinetuneOptions = {},
): Promise<FinetuneResult> {
  options ??= {}; // from JavaScript: null options are none
  checkNumberOptions('runFinetune', options as Record<string, unknown>, FINETUNE_RULES);
  assertCallbacks(options, 'runFinetune', ['onProgress']);
  const o = {
    steps: 200,
    seqLen: 128,
    batch: 4,
    lr: 1e-2,
    warmup: 10,
    weightDecay: 0,
    evalEvery: 20,
    patience: 3,
    evalTokens: 4096,
    seed: 0,
    ...definedOptions(options),
  };
  if (setup.layers.length === 0)
    throw new CalderaError(
      'E_VALUE',
      // (an ldlq or rtn checkpoint's layers are compressed, of rank 0: "no compressed layer" said otherwise)
      'fine-tuning: the checkpoint has no low-rank factors to train (no compressed layer of rank > 0, as ldlq and ' +
        'rtn write rank 0); its sign vectors can be trained instead (prepareSignFinetune, caldera finetune --signs)',
    );
  // no validation window at all: refused before any work, in the caller's names of the settings (`settingLabels`)
  if (Math.min(valid.length, o.evalTokens) < o.seqLen + 1) {
    const name = (k: string) => o.settingLabels?.[k] ?? k;
    throw new CalderaError(
      'E_VALUE',
      valid.length < o.seqLen + 1
        ? `fine-tuning: the validation text has ${valid.length} tokens, fewer than ${name('seqLen')} ${o.seqLen} + 1`
        : `fine-tuning: ${name('evalTokens')} ${o.evalTokens} is fewer than ${name('seqLen')} ${o.seqLen} + 1 (no validation window)`,
    );
  }
  const t0 = performance.now();
  const val = (p: TrainParams) => validationLoss(setup.objective, p, valid, o.seqLen, o.evalTokens);
  const trainerOptions = {
    seqLen: o.seqLen,
    batch: o.batch,
    lr: o.lr,
    warmup: o.warmup,
    totalSteps: o.steps,
    minLrRatio: 0.1,
    weightDecay: o.weightDecay,
    seed: o.seed,
    lrScale: Object.fromEntries(
      Object.entries(setup.trainable).map(([k, v]) => {
        let ss = 0;
        for (let i = 0; i < v.length; i++) ss += v[i]! * v[i]!;
        return [k, Math.max(Math.sqrt(ss / Math.max(1, v.length)), 1e-8)];
      }),
    ),
  };
  // what determines the result beyond the trainer's options and data: a resumed run must have the same. Hashing the
  // factors and the validation text takes a while on a large model: done only when there is a state to compare
  // against or to save (once; setup.trainable holds the starting factors until the loop ends, after the last save)
  let run: Record<string, unknown> | undefined;
  const runSettings = (): Record<string, unknown> => {
    if (run) return run;
    const start = createSha256();
    for (const k of Object.keys(setup.trainable).sort()) {
      const v = setup.trainable[k]!;
      start.update(k).update(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
    }
    run = {
      evalEvery: o.evalEvery,
      patience: o.patience,
      evalTokens: o.evalTokens,
      validation: tokenDigest(valid),
      'starting factors': start.digest(),
      ...(o.runKey ?? {}),
    };
    return run;
  };
  let trainer: Trainer;
  let es: EarlyStopState;
  let best: Record<string, Float32Array>;
  if (o.statePath && (await exists(o.statePath))) {
    const labels = o.settingLabels ? { labels: o.settingLabels } : {};
    // the trainer's settings and this function's own, refused together (one error lists every difference)
    trainer = await Trainer.load(o.statePath, setup.config, train, setup.objective, {
      expect: trainerOptions,
      ...labels,
      what: 'a fine-tuning run',
      also: (info) => {
        const saved = (info as { run?: Record<string, unknown> } | undefined)?.run;
        return saved ? settingsDiff(saved, runSettings(), labels) : ['(not recorded: an earlier version)'];
      },
    });
    const saved = trainer.restored!.info as { earlyStop: EarlyStopState };
    es = saved.earlyStop;
    best = trainer.restored!.tensors ?? {};
    for (const [k, v] of Object.entries(trainer.params)) setup.trainable[k]!.set(v);
  } else {
    const params: TrainParams = {};
    for (const [k, v] of Object.entries(setup.trainable)) params[k] = Float32Array.from(v);
    trainer = new Trainer(setup.config, params, train, trainerOptions, setup.objective);
    const v0 = val(trainer.params);
    es = {
      initialValLoss: v0,
      bestValLoss: v0,
      bestStep: 0,
      badEvals: 0,
      history: [],
      trainLossSinceEval: [],
    };
    best = Object.fromEntries(Object.entries(params).map(([k, v]) => [k, Float32Array.from(v)]));
  }
  const save = async () => {
    if (o.statePath)
      await trainer.save(o.statePath, { info: { run: runSettings(), earlyStop: es }, tensors: best });
  };
  const stepsAtStart = trainer.stepCount;
  const tokensPerStep = o.seqLen * o.batch;
  // (a state saved when the run stopped early resumes as stopped: its rerun only writes the result)
  while (trainer.stepCount < o.steps && es.badEvals < o.patience) {
    // the step lets signal handlers (e.g. SIGINT → abort) run after each sequence; an aborted step is dropped whole
    const r = await trainer.stepAsync(o.signal ? { signal: o.signal } : {}).catch(async (e: unknown) => {
      if (!o.signal?.aborted) throw e;
      await save();
      throwIfAborted(o.signal, 'fine-tuning');
      throw e;
    });
    es.trainLossSinceEval.push(r.loss);
    const elapsed = (performance.now() - t0) / 1000;
    const tps = ((trainer.stepCount - stepsAtStart) * tokensPerStep) / elapsed;
    const eta = ((o.steps - trainer.stepCount) * tokensPerStep) / tps;
    o.onProgress?.({
      event: 'step',
      step: r.step,
      steps: o.steps,
      loss: r.loss,
      lr: r.lr,
      bestValLoss: es.bestValLoss,
      tokensPerSecond: tps,
      etaSeconds: eta,
    });
    if (trainer.stepCount % o.evalEvery === 0 || trainer.stepCount === o.steps) {
      const v = val(trainer.params);
      const trainLoss = es.trainLossSinceEval.reduce((a, b) => a + b, 0) / es.trainLossSinceEval.length;
      es.trainLossSinceEval = [];
      es.history.push({ step: trainer.stepCount, trainLoss, valLoss: v });
      if (v < es.bestValLoss) {
        es.bestValLoss = v;
        es.bestStep = trainer.stepCount;
        es.badEvals = 0;
        best = Object.fromEntries(Object.entries(trainer.params).map(([k, p]) => [k, Float32Array.from(p)]));
      } else es.badEvals++;
      o.onProgress?.({
        event: 'eval',
        step: trainer.stepCount,
        steps: o.steps,
        loss: trainLoss,
        lr: r.lr,
        valLoss: v,
        bestValLoss: es.bestValLoss,
        tokensPerSecond: tps,
        etaSeconds: eta,
      });
      await save();
    }
  }
  const stoppedEarly = es.badEvals >= o.patience;
  for (const [k, v] of Object.entries(best)) setup.trainable[k]!.set(v);
  return {
    steps: trainer.stepCount,
    stoppedEarly,
    bestStep: es.bestStep,
    initialValLoss: es.initialValLoss,
    bestValLoss: es.bestValLoss,
    history: es.history,
    seconds: (performance.now() - t0) / 1000,
  };
}

/**
 * Writes the fine-tuned checkpoint: the source checkpoint's tensors, with each fine-tuned layer's Q codes untouched,
 * its remaining L/R codes sliced and `L_ft`/`R_ft` added in f32 (docs/architecture.md), `caldera.json` updated
 * (ranks, bits) with the fine-tuning settings under `options.finetune` (an earlier fine-tuning's, when the source has
 * one, kept under its `previous`). Atomic: nothing is left half-written.
 * `options.signal` aborts the write, `options.onProgress` reports it tensor by tensor, `options.onWarning` is told of
 * an earlier output left beside `outDir` that could not be removed (core's `writeCheckpointDir`), and an existing `outDir` is
 * `E_IO` unless `options.overwrite` (core's `writeCheckpointDir`: it replaces whatever is there, so check first that
 * it is yours; it wiped any folder there, the source's parent included).
 */
export async function writeFinetunedCheckpoint(
  sourceDir: string,
  outDir: string,
  layers: readonly LoraLayer[],
  finetuneInfo: Record<string, unknown>,
  options: Pick<WriteCheckpointOptions, 'signal' | 'onProgress' | 'overwrite' | 'onWarning'> = {},
): Promise<CalderaCheckpointMeta> {
  options ??= {}; // from JavaScript: null options are none
  assertNotAbortSignal(options, 'writeFinetunedCheckpoint'); // the old positional signal: refused, not ignored
  // write options given in the record (the 4th argument) were written into caldera.json, and `overwrite` there was
  // answered "already exists (pass overwrite: true to replace it)"
  const misplaced = ['overwrite', 'signal', 'onProgress', 'onWarning'].filter(
    (k) => finetuneInfo !== null && typeof finetuneInfo === 'object' && k in finetuneInfo,
  );
  if (misplaced.length > 0)
    throw new CalderaError(
      'E_VALUE',
      `writeFinetunedCheckpoint: ${misplaced.join(', ')} given in finetuneInfo (the 4th argument, recorded in caldera.json): write options go in the 5th, { ${misplaced.join(', ')} }`,
    );
  const { signal, onProgress, onWarning, overwrite = false } = options;
  const { meta, tensors: reader } = await openCheckpointDir(sourceDir);
  const tensors: Record<string, Tensor> = {};
  const layerMeta: Record<string, CalderaLayerMeta> = { ...meta.layers };
  try {
    const replaced = new Set(layers.map((l) => l.prefix));
    for (const name of reader.names()) {
      const part = parseCalderaTensorName(name);
      if (part && replaced.has(part.prefix)) continue;
      tensors[name] = await reader.readTensor(name);
    }
  } finally {
    await reader.close();
  }
  for (const l of layers) {
    const { tensors: t, meta: m } = toCheckpointTensors(l.prefix, l.decomposition);
    Object.assign(tensors, t);
    // the compressor's error: a decomposition read back from a checkpoint has none of its own
    const error = meta.layers[l.prefix]?.error ?? m.error;
    layerMeta[l.prefix] = error === undefined ? m : { ...m, error };
  }
  // the source's caldera.json, with the fine-tuning recorded and the headline bits of the new layers
  const out: CalderaCheckpointMeta = {
    ...meta,
    ...calderaCheckpointMeta(layerMeta, {
      method: meta.method,
      // a checkpoint fine-tuned again keeps the earlier run's record, as `previous` of the new one
      options: {
        ...meta.options,
        finetune: meta.options?.finetune
          ? { ...finetuneInfo, previous: meta.options.finetune }
          : finetuneInfo,
      },
      seed: meta.seed,
    }),
  };
  // the source's configuration and side files (tokenizer, chat template, generation settings), those it has
  const copy: Record<string, string> = {};
  const { join } = await nodePath();
  for (const f of ['config.json', ...MODEL_SIDE_FILES])
    if (await exists(join(sourceDir, f))) copy[f] = join(sourceDir, f);
  await writeCheckpointDir(
    outDir,
    { meta: out, tensors, copyFiles: copy },
    {
      overwrite,
      ...(signal ? { signal } : {}),
      ...(onProgress ? { onProgress } : {}),
      ...(onWarning ? { onWarning } : {}),
    },
  );
  return out;
}
