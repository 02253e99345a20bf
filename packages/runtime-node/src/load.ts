import {
  assertBooleanOptions,
  assertCallbacks,
  assertNonEmptyString,
  assertNotAbortSignal,
  assertObject,
  assertTensorStore,
  openModelUrl,
  parseCalderaMeta,
  throwIfAborted,
  type CalderaCheckpointMeta,
  type ModelUrlOptions,
  type Tensor,
  type TensorStore,
  checkDenseDtype,
  hasQkNorm,
} from '@caldera/core';
import type { Pool } from '@caldera/linalg';
import { fromCheckpointTensors } from '@caldera/lowrank';
import { blockLinearNames, parseModelConfig, type ModelConfig } from './config.js';
import { CalderaLinear, DenseF16Linear, DenseLinear, type Linear } from './linear.js';
import { checkPathArgument } from './json-file.js';
import { embeddingAndHead, readFloat, readHeld } from './held.js';
import {
  layoutFromStore,
  openModelLayout,
  type ModelLayout,
  type ModelLayoutOptions,
  type TensorLayout,
} from './layout.js';
import type { DecodePool } from './kernels/decode-pool.js';
import { KernelArenas } from './kernels/kernel-arenas.js';
import { headSplits } from './kernels/row-split.js';
import { LlamaModel, type BlockWeights } from './model.js';
import type { MemoryPlan } from './memory-plan.js';

/** A loaded model with where it came from. */
export interface LoadedModel {
  model: LlamaModel;
  config: ModelConfig;
  /**
   * Where the model came from, as messages name it: the directory ({@link loadModel}), the base URL
   * ({@link loadModelFromUrl}) or the source's `label` ({@link loadModelFromStore}; `'the checkpoint'` without one).
   * Not necessarily a path: only the directory loaders give one.
   */
  dir: string;
  /** `caldera.json` of a compressed checkpoint, or null for a dense model. */
  calderaMeta: CalderaCheckpointMeta | null;
}

/** The tensors of compressed layer `name` (checked against the format again, and their values, by `fromCheckpointTensors`). */
async function calderaTensors(store: TensorStore, name: string): Promise<Record<string, Tensor>> {
  const tensors: Record<string, Tensor> = {};
  for (const t of store.names()) if (t.startsWith(`${name}.caldera.`)) tensors[t] = await store.readTensor(t);
  return tensors;
}

/** Options of {@link loadModel}. */
export interface LoadOptions {
  /**
   * Storage of dense linear weights (LM head included): `'auto'` (default) keeps f16 and bf16 checkpoints' weights as
   * they are stored, 16 bits each ({@link DenseF16Linear} with `format` 'f16' or 'bf16': half the memory of f32, the
   * same values — bf16 widens to f32 exactly, so outputs equal those of `'f32'`), and f32 ones as f32; `'f32'` widens
   * everything to f32; `'f16'` rounds everything to f16 (lossy for bf16 and f32 checkpoints; a value beyond f16's range
   * is `E_VALUE`). The embedding and the LM head follow the same rule (a tied 16-bit pair is held once, as the head's
   * bits); norms and biases are f32 in every case. Any other value is `E_VALUE`.
   */
  dtype?: 'auto' | 'f32' | 'f16';
  /** Worker pool for the model's batch products ({@link LlamaModelOptions.pool}). Default: none. */
  pool?: Pool;
  /**
   * Threads for single-token decode ({@link createDecodePool}): the single-row products of every linear layer of at
   * least 2¹⁸ weights are split over them (CALDERA layers: {@link CalderaLinearOptions.decodePool}; dense ones:
   * {@link DenseLinearOptions.decodePool}), the LM head's when the blocks' MLP layers reach that size too; the outputs
   * are the same to the bit, and the memory plan counts the workers' memories. The caller owns the pool and disposes of it after the model. Default: none (decode
   * on the calling thread).
   */
  decodePool?: DecodePool;
  /**
   * Called after each transformer block's tensors are read (as runtime-webgpu's loaders): `block` counts from 1 to
   * `blocks` (`config.json`'s `num_hidden_layers`), so the last call has `block === blocks`.
   */
  onProgress?: (e: { block: number; blocks: number }) => void;
  /**
   * Called once with the memory plan before any weight is read (as runtime-webgpu's loaders): the bytes the loaded
   * model's weights will hold, in total and per part ({@link MemoryPlan}), computed from `config.json`, `caldera.json`
   * and the safetensors headers after the structure is checked ({@link loadModelFromUrl}: before any tensor data is
   * downloaded). An error it throws stops loading and is rethrown; an abort of `signal` it makes stops loading with
   * `E_ABORTED`: either way no weight has been read or allocated — a caller's own memory budget can refuse a model.
   */
  onPlan?: (plan: MemoryPlan) => void;
  /** Abort between tensors: loading then fails with `E_ABORTED` (the signal's reason as its cause). */
  signal?: AbortSignal;
  /**
   * Keep the block layers' kernels in one model's {@link KernelArenas} (default true): a few WebAssembly memories for
   * the whole model, which a browser needs for more than about 100 layers (it holds about 120 memories). false: each
   * layer's kernels in memories of their own, so that a layer replaced later frees its memory at once — what
   * compressing a loaded model in place (`ModelRunnerAdapter.replaceLinear`) wants; an arena frees its memory only
   * with its last layer. The memory plan counts what is chosen.
   */
  kernelArenas?: boolean;
}

