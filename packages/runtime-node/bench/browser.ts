/**
 * Decode in a browser (headless Chromium, `/usr/bin/chromium`): the benchmark's CALDERA model (as bench/run.ts builds
 * it: hidden 1024, MLP 2816, 8 layers, vocab 8192 with a tied f16 head; rank 64; ≈ 100 M parameters) built in a Web
 * Worker of a cross-origin-isolated page, its decode tokens/s on the worker's thread and with a 2-thread decode pool
 * (Web Workers), and one CALDERA layer's single-row product at the model's shapes, alone and split. The package's
 * sources are bundled for the browser with esbuild, as an app would. Run by `bench/run.ts --browser`; JSON Lines on
 * stdout; prints nothing (a note on stderr) without Chromium or playwright-core. Each copy of the model keeps its
 * blocks' layers in one model's kernel arenas, as the loaders do: a Chromium renderer holds at most about 120
 * WebAssembly memories, and with a memory per layer (and per worker part) the two copies would need about 180. With
 * `--large`, also bench/large.ts's TinyLlama-1.1B-shaped model (154 layers; ≈ 1.2 GB with its 2-thread copy), with the
 * number of its layers that run fused.
 */
import { browserBundle, launchChromium, openPageWhen, serveFiles } from '../src/testing/chromium.js';
import { emit } from './emit.js';
import type { BenchLine } from '../../../scripts/bench-line.js';

const quick = process.argv.includes('--quick');
const large = process.argv.includes('--large');

/** Runs in the page's Web Worker: builds the model, measures, returns the cases. */
const WORKER = `
import {
  bestRowMs, blocksOf, CalderaLinear, createDecodePool, decodeRate, DenseF16Linear, f32ArrayToF16, KernelArenas,
  LlamaModel, onDecodePool, parseModelConfig, randomDecomposition, Rng, tensor, TINYLLAMA_CONFIG,
} from '/bench.js';
const DECODE = ${quick ? 6 : 24};
const LARGE = ${large};
async function run() {
  const cfg = parseModelConfig({
    architectures: ['LlamaForCausalLM'], hidden_size: 1024, intermediate_size: 2816, num_hidden_layers: 8,
    num_attention_heads: 16, num_key_value_heads: 8, vocab_size: 8192, tie_word_embeddings: true,
  });
  const { hiddenSize: d, vocabSize: V } = cfg;
  const rng = new Rng(7);
  const arenas = new KernelArenas();
  const blocks = blocksOf(cfg, (m, n) => new CalderaLinear(randomDecomposition(m, n, 64, rng), null, { arenas }));
  const head = new DenseF16Linear(f32ArrayToF16(rng.fillNormal(new Float32Array(V * d), 0, 0.05)), V, d);
  const model = new LlamaModel(cfg, {
    embed: tensor('f16', [V, d], head.bits), blocks, norm: new Float32Array(d).fill(1), head,
  });
  const prompt = Array.from({ length: 16 }, (_, i) => (i * 37) % V);
  const cases = [];
  const one = decodeRate(model, prompt, DECODE);
  const decodePool = await createDecodePool({ threads: 2 });
  const two = decodeRate(onDecodePool(model, decodePool), prompt, DECODE);
  cases.push({ case: 'decode_caldera_browser', value: one, unit: 'tokens/s', refs: {}, info: { decode: DECODE } });
  cases.push({
    case: 'decode_caldera_browser_2threads', value: two, unit: 'tokens/s',
    refs: { oneThread: one, speedupVs1Thread: two / one }, info: { threads: decodePool.threads },
  });
  // one layer, one row: best of 5 × 200 calls
  const best = (layer, x) => bestRowMs(layer, x, 5);
  for (const [m, n] of [[2816, 1024], [1024, 2816], [1024, 1024]]) {
    const dec = randomDecomposition(m, n, 64, rng);
    const x = rng.fillNormal(new Float32Array(n));
    const layers = [new CalderaLinear(dec), new CalderaLinear(dec, null, { decodePool })];
    layers.forEach((l) => best(l, x)); // warm-up
    const [alone, split] = layers.map((l) => best(l, x));
    cases.push({
      case: 'caldera_layer_' + m + 'x' + n + '_browser_2threads', value: (m * n) / (split * 1e6), unit: 'G weights/s',
      refs: { microseconds: split * 1000, oneThreadMicroseconds: alone * 1000, speedupVs1Thread: alone / split },
    });
  }
  decodePool.dispose();
  return cases;
}
// the TinyLlama-1.1B-shaped model of bench/large.ts (154 layers: with a memory per layer, more than a renderer holds)
async function runLarge() {
  const cfg = parseModelConfig(TINYLLAMA_CONFIG);
  const { hiddenSize: d, vocabSize: V } = cfg;
  const rng = new Rng(11);
  const arenas = new KernelArenas();
  const blocks = blocksOf(cfg, (m, n) => new CalderaLinear(randomDecomposition(m, n, 64, rng), null, { arenas }));
  const layers = blocks.flatMap((b) => [b.q, b.k, b.v, b.o, b.gate, b.up, b.down]);
  const head = new DenseF16Linear(f32ArrayToF16(rng.fillNormal(new Float32Array(V * d), 0, 0.02)), V, d);
  const model = new LlamaModel(cfg, {
    embed: tensor('f16', [V, d], head.bits), blocks, norm: new Float32Array(d).fill(1), head,
  });
  const prompt = [1, 450, 4272, 338];
  const info = { layers: layers.length, fused: layers.filter((l) => l.fused).length, decode: 8 };
  const one = decodeRate(model, prompt, 8);
  const decodePool = await createDecodePool({ threads: 2 });
  const pooled = onDecodePool(model, decodePool);
  const two = decodeRate(pooled, prompt, 8);
  const pooledFused = pooled.weights.blocks.flatMap((b) => [b.q, b.k, b.v, b.o, b.gate, b.up, b.down]);
  decodePool.dispose();
  return [
    { case: 'decode_caldera_1b_browser', value: one, unit: 'tokens/s', refs: {}, info },
    {
      case: 'decode_caldera_1b_browser_2threads', value: two, unit: 'tokens/s',
      refs: { oneThread: one, speedupVs1Thread: two / one },
      info: { ...info, fused: pooledFused.filter((l) => l.fused).length },
    },
  ];
}
run()
  .then(async (cases) => (LARGE ? [...cases, ...(await runLarge())] : cases))
  .then(postMessage, (e) => postMessage({ error: String((e && e.stack) || e) }));
`;

