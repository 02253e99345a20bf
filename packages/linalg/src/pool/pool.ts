/**
 * Worker pool over a shared WebAssembly memory. In Node, workers are `worker_threads` created from a
 * source string (`eval: true`); in a browser worker context that is cross-origin isolated, Web Workers
 * from a Blob URL. The calling thread publishes a task in a shared control block, works on it too, and
 * blocks with `Atomics.wait` until every block is done. Where blocking or shared memory is impossible
 * (a browser main thread, a page that is not cross-origin isolated) the pool runs single-threaded.
 */
import { CalderaError } from '@caldera/core';
import { createEngine, type Engine } from '../wasm/engine.js';
import {
  CLOSED,
  CTRL_BYTES,
  ctrlViews,
  FIN,
  GEN,
  NBLOCKS,
  NEXT,
  QUIT,
  runBlock,
  runBlocks,
  type Ctrl,
} from './protocol.js';
import { WORKER_SOURCE } from './worker-source.js';

/** Options of {@link createPool}. */
export interface PoolOptions {
  /**
   * Number of threads doing the work, the calling thread included (so `threads - 1` workers are
   * started). Default: the machine's available parallelism (`os.availableParallelism()` in Node,
   * `navigator.hardwareConcurrency` in browsers), at most 16.
   */
  threads?: number;
}

/** A handle on worker threads used by the kernels; pass it as `{ pool }` and `dispose()` it when done. */
export interface Pool {
  /** Threads that work on a task, the caller included (1 when running single-threaded). */
  readonly threads: number;
  /** True once {@link Pool.dispose} has been called. */
  readonly disposed: boolean;
  /**
   * True when the kernels use relaxed SIMD (fused multiply-add; current browsers), false for plain
   * SIMD128 (always in Node: the same bits on every Node version and CPU).
   */
  readonly relaxedSimd: boolean;
  /** Stop the workers and release the memory. Using the pool afterwards throws `E_VALUE`. */
  dispose(): void;
}

/** What the kernels need from a pool or from the default single-threaded executor. */
export interface Executor {
  readonly engine: Engine;
  readonly threads: number;
  /**
   * Run blocks `0..nblocks-1` of the task whose parameters `setParams` writes into the control block.
   */
  run(nblocks: number, setParams: (ctrl: Ctrl) => void): void;
  /** True while a call is using the engine's scratch memory (a nested call must not reuse it). */
  busy: boolean;
}

interface WorkerLike {
  terminate(): unknown;
  unref?: () => void;
}

interface NodeWorkerThreads {
  Worker: new (code: string, opts: { eval: true; workerData: unknown }) => WorkerLike;
}

