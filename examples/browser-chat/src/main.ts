// Loads /model/ (dist/model/, a Caldera checkpoint) onto WebGPU, with download and upload progress, and streams tokens
// into the page with tokens/s, the checkpoint's bits per weight and the GPU memory in use. The tokenizer is the checkpoint's tokenizer.json run by
// @huggingface/tokenizers. A service worker (sw.js) keeps the page, the bundle and the checkpoint for offline use.
// Without WebGPU (no navigator.gpu, no adapter) the same checkpoint runs on the CPU instead: @caldera/runtime-node's
// WebAssembly SIMD kernels in a Web Worker (cpu-worker.ts), its tokens streamed the same way.
import { Tokenizer } from '@huggingface/tokenizers';
import { CalderaError, stopTokenIdsOf, type GenerateOptions, type ModelConfig } from '@caldera/core';
import {
  createDevice,
  generate,
  loadModelFromUrl,
  type CalderaDevice,
  type KernelChoice,
  type LoadedWebGpuModel,
  type WebGpuModel,
} from '@caldera/runtime-webgpu';
import { HfTokenizer } from '@caldera/runtime-node';
import type { FromWorker, ToWorker } from './cpu-protocol.js';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const status = $('status');
const out = $('out');
const stats = $('stats');
const go = $<HTMLButtonElement>('go');
const offline = $('offline');
const tune = $<HTMLButtonElement>('tune');
const kernels = $('kernels');
/** State the headless test reads (examples/browser-chat/test.mjs). */
const testHooks = window as unknown as {
  chatReady?: boolean;
  chatError?: string;
  chatDone?: number;
  chatTokens?: number[];
  chatPromptIds?: number[];
  offlineReady?: boolean;
  /** A rebuilt site's worker is installed and waits for the page's "reload to use it". */
  updateReady?: boolean;
  /** Candidates tried by the last tuning run, once it has finished (or its error). */
  tuneDone?: number | string;
  /** Whether the model was loaded with a kernel choice tuned on an earlier visit. */
  kernelsTuned?: boolean;
};

const MiB = (bytes: number) => (bytes / 2 ** 20).toFixed(1);

function keepOffline(): void {
  if (!('serviceWorker' in navigator)) {
    offline.textContent = 'no service worker in this browser: needs the network on every visit';
    return;
  }
  const sw = navigator.serviceWorker;
  sw.register('/sw.js')
    .then((reg) => {
      // a rebuilt site installs its worker beside this page's; it takes over only when asked, and the page reloads
      // into it (switching a page midway mixed the two copies: the old model with the new tokenizer)
      const offerUpdate = (w: ServiceWorker) => {
        offline.textContent = 'a new version is saved for offline use: ';
        const reload = document.createElement('button');
        reload.textContent = 'reload to use it';
        reload.onclick = () => {
          reload.disabled = true;
          sw.addEventListener('controllerchange', () => location.reload());
          w.postMessage('skipWaiting');
        };
        offline.append(reload);
        testHooks.updateReady = true;
      };
      if (reg.waiting && sw.controller) offerUpdate(reg.waiting);
      reg.addEventListener('updatefound', () => {
        const w = reg.installing;
        w?.addEventListener('statechange', () => {
          if (w.state === 'installed' && sw.controller) offerUpdate(w);
        });
      });
      return sw.ready;
    })
    .then(() => {
      if (testHooks.updateReady) return;
      offline.textContent = sw.controller
        ? 'running from the offline copy: works without a network'
        : 'saved for offline use: the next visit works without a network';
      testHooks.offlineReady = true;
    })
    .catch((e: unknown) => (offline.textContent = `no offline copy: ${String(e)}`));
}

/** A file of the model that it may lack: its response when there is one, else null (offline too). */
async function optionalFile(url: string): Promise<Response | null> {
  const res = await fetch(url).catch(() => null);
  return res?.ok ? res : null;
}

/** What {@link loadTokenizer} gives. */
interface ModelTokenizer {
  tok: Tokenizer;
  /** generation_config.json, or null. */
  generationConfig: unknown;
  /**
   * The model's chat template (chat_template.jinja, else tokenizer_config.json's), rendered as transformers renders it
   * (runtime-node's `HfTokenizer.applyChatTemplate`); null when the model has none.
   */
  chatTemplate: HfTokenizer | null;
}

