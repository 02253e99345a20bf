import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CalderaError } from '../errors.js';
import { Rng } from '../rng.js';
import { contiguous, get, tensor, transpose, type Tensor } from '../tensor.js';
import { openSafetensors } from './reader.js';
import { openSafetensorsDir, openShardedSafetensors, parseSafetensorsIndex } from './sharded.js';
import { serializeSafetensors, writeSafetensors } from './writer.js';
import { readCheckpointMeta } from '../checkpoint/dir.js';

/** Build a file by hand from the published layout: u64 LE header length, JSON header, raw data. */
function handMade(header: object | string, data: Uint8Array, lenOverride?: bigint): Uint8Array {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lenOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

const le = (arr: ArrayBufferView) => new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength);

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'caldera-st-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('reading the published format', () => {
  it('reads a hand-made file with metadata, every dtype and unaligned offsets', async () => {
    const a = Float32Array.of(1, -2.5, 3, 4);
    const b = Int8Array.of(-1, 2, 3);
    const c = BigInt64Array.of(-5n, 1n << 40n);
    const d = Uint8Array.of(1, 0);
    const h = Uint16Array.of(0x3c00, 0xc000); // f16 1, -2
    const data = new Uint8Array([...le(b), ...le(a), ...le(c), ...le(d), ...le(h)]);
    const file = handMade(
      {
        __metadata__: { format: 'pt' },
        b: { dtype: 'I8', shape: [3], data_offsets: [0, 3] },
        a: { dtype: 'F32', shape: [2, 2], data_offsets: [3, 19] },
        c: { dtype: 'I64', shape: [2], data_offsets: [19, 35] },
        d: { dtype: 'BOOL', shape: [2], data_offsets: [35, 37] },
        h: { dtype: 'F16', shape: [1, 2], data_offsets: [37, 41] },
        e: { dtype: 'F64', shape: [0, 3], data_offsets: [41, 41] },
      },
      data,
    );
    const r = await openSafetensors(file.buffer as ArrayBuffer);
    expect(r.metadata).toEqual({ format: 'pt' });
    expect(r.names()).toEqual(['b', 'a', 'c', 'd', 'h', 'e']);
    const ta = await r.readTensor('a');
    expect(ta.dtype).toBe('f32');
    expect(ta.shape).toEqual([2, 2]);
    expect(Array.from(ta.data)).toEqual([1, -2.5, 3, 4]);
    expect(Array.from((await r.readTensor('b')).data)).toEqual([-1, 2, 3]);
    expect(Array.from(await r.readBigInt64('c'))).toEqual([-5n, 1n << 40n]);
    expect((await r.readTensor('d')).dtype).toBe('u8');
    expect(get(await r.readTensor('h'), 0, 1)).toBe(-2);
    expect((await r.readTensor('e')).shape).toEqual([0, 3]);
    await expect(r.readTensor('c')).rejects.toThrow(/I64/);
    await expect(r.readTensor('zz')).rejects.toMatchObject({ code: 'E_MISSING' });
  });

  it('writer output follows the layout: LE length, 8-byte aligned header, contiguous offsets', async () => {
    const t = { x: tensor('f32', [3], [1, 2, 3]), y: tensor('u16', [2], [7, 8]) };
    const bytes = await serializeSafetensors(t, { metadata: { k: 'v' } });
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect((8 + n) % 8).toBe(0);
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) as Record<string, unknown>;
    expect(header).toEqual({
      __metadata__: { k: 'v' },
      x: { dtype: 'F32', shape: [3], data_offsets: [0, 12] },
      y: { dtype: 'U16', shape: [2], data_offsets: [12, 16] },
    });
    expect(Array.from(new Float32Array(bytes.slice(8 + n, 8 + n + 12).buffer))).toEqual([1, 2, 3]);
    expect(bytes.length).toBe(8 + n + 16);
  });
});