function defaultThreads(): number {
  const os = getBuiltin<{ availableParallelism?: () => number; cpus(): unknown[] }>('node:os');
  if (os) return Math.min(16, os.availableParallelism?.() ?? os.cpus().length);
  const hc = (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator?.hardwareConcurrency;
  return Math.min(16, hc ?? 1);
}

function getBuiltin<T>(name: string): T | undefined {
  const proc = (globalThis as { process?: { getBuiltinModule?: (n: string) => unknown } }).process;
  return proc?.getBuiltinModule?.(name) as T | undefined;
}

/** True where the calling thread may block in `Atomics.wait` (Node, browser workers; not a page). */
function canBlock(): boolean {
  if (getBuiltin('node:worker_threads')) return true;
  const g = globalThis as { document?: unknown; WorkerGlobalScope?: unknown };
  return g.document === undefined && g.WorkerGlobalScope !== undefined;
}

/** Single-threaded executor: runs every block on the calling thread. */
export function localExecutor(engine: Engine): Executor {
  const ctrl = ctrlViews(new ArrayBuffer(CTRL_BYTES));
  return {
    engine,
    threads: 1,
    busy: false,
    run(nblocks, setParams) {
      setParams(ctrl);
      for (let b = 0; b < nblocks; b++) runBlock(ctrl, engine.exports, b);
    },
  };
}

class PoolImpl implements Pool, Executor {
  readonly threads: number;
  readonly engine: Engine;
  busy = false;
  private readonly ctrl: Ctrl;
  private readonly workers: WorkerLike[] = [];
  private blobUrl: string | undefined;
  private _disposed = false;

  constructor(threads: number, engine: Engine) {
    this.engine = engine;
    const wantWorkers = engine.shared && canBlock() ? threads - 1 : 0;
    this.ctrl = ctrlViews(engine.shared ? new SharedArrayBuffer(CTRL_BYTES) : new ArrayBuffer(CTRL_BYTES));
    this.ctrl.i32[NEXT] = CLOSED;
    const data = { module: engine.module, memory: engine.memory, ctrl: this.ctrl.i32.buffer };
    const wt = getBuiltin<NodeWorkerThreads>('node:worker_threads');
    try {
      for (let i = 0; i < wantWorkers; i++) {
        if (wt) {
          const w = new wt.Worker(WORKER_SOURCE, { eval: true, workerData: data });
          w.unref?.(); // an undisposed pool must not keep the process alive
          this.workers.push(w);
        } else {
          this.workers.push(this.browserWorker(data));
        }
      }
    } catch (cause) {
      this.dispose();
      throw new CalderaError('E_DEVICE', `createPool: could not start worker ${this.workers.length + 1}`, {
        cause,
      });
    }
    this.threads = this.workers.length + 1;
  }

  private browserWorker(data: unknown): WorkerLike {
    const g = globalThis as unknown as {
      Worker: new (url: string) => WorkerLike & { postMessage(d: unknown): void };
      URL: { createObjectURL(b: Blob): string; revokeObjectURL(u: string): void };
    };
    this.blobUrl ??= g.URL.createObjectURL(new Blob([WORKER_SOURCE], { type: 'text/javascript' }));
    const w = new g.Worker(this.blobUrl);
    w.postMessage(data);
    return w;
  }

  get disposed(): boolean {
    return this._disposed;
  }

  get relaxedSimd(): boolean {
    return this.engine.relaxedSimd;
  }

  run(nblocks: number, setParams: (ctrl: Ctrl) => void): void {
    if (this._disposed) throw new CalderaError('E_VALUE', 'pool has been disposed');
    if (this.workers.length === 0) {
      setParams(this.ctrl);
      for (let b = 0; b < nblocks; b++) runBlock(this.ctrl, this.engine.exports, b);
      return;
    }
    const ctrl = this.ctrl.i32;
    Atomics.store(ctrl, NEXT, CLOSED);
    setParams(this.ctrl);
    Atomics.store(ctrl, NBLOCKS, nblocks);
    Atomics.store(ctrl, FIN, 0);
    Atomics.store(ctrl, NEXT, 0);
    Atomics.add(ctrl, GEN, 1);
    Atomics.notify(ctrl, GEN);
    runBlocks(this.ctrl, this.engine.exports);
    for (;;) {
      const fin = Atomics.load(ctrl, FIN);
      if (fin >= nblocks) break;
      // A block takes well under a second; a minute without progress means a worker died mid-block.
      if (Atomics.wait(ctrl, FIN, fin, 60_000) === 'timed-out' && Atomics.load(ctrl, FIN) === fin) {
        this.dispose();
        throw new CalderaError(
          'E_DEVICE',
          `pool: a worker stopped responding (${fin} of ${nblocks} blocks done)`,
        );
      }
    }
    Atomics.store(ctrl, NEXT, CLOSED);
  }

  dispose(): void {
    if (this._disposed) return;
    this._disposed = true;
    const ctrl = this.ctrl.i32;
    Atomics.store(ctrl, QUIT, 1);
    Atomics.add(ctrl, GEN, 1);
    if (this.engine.shared) Atomics.notify(ctrl, GEN);
    for (const w of this.workers) void w.terminate();
    this.workers.length = 0;
    if (this.blobUrl) {
      (globalThis as unknown as { URL: { revokeObjectURL(u: string): void } }).URL.revokeObjectURL(
        this.blobUrl,
      );
    }
  }
}

/**
 * Create a worker pool for the kernels (`gemm`, `gemmInto`, `syrk`, …: pass `{ pool }`).
 * Falls back to a single thread where workers cannot be used (see the module notes); check
 * {@link Pool.threads}. Throws `E_DEVICE` when WebAssembly SIMD is unavailable or a worker cannot start.
 */
export function createPool(options: PoolOptions = {}): Pool {
  const threads = options.threads ?? defaultThreads();
  if (!Number.isInteger(threads) || threads < 1 || threads > 256) {
    throw new CalderaError(
      'E_VALUE',
      `createPool: threads must be an integer in [1, 256], got ${String(threads)}`,
    );
  }
  const engine = createEngine(threads > 1);
  if (!engine) throw new CalderaError('E_DEVICE', 'createPool: WebAssembly SIMD is not available here');
  return new PoolImpl(threads, engine);
}

/** The executor behind a pool created by {@link createPool}. */
export function poolExecutor(pool: Pool): Executor {
  if (!(pool instanceof PoolImpl)) {
    throw new CalderaError('E_VALUE', 'pool must be a handle returned by createPool()');
  }
  if (pool.disposed) throw new CalderaError('E_VALUE', 'pool has been disposed');
  return pool;
}
