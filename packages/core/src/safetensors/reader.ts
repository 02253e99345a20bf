import { arrayCtor, dtypeSize, type DType } from '../dtype.js';
import { CalderaError, describeValue } from '../errors.js';
import { ioChunkBytes, readRange } from '../io-chunks.js';
import type { Tensor } from '../tensor.js';
import { contiguousStrides } from '../tensor.js';
import { SAFETENSORS_TO_DTYPE } from './dtypes.js';
import {
  parseHeader,
  parseHeaderLength,
  type SafetensorsHeader,
  type SafetensorsTensorInfo,
} from './header.js';
import { blobSource, bufferSource, openFileSource, type ByteSource } from './source.js';

/** What {@link openSafetensors} accepts: a path (Node), bytes, a `Blob`/`File`, or any {@link ByteSource}. */
export type SafetensorsInput = string | ArrayBuffer | ArrayBufferView | Blob | ByteSource;

/** The read interface shared by single-file and sharded safetensors readers. */
export interface TensorStore {
  /** `__metadata__` of the file (for a sharded checkpoint: the index's `metadata`, stringified). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Tensor names in file order. */
  names(): string[];
  /** True when the store has a tensor of that name. */
  has(name: string): boolean;
  /** Header entry of a tensor (for a sharded store this opens its shard); `E_MISSING` when absent. */
  tensorInfo(name: string): Promise<SafetensorsTensorInfo>;
  /** Read a tensor (contiguous, its own buffer unless the source is in memory and the data aligned). */
  readTensor(name: string): Promise<Tensor>;
  /**
   * The raw little-endian bytes of a tensor, as one `Uint8Array` (so at most 4 GiB in Node 20; `readTensor`
   * reads larger tensors).
   */
  readRaw(name: string): Promise<Uint8Array>;
  /** Release file handles. */
  close(): Promise<void>;
}

/**
 * `E_VALUE` unless `store` is a {@link TensorStore} (an object with its `names`, `has`, `tensorInfo` and `readTensor`
 * methods, as `openSafetensors` and `openSafetensorsDir` return): `what` names the argument, `fn` the caller. A plain
 * object failed later with "store.names is not a function".
 */
export function assertTensorStore(store: unknown, fn: string, what: string): asserts store is TensorStore {
  const missing = (['names', 'has', 'tensorInfo', 'readTensor'] as const).filter(
    (m) => typeof (store as Record<string, unknown> | null)?.[m] !== 'function',
  );
  if (store === null || typeof store !== 'object' || missing.length > 0)
    throw new CalderaError(
      'E_VALUE',
      `${fn}: ${what} must be a TensorStore (openSafetensors or openSafetensorsDir), got ${
        store === null || typeof store !== 'object'
          ? describeValue(store)
          : `an object without ${missing.join(', ')}`
      }`,
    );
}

const LITTLE_ENDIAN = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;

/**
 * A lazy safetensors reader: opening reads only the 8-byte length and the JSON header; each tensor is read
 * by offset when asked for, so a 15 GB checkpoint is never loaded whole. Create with {@link openSafetensors}.
 *
 * Dtypes: `F64 F32 F16 BF16 I8 U8 I16 U16 I32 U32` map to the tensor dtypes of the same name (f16/bf16 as
 * raw bits); `BOOL` is read as a `u8` tensor of 0/1; `I64` is read with {@link SafetensorsReader.readBigInt64}
 * (a `BigInt64Array`) or as raw bytes.
 */
export class SafetensorsReader implements TensorStore {
  readonly metadata: Readonly<Record<string, string>>;
  readonly header: SafetensorsHeader;
  private readonly byName: Map<string, SafetensorsTensorInfo>;

  private constructor(
    private readonly source: ByteSource,
    header: SafetensorsHeader,
  ) {
    this.header = header;
    this.metadata = header.metadata;
    this.byName = new Map(header.tensors.map((t) => [t.name, t]));
  }

  /** Read and validate the header of `source`. Closes the source when the header is invalid. */
  static async fromSource(source: ByteSource): Promise<SafetensorsReader> {
    try {
      const n = parseHeaderLength(await source.read(0, Math.min(8, source.size)), source.size, source.name);
      const header = parseHeader(await source.read(8, n), source.size, source.name);
      return new SafetensorsReader(source, header);
    } catch (e) {
      await source.close().catch(() => undefined);
      throw e;
    }
  }

  /** The file or buffer name used in messages. */
  get name(): string {
    return this.source.name;
  }

