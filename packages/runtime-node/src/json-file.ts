import { assertNonEmptyString, CalderaError, readTextFile } from '@caldera/core';
import { nodePath } from './node-builtins.js';

/**
 * The parsed JSON of the file at `path`: `E_IO` when it cannot be read or is not a regular file (a FIFO was read for
 * ever), `E_FORMAT` naming it when it is not valid JSON. With `optional`, a file that does not exist gives null.
 */
export async function readJsonFile(path: string, options: { optional?: boolean } = {}): Promise<unknown> {
  let text: string;
  try {
    text = await readTextFile(path, 'JSON file');
  } catch (e) {
    if (e instanceof CalderaError) throw e;
    const code = (e as { code?: string }).code;
    if (options.optional && code === 'ENOENT') return null;
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

/**
 * `E_VALUE` unless `path` is a non-empty string (a loader given null, undefined or an object would otherwise fail with
 * Node's TypeError from deep inside, or read a file named `null`): core's `assertNonEmptyString` with the wording
 * `fn: what must be a path (a non-empty string), got …` (`null`, `undefined`, `an object`, `an empty string`, …).
 * `fn` and `what` name the argument.
 */
export function checkPathArgument(path: unknown, fn: string, what: string): asserts path is string {
  assertNonEmptyString(path, fn, what, 'a path (a non-empty string)');
}
