import {
  assertFinite,
  cast,
  f32ArrayToF16,
  throwIfAborted,
  type CalderaCheckpointMeta,
  type Tensor,
  type TensorStore,
} from '@caldera/core';
import type { Pool } from '@caldera/linalg';
import { fromCheckpointTensors } from '@caldera/lowrank';
import { blockLinearNames, type ModelConfig } from './config.js';
import { CalderaLinear, DenseF16Linear, DenseLinear, type Linear } from './linear.js';
import { checkPathArgument } from './json-file.js';
import { openModelLayout, type ModelLayout, type TensorLayout } from './layout.js';
import { LlamaModel, type BlockWeights } from './model.js';

/** A loaded model with where it came from. */
export interface LoadedModel {
  model: LlamaModel;
  config: ModelConfig;
  dir: string;
  /** `caldera.json` of a compressed checkpoint, or null for a dense model. */
  calderaMeta: CalderaCheckpointMeta | null;
}

/**
 * Read a float tensor whose header {@link readModelLayout} checked, and check that every value is finite; returns it
 * as stored and as f32.
 */
async function readFloat(store: TensorStore, name: string): Promise<{ source: Tensor; f32: Tensor<'f32'> }> {
  const source = await store.readTensor(name);
  const out = source.dtype === 'f32' ? (source as Tensor<'f32'>) : cast(source, 'f32');
  assertFinite(out, `tensor '${name}'`);
  return { source, f32: out };
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
   * everything to f32; `'f16'` rounds everything to f16 (lossy for bf16 and f32 checkpoints). Embeddings and norms are
   * f32 in every case.
   */
  dtype?: 'auto' | 'f32' | 'f16';
  /** Worker pool for the model's batch products ({@link LlamaModelOptions.pool}). Default: none. */
  pool?: Pool;
  /**
   * Called after each transformer block's tensors are read (as runtime-webgpu's loaders): `block` counts from 1 to
   * `blocks` (`config.json`'s `num_hidden_layers`), so the last call has `block === blocks`.
   */
  onProgress?: (e: { block: number; blocks: number }) => void;
  /** Abort between tensors: loading then fails with `E_ABORTED` (the signal's reason as its cause). */
  signal?: AbortSignal;
}

async function denseLinear(
  store: TensorStore,
  weight: TensorLayout,
  [m, n]: [number, number],
  bias: Float32Array | null,
  dtype: 'auto' | 'f32' | 'f16',
): Promise<Linear> {
  const { source, f32: t } = await readFloat(store, weight.name);
  if (dtype === 'auto' && (source.dtype === 'f16' || source.dtype === 'bf16'))
    return new DenseF16Linear(source.data as Uint16Array, m, n, bias, source.dtype);
  if (dtype === 'f16') return new DenseF16Linear(f32ArrayToF16(t.data), m, n, bias);
  return new DenseLinear(t, bias);
}

/**
 * Read block `b`'s weights (its seven linears, biases and two norms) from `store` as {@link loadModel} holds them
 * (see {@link LoadOptions.dtype}), values checked finite. The building block of the loaders, and of callers that
 * hold one block at a time.
 */
export async function readBlockWeights(
  store: TensorStore,
  layout: ModelLayout,
  b: number,
  dtype: 'auto' | 'f32' | 'f16' = 'auto',
): Promise<BlockWeights> {
  const perBlock = blockLinearNames(0).length;
  const lin: Linear[] = [];
  for (const l of layout.linears.slice(b * perBlock, (b + 1) * perBlock)) {
    const bias = l.bias ? (await readFloat(store, l.bias.name)).f32.data : null;
    const shape: [number, number] = [l.outFeatures, l.inFeatures];
    if (l.caldera) {
      const tensors = await calderaTensors(store, l.name);
      lin.push(
        new CalderaLinear(
          fromCheckpointTensors(l.name, (n) => tensors[n], l.caldera),
          bias,
        ),
      );
    } else {
      lin.push(await denseLinear(store, l.weight, shape, bias, dtype));
    }
  }
  const [q, k, v, o, gate, up, down] = lin as [Linear, Linear, Linear, Linear, Linear, Linear, Linear];
  const norm = async (name: string) => (await readFloat(store, `model.layers.${b}.${name}.weight`)).f32.data;
  return {
    inputNorm: await norm('input_layernorm'),
    postAttnNorm: await norm('post_attention_layernorm'),
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
  const store = abortableStore(opened, signal);
  const { hiddenSize: d, vocabSize: V } = config;
  const embedT = await readFloat(store, layout.embed.name);
  const embed = embedT.f32;
  const headT = layout.lmHead === layout.embed ? embedT : await readFloat(store, layout.lmHead.name);
  const lmHead = headT.f32;
  const headSource = headT.source;
  const head =
    dtype === 'auto' && headSource.dtype === 'bf16'
      ? new DenseF16Linear(headSource.data as Uint16Array, V, d, null, 'bf16')
      : dtype === 'f16' || (dtype === 'auto' && headSource.dtype === 'f16')
        ? new DenseF16Linear(f32ArrayToF16(lmHead.data), V, d)
        : undefined;
  const blocks: BlockWeights[] = [];
  for (let b = 0; b < config.numLayers; b++) {
    blocks.push(await readBlockWeights(store, layout, b, dtype));
    onProgress?.({ block: b + 1, blocks: config.numLayers });
  }
  const norm = (await readFloat(store, layout.norm.name)).f32.data;
  return new LlamaModel(
    config,
    { embed, blocks, norm, lmHead, ...(head ? { head } : {}) },
    options.pool ? { pool: options.pool } : {},
  );
}

/**
 * Load a Hugging Face Llama-family model directory (config.json + model.safetensors or a sharded index), or a Caldera
 * compressed checkpoint (the same plus caldera.json). The structure is checked first from the headers
 * ({@link readModelLayout}: a malformed model fails before any weight is read); then weights are read tensor by
 * tensor, their values checked (finite), and kept as stored (f32, or f16/bf16 bits with `dtype` 'auto'; see
 * {@link LoadOptions.dtype}) or as codes (CALDERA layers). Missing or malformed tensors fail with a CalderaError naming
 * them; a `dir` that is not a string (null, undefined) is `E_VALUE`, and null `options` count as none. `signal` is
 * checked before each tensor is read (`E_ABORTED`), `onProgress` called after each block.
 */
export async function loadModel(dir: string, options: LoadOptions = {}): Promise<LoadedModel> {
  checkPathArgument(dir, 'loadModel', 'the model directory');
  options ??= {}; // from JavaScript: null options are none
  throwIfAborted(options.signal, 'loading');
  const { layout, store } = await openModelLayout(dir, { dtype: options.dtype ?? 'auto' });
  try {
    const model = await loadFromLayout(layout, store, options);
    return { model, config: layout.config, dir, calderaMeta: layout.calderaMeta };
  } finally {
    await store.close();
  }
}
