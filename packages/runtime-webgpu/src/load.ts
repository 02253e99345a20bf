import {
  assertNoCalderaTensorsWithoutMeta,
  assertNonEmptyString,
  assertObject,
  blobSource,
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
  type SafetensorsReader,
  parseCalderaMeta,
  parseHeaderLength,
  type ByteSource,
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
  /**
   * Called with the memory plan before anything is uploaded, and by {@link loadModelFromUrl} before any tensor data
   * is downloaded (the plan needs only the safetensors headers). An error it throws stops loading and is rethrown; an
   * abort of `signal` it makes stops loading with `E_ABORTED` (then the device check, `E_DEVICE`, does not run).
   */
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
 * buffer exceeds the device's storage binding ({@link loadModelFromUrl}: before downloading any tensor data, from the
 * headers that it fetches with `Range` requests).
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
  assertObject(source, 'loadModelFromStore', 'source');
  assertObject(source.store, 'loadModelFromStore', 'source.store');
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
  // an onPlan that decided against this model (a caller's own memory budget) aborts before any tensor is read
  if (options.signal?.aborted)
    throw new CalderaError('E_ABORTED', 'loading was aborted', { cause: options.signal.reason });
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
  assertNonEmptyString(dir, 'loadModel', 'the model directory');
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
   * length counts the encoded bytes). It reports the download of each file's tensor data, after the memory plan
   * (`onPlan`), not the requests for the headers; from a server that ignores `Range` it reports the whole file's
   * download, before the plan; a file of at most 64 KiB, which the header request brought whole, is reported then as
   * 0 and all of its bytes.
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

/** Bytes asked for first of each weight file: the 8-byte length and, for most checkpoints, the whole JSON header. */
const HEAD_BYTES = 64 * 1024;

/**
 * The file size announced by a safetensors header (`json`, after the 8-byte length `n`): where its last tensor's data
 * ends, for a server whose `Content-Range` is not readable (a cross-origin response that does not expose it). A header
 * that does not parse gives `8 + n`; `parseHeader` then reports what is wrong with it.
 */
