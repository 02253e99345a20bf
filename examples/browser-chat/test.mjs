// Smoke test of the example in headless Chromium (WebGPU on SwiftShader): prepare the model and the bundle, serve
// dist/, generate 12 tokens through the page's button and check the page's status and token count.
// Prints 'skipped: …' and exits 0 when /usr/bin/chromium or playwright-core is missing.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { staticServer } from './serve.mjs';

const CHROMIUM = '/usr/bin/chromium';
if (!existsSync(CHROMIUM)) {
  console.log(`skipped: no ${CHROMIUM}`);
  process.exit(0);
}
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch {
  console.log('skipped: playwright-core is not installed');
  process.exit(0);
}
const here = new URL('.', import.meta.url).pathname;
execFileSync(process.execPath, ['prepare.mjs'], { cwd: here, stdio: 'inherit' });
execFileSync(process.execPath, ['build.mjs'], { cwd: here, stdio: 'inherit' });
const server = staticServer();
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const profile = mkdtempSync(join(tmpdir(), 'caldera-chat-'));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  args: [
    '--headless=new',
    '--no-sandbox',
    '--enable-unsafe-webgpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
  ],
});
let failed = 0;
try {
  const page = await ctx.newPage();
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  await page.waitForFunction('window.chatReady || window.chatError', undefined, { timeout: 60_000 });
  const status = await page.textContent('#status');
  await page.fill('#max', '12');
  await page.click('#go');
  await page.waitForFunction('window.chatDone !== undefined', undefined, { timeout: 120_000 });
  const done = await page.evaluate('window.chatDone');
  const stats = await page.textContent('#stats');
  console.log(`status: ${status}\nout: ${await page.textContent('#out')}\nstats: ${stats}`);
  if (!/CALDERA layers/.test(status ?? '') || !/bits\/weight/.test(status ?? '')) failed++;
  if (done !== 12 || !/tokens\/s/.test(stats ?? '')) failed++;
} finally {
  await ctx.close();
  server.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(failed ? `0 passed, 1 failed` : `1 passed, 0 failed`);
process.exit(failed ? 1 : 0);
