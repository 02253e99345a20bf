import {
  assertCallbacks,
  assertNonEmptyString,
  assertNotAbortSignal,
  assertObject,
  CalderaError,
  throwIfAborted,
} from '../errors.js';
import {
  leftAsideWarning,
  replaceDir,
  tempSuffix,
  toCalderaError,
  withoutTrailingSeparators,
} from '../fs-atomic.js';
import type { SafetensorsTensorInfo } from '../safetensors/header.js';
import type { TensorStore } from '../safetensors/reader.js';
import { openSafetensorsDir } from '../safetensors/sharded.js';
import { assertWritableTensors, writableSignature } from '../safetensors/writable.js';
import { writeSafetensors, type WritableTensor } from '../safetensors/writer.js';
import { notRegularFile, readTextFileOrFail, specialFileKind } from '../text-file.js';
import { CALDERA_META_FILE, parseCalderaMeta, type CalderaCheckpointMeta } from './meta.js';
import { validateCalderaCheckpoint, type TensorSignature } from './validate.js';
import { nodeFs, nodePath } from '../node-builtins.js';

/** What {@link writeCheckpointDir} writes. */
export interface CheckpointContents {
  /** Written as `caldera.json` (validated first). */
  meta: CalderaCheckpointMeta;
  /** Written as `model.safetensors`, in insertion order (validated against `meta` first). */
  tensors: Record<string, WritableTensor>;
  /**
   * Files copied into the checkpoint (e.g. `config.json`, `tokenizer.json` of the source model): an array
   * of source paths (kept under their base name) or a map from name in the checkpoint to source path.
   */
  copyFiles?: readonly string[] | Readonly<Record<string, string>>;
  /** `__metadata__` of `model.safetensors`. Default `{ format: 'caldera' }`. */
  safetensorsMetadata?: Record<string, string>;
}

/** Options of {@link writeCheckpointDir}. */
export interface WriteCheckpointOptions {
  /** Replace an existing directory at `dir` (swapped in atomically, then the old one removed). Default false. */
  overwrite?: boolean;
  /** Cancels the write; nothing is left behind. */
  signal?: AbortSignal;
  /** Progress of the tensor data. */
  onProgress?: (e: { tensor: string; bytesWritten: number; totalBytes: number }) => void;
  /**
   * Told what went wrong without failing the write: an earlier checkpoint at `dir` that could not be removed once the
   * new one took its place (a file in it open elsewhere, a folder in it this user may not change) is left beside it as
   * `<dir>.old-<random>`, marked for `recoverReplaceDir`, and the message names it. Default: none.
   */
  onWarning?: (message: string) => void;
}

/**
 * The dtype and shape of each tensor, checked as `writeSafetensors` checks them (so a tensor it would refuse is refused
 * with the same error, before anything is written).
 */
function signaturesOf(tensors: Record<string, WritableTensor>): Map<string, TensorSignature> {
  assertWritableTensors(tensors, 'writeCheckpointDir');
  return new Map(Object.entries(tensors).map(([name, t]) => [name, writableSignature(name, t)]));
}

/**
 * Write a compressed checkpoint directory atomically (Node only): everything is written into
 * `<dir>.tmp-<random>` beside it (`dir` without the path separators it may end with), which is renamed to
 * `dir` only when complete, so a crash or an error never leaves a half-written checkpoint (the temporary
 * directory is removed on failure). The arguments, the metadata and the tensors are checked
 * ({@link parseCalderaMeta}, {@link validateCalderaCheckpoint}) before any byte is written: `E_VALUE` when `dir`
 * is not a non-empty string, `contents`, its `meta` or its `tensors` not an object, a tensor entry not a tensor, or `signal`
 * not an `AbortSignal`; a dtype or shape that `writeSafetensors` cannot write is refused as it refuses it.
 */
