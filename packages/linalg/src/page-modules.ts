/**
 * The built linalg and core modules as a test page serves them (`/linalg.js`, `/core.js`): linalg's dist with its
 * import of `@caldera/core` pointed at `/core.js`, and core's dist bundled for the browser with esbuild (it imports npm
 * dependencies, `ndarray`, which a page cannot resolve: served as it is, it failed to load). For the browser test and
 * the Chromium benchmark; not part of the package's build (nothing in `index.ts` reaches it).
 */
import { readFileSync } from 'node:fs';
import { buildSync } from 'esbuild';

export function pageModules(
  linalgDist: string,
  coreDist: string,
): { '/linalg.js': string; '/core.js': string } {
  return {
    '/linalg.js': readFileSync(linalgDist, 'utf8').replaceAll(
      /from ["']@caldera\/core["']/g,
      "from '/core.js'",
    ),
    '/core.js': buildSync({
      entryPoints: [coreDist],
      bundle: true,
      format: 'esm',
      platform: 'browser',
      write: false,
    }).outputFiles[0]!.text,
  };
}
