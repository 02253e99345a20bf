import {
  assertNoCalderaTensorsWithoutMeta,
  blockLinearNames,
  CalderaError,
  cast,
  f32ArrayToF16,
  linearShape,
  openSafetensors,
  openSafetensorsDir,
  parseModelConfig,
  parseSafetensorsIndex,
  ShardedSafetensorsReader,
  parseCalderaMeta,
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
import { checkDeviceArgument, checkObjectArgument, checkStringArgument } from './args.js';
import type { GpuMatrix } from './kernels/index.js';
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
  contextLengthOf,
  WebGpuModel,
  type GpuBlockWeights,
  type WebGpuModelOptions,
} from './model.js';

/** Options of the loaders. */
export interface LoadOptions extends WebGpuModelOptions {
  /**
   * Storage of dense weights (embedding, LM head, uncompressed linears): `'auto'` (default) keeps f16 tensors as f16
   * (two per u32 on the GPU) and everything else as f32; `'f16'` / `'f32'` force one.
   */
  dtype?: 'auto' | 'f16' | 'f32';
  /** Called with the memory plan before anything is uploaded. */
  onPlan?: (plan: MemoryPlan) => void;
  /** Called after each block is uploaded. */
  onProgress?: (e: { block: number; blocks: number }) => void;
  /** Abort between tensors. */
  signal?: AbortSignal;
}

/** A model loaded on the GPU with its provenance. */
export interface LoadedWebGpuModel {
  model: WebGpuModel;
  config: ModelConfig;
  /** `caldera.json` (validated), or null for a dense model. */
  calderaMeta: CalderaCheckpointMeta | null;
  /** Bits per weight of the seven linear layers of every block as stored on the GPU (16 for a dense f16 model). */
  linearBitsPerWeight: number;
}

