import { createHash } from 'node:crypto';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import {
  assertCallbacks,
  assertFunction,
  assertNotAbortSignal,
  assertObject,
  atomicWriteFile,
  CalderaError,
  checkTokenArray,
  cast,
  describeValue,
  isCalderaError,
  shownValue,
  openSafetensors,
  openSafetensorsDir,
  readWholeFile,
  tensor,
  throwIfAborted,
  toCalderaError,
  writeSafetensors,
  type CalderaLayerMeta,
  type SafetensorsReader,
  type Tensor,
  type TensorStore,
} from '@caldera/core';
import { type Pool } from '@caldera/linalg';
import { caldera, toCheckpointTensors, type CalderaOptions, type CalderaProgress } from '@caldera/lowrank';
import { captureBlock, finalizeInContext } from './capture.js';
import type { LayerProgress, LayerResult } from './driver.js';
import { checkDamping } from './damping.js';
import { HessianAccumulator } from './hessian.js';
import type { LinearInfo, ModelRunner } from './runner.js';

/*
 * Scale-out of whole-model compression with Hessians fixed by the original model (`propagate: 'original'`).
 *
 * Phase 1 (data-parallel): the calibration windows are cut into a fixed number of chunks; each chunk job runs its
 * windows through the unmodified model and writes the partial sums Σxxᵀ of every linear input. The chunks are reduced by
 * f64 addition in chunk order, so the Hessians depend on the chunk count of the plan, never on how many processes ran
 * the chunks or in which order they finished.
 *
 * Phase 2 (independent jobs): every (block, sublayer) decomposition is one job of the manifest, with content hashes of
 * its inputs (W bytes in the model file, H bytes in the work directory) and its options. A job's output is named by
 * the hash of all of that, written atomically, so re-executing a job (a retry, a second worker) is harmless.
 *
 * Work directory layout: `hessian-plan.json`, `hessian-chunks/<chunk>-b<block>.safetensors`,
 * `hessians/<sha256>.f64` (raw little-endian f64, n × n), `manifest.json`, `results/<job id>.safetensors`.
 */

/**
 * JSON options of one decomposition: {@link CalderaOptions} without the handles, callbacks, seed and `overwriteH` (a
 * property of the call, not of what it computes: {@link LayerRunOptions}).
 */
export type LayerOptions = Omit<CalderaOptions, 'pool' | 'signal' | 'onProgress' | 'seed' | 'overwriteH'>;

/** What a matrix job computes: `caldera(W, H, { ...options, seed })`. */
export interface LayerSpec {
  options: LayerOptions;
  seed: number;
}

/** A content-addressed Hessian in the work directory. */
export interface HessianRef {
  /** Path relative to the work directory. */
  file: string;
  sha256: string;
  n: number;
}

/** One independent decomposition. */
export interface MatrixJob {
  /** sha256 of the job's inputs and spec: the name of its output. */
  id: string;
  name: string;
  block: number;
  input: string;
  m: number;
  n: number;
  /** The dense weight in the model directory and the sha256 of its stored bytes. */
  weight: { tensor: string; sha256: string };
  hessian: HessianRef | null;
  spec: LayerSpec;
}

/** The job manifest: everything any engine needs to execute the matrix phase and assemble the result. */
export interface JobManifest {
  format: 'caldera-jobs';
  version: 1;
  /** Absolute path of the source model directory. */
  model: string;
  modelSha256: string;
  seed: number;
  /** The run's remaining options (method, calibration, evaluation): opaque here, used when assembling. */
  settings: Record<string, unknown>;
  jobs: MatrixJob[];
}

/** The Hessian phase's plan: the calibration windows and their fixed split into chunks. */
export interface HessianPlan {
  format: 'caldera-hessian-plan';
  version: 1;
  model: string;
  modelSha256: string;
  numBlocks: number;
  /**
   * Opaque key of what produced the windows (e.g. a hash of the corpus, window count and length, seed), so a later
   * process can reuse them instead of tokenizing the corpus again; '' when not given.
   */
  source: string;
  /**
   * sha256 of every tensor of the model (as {@link hashModelTensors} gives them, by name), so that a chunk job checks
   * each tensor as it reads it ({@link verifyingTensorStore}) instead of hashing the whole model first. Absent from plans
   * written before it existed: a job then hashes the whole model.
   */
  tensorSha256?: Record<string, string>;
  /**
   * sha256 of the model's `config.json`, which the activations depend on too (heads, RoPE, norms), so that a chunk job
   * checks it before it runs; absent when not given (and from older plans).
   */
  configSha256?: string;
  windows: number[][];
  /** Chunk c covers windows [start, end); `key` names its partial-sum files. */
  chunks: { key: string; start: number; end: number }[];
}

const PLAN_FILE = 'hessian-plan.json';
const MANIFEST_FILE = 'manifest.json';

/** Bytes hashed per `update` call: one `Uint8Array` holds at most 4 GiB in Node 20, a Hessian may be larger. */
const HASH_CHUNK_BYTES = 2 ** 30;

/**
 * sha256 of bytes (any typed array, `DataView` or `ArrayBuffer`, of any size) or of a string's UTF-8, as hex. The
 * bytes are fed in pieces of at most 1 GiB, so a 28672² f64 Hessian (6.6 GB) hashes too.
 */
