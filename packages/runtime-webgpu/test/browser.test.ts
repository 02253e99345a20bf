/**
 * WebGPU in headless Chromium (SwiftShader): bundles test/browser-entry.ts with esbuild, serves it and a tiny
 * compressed checkpoint from 127.0.0.1, and checks a kernel result and the greedy tokens of the checkpoint against
 * runtime-node. Skipped (with the reason in the title) when /usr/bin/chromium or playwright-core is missing.
 */
import { build } from 'esbuild';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Rng, writeSafetensors } from '@caldera/core';
import { calderaCheckpointMeta } from '@caldera/lowrank';
import * as node from '@caldera/runtime-node';
import { compressLayers, randomLlamaTensors } from '../src/testing/tiny-model.js';

const CHROMIUM = '/usr/bin/chromium';
const FLAGS = [
  '--headless=new',
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

type Page = {
  on(event: 'console' | 'pageerror', f: (m: { text?(): string }) => void): void;
  goto(u: string): Promise<unknown>;
  evaluate<T>(f: string): Promise<T>;
};
type Chromium = {
  launchPersistentContext(
    dir: string,
    o: object,
  ): Promise<{ newPage(): Promise<Page>; close(): Promise<void> }>;
};

async function loadChromium(): Promise<{ chromium: Chromium | null; reason: string }> {
  if (!existsSync(CHROMIUM)) return { chromium: null, reason: `skipped: no ${CHROMIUM}` };
  try {
    const name = 'playwright-core';
    return {
      chromium: ((await import(/* @vite-ignore */ name)) as { chromium: Chromium }).chromium,
      reason: '',
    };
  } catch {
    return { chromium: null, reason: 'skipped: playwright-core is not installed' };
  }
}

const { chromium, reason } = await loadChromium();
const HF = {
  architectures: ['LlamaForCausalLM'],
  hidden_size: 64,
  intermediate_size: 96,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 40,
  tie_word_embeddings: true,
  max_position_embeddings: 64,
};

/** A random tiny Llama with q_proj and down_proj of block 0 compressed. */
async function tinyCheckpoint(dir: string): Promise<void> {
  const t = randomLlamaTensors(new Rng(21), { hidden: 64, kvDim: 32, intermediate: 96, vocab: 40, std: 0.2 });
  const layers = compressLayers(t, ['model.layers.0.self_attn.q_proj', 'model.layers.0.mlp.down_proj']);
  await writeSafetensors(join(dir, 'model.safetensors'), t);
  await writeFile(join(dir, 'config.json'), JSON.stringify(HF));
  await writeFile(join(dir, 'caldera.json'), JSON.stringify(calderaCheckpointMeta(layers)));
}

describe.skipIf(!chromium)(
  reason ? `in headless Chromium — ${reason}` : 'in headless Chromium (WebGPU)',
  () => {
    let server: Server | undefined;
    let base = '';
    let dir = '';
    const weightRequests: string[] = [];
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'caldera-webgpu-browser-'));
      await tinyCheckpoint(dir);
      const bundle = await build({
        entryPoints: [fileURLToPath(new URL('./browser-entry.ts', import.meta.url))],
        bundle: true,
        format: 'esm',
        platform: 'browser',
        target: 'es2022',
        write: false,
        logLevel: 'silent',
      });
      const files: Record<string, [string, string | Buffer]> = {
        '/': ['text/html', '<!doctype html><script type="module" src="/entry.js"></script>'],
        '/entry.js': ['text/javascript', bundle.outputFiles[0]!.text],
      };
      for (const f of ['config.json', 'caldera.json', 'model.safetensors'])
        files[`/model/${f}`] = ['application/octet-stream', await readFile(join(dir, f))];
      // answers a single-range `Range: bytes=a-b` with a 206, as static hosts do
      server = createServer((req, res) => {
        const hit = files[req.url ?? ''];
        const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
        if (req.url?.startsWith('/model/')) weightRequests.push(`${req.url} ${req.headers.range ?? 'whole'}`);
        if (hit && range && typeof hit[1] !== 'string') {
          const [a, b] = [Number(range[1]), Math.min(Number(range[2]), hit[1].byteLength - 1)];
          res.writeHead(206, {
            'Content-Type': hit[0],
            'Content-Range': `bytes ${a}-${b}/${hit[1].byteLength}`,
          });
          return void res.end(hit[1].subarray(a, b + 1));
        }
        res.writeHead(hit ? 200 : 404, { 'Content-Type': hit?.[0] ?? 'text/plain' });
        res.end(hit?.[1] ?? 'not found');
      });
      await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    });
    afterAll(async () => {
      server?.close();
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    it('runs a matvec kernel and greedy-decodes a compressed checkpoint like runtime-node', async () => {
      const profile = await mkdtemp(join(tmpdir(), 'caldera-chromium-'));
      const ctx = await chromium!.launchPersistentContext(profile, { executablePath: CHROMIUM, args: FLAGS });
      try {
        const page = await ctx.newPage();
        const logs: string[] = [];
        page.on('console', (m) => logs.push(m.text?.() ?? ''));
        page.on('pageerror', (e) => logs.push(String(e)));
        await page.goto(`${base}/`);
        type R = {
          error?: string;
          kernelOk: boolean;
          tokens: number[];
          logits: number[];
          compressedLayers: number;
          fallback: boolean;
          adapter: string;
        };
        const res = await page.evaluate<R>('window.result');
        expect(res.error, logs.join('\n')).toBeUndefined();
        expect(res.kernelOk).toBe(true);
        expect(res.adapter.length).toBeGreaterThan(0);
        expect(res.tokens).toHaveLength(8);
        expect(res.compressedLayers).toBe(2);
        // the weights' header first (the plan), then the whole file
        expect(weightRequests.filter((r) => r.startsWith('/model/model.safetensors'))).toEqual([
          '/model/model.safetensors bytes=0-65535',
          '/model/model.safetensors whole',
        ]);
        const cpu = (await node.loadModel(dir)).model;
        const want: number[] = [];
        for await (const t of node.generate(cpu, [1, 7, 30], { maxTokens: 8 })) want.push(t);
        expect(res.tokens).toEqual(want);
        // the page's cache then holds positions 0..9 (3 prompt tokens + 7 fed-back tokens); token 4 goes at 10.
        // f32 on both sides, different summation order: 1e-3 absolute on logits of size ~1–10
        const cache = new node.KVCache(cpu.config, 32);
        cpu.forward([1, 7, 30, ...want.slice(0, 7)], cache);
        const l = cpu.forward([4], cache);
        for (let i = 0; i < 5; i++) expect(Math.abs(res.logits[i]! - l[i]!)).toBeLessThan(1e-3);
      } finally {
        await ctx.close();
        await rm(profile, { recursive: true, force: true });
      }
    }, 120_000);
  },
);
