// A process of the out-lock race tests (out-lock.test.ts): `node --import tsx out-lock-racer.ts <out>…`. It prints
// `ready` once loaded; then for each output, on a line from stdin (the test sends one to every racer at once), it
// tries the output's lock, holds it for HOLD_MS and releases it, and prints one JSON line: `{"held":true,"got":ms,
// "released":ms}` (wall-clock times, taken inside the hold) or `{"held":false,"message":…}`. With
// CALDERA_TEST_NO_LINKS=<code> every hard link fails with that error code, as on a file system without them (ENOTSUP;
// EISDIR on Windows' FAT32 and exFAT), so the lock files are created in place.
import fsp from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import { createInterface } from 'node:readline';

const noLinks = process.env.CALDERA_TEST_NO_LINKS;
if (noLinks) {
  fsp.link = () => Promise.reject(Object.assign(new Error(`link: ${noLinks}`), { code: noLinks }));
  syncBuiltinESMExports(); // the named import `link` of out-lock.ts sees it too
}
const { lockOutput } = await import('./commands/out-lock.js');

const HOLD_MS = 300;
const outs = process.argv.slice(2);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
console.log('ready');
for (const out of outs) {
  if ((await lines.next()).done) break;
  try {
    const release = await lockOutput(out, 'caldera compress');
    const got = Date.now();
    await new Promise((r) => setTimeout(r, HOLD_MS));
    const released = Date.now();
    await release();
    console.log(JSON.stringify({ held: true, got, released }));
  } catch (e) {
    console.log(JSON.stringify({ held: false, message: (e as Error).message }));
  }
}
process.stdin.destroy();
