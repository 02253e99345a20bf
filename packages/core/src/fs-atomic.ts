import { CalderaError, throwIfAborted } from './errors.js';
import { writeFully } from './io-chunks.js';
import { nodeFs, nodePath } from './node-builtins.js';

/** A random suffix for temporary names (not security-relevant; avoids collisions between writers). */
export function tempSuffix(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  return c?.randomUUID
    ? c.randomUUID().slice(0, 8)
    : Math.floor(Math.random() * 2 ** 32)
        .toString(16)
        .padStart(8, '0');
}

/**
 * Whether file name `name` is that of a temporary file or folder written for `base` (`<base>.tmp-<suffix>`, the
 * suffix as {@link tempSuffix} makes it: exactly 8 hex digits), as a write killed midway leaves it. (Any run of
 * letters and digits counted before, so the sweep of stale temporaries removed a user's `model.tmp-backup` folder.)
 */
export function isTempNameOf(name: string, base: string): boolean {
  return name.startsWith(`${base}.tmp-`) && /^[0-9a-f]{8}$/.test(name.slice(base.length + '.tmp-'.length));
}

/** The path separators at the end of a path: `/`, on Windows `\` too. */
const separatorsAtEnd = (sep: string): RegExp => (sep === '\\' ? /[\\/]+$/ : /\/+$/);

/**
 * `path` without the separators it ends with (`'out/'` and `'out//'` → `'out'`; on Windows `\` too), so that a name
 * made by appending to it (`<path>.tmp-<random>`) lies beside what it names, not inside it. A root (`'/'`, `'C:\'`)
 * is returned whole (Node only).
 */
export async function withoutTrailingSeparators(path: string): Promise<string> {
  const pathMod = await nodePath();
  const trimmed = path.replace(separatorsAtEnd(pathMod.sep), '');
  const { root } = pathMod.parse(path);
  return trimmed.length < root.length ? root : trimmed;
}

/** `E_VALUE` when `path`, a file to write, ends in a path separator (it names a directory). */
async function assertFilePath(path: string): Promise<void> {
  const pathMod = await nodePath();
  if (separatorsAtEnd(pathMod.sep).test(path))
    throw new CalderaError(
      'E_VALUE',
      `cannot write ${path}: a path that ends in a separator names a directory, not a file`,
    );
}

/**
 * The part of Node's `FileHandle` that {@link atomicWriteFile} hands to a streaming writer (declared here so
 * the package's types do not depend on `@types/node`).
 */
export interface WritableFileHandle {
  write(
    buffer: Uint8Array,
    offset?: number,
    length?: number,
    position?: number | null,
  ): Promise<{ bytesWritten: number }>;
  write(data: string): Promise<{ bytesWritten: number }>;
}

/** Options of {@link atomicWriteFile}. */
export interface AtomicWriteOptions {
  /** Cancels the write; the temporary file is removed. */
  signal?: AbortSignal;
}

/**
 * Write a file atomically (Node only): the content goes to `<path>.tmp-<random>` in the same directory,
 * which is then renamed over `path`, so readers see either the old file or the whole new one. `content` is a
 * string, bytes (any typed array, `DataView` or `ArrayBuffer`, written as its raw bytes in calls of at most
 * 1 GiB each, so buffers over 2 GiB work, and over 4 GiB as a `Float64Array` or `ArrayBuffer`), or a
 * function that receives the open handle and may write in as many pieces as it likes (streaming; a single
 * `write` call must stay under 2³¹ bytes). On any error the temporary file is removed and the error is
 * rethrown (I/O errors as `E_IO`). Refused with `E_VALUE` before anything is created: a `path` that ends in a path
 * separator, a `signal` that is not an `AbortSignal`.
 */
export async function atomicWriteFile(
  path: string,
  content: string | ArrayBufferView | ArrayBuffer | ((fh: WritableFileHandle) => Promise<void>),
  options: AtomicWriteOptions = {},
): Promise<void> {
  await assertFilePath(path);
  throwIfAborted(options.signal, `writing ${path}`);
  const fs = await nodeFs();
  const tmp = `${path}.tmp-${tempSuffix()}`;
  let fh: Awaited<ReturnType<Awaited<ReturnType<typeof nodeFs>>['open']>> | undefined;
  try {
    fh = await fs.open(tmp, 'wx');
    if (typeof content === 'function') await content(fh);
    else if (typeof content === 'string') await fh.writeFile(content);
    else await writeFully(fh, content);
    throwIfAborted(options.signal, `writing ${path}`);
    await fh.sync();
    await fh.close();
    fh = undefined;
    await fs.rename(tmp, path);
  } catch (e) {
    await fh?.close().catch(() => undefined);
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw toCalderaError(e, `writing ${path}`, options.signal);
  }
}

/** The suffix of the file that marks `<dir>.old-<random>` as {@link replaceDir}'s own. */
const ASIDE_MARKER_SUFFIX = '.caldera-aside';

/**
 * Put the complete directory `tmp` in the place of `dir` (Node only; both on one file system): an existing `dir` is
 * renamed aside to `<dir>.old-<random>` first, put back if `tmp` cannot take its place, and removed only once it has,
 * so `dir` is at every moment the old directory or the new one. `dir` may end in a path separator (`'out/'`; the old
 * directory is still renamed aside beside it, not into itself). Errors are rethrown as they are, but for an old directory
 * that cannot be moved aside because it is in use (EPERM, EBUSY, EACCES: on Windows, a file in it open in another
 * program), `E_IO` saying so; an old directory that cannot be removed once the new one is in place is left aside,
 * marked, for {@link recoverReplaceDir}, and its path returned (null otherwise), so that the caller can say so.
 *
 * While the old directory is aside, an empty file `<dir>.old-<random>.caldera-aside` beside it says it is ours: a
 * process killed in between leaves both, which {@link recoverReplaceDir} puts right.
 */
