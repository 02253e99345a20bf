import { CalderaError } from './errors.js';
import { nodeFs, nodePath } from './node-builtins.js';

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
 * `E_IO` naming the link and where it points when `path`, which was not found, is a symbolic link whose target is gone
 * (a Hugging Face cache whose blob was removed), else null (Node only). Such a file is not absent: a loader that
 * skipped it went on without the model's tokenizer settings or chat template, without a word.
 */
export async function danglingLinkError(path: string): Promise<CalderaError | null> {
  const fs = await nodeFs();
  const link = await fs.lstat(path).catch(() => null);
  if (!link?.isSymbolicLink()) return null;
  const target = await fs.readlink(path).catch(() => '?');
  return new CalderaError('E_IO', `${path} is a symbolic link to ${target}, which does not exist`, {
    details: { path },
  });
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

/**
 * The parsed JSON of the file at `path` (Node only): `E_IO` when it cannot be read or is not a regular file (a FIFO
 * was read for ever), `E_FORMAT` naming it when it is not valid JSON. With `optional`, a file that does not exist gives
 * null; nothing else counts as missing (a file that cannot be read was taken for a missing one: a checkpoint loaded as
 * a dense model; a symbolic link whose target is gone is `E_IO`, see {@link danglingLinkError}). The runtimes' folder loaders and the CLI read config.json, caldera.json and the tokenizer's files so.
 */
export async function readJsonFile(path: string, options: { optional?: boolean } = {}): Promise<unknown> {
  let text: string;
  try {
    text = await readTextFile(path, 'JSON file');
  } catch (e) {
    if (e instanceof CalderaError) throw e;
    const code = (e as { code?: string }).code;
    if (code === 'ENOENT') {
      const dangling = await danglingLinkError(path);
      if (dangling) throw dangling;
      if (options.optional) return null;
    }
    // e.g. a model file given where a model directory was asked for (ENOTDIR names only the joined path)
    if (code === 'ENOTDIR')
      throw new CalderaError(
        'E_IO',
        `cannot read ${path}: ${(await nodePath()).dirname(path)} is a file, not a model directory`,
        { cause: e },
      );
    throw new CalderaError('E_IO', `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new CalderaError('E_FORMAT', `${path} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}
