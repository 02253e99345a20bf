import { join } from 'node:path';
import {
  assertNoCalderaTensorsWithoutMeta,
  assertFinite,
  CalderaError,
  cast,
  f32ArrayToF16,
  isFloatDType,
  linearShape,
  openSafetensorsDir,
  readCheckpointMeta,
  throwIfAborted,
  type CalderaCheckpointMeta,
  type CalderaLayerMeta,
  type Tensor,
  type TensorStore,
} from '@caldera/core';
import type { Pool } from '@caldera/linalg';
import { fromCheckpointTensors } from '@caldera/lowrank';
import { blockLinearNames, parseModelConfig, type ModelConfig } from './config.js';
import { CalderaLinear, DenseF16Linear, DenseLinear, type Linear } from './linear.js';
import { checkPathArgument, readJsonFile } from './json-file.js';
import { LlamaModel, type BlockWeights } from './model.js';

/** A loaded model with where it came from. */
export interface LoadedModel {
  model: LlamaModel;
  config: ModelConfig;
  dir: string;
  /** `caldera.json` of a compressed checkpoint, or null for a dense model. */
  calderaMeta: CalderaCheckpointMeta | null;
}

async function f32(store: TensorStore, name: string, shape: readonly number[]): Promise<Tensor<'f32'>> {
  return (await checked(store, name, shape)).f32;
}

/** Read a tensor, check its shape and that every value is finite; returns it as stored and as f32. */
async function checked(
  store: TensorStore,
  name: string,
  shape: readonly number[],
): Promise<{ source: Tensor; f32: Tensor<'f32'> }> {
  if (!store.has(name)) throw new CalderaError('E_MISSING', `tensor '${name}' is missing`);
  const t = await store.readTensor(name);
  // an integer tensor would be cast to f32 code by code: numbers, but not the weights
  if (!isFloatDType(t.dtype))
    throw new CalderaError(
      'E_DTYPE',
      `tensor '${name}' is ${t.dtype}, expected a float dtype (f32, f16, bf16)`,
    );
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new CalderaError(
      'E_SHAPE',
      `tensor '${name}' has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`,
    );
  }
  const out = t.dtype === 'f32' ? (t as Tensor<'f32'>) : cast(t, 'f32');
  assertFinite(out, `tensor '${name}'`);
  return { source: t, f32: out };
}

/**
 * The tensors of compressed layer `name`, read after checking its `caldera.json` shape against the config's (each
 * tensor is checked against the format by `fromCheckpointTensors`).
 */
async function calderaTensors(
  store: TensorStore,
  name: string,
  meta: CalderaLayerMeta,
  shape: [number, number],
): Promise<Record<string, Tensor>> {
  if (meta.shape[0] !== shape[0] || meta.shape[1] !== shape[1])
    throw new CalderaError(
      'E_SHAPE',
      `caldera.json gives layer '${name}' shape [${meta.shape.join(', ')}], config.json implies [${shape.join(', ')}]`,
    );
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
  name: string,
  shape: [number, number],
  bias: Float32Array | null,
  dtype: 'auto' | 'f32' | 'f16',
): Promise<Linear> {
  const { source, f32: t } = await checked(store, name, shape);
  if (dtype === 'auto' && (source.dtype === 'f16' || source.dtype === 'bf16'))
    return new DenseF16Linear(source.data as Uint16Array, shape[0], shape[1], bias, source.dtype);
  if (dtype === 'f16') return new DenseF16Linear(f32ArrayToF16(t.data), shape[0], shape[1], bias);
  return new DenseLinear(t, bias);
}

/**
 * Load a Hugging Face Llama-family model directory (config.json + model.safetensors or a sharded index), or a Caldera
 * compressed checkpoint (the same plus caldera.json). Weights are read tensor by tensor and kept as stored (f32, or
 * f16/bf16 bits with `dtype` 'auto'; see {@link LoadOptions.dtype}) or as codes (CALDERA layers). Missing or malformed
 * tensors fail with a CalderaError naming them; a `dir` that is not a string (null, undefined) is `E_VALUE`, and null
 * `options` count as none. `signal` is checked before each tensor is read (`E_ABORTED`), `onProgress` called after
 * each block.
 */
