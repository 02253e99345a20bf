/**
 * Threads for single-token decode. Each large CALDERA layer's rows of Q̂ are split over the threads, every worker
 * holding its rows' codes in a shared WebAssembly memory that only it computes in (its arena, with its own E8P tables,
 * or one of the layer's own; so nothing is written by two threads): per product the calling thread rotates the input,
 * copies x' into the workers' memories, publishes the layer's job in a shared control block, computes its own rows, and
 * blocks with `Atomics.wait` until every worker has finished; then it gathers the rows and applies the low-rank term
 * and the output rotation (caldera-kernel.ts). A large dense layer's weights live in a shared memory that every
 * thread's kernel instance reads, each computing a range of the output rows (matvec.ts).
 *
 * The workers are `worker_threads` in Node (≥ 20.16, through `process.getBuiltinModule`) and Web Workers from a Blob
 * URL in a browser's Web Worker that is cross-origin isolated (shared memory, and a caller that may block). A worker
 * spends its life in a loop that waits on the control block, so it reads a message (its start, a new layer, dropped
 * layers) only when the caller asks it to: the caller posts the message to every worker and publishes a
 * {@link YIELD} job, on which each worker leaves its loop; its message handler applies the message, reports the job
 * done and enters the loop again. That needs no synchronous receive, which a browser does not have. Elsewhere (a
 * page's main thread, a page that is not cross-origin isolated, an older Node), or with one thread, the pool has no
 * workers and layers run whole on the calling thread.
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
 * Set by a worker that stopped (an error in its loop or its message handler, its thread exiting), which also adds
 * {@link STOPPED_FIN} to FIN so that a caller waiting for it wakes: the pool is then unusable (E_DEVICE).
 */
const STOPPED = 6;
const STOPPED_FIN = 1 << 20;
/**
 * Job id on which the workers leave their loop to read the message the caller has just posted to each (one message
 * per such job); each reports it done once the message is applied.
 */
const YIELD = -1;
const CTRL_SLOTS = 7;
/** How long a pool waits for its workers to start before it fails with E_DEVICE. */
const START_TIMEOUT_MS = 30_000;
/**
 * Polls of the control block before a thread sleeps in `Atomics.wait` (≈ 20–60 µs): in decode the next layer's job
 * follows within microseconds, and a sleeping thread takes tens of microseconds to wake.
 */
const SPIN = 20000;

/** Options of {@link createDecodePool}. */
export interface DecodePoolOptions {
  /**
   * Threads that compute a layer's rows, the calling thread included (`threads - 1` workers are started). Default: the
   * machine's available parallelism in Node (`os.availableParallelism()`), one less in a browser
   * (`navigator.hardwareConcurrency - 1`: the browser's own threads — the page, its compositor, the collector — need a
   * core, and a thread that spins loses its turn to them), at most 16. 1: no workers.
   */
  threads?: number;
}

/**
 * Worker threads for single-token decode; pass it as `{ decodePool }` to the loaders (or to a linear layer) and
 * `dispose()` it when done. The workers keep a layer's rows until the layer is garbage-collected or the pool is
 * disposed (rows in a model's kernel arena are freed with the last layer of that arena); a pool is driven by one thread
 * at a time.
 */
