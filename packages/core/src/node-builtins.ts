/**
 * Lazy loaders for the Node built-ins that the file-based helpers need. The specifiers are computed at run
 * time so browser bundlers (esbuild, Vite, webpack) neither try to resolve nor bundle them: the browser
 * build of the package never touches `fs`, and only the Node-only functions call these.
 */
type FsPromises = typeof import('node:fs/promises');
type PathModule = typeof import('node:path');

const load = <T>(name: string): Promise<T> =>
  import(/* @vite-ignore */ /* webpackIgnore: true */ `node:${name}`) as Promise<T>;

/** `node:fs/promises`, loaded on first use (Node only). */
export const nodeFs = (): Promise<FsPromises> => load<FsPromises>('fs/promises');

/** `node:path`, loaded on first use (Node only). */
export const nodePath = (): Promise<PathModule> => load<PathModule>('path');
