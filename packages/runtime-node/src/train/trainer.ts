import {
  assertNotAbortSignal,
  atomicWriteFile,
  CalderaError,
  checkNumberOptions,
  definedOptions,
  Rng,
  shownValue,
  throwIfAborted,
} from '@caldera/core';
import { TRAINER_RULES } from './option-rules.js';
import { nextTurn } from '../next-turn.js';
import { nodeFs } from '../node-builtins.js';
import { createSha256 } from './sha256.js';
import {
  lossAndGrad,
  trainConfigOf,
  trainParamShapes,
  type LossAndGrad,
  type TrainConfig,
  type TrainParams,
} from './model.js';
import { adamWState, adamWStep, clipGradNorm, cosineLr, type AdamWState } from './optim.js';

/** Options of a {@link Trainer}. */
export interface TrainerOptions {
  /** Tokens per training sequence (default 128). */
  seqLen?: number;
  /** Sequences whose gradients are averaged per optimizer step (gradient accumulation; default 8). */
  batch?: number;
  /** Peak learning rate (default 3e-3). */
  lr?: number;
  /** Linear warmup steps (default 50). */
  warmup?: number;
  /** Steps of the cosine schedule (default 1000). */
  totalSteps?: number;
  /** Final learning rate as a fraction of the peak (default 0.1). */
  minLrRatio?: number;
  /** Decoupled weight decay on matrices (norm weights and biases are not decayed; default 0.1). */
  weightDecay?: number;
  /** Global gradient-norm clip (default 1.0). */
  clip?: number;
  /** AdamW betas (default 0.9, 0.95). */
  betas?: [number, number];
  /** Seed of the data order (default 0). */
  seed?: number;
  /**
   * Per-parameter multipliers of the learning rate (default 1 for every parameter). Fine-tuning sets each to the
   * RMS of the tensor's initial values, so that `lr` is a relative step size whatever scale a factor is stored at.
   */
  lrScale?: Record<string, number>;
  /**
   * Activation checkpointing in the default objective ({@link lossAndGrad}'s `checkpoint`): less activation memory
   * for about one more forward per step, same results (default false).
   */
  checkpoint?: boolean;
}

/**
 * The loss a {@link Trainer} minimises, for one sequence: `tokens[t]` predicts `targets[t]`; with `grad`, the
 * gradients of the mean loss for every trainable parameter (the keys of the trainer's `params`). The default is
 * {@link lossAndGrad} of the whole model; LoRA fine-tuning supplies one over the adapters only.
 */
export type Objective = (
  params: TrainParams,
  tokens: number[],
  targets: number[],
  grad: boolean,
  /** When given, an objective may add its gradients into these buffers and return them as `grads`. */
  into?: TrainParams,
) => LossAndGrad;

/** Extra state saved with a training state (e.g. early-stopping bookkeeping and the best weights so far). */
export interface TrainStateExtra {
  info?: unknown;
  tensors?: Record<string, Float32Array>;
}

/** Options of {@link Trainer.save}: the extra state to save with it, and a signal that aborts the write. */
export interface TrainSaveOptions extends TrainStateExtra {
  /** Abort the write (`E_ABORTED`; the file is left as it was: the write is atomic). */
  signal?: AbortSignal;
}

/** sha256 of a token stream (as 32-bit integers): the identity of a run's data in its saved state. */
export function tokenDigest(tokens: ArrayLike<number>): string {
  const a = Int32Array.from(tokens);
  return createSha256().update(new Uint8Array(a.buffer)).digest();
}

/**
 * The settings that differ between a saved run and the one resuming it: `label (then, now)` for every key of `now`
 * whose JSON differs from `then`'s, named by `labels` (default: the key). Keys in `ignore` are left out.
 */
export function settingsDiff(
  then: Record<string, unknown>,
  now: Record<string, unknown>,
  options: { ignore?: readonly string[]; labels?: Record<string, string> } = {},
): string[] {
  // a long string (a sha256) cut inside its quotes, so that they stay paired
  const short = (v: unknown) => {
    if (typeof v === 'string' && v.length > 22) return `"${v.slice(0, 11)}…"`;
    const s = JSON.stringify(v) ?? 'none';
    return s.length > 24 ? `${s.slice(0, 12)}…` : s;
  };
  return Object.keys(now)
    .filter((k) => !options.ignore?.includes(k) && JSON.stringify(then[k]) !== JSON.stringify(now[k]))
    .map((k) => `${options.labels?.[k] ?? k} (${short(then[k])} then, ${short(now[k])} now)`);
}

