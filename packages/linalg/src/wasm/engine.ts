/**
 * An engine is one instance of the kernels module with its own linear memory, used as scratch space for
 * packed operands. A pool owns one engine over a shared memory (its workers instantiate the same module
 * on that memory); calls without a pool use a single-threaded default engine.
 */
import { CalderaError } from '@caldera/core';
import { kernelsModule, MAX_PAGES, sharedMemorySupported, type KernelExports } from './module.js';

/** First byte used for operands (the module keeps no data; the first page is the warm-up area). */
export const HEAP_BASE = 65536;

/**
 * Warm-up problem inside the first page (below {@link HEAP_BASE}), so that workers may warm up while the
 * caller already uses the operand area: 16 × 16 output, k = 32 (A and B ≤ 16 KiB each). Its contents
 * are garbage by design. Mirrored in `worker-source.ts`.
 */
export const WARM_UP = { a: 1024, b: 1024 + 16384, c: 1024 + 32768, k: 32, reps: 200 } as const;
const PAGE = 65536;

/** A kernels instance over its memory. */
export interface Engine {
  readonly module: WebAssembly.Module;
  readonly memory: WebAssembly.Memory;
  readonly exports: KernelExports;
  readonly shared: boolean;
  /** The kernels use relaxed SIMD (fused multiply-add), where the engine supports it. */
  readonly relaxedSimd: boolean;
}

/**
 * Instantiate the kernels over a fresh memory; `null` when WebAssembly SIMD is unavailable. `E_DEVICE` when the
 * host cannot reserve the memory: a memory that may grow to 4 GiB reserves its address space up front (in V8 about 8
 * GiB and guard regions for a growable memory, the whole 4 GiB for a shared one), which a virtual-memory limit (`ulimit
 * -v`, a batch scheduler's) can forbid; each pool thread and the default engine hold one.
 */
export function createEngine(shared: boolean): Engine | null {
  const useShared = shared && sharedMemorySupported();
  const km = kernelsModule(useShared);
  if (!km) return null;
  const module = km.module;
  let memory: WebAssembly.Memory;
  try {
    memory = new WebAssembly.Memory({ initial: 2, maximum: MAX_PAGES, shared: useShared });
  } catch (cause) {
    if (!(cause instanceof RangeError)) throw cause;
    throw new CalderaError(
      'E_DEVICE',
      'cannot reserve WebAssembly memory for the linear-algebra kernels (a memory that may grow to 4 GiB reserves ' +
        'its address space up front): a virtual-memory limit such as `ulimit -v` may forbid it; raise the limit, or ' +
        'use fewer threads',
      { cause },
    );
  }
  const instance = new WebAssembly.Instance(module, { env: { memory, abort: () => undefined } });
  const engine: Engine = {
    module,
    memory,
    exports: instance.exports as unknown as KernelExports,
    shared: useShared,
    relaxedSimd: km.relaxedSimd,
  };
  warmUp(engine);
  return engine;
}

/** Grow the memory so that bytes `[0, end)` exist. Throws `E_VALUE` beyond the 4 GiB wasm32 limit. */
export function ensureMemory(engine: Engine, end: number, what: string): void {
  const have = engine.memory.buffer.byteLength;
  if (end <= have) return;
  const pages = Math.ceil((end - have) / PAGE);
  if (have / PAGE + pages > MAX_PAGES) {
    throw new CalderaError(
      'E_VALUE',
      `${what}: needs ${end} bytes of wasm scratch memory, over the 4 GiB limit`,
    );
  }
  try {
    engine.memory.grow(pages);
  } catch (cause) {
    throw new CalderaError('E_DEVICE', `${what}: could not grow wasm memory to ${end} bytes`, { cause });
  }
}

/**
 * As {@link ensureMemory}, but false instead of an error when the memory cannot reach `end` (over 4 GiB, or the
 * host refused to grow it, as browsers with a memory cap do), so that callers can take their TypeScript path.
 */
export function tryEnsureMemory(engine: Engine, end: number, what: string): boolean {
  try {
    ensureMemory(engine, end, what);
    return true;
  } catch (e) {
    if (e instanceof CalderaError && (e.code === 'E_DEVICE' || e.code === 'E_VALUE')) return false;
    throw e;
  }
}

/**
 * Run each kernel on small problems a few times so V8 tiers it up to optimised code before real work
 * (a kernel first runs in the baseline compiler, 3–4× slower). Compiled code is shared by every instance
 * of the module in the process, workers included.
 */
export function warmUp(engine: Engine): void {
  const { a, b, c, k, reps } = WARM_UP;
  for (let r = 0; r < reps; r++) {
    engine.exports.sgemmPanels(a, b, c, k, 0, 4, 0, 2, 16, 16, 1, 0);
    engine.exports.dgemmPanels(a, b, c, k, 0, 4, 0, 4, 16, 16, 1, 0, 0, 0);
    engine.exports.dsymvLowerRows(a, 16, 0, 15, b, c);
  }
}
