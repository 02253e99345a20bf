// End-to-end test of the example in headless Chromium (WebGPU on SwiftShader): prepare the model and the bundle, serve
// dist/, generate 12 greedy tokens through the page's controls and check (1) the page's status (bits/weight, GPU
// memory) and tokens/s, (2) the tokens: exactly runtime-node's greedy tokens for the same prompt ids and checkpoint,
// (3) a screenshot: the generated text is on screen (its highlight colour, absent before generating); then stop the
// server, reload, and check that the page loads and generates the same tokens offline (service worker). Then the CPU
// fallback: a second Chromium without --enable-unsafe-webgpu (no WebGPU adapter), on a fresh profile and server, must
// load the checkpoint with runtime-node in a Web Worker, decode on a thread per core but one (the page is cross-origin
// isolated), say so on its status line and give the same greedy tokens.
// Prints 'skipped: …' and exits 0 when /usr/bin/chromium or playwright-core is missing.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stopTokenIdsOf } from '@caldera/core';
import { generate, loadModel, loadTokenizer, readJsonFile } from '@caldera/runtime-node';
import { decodePng } from './png.mjs';
import { staticServer } from './serve.mjs';
import { writeServiceWorker } from './offline.mjs';

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
const here = fileURLToPath(new URL('.', import.meta.url));
execFileSync(process.execPath, ['prepare.mjs'], { cwd: here, stdio: 'inherit' });
execFileSync(process.execPath, ['build.mjs'], { cwd: here, stdio: 'inherit' });
const server = staticServer();
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const profile = mkdtempSync(join(tmpdir(), 'caldera-chat-'));
const chromiumArgs = [
  '--headless=new',
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  args: [...chromiumArgs, '--enable-unsafe-webgpu'],
});
const checks = [];
const check = (ok, what) => {
  checks.push(ok);
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
};
/** Pixels of the generated text's highlight (#e8f0ff, public/index.html) in a PNG screenshot. */
const highlighted = (png) => {
  const { rgba } = decodePng(png);
  let n = 0;
  for (let p = 0; p < rgba.length; p += 4)
    if (rgba[p] === 0xe8 && rgba[p + 1] === 0xf0 && rgba[p + 2] === 0xff) n++;
  return n;
};
/** Generate 12 greedy tokens through the page; returns the prompt ids and the tokens. */
async function generateOnPage(page) {
  await page.fill('#max', '12');
  await page.fill('#temp', '0');
  await page.evaluate('window.chatDone = undefined');
  await page.click('#go');
  await page.waitForFunction('window.chatDone !== undefined', undefined, { timeout: 120_000 });
  return {
    ids: await page.evaluate('window.chatPromptIds'),
    tokens: await page.evaluate('window.chatTokens'),
  };
}
/** runtime-node's greedy tokens (12) after prompt `ids` on the checkpoint the page loads. */
async function referenceTokens(ids) {
  const { model, config } = await loadModel(join(here, 'dist/model'));
  const generationConfig = await readJsonFile(join(here, 'dist/model/generation_config.json'), {
    optional: true,
  });
  const stop = stopTokenIdsOf(config, generationConfig).filter((id) => id !== config.bosTokenId);
  const ref = [];
  for await (const t of generate(model, ids, { maxTokens: 12, temperature: 0, stopTokens: stop }))
    ref.push(t);
  return ref;
}
try {
  const url = `http://127.0.0.1:${server.address().port}/`;
  // a malformed escape is the request's fault: 400, and the server keeps serving
  check(
    (await fetch(`${url}%`)).status === 400 && (await fetch(url)).ok,
    'server: /% is a bad request (400), the server keeps serving',
  );
  // files of 2 GiB and more are served (read whole with readFile, a 2.2 GB model answered 404), streamed, and byte
  // ranges too (the loader reads each weight file's header with one)
  const bigDir = mkdtempSync(join(here, 'dist', 'big-'));
  try {
    const size = 2_200_000_000;
    writeFileSync(join(bigDir, 'model.safetensors'), '');
    truncateSync(join(bigDir, 'model.safetensors'), size); // sparse: no disk taken
    const bigUrl = `${url}${basename(bigDir)}/model.safetensors`;
    const tail = await fetch(bigUrl, { headers: { range: `bytes=${size - 10}-` } });
    const whole = await fetch(bigUrl);
    const past = await fetch(bigUrl, { headers: { range: `bytes=${size}-` } });
    const invalid = await fetch(bigUrl, { headers: { range: 'bytes=5-3' } }); // no valid range: the whole file
    check(
      tail.status === 206 &&
        tail.headers.get('content-range') === `bytes ${size - 10}-${size - 1}/${size}` &&
        (await tail.arrayBuffer()).byteLength === 10 &&
        whole.status === 200 &&
        whole.headers.get('content-length') === String(size) &&
        past.status === 416 &&
        invalid.status === 200,
      `server: a 2.2 GB file is served whole (${whole.status}) and by range (${tail.status}; past its end ${past.status})`,
    );
    await whole.body?.cancel();
    await invalid.body?.cancel();
  } finally {
    rmSync(bigDir, { recursive: true, force: true });
  }
  const missing = spawnSync(process.execPath, ['prepare.mjs', join(here, 'no such model')], {
    cwd: here,
    encoding: 'utf8',
  });
  check(
    missing.status === 1 && /no such model does not exist/.test(missing.stderr),
    `prepare-model: a missing directory is refused by name (${missing.stderr.trim()})`,
  );
  const page = await ctx.newPage();
  await page.goto(url);
  await page.waitForFunction('(window.chatReady && window.offlineReady) || window.chatError', undefined, {
    timeout: 60_000,
  });
  const status = await page.textContent('#status');
  console.log(`status: ${status}\noffline: ${await page.textContent('#offline')}`);
  check(
    /CALDERA layers/.test(status) &&
      /bits\/weight/.test(status) &&
      /MiB of weights/.test(status) &&
      // SwiftShader has no shader-f16
      /E8P products in f32/.test(status),
    'status line',
  );
  const before = highlighted(await page.screenshot());
  const first = await generateOnPage(page);
  const stats = await page.textContent('#stats');
  console.log(`out: ${await page.textContent('#out')}\nstats: ${stats}\ntokens: ${first.tokens.join(' ')}`);
  check(first.tokens.length === 12 && /tokens\/s/.test(stats), '12 tokens streamed, tokens/s shown');
  // the same greedy generation in runtime-node on the checkpoint the page loaded
  const ref = await referenceTokens(first.ids);
  check(
    JSON.stringify(first.tokens) === JSON.stringify(ref),
    `greedy tokens equal runtime-node's (${ref.join(' ')})`,
  );
  const shot = await page.screenshot({ fullPage: true });
  writeFileSync(join(here, 'dist/screenshot.png'), shot);
  const after = highlighted(shot);
  check(
    before === 0 && after > 200,
    `screenshot shows the generated text (${after} highlighted pixels, ${before} before)`,
  );
  // tuning: the page times kernel choices on this adapter (WebGpuModel.tuneKernels), keeps the fastest and saves it
  // for the next visit; greedy tokens stay the same (the choices differ in f32 rounding only)
  await page.evaluate('window.tuneDone = undefined');
  const tuneStart = performance.now();
  await page.click('#tune');
  await page.waitForFunction('window.tuneDone !== undefined', undefined, { timeout: 300_000 });
  const tuned = await page.evaluate('window.tuneDone');
  const kernelsLine = await page.textContent('#kernels');
  console.log(
    `tuning: ${tuned} candidates in ${((performance.now() - tuneStart) / 1000).toFixed(1)} s\nkernels: ${kernelsLine}`,
  );
  check(
    typeof tuned === 'number' &&
      tuned >= 1 &&
      /kernels \(tuned: decode step [\d.]+ → [\d.]+ ms/.test(kernelsLine),
    'kernels tuned on the page',
  );
  const afterTuning = await generateOnPage(page);
  check(
    JSON.stringify(afterTuning.tokens) === JSON.stringify(first.tokens),
    'after tuning: the same greedy tokens',
  );
  // offline: no server at all, then a reload
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  const down = await fetch(url).then(
    () => false,
    () => true,
  );
  check(down, 'server stopped');
  await page.reload();
  await page.waitForFunction('window.chatReady || window.chatError', undefined, { timeout: 60_000 });
  console.log(
    `offline reload: ${await page.textContent('#status')}\noffline: ${await page.textContent('#offline')}`,
  );
  check(
    (await page.evaluate('window.kernelsTuned')) === true &&
      /kernels \(tuned on this GPU before\)/.test(await page.textContent('#kernels')),
    'the reload loads with the tuned kernel choice',
  );
  const again = await generateOnPage(page);
  check(
    JSON.stringify(again.tokens) === JSON.stringify(first.tokens),
    'offline: the page loads and gives the same tokens',
  );
} finally {
  await ctx.close();
  server.close();
  rmSync(profile, { recursive: true, force: true });
}

// The CPU fallback: no --enable-unsafe-webgpu, so no WebGPU adapter (navigator.gpu may exist, requestAdapter() gives
// null); a fresh profile (no service worker from the run above) and a fresh server. The model gets a chat template
// here (removed at the end): the page renders the prompt with it, as runtime-node's HfTokenizer does in Node.
const templateFile = join(here, 'dist/model/chat_template.jinja');
writeFileSync(
  templateFile,
  '{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content | trim }}\n{% endfor %}' +
    '{% if add_generation_prompt %}<|assistant|>{% endif %}',
);
const cpuServer = staticServer();
await new Promise((r) => cpuServer.listen(0, '127.0.0.1', r));
const cpuProfile = mkdtempSync(join(tmpdir(), 'caldera-chat-cpu-'));
const cpuCtx = await chromium.launchPersistentContext(cpuProfile, {
  executablePath: CHROMIUM,
  args: chromiumArgs,
});
try {
  const page = await cpuCtx.newPage();
  await page.goto(`http://127.0.0.1:${cpuServer.address().port}/`);
  await page.waitForFunction('window.chatReady || window.chatError', undefined, { timeout: 120_000 });
  const status = await page.textContent('#status');
  console.log(`cpu status: ${status}\nnavigator.gpu: ${await page.evaluate('typeof navigator.gpu')}`);
  check(
    /^CPU, WebAssembly SIMD in a Web Worker, \d+ decode threads? \(no WebGPU: /.test(status) &&
      /CALDERA layers/.test(status) &&
      /bits\/weight/.test(status),
    'CPU fallback: status line (CPU, WebAssembly SIMD)',
  );
  // the server's headers make the page cross-origin isolated: the worker's decode pool has a thread per core but one
  // (its own Web Workers; the reference model's layers are all below the split size, so its decode stays on one)
  const cores = await page.evaluate('navigator.hardwareConcurrency');
  const threads = Number(/(\d+) decode threads?/.exec(status)?.[1]);
  check(
    (await page.evaluate('crossOriginIsolated')) === true && threads === Math.max(1, Math.min(16, cores - 1)),
    `CPU fallback: cross-origin isolated, decode threads ${threads} for ${cores} cores (one left to the browser)`,
  );
  const cpu = await generateOnPage(page);
  const stats = await page.textContent('#stats');
  console.log(
    `cpu out: ${await page.textContent('#out')}\ncpu stats: ${stats}\ncpu tokens: ${cpu.tokens.join(' ')}`,
  );
  check(
    cpu.tokens.length === 12 && /tokens\/s/.test(stats),
    'CPU fallback: 12 tokens streamed, tokens/s shown',
  );
  const ref = await referenceTokens(cpu.ids);
  check(
    JSON.stringify(cpu.tokens) === JSON.stringify(ref),
    `CPU fallback: greedy tokens equal runtime-node's in Node (${ref.join(' ')})`,
  );
  // the prompt as a user message of the model's chat template (ticked by default when it has one); unticked, the text
  const prompt = await page.inputValue('#prompt');
  const nodeTok = await loadTokenizer(join(here, 'dist/model'));
  const templated = nodeTok.encode(nodeTok.applyChatTemplate([{ role: 'user', content: prompt }]));
  const plain = await (async () => {
    await page.uncheck('#chat');
    const r = await generateOnPage(page);
    await page.check('#chat');
    return r.ids;
  })();
  check(
    (await page.isVisible('#chat-option')) &&
      JSON.stringify(cpu.ids) === JSON.stringify(templated) &&
      templated[0] === 0 &&
      templated.filter((id) => id === 0).length === 1 &&
      JSON.stringify(plain) === JSON.stringify([0, ...nodeTok.encode(prompt)]),
    `chat template: the prompt rendered as a user message (${cpu.ids.length} ids, one BOS); unticked, the text`,
  );
  // the model runs in the page's Web Worker, off the main thread
  const workers = page.workers().map((w) => new URL(w.url()).pathname);
  check(workers.includes('/cpu-worker.js'), `CPU fallback: runs in a Web Worker (${workers.join(', ')})`);
  // a run that generates nothing says so (the last run's numbers stayed on the stats line)
  await page.fill('#max', '0');
  await page.evaluate('window.chatDone = undefined');
  await page.click('#go');
  await page.waitForFunction('window.chatDone !== undefined', undefined, { timeout: 60_000 });
  const none = await page.textContent('#stats');
  check(/^no tokens generated/.test(none), `a run of no tokens says so (${none})`);
  // the server gives each file's length: the page's download progress has a total
  const head = await fetch(`http://127.0.0.1:${cpuServer.address().port}/model/model.safetensors`);
  const length = Number(head.headers.get('content-length'));
  await head.arrayBuffer();
  check(length > 1e6, `server: model.safetensors with its Content-Length (${length} bytes)`);
  // a rebuilt site: its worker waits beside the running one until the page asks (then the page reloads into it);
  // taking over at once switched a loading page to the new copy midway (the old model with the new tokenizer)
  await page.waitForFunction('window.offlineReady', undefined, { timeout: 60_000 });
  const index = join(here, 'dist/index.html');
  utimesSync(index, new Date(), new Date(Date.now() + 1000)); // a new mtime: a new version of the site
  await writeServiceWorker(join(here, 'dist'));
  await page.reload();
  await page.waitForFunction('window.updateReady', undefined, { timeout: 120_000 });
  const offer = await page.textContent('#offline');
  check(
    /a new version is saved for offline use/.test(offer),
    `a rebuilt site is offered, not switched to (${offer})`,
  );
  await Promise.all([page.waitForNavigation({ timeout: 60_000 }), page.click('#offline button')]);
  await page.waitForFunction('window.chatReady && window.offlineReady', undefined, { timeout: 120_000 });
  const taken = await page.textContent('#offline');
  check(
    /running from the offline copy/.test(taken),
    `after "reload to use it": the new copy runs (${taken})`,
  );
} finally {
  await cpuCtx.close();
  cpuServer.close();
  rmSync(cpuProfile, { recursive: true, force: true });
  // the model as prepare.mjs wrote it, and a service worker that lists its files
  rmSync(templateFile, { force: true });
  await writeServiceWorker(join(here, 'dist'));
}
const failed = checks.filter((c) => !c).length;
console.log(`${checks.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