/** What a resumed run must match ({@link Trainer.load}). */
export interface ResumeCheck {
  /** The options a fresh run would start with. */
  expect: TrainerOptions;
  /**
   * How to name each setting in a refusal, e.g. `{ lr: '--lr' }` for a command line (default: the option's name;
   * the data is `data`, each model-config field `config.<field>`).
   */
  labels?: Record<string, string>;
  /**
   * The caller's own settings, checked in the same round: given the saved state's extra info (the `info` of
   * {@link TrainStateExtra} it was saved with; undefined when none), the settings that differ (as
   * {@link settingsDiff} lists them). They are refused together with the trainer's, in one `E_VALUE`, so that a
   * run with several other settings learns all of them at once.
   */
  also?: (savedInfo: unknown) => string[];
  /** What the state is of, in the refusal: `${path} holds the state of <what> with other settings` (default `a run`). */
  what?: string;
}

/**
 * The fields of a model config as `config.<field>` settings, defaults filled in ({@link trainConfigOf}), with
 * `architecture` and `nopeLayers` always present (null and [] where they do not matter or were not given: the
 * comparison reads the keys of the resuming side only); none for a state that did not record a config.
 */
function configSettings(c: TrainConfig | undefined): Record<string, unknown> {
  if (!c) return {};
  const t = trainConfigOf(c);
  // a state saved before scalings had a `type` holds Llama 3's fields alone (the only scaling read then)
  const rs = t.ropeScaling as Record<string, unknown> | null | undefined;
  const ropeScaling = rs && rs.type === undefined ? { type: 'llama3', ...rs } : (rs ?? null);
  return Object.fromEntries(
    Object.entries({
      ...t,
      architecture: t.architecture ?? null,
      ropeScaling,
      nopeLayers: t.nopeLayers ?? [],
    }).map(([k, v]) => [`config.${k}`, v]),
  );
}

/** `options` with every default filled in (the defaults documented on {@link TrainerOptions}), checked first: `E_VALUE` for a number out of its range ({@link TRAINER_RULES}) or bad `betas`. */
function trainerOptionsWithDefaults(options: TrainerOptions): Required<TrainerOptions> {
  options ??= {}; // from JavaScript: null options are none
  checkNumberOptions('Trainer', options as Record<string, unknown>, TRAINER_RULES);
  const betas = options.betas;
  if (
    betas !== undefined &&
    (!Array.isArray(betas) ||
      betas.length !== 2 ||
      !betas.every((b) => typeof b === 'number' && b >= 0 && b < 1))
  )
    throw new CalderaError(
      'E_VALUE',
      `Trainer: betas must be two numbers in [0, 1), got ${shownValue(betas)}`,
    );
  return {
    seqLen: 128,
    batch: 8,
    lr: 3e-3,
    warmup: 50,
    totalSteps: 1000,
    minLrRatio: 0.1,
    weightDecay: 0.1,
    clip: 1,
    betas: [0.9, 0.95],
    seed: 0,
    lrScale: {},
    checkpoint: false,
    ...definedOptions(options),
  };
}

/**
 * Whether weight decay applies to the parameter `name`: matrices (and LoRA factors) yes; norm weights, biases and a
 * compressed layer's sign vectors (`….caldera.SU`/`SV`) no. By name: a length equal to the hidden size, the test it
 * replaced, also took an L_ft of rank 1 or an SU of hidden length for a norm, and decayed an SV of another length.
 */
function isDecayed(name: string): boolean {
  return !(name.endsWith('norm.weight') || name.endsWith('.bias') || /\.caldera\.S[UV]$/.test(name));
}

/** The JSON header of a training state, as {@link Trainer.save} writes it (`headerBytes`: its length in the file). */
interface StateHeader {
  format: string;
  options: Required<TrainerOptions>;
  config?: TrainConfig;
  dataSha256?: string;
  step: number;
  rng: number[];
  extraInfo?: unknown;
  tensors: Record<string, [number, number]>;
  headerBytes: number;
}

/**
 * The header of the training state `buf` read from `path`, checked against the file: `E_FORMAT` naming the file when
 * it is too short for its header, the header is not JSON or not a training state's, or a tensor's entry is malformed or
 * runs past the end of the file (a truncated file: the entry's tensor named), or a parameter's moments do not have
 * its size. The tensors' contents are not checked.
 */
