/**
 * Browser smoke test of the built package (dist/) in headless Chromium: on a cross-origin-isolated page
 * the main thread runs single-threaded (it may not block), a dedicated worker gets a real pool of Web
 * Workers from a Blob URL, and both give the right product. Skipped when Chromium, playwright-core or
 * the dist build is absent.
 */
import { pageModules } from './page-modules.js';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const here = dirname(fileURLToPath(import.meta.url));
const linalgDist = join(here, '..', 'dist', 'index.js');
const coreDist = join(here, '..', '..', 'core', 'dist', 'index.js');
const CHROMIUM = '/usr/bin/chromium';

type Chromium = {
  launch(o: object): Promise<{
    newPage(): Promise<{
      on(event: 'console' | 'pageerror', f: (m: { text(): string }) => void): void;
      goto(u: string): Promise<unknown>;
      waitForFunction(f: string, a?: unknown, o?: object): Promise<unknown>;
      evaluate<T>(f: string): Promise<T>;
    }>;
    close(): Promise<void>;
  }>;
};

async function loadChromium(): Promise<Chromium | null> {
  if (!existsSync(CHROMIUM) || !existsSync(linalgDist) || !existsSync(coreDist)) return null;
  try {
    const name = 'playwright-core';
    return ((await import(/* @vite-ignore */ name)) as { chromium: Chromium }).chromium;
  } catch {
    return null;
  }
}

// The check run on the page and in a worker: a 37×53 by 53×29 f32 product of small integers, which is
// exact in f32, against a triple loop.
const CHECK = `
export function check(L) {
  const m = 37, k = 53, n = 29;
  const a = { dtype: 'f32', shape: [m, k], strides: [k, 1], offset: 0, data: new Float32Array(m * k) };
  const b = { dtype: 'f32', shape: [k, n], strides: [n, 1], offset: 0, data: new Float32Array(k * n) };
  a.data.forEach((_, i) => (a.data[i] = (i % 7) - 3));
  b.data.forEach((_, i) => (b.data[i] = (i % 5) - 2));
  const pool = L.createPool({ threads: 2 });
  const c = L.gemm(a, b, { pool });
  let bad = 0;
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
    let s = 0;
    for (let p = 0; p < k; p++) s += a.data[i * k + p] * b.data[p * n + j];
    if (c.data[i * n + j] !== s) bad++;
  }
  const threads = pool.threads;
  const relaxed = pool.relaxedSimd;
  pool.dispose();
  return { threads, bad, relaxed, isolated: self.crossOriginIsolated };
}
`;

const PAGE = `<!doctype html><script type="module">
import * as L from '/linalg.js';
import { check } from '/check.js';
window.mainResult = check(L);
const w = new Worker('/worker.js', { type: 'module' });
w.onmessage = (e) => { window.workerResult = e.data; };
w.onerror = (e) => { window.workerResult = { error: String(e.message) }; };
</script>`;

const WORKER = `import * as L from '/linalg.js';
import { check } from '/check.js';
try { postMessage(check(L)); } catch (e) { postMessage({ error: String(e) }); }`;

describe('in a browser (headless Chromium)', () => {
  let server: Server | undefined;
  let base = '';
  let chromium: Chromium | null = null;

  beforeAll(async () => {
    chromium = await loadChromium();
    if (!chromium) return;
    const files: Record<string, string> = {
      '/': PAGE,
      '/check.js': CHECK,
      '/worker.js': WORKER,
      ...pageModules(linalgDist, coreDist),
    };
    server = createServer((req, res) => {
      const body = files[req.url ?? ''];
      res.writeHead(body === undefined ? 404 : 200, {
        'Content-Type': req.url === '/' ? 'text/html' : 'text/javascript',
        'Cross-Origin-Opener-Policy': 'same-origin',
        'Cross-Origin-Embedder-Policy': 'require-corp',
      });
      res.end(body ?? '');
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => server?.close());

  it('runs single-threaded on the page and with a Web Worker pool inside a worker', async (ctx) => {
    if (!chromium) return ctx.skip();
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--headless=new', '--disable-gpu'],
    });
    try {
      const page = await browser.newPage();
      const logs: string[] = [];
      page.on('console', (m) => logs.push(m.text()));
      page.on('pageerror', (e) => logs.push(String(e)));
      await page.goto(base + '/');
      await page
        .waitForFunction('window.workerResult !== undefined', undefined, { timeout: 30_000 })
        .catch((e: unknown) => {
          throw new Error(`${String(e)}; page log: ${logs.join(' | ')}`);
        });
      type R = { threads: number; bad: number; relaxed: boolean; isolated: boolean; error?: string };
      const main = await page.evaluate<R>('window.mainResult');
      const worker = await page.evaluate<R>('window.workerResult');
      // Chromium ships relaxed SIMD, so the fused-multiply-add build is the one in use there
      expect(main).toEqual({ threads: 1, bad: 0, relaxed: true, isolated: true });
      expect(worker.error).toBeUndefined();
      expect(worker).toEqual({ threads: 2, bad: 0, relaxed: true, isolated: true });
    } finally {
      await browser.close();
    }
  }, 60_000);
});