describe('round trips', () => {
  const rng = new Rng(42);
  const w = tensor('f32', [5, 7], rng.fillNormal(new Float32Array(35)));
  const tensors = {
    'model.w': transpose(w), // a strided view: written contiguous
    'model.h': tensor('bf16', [4], Uint16Array.of(1, 2, 3, 0xffff)),
    'model.i': tensor('i32', [2, 2], [1, -2, 3, -4]),
    'model.ids': { dtype: 'I64' as const, shape: [2], data: () => le(BigInt64Array.of(9n, -9n)) },
  };

  it('file (Node handle), ArrayBuffer and Blob sources read the same tensors', async () => {
    const path = join(dir, 'rt.safetensors');
    const progress: number[] = [];
    await writeSafetensors(path, tensors, {
      metadata: { a: '1' },
      onProgress: (e) => progress.push(e.bytesWritten),
    });
    expect(progress).toEqual([140, 148, 164, 180]);
    expect((await readdir(dir)).filter((f) => f.includes('.tmp-'))).toEqual([]);
    const bytes = await readFile(path);
    const mem = await serializeSafetensors(tensors, { metadata: { a: '1' } });
    expect(Buffer.compare(bytes, mem)).toBe(0);
    for (const input of [path, bytes, new Blob([bytes])]) {
      const r = await openSafetensors(input);
      expect(r.metadata).toEqual({ a: '1' });
      const got = await r.readTensor('model.w');
      expect(got.shape).toEqual([7, 5]);
      expect(Array.from(got.data)).toEqual(Array.from(contiguous(transpose(w)).data));
      expect(Array.from((await r.readTensor('model.h')).data)).toEqual([1, 2, 3, 0xffff]);
      expect(Array.from(await r.readBigInt64('model.ids'))).toEqual([9n, -9n]);
      await r.close();
    }
  });

  it('reads lazily: opening a file reads only the header', async () => {
    const path = join(dir, 'lazy.safetensors');
    await writeSafetensors(path, tensors);
    const reads: [number, number][] = [];
    const bytes = await readFile(path);
    const r = await openSafetensors({
      name: 'spy',
      size: bytes.length,
      read: (o, l) => {
        reads.push([o, l]);
        return Promise.resolve(bytes.subarray(o, o + l));
      },
      close: () => Promise.resolve(),
    });
    expect(reads.length).toBe(2);
    expect(reads[1]![0]).toBe(8);
    await r.readRaw('model.i');
    expect(reads[2]![1]).toBe(16);
  });

  it('an input that is not a path, bytes, a Blob or a ByteSource (null, undefined, a number) is E_VALUE', async () => {
    for (const [input, got] of [
      [null, 'null'],
      [undefined, 'undefined'],
      [5, 'a number'],
      [{ name: 'x', size: 3 }, 'an object without read and close'],
    ] as const)
      await expect(openSafetensors(input as unknown as Uint8Array, 'w.safetensors')).rejects.toThrow(
        expect.objectContaining({
          code: 'E_VALUE',
          message:
            'E_VALUE: openSafetensors: w.safetensors must be a path, an ArrayBuffer or byte view, a Blob or a ' +
            `ByteSource, got ${got}`,
        }),
      );
  });

  it('writing is atomic: a failing tensor leaves neither a partial file nor a temp file', async () => {
    const path = join(dir, 'atomic.safetensors');
    await writeFile(path, 'old');
    const bad = {
      ...tensors,
      boom: { dtype: 'U8' as const, shape: [4], data: () => Promise.reject(new Error('producer failed')) },
    };
    await expect(writeSafetensors(path, bad)).rejects.toMatchObject({ code: 'E_IO' });
    expect(await readFile(path, 'utf8')).toBe('old');
    expect((await readdir(dir)).filter((f) => f.includes('.tmp-'))).toEqual([]);
    const ac = new AbortController();
    ac.abort();
    await expect(writeSafetensors(path, tensors, { signal: ac.signal })).rejects.toMatchObject({
      code: 'E_ABORTED',
    });
    expect(await readFile(path, 'utf8')).toBe('old');
  });

  it('rejects bad writer input', async () => {
    await expect(
      serializeSafetensors({ x: { dtype: 'U8', shape: [3], data: new Uint8Array(2) } }),
    ).rejects.toThrow(/2 bytes given/);
    await expect(serializeSafetensors({ __metadata__: tensor('u8', [1]) })).rejects.toThrow(CalderaError);
  });

  it('a tensor and a metadata key named __proto__ are written as keys of the header and read back', async () => {
    // Object.fromEntries and JSON.parse make '__proto__' an own key (a literal { __proto__: … } would not)
    const named = Object.fromEntries([
      ['__proto__', tensor('f32', [2], [1, 2])],
      ['b', tensor('u8', [1], [7])],
    ]) as Record<string, Tensor>;
    const metadata = JSON.parse('{"__proto__":"x","a":"b"}') as Record<string, string>;
    const bytes = await serializeSafetensors(named, { metadata });
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(new TextDecoder().decode(bytes.subarray(8, 8 + n)).trimEnd()).toBe(
      '{"__metadata__":{"__proto__":"x","a":"b"},' +
        '"__proto__":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' +
        '"b":{"dtype":"U8","shape":[1],"data_offsets":[8,9]}}',
    );
    const path = join(dir, 'proto.safetensors');
    await writeSafetensors(path, named, { metadata });
    expect(Buffer.compare(await readFile(path), bytes)).toBe(0);
    const r = await openSafetensors(path);
    expect(r.names()).toEqual(['__proto__', 'b']);
    expect(Array.from((await r.readTensor('__proto__')).data)).toEqual([1, 2]);
    expect(Object.entries(r.metadata)).toEqual([
      ['__proto__', 'x'],
      ['a', 'b'],
    ]);
    await r.close();
  });

  it('metadata that is not a plain object (a string, an array, a Map) is E_VALUE, and no file is written; null is none', async () => {
    const path = join(dir, 'md.safetensors');
    for (const [metadata, got] of [
      ['abc', 'a string'],
      [['x', 'y'], 'an array'],
      [new Map([['a', 'b']]), 'an object (Map)'],
    ] as const) {
      const message = `E_VALUE: safetensors: metadata must be an object of string keys to string values, got ${got}`;
      const options = { metadata: metadata as unknown as Record<string, string> };
      await expect(serializeSafetensors({ t: tensor('u8', [1]) }, options)).rejects.toThrow(
        expect.objectContaining({ code: 'E_VALUE', message }),
      );
      await expect(writeSafetensors(path, { t: tensor('u8', [1]) }, options)).rejects.toThrow(
        expect.objectContaining({ code: 'E_VALUE', message }),
      );
    }
    expect((await readdir(dir)).filter((f) => f.startsWith('md.safetensors'))).toEqual([]);
    // from JavaScript, null options are none (as everywhere in the SDK)
    const none = { metadata: null as unknown as Record<string, string> };
    expect(await serializeSafetensors({ t: tensor('u8', [1]) }, none)).toEqual(
      await serializeSafetensors({ t: tensor('u8', [1]) }),
    );
  });

  it('a signal that is not an AbortSignal is E_VALUE naming the option, and no file is written', async () => {
    const path = join(dir, 'sig.safetensors');
    const signal = {} as AbortSignal;
    await expect(writeSafetensors(path, { t: tensor('u8', [1]) }, { signal })).rejects.toThrow(
      expect.objectContaining({
        code: 'E_VALUE',
        message: 'E_VALUE: writeSafetensors: signal must be an AbortSignal, got an object',
      }),
    );
    expect((await readdir(dir)).filter((f) => f.startsWith('sig.safetensors'))).toEqual([]);
  });

  it('a tensor view reaching past its data is E_SHAPE naming the tensor, not written zero-padded', async () => {
    const data = Float32Array.of(1, 2, 3, 4, 5);
    const past = { dtype: 'f32' as const, shape: [4], strides: [1], offset: 3, data };
    const short = { dtype: 'f32' as const, shape: [4], strides: [1], offset: 0, data: data.subarray(0, 2) };
    await expect(serializeSafetensors({ past })).rejects.toThrow(
      /^E_SHAPE: contiguous: tensor 'past' \(shape \[4\], offset 3, strides \[1\]\) reads data\[3 … 6\], outside its data of 5 elements$/,
    );
    await expect(serializeSafetensors({ short })).rejects.toThrow(
      /E_SHAPE: contiguous: tensor 'short' .* reads data\[0 … 3\], outside its data of 2 elements/,
    );
    const path = join(dir, 'past.safetensors');
    await expect(writeSafetensors(path, { a: tensor('f32', [1]), past })).rejects.toMatchObject({
      code: 'E_SHAPE',
      message: expect.stringContaining("tensor 'past'") as unknown,
    });
    expect((await readdir(dir)).filter((f) => f.startsWith('past.safetensors'))).toEqual([]);
  });
});

