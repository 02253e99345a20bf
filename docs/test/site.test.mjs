// Serves the built site (.vitepress/dist) on 127.0.0.1 and checks in headless Chromium that the home page,
// a guide page and an API page render without console errors, and that no internal link is broken.
import { createServer } from 'node:http';
import { readFile, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../.vitepress/dist/', import.meta.url));
const chromium = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
if (!existsSync(root)) {
  console.error('docs site not built: run `npm run docs:build` first');
  process.exit(1);
}
if (!chromium) {
  console.log('skipped: no chromium (install Debian chromium to run the docs site test)');
  process.exit(0);
}
const types = {
  '.html': 'text/html',
  '.js': 'text/javascript',
  '.css': 'text/css',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.woff2': 'font/woff2',
};
const server = createServer(async (req, res) => {
  try {
    let p = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname));
    let f = join(root, p);
    if ((await stat(f).catch(() => null))?.isDirectory()) f = join(f, 'index.html');
    else if (!existsSync(f) && existsSync(f + '.html')) f += '.html';
    const body = await readFile(f);
    res.writeHead(200, { 'content-type': types[extname(f)] ?? 'application/octet-stream' });
    res.end(body);
  } catch {
    res.writeHead(404);
    res.end('not found');
  }
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}`;
const { chromium: pw } = await import('playwright-core');
const browser = await pw.launch({
  executablePath: chromium,
  args: [
    '--no-sandbox',
    '--headless=new',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
  ],
});
let failures = 0;
let passed = 0;
const pages = [
  '/',
  '/guide/what-is-caldera.html',
  '/guide/own-model.html',
  '/guide/checkpoint-format.html',
  '/guide/codebooks.html',
  '/guide/performance.html',
  '/api/',
  // a subpath export's API pages (@caldera/runtime-webgpu/kernels), generated from the package's typedoc.json
  '/api/@caldera/runtime-webgpu/kernels/',
  '/api/@caldera/runtime-webgpu/kernels/classes/Kernels.html',
];
const seen = new Set();
try {
  for (const path of pages) {
    const page = await browser.newPage();
    const errors = [];
    page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('response', (r) => r.status() >= 400 && errors.push(`${r.status()} ${r.url()}`));
    const resp = await page.goto(base + path, { waitUntil: 'networkidle' });
    const h1 = await page
      .locator('h1')
      .first()
      .textContent()
      .catch(() => null);
    const links = await page.$$eval('a[href]', (as) => as.map((a) => a.getAttribute('href')));
    const ok = resp?.status() === 200 && errors.length === 0 && h1;
    console.log(`${ok ? 'ok' : 'FAIL'} ${path} h1=${JSON.stringify(h1)} errors=${JSON.stringify(errors)}`);
    ok ? passed++ : failures++;
    for (const l of links) if (l && l.startsWith('/') && !l.startsWith('//')) seen.add(l.split('#')[0]);
    await page.close();
  }
  for (const l of seen) {
    const r = await fetch(base + l);
    if (r.status !== 200) {
      console.log(`FAIL broken internal link ${l} (${r.status})`);
      failures++;
    } else passed++;
  }
} finally {
  await browser.close();
  server.close();
}
console.log(`${passed} passed, ${failures} failed`);
process.exit(failures ? 1 : 0);