export interface DecodePool {
  /** Threads that compute a layer's rows, the caller included (1 without workers). */
  readonly threads: number;
  /** True once {@link DecodePool.dispose} has been called. */
  readonly disposed: boolean;
  /**
   * Stop the workers and free what they hold, at once (a pool that is dropped is stopped only when the collector has
   * taken it and all the layers built with it, which hold it). A layer built with the pool then throws `E_VALUE` on
   * the products it would split — a CALDERA layer's of fewer than 20 rows, a dense layer's of one row; others still
   * run.
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

/** A worker as the pool drives it, in Node or in a browser. */
interface PoolWorker {
  post(message: unknown): void;
  terminate(): void;
}

/**
 * What a worker tells the pool: it has started (after its warm-up), or it stopped (it failed, its thread exited, a
 * message could not be read).
 */
interface WorkerEvents {
  onReady(): void;
  onStop(): void;
}

/** A worker's messages to the pool: 'ready' once started, 'stopped' when it failed. */
const workerMessage =
  ({ onReady, onStop }: WorkerEvents) =>
  (m: unknown) =>
    m === 'ready' ? onReady() : onStop();

interface NodeWorkerThreads {
  Worker: new (
    code: string,
    opts: { eval: true },
  ) => {
    postMessage(value: unknown): void;
    terminate(): unknown;
    unref(): void;
    on(event: 'message' | 'error' | 'exit', listener: (m: unknown) => void): void;
  };
}

interface BrowserWorker {
  postMessage(value: unknown): void;
  terminate(): void;
  onmessage: ((e: { data: unknown }) => void) | null;
  onerror: (() => void) | null;
  onmessageerror: (() => void) | null;
}

interface BrowserGlobals {
  Worker: new (url: string) => BrowserWorker;
  URL: { createObjectURL(b: Blob): string; revokeObjectURL(u: string): void };
  crossOriginIsolated?: boolean;
  document?: unknown;
  WorkerGlobalScope?: unknown;
  navigator?: { hardwareConcurrency?: number };
}

/**
 * A worker. Its first message starts it: it instantiates its warm-up slice and runs the split product on it (so that
 * its engine has optimised code before the first token), then says it is ready and enters its loop. In the loop it
 * waits for a job on the control block: a layer's id (it makes that layer's call: `fn` of the shared-memory build of
 * asm/caldera.ts on its own rows, or of asm/matvec.ts on a range of a memory every thread shares), QUIT, or YIELD, on
 * which it leaves the loop for the message the caller posted with it — a new layer `{ id, task }` (task null: it has
 * no rows of it) or dropped layers `{ drop }` — applies it, reports the job done and enters the loop again. Slot
 * numbers as above; the same source runs in Node (`require` exists) and in a browser.
 */
const WORKER_SOURCE = `
'use strict';
const GEN = ${GEN}, QUIT = ${QUIT}, JOB = ${JOB}, FIN = ${FIN}, FAILED = ${FAILED}, FAILED_WHY = ${FAILED_WHY};
const STOPPED = ${STOPPED}, STOPPED_FIN = ${STOPPED_FIN}, YIELD = ${YIELD}, SPIN = ${SPIN};
const node = typeof require === 'function';
const parent = node ? require('node:worker_threads').parentPort : null;
const post = (m) => (node ? parent.postMessage(m) : self.postMessage(m));
let ctrl = null;
let modules = null;
// A worker allocates almost nothing, so in Node its heap is never collected by itself, and the memories of dropped
// layers would stay alive: after dropping some, it collects explicitly, with the function of a context made while
// the pool has --expose-gc set (until every worker is ready). A browser collects its workers' heaps by itself.
let collect = () => {};
// layer id -> { task, run }: task null for a layer this worker has no rows of
const layers = new Map();
let gen = 0;
let quitting = false;
function stopped() {
  if (quitting || ctrl === null) return;
  quitting = true;
  Atomics.store(ctrl, STOPPED, 1);
  Atomics.add(ctrl, FIN, STOPPED_FIN);
  Atomics.notify(ctrl, FIN);
}
if (node) process.on('exit', stopped);
function start({ warm, ...data }) {
  ctrl = new Int32Array(data.ctrl);
  modules = data.modules;
  // without the flag (another thread of the process cleared it meanwhile) the worker only collects when V8 decides to
  if (node) {
    try {
      collect = require('node:vm').runInNewContext('gc');
    } catch {}
  }
  const ex = new WebAssembly.Instance(modules.caldera, { env: { memory: warm.memory } }).exports;
  for (let i = 0; i < ${WARM_UP_CALLS}; i++) ex.splitRows(warm.args[0]);
  post('ready');
}
function apply(m) {
  if (m.drop) {
    for (const id of m.drop) layers.delete(id);
    collect();
  } else layers.set(m.id, { task: m.task, run: null });
}
function runJob(id) {
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
// returns on YIELD (the next message re-enters it) and on QUIT
function serve() {
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
    const id = Atomics.load(ctrl, JOB);
    if (id === YIELD) return;
    runJob(id);
    Atomics.add(ctrl, FIN, 1);
    Atomics.notify(ctrl, FIN);
  }
}
function onMessage(m) {
  if (quitting) return;
  try {
    if (ctrl === null) start(m);
    else {
      apply(m);
      Atomics.add(ctrl, FIN, 1);
      Atomics.notify(ctrl, FIN);
    }
    serve();
  } catch {
    fail();
  }
}
// a failure the caller may be waiting on in the control block (a job) or for a message (its start)
function fail() {
  stopped();
  quitting = true;
  post('stopped');
}
if (node) {
  parent.on('message', onMessage);
  parent.on('messageerror', fail);
} else {
  self.onmessage = (e) => onMessage(e.data);
  self.onmessageerror = fail;
}
`;

/** Where a pool can have workers: `worker_threads` in Node, or Web Workers in a browser's isolated Web Worker. */
function workerKind(): 'node' | 'browser' | null {
  if (typeof SharedArrayBuffer !== 'function') return null;
  if (nodeBuiltinSync('node:worker_threads') !== undefined) return 'node';
  const g = globalThis as unknown as Partial<BrowserGlobals>;
  // shared memory can be posted only when cross-origin isolated; a page's main thread may not block in Atomics.wait
  const browser =
    typeof g.Worker === 'function' &&
    g.crossOriginIsolated === true &&
    g.document === undefined &&
    g.WorkerGlobalScope !== undefined;
  return browser ? 'browser' : null;
}

/** Start `count` workers of `kind`; `events(i)` are worker i's. */
function startWorkers(
  kind: 'node' | 'browser',
  count: number,
  events: (i: number) => WorkerEvents,
): { workers: PoolWorker[]; release(): void } {
  const workers: PoolWorker[] = [];
  let release = () => {};
  try {
    if (kind === 'node') {
      const wt = nodeBuiltinSync<NodeWorkerThreads>('node:worker_threads')!;
      for (let i = 0; i < count; i++) {
        const ev = events(i);
        const w = new wt.Worker(WORKER_SOURCE, { eval: true });
        w.on('message', workerMessage(ev));
        // a worker that dies (an error in its thread, killed by Node) between products: the next one is E_DEVICE
        w.on('error', ev.onStop);
        w.on('exit', ev.onStop);
        // an undisposed pool must not keep the process alive: after the listeners (a 'message' listener refs the
        // worker's port again, which kept the process running for ever)
        w.unref();
        workers.push({ post: (m) => w.postMessage(m), terminate: () => void w.terminate() });
      }
    } else {
      const g = globalThis as unknown as BrowserGlobals;
      const url = g.URL.createObjectURL(new Blob([WORKER_SOURCE], { type: 'text/javascript' }));
      // kept until the workers have started (the spec resolves it when a worker is created; some browsers did later)
      release = () => g.URL.revokeObjectURL(url);
      for (let i = 0; i < count; i++) {
        const ev = events(i);
        const onMessage = workerMessage(ev);
        const w = new g.Worker(url);
        w.onmessage = (e: { data: unknown }) => onMessage(e.data);
        w.onerror = ev.onStop;
        w.onmessageerror = ev.onStop;
        workers.push({ post: (m) => w.postMessage(m), terminate: () => w.terminate() });
      }
    }
  } catch (cause) {
    for (const w of workers) w.terminate();
    release();
    throw cause;
  }
  return { workers, release };
}

/** Pools of this thread whose workers are starting (they take their collector then): see {@link exposeGcWhileStarting}. */
let poolsStarting = 0;

/**
 * Set V8's `--expose-gc` (in Node, unless the process runs with it anyway) while any pool is starting: V8's flags are
 * per process, so the first pool to start sets it and the last to finish starting clears it, and a pool that starts
 * while another is starting keeps it set. `done()` once the pool's workers are ready or failed.
 */
export function exposeGcWhileStarting(): { done(): void } {
  const v8 = nodeBuiltinSync<{ setFlagsFromString(f: string): void }>('node:v8');
  if (!v8 || (poolsStarting === 0 && typeof (globalThis as { gc?: unknown }).gc === 'function'))
    return { done() {} };
  if (poolsStarting++ === 0) v8.setFlagsFromString('--expose-gc');
  return {
    done() {
      if (--poolsStarting === 0) v8.setFlagsFromString('--no-expose-gc');
    },
  };
}

function defaultThreads(): number {
  const os = nodeBuiltinSync<{ availableParallelism?: () => number; cpus(): unknown[] }>('node:os');
  if (os) return Math.min(16, os.availableParallelism?.() ?? os.cpus().length);
  // measured in headless Chromium on 2 cores, decode with 2 threads ran at 0.79–1.54× the speed of one
  const hc = (globalThis as Partial<BrowserGlobals>).navigator?.hardwareConcurrency;
  return Math.max(1, Math.min(16, (hc ?? 1) - 1));
}

/**
 * What stopping a pool's workers needs, apart from the pool (the workers' listeners and {@link abandoned} hold this,
 * never the pool, so that a pool nobody references can be collected).
 */
interface Workers {
  readonly ctrl: Int32Array;
  list: PoolWorker[];
  disposed: boolean;
}

/** True once a worker has stopped (its thread failed or exited). */
const hasStopped = (ctrl: Int32Array): boolean => Atomics.load(ctrl, STOPPED) !== 0;

/** A worker stopped, as the worker itself reports it (STOPPED, and FIN raised so that a waiting caller wakes). */
function markStopped({ ctrl, disposed }: Workers): void {
  if (disposed || hasStopped(ctrl)) return;
  Atomics.store(ctrl, STOPPED, 1);
  Atomics.add(ctrl, FIN, STOPPED_FIN);
  Atomics.notify(ctrl, FIN);
}

/** Make the workers leave their loop (QUIT) and terminate them; once only. */
function stopWorkers(w: Workers): void {
  if (w.disposed) return;
  w.disposed = true;
  if (w.list.length > 0) {
    Atomics.store(w.ctrl, QUIT, 1);
    Atomics.add(w.ctrl, GEN, 1);
    Atomics.notify(w.ctrl, GEN);
  }
  for (const worker of w.list) worker.terminate();
}

/**
 * Start `count` workers into `state.list`; `ready` resolves once all have started and rejects when one stops first.
 * A function of its own, not part of the pool's constructor: nothing the workers' listeners hold may reach the pool
 * (a closure there could capture `this`), or {@link abandoned} would never see it collected.
 */
function launchWorkers(
  kind: 'node' | 'browser',
  count: number,
  state: Workers,
): { ready: Promise<void>; release(): void } {
  let waiting = count;
  let settle: { resolve(): void; reject(e: Error): void } | undefined;
  const ready = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
  // a worker that stops after a failed start has been handled (the pool disposed) must not be an unhandled rejection
  ready.catch(() => {});
  const readyOnce = new Set<number>();
  const started = startWorkers(kind, count, (i) => ({
    onReady: () => {
      if (readyOnce.has(i)) return;
      readyOnce.add(i);
      if (--waiting === 0) settle!.resolve();
    },
    onStop: () => {
      markStopped(state);
      settle!.reject(new Error(`worker ${i + 1} of ${count} failed while starting`));
    },
  }));
  state.list = started.workers;
  return { ready, release: started.release };
}

/**
 * Stops the workers of a pool that was dropped without `dispose()` (and whose layers are gone too: they hold their
 * pool), so that its threads and the layers' parts they hold are freed.
 */
const abandoned = new FinalizationRegistry<Workers>(stopWorkers);

class DecodePoolImpl implements DecodeExecutor {
  readonly threads: number;
  private readonly state: Workers;
  private nextId = 0;
  private busy = false;
  /** Layers whose kernels were collected, for the workers to drop (with the next yield). */
  private readonly toDrop: number[] = [];
  private readonly dropped = new FinalizationRegistry<number>((id) => {
    if (this.state.disposed || this.stopped()) return;
    this.toDrop.push(id);
    // while busy (cannot happen: finalizers run between tasks) dropPending waits, and the next register takes them
    try {
      this.dropPending();
    } catch {
      // a stopped worker: the next product reports it
    }
  });
  /** Set once every worker has said it is ready (see {@link DecodePoolImpl.start}). */
  private ready: Promise<void> = Promise.resolve();
  /** Revokes the browser workers' Blob URL (once they have started). */
  private revokeUrl: (() => void) | undefined;

