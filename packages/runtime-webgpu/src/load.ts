import {
  assertCallbacks,
  assertCalderaLayerShape,
  assertDeclaredBias,
  assertHeadPresent,
  declaredBias,
  assertFinite,
  assertFloatStorage,
  assertCalderaLayersExist,
  assertNoCalderaTensorsWithoutMeta,
  assertNoStrayCalderaTensors,
  assertNonEmptyString,
  assertNotAbortSignal,
  assertObject,
  assertTensorStore,
  blockLinearNames,
  CalderaError,
  checkDenseDtype,
  cast,
  f32ArrayToF16,
  hasQkNorm,
  linearShape,
  openSafetensors,
  openModelUrl,
  openSafetensorsDir,
  parseModelConfig,
  NO_Q_CODEC,
  parseCalderaMeta,
  qkNormNames,
  tensor,
  readJsonFile,
  throwIfAborted,
  type CalderaCheckpointMeta,
  type ModelConfig,
  type Tensor,
  type TensorStore,
} from '@caldera/core';
import { fromCheckpointTensors } from '@caldera/lowrank';
import {
  bufferBytes,
  checkDeviceAlive,
  storageBuffer,
  watchDeviceLost,
  type CalderaDevice,
} from './device.js';
import { checkDeviceArgument } from './args.js';
import {
  checkLanes,
  checkMaxLocalHadamard,
  checkRowsPerLane,
  checkVectorWorkgroup,
  checkGateStep,
  checkCodeBatch,
  checkWrittenMix,
  checkF16,
  type GpuMatrix,
} from './kernels/index.js';
import {
  createCalderaLinears,
  createDenseLinears,
  type DenseLayerInput,
  uploadMatrix,
  type CalderaLayerInput,
  type GpuLinear,
} from './linear.js';
import {
  activationRowsOf,
  checkModelConfig,
  checkTopKOnGpu,
  contextLengthOf,
  WebGpuModel,
  type GpuBlockWeights,
  type WebGpuModelOptions,
} from './model.js';

/** Options of the loaders. */
export interface LoadOptions extends WebGpuModelOptions {
  /**
   * Storage of dense weights (embedding, LM head, uncompressed linears), as runtime-node's `dtype`: `'auto'` (default)
   * keeps f16 and bf16 tensors as stored, 16 bits each (two per u32 on the GPU, widened to f32 as the kernels read
   * them — bf16 exactly, so a bf16 model's outputs are those of `'f32'` in half the memory), and everything else as
   * f32; `'f32'` widens everything to f32; `'f16'` rounds everything to f16 (lossy for bf16 and f32 checkpoints).
   */
  dtype?: 'auto' | 'f16' | 'f32';
  /**
   * Called with the memory plan before anything is uploaded, and by {@link loadModelFromUrl} before any tensor data
   * is downloaded (the plan needs only the safetensors headers). An error it throws stops loading and is rethrown; an
   * abort of `signal` it makes stops loading with `E_ABORTED` (then the device check, `E_DEVICE`, does not run).
   */
  onPlan?: (plan: MemoryPlan) => void;
  /**
   * Called after each block is uploaded. After the last one the loader compiles the model's kernels
   * ({@link WebGpuModel.compile}) before it resolves; on a CPU adapter that takes seconds.
   */
  onProgress?: (e: { block: number; blocks: number }) => void;
  /** Abort between tensors, and once the kernels are compiled (`E_ABORTED`). */
  signal?: AbortSignal;
}

/** A model loaded on the GPU with its provenance. */
export interface LoadedWebGpuModel {
  model: WebGpuModel;
  config: ModelConfig;
  /** `caldera.json` (validated), or null for a dense model. */
  calderaMeta: CalderaCheckpointMeta | null;
  /**
   * Bits per weight of the seven linear layers of every block: a CALDERA layer's as its checkpoint stores it (codes,
   * scales, f16 sign vectors; on the GPU the signs take f32), a dense one's as uploaded (16 for a dense f16 model, 32
   * for weights uploaded in f32).
   */
  linearBitsPerWeight: number;
}

/**
 * A dense (float) tensor: `E_MISSING`, `E_DTYPE` for an integer tensor (it would be cast to f32 code by code: numbers,
 * but not the weights; checked from its header, before its data is read), `E_SHAPE` for another shape. The packed codes
 * of CALDERA layers, integer by design, are read by `fromCheckpointTensors` instead.
 */