export async function loadModel(dir: string, options: LoadOptions = {}): Promise<LoadedModel> {
  checkPathArgument(dir, 'loadModel', 'the model directory');
  options ??= {}; // from JavaScript: null options are none
  const { signal, onProgress } = options;
  throwIfAborted(signal, 'loading');
  const config = parseModelConfig(await readJsonFile(join(dir, 'config.json')), join(dir, 'config.json'));
  let calderaMeta: CalderaCheckpointMeta | null = null;
  try {
    calderaMeta = await readCheckpointMeta(dir);
  } catch (e) {
    if (!(e instanceof CalderaError && e.code === 'E_MISSING')) throw e;
  }
  throwIfAborted(signal, 'loading');
  // every tensor read goes through this view, which checks the signal first
  const opened = await openSafetensorsDir(dir);
  const store: TensorStore = {
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
  try {
    // compressed layers' codes without the caldera.json that describes them: say so, rather than that the first
    // compressed layer's dense weight is missing
    if (!calderaMeta)
      assertNoCalderaTensorsWithoutMeta(
        store.names(),
        dir,
        'caldera.json',
        "copy the checkpoint's caldera.json back beside its safetensors",
      );
    const { hiddenSize: d, vocabSize: V } = config;
    const missing = [];
    for (const n of ['model.embed_tokens.weight', 'model.norm.weight']) if (!store.has(n)) missing.push(n);
    if (missing.length) throw new CalderaError('E_MISSING', `${dir}: missing tensors ${missing.join(', ')}`);
    const embedT = await checked(store, 'model.embed_tokens.weight', [V, d]);
    const embed = embedT.f32;
    const headT =
      config.tieWordEmbeddings || !store.has('lm_head.weight')
        ? embedT
        : await checked(store, 'lm_head.weight', [V, d]);
    const lmHead = headT.f32;
    const dtype = options.dtype ?? 'auto';
    const headSource = headT.source;
    const head =
      dtype === 'auto' && headSource.dtype === 'bf16'
        ? new DenseF16Linear(headSource.data as Uint16Array, V, d, null, 'bf16')
        : dtype === 'f16' || (dtype === 'auto' && headSource.dtype === 'f16')
          ? new DenseF16Linear(f32ArrayToF16(lmHead.data), V, d)
          : undefined;
    const blocks: BlockWeights[] = [];
    for (let b = 0; b < config.numLayers; b++) {
      const lin: Linear[] = [];
      for (const { name } of blockLinearNames(b)) {
        const kind = name.slice(name.lastIndexOf('.') + 1);
        if (config.attentionBias && /(q|k|v)_proj$/.test(kind) && !store.has(`${name}.bias`))
          throw new CalderaError(
            'E_MISSING',
            `${dir}: tensor '${name}.bias' is missing (config has q/k/v biases, e.g. Qwen2)`,
          );
        const bias = store.has(`${name}.bias`)
          ? (await f32(store, `${name}.bias`, [linearShape(config, kind)[0]])).data
          : null;
        const meta = calderaMeta?.layers?.[name];
        if (meta) {
          const tensors = await calderaTensors(store, name, meta, linearShape(config, kind));
          lin.push(
            new CalderaLinear(
              fromCheckpointTensors(name, (n) => tensors[n], meta),
              bias,
            ),
          );
        } else {
          lin.push(await denseLinear(store, `${name}.weight`, linearShape(config, kind), bias, dtype));
        }
      }
      const [q, k, v, o, gate, up, down] = lin as [Linear, Linear, Linear, Linear, Linear, Linear, Linear];
      blocks.push({
        inputNorm: (await f32(store, `model.layers.${b}.input_layernorm.weight`, [d])).data,
        postAttnNorm: (await f32(store, `model.layers.${b}.post_attention_layernorm.weight`, [d])).data,
        q,
        k,
        v,
        o,
        gate,
        up,
        down,
      });
      onProgress?.({ block: b + 1, blocks: config.numLayers });
    }
    const norm = (await f32(store, 'model.norm.weight', [d])).data;
    return {
      model: new LlamaModel(
        config,
        { embed, blocks, norm, lmHead, ...(head ? { head } : {}) },
        options.pool ? { pool: options.pool } : {},
      ),
      config,
      dir,
      calderaMeta,
    };
  } finally {
    await opened.close();
  }
}