export function sha256Hex(data: ArrayBufferView | ArrayBuffer | string): string {
  const h = createHash('sha256');
  if (typeof data === 'string') return h.update(data).digest('hex');
  const [buffer, start] = ArrayBuffer.isView(data) ? [data.buffer, data.byteOffset] : [data, 0];
  for (let o = 0; o < data.byteLength; o += HASH_CHUNK_BYTES)
    h.update(new Uint8Array(buffer, start + o, Math.min(HASH_CHUNK_BYTES, data.byteLength - o)));
  return h.digest('hex');
}

/**
 * FNV-1a of a layer name: per-layer seeds independent of processing order (resumed and sharded runs agree). `seed`
 * is a safe integer (taken modulo 2³², as {@link Rng} takes seeds) and `name` a string, else `E_VALUE` (a NaN or
 * fractional seed gave some seed silently).
 */
export function layerSeed(seed: number, name: string): number {
  if (!Number.isSafeInteger(seed))
    throw new CalderaError('E_VALUE', `layerSeed: seed must be a safe integer, got ${String(seed)}`);
  if (typeof name !== 'string')
    throw new CalderaError('E_VALUE', `layerSeed: name must be a string, got ${describeValue(name)}`);
  let h = 2166136261 ^ seed;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return h >>> 0;
}

/**
 * A trailing options object, `{}` when omitted. A bare `AbortSignal` (where these functions took one before) or a
 * non-object is `E_VALUE`, so that a signal passed the old way is not silently ignored.
 */
function optionsOf<T extends object>(options: T | undefined, fn: string): T {
  if (options === undefined) return {} as T;
  assertNotAbortSignal(options, fn);
  assertObject(options, fn, 'options', 'an object');
  assertCallbacks(options, fn, ['onProgress']); // before any work, not where it is first called
  return options;
}

/**
 * Progress of one decomposition ({@link compressLayerWithSpec}, {@link executeMatrixJob}): CALDERA's event after each
 * sub-step, with `fraction`, the sub-steps done over all of them (`iterations` × 1 or 2: LR then Q, or only one of
 * them when the rank or `qBits` is 0), reaching 1 after the last.
 */
export interface LayerSpecProgress extends CalderaProgress, LayerProgress {}

/** Handles and callbacks of {@link compressLayerWithSpec} and {@link executeMatrixJob}. */
export interface LayerRunOptions {
  /** Changes the speed, never the result. */
  pool?: Pool;
  /**
   * caldera's `overwriteH`: H's storage may be used as work space (garbage afterwards) where it saves a copy. Never
   * changes the result. Default false; {@link executeMatrixJob} always passes true (its H is read for that job only).
   */
  overwriteH?: boolean;
  /** Checked by `caldera` before every sub-step and inside its long kernels (`E_ABORTED`). */
  signal?: AbortSignal;
  /** Called synchronously from inside `caldera` (which does not yield) after every sub-step. */
  onProgress?: (p: LayerSpecProgress) => void;
}

/**
 * The one way a layer is decomposed, whatever runs it (the sequential driver, a shard, a queue worker): CALDERA with
 * the spec's options and seed, converted to checkpoint tensors. `pool` changes the speed, `onProgress` only observes:
 * neither changes the result.
 */
export function compressLayerWithSpec(
  w: Tensor<'f32'>,
  h: Tensor<'f64'> | null,
  name: string,
  spec: LayerSpec,
  options: LayerRunOptions = {},
): Omit<LayerResult, 'seconds' | 'name'> {
  assertObject(spec, 'compressLayerWithSpec', 'spec', 'a LayerSpec');
  assertObject(spec.options, 'compressLayerWithSpec', 'spec.options', "caldera's options");
  const { onProgress, ...handles } = optionsOf(options, 'compressLayerWithSpec');
  // caldera's sub-steps per outer iteration: LR and Q (in the `updateOrder`), only Q at rank 0, only LR without Q (its
  // defaults are nonzero)
  const steps = spec.options.rank === 0 || spec.options.qBits === 0 ? 1 : 2;
  const firstStep = spec.options.updateOrder === 'q-first' ? 'Q' : 'LR';
  const d = caldera(w, h, {
    ...spec.options,
    seed: spec.seed,
    ...handles,
    overwriteH: handles.overwriteH === true, // never from a spec (a JSON spec from elsewhere may carry any key)
    ...(onProgress
      ? {
          onProgress: (p: CalderaProgress) => {
            const done = (p.iteration - 1) * steps + (steps === 2 && p.step === firstStep ? 1 : steps);
            onProgress({ ...p, fraction: Math.min(1, done / (p.iterations * steps)) });
          },
        }
      : {}),
  });
  return {
    replacement: toCheckpointTensors(name, d),
    error: d.error,
    bitsPerWeight: d.paperBitsPerWeight,
    rank: d.rank,
  };
}

/** Hessian key of one linear input of one block. */
export function hessianKey(block: number, input: string): string {
  return `${block}/${input}`;
}

/** Options of {@link hashModelTensors}. */
export interface HashModelOptions {
  /** Checked before every tensor (`E_ABORTED`). */
  signal?: AbortSignal;
  /** After every tensor: `done` tensors of `total` hashed, `tensor` the last one's name (names in sorted order). */
  onProgress?: (e: { tensor: string; done: number; total: number }) => void;
}