async function read(store: TensorStore, name: string, shape: readonly number[]): Promise<Tensor> {
  if (!store.has(name)) throw new CalderaError('E_MISSING', `tensor '${name}' is missing`);
  assertFloatStorage(name, (await store.tensorInfo(name)).dtype);
  const t = await store.readTensor(name);
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]))
    throw new CalderaError(
      'E_SHAPE',
      `tensor '${name}' has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`,
    );
  return t;
}

async function vector(store: TensorStore, name: string, n: number): Promise<Float32Array> {
  const t = await read(store, name, [n]);
  const f = (t.dtype === 'f32' ? t : cast(t, 'f32')).data as Float32Array;
  for (let i = 0; i < f.length; i++)
    if (!Number.isFinite(f[i]!))
      throw new CalderaError('E_VALUE', `tensor '${name}' has a non-finite value at index ${i}`);
  return f;
}

/**
 * A dense weight as the GPU holds it under `dtype` ({@link LoadOptions.dtype}): f16 bits as stored (unless 'f32'),
 * bf16 bits as stored ('auto'), else f32, rounded to f16 bits for 'f16'. Every value is checked finite (`E_VALUE` naming
 * `name`; 16-bit bits without widening them), after the rounding too: WGSL leaves infinities and NaN undefined.
 */
function denseData(
  t: Tensor,
  dtype: 'auto' | 'f16' | 'f32',
  name: string,
): { data: Float32Array | Uint16Array; format: 'f16' | 'bf16' } {
  const what = `tensor '${name}'`;
  if ((t.dtype === 'f16' && dtype !== 'f32') || (t.dtype === 'bf16' && dtype === 'auto')) {
    assertFinite(t, what);
    return { data: t.data as Uint16Array, format: t.dtype };
  }
  const f = (t.dtype === 'f32' ? t : cast(t, 'f32')) as Tensor<'f32'>;
  assertFinite(f, what);
  if (dtype !== 'f16') return { data: f.data, format: 'f16' };
  const bits = f32ArrayToF16(f.data);
  assertFinite(tensor('f16', f.shape, bits), `${what} rounded to f16`);
  return { data: bits, format: 'f16' };
}

/**
 * The loaders' option checks, before anything is read or downloaded: `E_VALUE` naming the option for a `dtype`,
 * `lanes`, `maxLocalHadamard`, `rowsPerLane`, `vectorWorkgroup` (on `dev`), `gateStep`, `codeBatch`, `writtenMix`,
 * `f16` (on `dev`) or `topKOnGpu` outside its values, a callback (`onPlan`, `onProgress`; `fetch` and `onDownload` of {@link loadModelFromUrl})
 * that is not a function, or a `signal` that is not an `AbortSignal`; `E_ABORTED` when the signal has fired already.
 * `contextLength` and `prefillChunk` are checked by the plan.
 */
function checkLoadOptions(dev: CalderaDevice, options: UrlLoadOptions, fn: string): void {
  assertNotAbortSignal(options, fn); // a positional signal: refused, not ignored
  checkDenseDtype(options.dtype, fn);
  checkLanes(options.lanes);
  checkMaxLocalHadamard(options.maxLocalHadamard);
  checkRowsPerLane(options.rowsPerLane);
  checkVectorWorkgroup(options.vectorWorkgroup, dev);
  checkGateStep(options.gateStep);
  checkCodeBatch(options.codeBatch);
  checkWrittenMix(options.writtenMix);
  checkF16(options, dev);
  checkTopKOnGpu(options.topKOnGpu);
  assertCallbacks(options, fn, ['onPlan', 'onProgress', 'onDownload', 'fetch']);
  throwIfAborted(options.signal, 'loading');
}

/** GPU memory a model will take, computed from tensor headers before anything is read or uploaded. */
export interface MemoryPlan {
  /** Bytes of weight buffers (what {@link WebGpuModel.weightBytes} reports after loading). */
  weightBytes: number;
  /** Bytes of the KV cache and activation buffers (what {@link WebGpuModel.cacheBytes} reports), approximately. */
  cacheBytes: number;
  /**
   * The largest single tensor's buffer (weights, KV cache or activations) and what it holds (it must fit one
   * binding). Layers uploaded as one group share buffers; a group too large for a binding is uploaded layer by layer.
   */
  largestBuffer: { bytes: number; what: string };
}