  constructor(
    threads: number,
    private readonly modules: { caldera: WebAssembly.Module; matvec: WebAssembly.Module } | null,
    kind: 'node' | 'browser' | null,
  ) {
    const count = kind && modules ? threads - 1 : 0;
    const ctrl = new Int32Array(
      count > 0 ? new SharedArrayBuffer(CTRL_SLOTS * 4) : new ArrayBuffer(CTRL_SLOTS * 4),
    );
    this.state = { ctrl, list: [], disposed: false };
    if (count === 0) {
      this.threads = 1;
      return;
    }
    try {
      const started = launchWorkers(kind!, count, this.state);
      abandoned.register(this, this.state, this.state);
      this.ready = started.ready;
      this.revokeUrl = started.release;
    } catch (cause) {
      throw new CalderaError('E_DEVICE', `createDecodePool: could not start ${count} worker threads`, {
        cause,
      });
    }
    this.threads = count + 1;
  }

  /**
   * Send every worker its start (the modules, the control block, a warm-up slice) and wait until all are ready, within
   * {@link START_TIMEOUT_MS}; in Node the workers take their collector from a context made while `--expose-gc` is set
   * (V8's flags are per process: set until all have started, unless the process runs with it anyway).
   */
  async start(): Promise<void> {
    if (this.state.list.length === 0) return;
    const exposeGc = exposeGcWhileStarting();
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      for (const w of this.state.list)
        w.post({ modules: this.modules, ctrl: this.state.ctrl.buffer, warm: warmUpSlice() });
      // the timer also keeps Node's event loop alive while the (unref'd) workers start
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`the workers did not start within ${START_TIMEOUT_MS / 1000} s`)),
          START_TIMEOUT_MS,
        );
      });
      await Promise.race([this.ready, timeout]);
    } catch (cause) {
      this.dispose();
      throw new CalderaError(
        'E_DEVICE',
        `createDecodePool: could not start ${this.state.list.length} worker threads`,
        { cause },
      );
    } finally {
      clearTimeout(timer);
      exposeGc.done();
      this.revokeUrl?.();
      this.revokeUrl = undefined;
    }
    warmUpCaller();
  }

  get disposed(): boolean {
    return this.state.disposed;
  }

  register(tasks: readonly (WorkerTask | null)[]): number {
    this.checkLive();
    if (tasks.length !== this.state.list.length)
      throw new Error(`decode pool: ${tasks.length} tasks for ${this.state.list.length} workers`);
    // layers dropped meanwhile (their finalizers ran while the pool was busy) go first
    this.dropPending();
    const id = this.nextId++;
    // every worker hears of every layer (task null: it has no rows of it)
    this.yieldWith((t) => ({ id, task: tasks[t] }));
    return id;
  }

  /** Tell every worker to drop the layers whose kernels were collected (the same list to each). */
  private dropPending(): void {
    if (this.toDrop.length === 0 || this.busy) return;
    this.checkLive(); // before the list is emptied: a stopped pool keeps it
    const drop = this.toDrop.splice(0);
    this.yieldWith(() => ({ drop }));
  }

  /**
   * Post `message(t)` to each worker t and wait until every worker has applied its message (a YIELD job). Checked
   * first, so that no message is ever posted without its YIELD.
   */
  private yieldWith(message: (t: number) => unknown): void {
    this.checkIdle();
    this.state.list.forEach((w, t) => w.post(message(t)));
    this.run(YIELD, () => {});
  }

  track(owner: object, id: number): void {
    this.dropped.register(owner, id);
  }

  run(id: number, own: () => void): void {
    this.checkIdle();
    this.busy = true;
    const { ctrl, list } = this.state;
    const workers = list.length;
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

  private stopped(): boolean {
    return hasStopped(this.state.ctrl);
  }

  assertRunnable(): void {
    if (this.stopped())
      throw new CalderaError('E_DEVICE', 'decode pool: a worker thread stopped; create a new pool');
  }

  private checkLive(): void {
    if (this.state.disposed) throw new CalderaError('E_VALUE', 'decode pool: used after dispose()');
    this.assertRunnable();
  }

  /** {@link DecodePoolImpl.checkLive}, and no job running (one caller at a time). */
  private checkIdle(): void {
    this.checkLive();
    if (this.busy)
      throw new CalderaError('E_VALUE', 'decode pool: already running a layer (one caller at a time)');
  }

  dispose(): void {
    abandoned.unregister(this.state);
    stopWorkers(this.state);
  }
}