/** sha256 of every tensor of a model directory, and of the whole (names and hashes in name order). */
export async function hashModelTensors(
  dir: string,
  options: HashModelOptions = {},
): Promise<{ sha256: string; tensors: Map<string, string> }> {
  const { signal, onProgress } = optionsOf(options, 'hashModelTensors');
  const store = await openSafetensorsDir(dir);
  try {
    const tensors = new Map<string, string>();
    const names = [...store.names()].sort();
    for (const name of names) {
      throwIfAborted(signal, 'hashing the model');
      tensors.set(name, sha256Hex(await store.readRaw(name)));
      onProgress?.({ tensor: name, done: tensors.size, total: names.length });
    }
    return { sha256: tensorsSha256(tensors), tensors };
  } finally {
    await store.close();
  }
}

/** Whether `v` is a sha256 as this module writes them: 64 lowercase hex digits. */
const isSha256Hex = (v: unknown): v is string => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);

/** The model hash of per-tensor hashes, as {@link hashModelTensors} forms it (names and hashes, in name order). */
function tensorsSha256(tensors: ReadonlyMap<string, string>): string {
  return sha256Hex(JSON.stringify([...tensors].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))));
}

/**
 * A view of `store` that checks every tensor read through it (`readTensor`, `readRaw`) against `expected`, the sha256 of
 * each tensor's bytes by name (as {@link hashModelTensors} gives them): a tensor whose bytes differ, or that `expected`
 * lacks, is `E_FORMAT` naming it after `what` (e.g. "the model at DIR is not the one the plan was made from"). A
 * process checks this way that the model it reads is the one a plan hashed, as it reads it, without a second read of
 * the model. Closing the view closes `store`.
 */
export function verifyingTensorStore(
  store: TensorStore,
  expected: ReadonlyMap<string, string>,
  what: string,
): TensorStore {
  assertObject(store, 'verifyingTensorStore', 'store', 'a TensorStore');
  if (!(expected instanceof Map))
    throw new CalderaError(
      'E_VALUE',
      `verifyingTensorStore: expected must be a Map of tensor names to sha256, got ${describeValue(expected)}`,
    );
  const check = (name: string, bytes: ArrayBufferView) => {
    const want = expected.get(name);
    const seen = sha256Hex(bytes);
    if (seen !== want)
      throw new CalderaError(
        'E_FORMAT',
        want === undefined
          ? `${what}: it has a tensor '${name}' the plan's model lacks`
          : `${what}: its tensor '${name}' has sha256 ${seen.slice(0, 12)}…, the plan's ${want.slice(0, 12)}…`,
        { details: { tensor: name } },
      );
  };
  return {
    get metadata() {
      return store.metadata;
    },
    names: () => store.names(),
    has: (name) => store.has(name),
    tensorInfo: (name) => store.tensorInfo(name),
    async readTensor(name) {
      const t = await store.readTensor(name);
      check(name, t.data);
      return t;
    },
    async readRaw(name) {
      const bytes = await store.readRaw(name);
      check(name, bytes);
      return bytes;
    },
    close: () => store.close(),
  };
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function readJson<T>(path: string, what: string): Promise<T> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as { code?: string }).code;
    throw new CalderaError(
      code === 'ENOENT' ? 'E_MISSING' : 'E_IO',
      `${what} ${path}: cannot read (${code})`,
      {
        cause: e,
      },
    );
  }
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    throw new CalderaError('E_FORMAT', `${what} ${path} is not valid JSON (${(e as Error).message})`);
  }
}

/** A CalderaError's message without its `E_…: ` prefix, to be wrapped in another one's context. */
function withoutCode(e: CalderaError): string {
  return e.message.replace(/^E_[A-Z_]+: /, '');
}

/**
 * Open a safetensors file the jobs wrote: `E_MISSING` (`what` + `missing`) when it does not exist; a file that exists
 * but cannot be read keeps its own code (`E_FORMAT` for a truncated or corrupt file, `E_IO`), `what` naming it.
 */
async function openResultFile(path: string, what: string, missing: string): Promise<SafetensorsReader> {
  try {
    return await openSafetensors(path);
  } catch (e) {
    const err = toCalderaError(e, `opening ${path}`);
    if (err.code === 'E_MISSING') throw new CalderaError('E_MISSING', `${what} ${missing}`, { cause: e });
    throw new CalderaError(err.code, `${what} cannot be read (${withoutCode(err)})`, { cause: e });
  }
}

/** The JSON in string metadata `field` of `file` (null when absent); malformed JSON is `E_FORMAT` naming both. */
function metadataJson(metadata: Readonly<Record<string, string>>, field: string, file: string): unknown {
  const text = metadata[field];
  if (text === undefined) return null;
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new CalderaError(
      'E_FORMAT',
      `${file}: metadata '${field}' is not valid JSON (${(e as Error).message})`,
      { cause: e },
    );
  }
}

/** Write JSON atomically unless the file already holds exactly these bytes (plans are deterministic). */
async function writeJsonOnce(path: string, value: unknown): Promise<void> {
  const text = JSON.stringify(value, null, 1) + '\n';
  const old = await readFile(path, 'utf8').catch(() => null);
  if (old === text) return;
  await atomicWriteFile(path, text);
}