/**
 * Plan the GPU memory of a model from its config, `caldera.json` and tensor headers (no tensor data is read).
 * {@link loadModelFromStore} calls it first and fails with `E_DEVICE` before uploading anything when the largest
 * buffer exceeds the device's storage binding ({@link loadModelFromUrl}: before downloading any tensor data, from the
 * headers that it fetches with `Range` requests).
 */
export async function planMemory(
  config: ModelConfig,
  calderaMeta: CalderaCheckpointMeta | null,
  store: TensorStore,
  options: { contextLength?: number; prefillChunk?: number; dtype?: 'auto' | 'f16' | 'f32' } = {},
): Promise<MemoryPlan> {
  checkModelConfig(config, 'planMemory');
  if (calderaMeta !== null) assertObject(calderaMeta, 'planMemory', 'calderaMeta', 'an object or null');
  assertTensorStore(store, 'planMemory', 'store');
  options ??= {}; // from JavaScript: null options are none
  checkDenseDtype(options.dtype, 'planMemory');
  const dtype = options.dtype ?? 'auto';
  let weightBytes = 0;
  let largest = { bytes: 0, what: '' };
  const add = (bytes: number, what: string) => {
    const b = bufferBytes(bytes);
    weightBytes += b;
    if (b > largest.bytes) largest = { bytes: b, what };
  };
  const dense = async (name: string) => {
    const info = await store.tensorInfo(name);
    const [rows, cols] = info.shape as [number, number];
    // 16-bit as denseData holds it: everything for 'f16'; f16 and bf16 tensors as stored for 'auto'
    const half = dtype === 'f16' || (dtype === 'auto' && (info.dtype === 'F16' || info.dtype === 'BF16'));
    add(half ? rows * Math.ceil(cols / 2) * 4 : rows * cols * 4, name);
  };
  const { hiddenSize: d, vocabSize: V, numKvHeads: KV, headDim: hd, numHeads: H } = config;
  await dense('model.embed_tokens.weight');
  if (!config.tieWordEmbeddings && store.has('lm_head.weight')) await dense('lm_head.weight');
  add(d * 4, 'model.norm.weight');
  for (let b = 0; b < config.numLayers; b++) {
    add(d * 4, `model.layers.${b}.input_layernorm.weight`);
    add(d * 4, `model.layers.${b}.post_attention_layernorm.weight`);
    // Qwen3's per-head query and key norms
    for (const name of qkNormNames(config, b)) add(hd * 4, name);
    for (const { name, kind } of blockLinearNames(b)) {
      const meta = calderaMeta?.layers?.[name];
      // (a bias the config does not declare is not loaded: not counted)
      if (declaredBias(config, kind) !== null && store.has(`${name}.bias`))
        add((await store.tensorInfo(`${name}.bias`)).shape[0]! * 4, `${name}.bias`);
      if (!meta) {
        await dense(`${name}.weight`);
        continue;
      }
      const [mp, np] = meta.padded;
      // bytes of `groups` packed groups of 8 in a codec: u16 codes, plus a u16 (rvq4) or u8 (rvq3) second plane
      const plane2 = (codec: string, groups: number) =>
        codec === 'e8p12' ? 0 : codec.endsWith('rvq3') ? groups : 2 * groups;
      const hasQ = meta.codecs.Q !== NO_Q_CODEC;
      if (hasQ) {
        add((mp * np) / 4, `${name}.caldera.Q`);
        if (meta.codecs.Q !== 'e8p12') add(plane2(meta.codecs.Q, (mp * np) / 8), `${name}.Q_resid`);
      }
      // as GpuCalderaLinear uploads them: lattice-coded L̂, R̂ packed (L̂'s planes in one buffer) beside a Q, dense
      // factors, lattice factors of a layer without Q and the LoRA pair as f32
      const kf = meta.ftRank ?? 0; // a layer without ftRank has no LoRA pair, as @caldera/lowrank reads it
      const kq = meta.rank - kf;
      const lattice = hasQ && kq > 0 && meta.codecs.L !== 'f16' && meta.codecs.R !== 'f16';
      if (lattice) {
        add(4 * Math.ceil((kq * mp) / 16) + plane2(meta.codecs.L, (kq * mp) / 8), `${name}.caldera.L`);
        add((kq * np) / 4, `${name}.caldera.R`);
        if (meta.codecs.R !== 'e8p12') add(plane2(meta.codecs.R, (kq * np) / 8), `${name}.R_resid`);
      }
      const kd = (lattice ? 0 : kq) + kf;
      if (kd > 0) {
        add(mp * kd * 4, `${name} L (f32)`);
        add(kd * np * 4, `${name} R (f32)`);
      }
      if (meta.hadamard) {
        add(np * 4, `${name}.SU`);
        add(mp * 4, `${name}.SV`);
      }
    }
  }
  const cap = contextLengthOf(options, config);
  const T = activationRowsOf(options, cap);
  const kw = KV * hd;
  const I = config.intermediateSize;
  // activation buffers hold T rows (the prefill batch rounded up to the row tile), as WebGpuModel allocates them
  const activations: [number, string][] = [
    [T * d, 'x'],
    [T * d, 'x2'],
    [T * d, 'h'],
    [T * H * hd, 'q'],
    [T * kw, 'k'],
    [T * kw, 'v'],
    [T * H * hd, 'att'],
    [T * I, 'gate'],
    [T * I, 'up'],
    [T * H * cap, 'attention scores'],
    [T * V, 'logits'],
    [4, 'argmax'],
    [Math.max(4, T), 'tokens'],
  ];
  let cacheBytes = 2 * config.numLayers * bufferBytes(cap * kw * 4);
  if (bufferBytes(cap * kw * 4) > largest.bytes)
    largest = { bytes: bufferBytes(cap * kw * 4), what: 'KV cache' };
  for (const [n, what] of activations) {
    const b = bufferBytes(n * 4);
    cacheBytes += b;
    if (b > largest.bytes) largest = { bytes: b, what: `${what} (activations)` };
  }
  return { weightBytes, cacheBytes, largestBuffer: largest };
}