async function denseLinear(
  store: TensorStore,
  weight: TensorLayout,
  [m, n]: [number, number],
  bias: Float32Array | null,
  dtype: 'auto' | 'f32' | 'f16',
  options: { decodePool?: DecodePool; arenas?: KernelArenas },
): Promise<Linear> {
  const t = await readHeld(store, weight.name, dtype);
  return t.dtype === 'f32'
    ? new DenseLinear(t, bias, options)
    : new DenseF16Linear(t.data, m, n, bias, t.dtype, options);
}

/**
 * Read block `b`'s weights (its seven linears, biases and two norms, four with Qwen3's query and key norms) from `store` as {@link loadModel} holds them
 * (see {@link LoadOptions.dtype}), values checked finite. The building block of the loaders, and of callers that
 * hold one block at a time. `arenas`: the model's kernel memories (the loaders' are planned from the layout's
 * footprints); without them each layer's kernels have memories of their own.
 */
export async function readBlockWeights(
  store: TensorStore,
  layout: ModelLayout,
  b: number,
  dtype: 'auto' | 'f32' | 'f16' = 'auto',
  decodePool?: DecodePool,
  arenas?: KernelArenas,
): Promise<BlockWeights> {
  const options = { ...(decodePool ? { decodePool } : {}), ...(arenas ? { arenas } : {}) };
  const perBlock = blockLinearNames(0).length;
  const lin: Linear[] = [];
  for (const l of layout.linears.slice(b * perBlock, (b + 1) * perBlock)) {
    const bias = l.bias ? (await readFloat(store, l.bias.name)).data : null;
    const shape: [number, number] = [l.outFeatures, l.inFeatures];
    if (l.caldera) {
      const tensors = await calderaTensors(store, l.name);
      lin.push(
        new CalderaLinear(
          fromCheckpointTensors(l.name, (n) => tensors[n], l.caldera),
          bias,
          options,
        ),
      );
    } else {
      lin.push(await denseLinear(store, l.weight, shape, bias, dtype, options));
    }
  }
  const [q, k, v, o, gate, up, down] = lin as [Linear, Linear, Linear, Linear, Linear, Linear, Linear];
  const norm = async (name: string) => (await readFloat(store, `model.layers.${b}.${name}.weight`)).data;
  const qkNorm = hasQkNorm(layout.config)
    ? { qNorm: await norm('self_attn.q_norm'), kNorm: await norm('self_attn.k_norm') }
    : {};
  return {
    inputNorm: await norm('input_layernorm'),
    postAttnNorm: await norm('post_attention_layernorm'),
    ...qkNorm,
    q,
    k,
    v,
    o,
    gate,
    up,
    down,
  };
}

/** `store` seen through a check of `signal` before each read (`E_ABORTED`). */
function abortableStore(opened: TensorStore, signal: AbortSignal | undefined): TensorStore {
  return {
    metadata: opened.metadata,
    names: () => opened.names(),
    has: (name) => opened.has(name),
    tensorInfo: (name) => opened.tensorInfo(name),
    readTensor: async (name) => {
      throwIfAborted(signal, 'loading');
      return opened.readTensor(name);
    },
    readRaw: async (name) => {
      throwIfAborted(signal, 'loading');
      return opened.readRaw(name);
    },
    close: () => opened.close(),
  };
}

