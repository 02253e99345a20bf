/**
 * Threads for single-token decode. Each large CALDERA layer's rows of Q̂ are split over the threads, every worker
 * holding its rows' codes in a shared WebAssembly memory of its own (with its own E8P tables, so nothing is written by
 * two threads): per product the calling thread rotates the input, copies x' into the workers' memories, publishes the
 * layer's job in a shared control block, computes its own rows, and blocks with `Atomics.wait` until every worker has
 * finished; then it gathers the rows and applies the low-rank term and the output rotation (caldera-kernel.ts). A
 * large dense layer's weights live in one shared memory that every thread's kernel instance reads, each computing a
 * range of the output rows (matvec.ts).
 *
 * Node ≥ 20.16 only (`worker_threads` through `process.getBuiltinModule`, and `receiveMessageOnPort` through which a
 * worker takes each new layer synchronously); elsewhere, or with one thread, the pool has no workers and layers run
 * whole on the calling thread.
 */
import { CalderaError } from '@caldera/core';
import { CALDERA_SHARED_WASM_BASE64 } from '../generated/caldera-shared-wasm.js';
import { MATVEC_SHARED_WASM_BASE64 } from '../generated/matvec-shared-wasm.js';
import { WARM_UP_CALLS, warmUpCaller, warmUpSlice } from './caldera-kernel.js';
import { nodeBuiltinSync } from '../node-builtins.js';
import { checkHeapBase, embeddedModule } from './wasm-module.js';

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
/**
 * Set by a worker that stopped (an error outside a job, its thread exiting), which also adds {@link STOPPED_FIN} to
 * FIN so that a caller waiting for it wakes: the pool is then unusable (E_DEVICE).
 */
const STOPPED = 6;
const STOPPED_FIN = 1 << 20;
/** Workers that have started (their collector taken, warmed up): the pool waits for all before it is returned. */
const READY = 7;
/** How long a pool waits for its workers to start before it fails with E_DEVICE. */
const START_TIMEOUT_MS = 30_000;
/** Job id of a job that only makes the workers read their messages (dropped layers). */
const NO_LAYER = -1;
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
 * Worker threads for single-token decode; pass it as `{ decodePool }` to the loaders (or to a linear layer) and
 * `dispose()` it when done. The workers keep a layer's rows until the layer is garbage-collected or the pool is
 * disposed; a pool is driven by one thread at a time.
 */
export interface DecodePool {
  /** Threads that compute a layer's rows, the caller included (1 without workers). */
  readonly threads: number;
  /** True once {@link DecodePool.dispose} has been called. */
  readonly disposed: boolean;
  /**
   * Stop the workers (required to free their memory: a pool that is only dropped keeps its threads). A layer built
   * with the pool then throws `E_VALUE` on the products it would split — a CALDERA layer's of fewer than 20 rows, a
   * dense layer's of one row; others still run.
   */
  dispose(): void;
}

/**
 * One worker's part of a layer: the shared memory it works in, and the call it makes there for each job — `fn` of the
 * shared-memory build of asm/caldera.ts (`splitRows` on the worker's own rows) or of asm/matvec.ts (a dense kernel on
 * a range of rows of a memory all threads share) with `args`.
 */
export interface WorkerTask {
  readonly memory: WebAssembly.Memory;
  readonly module: 'caldera' | 'matvec';
  readonly fn: string;
  readonly args: readonly number[];
}

/** What the layers' kernels (caldera-kernel.ts, matvec.ts) need of a pool (not exported from the package). */
export interface DecodeExecutor extends DecodePool {
  /** Give worker `t` (0-based, `threads - 1` of them) its task of a new layer; returns the layer's job id. */
  register(tasks: readonly (WorkerTask | null)[]): number;
  /** Run layer `id` on every worker while `own()` runs on the calling thread; returns when all are done. */
  run(id: number, own: () => void): void;
  /** Let the workers drop layer `id`'s tasks once `owner` (the layer's kernel) has been garbage-collected. */
  track(owner: object, id: number): void;
  /**
   * `E_DEVICE` once a worker stopped (it may still be writing): for a layer's products that run on the caller alone but
   * in a memory the workers also write. After `dispose()` the workers are gone, and such products run.
   */
  assertRunnable(): void;
}