/**
 * Split `windows` into `chunks` contiguous chunks (fewer when there are fewer windows). The plan, not the number of
 * processes, fixes the f64 summation order of the Hessians. `identity` is kept in the plan so that a chunk job can
 * check that the model it reads is the one planned: `tensorSha256`, the per-tensor hashes of `modelSha256` (both from
 * one {@link hashModelTensors}; else `E_VALUE`), checked as each tensor is read ({@link verifyingTensorStore}), and
 * `configSha256`, the sha256 of the model's `config.json` (64 hex digits, else `E_VALUE`).
 */
export function makeHessianPlan(
  model: string,
  modelSha256: string,
  numBlocks: number,
  windows: readonly ArrayLike<number>[],
  chunks: number,
  source = '',
  identity: { tensorSha256?: ReadonlyMap<string, string>; configSha256?: string } = {},
): HessianPlan {
  assertObject(identity, 'makeHessianPlan', 'identity');
  const { tensorSha256, configSha256 } = identity;
  if (configSha256 !== undefined && !isSha256Hex(configSha256))
    throw new CalderaError(
      'E_VALUE',
      `makeHessianPlan: identity.configSha256 must be 64 lowercase hex digits, got ${shownValue(configSha256)}`,
    );
  if (!Number.isInteger(chunks) || chunks <= 0)
    throw new CalderaError('E_VALUE', `Hessian chunks must be a positive integer, got ${chunks}`);
  if (tensorSha256 !== undefined && !(tensorSha256 instanceof Map))
    throw new CalderaError(
      'E_VALUE',
      `makeHessianPlan: identity.tensorSha256 must be a Map of tensor names to sha256 (hashModelTensors' tensors), got ${describeValue(tensorSha256)}`,
    );
  if (tensorSha256 !== undefined && tensorsSha256(tensorSha256) !== modelSha256)
    throw new CalderaError(
      'E_VALUE',
      'makeHessianPlan: identity.tensorSha256 is not the per-tensor hashes of modelSha256 (give both from one hashModelTensors)',
    );
  if (!Number.isSafeInteger(numBlocks) || numBlocks < 1)
    throw new CalderaError(
      'E_VALUE',
      `makeHessianPlan: numBlocks must be a positive integer, got ${shownValue(numBlocks)}`,
    );
  assertObject(windows, 'makeHessianPlan', 'windows', 'an array of token windows');
  if (windows.length === 0) throw new CalderaError('E_VALUE', 'no calibration windows');
  // token ids: the plan is saved as JSON and read back into Int32Arrays (1.5 became 1, NaN null then 0)
  windows.forEach((w, i) => {
    checkTokenArray(w, 'makeHessianPlan', `windows[${i}]`);
    for (let j = 0; j < w.length; j++) {
      const t = w[j]!;
      if (!Number.isSafeInteger(t) || t < 0)
        throw new CalderaError(
          'E_VALUE',
          `makeHessianPlan: windows[${i}][${j}] is ${shownValue(t)}, not a token id`,
        );
    }
  });
  const c = Math.min(chunks, windows.length);
  const ws = windows.map((w) => Array.from(w));
  const list = Array.from({ length: c }, (_, i) => {
    const start = Math.floor((i * ws.length) / c);
    const end = Math.floor(((i + 1) * ws.length) / c);
    return {
      // the config too, when given: partial sums made under another config.json are not this plan's
      key: sha256Hex(
        JSON.stringify({
          modelSha256,
          ...(configSha256 ? { configSha256 } : {}),
          windows: ws.slice(start, end),
        }),
      ).slice(0, 32),
      start,
      end,
    };
  });
  return {
    format: 'caldera-hessian-plan',
    version: 1,
    model,
    modelSha256,
    numBlocks,
    source,
    ...(tensorSha256 ? { tensorSha256: Object.fromEntries(tensorSha256) } : {}),
    ...(configSha256 ? { configSha256 } : {}),
    windows: ws,
    chunks: list,
  };
}

export async function writeHessianPlan(workDir: string, plan: HessianPlan): Promise<void> {
  assertObject(plan, 'writeHessianPlan', 'plan', 'a HessianPlan');
  await mkdir(workDir, { recursive: true });
  await writeJsonOnce(join(workDir, PLAN_FILE), plan);
}

export async function readHessianPlan(workDir: string): Promise<HessianPlan> {
  const p = await readJson<HessianPlan>(join(workDir, PLAN_FILE), 'Hessian plan');
  const file = join(workDir, PLAN_FILE);
  if (p === null || typeof p !== 'object' || p.format !== 'caldera-hessian-plan' || p.version !== 1)
    throw new CalderaError('E_FORMAT', `${file} is not a version-1 Hessian plan`);
  if (p.configSha256 !== undefined && !isSha256Hex(p.configSha256))
    throw new CalderaError('E_FORMAT', `${file}: configSha256 is not a sha256 (64 hex digits)`);
  if (
    p.tensorSha256 !== undefined &&
    (p.tensorSha256 === null ||
      typeof p.tensorSha256 !== 'object' ||
      Array.isArray(p.tensorSha256) ||
      !Object.values(p.tensorSha256).every(isSha256Hex))
  )
    throw new CalderaError('E_FORMAT', `${file}: tensorSha256 is not an object of tensor names to sha256`);
  return p;
}

function chunkFile(workDir: string, key: string, block: number): string {
  return join(workDir, 'hessian-chunks', `${key}-b${String(block).padStart(4, '0')}.safetensors`);
}

