/**
 * tfjs-backend-wasm (XNNPACK, WebAssembly SIMD + threads) as a reference for matmul, loaded lazily; the
 * backend is created once per benchmark run. `null` when it cannot be loaded.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

type Tf = typeof import('@tensorflow/tfjs-core');

export interface TfjsRef {
  tf: Tf;
  threads: number;
}

const state: { ref?: Promise<TfjsRef | null> } = {};

/** The tfjs core with the wasm backend active and `threads` threads requested. */
export function tfjsWasm(threads: number): Promise<TfjsRef | null> {
  state.ref ??= load(threads);
  return state.ref;
}

async function load(threads: number): Promise<TfjsRef | null> {
  try {
    const tf = await import('@tensorflow/tfjs-core');
    const wasm = await import('@tensorflow/tfjs-backend-wasm');
    const req = createRequire(import.meta.url);
    const dist = dirname(req.resolve('@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm'));
    wasm.setWasmPaths(join(dist, '/'));
    wasm.setThreadsCount(threads);
    if (!(await tf.setBackend('wasm'))) return null;
    await tf.ready();
    return { tf, threads: wasm.getThreadsCount() };
  } catch {
    return null;
  }
}