async function read(store: TensorStore, name: string, shape: readonly number[]): Promise<Tensor> {
  if (!store.has(name)) throw new CalderaError('E_MISSING', `tensor '${name}' is missing`);
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

function denseData(t: Tensor, dtype: 'auto' | 'f16' | 'f32'): Float32Array | Uint16Array {
  if (t.dtype === 'f16' && dtype !== 'f32') return t.data as Uint16Array;
  const f = (t.dtype === 'f32' ? t : cast(t, 'f32')).data as Float32Array;
  return dtype === 'f16' ? f32ArrayToF16(f) : f;
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
 * buffer exceeds the device's storage binding.
 */
export async function planMemory(
  config: ModelConfig,
  calderaMeta: CalderaCheckpointMeta | null,
  store: TensorStore,
  options: { contextLength?: number; prefillChunk?: number; dtype?: 'auto' | 'f16' | 'f32' } = {},
): Promise<MemoryPlan> {
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
    const f16 = dtype === 'f16' || (dtype === 'auto' && info.dtype === 'F16');
    add(f16 ? rows * Math.ceil(cols / 2) * 4 : rows * cols * 4, name);
  };
  const { hiddenSize: d, vocabSize: V, numKvHeads: KV, headDim: hd, numHeads: H } = config;
  await dense('model.embed_tokens.weight');
  if (!config.tieWordEmbeddings && store.has('lm_head.weight')) await dense('lm_head.weight');
  add(d * 4, 'model.norm.weight');
  for (let b = 0; b < config.numLayers; b++) {
    add(d * 4, `model.layers.${b}.input_layernorm.weight`);
    add(d * 4, `model.layers.${b}.post_attention_layernorm.weight`);
    for (const { name } of blockLinearNames(b)) {
      const meta = calderaMeta?.layers?.[name];
      if (store.has(`${name}.bias`))
        add((await store.tensorInfo(`${name}.bias`)).shape[0]! * 4, `${name}.bias`);
      if (!meta) {
        await dense(`${name}.weight`);
        continue;
      }
      const [mp, np] = meta.padded;
      // bytes of `groups` packed groups of 8 in a codec: u16 codes, plus a u16 (rvq4) or u8 (rvq3) second plane
      const plane2 = (codec: string, groups: number) =>
        codec === 'e8p12' ? 0 : codec.endsWith('rvq3') ? groups : 2 * groups;
      add((mp * np) / 4, `${name}.caldera.Q`);
      if (meta.codecs.Q !== 'e8p12') add(plane2(meta.codecs.Q, (mp * np) / 8), `${name}.Q_resid`);
      // as GpuCalderaLinear uploads them: lattice-coded L̂, R̂ packed (L̂'s planes in one buffer), dense factors
      // and the LoRA pair as f32
      const kf = meta.ftRank ?? 0; // a layer without ftRank has no LoRA pair, as @caldera/lowrank reads it
      const kq = meta.rank - kf;
      const lattice = kq > 0 && meta.codecs.L !== 'f16' && meta.codecs.R !== 'f16';
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
  source: { config: unknown; calderaMeta: unknown; calderaMetaFile?: string; store: TensorStore },
  options: LoadOptions = {},
): Promise<LoadedWebGpuModel> {
  checkDeviceArgument(dev, 'loadModelFromStore');
  checkObjectArgument(source, 'loadModelFromStore', 'source');
  checkObjectArgument(source.store, 'loadModelFromStore', 'source.store');
  options ??= {}; // from JavaScript: null options are none
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
  const dtype = options.dtype ?? 'auto';
  const { hiddenSize: d, vocabSize: V } = config;
  const plan = await planMemory(config, calderaMeta, store, options);
  options.onPlan?.(plan);
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
  const matrix = (data: Float32Array | Uint16Array, rows: number, cols: number, label: string): GpuMatrix => {
    const m = uploadMatrix(dev, data, rows, cols, label);
    created.push({ dispose: () => m.buffer.destroy() });
    return m;
  };
  try {
    const embedT = await read(store, 'model.embed_tokens.weight', [V, d]);
    const embed = matrix(denseData(embedT, dtype), V, d, 'embed_tokens');
    const head =
      config.tieWordEmbeddings || !store.has('lm_head.weight')
        ? embed
        : matrix(denseData(await read(store, 'lm_head.weight', [V, d]), dtype), V, d, 'lm_head');
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
      for (const { name, input: reads } of blockLinearNames(b)) {
        if (options.signal?.aborted)
          throw new CalderaError('E_ABORTED', 'loading was aborted', { cause: options.signal.reason });
        checkDeviceAlive(dev, 'loading a model');
        if (reads !== input) upload();
        input = reads;
        const kind = name.slice(name.lastIndexOf('.') + 1);
        const [m, n] = linearShape(config, kind);
        if (config.attentionBias && /(q|k|v)_proj$/.test(kind) && !store.has(`${name}.bias`))
          throw new CalderaError('E_MISSING', `tensor '${name}.bias' is missing (config has q/k/v biases)`);
        const bias = store.has(`${name}.bias`) ? await vector(store, `${name}.bias`, m) : null;
        const meta = calderaMeta?.layers?.[name];
        weightsNum += m * n;
        if (meta) {
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
          const data = denseData(await read(store, `${name}.weight`, [m, n]), dtype);
          dense.push({ at: lin.length, layer: { data, rows: m, cols: n, bias, label: name } });
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
    return { model, config, calderaMeta, linearBitsPerWeight: weightsNum ? bitsNum / weightsNum : 0 };
  } catch (e) {
    for (const c of created) c.dispose();
    throw e;
  }
}

type Fs = { readFile(p: string, enc: 'utf8'): Promise<string> };
const nodeImport = (name: string) => import(/* @vite-ignore */ /* webpackIgnore: true */ `node:${name}`);

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
  checkStringArgument(dir, 'loadModel', 'the model directory');
  options ??= {}; // from JavaScript: null options are none
  const fs = (await nodeImport('fs/promises')) as Fs;
  const json = async (file: string, optional: boolean): Promise<unknown> => {
    let text: string;
    try {
      text = await fs.readFile(`${dir}/${file}`, 'utf8');
    } catch (e) {
      if (optional) return null;
      throw new CalderaError('E_IO', `cannot read ${dir}/${file}: ${(e as Error).message}`, { cause: e });
    }
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new CalderaError('E_FORMAT', `${dir}/${file} is not valid JSON: ${(e as Error).message}`, {
        cause: e,
      });
    }
  };
  const config = await json('config.json', false);
  const calderaMeta = await json('caldera.json', true);
  const store = await openSafetensorsDir(dir);
  try {
    return await loadModelFromStore(
      dev,
      { config, calderaMeta, calderaMetaFile: `${dir}/caldera.json`, store },
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
   * length counts the encoded bytes).
   */
  onDownload?: (e: { file: string; bytes: number; total: number | null }) => void;
}

/**
 * The body of `r` as a `Blob`, reporting bytes as they arrive: each chunk passes once through a counting stream on its
 * way, unchanged, to `Response.blob()`; nothing is kept or copied in JavaScript.
 */
async function blobWithProgress(
  r: Response,
  file: string,
  onDownload: UrlLoadOptions['onDownload'],
): Promise<Blob> {
  if (!onDownload || !r.body) return r.blob();
  const length = Number(r.headers.get('content-length'));
  // with a Content-Encoding (gzip, br) the length counts the encoded bytes, the stream gives the decoded ones
  const encoding = r.headers.get('content-encoding');
  const encoded = encoding !== null && encoding.trim().toLowerCase() !== 'identity';
  const total = Number.isFinite(length) && length > 0 && !encoded ? length : null;
  let bytes = 0;
  onDownload({ file, bytes, total });
  const counted = r.body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        bytes += chunk.byteLength;
        onDownload({ file, bytes, total });
        controller.enqueue(chunk);
      },
    }),
  );
  return new Response(counted).blob();
}