/**
 * Start a decode pool of `threads` threads (the caller included); resolves once every worker has started. It has no
 * workers (`threads` is then 1) and layers run whole on the calling thread with one thread, without WebAssembly SIMD
 * or threads, and where workers are impossible: on a page's main thread (it may not block), in a page that is not
 * cross-origin isolated (no shared memory), in Node before 20.16. `E_DEVICE` when a worker cannot start.
 */
export async function createDecodePool(options: DecodePoolOptions = {}): Promise<DecodePool> {
  const threads = options.threads ?? defaultThreads();
  if (!Number.isInteger(threads) || threads < 1 || threads > 256)
    throw new CalderaError(
      'E_VALUE',
      `createDecodePool: threads must be an integer in [1, 256], got ${threads}`,
    );
  // where workers are impossible nothing is compiled or allocated
  const kind = threads > 1 ? workerKind() : null;
  const caldera = kind ? embeddedModule(CALDERA_SHARED_WASM_BASE64) : null;
  const matvec = kind ? embeddedModule(MATVEC_SHARED_WASM_BASE64) : null;
  const modules = caldera && matvec ? { caldera, matvec } : null;
  // every instance writes its module's static data below KERNEL_BASE: check that it stays there (as the unshared
  // builds are checked)
  for (const [name, mod] of Object.entries(modules ?? {})) {
    const memory = new WebAssembly.Memory({ initial: 2, maximum: 2, shared: true });
    checkHeapBase(new WebAssembly.Instance(mod, { env: { memory } }).exports, `${name} kernel (shared)`);
  }
  const pool = new DecodePoolImpl(threads, modules, kind);
  await pool.start();
  return pool;
}

/** The pool's kernel side; `E_VALUE` for an object that {@link createDecodePool} did not make. */
export function decodeExecutor(pool: DecodePool): DecodeExecutor {
  if (!(pool instanceof DecodePoolImpl))
    throw new CalderaError('E_VALUE', 'decodePool: not a pool from createDecodePool()');
  return pool;
}
