import { notRegularFile, specialFileKind } from '../text-file.js';
import { CalderaError } from '../errors.js';
import { readFully, readRange } from '../io-chunks.js';
import { nodeFs } from '../node-builtins.js';

/**
 * Random-access bytes: what the safetensors reader reads from. Implementations exist for an in-memory
 * buffer, a `Blob` (browser `File`), and a Node file (see {@link openFileSource}).
 */
export interface ByteSource {
  /** Name used in error messages (a path, or `'<buffer>'`). */
  readonly name: string;
  /** Total size in bytes. */
  readonly size: number;
  /**
   * Read `length` bytes at `offset`. The result owns an aligned buffer of its own unless `shared` is
   * true (then it may be a view into the source's memory).
   */
  read(offset: number, length: number): Promise<Uint8Array>;
  /**
   * Optional: fill all of `dest` with the bytes at `offset`, without an intermediate copy. `dest` may be a
   * view over a buffer larger than any single `Uint8Array` can be (4 GiB in Node 20), which is how regions
   * that large are read (see {@link readWholeFile}).
   */
  readInto?(offset: number, dest: ArrayBufferView | ArrayBuffer): Promise<void>;
  /** True when `read` returns views into memory the source keeps (in-memory sources). */
  readonly shared?: boolean;
  /** Release the underlying handle (no-op for memory). */
  close(): Promise<void>;
}

function checkRange(src: { name: string; size: number }, offset: number, length: number): void {
  if (offset < 0 || length < 0 || offset + length > src.size) {
    throw new CalderaError(
      'E_FORMAT',
      `${src.name}: read of ${length} bytes at ${offset} runs past the end (${src.size} bytes)`,
    );
  }
}

/** A source over an `ArrayBuffer` or a byte view (no copy; reads return views into it). */
export function bufferSource(buf: ArrayBuffer | ArrayBufferView, name = '<buffer>'): ByteSource {
  const bytes = ArrayBuffer.isView(buf)
    ? new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength)
    : new Uint8Array(buf);
  return {
    name,
    size: bytes.length,
    shared: true,
    read(offset, length) {
      checkRange(this, offset, length);
      return Promise.resolve(bytes.subarray(offset, offset + length));
    },
    close: () => Promise.resolve(),
  };
}

/** A source over a `Blob` or `File` (browser); each read slices the blob, so nothing is loaded whole. */
export function blobSource(blob: Blob, name = (blob as { name?: string }).name ?? '<blob>'): ByteSource {
  return {
    name,
    size: blob.size,
    async read(offset, length) {
      checkRange(this, offset, length);
      const ab = await blob.slice(offset, offset + length).arrayBuffer();
      if (ab.byteLength !== length) {
        throw new CalderaError('E_IO', `${name}: blob read returned ${ab.byteLength} of ${length} bytes`);
      }
      return new Uint8Array(ab);
    },
    close: () => Promise.resolve(),
  };
}

/**
 * A source over consecutive `Blob`s read as one file of their total size (a download kept in parts: one Node `Blob`
 * holds at most 4 GiB, and Hugging Face shards reach ~5 GB). A read that spans parts is put together from them.
 */
export function blobPartsSource(parts: readonly Blob[], name: string): ByteSource {
  if (parts.length === 1) return blobSource(parts[0]!, name);
  const starts: number[] = [];
  let size = 0;
  for (const b of parts) {
    starts.push(size);
    size += b.size;
  }
  const source: ByteSource = {
    name,
    size,
    async read(offset, length) {
      checkRange(source, offset, length);
      const out = new Uint8Array(length);
      // the last part that starts at or before offset, then on through the parts the range covers
      let i = starts.length - 1;
      while (i > 0 && starts[i]! > offset) i--;
      for (let at = offset; at < offset + length; i++) {
        const from = at - starts[i]!;
        const to = Math.min(parts[i]!.size, offset + length - starts[i]!);
        const ab = await parts[i]!.slice(from, to).arrayBuffer();
        if (ab.byteLength !== to - from)
          throw new CalderaError(
            'E_IO',
            `${name}: blob read returned ${ab.byteLength} of ${to - from} bytes`,
          );
        out.set(new Uint8Array(ab), at - offset);
        at += to - from;
      }
      return out;
    },
    close: () => Promise.resolve(),
  };
  return source;
}

