import {
  assertBooleanOptions,
  assertCalderaLayerShape,
  assertDeclaredBias,
  assertHeadPresent,
  declaredBias,
  assertNoCalderaTensorsWithoutMeta,
  assertCalderaLayersExist,
  assertNoStrayCalderaTensors,
  CalderaError,
  expectedCalderaTensors,
  linearShape,
  openSafetensorsDir,
  qkNormNames,
  readCheckpointMeta,
  type CalderaCheckpointMeta,
  type CalderaLayerMeta,
  type TensorStore,
  assertFloatStorage,
  checkDenseDtype,
} from '@caldera/core';
import { nodePath } from './node-builtins.js';
import { blockLinearNames, parseModelConfig, type ModelConfig } from './config.js';
import { checkPathArgument, readJsonFile } from './json-file.js';
import {
  CalderaLinear,
  DenseF16Linear,
  DenseLinear,
  footprintBytes,
  type LinearFootprint,
} from './linear.js';
import { heldDType, planMemory, type MemoryPlan } from './memory-plan.js';

/** The float dtypes a weight may be stored as (safetensors `F64`, `F32`, `F16`, `BF16`), in lower case. */
export type StoredFloatDType = 'f64' | 'f32' | 'f16' | 'bf16';

/** A float tensor's entry in the safetensors header, as {@link readModelLayout} checked it. */
export interface TensorLayout {
  name: string;
  /** Its stored dtype, in lower case. */
  dtype: StoredFloatDType;
  shape: number[];
  /** Bytes of its data in the file. */
  bytes: number;
}

/** One linear layer of a {@link ModelLayout}: dense (`weight`) or compressed (`caldera`), the other null. */
export type LinearLayout = {
  /** The layer's name without `.weight` (`model.layers.0.self_attn.q_proj`; see `blockLinearNames`). */
  name: string;
  outFeatures: number;
  inFeatures: number;
  /** The `.bias` tensor (Qwen2's q/k/v), or null. */
  bias: TensorLayout | null;
  /**
   * Bytes of the weight in the file: a dense weight's data, or the data of a compressed layer's tensors (codes, scales,
   * signs, fine-tuned factors), from the safetensors header.
   */
  bytes: number;
  /**
   * Bytes the layer holds resident once {@link loadModel} has loaded it with the layout's `dtype`: every array it keeps,
   * its f32 bias included, and its kernels' regions in the model's {@link KernelArenas} (`footprint`; the arenas'
   * fixed regions and page rounding are the plan's `parts.arenas`; with `kernelArenas` false each region is a memory of
   * its own, counted here whole, and `parts.arenas` is 0). A dense layer: its matrix–vector kernel's region,
   * W at 2 bytes a weight when kept as f16/bf16 bits, else 4 (f32; f64 is narrowed), and row buffers
   * ({@link DenseLinear.footprint}, {@link DenseF16Linear.footprint}). A CALDERA layer: its fused kernel's region
   * (Q's codes, L̂ and R̂ decoded to f32, signs, row buffers; with a decode pool, its workers' regions) and what it keeps
   * beside it (L and R as stored, the signs in f32), or the unfused layer's arrays ({@link CalderaLinear.footprint}) —
   * far more than `bytes` for a small layer, whose low-rank factors in f32 dominate.
   */
  memoryBytes: number;
  /** What `memoryBytes` counts: the layer's own arrays and its regions, in the order the loader places them. */
  footprint: LinearFootprint;
} & (
  | { /** The dense `.weight`. */ weight: TensorLayout; caldera: null }
  | { weight: null; /** The layer's `caldera.json` entry. */ caldera: CalderaLayerMeta }
);