/** The JSON body of `r`, or `E_FORMAT` naming `url` when it is not valid JSON. */
async function responseJson(r: Response, url: string): Promise<unknown> {
  const text = await r.text();
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new CalderaError('E_FORMAT', `${url}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
}

/**
 * Load a model served over HTTP: `<base>/config.json`, optional `<base>/caldera.json` (a 404 means dense) and
 * `<base>/model.safetensors`, or when that is 404 the shards listed in `<base>/model.safetensors.index.json`. Each
 * file is fetched as a `Blob` (not one `ArrayBuffer`, so no 2 GiB cap) and read tensor by tensor. A failed request
 * or download (HTTP status, dropped connection) is `E_IO` naming the URL, `E_ABORTED` when `signal` fired.
 */
export async function loadModelFromUrl(
  dev: CalderaDevice,
  base: string,
  options: UrlLoadOptions = {},
): Promise<LoadedWebGpuModel> {
  checkDeviceArgument(dev, 'loadModelFromUrl');
  checkStringArgument(base, 'loadModelFromUrl', 'the base URL');
  options ??= {}; // from JavaScript: null options are none
  const f = options.fetch ?? globalThis.fetch;
  const root = base.endsWith('/') ? base : `${base}/`;
  // a failed request or body (a dropped connection, the signal): E_ABORTED when the signal fired, else E_IO naming
  // the URL; CalderaErrors (E_FORMAT of a body that is not JSON) pass through
  const failed = (e: unknown, url: string): CalderaError =>
    e instanceof CalderaError
      ? e
      : options.signal?.aborted
        ? new CalderaError('E_ABORTED', `loading was aborted (fetching ${url})`, {
            cause: options.signal.reason,
          })
        : new CalderaError('E_IO', `cannot fetch ${url}: ${(e as Error).message}`, { cause: e });
  const get = async (file: string, optional: boolean): Promise<Response | null> => {
    let r: Response;
    try {
      r = await f(root + file, options.signal ? { signal: options.signal } : {});
    } catch (e) {
      throw failed(e, root + file);
    }
    if (r.status === 404 && optional) return null;
    if (!r.ok) throw new CalderaError('E_IO', `cannot fetch ${root + file}: HTTP ${r.status}`);
    return r;
  };
  // the body of `file` read by `how`, its failures as in `get`
  const body = async <T>(file: string, r: Response, how: (r: Response) => Promise<T>): Promise<T> => {
    try {
      return await how(r);
    } catch (e) {
      throw failed(e, root + file);
    }
  };
  const json = (file: string, r: Response) => body(file, r, (r) => responseJson(r, root + file));
  const config = await json('config.json', (await get('config.json', false))!);
  const cr = await get('caldera.json', true);
  // validated here, before any weight is downloaded (loadModelFromStore checks it again: a few microseconds)
  const calderaMeta = cr ? parseCalderaMeta(await json('caldera.json', cr), root + 'caldera.json') : null;
  const single = await get('model.safetensors', true);
  let store: TensorStore;
  const weights = async (r: Response, file: string) =>
    openSafetensors(await body(file, r, (r) => blobWithProgress(r, file, options.onDownload)), file);
  if (single) store = await weights(single, 'model.safetensors');
  else {
    const indexFile = 'model.safetensors.index.json';
    const index = parseSafetensorsIndex(
      await body(indexFile, (await get(indexFile, false))!, (r) => r.text()),
      root + indexFile,
    );
    store = new ShardedSafetensorsReader(index, async (file) => weights((await get(file, false))!, file));
  }
  try {
    return await loadModelFromStore(
      dev,
      { config, calderaMeta, calderaMetaFile: root + 'caldera.json', store },
      options,
    );
  } finally {
    await store.close();
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
  checkObjectArgument(parts, 'loadModelFromBuffer', 'parts');
  options ??= {}; // from JavaScript: null options are none
  // (weights that are not bytes or a Blob: E_VALUE from openSafetensors)
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
