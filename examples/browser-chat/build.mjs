// Bundle src/main.ts for the browser into dist/app.js and src/cpu-worker.ts (the CPU fallback, a module Web Worker)
// into dist/cpu-worker.js, copy public/index.html next to them (dist/ is the site), and write dist/sw.js
// (offline.mjs): public/sw.js with the list of every file of dist/ to cache for offline use and a version hash.
import { copyFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { writeServiceWorker } from './offline.mjs';

const dist = fileURLToPath(new URL('./dist/', import.meta.url));
await build({
  entryPoints: {
    app: fileURLToPath(new URL('./src/main.ts', import.meta.url)),
    'cpu-worker': fileURLToPath(new URL('./src/cpu-worker.ts', import.meta.url)),
  },
  outdir: dist,
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  sourcemap: true,
  logLevel: 'info',
});
await mkdir(dist, { recursive: true });
await copyFile(new URL('./public/index.html', import.meta.url), join(dist, 'index.html'));

const cached = await writeServiceWorker(dist);
console.log(`dist/sw.js caches ${cached} files for offline use`);