/** What {@link readModelLayout} finds in a model directory. */
export interface ModelLayout {
  dir: string;
  config: ModelConfig;
  /** `caldera.json` of a compressed checkpoint, or null for a dense model. */
  calderaMeta: CalderaCheckpointMeta | null;
  /** `model.embed_tokens.weight`. */
  embed: TensorLayout;
  /**
   * The LM head: `lm_head.weight`, or the embedding's entry when `tie_word_embeddings` is set or the file has no
   * `lm_head.weight` (the embedding is then the head).
   */
  lmHead: TensorLayout;
  /** The linear layers, block after block, each block's in `blockLinearNames` order. */
  linears: LinearLayout[];
  /** `model.norm.weight`. */
  norm: TensorLayout;
  /**
   * The memory the model's weights will hold once loaded with the layout's `dtype`, computed from the headers (what
   * {@link LoadOptions.onPlan} receives): its `layers` are the linears' `memoryBytes`.
   */
  memory: MemoryPlan;
}

/** Options of {@link readModelLayout}. */
export interface ModelLayoutOptions {
  /** The {@link LoadOptions.dtype} that `memoryBytes` counts for (default `'auto'`, as `loadModel`'s). */
  dtype?: 'auto' | 'f32' | 'f16';
  /**
   * The threads of the {@link LoadOptions.decodePool} the model is loaded with (default 1, none): `memoryBytes` counts
   * the workers' memories of the CALDERA layers whose rows it splits.
   */
  decodeThreads?: number;
  /** The {@link LoadOptions.kernelArenas} that `memoryBytes` counts for (default true, as `loadModel`'s). */
  kernelArenas?: boolean;
}

/**
 * A float tensor's header entry: `E_MISSING`, `E_DTYPE` (not a float) or `E_SHAPE` (not `shape`) otherwise, the
 * missing and misshapen ones naming the model `dir`.
 */
async function floatTensor(
  store: TensorStore,
  dir: string,
  name: string,
  shape: readonly number[],
): Promise<TensorLayout> {
  if (!store.has(name)) throw new CalderaError('E_MISSING', `${dir}: tensor '${name}' is missing`);
  const info = await store.tensorInfo(name);
  assertFloatStorage(name, info.dtype, `${dir}: `);
  const dtype = info.dtype.toLowerCase();
  if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i]))
    throw new CalderaError(
      'E_SHAPE',
      `${dir}: tensor '${name}' has shape [${info.shape.join(', ')}], expected [${shape.join(', ')}]`,
    );
  return {
    name,
    dtype: dtype as StoredFloatDType,
    shape: [...info.shape],
    bytes: info.dataOffsets[1] - info.dataOffsets[0],
  };
}

/**
 * Check compressed layer `name`'s `caldera.json` shape against the config's and its tensors against the checkpoint
 * format (present, with the dtype and shape its codecs give; core's `expectedCalderaTensors`); errors name `dir`.
 * Returns the bytes of those tensors' data, from the safetensors header (the layer's size in the file: codes, scales,
 * signs, fine-tuned factors; `assertNoStrayCalderaTensors` has ruled out others).
 */
async function checkCalderaLayer(
  store: TensorStore,
  dir: string,
  name: string,
  meta: CalderaLayerMeta,
  [m, n]: [number, number],
): Promise<number> {
  assertCalderaLayerShape(name, meta, [m, n], `${dir}: `);
  let bytes = 0;
  for (const e of expectedCalderaTensors(name, meta)) {
    if (!store.has(e.name))
      throw new CalderaError('E_MISSING', `${dir}: checkpoint has no tensor '${e.name}'`);
    const t = await store.tensorInfo(e.name);
    const dtype = t.dtype.toLowerCase();
    if (dtype !== e.dtype || t.shape.join() !== e.shape.join())
      throw new CalderaError(
        'E_FORMAT',
        `${dir}: tensor '${e.name}' is ${dtype} [${t.shape.join(', ')}], expected ${e.dtype} [${e.shape.join(', ')}]`,
      );
    bytes += t.dataOffsets[1] - t.dataOffsets[0];
  }
  return bytes;
}

/** What {@link layoutFromStore} checks: a parsed config, `caldera.json` (or null), and the open weights. */
export interface LayoutSource {
  config: ModelConfig;
  /** `caldera.json` of a compressed checkpoint, or null for a dense model. */
  calderaMeta: CalderaCheckpointMeta | null;
  store: TensorStore;
  /** Where the model came from, for messages and {@link ModelLayout.dir}: a directory, a URL. */
  label: string;
  /** What `caldera.json` is called in messages (default `'caldera.json'`). */
  calderaMetaFile?: string;
}