function parseStateHeader(path: string, buf: Uint8Array): StateHeader {
  const bad = (what: string): never => {
    throw new CalderaError('E_FORMAT', `${path}: ${what}`);
  };
  const notState = 'not a Caldera training state';
  if (buf.length < 4) bad(`${notState} (${buf.length} bytes, too short for its header)`);
  const hl = new DataView(buf.buffer, buf.byteOffset, buf.byteLength).getUint32(0, true);
  if (4 + hl > buf.length)
    bad(`${notState}, or truncated: a ${hl}-byte header does not fit in its ${buf.length} bytes`);
  let h: Partial<StateHeader> | null;
  try {
    h = JSON.parse(new TextDecoder().decode(buf.subarray(4, 4 + hl))) as Partial<StateHeader> | null;
  } catch (e) {
    return bad(`${notState}: its header is not valid JSON (${(e as Error).message})`);
  }
  if (h === null || typeof h !== 'object' || h.format !== 'caldera-train-state') return bad(notState);
  if (h.options === null || typeof h.options !== 'object') bad('the header has no options object');
  if (!Number.isSafeInteger(h.step) || h.step! < 0) bad(`the header's step ${String(h.step)} is not a count`);
  if (!Array.isArray(h.rng) || h.rng.length !== 5) bad("the header's RNG state is not 5 numbers");
  const tensors = h.tensors;
  if (tensors === null || typeof tensors !== 'object') return bad('the header has no tensor directory');
  const floats = Math.floor((buf.length - 4 - hl) / 4);
  for (const [name, e] of Object.entries(tensors)) {
    if (!Array.isArray(e) || e.length !== 2 || !e.every((x) => Number.isSafeInteger(x) && x >= 0))
      bad(`tensor ${name} has a malformed entry ${JSON.stringify(e)} (expected [offset, length])`);
    if (e[0] + e[1] > floats)
      bad(
        `tensor ${name} (floats ${e[0]}…${e[0] + e[1]}) runs past the end of the file (${floats} floats of data): ` +
          'the file is truncated',
      );
  }
  for (const [name, e] of Object.entries(tensors)) {
    if (name.startsWith('extra:') || name.endsWith('.m') || name.endsWith('.v')) continue;
    for (const moment of [`${name}.m`, `${name}.v`]) {
      const me = tensors[moment];
      if (me && me[1] !== e[1])
        bad(`tensor ${moment} has ${me[1]} values, its parameter ${name} ${e[1]}: the state is inconsistent`);
    }
  }
  return { ...(h as StateHeader), headerBytes: hl };
}

/**
 * For the default objective (the whole model): every parameter `config` implies ({@link trainParamShapes}) present in
 * the state (`E_MISSING`) with its size (`E_SHAPE`), naming the file and the tensor, rather than a failure inside the
 * first step.
 */
function checkModelParams(path: string, params: TrainParams, config: TrainConfig): void {
  for (const [name, shape] of Object.entries(trainParamShapes(config))) {
    const p = params[name];
    if (!p) throw new CalderaError('E_MISSING', `${path}: tensor ${name} is missing`);
    const size = shape.reduce((a, b) => a * b, 1);
    if (p.length !== size)
      throw new CalderaError(
        'E_SHAPE',
        `${path}: tensor ${name} has ${p.length} values, the model config's [${shape.join(', ')}] needs ${size}`,
      );
  }
}

/** What {@link Trainer.step} reports. */
export interface TrainStepResult {
  step: number;
  loss: number;
  lr: number;
  gradNorm: number;
}

/**
 * Trains a Llama model from scratch on a token stream (tied or untied embeddings, biases and RoPE scaling as its
 * config says: the parameters of `trainParamShapes`): random windows (seeded), gradient accumulation over `batch`
 * sequences, global-norm clipping, AdamW with a warmup + cosine schedule. The whole state (weights, moments, step,
 * RNG) is saved atomically with {@link Trainer.save} and restored with {@link Trainer.load}, and a resumed run
 * continues with exactly the same losses.
 */
export class Trainer {
  readonly options: Required<TrainerOptions>;
  private moments: Record<string, AdamWState>;
  private rng: Rng;
  /** Optimizer steps done so far. */
  stepCount = 0;
  /** The extra state restored by {@link Trainer.load} (undefined for a fresh trainer). */
  restored: TrainStateExtra | undefined;
  readonly objective: Objective;
  /** sha256 of the data, recorded by {@link save} (computed once, on the first save). */
  private dataSha256: string | undefined;

