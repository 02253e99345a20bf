import { CalderaError } from '../errors.js';
import { isSafetensorsDType, SAFETENSORS_DTYPE_SIZE, type SafetensorsDType } from './dtypes.js';

/** One tensor entry of a safetensors header. */
export interface SafetensorsTensorInfo {
  readonly name: string;
  readonly dtype: SafetensorsDType;
  readonly shape: readonly number[];
  /** `[begin, end)` byte offsets relative to the first byte after the header. */
  readonly dataOffsets: readonly [number, number];
}

/** A parsed, validated safetensors header. */
export interface SafetensorsHeader {
  /** The `__metadata__` map (empty when absent), an object without a prototype: every key is an entry. */
  readonly metadata: Readonly<Record<string, string>>;
  /** Tensor entries in file (data-offset) order. */
  readonly tensors: readonly SafetensorsTensorInfo[];
  /** Absolute byte offset of the data section: 8 + header length. */
  readonly dataStart: number;
}

/** Largest header accepted (the reference implementation's limit): protects against absurd lengths. */
export const MAX_HEADER_BYTES = 100_000_000;

const fail = (file: string, msg: string, details?: Record<string, unknown>): never => {
  throw new CalderaError('E_FORMAT', `${file}: ${msg}`, { details: { file, ...details } });
};

/**
 * Read the 8-byte little-endian header length and check it against the file size. Returns the length.
 * Throws `E_FORMAT` when the file is shorter than 8 bytes, the length exceeds the file or {@link MAX_HEADER_BYTES}.
 */
export function parseHeaderLength(prefix: Uint8Array, fileSize: number, file: string): number {
  if (fileSize < 8 || prefix.length < 8)
    fail(file, `truncated: ${fileSize} bytes, a safetensors file needs at least 8`);
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(fileSize - 8)) {
    fail(file, `header length ${n} is larger than the ${fileSize - 8} bytes after the length field`);
  }
  if (n > BigInt(MAX_HEADER_BYTES))
    fail(file, `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  if (n < 2n) fail(file, `header length ${n} is too small for a JSON object`);
  return Number(n);
}

function isNonNegInt(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

/**
 * Parse and validate the JSON header. `fileSize` is the total file size, used to check that the data
 * section is exactly covered: offsets must be contiguous from 0, with no gaps or overlaps, ending at the
 * end of the file, and each tensor's byte length must equal shape × dtype size.
 */
export function parseHeader(json: Uint8Array, fileSize: number, file: string): SafetensorsHeader {
  const dataStart = 8 + json.length;
  if (json[0] !== 0x7b) fail(file, `header does not start with '{'`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(json);
  } catch (e) {
    return fail(file, 'header is not valid UTF-8', { cause: String(e) });
  }
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    return fail(file, `header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj))
    fail(file, 'header is not a JSON object');
  // without a prototype: a key '__proto__' is an entry like any other (in `{}` assigning it would set the prototype)
  const metadata = Object.create(null) as Record<string, string>;
  const tensors: SafetensorsTensorInfo[] = [];
  for (const [name, v] of Object.entries(obj as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof v !== 'object' || v === null || Array.isArray(v))
        fail(file, '__metadata__ is not an object');
      for (const [k, s] of Object.entries(v as Record<string, unknown>)) {
        if (typeof s !== 'string') fail(file, `__metadata__.${k} is not a string`);
        metadata[k] = s as string;
      }
      continue;
    }
    const where = `tensor '${name}'`;
    if (typeof v !== 'object' || v === null || Array.isArray(v))
      fail(file, `${where}: entry is not an object`);
    const e = v as Record<string, unknown>;
    if (!isSafetensorsDType(e.dtype))
      fail(
        file,
        `${where}: unknown dtype ${JSON.stringify(e.dtype)}` +
          // FP8/FP6/FP4 releases (F8_E4M3, F8_E5M2, F4, …): say what to use instead
          (typeof e.dtype === 'string' && /^F[4-8](_|$)/.test(e.dtype)
            ? " (floating-point weights of 8 bits or fewer, FP8, FP6 or FP4, are not read: use the model's bf16, f16 or f32 release)"
            : ''),
        { tensor: name },
      );
    const dtype = e.dtype as SafetensorsDType;
    if (!Array.isArray(e.shape) || !e.shape.every(isNonNegInt)) {
      fail(file, `${where}: shape ${JSON.stringify(e.shape)} is not a list of non-negative integers`, {
        tensor: name,
      });
    }
    const shape = e.shape as number[];
    const off = e.data_offsets;
    if (
      !Array.isArray(off) ||
      off.length !== 2 ||
      !isNonNegInt(off[0]) ||
      !isNonNegInt(off[1]) ||
      off[0] > off[1]
    ) {
      fail(file, `${where}: data_offsets ${JSON.stringify(off)} is not [begin, end] with 0 <= begin <= end`, {
        tensor: name,
      });
    }
    const [begin, end] = off as [number, number];
    let nbytes = SAFETENSORS_DTYPE_SIZE[dtype];
    for (const d of shape) nbytes *= d;
    if (!Number.isSafeInteger(nbytes) || nbytes !== end - begin) {
      fail(
        file,
        `${where}: shape [${shape.join(', ')}] × ${dtype} is ${nbytes} bytes but data_offsets [${begin}, ${end}] span ${end - begin}`,
        { tensor: name },
      );
    }
    tensors.push({ name, dtype, shape, dataOffsets: [begin, end] });
  }
  tensors.sort((a, b) => a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]);
  let pos = 0;
  for (const t of tensors) {
    const [b, e] = t.dataOffsets;
    if (b < pos)
      fail(
        file,
        `tensor '${t.name}': data_offsets [${b}, ${e}] overlap the previous tensor (ends at ${pos})`,
        { tensor: t.name },
      );
    if (b > pos)
      fail(file, `tensor '${t.name}': gap of ${b - pos} bytes before data_offsets [${b}, ${e}]`, {
        tensor: t.name,
      });
    pos = e;
  }
  const dataBytes = fileSize - dataStart;
  if (pos > dataBytes) {
    const last = tensors[tensors.length - 1]!;
    fail(
      file,
      `tensor '${last.name}': data ends at ${pos}, past the end of the data section (${dataBytes} bytes)`,
      {
        tensor: last.name,
      },
    );
  }
  if (pos < dataBytes) fail(file, `${dataBytes - pos} trailing bytes after the last tensor's data`);
  return { metadata, tensors, dataStart };
}