/**
 * The structural checks of {@link readModelLayout} on an open tensor store (no file access: usable in a browser):
 * every tensor the model needs present, float, with the config's shape; compressed layers' tensors those of their
 * codecs. Reads headers only.
 */
export async function layoutFromStore(
  source: LayoutSource,
  options: ModelLayoutOptions = {},
): Promise<ModelLayout> {
  const { config, calderaMeta, store, label: dir } = source;
  // compressed layers' codes without the caldera.json that describes them: say so, rather than that the first
  // compressed layer's dense weight is missing
  if (!calderaMeta)
    assertNoCalderaTensorsWithoutMeta(
      store.names(),
      dir,
      source.calderaMetaFile ?? 'caldera.json',
      "copy the checkpoint's caldera.json back beside its safetensors",
    );
  if (calderaMeta) {
    assertCalderaLayersExist(calderaMeta, config.numLayers, dir, source.calderaMetaFile ?? 'caldera.json');
    // tensors the metadata does not describe (an edited rank or hadamard flag) would be ignored: other weights
    assertNoStrayCalderaTensors(calderaMeta, store.names(), dir, source.calderaMetaFile ?? 'caldera.json');
  }
  const { hiddenSize: d, vocabSize: V } = config;
  const missing = ['model.embed_tokens.weight', 'model.norm.weight'].filter((n) => !store.has(n));
  if (missing.length) {
    // the names under another prefix (a checkpoint saved from the inner model, or wrapped once more) say why
    const other = ['embed_tokens.weight', 'model.model.embed_tokens.weight'].find((n) => store.has(n));
    throw new CalderaError(
      'E_MISSING',
      `${dir}: missing tensors ${missing.join(', ')}` +
        (other ? ` (the file has '${other}': its tensor names need the prefix 'model.' exactly once)` : ''),
    );
  }
  const embed = await floatTensor(store, dir, 'model.embed_tokens.weight', [V, d]);
  assertHeadPresent(config, (t) => store.has(t), `${dir}: `);
  const lmHead = config.tieWordEmbeddings ? embed : await floatTensor(store, dir, 'lm_head.weight', [V, d]);
  const dtype = options.dtype ?? 'auto';
  const decodeThreads = options.decodeThreads ?? 1;
  if (!Number.isInteger(decodeThreads) || decodeThreads < 1 || decodeThreads > 256)
    throw new CalderaError(
      'E_VALUE',
      `decodeThreads must be an integer in [1, 256] (a decode pool's threads), got ${String(decodeThreads)}`,
    );
  const linears: LinearLayout[] = [];
  const inArenas = options.kernelArenas !== false;
  const held = (footprint: LinearFootprint) => ({
    footprint,
    memoryBytes: footprintBytes(footprint, inArenas),
  });
  for (let b = 0; b < config.numLayers; b++) {
    for (const { name, kind } of blockLinearNames(b)) {
      const shape = linearShape(config, kind);
      const [m, n] = shape;
      assertDeclaredBias(config, name, (t) => store.has(t), `${dir}: `);
      // a bias the config does not declare is not applied, as transformers builds no bias there (it applied one)
      const bias =
        declaredBias(config, kind) !== null ? await floatTensor(store, dir, `${name}.bias`, [m]) : null;
      const meta = calderaMeta?.layers?.[name];
      if (meta) {
        // its tensors' bytes in the file, as the safetensors header gives them: caldera.json's bitsPerWeight·m·n/8 is the
        // same figure where the file is ours, but a float (4.58… bits of a 768 × 256 layer made 112 652.00000000001
        // bytes, so 112 653) and only what the file says of itself
        const bytes = await checkCalderaLayer(store, dir, name, meta, shape);
        linears.push({
          name,
          outFeatures: m,
          inFeatures: n,
          bias,
          bytes,
          ...held(CalderaLinear.footprint(meta, bias !== null, decodeThreads)),
          weight: null,
          caldera: meta,
        });
      } else {
        const weight = await floatTensor(store, dir, `${name}.weight`, shape);
        const kept = heldDType(weight.dtype, dtype);
        linears.push({
          name,
          outFeatures: m,
          inFeatures: n,
          bias,
          bytes: weight.bytes,
          ...held((kept === 'f32' ? DenseLinear : DenseF16Linear).footprint(m, n, bias !== null)),
          weight,
          caldera: null,
        });
      }
    }
    for (const norm of ['input_layernorm', 'post_attention_layernorm'])
      await floatTensor(store, dir, `model.layers.${b}.${norm}.weight`, [d]);
    for (const name of qkNormNames(config, b)) await floatTensor(store, dir, name, [config.headDim]);
  }
  const norm = await floatTensor(store, dir, 'model.norm.weight', [d]);
  const memory = planMemory({
    config,
    embed: heldDType(embed.dtype, dtype),
    head: { dtype: heldDType(lmHead.dtype, dtype), tied: lmHead === embed },
    layers: linears.map((l) => ({
      name: l.name,
      kind: l.caldera ? 'caldera' : heldDType(l.weight.dtype, dtype),
      bytes: l.memoryBytes,
    })),
    // without arenas each region is a memory of its own, counted in its layer's bytes
    regions: inArenas ? linears.flatMap((l) => l.footprint.regions) : [],
  });
  return { dir, config, calderaMeta, embed, lmHead, linears, norm, memory };
}