describe('sharded checkpoints', () => {
  it('reads tensors through model.safetensors.index.json, opening shards lazily', async () => {
    const sdir = join(dir, 'sharded');
    await import('node:fs/promises').then((fs) => fs.mkdir(sdir));
    await writeSafetensors(join(sdir, 'model-00001-of-00002.safetensors'), { a: tensor('f32', [2], [1, 2]) });
    await writeSafetensors(join(sdir, 'model-00002-of-00002.safetensors'), { b: tensor('i8', [1], [5]) });
    const index = {
      metadata: { total_size: 9 },
      weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' },
    };
    await writeFile(join(sdir, 'model.safetensors.index.json'), JSON.stringify(index));
    const r = await openSafetensorsDir(sdir);
    expect(r.names()).toEqual(['a', 'b']);
    expect(r.metadata).toEqual({ total_size: '9' });
    expect(Array.from((await r.readTensor('b')).data)).toEqual([5]);
    expect((await r.tensorInfo('a')).shape).toEqual([2]);
    await expect(r.readTensor('c')).rejects.toMatchObject({ code: 'E_MISSING' });
    await r.close();

    // Browser form: index JSON + a function returning each shard's bytes.
    const opened: string[] = [];
    const br = await openShardedSafetensors({
      json: { ...index, weight_map: { ...index.weight_map, ghost: 'model-00002-of-00002.safetensors' } },
      open: async (f) => {
        opened.push(f);
        return new Blob([await readFile(join(sdir, f))]);
      },
    });
    expect(opened).toEqual([]);
    expect(Array.from((await br.readTensor('a')).data)).toEqual([1, 2]);
    expect(opened).toEqual(['model-00001-of-00002.safetensors']);
    await expect(br.readTensor('ghost')).rejects.toThrow(/which has no such tensor/);
    await expect(
      openShardedSafetensors({ json: { weight_map: { a: '../x' } }, open: () => never() }),
    ).rejects.toThrow(CalderaError);
    // an array is no weight_map (its entries were read as tensors named '0', '1', …)
    await expect(
      openShardedSafetensors({ json: { weight_map: ['model.safetensors'] }, open: () => never() }),
    ).rejects.toThrow(/E_FORMAT: .*missing the 'weight_map' object/);
  });
});