/**
 * Load a model onto the GPU from an open tensor store plus its parsed `config.json` and `caldera.json` (null for a
 * dense model; validated by `parseCalderaMeta`, `E_FORMAT` listing every problem, with `calderaMetaFile` (default
 * `caldera.json`) naming it). The building block of {@link loadModel} (Node, a directory) and
 * {@link loadModelFromUrl} (fetch). Like every loader here: a `dev` that is not a {@link CalderaDevice}, or a
 * required argument that is null or undefined (`source`, `source.store`; the others' directory, URL or parts), is
 * `E_VALUE` naming it, and null `options` count as none.
 */
export async function loadModelFromStore(
  dev: CalderaDevice,
  source: {
    config: unknown;
    calderaMeta: unknown;
    calderaMetaFile?: string;
    store: TensorStore;
    /** What names the checkpoint in the errors of its tensors (its directory or URL; default none). */
    label?: string;
  },
  options: LoadOptions = {},
): Promise<LoadedWebGpuModel> {
  checkDeviceArgument(dev, 'loadModelFromStore');
  assertObject(source, 'loadModelFromStore', 'source');
  assertTensorStore(source.store, 'loadModelFromStore', 'source.store');
  options ??= {}; // from JavaScript: null options are none
  checkLoadOptions(dev, options, 'loadModelFromStore');
  watchDeviceLost(dev.device);
  checkDeviceAlive(dev, 'loading a model');
  const config = parseModelConfig(source.config);
  const { store } = source;
  // null or undefined: a dense model
  const calderaMeta =
    source.calderaMeta == null ? null : parseCalderaMeta(source.calderaMeta, source.calderaMetaFile);
  // compressed layers' codes without the caldera.json that describes them: say so (as runtime-node does), rather
  // than that the first compressed layer's dense weight is missing
  if (!calderaMeta)
    assertNoCalderaTensorsWithoutMeta(
      store.names(),
      'the checkpoint',
      source.calderaMetaFile ?? 'caldera.json',
      "serve or pass the checkpoint's caldera.json with its safetensors",
    );
  // tensors the metadata does not describe (an edited rank or hadamard flag) would be ignored: other weights
  if (calderaMeta) {
    // a layer it lists that the model does not have was dropped silently (runtime-node refused it)
    assertCalderaLayersExist(
      calderaMeta,
      config.numLayers,
      'the checkpoint',
      source.calderaMetaFile ?? 'caldera.json',
    );
    assertNoStrayCalderaTensors(
      calderaMeta,
      store.names(),
      'the checkpoint',
      source.calderaMetaFile ?? 'caldera.json',
    );
  }
  const dtype = options.dtype ?? 'auto';
  const { hiddenSize: d, vocabSize: V, headDim: hd } = config;
  const plan = await planMemory(config, calderaMeta, store, options);
  options.onPlan?.(plan);
  // an onPlan that decided against this model (a caller's own memory budget) aborts before any tensor is read
  throwIfAborted(options.signal, 'loading');
  const cap = Math.min(dev.maxStorageBinding, dev.maxBufferSize);
  if (plan.largestBuffer.bytes > cap)
    throw new CalderaError(
      'E_DEVICE',
      `the model does not fit this device: ${plan.largestBuffer.what} needs a ${plan.largestBuffer.bytes}-byte ` +
        `storage buffer, the device binds at most ${cap} (model: ${plan.weightBytes} bytes of weights, ` +
        `${plan.cacheBytes} of cache)`,
      { details: { ...plan.largestBuffer, limit: cap, weightBytes: plan.weightBytes } },
    );
  const created: { dispose(): void }[] = [];
  const buffer = (data: Float32Array, label: string) => {
    const b = storageBuffer(dev, data, label);
    created.push({ dispose: () => b.destroy() });
    return b;
  };
  const matrix = (
    { data, format }: ReturnType<typeof denseData>,
    rows: number,
    cols: number,
    label: string,
  ): GpuMatrix => {
    const m = uploadMatrix(dev, data, rows, cols, label, format);
    created.push({ dispose: () => m.buffer.destroy() });
    return m;
  };
  try {
    const embedT = await read(store, 'model.embed_tokens.weight', [V, d]);
    const embed = matrix(denseData(embedT, dtype, 'model.embed_tokens.weight'), V, d, 'embed_tokens');
    assertHeadPresent(config, (t) => store.has(t));
    const head = config.tieWordEmbeddings
      ? embed
      : matrix(
          denseData(await read(store, 'lm_head.weight', [V, d]), dtype, 'lm_head.weight'),
          V,
          d,
          'lm_head',
        );
    const blocks: GpuBlockWeights[] = [];
    let bitsNum = 0;
    let weightsNum = 0;
    for (let b = 0; b < config.numLayers; b++) {
      // layers that read the same activations (`input`: q, k and v; gate and up; consecutive in blockLinearNames)
      // are uploaded together as soon as they are read, into one group's buffers when their codecs (CALDERA) or
      // dtypes (dense) allow
      const lin: (GpuLinear | null)[] = [];
      let input: string | null = null;
      const caldera: { at: number; layer: CalderaLayerInput }[] = [];
      const dense: { at: number; layer: DenseLayerInput }[] = [];
      const upload = () => {
        const place = (these: { at: number }[], layers: GpuLinear[]) => {
          created.push(...layers);
          these.forEach((p, i) => (lin[p.at] = layers[i]!));
          these.length = 0;
        };
        place(
          caldera,
          createCalderaLinears(
            dev,
            caldera.map((p) => p.layer),
          ),
        );
        place(
          dense,
          createDenseLinears(
            dev,
            dense.map((p) => p.layer),
          ),
        );
      };
      for (const { name, kind, input: reads } of blockLinearNames(b)) {
        throwIfAborted(options.signal, 'loading');
        checkDeviceAlive(dev, 'loading a model');
        if (reads !== input) upload();
        input = reads;
        const [m, n] = linearShape(config, kind);
        assertDeclaredBias(config, name, (t) => store.has(t));
        // a bias the config does not declare is not applied, as transformers builds no bias there
        const bias = declaredBias(config, kind) !== null ? await vector(store, `${name}.bias`, m) : null;
        const meta = calderaMeta?.layers?.[name];
        weightsNum += m * n;
        if (meta) {
          // before its tensors are decoded against it, as runtime-node's loader checks it (E_FORMAT from the decoding
          // before: tensors of the swapped shape did not fit)
          assertCalderaLayerShape(name, meta, [m, n]);
          const tensors: Record<string, Tensor> = {};
          for (const t of store.names())
            if (t.startsWith(`${name}.caldera.`)) tensors[t] = await store.readTensor(t);
          const dec = fromCheckpointTensors(name, (nm) => tensors[nm], meta);
          if (dec.shape[0] !== m || dec.shape[1] !== n)
            throw new CalderaError(
              'E_SHAPE',
              `${name}: compressed shape [${dec.shape.join(', ')}], expected [${m}, ${n}]`,
            );
          bitsNum += dec.bitsPerWeight * m * n;
          caldera.push({ at: lin.length, layer: { d: dec, bias, label: name } });
          lin.push(null);
        } else {
          const { data, format } = denseData(
            await read(store, `${name}.weight`, [m, n]),
            dtype,
            `${name}.weight`,
          );
          dense.push({ at: lin.length, layer: { data, format, rows: m, cols: n, bias, label: name } });
          lin.push(null);
          bitsNum += (data instanceof Uint16Array ? 16 : 32) * m * n;
        }
      }
      upload();
      const [q, k, v, o, gate, up, down] = lin as [
        GpuLinear,
        GpuLinear,
        GpuLinear,
        GpuLinear,
        GpuLinear,
        GpuLinear,
        GpuLinear,
      ];
      blocks.push({
        inputNorm: buffer(await vector(store, `model.layers.${b}.input_layernorm.weight`, d), `ln_in${b}`),
        postAttnNorm: buffer(
          await vector(store, `model.layers.${b}.post_attention_layernorm.weight`, d),
          `ln_post${b}`,
        ),
        // Qwen3's per-head query and key norms (head_dim values each; E_MISSING, E_SHAPE naming the tensor)
        ...(hasQkNorm(config)
          ? {
              qNorm: buffer(
                await vector(store, `model.layers.${b}.self_attn.q_norm.weight`, hd),
                `q_norm${b}`,
              ),
              kNorm: buffer(
                await vector(store, `model.layers.${b}.self_attn.k_norm.weight`, hd),
                `k_norm${b}`,
              ),
            }
          : {}),
        q,
        k,
        v,
        o,
        gate,
        up,
        down,
      });
      options.onProgress?.({ block: b + 1, blocks: config.numLayers });
    }
    const norm = buffer(await vector(store, 'model.norm.weight', d), 'norm');
    checkDeviceAlive(dev, 'loading a model');
    const model = new WebGpuModel(dev, config, { embed, blocks, norm, head }, options);
    created.push(model);
    await model.compile();
    throwIfAborted(options.signal, 'loading');
    return { model, config, calderaMeta, linearBitsPerWeight: weightsNum ? bitsNum / weightsNum : 0 };
  } catch (e) {
    for (const c of created) c.dispose();
    throw labelled(e, source.label);
  }
}

