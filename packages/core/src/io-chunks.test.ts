import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { CalderaError } from './errors.js';
import { atomicWriteFile } from './fs-atomic.js';
import { MAX_IO_CHUNK_BYTES, setIoChunkBytesForTesting, writeFully } from './io-chunks.js';
import { openSafetensors } from './safetensors/reader.js';
import {
  blobPartsSource,
  fileHandleSource,
  readWholeFile,
  type FileHandleLike,
} from './safetensors/source.js';
import { serializeSafetensors, writeSafetensors } from './safetensors/writer.js';
import { tensor } from './tensor.js';

/** The most bytes Node accepts in one `read`/`write` call (Node 20 aborts the process on a larger read). */
const NODE_CALL_LIMIT = 2 ** 31 - 1;
const GiB2 = 2 ** 31;

/** The byte a fake file holds at `pos` (computed, so a multi-GiB fake file needs no memory). */
const byteAt = (pos: number) => (pos * 31 + 7 + Math.floor(pos / 251)) & 255;

/**
 * A fake read handle over a `size`-byte file whose content is {@link byteAt}: rejects any call longer than
 * `limit` (as Node would, except that Node 20 aborts the process instead), records every call's length and
 * position, and returns short reads of at most `shortBy` less than asked (to exercise the read loops).
 * With `fill: false` it leaves the buffer untouched, so a huge, never-touched destination costs no memory.
 */
function fakeReadHandle(size: number, limit: number, opts: { fill?: boolean; short?: number } = {}) {
  const calls: { length: number; position: number }[] = [];
  const fh: FileHandleLike = {
    read(buffer, offset, length, position) {
      calls.push({ length, position });
      if (length > limit) return Promise.reject(new RangeError(`read length ${length} > ${limit}`));
      let n = Math.min(length, size - position);
      if (opts.short && n > opts.short) n -= opts.short;
      if (opts.fill !== false) for (let i = 0; i < n; i++) buffer[offset + i] = byteAt(position + i);
      return Promise.resolve({ bytesRead: Math.max(0, n) });
    },
    stat: () => Promise.resolve({ size }),
    close: () => Promise.resolve(),
  };
  return { fh, calls };
}

/** A fake write handle: rejects calls longer than `limit`, records lengths, keeps the bytes when `keep`. */
function fakeWriteHandle(limit: number, keep: boolean, short = 0) {
  const lengths: number[] = [];
  const kept: number[] = [];
  return {
    lengths,
    kept,
    write(buffer: Uint8Array, offset: number, length: number) {
      lengths.push(length);
      if (length > limit) return Promise.reject(new RangeError(`write length ${length} > ${limit}`));
      const n = short && length > short ? length - short : length;
      if (keep) for (let i = 0; i < n; i++) kept.push(buffer[offset + i]!);
      return Promise.resolve({ bytesWritten: n });
    },
  };
}

describe('I/O chunk size', () => {
  it('stays below the 2^31 - 1 bytes Node accepts per call', () => {
    expect(MAX_IO_CHUNK_BYTES).toBe(2 ** 30);
    expect(MAX_IO_CHUNK_BYTES).toBeLessThanOrEqual(NODE_CALL_LIMIT);
  });
});

describe('regions over 2 GiB at the real chunk size (untouched buffers: no memory is committed)', () => {
  it('fileHandleSource reads a region over 2 GiB in calls of at most 1 GiB', async () => {
    const size = GiB2 + 4096;
    const { fh, calls } = fakeReadHandle(size, NODE_CALL_LIMIT, { fill: false });
    const src = await fileHandleSource(fh, 'big.bin');
    const out = await src.read(0, size);
    expect(out.length).toBe(size);
    expect(calls.map((c) => c.length)).toEqual([2 ** 30, 2 ** 30, 4096]);
    expect(calls.map((c) => c.position)).toEqual([0, 2 ** 30, 2 ** 31]);
  });

  it('writeFully writes a buffer over 2 GiB in calls of at most 1 GiB', async () => {
    const fh = fakeWriteHandle(NODE_CALL_LIMIT, false);
    await writeFully(fh, new Uint8Array(GiB2 + 16));
    expect(fh.lengths).toEqual([2 ** 30, 2 ** 30, 16]);
  });
});

