import { assertCallbacks, assertNotAbortSignal, CalderaError, throwIfAborted } from '../errors.js';
import { atomicWriteFile } from '../fs-atomic.js';
import { writeFully } from '../io-chunks.js';
import { contiguous, shapeSize, type Tensor } from '../tensor.js';
import { SAFETENSORS_DTYPE_SIZE, type SafetensorsDType } from './dtypes.js';
import { assertWritableTensors, isRaw, metadataEntries, writableSignature } from './writable.js';

/**
 * A tensor given as raw little-endian bytes (for dtypes without a tensor dtype, e.g. `I64`/`BOOL`, or to
 * stream data produced later): `data` may be a function called once, when the writer reaches it.
 */
export interface RawTensorEntry {
  readonly dtype: SafetensorsDType;
  readonly shape: readonly number[];
  readonly data: Uint8Array | (() => Uint8Array | Promise<Uint8Array>);
}

/** What the writers accept per tensor name: a {@link Tensor} (any view; written contiguous) or raw bytes. */
export type WritableTensor = Tensor | RawTensorEntry;

/** Options of {@link writeSafetensors} and {@link serializeSafetensors}. */
export interface SafetensorsWriteOptions {
  /** `__metadata__` (string → string; anything but a plain object is `E_VALUE`). Default: none. */
  metadata?: Record<string, string>;
  /** Cancels the write (the temporary file is removed). */
  signal?: AbortSignal;
  /** Called after each tensor is written, with bytes written so far and the total. */
  onProgress?: (e: { tensor: string; bytesWritten: number; totalBytes: number }) => void;
}

interface Planned {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  nbytes: number;
  entry: WritableTensor;
}

/**
 * Lay out the header: tensors in insertion order, contiguous offsets; header padded to 8 bytes with spaces. The header
 * object has no prototype, so that every name, `__proto__` included, is a key of it that `JSON.stringify` writes.
 */
function plan(
  tensors: Record<string, WritableTensor>,
  metadata: Record<string, string> | undefined,
): { header: Uint8Array; items: Planned[]; total: number } {
  assertWritableTensors(tensors, 'safetensors');
  const items: Planned[] = [];
  const json = Object.create(null) as Record<string, unknown>;
  const md = metadataEntries(metadata);
  if (md) json.__metadata__ = md;
  let pos = 0;
  for (const [name, t] of Object.entries(tensors)) {
    if (name === '__metadata__') throw new CalderaError('E_VALUE', `'__metadata__' cannot be a tensor name`);
    const { dtype, shape } = writableSignature(name, t);
    const nbytes = shapeSize(shape) * SAFETENSORS_DTYPE_SIZE[dtype];
    if (isRaw(t) && t.data instanceof Uint8Array && t.data.length !== nbytes) {
      throw new CalderaError(
        'E_SHAPE',
        `tensor '${name}': ${t.data.length} bytes given, shape needs ${nbytes}`,
      );
    }
    json[name] = { dtype, shape, data_offsets: [pos, pos + nbytes] };
    items.push({ name, dtype, shape, nbytes, entry: t });
    pos += nbytes;
  }
  let text = JSON.stringify(json);
  const enc = new TextEncoder();
  let len = enc.encode(text).length;
  const pad = (8 - ((8 + len) % 8)) % 8;
  text += ' '.repeat(pad);
  len += pad;
  const header = new Uint8Array(8 + len);
  new DataView(header.buffer).setBigUint64(0, BigInt(len), true);
  header.set(enc.encode(text), 8);
  return { header, items, total: pos };
}

/**
 * The data of a tensor as a byte-level view. A typed array, not a `Uint8Array` over it: in Node 20 a
 * `Uint8Array` holds at most 4 GiB, while e.g. a 28672² `Float64Array` is 6.6 GB.
 */
async function bytesOf(p: Planned): Promise<ArrayBufferView> {
  let bytes: ArrayBufferView;
  if (isRaw(p.entry)) {
    bytes = typeof p.entry.data === 'function' ? await p.entry.data() : p.entry.data;
  } else {
    bytes = contiguous(p.entry, `tensor '${p.name}'`).data;
  }
  if (bytes.byteLength !== p.nbytes) {
    throw new CalderaError(
      'E_SHAPE',
      `tensor '${p.name}': ${bytes.byteLength} bytes of data, shape needs ${p.nbytes}`,
    );
  }
  return bytes;
}

/**
 * Serialize tensors to one safetensors buffer in memory (browser-friendly; for large checkpoints in
 * Node prefer {@link writeSafetensors}, which streams).
 */
export async function serializeSafetensors(
  tensors: Record<string, WritableTensor>,
  options: SafetensorsWriteOptions = {},
): Promise<Uint8Array> {
  assertNotAbortSignal(options, 'serializeSafetensors');
  assertCallbacks(options, 'serializeSafetensors', ['onProgress']);
  const { header, items, total } = plan(tensors, options.metadata);
  const out = new Uint8Array(header.length + total);
  out.set(header, 0);
  let pos = header.length;
  for (const p of items) {
    throwIfAborted(options.signal, 'serializeSafetensors');
    const v = await bytesOf(p);
    out.set(new Uint8Array(v.buffer, v.byteOffset, v.byteLength), pos);
    pos += p.nbytes;
    options.onProgress?.({ tensor: p.name, bytesWritten: pos - header.length, totalBytes: total });
  }
  return out;
}

/**
 * Write a safetensors file (Node only), streaming one tensor at a time, atomically: data goes to a
 * temporary file in the same directory that is renamed over `path` when complete. Views are made
 * contiguous one tensor at a time, and lazy raw entries are produced only when reached, so peak memory is
 * about one tensor. Each `write` call carries at most 1 GiB (Node rejects single writes over 2³¹ − 1 bytes),
 * so tensors of any size are written.
 */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, WritableTensor>,
  options: SafetensorsWriteOptions = {},
): Promise<void> {
  assertNotAbortSignal(options, 'writeSafetensors'); // a positional signal: refused, not ignored
  throwIfAborted(options.signal, 'writeSafetensors'); // a signal that is not one: E_VALUE, before any file exists
  assertCallbacks(options, 'writeSafetensors', ['onProgress']);
  const { header, items, total } = plan(tensors, options.metadata);
  // an error thrown by the caller's onProgress is the caller's: rethrown as it is once the temporary file is gone
  // (atomicWriteFile reports every other error as E_IO, "writing … failed")
  const callback: { failed: boolean; error?: unknown } = { failed: false };
  const progress = (e: { tensor: string; bytesWritten: number; totalBytes: number }) => {
    try {
      options.onProgress?.(e);
    } catch (error) {
      Object.assign(callback, { failed: true, error });
      throw error;
    }
  };
  try {
    await atomicWriteFile(
      path,
      async (fh) => {
        await writeFully(fh, header);
        let written = 0;
        for (const p of items) {
          throwIfAborted(options.signal, `writing ${path}`);
          await writeFully(fh, await bytesOf(p));
          written += p.nbytes;
          progress({ tensor: p.name, bytesWritten: written, totalBytes: total });
        }
      },
      options.signal ? { signal: options.signal } : {},
    );
  } catch (e) {
    throw callback.failed ? callback.error : e;
  }
}
