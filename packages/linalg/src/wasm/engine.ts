/**
 * An engine is one instance of the kernels module with its own linear memory, used as scratch space for
 * packed operands. A pool owns one engine over a shared memory (its workers instantiate the same module
 * on that memory); calls without a pool use a single-threaded default engine.
 */
import { CalderaError } from '@caldera/core';
import { kernelsModule, MAX_PAGES, sharedMemorySupported, type KernelExports } from './module.js';

/** First byte used for operands (the module itself keeps no data, the first page stays reserved). */
export const HEAP_BASE = 65536;
const PAGE = 65536;

/** A kernels instance over its memory. */
export interface Engine {
  readonly module: WebAssembly.Module;
  readonly memory: WebAssembly.Memory;
  readonly exports: KernelExports;
  readonly shared: boolean;
}

/** Instantiate the kernels over a fresh memory; `null` when WebAssembly SIMD is unavailable. */
export function createEngine(shared: boolean): Engine | null {
  const useShared = shared && sharedMemorySupported();
  const module = kernelsModule(useShared);
  if (!module) return null;
  const memory = new WebAssembly.Memory({ initial: 2, maximum: MAX_PAGES, shared: useShared });
  const instance = new WebAssembly.Instance(module, { env: { memory, abort: () => undefined } });
  const engine: Engine = {
    module,
    memory,
    exports: instance.exports as unknown as KernelExports,
    shared: useShared,
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
 * Run each kernel on small problems a few times so V8 tiers it up to optimised code before real work
 * (a kernel first runs in the baseline compiler, 3–4× slower). Compiled code is shared by every instance
 * of the module in the process, workers included.
 */
export function warmUp(engine: Engine): void {
  const k = 64;
  ensureMemory(engine, HEAP_BASE + 3 * 8 * 64 * k, 'warm-up');
  const a = HEAP_BASE;
  const b = a + 8 * 64 * k;
  const c = b + 8 * 64 * k;
  for (let r = 0; r < 40; r++) {
    engine.exports.sgemmPanels(a, b, c, k, 0, 4, 0, 2, 16, 32, 1, 0);
    engine.exports.dgemmPanels(a, b, c, k, 0, 4, 0, 4, 16, 32, 1, 0);
  }
}