describe('chunked reads and writes are exact (chunk size lowered for the test)', () => {
  const CHUNK = 1000;
  afterEach(() => {
    setIoChunkBytesForTesting();
    vi.restoreAllMocks();
  });

  it('fileHandleSource: a region across the 2 GiB mark, with short reads', async () => {
    setIoChunkBytesForTesting(CHUNK);
    const { fh, calls } = fakeReadHandle(GiB2 + 50_000, CHUNK, { short: 300 });
    const src = await fileHandleSource(fh, 'big.bin');
    const at = GiB2 - 4321;
    const out = await src.read(at, 10_007);
    expect(out.length).toBe(10_007);
    for (let i = 0; i < out.length; i++) if (out[i] !== byteAt(at + i)) expect.fail(`byte ${i} differs`);
    expect(calls.length).toBeGreaterThan(10);
    expect(Math.max(...calls.map((c) => c.length))).toBeLessThanOrEqual(CHUNK);
    // readInto fills a caller's buffer the same way
    const dest = new Uint8Array(2_345);
    await src.readInto!(GiB2 + 17, dest);
    expect([...dest]).toEqual(Array.from({ length: dest.length }, (_, i) => byteAt(GiB2 + 17 + i)));
  });

  it('fileHandleSource: truncation and read errors keep their codes', async () => {
    setIoChunkBytesForTesting(CHUNK);
    const { fh } = fakeReadHandle(5000, CHUNK);
    const lying = { ...fh, stat: () => Promise.resolve({ size: 9000 }) };
    const src = await fileHandleSource(lying, 'short.bin');
    await expect(src.read(0, 9000)).rejects.toMatchObject({ code: 'E_FORMAT' });
    const failing = { ...fh, read: () => Promise.reject(new Error('EIO')) };
    await expect((await fileHandleSource(failing, 'bad.bin')).read(0, 10)).rejects.toMatchObject({
      code: 'E_IO',
    });
  });

  it('writeFully: exact bytes of a Float64Array, with short writes', async () => {
    setIoChunkBytesForTesting(CHUNK);
    const data = Float64Array.from({ length: 1234 }, (_, i) => i * 1.5 - 7);
    const fh = fakeWriteHandle(CHUNK, true, 123);
    await writeFully(fh, data.subarray(3));
    expect(Math.max(...fh.lengths)).toBeLessThanOrEqual(CHUNK);
    expect(new Uint8Array(fh.kept)).toEqual(new Uint8Array(data.buffer, 24));
  });

  it('writeFully: a handle that writes nothing is E_IO, not an endless loop', async () => {
    const fh = { write: () => Promise.resolve({ bytesWritten: 0 }) };
    await expect(writeFully(fh, new Uint8Array(10))).rejects.toMatchObject({ code: 'E_IO' });
  });
});

describe('SafetensorsReader reads tensors larger than a chunk chunk by chunk', () => {
  afterEach(() => setIoChunkBytesForTesting());

  it('readTensor never asks its source for more than one chunk (so no Uint8Array over 4 GiB in Node 20)', async () => {
    const data = Float64Array.from({ length: 700 }, (_, i) => i * i - 0.25);
    const ids = BigInt64Array.from({ length: 300 }, (_, i) => -BigInt(i) * 3n);
    const file = new Uint8Array(
      await serializeSafetensors({
        x: tensor('f64', [700], data),
        ids: { dtype: 'I64', shape: [300], data: new Uint8Array(ids.buffer) },
      }),
    );
    const CHUNK = 512;
    const lengths: number[] = [];
    const source = {
      name: 'limited',
      size: file.length,
      read(offset: number, length: number) {
        lengths.push(length);
        if (length > CHUNK) return Promise.reject(new RangeError(`read of ${length} bytes`));
        return Promise.resolve(file.slice(offset, offset + length));
      },
      close: () => Promise.resolve(),
    };
    const r = await openSafetensors(source);
    setIoChunkBytesForTesting(CHUNK);
    lengths.length = 0;
    expect((await r.readTensor('x')).data).toEqual(data);
    expect(await r.readBigInt64('ids')).toEqual(ids);
    expect(lengths.length).toBeGreaterThan(2);
    expect(Math.max(...lengths)).toBeLessThanOrEqual(CHUNK);
  });
});