/** The subset of Node's `fs/promises` `FileHandle` the file source uses. */
export interface FileHandleLike {
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  stat(): Promise<{ size: number }>;
  close(): Promise<void>;
}

/**
 * A source over an open Node file handle: reads by position on demand, so a file of any size is never
 * loaded whole. Each underlying `read` call asks for at most 1 GiB (Node rejects, or in Node 20 aborts the
 * process on, single reads over 2³¹ − 1 bytes), looping until the region is complete. Closing the source
 * closes the handle.
 */
export async function fileHandleSource(fh: FileHandleLike, name: string): Promise<ByteSource> {
  const { size } = await fh.stat();
  const self = { name, size };
  return {
    name,
    size,
    async read(offset, length) {
      checkRange(self, offset, length);
      const out = new Uint8Array(length);
      await readFully(fh, out, offset, name);
      return out;
    },
    async readInto(offset, dest) {
      checkRange(self, offset, dest.byteLength);
      await readFully(fh, dest, offset, name);
    },
    close: () => fh.close(),
  };
}

/**
 * Open a file by path as a {@link ByteSource} (Node only; `node:fs` is loaded on first use). A missing file is
 * `E_MISSING`; anything that is not a regular file (after following symlinks) is `E_IO` "`path` is a directory, not a
 * `what`" (or "is a FIFO (named pipe)", "a socket", "a character device", "a block device"; `what`: the kind of file
 * expected, e.g. "safetensors file"), found by a `stat` before the file is opened, since opening a FIFO waits for a
 * writer for ever; any other `stat` or open error `E_IO`.
 */
export async function openFileSource(path: string, what = 'file'): Promise<ByteSource> {
  const fs = await nodeFs();
  const notAFile = (kind: string) => notRegularFile(path, kind, what);
  const cannotOpen = (e: unknown) => {
    const code = (e as { code?: string }).code;
    if (code === 'EISDIR') return notAFile('a directory'); // where a directory cannot even be opened (Windows)
    return new CalderaError(code === 'ENOENT' ? 'E_MISSING' : 'E_IO', `${path}: cannot open (${code ?? e})`, {
      cause: e,
    });
  };
  let stat: Awaited<ReturnType<typeof fs.stat>>;
  try {
    stat = await fs.stat(path);
  } catch (e) {
    throw cannotOpen(e);
  }
  if (!stat.isFile()) throw notAFile(specialFileKind(stat));
  let fh: Awaited<ReturnType<typeof fs.open>>;
  try {
    fh = await fs.open(path, 'r');
  } catch (e) {
    throw cannotOpen(e);
  }
  // from here the handle is closed on every failure (it was left to the garbage collector when a stat failed)
  try {
    // checked again on the handle: the path may have been replaced since the stat above
    const opened = await fh.stat();
    if (!opened.isFile()) throw notAFile(specialFileKind(opened));
    return await fileHandleSource(fh as unknown as FileHandleLike, path);
  } catch (e) {
    await fh.close().catch(() => undefined);
    throw e instanceof CalderaError
      ? e
      : new CalderaError('E_IO', `${path}: cannot stat (${(e as { code?: string }).code ?? e})`, {
          cause: e,
        });
  }
}

/**
 * Read a whole file into a new `ArrayBuffer` (Node only), through {@link openFileSource}: calls of at most
 * 1 GiB each, so it works for files over 2 GiB, which `fs.readFile` rejects (`ERR_FS_FILE_TOO_LARGE`), and
 * over 4 GiB, which no single `Uint8Array` can hold in Node 20 — view the result with a typed array (e.g.
 * `new Float64Array(buf)`; the buffer starts at offset 0, so it is aligned for any dtype). A missing file
 * is `E_MISSING`, other open or read errors `E_IO`, a file that shrinks while being read `E_FORMAT`.
 */
export async function readWholeFile(path: string): Promise<ArrayBuffer> {
  const source = await openFileSource(path);
  let buf: ArrayBuffer;
  try {
    buf = await readRange(source, 0, source.size);
  } catch (e) {
    await source.close().catch(() => undefined);
    throw e;
  }
  await source.close();
  return buf;
}