/**
 * A checkpoint's error about its tensors (`E_MISSING`, `E_SHAPE`, `E_FORMAT`, `E_DTYPE`) with the checkpoint's `label`
 * (its directory or URL) in front, as runtime-node words them (they named the tensor alone: which URL failed was not
 * said); other errors, and those that name it already, as they are.
 */
function labelled(e: unknown, label: string | undefined): unknown {
  if (
    !label ||
    !(e instanceof CalderaError) ||
    !['E_MISSING', 'E_SHAPE', 'E_FORMAT', 'E_DTYPE'].includes(e.code)
  )
    return e;
  const message = e.message.slice(e.code.length + 2);
  if (message.includes(label)) return e;
  return new CalderaError(e.code, `${label}: ${message}`, {
    cause: e,
    ...(e.details ? { details: { ...e.details } } : {}),
  });
}

/**
 * Load a Hugging Face Llama-family directory or a Caldera compressed checkpoint from disk (Node only: `node:fs` is
 * imported on first use, so browser bundles never load it).
 */
export async function loadModel(
  dev: CalderaDevice,
  dir: string,
  options: LoadOptions = {},
): Promise<LoadedWebGpuModel> {
  checkDeviceArgument(dev, 'loadModel');
  assertNonEmptyString(dir, 'loadModel', 'the model directory');
  options ??= {}; // from JavaScript: null options are none
  checkLoadOptions(dev, options, 'loadModel');
  const config = await readJsonFile(`${dir}/config.json`);
  const calderaMeta = await readJsonFile(`${dir}/caldera.json`, { optional: true });
  const store = await openSafetensorsDir(dir);
  try {
    return await loadModelFromStore(
      dev,
      { config, calderaMeta, calderaMetaFile: `${dir}/caldera.json`, store, label: dir },
      options,
    );
  } finally {
    await store.close();
  }
}

