import { describe, expect, it } from 'vitest';
import { CalderaError } from '../errors.js';
import { Rng } from '../rng.js';
import { shapeSize, tensor, type Tensor } from '../tensor.js';
import type { DType } from '../dtype.js';
import { SAFETENSORS_DTYPE_SIZE } from './dtypes.js';
import { openSafetensors } from './reader.js';
import { serializeSafetensors } from './writer.js';

const DTYPES: DType[] = ['f64', 'f32', 'f16', 'bf16', 'i8', 'u8', 'i16', 'u16', 'i32', 'u32'];

async function validFile(rng: Rng): Promise<Uint8Array> {
  const tensors: Record<string, Tensor> = {};
  const n = 1 + rng.int(4);
  for (let i = 0; i < n; i++) {
    const shape = Array.from({ length: rng.int(3) }, () => rng.int(4));
    const t = tensor(DTYPES[rng.int(DTYPES.length)]!, shape);
    const bytes = new Uint8Array(t.data.buffer);
    for (let j = 0; j < bytes.length; j++) bytes[j] = rng.int(256);
    tensors[`layer.${i}.w`] = t;
  }
  return serializeSafetensors(tensors, rng.int(2) ? { metadata: { seed: String(rng.nextU32()) } } : {});
}

function headerOf(file: Uint8Array): { len: number; json: Record<string, unknown> } {
  const len = Number(new DataView(file.buffer, file.byteOffset).getBigUint64(0, true));
  return {
    len,
    json: JSON.parse(new TextDecoder().decode(file.subarray(8, 8 + len))) as Record<string, unknown>,
  };
}

function withHeader(file: Uint8Array, json: unknown, oldLen: number): Uint8Array {
  const h = new TextEncoder().encode(JSON.stringify(json));
  const out = new Uint8Array(8 + h.length + file.length - 8 - oldLen);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(file.subarray(8 + oldLen), 8 + h.length);
  return out;
}

const randomValue = (rng: Rng): unknown =>
  [
    () => rng.int(1000),
    () => -1 - rng.int(10),
    () => 2 ** 53 + rng.int(10),
    () => 1.5,
    () => 'F32',
    () => ['BF16', 'I64', 'BOOL', 'F8', 'f32', ''][rng.int(6)],
    () => null,
    () => [rng.int(20), rng.int(20)],
    () => [],
    () => ({}),
    () => 1e308,
  ][rng.int(11)]!();

/** One random mutation of a valid file. */
function mutate(file: Uint8Array, rng: Rng): Uint8Array {
  const f = file.slice();
  const { len, json } = headerOf(file);
  switch (rng.int(10)) {
    case 0: // random byte flips anywhere
      for (let k = 1 + rng.int(4); k > 0; k--) f[rng.int(f.length)] = rng.int(256);
      return f;
    case 1: // byte flip inside the header JSON
      f[8 + rng.int(len)] = rng.int(256);
      return f;
    case 2: // truncation
      return f.subarray(0, rng.int(f.length));
    case 3: // extension with junk
      return new Uint8Array([...f, ...Array.from({ length: 1 + rng.int(16) }, () => rng.int(256))]);
    case 4: {
      // header length field edits
      const dv = new DataView(f.buffer);
      const choices = [
        BigInt(len + rng.int(9) - 4),
        BigInt(rng.nextU32()),
        (1n << 63n) + BigInt(rng.nextU32()),
        0n,
      ];
      dv.setBigUint64(0, choices[rng.int(choices.length)]!, true);
      return f;
    }
    case 5: {
      // structured edit of one tensor field
      const names = Object.keys(json).filter((k) => k !== '__metadata__');
      const e = json[names[rng.int(names.length)]!] as Record<string, unknown>;
      const field = ['dtype', 'shape', 'data_offsets'][rng.int(3)]!;
      if (rng.int(2) && Array.isArray(e[field]) && (e[field] as unknown[]).length > 0) {
        const arr = e[field] as unknown[];
        arr[rng.int(arr.length)] = randomValue(rng);
      } else e[field] = randomValue(rng);
      return withHeader(file, json, len);
    }
    case 6: {
      // delete or add a tensor / metadata entry
      const keys = Object.keys(json);
      if (rng.int(2)) delete json[keys[rng.int(keys.length)]!];
      else
        json[`extra${rng.int(3)}`] = {
          dtype: 'U8',
          shape: [rng.int(8)],
          data_offsets: [rng.int(8), rng.int(16)],
        };
      if (rng.int(4) === 0) json.__metadata__ = randomValue(rng);
      return withHeader(file, json, len);
    }
    case 7: {
      // insert or delete a byte inside the header (length field unchanged)
      const at = 8 + rng.int(len);
      return rng.int(2)
        ? new Uint8Array([...f.subarray(0, at), rng.int(256), ...f.subarray(at)])
        : new Uint8Array([...f.subarray(0, at), ...f.subarray(at + 1)]);
    }
    case 8: // byte flips in the data section only (the file stays valid)
      if (f.length > 8 + len)
        for (let k = 1 + rng.int(4); k > 0; k--) f[8 + len + rng.int(f.length - 8 - len)] = rng.int(256);
      return f;
    default: // replace the header with non-JSON or non-object JSON of the right length
      return withHeader(file, [null, 'x', 1, { a: 1 }][rng.int(4)], len);
  }
}

describe('safetensors fuzz', () => {
  it('every mutated file is either read consistently with its header or rejected with a CalderaError', async () => {
    const rng = new Rng(20240601);
    const bases = await Promise.all(Array.from({ length: 8 }, () => validFile(rng)));
    let accepted = 0;
    let rejected = 0;
    const N = 4000;
    for (let i = 0; i < N; i++) {
      let f = bases[rng.int(bases.length)]!;
      for (let m = 1 + rng.int(2); m > 0; m--) {
        try {
          f = mutate(f, rng);
        } catch {
          break; // the previous mutation broke the JSON: keep what we have
        }
      }
      const bytes = f.slice();
      try {
        const r = await openSafetensors(bytes, `case${i}`);
        for (const name of r.names()) {
          const info = r.info(name);
          const raw = await r.readRaw(name);
          const begin = r.header.dataStart + info.dataOffsets[0];
          // A correct read returns exactly the bytes the header points at, of shape × dtype size.
          expect(raw.length).toBe(shapeSize(info.shape) * SAFETENSORS_DTYPE_SIZE[info.dtype]);
          expect(Buffer.compare(raw, bytes.subarray(begin, begin + raw.length))).toBe(0);
          if (info.dtype === 'I64') expect((await r.readBigInt64(name)).length).toBe(shapeSize(info.shape));
          else expect((await r.readTensor(name)).shape).toEqual(info.shape);
        }
        accepted++;
      } catch (e) {
        if (!(e instanceof CalderaError)) throw new Error(`case ${i}: non-Caldera exception ${String(e)}`);
        rejected++;
      }
    }
    expect(accepted + rejected).toBe(N);
    // Both outcomes occur (data-section byte flips stay valid), so the check above is exercised.
    expect(accepted).toBeGreaterThan(100);
    expect(rejected).toBeGreaterThan(1000);
  }, 30_000);
});