  constructor(
    readonly config: TrainConfig,
    readonly params: TrainParams,
    readonly data: ArrayLike<number>,
    options: TrainerOptions = {},
    objective?: Objective,
  ) {
    this.options = trainerOptionsWithDefaults(options);
    const checkpoint = this.options.checkpoint;
    this.objective =
      objective ??
      ((p, t, g, grad, into) => lossAndGrad(p, config, t, g, grad, undefined, into, { checkpoint }));
    if (data.length < this.options.seqLen + 2)
      throw new CalderaError(
        'E_VALUE',
        `Trainer: ${data.length} tokens is shorter than seqLen ${this.options.seqLen} + 2`,
      );
    this.moments = Object.fromEntries(Object.entries(params).map(([k, v]) => [k, adamWState(v.length)]));
    this.rng = new Rng(this.options.seed);
  }

  /** One optimizer step over `batch` random windows of the data. */
  step(): TrainStepResult {
    const parts = this.stepParts();
    for (;;) {
      const r = parts.next();
      if (r.done) return r.value;
    }
  }

  /**
   * The same step as {@link step}, with a turn of the event loop after each of its `batch` sequences, so that a
   * signal handler or timer runs during a long step. When `signal` aborts there, the step is dropped (`E_ABORTED`
   * with the signal's reason as the cause): the weights, moments, step count and RNG are as they were before it, so
   * a state saved then resumes with the same losses.
   */
  async stepAsync(options: { signal?: AbortSignal } = {}): Promise<TrainStepResult> {
    options ??= {}; // from JavaScript: null options are none
    assertNotAbortSignal(options, 'Trainer.stepAsync');
    const { signal } = options;
    throwIfAborted(signal, 'training step');
    const rngBefore = this.rng.getState();
    const parts = this.stepParts();
    for (;;) {
      const r = parts.next();
      if (r.done) return r.value;
      await nextTurn();
      if (signal?.aborted) {
        this.rng = Rng.fromState(rngBefore); // the sequences drawn so far are drawn again by the next step
        throwIfAborted(signal, 'training step');
      }
    }
  }

  /** A step as a generator: yields after each sequence's gradient; nothing but the RNG changes before the last. */
  private *stepParts(): Generator<void, TrainStepResult> {
    const o = this.options;
    const acc: TrainParams = {};
    for (const [k, v] of Object.entries(this.params)) acc[k] = new Float32Array(v.length);
    let loss = 0;
    for (let b = 0; b < o.batch; b++) {
      const s = this.rng.int(this.data.length - o.seqLen - 1);
      const tokens = Array.from({ length: o.seqLen }, (_, i) => this.data[s + i]!);
      const targets = Array.from({ length: o.seqLen }, (_, i) => this.data[s + i + 1]!);
      const r = this.objective(this.params, tokens, targets, true, acc); // adds its gradients into acc
      loss += r.loss / o.batch;
      if (r.grads !== acc)
        // objectives that do not accumulate (e.g. LoRA) return their own gradients
        for (const [k, g] of Object.entries(r.grads!)) {
          const a = acc[k]!;
          for (let i = 0; i < a.length; i++) a[i] = a[i]! + g[i]!;
        }
      if (b + 1 < o.batch) yield;
    }
    for (const a of Object.values(acc)) for (let i = 0; i < a.length; i++) a[i] = a[i]! / o.batch;
    const gradNorm = clipGradNorm(Object.values(acc), o.clip);
    const lr = cosineLr(this.stepCount, {
      peak: o.lr,
      warmup: o.warmup,
      total: o.totalSteps,
      minRatio: o.minLrRatio,
    });
    this.stepCount++;
    for (const [k, p] of Object.entries(this.params)) {
      const decay = isDecayed(k) ? o.weightDecay : 0;
      adamWStep(p, acc[k]!, this.moments[k]!, this.stepCount, {
        lr: lr * (o.lrScale[k] ?? 1),
        beta1: o.betas[0],
        beta2: o.betas[1],
        weightDecay: decay,
      });
    }
    return { step: this.stepCount, loss, lr, gradNorm };
  }

