// Bundle src/main.ts for the browser into dist/app.js and src/cpu-worker.ts (the CPU fallback, a module Web Worker)
// into dist/cpu-worker.js, copy public/index.html next to them (dist/ is the site), and write dist/sw.js:
// public/sw.js with the list of every file of dist/ to cache for offline use and a version hash.
import { createHash } from 'node:crypto';
import { copyFile, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

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

// what the page needs offline: everything in dist/ but the worker itself, source maps, test artefacts and a
// half-written model that an interrupted prepare.mjs left (.model-tmp-*)
const files = [];
const hash = createHash('sha256');
for (const e of await readdir(dist, { recursive: true, withFileTypes: true })) {
  if (!e.isFile()) continue;
  const path = join(e.parentPath ?? e.path, e.name);
  const url = `/${relative(dist, path).split(sep).join('/')}`;
  if (url === '/sw.js' || url.endsWith('.map') || url.endsWith('.png') || url.startsWith('/.model-tmp-'))
    continue;
  const s = await stat(path);
  files.push(url);
  hash.update(`${url}:${s.size}:${s.mtimeMs}\n`);
}
files.sort();
const worker = await readFile(new URL('./public/sw.js', import.meta.url), 'utf8');
await writeFile(
  join(dist, 'sw.js'),
  `const FILES = ${JSON.stringify(files)};\nconst VERSION = '${hash.digest('hex').slice(0, 16)}';\n${worker}`,
);
console.log(`dist/sw.js caches ${files.length} files for offline use`);