/** Options of {@link accumulateHessians} and {@link runHessianChunks}. */
export interface AccumulateOptions {
  /**
   * Stops the work with `E_ABORTED`: checked before every group of windows (up to 512 rows; every window where the
   * runner has no `runWindows`), after a turn of the event loop, so that a timer or a SIGINT handler can fire it
   * although the runner is synchronous.
   */
  signal?: AbortSignal;
  /** After every block (after `onBlock` has finished with it): `done` blocks of `total` (the runner's `numBlocks`). */
  onProgress?: (e: { done: number; total: number }) => void;
  /** A `@caldera/linalg` worker pool for the `Σ xxᵀ` products: the same bits, sooner. Default: the calling thread. */
  pool?: Pool;
}

/**
 * Accumulate the partial Hessians of `windows` block by block through the unmodified model, handing each finished
 * block's accumulators (one per input key) to `onBlock`. Only one block's sums are in memory at a time (and only one
 * block's weights with a runner that has `enterBlock`/`leaveBlock`, entered and left in order).
 */
export async function accumulateHessians(
  runner: ModelRunner,
  windows: readonly Int32Array[],
  onBlock: (block: number, accs: Map<string, HessianAccumulator>) => Promise<void> | void,
  options: AccumulateOptions = {},
): Promise<void> {
  assertObject(runner, 'accumulateHessians', 'runner', 'a ModelRunner');
  assertObject(windows, 'accumulateHessians', 'windows', 'an array of token windows');
  assertFunction(onBlock, 'accumulateHessians', 'onBlock');
  await accumulateGroups(
    runner,
    [windows],
    (b, _, accs) => onBlock(b, accs),
    optionsOf(options, 'accumulateHessians'),
  );
}

/**
 * {@link accumulateHessians} for several groups of windows at once, each group's sums kept apart: every block is entered
 * once for all groups, and `onBlock` gets each group's accumulators of the block in turn (one group's in memory at a
 * time). A group's sums are those `accumulateHessians` gives for its windows alone, to the bit: the same rows are added
 * in the same order.
 */
async function accumulateGroups(
  runner: ModelRunner,
  groups: readonly (readonly Int32Array[])[],
  onBlock: (block: number, group: number, accs: Map<string, HessianAccumulator>) => Promise<void> | void,
  { signal, onProgress, pool }: AccumulateOptions,
): Promise<void> {
  const hidden = groups.map((windows) => windows.map((w) => runner.embed(w)));
  for (let b = 0; b < runner.numBlocks; b++) {
    try {
      await runner.enterBlock?.(b, signal);
      const linears = runner.linears(b);
      for (let g = 0; g < groups.length; g++) {
        // the last block's outputs feed nothing
        const outputs = b < runner.numBlocks - 1;
        const captured = await captureBlock(runner, b, linears, hidden[g]!, groups[g]!, {
          signal,
          what: 'Hessian accumulation',
          ...(pool ? { pool } : {}),
          outputs,
        });
        if (captured.outputs) hidden[g] = captured.outputs;
        await onBlock(b, g, captured.accs);
      }
    } finally {
      runner.leaveBlock?.(b);
    }
    onProgress?.({ done: b + 1, total: runner.numBlocks });
  }
}

/** Whether chunk `c` of the plan has all its partial sums on disk. */
export async function hasHessianChunk(workDir: string, plan: HessianPlan, c: number): Promise<boolean> {
  assertObject(plan, 'hasHessianChunk', 'plan', 'a HessianPlan');
  const { key } = plan.chunks[c]!;
  for (let b = 0; b < plan.numBlocks; b++) if (!(await exists(chunkFile(workDir, key, b)))) return false;
  return true;
}

/**
 * Phase-1 job: the partial sums of the plan's chunks `chunks` (through the original model `runner`), one atomic file
 * per chunk and block. The chunks not yet on disk run together, block by block, so the model is read once however many
 * there are (their hidden states are held together: one chunk's worth each); every chunk's files are the bytes that
 * running it alone writes. Idempotent: a chunk already on disk is not recomputed. Returns, for each of `chunks`, whether
 * it was `'cached'` or `'computed'`. `onProgress` follows the blocks, each counted once the files of all running chunks
 * are written (nothing is reported when every chunk is cached).
 */