  /**
   * Writes the whole training state to `path` atomically: a little-endian u32 header length, a JSON header
   * (options, step, RNG state, tensor directory), then the f32 tensors (weights, first and second moments), with
   * `options.info` and `options.tensors` as extra state ({@link Trainer.restored} after a load).
   */
  async save(path: string, options: TrainSaveOptions = {}): Promise<void> {
    options ??= {}; // from JavaScript: null options are none
    assertNotAbortSignal(options, 'Trainer.save'); // the old positional signal: refused, not ignored
    const { signal, ...extra } = options;
    const names = Object.keys(this.params);
    const arrays: Float32Array[] = [];
    const dir: Record<string, [number, number]> = {};
    let off = 0;
    for (const [n, a] of Object.entries(extra.tensors ?? {})) {
      dir[`extra:${n}`] = [off, a.length];
      off += a.length;
      arrays.push(a);
    }
    for (const n of names)
      for (const [suffix, a] of [
        ['', this.params[n]!],
        ['.m', this.moments[n]!.m],
        ['.v', this.moments[n]!.v],
      ] as const) {
        const f = Float32Array.from(a);
        dir[n + suffix] = [off, f.length];
        off += f.length;
        arrays.push(f);
      }
    const header = Buffer.from(
      JSON.stringify({
        format: 'caldera-train-state',
        version: 1,
        options: this.options,
        config: trainConfigOf(this.config),
        dataSha256: (this.dataSha256 ??= tokenDigest(this.data)),
        step: this.stepCount,
        rng: this.rng.getState(),
        extraInfo: extra.info ?? null,
        tensors: dir,
      }),
    );
    const body = new Uint8Array(4 + header.length + off * 4);
    new DataView(body.buffer).setUint32(0, header.length, true);
    body.set(header, 4);
    let p = 4 + header.length;
    for (const a of arrays) {
      body.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), p);
      p += a.byteLength;
    }
    await atomicWriteFile(path, body, signal ? { signal } : {});
  }

  /**
   * Restores a state written by {@link save}; `data` (and `objective`) must be the same as when it was saved. With
   * `resume` (the options the caller would start a fresh run with), the saved run must have the same options (all
   * but `checkpoint`, which changes no result and is taken from them), the same model config and the same data, and
   * whatever `resume.also` checks: otherwise one `E_VALUE` names everything that differs, since continuing would mix
   * two runs. A file that is not a complete training state (empty, another format, a malformed header, truncated, a
   * tensor of the wrong size) is `E_FORMAT` naming it (and the tensor at fault), before any weight is restored; a
   * missing tensor is `E_MISSING`, an unreadable file `E_IO`.
   */
  static async load(
    path: string,
    config: TrainConfig,
    data: ArrayLike<number>,
    objective?: Objective,
    resume?: ResumeCheck,
  ): Promise<Trainer> {
    const buf = await (await nodeFs()).readFile(path).catch((e: Error) => {
      throw new CalderaError('E_IO', `cannot read training state ${path}: ${e.message}`);
    });
    const h = parseStateHeader(path, buf);
    let options = h.options;
    // the data's digest, when checked here, is the one the first save would compute again
    const digest = resume ? tokenDigest(data) : undefined;
    if (resume) {
      const now = trainerOptionsWithDefaults(resume.expect);
      const differ = [
        ...settingsDiff(
          { ...h.options, ...configSettings(h.config), data: h.dataSha256 },
          { ...now, ...configSettings(config), data: digest },
          { ignore: ['checkpoint'], ...(resume.labels ? { labels: resume.labels } : {}) },
        ),
        ...(resume.also?.(h.extraInfo ?? undefined) ?? []),
      ];
      if (differ.length > 0)
        throw new CalderaError(
          'E_VALUE',
          `${path} holds the state of ${resume.what ?? 'a run'} with other settings: ${differ.join('; ')}; rerun ` +
            'with the options of that run to resume it, or delete the state to start over',
        );
      options = { ...h.options, checkpoint: now.checkpoint };
    }
    const base = 4 + h.headerBytes;
    const get = (name: string): Float32Array => {
      const e = h.tensors[name];
      if (!e) throw new CalderaError('E_MISSING', `${path}: tensor ${name} is missing`);
      const bytes = buf.subarray(base + e[0] * 4, base + (e[0] + e[1]) * 4);
      return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    };
    const params: TrainParams = {};
    const extraTensors: Record<string, Float32Array> = {};
    for (const n of Object.keys(h.tensors)) {
      if (n.startsWith('extra:')) extraTensors[n.slice(6)] = get(n);
      else if (!n.endsWith('.m') && !n.endsWith('.v')) params[n] = get(n);
    }
    if (!objective) checkModelParams(path, params, config);
    const t = new Trainer(config, params, data, options, objective);
    t.dataSha256 = digest;
    t.restored = { info: h.extraInfo ?? undefined, tensors: extraTensors };
    for (const n of Object.keys(params)) t.moments[n] = { m: get(`${n}.m`), v: get(`${n}.v`) };
    t.stepCount = h.step;
    t.rng = Rng.fromState(h.rng);
    return t;
  }
}