describe('real files: every FileHandle read/write call stays within the chunk', () => {
  const CHUNK = 4096;
  let dir: string;
  let reads: number[];
  let writes: number[];
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'caldera-io-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  afterEach(() => {
    setIoChunkBytesForTesting();
    vi.restoreAllMocks();
  });

  /** Spy on Node's FileHandle: record read/write lengths and reject any over CHUNK. */
  async function limitFileHandle(): Promise<void> {
    const probe = await open(join(dir, 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as {
      read: (...a: unknown[]) => Promise<unknown>;
      write: (...a: unknown[]) => Promise<unknown>;
    };
    await probe.close();
    reads = [];
    writes = [];
    const { read, write } = proto;
    vi.spyOn(proto, 'read').mockImplementation(function (this: unknown, ...a: unknown[]) {
      const len = typeof a[2] === 'number' ? a[2] : Infinity;
      reads.push(len);
      if (len > CHUNK) return Promise.reject(new RangeError(`read length ${len} > ${CHUNK}`));
      return read.apply(this, a);
    });
    vi.spyOn(proto, 'write').mockImplementation(function (this: unknown, ...a: unknown[]) {
      const len = typeof a[0] === 'string' ? a[0].length : typeof a[2] === 'number' ? a[2] : Infinity;
      writes.push(len);
      if (len > CHUNK) return Promise.reject(new RangeError(`write length ${len} > ${CHUNK}`));
      return write.apply(this, a);
    });
    setIoChunkBytesForTesting(CHUNK);
  }

  it('writeSafetensors and readTensor / readBigInt64 of tensors larger than a chunk', async () => {
    await limitFileHandle();
    const n = 47; // 47² f64 = 17672 bytes: 5 chunks
    const h = tensor(
      'f64',
      [n, n],
      Float64Array.from({ length: n * n }, (_, i) => Math.sin(i) * 1e3),
    );
    const ids = BigInt64Array.from({ length: 1500 }, (_, i) => BigInt(i) * 1_000_000_007n - 5n);
    const ints = { dtype: 'I64' as const, shape: [1500], data: new Uint8Array(ids.buffer) };
    const small = tensor('f32', [3], Float32Array.of(1, 2, 3));
    const path = join(dir, 'big.safetensors');
    await writeSafetensors(path, { small, h, ints });
    expect(writes.length).toBeGreaterThanOrEqual(Math.ceil((n * n * 8 + 1500 * 8) / CHUNK));
    expect(Math.max(...writes)).toBeLessThanOrEqual(CHUNK);

    const r = await openSafetensors(path);
    try {
      const t = await r.readTensor('h');
      expect(t.shape).toEqual([n, n]);
      expect(t.data).toEqual(h.data);
      expect(await r.readBigInt64('ints')).toEqual(ids);
      expect((await r.readTensor('small')).data).toEqual(small.data);
      expect(new Uint8Array(await r.readRaw('h'))).toEqual(new Uint8Array(h.data.buffer));
    } finally {
      await r.close();
    }
    expect(reads.length).toBeGreaterThan(0);
    expect(Math.max(...reads)).toBeLessThanOrEqual(CHUNK);
  });

  it('atomicWriteFile writes bytes (a Uint8Array, a Float64Array, an ArrayBuffer) in chunks', async () => {
    await limitFileHandle();
    const f64 = Float64Array.from({ length: 3000 }, (_, i) => i / 7);
    const bytes = new Uint8Array(f64.buffer);
    for (const content of [bytes, f64, f64.buffer]) {
      writes = [];
      const path = join(dir, 'atomic.bin');
      await atomicWriteFile(path, content);
      expect(writes.length).toBeGreaterThanOrEqual(Math.ceil(bytes.length / CHUNK));
      expect(Math.max(...writes)).toBeLessThanOrEqual(CHUNK);
      expect(new Uint8Array(await readFile(path))).toEqual(bytes);
    }
  });

  it('readWholeFile reads a file in chunks into an ArrayBuffer', async () => {
    const f64 = Float64Array.from({ length: 2500 }, (_, i) => Math.cos(i));
    const path = join(dir, 'whole.f64');
    await writeFile(path, new Uint8Array(f64.buffer));
    await writeFile(join(dir, 'empty'), '');
    await limitFileHandle();
    const buf = await readWholeFile(path);
    expect(buf).toBeInstanceOf(ArrayBuffer);
    expect(new Float64Array(buf)).toEqual(f64);
    expect(reads.length).toBeGreaterThanOrEqual(Math.ceil(buf.byteLength / CHUNK));
    expect(Math.max(...reads)).toBeLessThanOrEqual(CHUNK);
    expect((await readWholeFile(join(dir, 'empty'))).byteLength).toBe(0);
  });

  it('readWholeFile: a missing file is E_MISSING', async () => {
    const err = await readWholeFile(join(dir, 'nope.f64')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CalderaError);
    expect(err).toMatchObject({ code: 'E_MISSING' });
  });
});

describe('blobPartsSource (a download kept in parts: one Node Blob holds at most 4 GiB)', () => {
  it('reads every range of the parts as of one file, across part boundaries; past the end is E_FORMAT', async () => {
    const sizes = [3, 1, 7, 5];
    const all = Uint8Array.from({ length: 16 }, (_, i) => (i * 37 + 11) & 255);
    const parts: Blob[] = [];
    let at = 0;
    for (const n of sizes) {
      parts.push(new Blob([all.slice(at, at + n)]));
      at += n;
    }
    const src = blobPartsSource(parts, 'model.safetensors');
    expect(src.size).toBe(16);
    for (let offset = 0; offset <= 16; offset++)
      for (let length = 0; offset + length <= 16; length++)
        expect(await src.read(offset, length)).toEqual(all.slice(offset, offset + length));
    await expect(src.read(10, 7)).rejects.toThrow(
      /^E_FORMAT: model\.safetensors: read of 7 bytes at 10 runs past the end \(16 bytes\)$/,
    );
  });
});
