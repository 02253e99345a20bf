/**
 * Runs in headless Chromium (bundled by browser.test.ts): a dense matvec kernel against a JS loop, then a tiny
 * compressed checkpoint fetched from the test server, greedy-decoded on WebGPU.
 */
import { createDevice, generate, loadModelFromUrl } from '../src/index.js';
import { encodeDispatches, Kernels, readBuffer, storageBuffer } from '../src/kernels.js';

async function run(): Promise<unknown> {
  const dev = await createDevice();
  // kernel: 19×23 f32 matvec of small integers (exact in f32)
  const [m, n] = [19, 23];
  const w = Float32Array.from({ length: m * n }, (_, i) => (i % 7) - 3);
  const x = Float32Array.from({ length: n }, (_, i) => (i % 5) - 2);
  const k = new Kernels(dev);
  const out = storageBuffer(dev, new Float32Array(m), 'out');
  const enc = dev.device.createCommandEncoder();
  encodeDispatches(enc, [
    k.matvec(
      { buffer: storageBuffer(dev, w, 'w'), rows: m, cols: n, dtype: 'f32', rowWords: n },
      storageBuffer(dev, x, 'x'),
      out,
      { bias: null, accumulate: false, dummy: storageBuffer(dev, new Float32Array(4), 'd') },
    ),
  ]);
  dev.device.queue.submit([enc.finish()]);
  const got = Array.from(new Float32Array(await readBuffer(dev, out, m * 4)));
  const want = Array.from({ length: m }, (_, i) => {
    let s = 0;
    for (let j = 0; j < n; j++) s += w[i * n + j]! * x[j]!;
    return s;
  });
  const { model, calderaMeta } = await loadModelFromUrl(dev, '/model/', { contextLength: 32 });
  const tokens: number[] = [];
  for await (const t of generate(model, [1, 7, 30], { maxTokens: 8 })) tokens.push(t);
  const logits = Array.from((await model.forward([4])).slice(0, 5));
  model.dispose();
  return {
    adapter: dev.description,
    fallback: dev.fallbackAdapter,
    kernelOk: got.every((v, i) => v === want[i]),
    got,
    tokens,
    logits,
    compressedLayers: Object.keys(calderaMeta?.layers ?? {}).length,
  };
}

(window as unknown as { result: Promise<unknown> }).result = run().catch((e: unknown) => ({
  error: String((e as Error)?.stack ?? e),
}));