/** What the layout's memory plan counts for `options`: the dense dtype and the decode pool's threads. */
const layoutOptions = (options: LoadOptions): ModelLayoutOptions => ({
  dtype: options.dtype ?? 'auto',
  decodeThreads: options.decodePool?.threads ?? 1,
  kernelArenas: options.kernelArenas !== false,
});

/** Build the model of a checked `layout` from `opened` (not closed here). */
async function loadFromLayout(
  layout: ModelLayout,
  opened: TensorStore,
  options: LoadOptions,
): Promise<LlamaModel> {
  const { signal, onProgress } = options;
  const dtype = options.dtype ?? 'auto';
  const { config } = layout;
  throwIfAborted(signal, 'loading');
  options.onPlan?.(layout.memory);
  // an onPlan that decided against this model aborts before any tensor is read
  throwIfAborted(signal, 'loading');
  const store = abortableStore(opened, signal);
  const { hiddenSize: d, vocabSize: V } = config;
  const embed = await readHeld(store, layout.embed.name, dtype);
  const heldHead = layout.lmHead === layout.embed ? embed : await readHeld(store, layout.lmHead.name, dtype);
  const embedding = embeddingAndHead(
    embed,
    heldHead,
    V,
    d,
    headSplits(config) ? options.decodePool : undefined,
  );
  // every layer's kernels in a few memories, sized by the plan
  const arenas =
    options.kernelArenas === false
      ? undefined
      : new KernelArenas({
          threads: options.decodePool?.threads ?? 1,
          planned: layout.linears.flatMap((l) => l.footprint.regions),
        });
  const blocks: BlockWeights[] = [];
  for (let b = 0; b < config.numLayers; b++) {
    blocks.push(await readBlockWeights(store, layout, b, dtype, options.decodePool, arenas));
    onProgress?.({ block: b + 1, blocks: config.numLayers });
  }
  const norm = (await readFloat(store, layout.norm.name)).data;
  return new LlamaModel(config, { ...embedding, blocks, norm }, options.pool ? { pool: options.pool } : {});
}

/**
 * The loaders' option checks, before anything is read: a bare `AbortSignal` where the options go, a `dtype` outside
 * its values, a callback (`onProgress`, `onPlan` and the `extra` ones) that is not a function or a `kernelArenas` that
 * is not a boolean is `E_VALUE` naming `fn`; `E_ABORTED` when the signal has fired already.
 */
function checkLoadOptions(options: LoadOptions, fn: string, extra: readonly string[] = []): void {
  assertNotAbortSignal(options, fn); // a positional signal: refused, not ignored
  checkDenseDtype(options.dtype, fn);
  assertCallbacks(options, fn, ['onProgress', 'onPlan', ...extra]);
  assertBooleanOptions(options, fn, ['kernelArenas']);
  throwIfAborted(options.signal, 'loading');
}

/**
 * Load a Hugging Face Llama-family model directory (config.json + model.safetensors or a sharded index), or a Caldera
 * compressed checkpoint (the same plus caldera.json). The structure is checked first from the headers
 * ({@link readModelLayout}: a malformed model fails before any weight is read); then weights are read tensor by
 * tensor, their values checked (finite), and kept as stored (f32, or f16/bf16 bits with `dtype` 'auto'; see
 * {@link LoadOptions.dtype}) or as codes (CALDERA layers). Missing or malformed tensors fail with a CalderaError naming
 * them; a `dir` that is not a string (null, undefined) is `E_VALUE`, and null `options` count as none. `signal` is
 * checked before each tensor is read (`E_ABORTED`), `onPlan` called once before the first, `onProgress` after each
 * block.
 */
export async function loadModel(dir: string, options: LoadOptions = {}): Promise<LoadedModel> {
  checkPathArgument(dir, 'loadModel', 'the model directory');
  options ??= {}; // from JavaScript: null options are none
  checkLoadOptions(options, 'loadModel');
  const { layout, store } = await openModelLayout(dir, layoutOptions(options));
  try {
    const model = await loadFromLayout(layout, store, options);
    return { model, config: layout.config, dir, calderaMeta: layout.calderaMeta };
  } finally {
    await store.close();
  }
}

