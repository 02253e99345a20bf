// Bundle src/main.ts for the browser into dist/app.js and copy public/index.html next to it (dist/ is the site).
import { copyFile, mkdir } from 'node:fs/promises';
import { build } from 'esbuild';

await build({
  entryPoints: [new URL('./src/main.ts', import.meta.url).pathname],
  outfile: new URL('./dist/app.js', import.meta.url).pathname,
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  sourcemap: true,
  logLevel: 'info',
});
await mkdir(new URL('./dist/', import.meta.url), { recursive: true });
await copyFile(
  new URL('./public/index.html', import.meta.url),
  new URL('./dist/index.html', import.meta.url),
);