const PAGE = `<!doctype html><script type="module">
const w = new Worker('/worker.js', { type: 'module' });
w.onmessage = (e) => { window.result = e.data; };
w.onerror = (e) => { window.result = { error: String(e.message) }; };
</script>`;

const browser = await launchChromium();
if (!browser) {
  console.error('bench: browser cases skipped (no /usr/bin/chromium or playwright-core)');
  process.exit(0);
}
const server = await serveFiles({
  '/': PAGE,
  '/worker.js': WORKER,
  '/bench.js': await browserBundle(
    [
      "export * from './index.ts';",
      "export { f32ArrayToF16, Rng, tensor } from '@caldera/core';",
      "export { randomDecomposition } from '@caldera/lowrank';",
      "export { bestRowMs, blocksOf, decodeRate, onDecodePool, TINYLLAMA_CONFIG } from '../bench/decode.ts';",
    ].join('\n'),
  ),
});
try {
  const page = await openPageWhen(browser, `${server.base}/`, 'window.result !== undefined', 600_000);
  const result = await page.evaluate<{ error?: string } | Record<string, unknown>[]>('window.result');
  if (!Array.isArray(result)) throw new Error(`bench: browser cases failed: ${result.error}`);
  for (const c of result) {
    const {
      case: name,
      value,
      unit,
      refs,
      info,
    } = c as unknown as BenchLine & { value: number; unit: string };
    emit(name, value, unit, refs, info);
  }
} finally {
  await browser.close();
  server.close();
}
