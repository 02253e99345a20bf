import type { E8PEncodeTables } from './e8p-encode.js';
import { E8P_ENCODE_WASM_BASE64 } from './generated/e8p-encode-wasm.js';

/**
 * The E8P12 encoder of `e8p-encode.ts` compiled to WebAssembly from `asm/e8p-encode.ts` (AssemblyScript, built by
 * `scripts/build-wasm.mjs`). Same algorithm, same f64 expressions and tie-breaking, so the codes are bit-identical
 * to the TypeScript encoder, which stays the reference and the fallback where WebAssembly is unavailable.
 *
 * Memory: the tables are written once at the addresses the module exports; per call the input is copied in and
 * the codes out in chunks of {@link CHUNK} vectors, so the module's memory stays at {@link PAGES} pages (192 KiB) whatever the input size.
 */
interface Kernel {
  memory: WebAssembly.Memory;
  encode: (x: number, count: number, out: number) => void;
  /** Byte address of the f32 input chunk. */
  xAddr: number;
  /** Byte address of the u16 code chunk. */
  outAddr: number;
}

/** Vectors per chunk: 128 KiB of input, 8 KiB of codes. */
const CHUNK = 4096;
/** 64 KiB pages of the module's memory: tables, scratch and one chunk. */
const PAGES = 3;

let kernel: Kernel | null | undefined;

function exported(inst: WebAssembly.Instance, name: string): number {
  return (inst.exports[name] as WebAssembly.Global).value as number;
}

/** The instantiated encoder with the tables in its memory (once per thread), or null without WebAssembly. */
function wasmKernel(t: E8PEncodeTables): Kernel | null {
  if (kernel !== undefined) return kernel;
  try {
    const bytes = Uint8Array.from(atob(E8P_ENCODE_WASM_BASE64), (c) => c.charCodeAt(0));
    const memory = new WebAssembly.Memory({ initial: PAGES, maximum: PAGES });
    const inst = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } });
    const buf = memory.buffer;
    new Float32Array(buf, exported(inst, 'SOURCES'), 256 * 8).set(t.sources);
    new Uint8Array(buf, exported(inst, 'ODD_SUM'), 256).set(t.oddSum);
    new Int16Array(buf, exported(inst, 'MASK_INDEX'), 256).set(t.maskIndex);
    new Int16Array(buf, exported(inst, 'POS25_INDEX'), 8).set(t.pos25Index);
    new Int16Array(buf, exported(inst, 'PAIR_INDEX'), 64).set(t.pairIndex);
    new Int8Array(buf, exported(inst, 'EXTRA_HALF'), 29 * 3).set(t.extraHalf);
    const xAddr = Math.ceil(exported(inst, 'FREE') / 64) * 64;
    const outAddr = xAddr + CHUNK * 32;
    if (outAddr + CHUNK * 2 > buf.byteLength) throw new Error('e8p encode: WebAssembly memory too small');
    kernel = { memory, encode: inst.exports.encode as Kernel['encode'], xAddr, outAddr };
  } catch {
    kernel = null;
  }
  return kernel;
}

/** True when the WebAssembly encoder could be instantiated. */
export function wasmEncoderReady(t: E8PEncodeTables): boolean {
  return wasmKernel(t) !== null;
}

/**
 * Encode `count` 8-vectors of `x` starting at `x[off]` into `out[outOff ..]` in WebAssembly, the same contract as
 * `e8pEncodeInto` (finite input). Returns false, having written nothing, where WebAssembly is unavailable.
 */
export function e8pEncodeWasmInto(
  t: E8PEncodeTables,
  x: Float32Array,
  off: number,
  count: number,
  out: Uint16Array,
  outOff: number,
): boolean {
  const k = wasmKernel(t);
  if (!k) return false;
  const xin = new Float32Array(k.memory.buffer, k.xAddr, CHUNK * 8);
  const codes = new Uint16Array(k.memory.buffer, k.outAddr, CHUNK);
  for (let v = 0; v < count; v += CHUNK) {
    const n = Math.min(CHUNK, count - v);
    xin.set(x.subarray(off + 8 * v, off + 8 * (v + n)));
    k.encode(k.xAddr, n, k.outAddr);
    out.set(n === CHUNK ? codes : codes.subarray(0, n), outOff + v);
  }
  return true;
}