/** Options of {@link loadModelFromUrl}. */
export interface UrlLoadOptions extends LoadOptions {
  /** The fetch to use (default `globalThis.fetch`). */
  fetch?: typeof fetch;
  /**
   * Download progress of the weight files (`model.safetensors` or each shard), called as bytes arrive: bytes so far
   * and the file's `Content-Length` (null when the server sends none, or a `Content-Encoding` such as gzip, whose
   * length counts the encoded bytes). It reports the download of each file's tensor data, after the memory plan
   * (`onPlan`), not the requests for the headers; from a server that ignores `Range` it reports the whole file's
   * download, before the plan; a file of at most 64 KiB, which the header request brought whole, is reported then as
   * 0 and all of its bytes.
   */
  onDownload?: (e: { file: string; bytes: number; total: number | null }) => void;
}

/**
 * Load a model served over HTTP: `<base>/config.json`, optional `<base>/caldera.json` (a 404 means dense) and
 * `<base>/model.safetensors`, or when that is 404 the shards listed in `<base>/model.safetensors.index.json`.
 *
 * Memory is planned before the bulk is downloaded: each weight file's header is fetched first with an HTTP `Range`
 * request (its first 64 KiB; a second request for the rest of a longer header), the plan is computed from the headers
 * (`onPlan`) and a model that the device cannot hold fails with `E_DEVICE` (an `onPlan` that throws or aborts `signal`
 * stops it too) having fetched only those bytes. Then each weight file is downloaded whole, as a `Blob` (not one
 * `ArrayBuffer`, so no 2 GiB cap; the header's bytes come a second time), when its first tensor is read, and read tensor
 * by tensor. A server that ignores `Range` (status 200, the whole file) is read from that response, each file fetched
 * once, but then the files are downloaded before the plan. A failed request or download (HTTP status, dropped
 * connection, a file that changed between its header request and its download) is `E_IO` naming the URL, `E_ABORTED`
 * when `signal` fired.
 */
