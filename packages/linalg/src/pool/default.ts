/**
 * The executor used when a call passes no pool: one single-threaded engine per realm, created on first
 * use. It is a scratch cache (its memory only holds packed copies during a call; results never depend on
 * it); `null` when WebAssembly SIMD is unavailable, in which case the TypeScript kernels are used.
 */
import { createEngine } from '../wasm/engine.js';
import { localExecutor, type Executor } from './pool.js';

const cache: { executor?: Executor | null } = {};

/** The default single-threaded executor, or `null` without WebAssembly SIMD. */
export function defaultExecutor(): Executor | null {
  if (cache.executor === undefined) {
    const engine = createEngine(false);
    cache.executor = engine ? localExecutor(engine) : null;
  }
  return cache.executor;
}