export async function replaceDir(tmp: string, dir: string): Promise<string | null> {
  const fs = await nodeFs();
  const target = await withoutTrailingSeparators(dir);
  const exists = await fs.stat(target).then(
    () => true,
    () => false,
  );
  const old = exists ? `${target}.old-${tempSuffix()}` : undefined;
  const marker = old ? `${old}${ASIDE_MARKER_SUFFIX}` : undefined;
  if (old) {
    await fs.writeFile(marker!, '');
    try {
      await fs.rename(target, old);
    } catch (e) {
      await fs.rm(marker!, { force: true }).catch(() => undefined);
      const code = (e as { code?: string }).code;
      // Windows refuses to rename a directory holding a file another program has open
      if (code === 'EPERM' || code === 'EBUSY' || code === 'EACCES')
        throw new CalderaError(
          'E_IO',
          `cannot move the existing ${target} aside to replace it (${code})` +
            (process.platform === 'win32'
              ? ': is a file in it open in another program? Close it and run again'
              : ': it is in use, or its folder does not let this user move it'),
          { cause: e, details: { path: target } },
        );
      throw e;
    }
  }
  try {
    await fs.rename(tmp, target);
  } catch (e) {
    if (old) {
      await fs.rename(old, target).catch(() => undefined);
      await fs.rm(marker!, { force: true }).catch(() => undefined);
    }
    throw e;
  }
  // the new directory is in place: an old one that cannot be removed now (a file in it open elsewhere, on Windows)
  // stays aside with its marker, for recoverReplaceDir to remove next time; the replacement succeeded (it was
  // reported as a failure, the new checkpoint already written)
  if (!old) return null;
  const removed = await fs.rm(old, { recursive: true, force: true }).then(
    () => true,
    () => false,
  );
  if (!removed) return old;
  await fs.rm(marker!, { force: true }).catch(() => undefined);
  return null;
}

/**
 * The warning for an earlier `dir` that {@link replaceDir} left aside at `aside` (its path returned: it could not be
 * removed once the new `what` took its place).
 */
export function leftAsideWarning(dir: string, aside: string, what: string): string {
  return (
    `the earlier ${dir} could not be removed after the new ${what} took its place: it is left at ${aside} ` +
    `(remove it yourself; recoverReplaceDir, which caldera's commands run before writing ${dir}, removes it too)`
  );
}

/**
 * Undo what a {@link replaceDir} of `dir` killed midway left beside it (Node only; call it only while no other process
 * replaces `dir`, e.g. holding a lock on it): the earlier directory renamed aside, `<dir>.old-<random>` marked by its
 * `.caldera-aside` file, is put back as `dir` when `dir` is missing (killed between the two renames: it is the only
 * copy), and removed otherwise (killed while removing it); a marker without its folder is removed. Several marked
 * folders with `dir` missing are all left (which was the last cannot be told, and each may be a copy of its own); a
 * folder merely named like one (a backup `m.old-1`, no marker) is never touched.
 */
export async function recoverReplaceDir(dir: string): Promise<void> {
  const fs = await nodeFs();
  const pathMod = await nodePath();
  const target = await withoutTrailingSeparators(dir);
  const parent = pathMod.dirname(target);
  const base = pathMod.basename(target);
  const entries = await fs.readdir(parent).catch(() => [] as string[]);
  const markers = entries.filter(
    (f) =>
      f.startsWith(`${base}.old-`) &&
      f.endsWith(ASIDE_MARKER_SUFFIX) &&
      /^[0-9a-z]+$/.test(f.slice(base.length + '.old-'.length, f.length - ASIDE_MARKER_SUFFIX.length)),
  );
  if (markers.length === 0) return;
  const asides = markers
    .map((m) => m.slice(0, -ASIDE_MARKER_SUFFIX.length))
    .filter((a) => entries.includes(a));
  const remove = (name: string) =>
    fs.rm(pathMod.join(parent, name), { recursive: true, force: true }).catch(() => undefined);
  // a marker without its folder: killed before the first rename or after the removal
  for (const m of markers) if (!asides.includes(m.slice(0, -ASIDE_MARKER_SUFFIX.length))) await remove(m);
  const missing = await fs.lstat(target).then(
    () => false,
    () => true,
  );
  if (missing) {
    if (
      asides.length === 1 &&
      (await fs.rename(pathMod.join(parent, asides[0]!), target).then(
        () => true,
        () => false,
      ))
    )
      await remove(`${asides[0]!}${ASIDE_MARKER_SUFFIX}`);
    return;
  }
  for (const a of asides) {
    await remove(a);
    await remove(`${a}${ASIDE_MARKER_SUFFIX}`);
  }
}

/**
 * Wrap a Node error as `E_IO`, or as `E_ABORTED` once `signal` has fired (its cause the signal's reason, as
 * `throwIfAborted` gives it, the error itself in `details.error`); CalderaErrors pass through.
 */
export function toCalderaError(e: unknown, what: string, signal?: AbortSignal): CalderaError {
  if (e instanceof CalderaError) return e;
  if (signal?.aborted)
    return new CalderaError('E_ABORTED', `${what} was aborted`, {
      cause: signal.reason,
      details: { error: e },
    });
  const code = (e as { code?: string }).code;
  return new CalderaError('E_IO', `${what} failed (${code ?? (e as Error).message})`, { cause: e });
}