describe('keys named __proto__ on read', () => {
  it('a __metadata__ key named __proto__ is an entry of metadata', async () => {
    const r = await openSafetensors(
      handMade('{"__metadata__":{"__proto__":"x","a":"b"}}', new Uint8Array(0)),
    );
    expect(Object.entries(r.metadata)).toEqual([
      ['__proto__', 'x'],
      ['a', 'b'],
    ]);
  });

  it('a weight_map entry named __proto__ is a tensor of the index', async () => {
    const json = '{"weight_map":{"__proto__":"a.safetensors","x":"a.safetensors"}}';
    expect(Object.entries(parseSafetensorsIndex(json).weightMap)).toEqual([
      ['__proto__', 'a.safetensors'],
      ['x', 'a.safetensors'],
    ]);
    const shard = await serializeSafetensors(
      Object.fromEntries([
        ['__proto__', tensor('f32', [1], [3])],
        ['x', tensor('f32', [1], [4])],
      ]) as Record<string, Tensor>,
    );
    const r = await openShardedSafetensors({ json, open: () => Promise.resolve(shard) });
    expect(r.names()).toEqual(['__proto__', 'x']);
    expect(r.has('__proto__')).toBe(true);
    expect(Array.from((await r.readTensor('__proto__')).data)).toEqual([3]);
    await r.close();
  });
});

function never(): Promise<never> {
  return Promise.reject(new Error('unreachable'));
}