/** What {@link loadModelFromStore} loads: the parsed JSON files of a model and its open weights. */
export interface ModelStoreSource {
  /** The parsed `config.json` (checked by `parseModelConfig`). */
  config: unknown;
  /** The parsed `caldera.json` of a compressed checkpoint (checked by core's `parseCalderaMeta`), or null: dense. */
  calderaMeta: unknown;
  /** The weights: an open safetensors file or sharded store (core's `openSafetensors`, `openModelUrl`, …). */
  store: TensorStore;
  /** What `caldera.json` is called in messages (default `<label>/caldera.json`, or `caldera.json`). */
  calderaMetaFile?: string;
  /** Where the model came from, for messages and {@link LoadedModel.dir} (a URL, a name; default `'the checkpoint'`). */
  label?: string;
}

/** `file` beside `label` (a directory or URL) for messages; `file` alone without a label. */
const beside = (label: string | undefined, file: string): string =>
  label === undefined ? file : label.endsWith('/') ? label + file : `${label}/${file}`;

/**
 * Load a model from an open tensor store plus its parsed `config.json` and `caldera.json` (null or undefined for a
 * dense model): no file system, so it runs in a browser or a Web Worker as well as in Node. The building block of
 * {@link loadModel} (a directory) and {@link loadModelFromUrl} (fetch), with the same checks: the config parsed
 * (`E_FORMAT` naming `<label>/config.json`), `caldera.json` validated (`E_FORMAT` listing every problem, naming
 * `calderaMetaFile`), the structure checked from the headers before any weight is read (as {@link readModelLayout}),
 * then the weights read tensor by tensor, values checked. `source` or `source.store` that is not an object, or a
 * `label` that is not a non-empty string, is `E_VALUE`; null `options` count as none. The store is not closed here.
 * The model's {@link LoadedModel.dir} is the label.
 */
export async function loadModelFromStore(
  source: ModelStoreSource,
  options: LoadOptions = {},
): Promise<LoadedModel> {
  assertObject(source, 'loadModelFromStore', 'source');
  assertTensorStore(source.store, 'loadModelFromStore', 'source.store');
  if (source.label !== undefined) assertNonEmptyString(source.label, 'loadModelFromStore', 'source.label');
  options ??= {}; // from JavaScript: null options are none
  checkLoadOptions(options, 'loadModelFromStore');
  const { label } = source;
  const config = parseModelConfig(source.config, beside(label, 'config.json'));
  const calderaMetaFile = source.calderaMetaFile ?? beside(label, 'caldera.json');
  // null or undefined: a dense model
  const calderaMeta =
    source.calderaMeta == null ? null : parseCalderaMeta(source.calderaMeta, calderaMetaFile);
  const dir = label ?? 'the checkpoint';
  const layout = await layoutFromStore(
    { config, calderaMeta, store: source.store, label: dir, calderaMetaFile },
    layoutOptions(options),
  );
  const model = await loadFromLayout(layout, source.store, options);
  return { model, config, dir, calderaMeta };
}

/** Options of {@link loadModelFromUrl}: the loaders' and core's `openModelUrl`'s (`fetch`, `onDownload`). */
export interface UrlLoadOptions extends LoadOptions, Pick<ModelUrlOptions, 'fetch' | 'onDownload'> {}

/**
 * Load a model served over HTTP (in a browser, a Web Worker or Node): `<base>/config.json`, optional
 * `<base>/caldera.json` (a 404 means dense) and `<base>/model.safetensors`, or the shards of
 * `<base>/model.safetensors.index.json` — fetched by core's `openModelUrl` (headers first with HTTP `Range`, the
 * structure checked from them before the bulk of each file is downloaded, as a `Blob`, on its first tensor read), then
 * loaded by {@link loadModelFromStore}. Failed requests are `E_IO` naming the URL, `E_ABORTED` when `signal` fired; a
 * `base` that is not a non-empty string is `E_VALUE`. {@link LoadedModel.dir} is the base URL, ending with `/`.
 */
export async function loadModelFromUrl(base: string, options: UrlLoadOptions = {}): Promise<LoadedModel> {
  assertNonEmptyString(base, 'loadModelFromUrl', 'the base URL');
  options ??= {}; // from JavaScript: null options are none
  checkLoadOptions(options, 'loadModelFromUrl', ['onDownload']);
  // its fetch, signal and onDownload are openModelUrl's
  const opened = await openModelUrl(base, options);
  try {
    return await loadModelFromStore(
      {
        config: opened.config,
        calderaMeta: opened.calderaMeta,
        calderaMetaFile: opened.calderaMetaFile,
        store: opened.store,
        label: opened.root,
      },
      options,
    );
  } finally {
    await opened.store.close();
  }
}
