/**
 * Threads for single-token decode: each large CALDERA layer's rows of Q̂ are split over the threads, every worker
 * holding its rows' codes in a shared WebAssembly memory of its own (with its own E8P tables, so nothing is written by
 * two threads). Per product the calling thread rotates the input, copies x' into the workers' memories, publishes the
 * layer's job in a shared control block, computes its own rows, and blocks with `Atomics.wait` until every worker has
 * finished; then it gathers the rows and applies the low-rank term and the output rotation (caldera-kernel.ts).
 *
 * Node only (`worker_threads`, and `receiveMessageOnPort` through which a worker takes each new layer synchronously);
 * elsewhere, or with one thread, the pool has no workers and layers run whole on the calling thread.
 */
import { CalderaError } from '@caldera/core';
import { CALDERA_SHARED_WASM_BASE64 } from '../generated/caldera-shared-wasm.js';
import { WARM_UP_CALLS, warmUpCaller, warmUpSlice } from './caldera-kernel.js';
import { embeddedModule } from './wasm-module.js';

/** Control block slots (i32). */
const GEN = 0;
const QUIT = 1;
const JOB = 2;
const FIN = 3;
/**
 * Set by a worker whose part of a job failed: the layer's id + 1, and in FAILED_WHY 1 when the worker never received
 * the layer (a bug), 2 when instantiating or running it threw (e.g. no memory for the instance). Reported as E_DEVICE.
 */
const FAILED = 4;
const FAILED_WHY = 5;
const CTRL_SLOTS = 8;
/**
 * Polls of the control block before a thread sleeps in `Atomics.wait` (≈ 20–60 µs): in decode the next layer's job
 * follows within microseconds, and a sleeping thread takes tens of microseconds to wake.
 */
const SPIN = 20000;

/** Options of {@link createDecodePool}. */
export interface DecodePoolOptions {
  /**
   * Threads that compute a layer's rows, the calling thread included (`threads - 1` workers are started). Default: the
   * machine's available parallelism (`os.availableParallelism()`), at most 16. 1: no workers.
   */
  threads?: number;
}

/**
 * Worker threads for single-token decode; pass it as `{ decodePool }` to the loaders (or to `CalderaLinear`) and
 * `dispose()` it when done. A layer built with it keeps its rows in the workers until the pool is disposed; a pool is
 * driven by one thread at a time.
 */
export interface DecodePool {
  /** Threads that compute a layer's rows, the caller included (1 without workers). */
  readonly threads: number;
  /** True once {@link DecodePool.dispose} has been called. */
  readonly disposed: boolean;
  /** Stop the workers. A layer built with the pool then throws `E_VALUE` on its next single-row product. */
  dispose(): void;
}

/** One worker's part of a layer: its shared memory and the address of its layer record in it. */
export interface WorkerSlice {
  readonly memory: WebAssembly.Memory;
  readonly layerAt: number;
}

/** What the CALDERA kernel needs of a pool (not exported from the package). */
export interface DecodeExecutor extends DecodePool {
  /** Give worker `t` (0-based, `threads - 1` of them) its slice of a new layer; returns the layer's job id. */
  register(slices: readonly (WorkerSlice | null)[]): number;
  /** Run layer `id` on every worker while `own()` runs on the calling thread; returns when all are done. */
  run(id: number, own: () => void): void;
  /** Let the workers drop layer `id`'s slices once `owner` (the layer's kernel) has been garbage-collected. */
  track(owner: object, id: number): void;
}

interface NodeWorker {
  terminate(): unknown;
  unref(): void;
}

interface NodePort {
  postMessage(value: unknown): void;
  close(): void;
  unref?: () => void;
}

interface NodeWorkerThreads {
  Worker: new (
    code: string,
    opts: { eval: true; workerData: unknown; transferList: unknown[] },
  ) => NodeWorker;
  MessageChannel: new () => { port1: NodePort; port2: NodePort };
}

/**
 * A worker: warms up on its own tiny slice, then instantiates the shared-memory CALDERA module on each slice it is sent
 * and runs `splitRows` on the slice of each published job (slot numbers as above).
 */
