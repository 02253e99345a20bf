import { CalderaError } from './errors.js';
import { nodeFs } from './node-builtins.js';

/** What a file of `stat` is when it is not a regular file, for a message: `'a directory'`, `'a FIFO (named pipe)'`, … */
export function specialFileKind(stat: {
  isDirectory(): boolean;
  isFIFO(): boolean;
  isSocket(): boolean;
  isCharacterDevice(): boolean;
  isBlockDevice(): boolean;
}): string {
  if (stat.isDirectory()) return 'a directory';
  if (stat.isFIFO()) return 'a FIFO (named pipe)';
  if (stat.isSocket()) return 'a socket';
  if (stat.isCharacterDevice()) return 'a character device';
  if (stat.isBlockDevice()) return 'a block device';
  return 'a special file';
}

/** The `E_IO` of `path` found to be `kind` (see {@link specialFileKind}) where a regular file, a `what`, was expected. */
export function notRegularFile(path: string, kind: string, what: string): CalderaError {
  return new CalderaError('E_IO', `${path} is ${kind}, not a ${what}`, { details: { path } });
}

/**
 * The UTF-8 text of the regular file at `path` (Node only). Anything else found there (after following symlinks) is
 * `E_IO` "`path` is a FIFO (named pipe), not a `what`" (a directory, a socket, a device likewise), found before the
 * file is opened: reading a FIFO waits for a writer for ever. Errors of the `stat` and the read are rethrown as Node
 * gives them (with their `code`), for the caller to word.
 */
export async function readTextFile(path: string, what = 'file'): Promise<string> {
  const fs = await nodeFs();
  const st = await fs.stat(path);
  if (!st.isFile()) throw notRegularFile(path, specialFileKind(st), what);
  return fs.readFile(path, 'utf8');
}

/**
 * {@link readTextFile} with Node's errors made `CalderaError`s: `E_MISSING` for a file that is not there, else `E_IO`
 * "`path`: cannot read (`code`)". Internal (the JSON files of core's readers).
 */
export async function readTextFileOrFail(path: string, what: string): Promise<string> {
  try {
    return await readTextFile(path, what);
  } catch (e) {
    if (e instanceof CalderaError) throw e;
    const code = (e as { code?: string }).code;
    throw new CalderaError(code === 'ENOENT' ? 'E_MISSING' : 'E_IO', `${path}: cannot read (${code})`, {
      cause: e,
    });
  }
}