export async function runHessianChunks(
  workDir: string,
  plan: HessianPlan,
  chunks: readonly number[],
  runner: ModelRunner,
  options: AccumulateOptions = {},
): Promise<('cached' | 'computed')[]> {
  assertObject(plan, 'runHessianChunks', 'plan', 'a HessianPlan');
  assertObject(chunks, 'runHessianChunks', 'chunks', 'an array of chunk indices');
  assertObject(runner, 'runHessianChunks', 'runner', 'a ModelRunner');
  const opts = optionsOf(options, 'runHessianChunks');
  for (const c of chunks)
    if (!Number.isInteger(c) || !plan.chunks[c])
      throw new CalderaError('E_VALUE', `Hessian chunk ${c} is not in the plan (${plan.chunks.length})`);
  const results: ('cached' | 'computed')[] = [];
  for (const c of chunks) results.push((await hasHessianChunk(workDir, plan, c)) ? 'cached' : 'computed');
  const todo = [...new Set(chunks.filter((_, i) => results[i] === 'computed'))];
  if (todo.length === 0) return results;
  if (runner.numBlocks !== plan.numBlocks)
    throw new CalderaError('E_VALUE', `model has ${runner.numBlocks} blocks, the plan ${plan.numBlocks}`);
  await mkdir(join(workDir, 'hessian-chunks'), { recursive: true });
  const groups = todo.map((c) => {
    const { start, end } = plan.chunks[c]!;
    return plan.windows.slice(start, end).map((w) => Int32Array.from(w));
  });
  await accumulateGroups(
    runner,
    groups,
    async (b, g, accs) => {
      const tensors: Record<string, Tensor> = {};
      const counts: Record<string, number> = {};
      for (const [key, acc] of accs) {
        tensors[key] = tensor('f64', [acc.n, acc.n], acc.sum);
        counts[key] = acc.count;
      }
      await writeSafetensors(chunkFile(workDir, plan.chunks[todo[g]!]!.key, b), tensors, {
        metadata: { counts: JSON.stringify(counts) },
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
    },
    opts,
  );
  return results;
}

/**
 * Reduce the chunks' partial sums by f64 addition in chunk order, finalise (normalise + damp) and store every Hessian
 * under its content hash. Deterministic: every process that reduces the same plan writes the same bytes. Errors name
 * the chunk file: `E_MISSING` when it is absent, `E_FORMAT` when it is truncated or corrupt or its `counts` metadata
 * is malformed, `E_SHAPE` for sums that are not square (or not the size of the other chunks'), `E_VALUE` for NaN or
 * infinite sums; nothing is stored for a Hessian that is not finite.
 */
export async function reduceHessianChunks(
  workDir: string,
  plan: HessianPlan,
  options: { damping?: number; signal?: AbortSignal } = {},
): Promise<Map<string, HessianRef>> {
  assertObject(plan, 'reduceHessianChunks', 'plan', 'a HessianPlan');
  // a bare signal is refused, not ignored; a bad damping before any chunk is read (it was blamed on block 0's input)
  options = optionsOf(options, 'reduceHessianChunks');
  checkDamping(options.damping);
  const refs = new Map<string, HessianRef>();
  await mkdir(join(workDir, 'hessians'), { recursive: true });
  for (let b = 0; b < plan.numBlocks; b++) {
    const accs = new Map<string, HessianAccumulator>();
    for (const chunk of plan.chunks) {
      throwIfAborted(options.signal, 'Hessian reduction');
      const file = chunkFile(workDir, chunk.key, b);
      const reader = await openResultFile(file, `Hessian partial sums ${file}`, 'are missing');
      try {
        const counts = metadataJson(reader.metadata, 'counts', file);
        if (counts === null || typeof counts !== 'object' || Array.isArray(counts))
          throw new CalderaError(
            'E_FORMAT',
            `${file}: metadata 'counts' is missing or not an object of row counts`,
          );
        for (const key of reader.names()) {
          const count = (counts as Record<string, unknown>)[key];
          if (typeof count !== 'number' || !Number.isInteger(count) || count < 0)
            throw new CalderaError(
              'E_FORMAT',
              `${file}: metadata 'counts' has no row count for '${key}' (got ${String(count)})`,
            );
          const t = await reader.readTensor(key);
          if (t.dtype !== 'f64' || t.shape.length !== 2)
            throw new CalderaError('E_FORMAT', `${file}: '${key}' is not a 2-D f64 tensor`);
          const n = t.shape[0]!;
          const acc = accs.get(key);
          if (t.shape[1] !== n || (acc && acc.n !== n))
            throw new CalderaError(
              'E_SHAPE',
              `${file}: '${key}' has shape [${t.shape.join(', ')}], expected a square ` +
                (acc ? `[${acc.n}, ${acc.n}] as in the earlier chunks` : 'matrix'),
            );
          let part: HessianAccumulator;
          try {
            part = HessianAccumulator.fromSums(n, t.data as Float64Array, count);
          } catch (e) {
            if (!(e instanceof CalderaError)) throw e;
            throw new CalderaError(e.code, `${file}: '${key}' (block ${b}): ${withoutCode(e)}`, { cause: e });
          }
          if (acc) acc.merge(part);
          else accs.set(key, part);
        }
      } finally {
        await reader.close();
      }
    }
    for (const [input, acc] of accs) {
      const h = finalizeInContext(acc, options.damping, b, input, []);
      const sha = sha256Hex(h.data);
      const file = join('hessians', `${sha}.f64`);
      if (!(await exists(join(workDir, file)))) await atomicWriteFile(join(workDir, file), h.data);
      refs.set(hessianKey(b, input), { file, sha256: sha, n: acc.n });
    }
  }
  return refs;
}

/** The id of a matrix job: sha256 of everything its output depends on. */
export function matrixJobId(job: Omit<MatrixJob, 'id'>): string {
  assertObject(job, 'matrixJobId', 'job', 'a MatrixJob');
  return sha256Hex(
    JSON.stringify({
      v: 1,
      name: job.name,
      m: job.m,
      n: job.n,
      weight: job.weight.sha256,
      hessian: job.hessian?.sha256 ?? null,
      spec: job.spec,
    }),
  );
}

/** Build the manifest's job list from the model's linears, weight hashes, Hessians and per-layer specs. */
export function makeManifest(args: {
  model: string;
  modelSha256: string;
  seed: number;
  settings: Record<string, unknown>;
  linears: readonly LinearInfo[];
  weightSha256: ReadonlyMap<string, string>;
  hessians: ReadonlyMap<string, HessianRef> | null;
  spec: (l: LinearInfo) => LayerSpec;
}): JobManifest {
  assertObject(args, 'makeManifest', 'args', 'an object');
  if (!isAbsolute(args.model))
    throw new CalderaError('E_VALUE', `manifest model path must be absolute, got '${args.model}'`);
  const jobs = args.linears.map((l): MatrixJob => {
    const tensorName = `${l.name}.weight`;
    const sha = args.weightSha256.get(tensorName);
    if (!sha) throw new CalderaError('E_MISSING', `no hash for tensor '${tensorName}'`);
    let hessian: HessianRef | null = null;
    if (args.hessians) {
      hessian = args.hessians.get(hessianKey(l.block, l.input)) ?? null;
      if (!hessian) throw new CalderaError('E_MISSING', `no Hessian for ${l.name} (input ${l.input})`);
    }
    const job = {
      name: l.name,
      block: l.block,
      input: l.input,
      m: l.outFeatures,
      n: l.inFeatures,
      weight: { tensor: tensorName, sha256: sha },
      hessian,
      spec: args.spec(l),
    };
    return { id: matrixJobId(job), ...job };
  });
  return {
    format: 'caldera-jobs',
    version: 1,
    model: args.model,
    modelSha256: args.modelSha256,
    seed: args.seed,
    settings: args.settings,
    jobs,
  };
}

export async function writeManifest(workDir: string, manifest: JobManifest): Promise<void> {
  assertObject(manifest, 'writeManifest', 'manifest', 'a JobManifest');
  await mkdir(workDir, { recursive: true });
  await writeJsonOnce(join(workDir, MANIFEST_FILE), manifest);
}

export async function readManifest(workDir: string): Promise<JobManifest> {
  const m = await readJson<JobManifest>(join(workDir, MANIFEST_FILE), 'job manifest');
  if (m.format !== 'caldera-jobs' || m.version !== 1 || !Array.isArray(m.jobs))
    throw new CalderaError('E_FORMAT', `${join(workDir, MANIFEST_FILE)} is not a version-1 job manifest`);
  return m;
}

export function jobResultPath(workDir: string, job: Pick<MatrixJob, 'id'>): string {
  assertObject(job, 'jobResultPath', 'job', 'a MatrixJob');
  return join(workDir, 'results', `${job.id}.safetensors`);
}

export async function hasJobResult(workDir: string, job: Pick<MatrixJob, 'id'>): Promise<boolean> {
  assertObject(job, 'hasJobResult', 'job', 'a MatrixJob');
  return exists(jobResultPath(workDir, job));
}

/** Jobs of the manifest whose outputs are not on disk yet. */
export async function missingJobs(workDir: string, manifest: JobManifest): Promise<MatrixJob[]> {
  assertObject(manifest, 'missingJobs', 'manifest', 'a JobManifest');
  const out: MatrixJob[] = [];
  for (const j of manifest.jobs) if (!(await hasJobResult(workDir, j))) out.push(j);
  return out;
}

/**
 * Jobs largest first (by m·n, then by n, since the Hessian side costs more; stable otherwise). Handing out jobs in this
 * order keeps the tail of a parallel run short: the last job to start is one of the smallest.
 */
export function largestFirst<T extends { m: number; n: number }>(jobs: readonly T[]): T[] {
  assertObject(jobs, 'largestFirst', 'jobs', 'an array of jobs');
  return jobs
    .map((j, k) => ({ j, k }))
    .sort((a, b) => b.j.m * b.j.n - a.j.m * a.j.n || b.j.n - a.j.n || a.k - b.k)
    .map(({ j }) => j);
}

/**
 * Shard `i` of `count`: jobs dealt {@link largestFirst} to the least loaded shard (cost m·n), ties to the lowest index,
 * so that shards get near-equal work. Deterministic; every job lands in exactly one shard; a shard's jobs come in the
 * manifest's order.
 */
export function shardJobs<T extends { m: number; n: number }>(
  jobs: readonly T[],
  index: number,
  count: number,
): T[] {
  assertObject(jobs, 'shardJobs', 'jobs', 'an array of jobs');
  if (!Number.isInteger(count) || count <= 0 || !Number.isInteger(index) || index < 0 || index >= count)
    throw new CalderaError('E_VALUE', `shard must be i/n with 0 ≤ i < n, got ${index}/${count}`);
  const load = new Array<number>(count).fill(0);
  const mine = new Set<T>();
  for (const j of largestFirst(jobs)) {
    let s = 0;
    for (let t = 1; t < count; t++) if (load[t]! < load[s]!) s = t;
    load[s]! += j.m * j.n;
    if (s === index) mine.add(j);
  }
  return jobs.filter((j) => mine.has(j));
}

async function loadWeight(manifest: JobManifest, job: MatrixJob): Promise<Tensor<'f32'>> {
  const store = await openSafetensorsDir(manifest.model);
  try {
    const raw = await store.readRaw(job.weight.tensor);
    if (sha256Hex(raw) !== job.weight.sha256) {
      throw new CalderaError(
        'E_FORMAT',
        `job ${job.name}: weight '${job.weight.tensor}' in ${manifest.model} does not match the manifest's sha256`,
      );
    }
    const t = await store.readTensor(job.weight.tensor);
    if (t.shape.length !== 2 || t.shape[0] !== job.m || t.shape[1] !== job.n)
      throw new CalderaError(
        'E_SHAPE',
        `job ${job.name}: weight shape [${t.shape}] is not [${job.m}, ${job.n}]`,
      );
    if (t.dtype !== 'f32' && t.dtype !== 'f16' && t.dtype !== 'bf16' && t.dtype !== 'f64')
      throw new CalderaError('E_DTYPE', `job ${job.name}: weight dtype ${t.dtype} is not a float type`);
    return t.dtype === 'f32' ? (t as Tensor<'f32'>) : cast(t, 'f32');
  } finally {
    await store.close();
  }
}

async function loadHessian(workDir: string, job: MatrixJob): Promise<Tensor<'f64'> | null> {
  const ref = job.hessian;
  if (!ref) return null;
  const path = join(workDir, ref.file);
  // readWholeFile, not readFile: Node's readFile refuses files over 2 GiB (a 23170² f64 Hessian and up)
  let buf: ArrayBuffer;
  try {
    buf = await readWholeFile(path);
  } catch (e) {
    const err = toCalderaError(e, `reading ${path}`);
    throw new CalderaError(err.code, `job ${job.name}: Hessian ${path} cannot be read (${err.message})`, {
      cause: e,
    });
  }
  if (buf.byteLength !== ref.n * ref.n * 8 || sha256Hex(buf) !== ref.sha256) {
    throw new CalderaError(
      'E_FORMAT',
      `job ${job.name}: Hessian ${path} is corrupted (${buf.byteLength} bytes, sha256 does not match the manifest); ` +
        'delete it and run again: it is rebuilt from the Hessian chunks (a run keeps a Hessian file that is there)',
    );
  }
  return tensor('f64', [ref.n, ref.n], new Float64Array(buf));
}

/**
 * Phase-2 job: decompose one matrix from its content-checked inputs and write the result atomically under the job's
 * id. Idempotent: an output already on disk is kept (and reports no progress). A missing or corrupted input fails with
 * a CalderaError naming the job and the file. `onProgress` is {@link compressLayerWithSpec}'s, within the decomposition.
 */
export async function executeMatrixJob(
  workDir: string,
  manifest: JobManifest,
  job: MatrixJob,
  options: LayerRunOptions = {},
): Promise<'cached' | 'computed'> {
  assertObject(manifest, 'executeMatrixJob', 'manifest', 'a JobManifest');
  assertObject(job, 'executeMatrixJob', 'job', 'a MatrixJob');
  const handles = optionsOf(options, 'executeMatrixJob');
  const out = jobResultPath(workDir, job);
  if (await exists(out)) return 'cached';
  throwIfAborted(handles.signal, `job ${job.name}`);
  const w = await loadWeight(manifest, job);
  const h = await loadHessian(workDir, job);
  const t0 = performance.now();
  let r;
  try {
    r = compressLayerWithSpec(w, h, job.name, job.spec, { ...handles, overwriteH: true }); // H read for this job only
  } catch (e) {
    if (isCalderaError(e)) throw e;
    throw new CalderaError('E_VALUE', `job ${job.name}: ${(e as Error).message}`, { cause: e });
  }
  const seconds = (performance.now() - t0) / 1000;
  await mkdir(join(workDir, 'results'), { recursive: true });
  await writeSafetensors(out, r.replacement.tensors, {
    metadata: {
      caldera_job: JSON.stringify({
        id: job.id,
        name: job.name,
        error: r.error,
        bitsPerWeight: r.bitsPerWeight,
        rank: r.rank,
        seconds,
        meta: r.replacement.meta,
      }),
    },
  });
  return 'computed';
}

/**
 * Read a finished job's output back as a {@link LayerResult}. `E_MISSING` when there is no output file; `E_FORMAT`
 * naming the file when it is truncated or corrupt, or its `caldera_job` metadata is malformed or of another job.
 */
export async function readJobResult(workDir: string, job: MatrixJob): Promise<LayerResult> {
  assertObject(job, 'readJobResult', 'job', 'a MatrixJob');
  const path = jobResultPath(workDir, job);
  const reader = await openResultFile(path, `job ${job.name}: result ${path}`, 'is missing');
  try {
    const info = metadataJson(reader.metadata, 'caldera_job', path) as {
      id: string;
      name: string;
      error: number;
      bitsPerWeight: number;
      rank: number;
      seconds: number;
      meta: CalderaLayerMeta;
    } | null;
    if (!info || typeof info !== 'object' || info.id !== job.id || info.name !== job.name)
      throw new CalderaError('E_FORMAT', `${path} is not the result of job ${job.name}`);
    for (const field of ['error', 'bitsPerWeight', 'rank', 'seconds'] as const)
      if (typeof info[field] !== 'number')
        throw new CalderaError(
          'E_FORMAT',
          `${path}: metadata 'caldera_job' field '${field}' must be a number, got ${describeValue(info[field])}`,
        );
    if (info.meta === null || typeof info.meta !== 'object')
      throw new CalderaError(
        'E_FORMAT',
        `${path}: metadata 'caldera_job' field 'meta' must be an object, got ${describeValue(info.meta)}`,
      );
    const tensors: Record<string, Tensor> = {};
    for (const n of reader.names()) tensors[n] = await reader.readTensor(n);
    return {
      name: info.name,
      error: info.error,
      bitsPerWeight: info.bitsPerWeight,
      rank: info.rank,
      seconds: info.seconds,
      replacement: { tensors, meta: info.meta },
    };
  } finally {
    await reader.close();
  }
}