const WORKER_SOURCE = `
'use strict';
const { workerData, receiveMessageOnPort } = require('node:worker_threads');
const GEN = ${GEN}, QUIT = ${QUIT}, JOB = ${JOB}, FIN = ${FIN}, FAILED = ${FAILED}, FAILED_WHY = ${FAILED_WHY};
const SPIN = ${SPIN};
const ctrl = new Int32Array(workerData.ctrl);
{
  // warm up (V8's optimised code) on the worker's own tiny slice
  const { memory, layerAt } = workerData.warm;
  const ex = new WebAssembly.Instance(workerData.module, { env: { memory } }).exports;
  for (let i = 0; i < ${WARM_UP_CALLS}; i++) ex.splitRows(layerAt);
}
const port = workerData.port;
const layers = new Map();
// new layers (instantiated on their memories) and dropped ones, as the calling thread posted them
function take() {
  for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) {
    const { id, memory, layerAt } = m.message;
    if (memory === undefined) layers.delete(id);
    else layers.set(id, { memory, layerAt, run: null });
  }
}
let jobs = 0;
function runJob(id) {
  // a new layer's message is there before its first job; drops are taken now and then
  if (!layers.has(id) || (++jobs & 255) === 0) take();
  const layer = layers.get(id);
  if (layer === undefined) {
    Atomics.store(ctrl, FAILED_WHY, 1);
    Atomics.store(ctrl, FAILED, id + 1);
    return;
  }
  try {
    layer.run ??= new WebAssembly.Instance(workerData.module, { env: { memory: layer.memory } }).exports.splitRows;
    layer.run(layer.layerAt);
  } catch {
    Atomics.store(ctrl, FAILED_WHY, 2);
    Atomics.store(ctrl, FAILED, id + 1);
  }
}
function serve() {
  let gen = 0;
  for (;;) {
    let g = Atomics.load(ctrl, GEN);
    for (let i = 0; g === gen && i < SPIN; i++) g = Atomics.load(ctrl, GEN);
    if (g === gen) {
      Atomics.wait(ctrl, GEN, gen);
      continue;
    }
    gen = g;
    if (Atomics.load(ctrl, QUIT) !== 0) return;
    runJob(Atomics.load(ctrl, JOB));
    Atomics.add(ctrl, FIN, 1);
    Atomics.notify(ctrl, FIN);
  }
}
serve();
`;

/** A Node built-in, loaded synchronously (`process.getBuiltinModule`), or undefined outside Node. */
function getBuiltin<T>(name: string): T | undefined {
  const proc = (globalThis as { process?: { getBuiltinModule?: (n: string) => unknown } }).process;
  return proc?.getBuiltinModule?.(name) as T | undefined;
}

function defaultThreads(): number {
  const os = getBuiltin<{ availableParallelism?: () => number; cpus(): unknown[] }>('node:os');
  return Math.min(16, os ? (os.availableParallelism?.() ?? os.cpus().length) : 1);
}

class DecodePoolImpl implements DecodeExecutor {
  readonly threads: number;
  private readonly ctrl: Int32Array;
  private readonly workers: NodeWorker[] = [];
  private readonly ports: NodePort[] = [];
  private nextId = 0;
  private busy = false;
  /** Layers whose kernels were collected: their slices are dropped from the workers (not to hold them until dispose). */
  private readonly dropped = new FinalizationRegistry<number>((id) => {
    if (!this._disposed) for (const p of this.ports) p.postMessage({ id });
  });
  private _disposed = false;

  constructor(threads: number, module: WebAssembly.Module | null) {
    const wt = getBuiltin<NodeWorkerThreads>('node:worker_threads');
    const workers = wt && module && typeof SharedArrayBuffer === 'function' ? threads - 1 : 0;
    this.ctrl = new Int32Array(
      workers > 0 ? new SharedArrayBuffer(CTRL_SLOTS * 4) : new ArrayBuffer(CTRL_SLOTS * 4),
    );
    try {
      for (let i = 0; i < workers; i++) {
        const { port1, port2 } = new wt!.MessageChannel();
        this.ports.push(port1);
        const w = new wt!.Worker(WORKER_SOURCE, {
          eval: true,
          workerData: { module, ctrl: this.ctrl.buffer, port: port2, warm: warmUpSlice() },
          transferList: [port2],
        });
        w.unref(); // an undisposed pool must not keep the process alive
        this.workers.push(w);
      }
    } catch (cause) {
      this.dispose();
      throw new CalderaError(
        'E_DEVICE',
        `createDecodePool: could not start worker ${this.workers.length + 1}`,
        {
          cause,
        },
      );
    }
    this.threads = this.workers.length + 1;
    if (workers > 0) warmUpCaller();
  }