/** The checkpoint's tokenizer, its generation_config.json (null when it has none) and its chat template. */
async function loadTokenizer(): Promise<ModelTokenizer> {
  const res = await fetch('/model/tokenizer.json');
  if (!res.ok) throw new Error(`/model/tokenizer.json: HTTP ${res.status} ${res.statusText}`.trim());
  const tokJson = (await res.json()) as ConstructorParameters<typeof Tokenizer>[0];
  const tokCfg = await fetch('/model/tokenizer_config.json').then((r) => (r.ok ? r.json() : {}));
  const tok = new Tokenizer(tokJson, tokCfg);
  // its eos_token_id joins config.json's as stop tokens (Llama 3 chat models list <|eot_id|> only there)
  const generationConfig: unknown = await fetch('/model/generation_config.json').then((r) =>
    r.ok ? r.json() : null,
  );
  const template = await (await optionalFile('/model/chat_template.jinja'))?.text();
  // (a malformed file loses the template's special tokens, not the page: the plain prompt needs none of them)
  const specialTokens = (await (
    await optionalFile('/model/special_tokens_map.json')
  )
    ?.json()
    .catch(() => undefined)) as Record<string, unknown> | undefined;
  const templated = new HfTokenizer(tok, tokCfg, {
    ...(template === undefined ? {} : { chatTemplate: template }),
    ...(specialTokens === undefined ? {} : { specialTokens }),
  });
  return { tok, generationConfig, chatTemplate: templated.hasChatTemplate ? templated : null };
}

/**
 * The token ids of the prompt: with the chat template (when the model has one and the box is ticked) the prompt as a
 * user message, rendered, which places its own BOS; else the text after BOS.
 */
function promptIds(config: ModelConfig, { tok, chatTemplate }: ModelTokenizer, prompt: string): number[] {
  const encode = (text: string) => tok.encode(text, { add_special_tokens: false }).ids as number[];
  if (chatTemplate && $<HTMLInputElement>('chat').checked)
    return encode(chatTemplate.applyChatTemplate([{ role: 'user', content: prompt }]));
  return [config.bosTokenId ?? 0, ...encode(prompt)];
}

/** Wire the Generate button: `run` streams the token ids of a prompt (the GPU's generate, or the CPU worker's). */
function chat(
  config: ModelConfig,
  tokenizer: ModelTokenizer,
  run: (ids: number[], options: GenerateOptions) => AsyncIterable<number>,
): void {
  const { tok, generationConfig } = tokenizer;
  $('chat-option').hidden = tokenizer.chatTemplate === null;
  go.disabled = false;
  go.onclick = async () => {
    go.disabled = true;
    tune.disabled = true;
    const prompt = $<HTMLTextAreaElement>('prompt').value;
    let ids: number[];
    try {
      ids = promptIds(config, tokenizer, prompt);
    } catch (e) {
      // a template that fails (raises for this message, or goes past its limits) says so
      stats.textContent = String(e);
      testHooks.chatDone = 0;
      go.disabled = false;
      tune.disabled = false;
      return;
    }
    testHooks.chatPromptIds = ids;
    out.textContent = prompt;
    const gen = document.createElement('span');
    gen.className = 'gen';
    out.append(gen);
    const produced: number[] = [];
    let start = 0;
    stats.textContent = ''; // the last run's numbers are not this one's
    try {
      for await (const id of run(ids, {
        maxTokens: Number($<HTMLInputElement>('max').value),
        temperature: Number($<HTMLInputElement>('temp').value),
        topK: Number($<HTMLInputElement>('topk').value),
        seed: Date.now() % 1e9,
        stopTokens: stopTokenIdsOf(config, generationConfig).filter((id) => id !== config.bosTokenId),
      })) {
        if (produced.length === 0) start = performance.now();
        produced.push(id);
        gen.textContent = tok.decode(produced, { skip_special_tokens: true });
        const s = (performance.now() - start) / 1000;
        stats.textContent = `${produced.length} tokens · ${s > 0 ? ((produced.length - 1) / s).toFixed(1) : '–'} tokens/s (decode)`;
      }
      if (produced.length === 0)
        stats.textContent = `no tokens generated (the prompt's ${ids.length} tokens fill the context, or max tokens is 0)`;
    } catch (e) {
      stats.textContent = String(e);
    }
    testHooks.chatTokens = produced;
    testHooks.chatDone = produced.length;
    go.disabled = false;
    tune.disabled = false;
  };
  testHooks.chatReady = true;
}

