import { assertNotAbortSignal, CalderaError } from '../errors.js';
import { replaceDir, tempSuffix, toCalderaError } from '../fs-atomic.js';
import { openSafetensors, type SafetensorsReader } from '../safetensors/reader.js';
import { DTYPE_TO_SAFETENSORS, isSafetensorsDType } from '../safetensors/dtypes.js';
import { writeSafetensors, type WritableTensor } from '../safetensors/writer.js';
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
}

function signatureOf(t: WritableTensor): TensorSignature {
  return { dtype: isSafetensorsDType(t.dtype) ? t.dtype : DTYPE_TO_SAFETENSORS[t.dtype], shape: t.shape };
}

/**
 * Write a compressed checkpoint directory atomically (Node only): everything is written into
 * `<dir>.tmp-<random>` beside it, which is renamed to `dir` only when complete, so a crash or an error
 * never leaves a half-written checkpoint (the temporary directory is removed on failure). The metadata
 * and the tensors are validated ({@link parseCalderaMeta}, {@link validateCalderaCheckpoint}) before any
 * byte is written.
 */
export async function writeCheckpointDir(
  dir: string,
  contents: CheckpointContents,
  options: WriteCheckpointOptions = {},
): Promise<void> {
  assertNotAbortSignal(options, 'writeCheckpointDir'); // a positional signal: refused, not ignored
  const meta = parseCalderaMeta(JSON.parse(JSON.stringify(contents.meta)), `${dir}/${CALDERA_META_FILE}`);
  const sigs = new Map(Object.entries(contents.tensors).map(([k, t]) => [k, signatureOf(t)]));
  validateCalderaCheckpoint(meta, sigs, `${dir}/model.safetensors`);
  const fs = await nodeFs();
  const path = await nodePath();
  const exists = await fs.stat(dir).then(
    () => true,
    () => false,
  );
  if (exists && !options.overwrite) {
    throw new CalderaError('E_IO', `${dir} already exists (pass overwrite: true to replace it)`);
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
  const tmp = `${dir}.tmp-${tempSuffix()}`;
  try {
    await fs.mkdir(tmp, { recursive: false });
    for (const [name, src] of copies) {
      options.signal?.throwIfAborted();
      await fs.copyFile(src, path.join(tmp, name));
    }
    await fs.writeFile(path.join(tmp, CALDERA_META_FILE), JSON.stringify(meta, null, 2) + '\n');
    await writeSafetensors(path.join(tmp, 'model.safetensors'), contents.tensors, {
      metadata: contents.safetensorsMetadata ?? { format: 'caldera' },
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    });
    options.signal?.throwIfAborted();
    await replaceDir(tmp, dir);
  } catch (e) {
    await fs.rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    throw toCalderaError(e, `writing checkpoint ${dir}`, options.signal);
  }
}

/** Read and validate `<dir>/caldera.json` (Node only). `E_MISSING` when absent, `E_FORMAT` when invalid. */
export async function readCheckpointMeta(dir: string): Promise<CalderaCheckpointMeta> {
  const fs = await nodeFs();
  const file = `${dir}/${CALDERA_META_FILE}`;
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    const code = (e as { code?: string }).code;
    throw new CalderaError(code === 'ENOENT' ? 'E_MISSING' : 'E_IO', `${file}: cannot read (${code})`, {
      cause: e,
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CalderaError('E_FORMAT', `${file}: not valid JSON (${(e as Error).message})`);
  }
  return parseCalderaMeta(json, file);
}

/**
 * Open a compressed checkpoint directory (Node only): its metadata and a lazy reader of
 * `model.safetensors`, after checking the tensors against the metadata (header only; no data is read).
 */
export async function openCheckpointDir(
  dir: string,
): Promise<{ meta: CalderaCheckpointMeta; tensors: SafetensorsReader }> {
  const meta = await readCheckpointMeta(dir);
  const tensors = await openSafetensors(`${dir}/model.safetensors`);
  try {
    validateCalderaCheckpoint(meta, new Map(tensors.header.tensors.map((t) => [t.name, t])), tensors.name);
  } catch (e) {
    await tensors.close();
    throw e;
  }
  return { meta, tensors };
}