function sizeFromHeader(json: Uint8Array): number {
  let end = 0;
  try {
    const o = JSON.parse(new TextDecoder().decode(json)) as Record<string, { data_offsets?: unknown }>;
    for (const [name, e] of Object.entries(o)) {
      const off = name === '__metadata__' ? null : e?.data_offsets;
      if (Array.isArray(off) && Number.isSafeInteger(off[1]) && (off[1] as number) > end)
        end = off[1] as number;
    }
  } catch {
    // not JSON: parseHeader says so
  }
  return 8 + json.length + end;
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
  // `range`: [first, last] byte (inclusive), sent as a Range header
  const get = async (file: string, optional: boolean, range?: [number, number]): Promise<Response | null> => {
    const init: RequestInit = {};
    if (options.signal) init.signal = options.signal;
    if (range) init.headers = { Range: `bytes=${range[0]}-${range[1]}` };
    let r: Response;
    try {
      r = await f(root + file, init);
    } catch (e) {
      throw failed(e, root + file);
    }
    if (r.status === 404 && optional) return null;
    if (r.status === 416 && range) return r; // an empty file: fetchRange asks for all of it
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
  const download = async (file: string, r: Response): Promise<Blob> =>
    body(file, r, (r) => blobWithProgress(r, file, options.onDownload));
  /**
   * The bytes [first, last] of `file`: `{ bytes, total }` from a 206 (`total`: the file size of its `Content-Range`,
   * null when that is not readable), or `{ whole }`, a response with the whole file, from a server that ignored the
   * range (or encoded the body, whose range then counts encoded bytes).
   */
  const fetchRange = async (
    file: string,
    optional: boolean,
    first: number,
    last: number,
  ): Promise<{ bytes: Uint8Array; total: number | null } | { whole: Response } | null> => {
    const url = root + file;
    const r = await get(file, optional, [first, last]);
    if (!r) return null;
    if (r.status !== 206 && r.status !== 416) return { whole: r };
    const encoding = r.headers.get('content-encoding');
    if (r.status === 416 || (encoding !== null && encoding.trim().toLowerCase() !== 'identity')) {
      await r.body?.cancel().catch(() => undefined);
      return { whole: (await get(file, false))! };
    }
    const bytes = new Uint8Array(await body(file, r, (r) => r.arrayBuffer()));
    // Content-Range: readable same-origin, and cross-origin when the server exposes it
    const cr = /^\s*bytes\s+(\d+)-(\d+)\/(\d+|\*)\s*$/i.exec(r.headers.get('content-range') ?? '');
    const wrong = (what: string) =>
      new CalderaError('E_IO', `cannot fetch ${url}: asked for bytes ${first}-${last}, ${what}`);
    if (cr && (Number(cr[1]) !== first || Number(cr[2]) - first + 1 !== bytes.length))
      throw wrong(`got Content-Range ${r.headers.get('content-range')} with ${bytes.length} bytes`);
    if (bytes.length > last - first + 1) throw wrong(`got ${bytes.length} bytes`);
    return { bytes, total: cr && cr[3] !== '*' ? Number(cr[3]) : null };
  };
  /**
   * `file` opened from its header alone: its tensor data is downloaded (whole) on the first read past the header. A
   * server that ignores Range gives the whole file at once, read from that response.
   */
  const open = async (file: string, optional: boolean): Promise<SafetensorsReader | null> => {
    const url = root + file;
    const first = await fetchRange(file, optional, 0, HEAD_BYTES - 1);
    if (!first) return null;
    if ('whole' in first) return openSafetensors(await download(file, first.whole), file);
    let head = first.bytes;
    // fewer bytes than asked for: the file ends there
    const ended = head.length < HEAD_BYTES;
    const n = parseHeaderLength(head, first.total ?? (ended ? head.length : Number.MAX_SAFE_INTEGER), file);
    if (8 + n > head.length) {
      const rest = await fetchRange(file, false, head.length, 8 + n - 1);
      if ('whole' in rest!) return openSafetensors(await download(file, rest.whole), file);
      if (rest!.bytes.length !== 8 + n - head.length)
        throw new CalderaError(
          'E_IO',
          `cannot fetch ${url}: asked for bytes ${head.length}-${8 + n - 1}, got ${rest!.bytes.length}`,
        );
      const all = new Uint8Array(8 + n);
      all.set(head);
      all.set(rest!.bytes, head.length);
      head = all;
    }
    const headerEnd = 8 + n;
    const size = first.total ?? (ended ? head.length : sizeFromHeader(head.subarray(8, headerEnd)));
    if (head.length >= size) {
      // a file of at most 64 KiB: that was all of it
      options.onDownload?.({ file, bytes: 0, total: size });
      options.onDownload?.({ file, bytes: size, total: size });
      return openSafetensors(head.subarray(0, size), file);
    }
    let whole: Promise<ByteSource> | null = null;
    const fetchWhole = async (): Promise<ByteSource> => {
      const blob = await download(file, (await get(file, false))!);
      // the same length and header as the file the plan was made from (a new version deployed meanwhile is not)
      const same =
        blob.size === size &&
        new Uint8Array(await blob.slice(0, headerEnd).arrayBuffer()).every((x, i) => x === head[i]);
      if (!same)
        throw new CalderaError(
          'E_IO',
          `cannot fetch ${url}: the file changed while loading (${blob.size} bytes, its header announced ${size}` +
            `${blob.size === size ? ', another header' : ''})`,
        );
      return blobSource(blob, file);
    };
    const source: ByteSource = {
      name: file,
      size,
      async read(offset, length) {
        if (offset + length <= headerEnd) return head.slice(offset, offset + length);
        whole ??= fetchWhole();
        return (await whole).read(offset, length);
      },
      close: async () => {
        whole = null;
      },
    };
    return openSafetensors(source, file);
  };
  const config = await json('config.json', (await get('config.json', false))!);
  const cr = await get('caldera.json', true);
  // validated here, before any weight is downloaded (loadModelFromStore checks it again: a few microseconds)
  const calderaMeta = cr ? parseCalderaMeta(await json('caldera.json', cr), root + 'caldera.json') : null;
  let store: TensorStore | null = await open('model.safetensors', true);
  const shards = new Map<string, SafetensorsReader>();
  if (!store) {
    const indexFile = 'model.safetensors.index.json';
    const index = parseSafetensorsIndex(
      await body(indexFile, (await get(indexFile, false))!, (r) => r.text()),
      root + indexFile,
    );
    // every shard's header before the plan (the plan reads a few; a broken shard is better found before the download)
    try {
      for (const file of new Set(Object.values(index.weightMap)))
        shards.set(file, (await open(file, false))!);
    } catch (e) {
      for (const s of shards.values()) await s.close();
      throw e;
    }
    store = new ShardedSafetensorsReader(index, (file) => Promise.resolve(shards.get(file)!));
  }
  try {
    return await loadModelFromStore(
      dev,
      { config, calderaMeta, calderaMetaFile: root + 'caldera.json', store },
      options,
    );
  } finally {
    await store.close();
    for (const s of shards.values()) await s.close(); // those the load did not reach
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