  get disposed(): boolean {
    return this._disposed;
  }

  register(slices: readonly (WorkerSlice | null)[]): number {
    this.checkLive();
    if (slices.length !== this.workers.length)
      throw new Error(`decode pool: ${slices.length} slices for ${this.workers.length} workers`);
    const id = this.nextId++;
    // received by the worker (synchronously) when it first gets a job for this id, so before it runs it
    slices.forEach((s, t) => {
      if (s) this.ports[t]!.postMessage({ id, memory: s.memory, layerAt: s.layerAt });
    });
    return id;
  }

  track(owner: object, id: number): void {
    this.dropped.register(owner, id);
  }

  run(id: number, own: () => void): void {
    this.checkLive();
    if (this.busy)
      throw new CalderaError('E_VALUE', 'decode pool: already running a layer (one caller at a time)');
    this.busy = true;
    const ctrl = this.ctrl;
    const workers = this.workers.length;
    try {
      Atomics.store(ctrl, JOB, id);
      Atomics.store(ctrl, FIN, 0);
      Atomics.add(ctrl, GEN, 1);
      Atomics.notify(ctrl, GEN);
      try {
        own();
      } finally {
        // even when own() threw: the workers write into their memories until they report
        let done = Atomics.load(ctrl, FIN);
        for (let i = 0; done < workers && i < SPIN; i++) done = Atomics.load(ctrl, FIN);
        while (done < workers) {
          Atomics.wait(ctrl, FIN, done);
          done = Atomics.load(ctrl, FIN);
        }
      }
      const failed = Atomics.load(ctrl, FAILED);
      if (failed !== 0) {
        const why = Atomics.load(ctrl, FAILED_WHY);
        Atomics.store(ctrl, FAILED, 0);
        throw new CalderaError(
          'E_DEVICE',
          why === 1
            ? `decode pool: a worker never received layer ${failed - 1}`
            : `decode pool: a worker could not run layer ${failed - 1} (instantiating its memory or running it failed)`,
        );
      }
    } finally {
      this.busy = false;
    }
  }

  private checkLive(): void {
    if (this._disposed) throw new CalderaError('E_VALUE', 'decode pool: used after dispose()');
  }

  dispose(): void {
    if (this._disposed) return;
    this._disposed = true;
    if (this.workers.length > 0) {
      Atomics.store(this.ctrl, QUIT, 1);
      Atomics.add(this.ctrl, GEN, 1);
      Atomics.notify(this.ctrl, GEN);
    }
    for (const w of this.workers) void w.terminate();
    for (const p of this.ports) p.close();
  }
}

/**
 * Start a decode pool of `threads` threads (the caller included). With one thread, outside Node, or without
 * WebAssembly SIMD and threads it has no workers (`threads` is then 1) and layers run whole on the calling thread.
 */
export function createDecodePool(options: DecodePoolOptions = {}): DecodePool {
  const threads = options.threads ?? defaultThreads();
  if (!Number.isInteger(threads) || threads < 1 || threads > 256)
    throw new CalderaError(
      'E_VALUE',
      `createDecodePool: threads must be an integer in [1, 256], got ${threads}`,
    );
  return new DecodePoolImpl(threads, threads > 1 ? embeddedModule(CALDERA_SHARED_WASM_BASE64) : null);
}

/** The pool's kernel side; `E_VALUE` for an object that {@link createDecodePool} did not make. */
export function decodeExecutor(pool: DecodePool): DecodeExecutor {
  if (!(pool instanceof DecodePoolImpl))
    throw new CalderaError('E_VALUE', 'decodePool: not a pool from createDecodePool()');
  return pool;
}