/**
 * The CPU fallback: the checkpoint loaded by runtime-node in a Web Worker (the page stays responsive during each
 * forward pass), its tokens posted back one by one. `why`: what WebGPU said.
 */
async function runOnCpu(why: string): Promise<void> {
  const t0 = performance.now();
  status.textContent = `no WebGPU (${why}): loading the model for the CPU…`;
  const worker = new Worker('/cpu-worker.js', { type: 'module' });
  const send = (m: ToWorker) => worker.postMessage(m);
  const loaded = await new Promise<FromWorker & { type: 'loaded' }>((resolve, reject) => {
    worker.onerror = (e) => reject(new Error(`the CPU worker failed: ${e.message}`));
    worker.onmessage = ({ data: m }: MessageEvent<FromWorker>) => {
      if (m.type === 'download')
        status.textContent =
          `downloading ${m.file}: ${MiB(m.bytes)}` +
          (m.total ? ` of ${MiB(m.total)} MiB (${((100 * m.bytes) / m.total).toFixed(0)} %)` : ' MiB');
      else if (m.type === 'block')
        status.textContent = `loading for the CPU: block ${m.block} of ${m.blocks}`;
      else if (m.type === 'loaded') resolve(m);
      else if (m.type === 'error') reject(new Error(m.message));
    };
    send({ type: 'load', url: '/model/' });
  });
  const tokenizer = await loadTokenizer();
  const { config } = loaded;
  status.textContent =
    `CPU, ${loaded.simd ? 'WebAssembly SIMD' : 'JavaScript (no WebAssembly SIMD)'} in a Web Worker, ` +
    `${loaded.threads} decode thread${loaded.threads === 1 ? '' : 's'} ` +
    `(no WebGPU: ${why}) · ${config.numLayers} blocks, ${loaded.calderaLayers} CALDERA layers · ` +
    `${loaded.linearBitsPerWeight.toFixed(2)} bits/weight in the linears · ` +
    `${MiB(loaded.linearMemoryBytes)} MiB of linear layers in memory · ` +
    `loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s`;
  // one generation at a time (the button is disabled meanwhile): the worker's messages are this one's
  chat(config, tokenizer, async function* (ids, options) {
    const queue: FromWorker[] = [];
    let wake: (() => void) | null = null;
    worker.onmessage = ({ data }: MessageEvent<FromWorker>) => {
      queue.push(data);
      wake?.();
    };
    // a worker that dies (out of memory) ends the generation with its error rather than leaving it waiting
    worker.onerror = (e) => {
      queue.push({ type: 'error', message: `the CPU worker failed: ${e.message}` });
      wake?.();
    };
    send({ type: 'generate', ids, options });
    for (;;) {
      while (queue.length === 0) await new Promise<void>((r) => (wake = r));
      const m = queue.shift()!;
      if (m.type === 'token') yield m.id;
      else if (m.type === 'done') return;
      else if (m.type === 'error') throw new Error(m.message);
    }
  });
}

/** A kernel choice saved under `key` by an earlier tuning run, or null. */
function readChoice(key: string): KernelChoice | null {
  try {
    const text = localStorage.getItem(key);
    const v: unknown = text === null ? null : JSON.parse(text);
    return typeof v === 'object' && v !== null ? (v as KernelChoice) : null;
  } catch {
    return null;
  }
}

function showKernels(model: WebGpuModel, how: string): void {
  const c = model.kernelChoice;
  kernels.textContent =
    `kernels (${how}): ${c.lanes} lanes per row, ${c.vectorWorkgroup} invocations per vector kernel, gate step ` +
    `${c.gateStep}${c.rowsPerLane ? `, ${c.rowsPerLane} rows per lane` : ''}` +
    `${c.codeBatch === 8 ? '' : `, ${c.codeBatch} codes per batch of loads`}` +
    ` · ${model.dispatchesPerToken} launches per token`;
}