export async function writeCheckpointDir(
  dir: string,
  contents: CheckpointContents,
  options: WriteCheckpointOptions = {},
): Promise<void> {
  assertNotAbortSignal(options, 'writeCheckpointDir'); // a positional signal: refused, not ignored
  throwIfAborted(options.signal, 'writeCheckpointDir'); // a signal that is not one: E_VALUE
  assertCallbacks(options, 'writeCheckpointDir', ['onProgress', 'onWarning']);
  assertNonEmptyString(dir, 'writeCheckpointDir', 'dir', 'a path (a non-empty string)');
  assertObject(contents, 'writeCheckpointDir', 'contents', 'an object { meta, tensors }');
  assertObject(contents.meta, 'writeCheckpointDir', 'meta', 'an object (the caldera.json to write)');
  // 'out/' is 'out': its temporary sibling is 'out.tmp-…', not 'out/.tmp-…' inside it
  const target = await withoutTrailingSeparators(dir);
  let metaJson: unknown;
  try {
    metaJson = JSON.parse(JSON.stringify(contents.meta));
  } catch (e) {
    // a BigInt or a cycle in options: a TypeError of JSON.stringify before
    throw new CalderaError(
      'E_VALUE',
      `writeCheckpointDir: meta must be JSON-serialisable (it is written as ${CALDERA_META_FILE}): ${(e as Error).message}`,
    );
  }
  const meta = parseCalderaMeta(metaJson, `${target}/${CALDERA_META_FILE}`);
  validateCalderaCheckpoint(meta, signaturesOf(contents.tensors), `${target}/model.safetensors`);
  const fs = await nodeFs();
  const path = await nodePath();
  const exists = await fs.stat(target).then(
    () => true,
    () => false,
  );
  if (exists && !options.overwrite) {
    throw new CalderaError('E_IO', `${target} already exists (pass overwrite: true to replace it)`);
  }
  const copies: [string, string][] = Array.isArray(contents.copyFiles)
    ? (contents.copyFiles as string[]).map((src) => [path.basename(src), src])
    : Object.entries(contents.copyFiles ?? {});
  for (const [name] of copies) {
    if (
      name === CALDERA_META_FILE ||
      name === 'model.safetensors' ||
      name.includes('/') ||
      name.includes('\\')
    ) {
      throw new CalderaError('E_VALUE', `copyFiles: '${name}' is not an allowed file name in a checkpoint`);
    }
  }
  // every source a regular file before anything is written: copying a FIFO waits for a writer for ever
  for (const [, src] of copies) {
    const st = await fs.stat(src).catch((e: unknown) => {
      throw toCalderaError(e, `copyFiles: reading ${src}`);
    });
    if (!st.isFile()) throw notRegularFile(src, specialFileKind(st), 'file to copy');
  }
  // the folder the checkpoint goes in must exist: it was "writing checkpoint … failed (ENOENT)", naming neither
  const parent = path.dirname(target);
  const parentStat = await fs.stat(parent).catch(() => null);
  if (!parentStat?.isDirectory())
    throw new CalderaError(
      'E_IO',
      `cannot write checkpoint ${target}: ${parent} ${parentStat ? 'is no folder' : 'does not exist'} (create it first)`,
      { details: { path: parent } },
    );
  const tmp = `${target}.tmp-${tempSuffix()}`;
  let aside: string | null = null;
  // an error thrown by the caller's onProgress is the caller's: rethrown as it is once the temporary directory is gone
  // (it was reported as E_IO, "writing checkpoint … failed", as if the disk had failed)
  const callback: { failed: boolean; error?: unknown } = { failed: false };
  const onProgress = options.onProgress;
  const progress = onProgress
    ? (e: Parameters<typeof onProgress>[0]) => {
        try {
          onProgress(e);
        } catch (error) {
          Object.assign(callback, { failed: true, error });
          throw error;
        }
      }
    : undefined;
  try {
    await fs.mkdir(tmp, { recursive: false });
    for (const [name, src] of copies) {
      throwIfAborted(options.signal, `writing checkpoint ${target}`);
      await fs.copyFile(src, path.join(tmp, name));
    }
    await fs.writeFile(path.join(tmp, CALDERA_META_FILE), JSON.stringify(meta, null, 2) + '\n');
    await writeSafetensors(path.join(tmp, 'model.safetensors'), contents.tensors, {
      metadata: contents.safetensorsMetadata ?? { format: 'caldera' },
      ...(options.signal ? { signal: options.signal } : {}),
      ...(progress ? { onProgress: progress } : {}),
    });
    throwIfAborted(options.signal, `writing checkpoint ${target}`);
    aside = await replaceDir(tmp, target);
  } catch (e) {
    await fs.rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    if (callback.failed) throw callback.error;
    // an abort names the checkpoint, not the temporary file it was writing
    if (options.signal?.aborted)
      throw new CalderaError('E_ABORTED', `writing checkpoint ${target} was aborted`, {
        cause: options.signal.reason,
      });
    throw toCalderaError(e, `writing checkpoint ${target}`, options.signal);
  }
  if (aside) options.onWarning?.(leftAsideWarning(target, aside, 'checkpoint'));
}

/**
 * Read and validate `<dir>/caldera.json` (Node only). `E_MISSING` when absent, `E_FORMAT` when invalid, `E_IO` when
 * it cannot be read or is not a regular file (a FIFO there was read for ever).
 */
export async function readCheckpointMeta(dir: string): Promise<CalderaCheckpointMeta> {
  const file = `${dir}/${CALDERA_META_FILE}`;
  const text = await readTextFileOrFail(file, `${CALDERA_META_FILE} file`);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CalderaError('E_FORMAT', `${file}: not valid JSON (${(e as Error).message})`);
  }
  return parseCalderaMeta(json, file);
}

/**
 * Open a compressed checkpoint directory (Node only): its metadata and a lazy reader of its weights —
 * `model.safetensors`, or the shards `model.safetensors.index.json` lists (`openSafetensorsDir`; only
 * `model.safetensors` was opened, so `caldera finetune` of a sharded checkpoint trained to the end and then failed) —
 * after checking the tensors against the metadata (headers only; no data is read).
 */
export async function openCheckpointDir(
  dir: string,
): Promise<{ meta: CalderaCheckpointMeta; tensors: TensorStore }> {
  const meta = await readCheckpointMeta(dir);
  const tensors = await openSafetensorsDir(dir);
  try {
    const infos = new Map<string, SafetensorsTensorInfo>();
    for (const name of tensors.names()) infos.set(name, await tensors.tensorInfo(name));
    validateCalderaCheckpoint(meta, infos, dir);
  } catch (e) {
    await tensors.close();
    throw e;
  }
  return { meta, tensors };
}
