/**
 * gemm f32 n = 2048 inside headless Chromium (the built package in a dedicated worker with a pool of
 * Web Workers; relaxed SIMD where Chromium offers it), to show browser performance next to Node's.
 * Reports `null` (with a `skipped` reason) when Chromium, playwright-core or the dist build is absent.
 */
import { existsSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pageModules } from '../../src/page-modules.js';
import type { BenchCase, BenchResult } from '../harness.js';

const here = dirname(fileURLToPath(import.meta.url));
const linalgDist = join(here, '..', '..', 'dist', 'index.js');
const coreDist = join(here, '..', '..', '..', 'core', 'dist', 'index.js');
const CHROMIUM = '/usr/bin/chromium';

const WORKER = (n: number, threads: number): string => `
import * as L from '/linalg.js';
const n = ${n};
const mk = (seed) => {
  const d = new Float32Array(n * n);
  let x = seed;
  for (let i = 0; i < d.length; i++) { x = (Math.imul(x, 1103515245) + 12345) >>> 0; d[i] = x / 4294967296 - 0.5; }
  return { dtype: 'f32', shape: [n, n], strides: [n, 1], offset: 0, data: d };
};
const a = mk(1), b = mk(2);
const pool = L.createPool({ threads: ${threads} });
await new Promise((r) => setTimeout(r, 300));
L.gemm(a, b, { pool });
let best = Infinity;
for (let r = 0; r < 3; r++) { const t = performance.now(); L.gemm(a, b, { pool }); best = Math.min(best, performance.now() - t); }
postMessage({ seconds: best / 1000, threads: pool.threads, relaxed: pool.relaxedSimd });
pool.dispose();
`;

type Page = {
  goto(u: string): Promise<unknown>;
  waitForFunction(f: string, a?: unknown, o?: object): Promise<unknown>;
  evaluate<T>(f: string): Promise<T>;
};
type Chromium = { launch(o: object): Promise<{ newPage(): Promise<Page>; close(): Promise<void> }> };

async function run(n: number, threads: number): Promise<BenchResult> {
  const skipped = (why: string): BenchResult => ({
    value: Number.NaN,
    unit: 'GFLOP/s',
    refs: {},
    skipped: why,
  });
  if (!existsSync(CHROMIUM)) return skipped('no chromium');
  if (!existsSync(linalgDist) || !existsSync(coreDist)) return skipped('dist not built');
  let chromium: Chromium;
  try {
    const name = 'playwright-core';
    chromium = ((await import(name)) as { chromium: Chromium }).chromium;
  } catch {
    return skipped('no playwright-core');
  }
  const files: Record<string, string> = {
    '/': `<!doctype html><script type="module">
      const w = new Worker('/worker.js', { type: 'module' });
      w.onmessage = (e) => { window.result = e.data; };
      w.onerror = (e) => { window.result = { error: e.message ?? 'the worker failed to load (' + e.type + ')' }; };
    </script>`,
    '/worker.js': WORKER(n, threads),
    ...pageModules(linalgDist, coreDist),
  };
  const server = createServer((req, res) => {
    const body = files[req.url ?? ''];
    res.writeHead(body === undefined ? 404 : 200, {
      'Content-Type': req.url === '/' ? 'text/html' : 'text/javascript',
      'Cross-Origin-Opener-Policy': 'same-origin',
      'Cross-Origin-Embedder-Policy': 'require-corp',
    });
    res.end(body ?? '');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--headless=new'],
  });
  try {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
    await page.waitForFunction('window.result !== undefined', undefined, { timeout: 300_000 });
    const r = await page.evaluate<{ seconds: number; threads: number; relaxed: boolean; error?: string }>(
      'window.result',
    );
    if (r.error) return skipped(r.error);
    const value = (2 * n ** 3) / r.seconds / 1e9;
    return {
      value: Number(value.toPrecision(3)),
      unit: 'GFLOP/s',
      seconds: Number(r.seconds.toPrecision(3)),
      info: { threads: r.threads, relaxedSimd: r.relaxed },
    };
  } finally {
    await browser.close();
    server.close();
  }
}

/** Browser cases. */
export const browserCases: BenchCase[] = [
  { name: 'gemm_f32_n2048_chromium', run: (ctx) => run(2048, ctx.threads) },
];
