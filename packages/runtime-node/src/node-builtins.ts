/**
 * Lazy loaders for the Node built-ins that the file-based functions need: the specifiers are computed at run time so
 * browser bundlers (esbuild, Vite, webpack) neither resolve nor bundle them, and the package imports in a page. Only
 * the Node-only functions (directory loaders, checkpoint writers, training state) call these. A copy of core's
 * internal loaders rather than an export of them: exported, their `typeof import('node:…')` types would enter core's
 * declaration files, which then fail to type-check in a project without `@types/node` (a browser app).
 */
type FsPromises = typeof import('node:fs/promises');
type PathModule = typeof import('node:path');

const load = <T>(name: string): Promise<T> =>
  import(/* @vite-ignore */ /* webpackIgnore: true */ `node:${name}`) as Promise<T>;

/** `node:fs/promises`, loaded on first use (Node only). */
export const nodeFs = (): Promise<FsPromises> => load<FsPromises>('fs/promises');

/** `node:path`, loaded on first use (Node only). */
export const nodePath = (): Promise<PathModule> => load<PathModule>('path');

/**
 * A Node built-in loaded synchronously through `process.getBuiltinModule` (Node ≥ 20.16), or undefined elsewhere (a
 * page, a Web Worker, an older Node): no import a browser bundler would follow.
 */
export function nodeBuiltinSync<T>(name: string): T | undefined {
  const proc = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process;
  return proc?.getBuiltinModule?.(name) as T | undefined;
}