/**
 * {@link readModelLayout} of `dir` with its weights left open: the caller reads the tensors from `store` and closes
 * it (closed here when the layout fails).
 */
export async function openModelLayout(
  dir: string,
  options: ModelLayoutOptions = {},
): Promise<{ layout: ModelLayout; store: TensorStore }> {
  const configFile = (await nodePath()).join(dir, 'config.json');
  const config = parseModelConfig(await readJsonFile(configFile), configFile);
  let calderaMeta: CalderaCheckpointMeta | null = null;
  try {
    calderaMeta = await readCheckpointMeta(dir);
  } catch (e) {
    if (!(e instanceof CalderaError && e.code === 'E_MISSING')) throw e;
  }
  const store = await openSafetensorsDir(dir);
  try {
    return { layout: await layoutFromStore({ config, calderaMeta, store, label: dir }, options), store };
  } catch (e) {
    await store.close().catch(() => undefined);
    throw e;
  }
}

/**
 * The layout of a Hugging Face Llama-family model directory or Caldera checkpoint, from `config.json`, `caldera.json`
 * and the safetensors headers alone: no tensor data is read, so a 7B model costs kilobytes, not its size in memory.
 * The structure is checked as {@link loadModel} checks it — which calls this first, so that a malformed model fails
 * before any weight is read — with the same `CalderaError`s: `config.json` parsed, `caldera.json` (if any) parsed, no
 * compressed layer's tensors without it (`E_FORMAT`), every tensor the model needs present (`E_MISSING`) with a float
 * dtype (`E_DTYPE`) and the config's shape (`E_SHAPE`), Qwen2's q/k/v biases present, each compressed layer's
 * `caldera.json` shape the config's (`E_SHAPE`) and its tensors those of its codecs (`E_MISSING`, `E_FORMAT`). The
 * values are not checked (finiteness: `loadModel` checks them as it reads them). A `dir` that is not a string is
 * `E_VALUE`; null `options` count as none.
 */
export async function readModelLayout(dir: string, options: ModelLayoutOptions = {}): Promise<ModelLayout> {
  checkPathArgument(dir, 'readModelLayout', 'the model directory');
  checkDenseDtype(options?.dtype, 'readModelLayout');
  assertBooleanOptions(options, 'readModelLayout', ['kernelArenas']);
  const { layout, store } = await openModelLayout(dir, options ?? {});
  await store.close();
  return layout;
}