interface NodeWorker {
  terminate(): unknown;
  unref(): void;
  on(event: 'error' | 'exit', listener: () => void): void;
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
 * A worker: warms up on its own tiny slice, then, for each layer it is sent, instantiates the shared-memory build of
 * asm/caldera.ts (its own rows of Q̂) or asm/matvec.ts (a dense layer's memory, shared by all threads) and makes that
 * layer's call on each published job (slot numbers as above).
 */
const WORKER_SOURCE = `
'use strict';
const { workerData, receiveMessageOnPort } = require('node:worker_threads');
const GEN = ${GEN}, QUIT = ${QUIT}, JOB = ${JOB}, FIN = ${FIN}, FAILED = ${FAILED}, FAILED_WHY = ${FAILED_WHY};
const STOPPED = ${STOPPED}, STOPPED_FIN = ${STOPPED_FIN}, READY = ${READY}, NO_LAYER = ${NO_LAYER};
const SPIN = ${SPIN};
const ctrl = new Int32Array(workerData.ctrl);
const modules = workerData.modules;
const port = workerData.port;
// layer id -> { task, run }: task null for a layer this worker has no rows of
const layers = new Map();
let quitting = false;
function stopped() {
  if (quitting) return;
  quitting = true;
  Atomics.store(ctrl, STOPPED, 1);
  Atomics.add(ctrl, FIN, STOPPED_FIN);
  Atomics.notify(ctrl, FIN);
}
process.on('exit', stopped);
// A worker allocates almost nothing, so its heap is never collected by itself, and the memories of dropped layers would
// stay alive: after dropping some, it collects explicitly, with the function of a context made while the pool has
// --expose-gc set (until every worker is ready).
const collect = require('node:vm').runInNewContext('gc');
// new layers and dropped ones, in the order the calling thread posted them. Node's postMessage puts a message in the
// receiving port's queue before it returns, so a layer registered before its first job is here by then; were it not,
// the job reports FAILED_WHY 1 (E_DEVICE), it does not hang.
function take() {
  let dropped = false;
  for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) {
    const { id, task } = m.message;
    if (task === undefined) dropped = layers.delete(id) || dropped;
    else layers.set(id, { task, run: null });
  }
  if (dropped) collect();
}
function runJob(id) {
  if (id === NO_LAYER || !layers.has(id)) take();
  if (id === NO_LAYER) return;
  const layer = layers.get(id);
  if (layer === undefined) {
    Atomics.store(ctrl, FAILED_WHY, 1);
    Atomics.store(ctrl, FAILED, id + 1);
    return;
  }
  if (layer.task === null) return;
  try {
    if (layer.run === null) {
      const { memory, module, fn, args } = layer.task;
      const f = new WebAssembly.Instance(modules[module], { env: { memory } }).exports[fn];
      layer.run = () => f(...args);
    }
    layer.run();
  } catch {
    Atomics.store(ctrl, FAILED_WHY, 2);
    Atomics.store(ctrl, FAILED, id + 1);
  }
}
function serve() {
  {
    // warm up (V8's optimised code) on the worker's own tiny slice
    const { memory, args } = workerData.warm;
    const ex = new WebAssembly.Instance(modules.caldera, { env: { memory } }).exports;
    for (let i = 0; i < ${WARM_UP_CALLS}; i++) ex.splitRows(args[0]);
  }
  Atomics.add(ctrl, READY, 1);
  Atomics.notify(ctrl, READY);
  let gen = 0;
  for (;;) {
    let g = Atomics.load(ctrl, GEN);
    for (let i = 0; g === gen && i < SPIN; i++) g = Atomics.load(ctrl, GEN);
    if (g === gen) {
      Atomics.wait(ctrl, GEN, gen);
      continue;
    }
    gen = g;
    if (Atomics.load(ctrl, QUIT) !== 0) {
      quitting = true;
      return;
    }
    runJob(Atomics.load(ctrl, JOB));
    Atomics.add(ctrl, FIN, 1);
    Atomics.notify(ctrl, FIN);
  }
}
try {
  serve();
} catch {
  stopped();
}
`;

function defaultThreads(): number {
  const os = nodeBuiltinSync<{ availableParallelism?: () => number; cpus(): unknown[] }>('node:os');
  return Math.min(16, os ? (os.availableParallelism?.() ?? os.cpus().length) : 1);
}

class DecodePoolImpl implements DecodeExecutor {
  readonly threads: number;
  private readonly ctrl: Int32Array;
  private readonly workers: NodeWorker[] = [];
  private readonly ports: NodePort[] = [];
  private nextId = 0;
  private busy = false;
  /**
   * Layers whose kernels were collected: the workers drop their parts (read at once through a job of no layer, run
   * from the event loop, never inside another job).
   */
  private readonly dropped = new FinalizationRegistry<number>((id) => {
    if (this._disposed || this.stopped()) return;
    for (const p of this.ports) p.postMessage({ id });
    try {
      if (!this.busy) this.run(NO_LAYER, () => {});
    } catch {
      // a stopped worker: the next product reports it
    }
  });
  private _disposed = false;

  constructor(
    threads: number,
    modules: { caldera: WebAssembly.Module | null; matvec: WebAssembly.Module | null },
  ) {
    // the modules are compiled only where workers are possible (createDecodePool)
    const wt = nodeBuiltinSync<NodeWorkerThreads>('node:worker_threads');
    const workers = wt && modules.caldera && modules.matvec ? threads - 1 : 0;
    this.ctrl = new Int32Array(
      workers > 0 ? new SharedArrayBuffer(CTRL_SLOTS * 4) : new ArrayBuffer(CTRL_SLOTS * 4),
    );
    // the workers take their collector from a context made while --expose-gc is set (V8 flags are per process): set
    // until all have started, unless the process runs with it anyway
    const v8 = workers > 0 ? nodeBuiltinSync<{ setFlagsFromString(f: string): void }>('node:v8') : undefined;
    const exposed = typeof (globalThis as { gc?: unknown }).gc === 'function';
    if (v8 && !exposed) v8.setFlagsFromString('--expose-gc');
    try {
      for (let i = 0; i < workers; i++) {
        const { port1, port2 } = new wt!.MessageChannel();
        this.ports.push(port1);
        const w = new wt!.Worker(WORKER_SOURCE, {
          eval: true,
          workerData: { modules, ctrl: this.ctrl.buffer, port: port2, warm: warmUpSlice() },
          transferList: [port2],
        });
        w.unref(); // an undisposed pool must not keep the process alive
        // a worker that dies (an error in its thread, killed by Node) between products: the next one is E_DEVICE
        w.on('error', () => this.markStopped());
        w.on('exit', () => this.markStopped());
        this.workers.push(w);
      }
      if (workers > 0) this.waitReady(workers);
    } catch (cause) {
      this.dispose();
      throw new CalderaError('E_DEVICE', `createDecodePool: could not start ${workers} worker threads`, {
        cause,
      });
    } finally {
      if (v8 && !exposed) v8.setFlagsFromString('--no-expose-gc');
    }
    this.threads = this.workers.length + 1;
    if (workers > 0) warmUpCaller();
  }

  /** Block until all `workers` have started (a worker that fails counts as stopped), within the time limit. */
  private waitReady(workers: number): void {
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (let ready = Atomics.load(this.ctrl, READY); ready < workers && !this.stopped();) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${workers - ready} of ${workers} workers did not start in time`);
      Atomics.wait(this.ctrl, READY, ready, Math.min(left, 100));
      ready = Atomics.load(this.ctrl, READY);
    }
    if (this.stopped()) throw new Error('a worker failed while starting');
  }

  get disposed(): boolean {
    return this._disposed;
  }

  register(tasks: readonly (WorkerTask | null)[]): number {
    this.checkLive();
    if (tasks.length !== this.workers.length)
      throw new Error(`decode pool: ${tasks.length} tasks for ${this.workers.length} workers`);
    const id = this.nextId++;
    // every worker hears of every layer (null: it has no rows of it), synchronously when it first gets a job for it
    tasks.forEach((task, t) => this.ports[t]!.postMessage({ id, task }));
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
      Atomics.store(ctrl, FAILED, 0);
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
        while (done < workers && !this.stopped()) {
          Atomics.wait(ctrl, FIN, done);
          done = Atomics.load(ctrl, FIN);
        }
      }
      this.checkLive();
      const failed = Atomics.load(ctrl, FAILED);
      if (failed !== 0)
        throw new CalderaError(
          'E_DEVICE',
          Atomics.load(ctrl, FAILED_WHY) === 1
            ? `decode pool: a worker never received layer ${failed - 1}`
            : `decode pool: a worker could not run layer ${failed - 1} (instantiating its memory or running it failed)`,
        );
    } finally {
      this.busy = false;
    }
  }

  /** True once a worker has stopped (its thread failed or exited). */
  private stopped(): boolean {
    return Atomics.load(this.ctrl, STOPPED) !== 0;
  }

  /** A worker stopped, as the worker itself reports it (STOPPED, and FIN raised so that a waiting caller wakes). */
  private markStopped(): void {
    if (this._disposed || this.stopped()) return;
    Atomics.store(this.ctrl, STOPPED, 1);
    Atomics.add(this.ctrl, FIN, STOPPED_FIN);
    Atomics.notify(this.ctrl, FIN);
  }

  assertRunnable(): void {
    if (this.stopped())
      throw new CalderaError('E_DEVICE', 'decode pool: a worker thread stopped; create a new pool');
  }

  private checkLive(): void {
    if (this._disposed) throw new CalderaError('E_VALUE', 'decode pool: used after dispose()');
    this.assertRunnable();
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
  // workers are possible in Node with shared memory only: elsewhere nothing is compiled or allocated
  const possible =
    threads > 1 &&
    nodeBuiltinSync('node:worker_threads') !== undefined &&
    typeof SharedArrayBuffer === 'function';
  const modules = possible
    ? {
        caldera: embeddedModule(CALDERA_SHARED_WASM_BASE64),
        matvec: embeddedModule(MATVEC_SHARED_WASM_BASE64),
      }
    : { caldera: null, matvec: null };
  // every instance writes its module's static data below KERNEL_BASE: check that it stays there (as the unshared
  // builds are checked)
  for (const [name, mod] of Object.entries(modules))
    if (mod) {
      const memory = new WebAssembly.Memory({ initial: 2, maximum: 2, shared: true });
      checkHeapBase(new WebAssembly.Instance(mod, { env: { memory } }).exports, `${name} kernel (shared)`);
    }
  return new DecodePoolImpl(threads, modules);
}

/** The pool's kernel side; `E_VALUE` for an object that {@link createDecodePool} did not make. */
export function decodeExecutor(pool: DecodePool): DecodeExecutor {
  if (!(pool instanceof DecodePoolImpl))
    throw new CalderaError('E_VALUE', 'decodePool: not a pool from createDecodePool()');
  return pool;
}
