import { CalderaError } from './errors.js';
import type { ByteSource } from './safetensors/source.js';

/**
 * Largest length passed to one file `read` or `write` call: 1 GiB. Node caps a single call at 2³¹ − 1 bytes
 * (Node 20: `FileHandle.read` with a larger length aborts the whole process on a native assertion,
 * `args[3]->IsInt32()`, which no `try` can catch; `FileHandle.write` throws `ERR_OUT_OF_RANGE`), and
 * `readFile` refuses files over 2 GiB (`ERR_FS_FILE_TOO_LARGE`). Model tensors and Hessians are larger
 * (a 28672² f64 Hessian is 6.6 GB), so every file read and write in this package is issued in calls of at
 * most this many bytes, looping until done; 1 GiB stays well below the limit and keeps the per-call
 * overhead negligible. Internal: not exported from the package.
 */
export const MAX_IO_CHUNK_BYTES = 2 ** 30;

let chunkBytes = MAX_IO_CHUNK_BYTES;

/** The chunk size in force (always {@link MAX_IO_CHUNK_BYTES} outside tests). */
export function ioChunkBytes(): number {
  return chunkBytes;
}

/**
 * Test seam: lower the chunk size so tests exercise chunking on small buffers instead of multi-GiB ones.
 * Call without an argument to restore {@link MAX_IO_CHUNK_BYTES}.
 * @internal
 */
export function setIoChunkBytesForTesting(n?: number): void {
  if (n === undefined) {
    chunkBytes = MAX_IO_CHUNK_BYTES;
    return;
  }
  if (!Number.isSafeInteger(n) || n < 1 || n > MAX_IO_CHUNK_BYTES) {
    throw new CalderaError(
      'E_VALUE',
      `I/O chunk size must be an integer in [1, ${MAX_IO_CHUNK_BYTES}], got ${n}`,
    );
  }
  chunkBytes = n;
}

/** The bytes of a view or buffer as `[offset, Uint8Array]` windows of at most `chunk` bytes each. */
export function* byteWindows(
  data: ArrayBufferView | ArrayBuffer,
  chunk = chunkBytes,
): Generator<[number, Uint8Array]> {
  const buffer = ArrayBuffer.isView(data) ? data.buffer : data;
  const start = ArrayBuffer.isView(data) ? data.byteOffset : 0;
  const length = data.byteLength;
  // Windows rather than one Uint8Array over everything: in Node 20 a Uint8Array holds at most 4 GiB,
  // while an ArrayBuffer (and e.g. a Float64Array over it) may be larger.
  for (let o = 0; o < length; o += chunk) {
    yield [o, new Uint8Array(buffer, start + o, Math.min(chunk, length - o))];
  }
}

/** The `write` of a Node `FileHandle` that {@link writeFully} uses. */
export interface ChunkWritable {
  write(buffer: Uint8Array, offset: number, length: number): Promise<{ bytesWritten: number }>;
}

/**
 * Write all bytes of `data` at the handle's current position, in calls of at most {@link ioChunkBytes}
 * bytes, looping over short writes.
 */
export async function writeFully(fh: ChunkWritable, data: ArrayBufferView | ArrayBuffer): Promise<void> {
  for (const [, w] of byteWindows(data)) {
    let done = 0;
    while (done < w.length) {
      const { bytesWritten } = await fh.write(w, done, w.length - done);
      if (!(bytesWritten > 0)) {
        throw new CalderaError('E_IO', `file write made no progress (${bytesWritten} bytes written)`);
      }
      done += bytesWritten;
    }
  }
}

/** The `read` of a Node `FileHandle` that {@link readFully} uses. */
export interface ChunkReadable {
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
}

/**
 * Fill all of `dest` from file position `position`, in calls of at most {@link ioChunkBytes} bytes, looping
 * over short reads. A read error is `E_IO`; end of file before `dest` is full is `E_FORMAT` (truncated).
 */
export async function readFully(
  fh: ChunkReadable,
  dest: ArrayBufferView | ArrayBuffer,
  position: number,
  name: string,
): Promise<void> {
  for (const [o, w] of byteWindows(dest)) {
    let done = 0;
    while (done < w.length) {
      const at = position + o + done;
      let r: { bytesRead: number };
      try {
        r = await fh.read(w, done, w.length - done, at);
      } catch (e) {
        throw new CalderaError('E_IO', `${name}: read failed at byte ${at}`, { cause: e });
      }
      if (!(r.bytesRead > 0)) {
        throw new CalderaError('E_FORMAT', `${name}: file truncated while reading byte ${at}`);
      }
      done += r.bytesRead;
    }
  }
}

/**
 * Read `length` bytes at `offset` of `source` into a new `ArrayBuffer`, one window of at most
 * {@link ioChunkBytes} bytes at a time (straight into the buffer when the source has `readInto`). Unlike
 * `source.read`, the result may exceed the largest possible `Uint8Array` (4 GiB in Node 20).
 */
export async function readRange(source: ByteSource, offset: number, length: number): Promise<ArrayBuffer> {
  const out = new ArrayBuffer(length);
  for (const [o, w] of byteWindows(out)) {
    if (source.readInto) await source.readInto(offset + o, w);
    else {
      const got = await source.read(offset + o, w.length);
      if (got.length !== w.length) {
        throw new CalderaError('E_IO', `${source.name}: read returned ${got.length} of ${w.length} bytes`);
      }
      w.set(got);
    }
  }
  return out;
}