describe('malformed files are rejected with E_FORMAT naming the problem', () => {
  const ok = { dtype: 'F32', shape: [2], data_offsets: [0, 8] };
  const data8 = new Uint8Array(8);
  const cases: [string, Uint8Array, RegExp][] = [
    ['truncated below 8 bytes', new Uint8Array(5), /truncated/],
    ['header length larger than the file', handMade({ x: ok }, data8, 10_000n), /larger than/],
    ['header length 2^64-1', handMade({ x: ok }, data8, (1n << 64n) - 1n), /larger than/],
    ['invalid JSON', handMade('{"x": [', data8), /not valid JSON/],
    ['header not an object', handMade('[1,2]', data8), /start with/],
    [
      'unknown dtype',
      handMade({ x: { ...ok, dtype: 'F8_E4M3' } }, data8),
      /tensor 'x': unknown dtype "F8_E4M3" \(floating-point weights of 8 bits or fewer, FP8, FP6 or FP4, are not read: use the model's bf16, f16 or f32 release\)/,
    ],
    [
      'unknown dtype, not a small float',
      handMade({ x: { ...ok, dtype: 'C64' } }, data8),
      /tensor 'x': unknown dtype "C64"$/,
    ],
    ['shape × dtype ≠ byte length', handMade({ x: { ...ok, shape: [3] } }, data8), /tensor 'x'.*12 bytes/],
    [
      'overlapping offsets',
      handMade(
        { x: { ...ok, data_offsets: [0, 8] }, y: { dtype: 'U8', shape: [4], data_offsets: [4, 8] } },
        data8,
      ),
      /tensor 'y'.*overlap/,
    ],
    [
      'a gap',
      handMade({ x: { dtype: 'U8', shape: [4], data_offsets: [4, 8] } }, data8),
      /tensor 'x': gap of 4/,
    ],
    [
      'offsets past the end',
      handMade({ x: { dtype: 'U8', shape: [16], data_offsets: [0, 16] } }, data8),
      /past the end/,
    ],
    ['trailing bytes', handMade({ x: { dtype: 'U8', shape: [4], data_offsets: [0, 4] } }, data8), /trailing/],
    ['metadata value not a string', handMade({ __metadata__: { a: 1 }, x: ok }, data8), /__metadata__.a/],
    ['negative offsets', handMade({ x: { ...ok, data_offsets: [-8, 0] } }, data8), /data_offsets/],
    ['fractional shape', handMade({ x: { ...ok, shape: [1.5] } }, data8), /shape/],
  ];
  for (const [what, bytes, re] of cases) {
    it(what, async () => {
      const err = await openSafetensors(bytes, 'bad.safetensors').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CalderaError);
      expect((err as CalderaError).code).toBe('E_FORMAT');
      expect((err as CalderaError).message).toMatch(/^E_FORMAT: bad\.safetensors: /);
      expect((err as CalderaError).message).toMatch(re);
    });
  }

  it('a file truncated on disk after the header was read fails with a CalderaError', async () => {
    const path = join(dir, 'trunc.safetensors');
    await writeSafetensors(path, { x: tensor('f32', [1000]) });
    const r = await openSafetensors(path);
    const { truncate } = await import('node:fs/promises');
    await truncate(path, 200);
    await expect(r.readTensor('x')).rejects.toMatchObject({ code: 'E_FORMAT' });
    await r.close();
    await expect(openSafetensors(path)).rejects.toThrow(/past the end/);
    await expect(openSafetensors(join(dir, 'nope.safetensors'))).rejects.toMatchObject({ code: 'E_MISSING' });
  });

  it('a directory where the file should be is E_IO saying so, not a failed read at byte 0', async () => {
    const path = join(dir, 'model.safetensors');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(path);
    const e = await openSafetensors(path).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(CalderaError);
    expect(e).toMatchObject({
      code: 'E_IO',
      message: `E_IO: ${path} is a directory, not a safetensors file`,
    });
    await rm(path, { recursive: true });
  });

  it('a FIFO (named pipe), or a symlink to one, is E_IO saying so at once, not an open that waits for a writer', async (ctx) => {
    const fifo = join(dir, 'fifo.safetensors');
    try {
      execFileSync('mkfifo', [fifo]);
    } catch (e) {
      if ((e as { code?: string }).code === 'ENOENT') ctx.skip('mkfifo is not available on this system');
      throw e;
    }
    const link = join(dir, 'fifo-link.safetensors');
    await symlink(fifo, link);
    for (const path of [fifo, link])
      await expect(openSafetensors(path)).rejects.toThrow(
        expect.objectContaining({
          code: 'E_IO',
          message: `E_IO: ${path} is a FIFO (named pipe), not a safetensors file`,
        }),
      );
    await rm(link);
    await rm(fifo);
    // the JSON files beside the weights likewise: a sharded index, a checkpoint's caldera.json (they hung too)
    const index = join(dir, 'model.safetensors.index.json');
    const ckpt = join(dir, 'ckpt-fifo');
    await mkdir(ckpt);
    for (const f of [index, join(ckpt, 'caldera.json')]) execFileSync('mkfifo', [f]);
    await expect(openShardedSafetensors(index)).rejects.toThrow(
      `E_IO: ${index} is a FIFO (named pipe), not a safetensors index file`,
    );
    await expect(readCheckpointMeta(ckpt)).rejects.toThrow(
      `E_IO: ${ckpt}/caldera.json is a FIFO (named pipe), not a caldera.json file`,
    );
    await rm(index);
    await rm(ckpt, { recursive: true });
  });
});