export async function loadModelFromUrl(
  dev: CalderaDevice,
  base: string,
  options: UrlLoadOptions = {},
): Promise<LoadedWebGpuModel> {
  checkDeviceArgument(dev, 'loadModelFromUrl');
  assertNonEmptyString(base, 'loadModelFromUrl', 'the base URL');
  options ??= {}; // from JavaScript: null options are none
  checkLoadOptions(dev, options, 'loadModelFromUrl');
  // the headers only (core's openModelUrl, shared with runtime-node): the plan comes before the bulk download
  // its fetch, signal and onDownload are openModelUrl's
  const opened = await openModelUrl(base, options);
  try {
    return await loadModelFromStore(
      dev,
      {
        config: opened.config,
        calderaMeta: opened.calderaMeta,
        calderaMetaFile: opened.calderaMetaFile,
        store: opened.store,
        label: base,
      },
      options,
    );
  } finally {
    await opened.store.close();
  }
}

/**
 * Load from in-memory parts: parsed `config.json`, `caldera.json` (or null) and `model.safetensors` bytes (an
 * `ArrayBuffer`, a byte view or a `Blob`).
 */
export async function loadModelFromBuffer(
  dev: CalderaDevice,
  parts: { config: unknown; calderaMeta: unknown; weights: ArrayBuffer | ArrayBufferView | Blob },
  options: LoadOptions = {},
): Promise<LoadedWebGpuModel> {
  checkDeviceArgument(dev, 'loadModelFromBuffer');
  assertObject(parts, 'loadModelFromBuffer', 'parts');
  options ??= {}; // from JavaScript: null options are none
  checkLoadOptions(dev, options, 'loadModelFromBuffer');
  // bytes or a Blob: a string would be opened as a file path (other inputs: E_VALUE from openSafetensors)
  if (typeof (parts.weights as unknown) === 'string')
    throw new CalderaError(
      'E_VALUE',
      'loadModelFromBuffer: weights must be the bytes of model.safetensors (an ArrayBuffer, a typed array or a ' +
        'Blob), got a string (to load from a folder, use loadModel)',
    );
  const store = await openSafetensors(parts.weights, 'model.safetensors');
  try {
    return await loadModelFromStore(
      dev,
      { config: parts.config, calderaMeta: parts.calderaMeta, store },
      options,
    );
  } finally {
    await store.close();
  }
}
