// dist/sw.js: public/sw.js with the list of every file of dist/ to cache for offline use and a version hash of them.
// Written by build.mjs, and again by prepare.mjs when it replaces the model of a built site, so that returning
// visitors get the new model (the worker serves from its cache first: without a new version they kept the old one).
import { createHash } from 'node:crypto';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';

/** Write `<dist>/sw.js` for the files now in `dist`; returns how many files it caches. */
export async function writeServiceWorker(dist) {
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
  return files.length;
}