  names(): string[] {
    return this.header.tensors.map((t) => t.name);
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  info(name: string): SafetensorsTensorInfo {
    const t = this.byName.get(name);
    if (!t)
      throw new CalderaError('E_MISSING', `${this.source.name}: no tensor '${name}'`, {
        details: { tensor: name },
      });
    return t;
  }

  tensorInfo(name: string): Promise<SafetensorsTensorInfo> {
    try {
      return Promise.resolve(this.info(name));
    } catch (e) {
      return Promise.reject(e as Error);
    }
  }

  async readRaw(name: string): Promise<Uint8Array> {
    const t = this.info(name);
    const [b, e] = t.dataOffsets;
    return this.source.read(this.header.dataStart + b, e - b);
  }

  async readTensor(name: string): Promise<Tensor> {
    const t = this.info(name);
    const dtype = SAFETENSORS_TO_DTYPE[t.dtype];
    if (dtype === null) {
      throw new CalderaError(
        'E_DTYPE',
        `${this.source.name}: tensor '${name}' is ${t.dtype}; use readBigInt64 or readRaw`,
      );
    }
    if (!LITTLE_ENDIAN)
      throw new CalderaError('E_UNSUPPORTED', 'safetensors reading needs a little-endian host');
    const raw = await this.readOwnable(t);
    let data: Tensor['data'];
    try {
      data = typedView(dtype, raw);
    } catch (e) {
      // more elements than one typed array holds (2³² in Node 20: a U8 tensor over 4 GiB); it was a bare RangeError
      if (!(e instanceof RangeError)) throw e;
      throw new CalderaError(
        'E_UNSUPPORTED',
        `${this.source.name}: tensor '${name}' (${t.dtype}, ${raw.byteLength} bytes) has more elements than one ` +
          `typed array can hold here (${e.message})`,
        { cause: e },
      );
    }
    return { dtype, shape: [...t.shape], strides: contiguousStrides(t.shape), offset: 0, data };
  }

  /** Read an `I64` tensor as a `BigInt64Array` (flat, row-major). */
  async readBigInt64(name: string): Promise<BigInt64Array> {
    const t = this.info(name);
    if (t.dtype !== 'I64')
      throw new CalderaError('E_DTYPE', `${this.source.name}: tensor '${name}' is ${t.dtype}, not I64`);
    const raw = await this.readOwnable(t);
    if (raw instanceof ArrayBuffer) return new BigInt64Array(raw);
    const own = raw.byteOffset % 8 === 0 ? raw : raw.slice();
    return new BigInt64Array(own.buffer, own.byteOffset, own.length / 8);
  }

  /**
   * The bytes of a tensor for a typed array: `readRaw` for in-memory sources and regions of up to one I/O
   * chunk (1 GiB); larger regions of other sources go chunk by chunk into one new `ArrayBuffer`, which may
   * exceed the 4 GiB that a single `Uint8Array` can hold in Node 20 (a 28672² f64 Hessian is 6.6 GB).
   */
  private async readOwnable(t: SafetensorsTensorInfo): Promise<Uint8Array | ArrayBuffer> {
    const [b, e] = t.dataOffsets;
    if (this.source.shared || e - b <= ioChunkBytes()) return this.readRaw(t.name);
    return readRange(this.source, this.header.dataStart + b, e - b);
  }

  close(): Promise<void> {
    return this.source.close();
  }
}

/** A typed array of `dtype` over `raw` (a view when aligned, else an aligned copy). */
function typedView(dtype: DType, raw: Uint8Array | ArrayBuffer): Tensor['data'] {
  const C = arrayCtor(dtype);
  if (raw instanceof ArrayBuffer) return new C(raw);
  const size = dtypeSize(dtype);
  const own = raw.byteOffset % size === 0 ? raw : raw.slice();
  return new C(own.buffer, own.byteOffset, own.length / size);
}

/**
 * Open a safetensors file lazily. A string is a path (Node only: `node:fs` is imported on demand, so the
 * browser build never loads it); an `ArrayBuffer`/view is read in place; a `Blob`/`File` is sliced per
 * tensor; any other object is taken as a {@link ByteSource}. Malformed input throws `CalderaError('E_FORMAT')` naming
 * the file and the tensor at fault; an `input` that is none of these (null, undefined, a number, an object without
 * `read`) is `E_VALUE`.
 */
export async function openSafetensors(input: SafetensorsInput, name?: string): Promise<SafetensorsReader> {
  let source: ByteSource;
  if (typeof input === 'string') source = await openFileSource(input, 'safetensors file');
  else if (input instanceof ArrayBuffer || ArrayBuffer.isView(input)) source = bufferSource(input, name);
  else if (typeof Blob !== 'undefined' && input instanceof Blob) source = blobSource(input, name);
  else if (
    input !== null &&
    typeof input === 'object' &&
    typeof (input as Partial<ByteSource>).read === 'function' &&
    typeof (input as Partial<ByteSource>).close === 'function'
  )
    source = input as ByteSource;
  else
    throw new CalderaError(
      'E_VALUE',
      `openSafetensors: ${name ?? 'the input'} must be a path, an ArrayBuffer or byte view, a Blob or a ByteSource, ` +
        `got ${input !== null && typeof input === 'object' ? 'an object without read and close' : describeValue(input)}`,
    );
  return SafetensorsReader.fromSource(source);
}
