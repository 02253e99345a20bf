// Loads /model/ (dist/model/, a Caldera checkpoint) onto WebGPU, with download and upload progress, and streams tokens
// into the page with tokens/s, the checkpoint's bits per weight and the GPU memory in use. The tokenizer is the checkpoint's tokenizer.json run by
// @huggingface/tokenizers. A service worker (sw.js) keeps the page, the bundle and the checkpoint for offline use.
import { Tokenizer } from '@huggingface/tokenizers';
import { stopTokenIdsOf } from '@caldera/core';
import { createDevice, generate, loadModelFromUrl } from '@caldera/runtime-webgpu';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const status = $('status');
const out = $('out');
const stats = $('stats');
const go = $<HTMLButtonElement>('go');
const offline = $('offline');
/** State the headless test reads (examples/browser-chat/test.mjs). */
const testHooks = window as unknown as {
  chatReady?: boolean;
  chatError?: string;
  chatDone?: number;
  chatTokens?: number[];
  chatPromptIds?: number[];
  offlineReady?: boolean;
};

const MiB = (bytes: number) => (bytes / 2 ** 20).toFixed(1);

function keepOffline(): void {
  if (!('serviceWorker' in navigator)) {
    offline.textContent = 'no service worker in this browser: needs the network on every visit';
    return;
  }
  navigator.serviceWorker
    .register('/sw.js')
    .then(() => navigator.serviceWorker.ready)
    .then(() => {
      offline.textContent = navigator.serviceWorker.controller
        ? 'running from the offline copy: works without a network'
        : 'saved for offline use: the next visit works without a network';
      testHooks.offlineReady = true;
    })
    .catch((e: unknown) => (offline.textContent = `no offline copy: ${String(e)}`));
}

async function main(): Promise<void> {
  const dev = await createDevice();
  const t0 = performance.now();
  const { model, config, calderaMeta, linearBitsPerWeight } = await loadModelFromUrl(dev, '/model/', {
    contextLength: 512,
    onDownload: ({ file, bytes, total }) =>
      (status.textContent =
        `downloading ${file}: ${MiB(bytes)}` +
        (total ? ` of ${MiB(total)} MiB (${((100 * bytes) / total).toFixed(0)} %)` : ' MiB')),
    onProgress: ({ block, blocks }) =>
      (status.textContent = `uploading to the GPU: block ${block} of ${blocks}`),
  });
  const tokJson = await (await fetch('/model/tokenizer.json')).json();
  const tokCfg = await fetch('/model/tokenizer_config.json').then((r) => (r.ok ? r.json() : {}));
  const tok = new Tokenizer(tokJson, tokCfg);
  // its eos_token_id joins config.json's as stop tokens (Llama 3 chat models list <|eot_id|> only there)
  const generationConfig: unknown = await fetch('/model/generation_config.json').then((r) =>
    r.ok ? r.json() : null,
  );
  const layers = Object.keys(calderaMeta?.layers ?? {}).length;
  status.textContent =
    `${dev.description}${dev.fallbackAdapter ? ' (CPU fallback)' : ''} · ${config.numLayers} blocks, ` +
    `${layers} CALDERA layers · ${linearBitsPerWeight.toFixed(2)} bits/weight in the linears · ` +
    `E8P products in ${model.f16Products ? 'packed f16' : 'f32'} · ` +
    `GPU memory ${MiB(model.weightBytes)} MiB of weights + ${MiB(model.cacheBytes)} MiB of KV cache and activations · ` +
    `loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s`;
  go.disabled = false;
  go.onclick = async () => {
    go.disabled = true;
    const prompt = $<HTMLTextAreaElement>('prompt').value;
    const ids = [
      config.bosTokenId ?? 0,
      ...(tok.encode(prompt, { add_special_tokens: false }).ids as number[]),
    ];
    testHooks.chatPromptIds = ids;
    out.textContent = prompt;
    const gen = document.createElement('span');
    gen.className = 'gen';
    out.append(gen);
    const produced: number[] = [];
    let start = 0;
    try {
      for await (const id of generate(model, ids, {
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
    } catch (e) {
      stats.textContent = String(e);
    }
    testHooks.chatTokens = produced;
    testHooks.chatDone = produced.length;
    go.disabled = false;
  };
  testHooks.chatReady = true;
}

keepOffline();
main().catch((e: unknown) => {
  status.textContent = `failed: ${String(e)}`;
  testHooks.chatError = String(e);
});
