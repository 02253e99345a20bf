// The CPU fallback of the chat (no WebGPU adapter): @caldera/runtime-node's WebAssembly SIMD kernels, in a Web Worker
// so that the page stays responsive while a forward pass runs (each is synchronous CPU work) and the kernels'
// modules compile off the main thread. It loads /model/ with loadModelFromUrl and streams generate()'s tokens back.
// When the page is cross-origin isolated (serve.mjs sends the headers) a decode pool starts Web Workers of its own,
// one per core but one, and each token's larger products are split over them (the same tokens as on one thread).
import {
  AttentionKernel,
  blockLinearNames,
  createDecodePool,
  generate,
  loadModelFromUrl,
  type LoadedModel,
} from '@caldera/runtime-node';
import type { FromWorker, ToWorker } from './cpu-protocol.js';

const scope = self as unknown as {
  onmessage: ((e: MessageEvent<ToWorker>) => void) | null;
  postMessage(m: FromWorker): void;
};
const post = (m: FromWorker) => scope.postMessage(m);
let loaded: LoadedModel | null = null;

async function load(url: string): Promise<void> {
  // 1 thread (no workers) where the page is not cross-origin isolated
  const decodePool = await createDecodePool();
  let linearMemoryBytes = 0;
  loaded = await loadModelFromUrl(url, {
    decodePool,
    onPlan: (plan) => (linearMemoryBytes = plan.parts.linears + plan.parts.arenas),
    onDownload: ({ file, bytes, total }) => post({ type: 'download', file, bytes, total }),
    onProgress: ({ block, blocks }) => post({ type: 'block', block, blocks }),
  });
  const { model, config, calderaMeta } = loaded;
  let weights = 0;
  for (let b = 0; b < config.numLayers; b++)
    for (const { name } of blockLinearNames(b)) {
      const l = model.linear(name);
      weights += l.inFeatures * l.outFeatures;
    }
  post({
    type: 'loaded',
    config,
    calderaLayers: Object.keys(calderaMeta?.layers ?? {}).length,
    linearBitsPerWeight: (8 * model.linearBytes()) / weights,
    linearMemoryBytes,
    simd: AttentionKernel.available(),
    threads: decodePool.threads,
  });
}

async function run(ids: number[], options: ToWorker & { type: 'generate' }): Promise<void> {
  if (!loaded) throw new Error('no model loaded');
  for await (const id of generate(loaded.model, ids, options.options)) post({ type: 'token', id });
  post({ type: 'done' });
}

// one request at a time (the page waits for 'loaded' and 'done')
scope.onmessage = (e) => {
  const m = e.data;
  const task = m.type === 'load' ? load(m.url) : run(m.ids, m);
  task.catch((err: unknown) => post({ type: 'error', message: String(err) }));
};
