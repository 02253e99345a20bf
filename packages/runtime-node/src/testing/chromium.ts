/**
 * Running the package in headless Chromium (test and benchmark helper): the package's sources bundled for the browser
 * as an app's bundler would, served from 127.0.0.1 with the headers that make a page cross-origin isolated, and
 * Chromium through playwright-core when both are installed.
 */
import { existsSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

/** Debian's Chromium, the one the tests and benchmarks drive. */
export const CHROMIUM = '/usr/bin/chromium';

/** What the helpers use of a playwright-core page. */
export interface ChromiumPage {
  on(event: 'console' | 'pageerror', f: (m: { text(): string }) => void): void;
  goto(u: string): Promise<unknown>;
  waitForFunction(f: string, a?: unknown, o?: object): Promise<unknown>;
  evaluate<T>(f: string): Promise<T>;
  close(): Promise<void>;
}

/** A headless Chromium with a fresh context per page. */
export interface HeadlessChromium {
  newPage(): Promise<ChromiumPage>;
  close(): Promise<void>;
}

/**
 * A new page of `browser` at `url`, returned once the page's expression `ready` is true; past `timeoutMs` it throws
 * with everything the page logged (console messages and uncaught errors).
 */
export async function openPageWhen(
  browser: HeadlessChromium,
  url: string,
  ready: string,
  timeoutMs: number,
): Promise<ChromiumPage> {
  const page = await browser.newPage();
  const logs: string[] = [];
  page.on('console', (m) => logs.push(m.text()));
  page.on('pageerror', (e) => logs.push(String(e)));
  await page.goto(url);
  await page.waitForFunction(ready, undefined, { timeout: timeoutMs }).catch((e: unknown) => {
    throw new Error(`${String(e)}; page log: ${logs.join(' | ')}`);
  });
  return page;
}

/** Launch {@link CHROMIUM} headless, or null when it or playwright-core is not installed. */
export async function launchChromium(): Promise<HeadlessChromium | null> {
  if (!existsSync(CHROMIUM)) return null;
  let chromium: { launch(o: object): Promise<HeadlessChromium> };
  try {
    const name = 'playwright-core'; // not a static import: optional, and not in the bundles built here
    ({ chromium } = (await import(/* @vite-ignore */ name)) as { chromium: typeof chromium });
  } catch {
    return null;
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--headless=new', '--disable-gpu'],
  });
}

/** An ES module of `contents` (TypeScript, imports resolved from this package's src/) bundled for the browser. */
export async function browserBundle(contents: string): Promise<string> {
  const out = await build({
    stdin: {
      contents,
      resolveDir: fileURLToPath(new URL('..', import.meta.url)),
      loader: 'ts',
      sourcefile: 'browser-entry.ts',
    },
    bundle: true,
    platform: 'browser',
    format: 'esm',
    write: false,
    logLevel: 'silent',
  });
  return out.outputFiles[0]!.text;
}

/** The content type of `path` as {@link serveFiles} serves it. */
function contentType(path: string): string {
  if (path === '/' || path.endsWith('.html')) return 'text/html';
  if (path.endsWith('.json')) return 'application/json';
  if (path.endsWith('.safetensors')) return 'application/octet-stream';
  return 'text/javascript';
}

/**
 * Serve `files` (path → text or bytes; '/' and paths ending in .html are HTML pages, .json and .safetensors files what
 * they are, everything else JavaScript) on 127.0.0.1, cross-origin isolated (COOP `same-origin`, COEP
 * `require-corp`) except the page at `/?isolated=0`.
 */
export async function serveFiles(
  files: Record<string, string | Uint8Array>,
): Promise<{ base: string; close(): void }> {
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const body = files[url.pathname];
    const isolated = url.pathname !== '/' || url.searchParams.get('isolated') !== '0';
    res.writeHead(body === undefined ? 404 : 200, {
      'Content-Type': contentType(url.pathname),
      ...(isolated
        ? { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' }
        : {}),
    });
    res.end(body ?? '');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => server.close(),
  };
}