/**
 * The Tune button: WebGpuModel.tuneKernels() times kernel choices on this GPU and keeps the fastest; the choice is
 * saved under `key` (localStorage) so that the next visit loads with it.
 */
function wireTuning(model: WebGpuModel, key: string): void {
  tune.hidden = false;
  tune.disabled = false;
  tune.onclick = async () => {
    tune.disabled = true;
    go.disabled = true;
    try {
      const report = await model.tuneKernels({
        onProgress: (c) =>
          (kernels.textContent = `tuning: candidate ${c.done}, ${
            c.stepMs === null
              ? `rejected (${c.rejected})`
              : `${c.stepMs.toFixed(2)} ms per step against ${c.againstMs!.toFixed(2)}`
          }`),
      });
      localStorage.setItem(key, JSON.stringify(report.choice));
      showKernels(
        model,
        `tuned: decode step ${report.initial.stepMs.toFixed(2)} → ${report.stepMs.toFixed(2)} ms, ${report.tried.length} candidates`,
      );
      testHooks.tuneDone = report.tried.length;
    } catch (e) {
      kernels.textContent = `tuning failed: ${String(e)}`;
      testHooks.tuneDone = String(e);
    }
    tune.disabled = false;
    go.disabled = false;
  };
}

async function main(): Promise<void> {
  let dev: CalderaDevice;
  try {
    dev = await createDevice();
  } catch (e) {
    // no navigator.gpu, no adapter (or no device from it): run on the CPU
    if (e instanceof CalderaError && e.code === 'E_DEVICE') return runOnCpu(e.message);
    throw e;
  }
  const t0 = performance.now();
  // the kernel choice tuned on an earlier visit on this adapter, if any (see wireTuning)
  const key = `caldera-kernels:${dev.description}`;
  const saved = readChoice(key);
  const load = (choice: KernelChoice) =>
    loadModelFromUrl(dev, '/model/', {
      contextLength: 512,
      ...choice,
      onDownload: ({ file, bytes, total }) =>
        (status.textContent =
          `downloading ${file}: ${MiB(bytes)}` +
          (total ? ` of ${MiB(total)} MiB (${((100 * bytes) / total).toFixed(0)} %)` : ' MiB')),
      // after the last block the loader compiles the GPU kernels (seconds on a CPU adapter)
      onProgress: ({ block, blocks }) =>
        (status.textContent =
          block < blocks ? `uploading to the GPU: block ${block} of ${blocks}` : 'compiling the GPU kernels'),
    });
  let loaded: LoadedWebGpuModel;
  let tuned = saved !== null;
  try {
    loaded = await load(saved ?? {});
  } catch (e) {
    // a saved choice this device no longer takes (E_VALUE, e.g. another browser's limits): forget it, load without
    if (!(saved && e instanceof CalderaError && e.code === 'E_VALUE')) throw e;
    localStorage.removeItem(key);
    tuned = false;
    loaded = await load({});
  }
  const { model, config, calderaMeta, linearBitsPerWeight } = loaded;
  testHooks.kernelsTuned = tuned;
  showKernels(model, tuned ? 'tuned on this GPU before' : 'the defaults for this adapter');
  wireTuning(model, key);
  const tokenizer = await loadTokenizer();
  const layers = Object.keys(calderaMeta?.layers ?? {}).length;
  status.textContent =
    `${dev.description}${dev.fallbackAdapter ? ' (CPU fallback)' : ''} · ${config.numLayers} blocks, ` +
    `${layers} CALDERA layers · ${linearBitsPerWeight.toFixed(2)} bits/weight in the linears · ` +
    `E8P products in ${model.f16Products ? 'packed f16' : 'f32'} · ` +
    `GPU memory ${MiB(model.weightBytes)} MiB of weights + ${MiB(model.cacheBytes)} MiB of KV cache and activations · ` +
    `loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s`;
  chat(config, tokenizer, (ids, options) => generate(model, ids, options));
}

keepOffline();
main().catch((e: unknown) => {
  status.textContent = `failed: ${String(e)}`;
  testHooks.chatError = String(e);
});
