import { assertObject, CalderaError, describeValue } from '@caldera/core';
import { e8pEncodeInto, type E8PEncodeTables } from './e8p-encode.js';
import { e8pEncodeWasmInto, wasmEncoderReady } from './e8p-encode-wasm.js';

/**
 * The E8P12 codebook of QuIP# (algorithm brief §3.4): 2¹⁶ points of dimension 8, so one 16-bit code per 8
 * weights = 2 bits per weight. Every point is `±s + v` where `s = ¼` and `v` is a point of D̂8 = D8 + ½ (all
 * coordinates half-integers, even coordinate sum) taken from 256 "source" magnitude vectors with all sign
 * patterns that keep the coordinate sum even.
 *
 * Code layout (16 bits): high byte `a` = source vector, low byte `σ` = signs. With `p = popcount(σ) mod 2`
 * and `σ' = σ XOR p`: coordinate i of `source[a]` is negated when bit `π(i)` of σ' is set
 * (`π = [0,4,1,5,2,6,3,7]`), coordinate 7 is negated once more when the source's coordinate sum is odd, and
 * the shift is `−¼` when `p = 1`, else `+¼`.
 */

/** Input scale that minimises the MSE of E8P12 on unit-Gaussian data (QuIP#'s `opt_scale`). */
export const E8P_OPT_SCALE = 1.03;
/** Dimension of an E8P codeword. */
export const E8P_DIM = 8;

const PERM = [0, 4, 1, 5, 2, 6, 3, 7] as const;

/** The 29 extra source vectors of squared norm 12, as 2× their entries (brief §3.4, in order). */
const EXTRA_SOURCES = (
  '31113333 13113333 11313333 11133333 33313311 33313131 33311331 33313113 33311313 33311133 33133311 ' +
  '33133131 33131331 33133113 33131313 33131133 31333311 31333131 31331331 31333113 31331313 13331133 ' +
  '13333311 13333131 13331331 13333113 13331313 11331333 33113331'
).split(' ');

/** The 256 source magnitude vectors, row-major (256 × 8). Rows 0..226 sorted lexicographically, then the extras. */
function buildSources(): Float32Array {
  // Absolute-value patterns of D̂8 points with ‖x‖² ≤ 10: entries in {½, 3/2, 5/2}. Every such pattern occurs (the
  // sign of any coordinate can be chosen to fix the sum parity), so enumerate patterns directly.
  const patterns: number[][] = [];
  const vals = [0.5, 1.5, 2.5];
  const rec = (prefix: number[]) => {
    if (prefix.length === 8) {
      if (prefix.reduce((s, v) => s + v * v, 0) <= 10) patterns.push(prefix.slice());
      return;
    }
    for (const v of vals) {
      prefix.push(v);
      rec(prefix);
      prefix.pop();
    }
  };
  rec([]);
  // rec enumerates in lexicographic order already (vals ascending, first coordinate most significant).
  if (patterns.length !== 227)
    throw new CalderaError('E_VALUE', `E8P12: expected 227 patterns, got ${patterns.length}`);
  const src = new Float32Array(256 * 8);
  patterns.forEach((p, a) => src.set(p, a * 8));
  EXTRA_SOURCES.forEach((s, k) => {
    for (let i = 0; i < 8; i++) src[(227 + k) * 8 + i] = Number(s[i]) / 2;
  });
  return src;
}

/** Lazily built, immutable tables shared by encode and decode (a pure function of constants). */
interface E8PTables {
  sources: Float32Array; // 256 × 8 magnitudes
  oddSum: Uint8Array; // 1 when the source's coordinate sum is odd
  grid: Float32Array; // 65536 × 8 decoded codewords
}

let tables: E8PTables | null = null;

function getTables(): E8PTables {
  if (tables) return tables;
  const sources = buildSources();
  const oddSum = new Uint8Array(256);
  for (let a = 0; a < 256; a++) {
    let s = 0;
    for (let i = 0; i < 8; i++) s += sources[a * 8 + i]!;
    oddSum[a] = Math.round(s) % 2;
  }
  const grid = new Float32Array(65536 * 8);
  const v = new Float32Array(8);
  for (let c = 0; c < 65536; c++) {
    decodeOne(c, sources, oddSum, v);
    grid.set(v, c * 8);
  }
  tables = { sources, oddSum, grid };
  return tables;
}

function popcount8(x: number): number {
  x = x - ((x >> 1) & 0x55);
  x = (x & 0x33) + ((x >> 2) & 0x33);
  return (x + (x >> 4)) & 0x0f;
}

function decodeOne(code: number, sources: Float32Array, oddSum: Uint8Array, out: Float32Array): void {
  const a = code >>> 8;
  const sigma = code & 0xff;
  const p = popcount8(sigma) & 1;
  const s2 = sigma ^ p;
  const shift = p === 1 ? -0.25 : 0.25;
  for (let i = 0; i < 8; i++) {
    let v = sources[a * 8 + i]!;
    if (i === 7 && oddSum[a] === 1) v = -v;
    if ((s2 >> PERM[i]!) & 1) v = -v;
    out[i] = v + shift;
  }
}

/** The 256 source magnitude vectors (256 × 8, row-major). Read-only view. */
export function e8pSources(): Float32Array {
  return getTables().sources;
}

/** All 65 536 codewords (65536 × 8, row-major; codeword c at `8c`). Built once, 2 MiB. Read-only view. */
export function e8pGrid(): Float32Array {
  return getTables().grid;
}

/**
 * `E_VALUE` (with `message(k, value)`) unless every code is an integer in [0, 2^bits): codes given in an array wider
 * than their own (`Uint8Array` for 8 bits, `Uint16Array` for 16) are checked one by one (one out of range read past the
 * codebook's table).
 */
export function assertCodeWidth(
  codes: ArrayLike<unknown>,
  bits: 8 | 16,
  message: (k: number, value: string) => string,
): void {
  if (codes instanceof (bits === 8 ? Uint8Array : Uint16Array)) return;
  const max = 2 ** bits - 1;
  for (let k = 0; k < codes.length; k++) {
    const c = codes[k];
    if (typeof c !== 'number' || !Number.isInteger(c) || c < 0 || c > max)
      throw new CalderaError('E_VALUE', message(k, String(c)));
  }
}

/**
 * Decode 16-bit codes into `8·codes.length` values. Codes given in another array type must be integers in
 * [0, 65535] (`E_VALUE`; a larger one decoded to NaN).
 */
export function e8pDecode(codes: Uint16Array, out?: Float32Array): Float32Array {
  assertObject(codes, 'e8pDecode', 'codes', 'a Uint16Array');
  assertCodeWidth(codes, 16, (k, c) => `e8pDecode: code ${k} is ${c}, not a 16-bit code`);
  if (out !== undefined && !(out instanceof Float32Array))
    throw new CalderaError('E_VALUE', `e8pDecode: out must be a Float32Array, got ${describeValue(out)}`);
  out ??= new Float32Array(codes.length * 8);
  if (out.length < codes.length * 8)
    throw new CalderaError(
      'E_SHAPE',
      `e8pDecode: output has ${out.length} values, needs ${codes.length * 8}`,
    );
  const grid = getTables().grid;
  // eight element copies per code (a subarray view per code, with set(), took several times as long)
  for (let k = 0, o = 0; k < codes.length; k++, o += 8) {
    const g = codes[k]! * 8;
    out[o] = grid[g]!;
    out[o + 1] = grid[g + 1]!;
    out[o + 2] = grid[g + 2]!;
    out[o + 3] = grid[g + 3]!;
    out[o + 4] = grid[g + 4]!;
    out[o + 5] = grid[g + 5]!;
    out[o + 6] = grid[g + 6]!;
    out[o + 7] = grid[g + 7]!;
  }
  return out;
}

/** Options of {@link e8pEncode}. */
export interface E8PEncodeOptions {
  /** Run the encoder in WebAssembly when available (default true); false = the TypeScript encoder. Same codes. */
  wasm?: boolean;
}

/** True when `e8pEncode` runs in WebAssembly (the module could be instantiated on this thread). */
export function e8pEncodeWasmAvailable(): boolean {
  return wasmEncoderReady(getEncodeTables());
}

/**
 * Exact nearest codeword of each consecutive 8-vector of `x` (Euclidean distance; ties broken arbitrarily but
 * deterministically). `x.length` must be a multiple of 8; non-finite values, or an `x` that is not an array (`null`),
 * throw `E_VALUE`. Closed-form search per magnitude class (see `e8p-encode.ts`), verified against exhaustive search in
 * `e8p.test.ts`. Runs in WebAssembly (`asm/e8p-encode.ts`, bit-identical codes) where available, else in TypeScript;
 * `{ wasm: false }` forces the latter.
 */
export function e8pEncode(
  x: ArrayLike<number>,
  out?: Uint16Array,
  options: E8PEncodeOptions = {},
): Uint16Array {
  assertObject(x, 'e8pEncode', 'x', 'an array of numbers');
  options ??= {}; // from JavaScript: null options are none
  // 16-bit codes: a Uint8Array kept each code modulo 256, silently
  if (out !== undefined && !(out instanceof Uint16Array))
    throw new CalderaError('E_VALUE', `e8pEncode: out must be a Uint16Array, got ${describeValue(out)}`);
  out ??= new Uint16Array(x.length / 8);
  if (x.length % 8 !== 0)
    throw new CalderaError('E_SHAPE', `e8pEncode: length ${x.length} is not a multiple of 8`);
  if (out.length < x.length / 8)
    throw new CalderaError('E_SHAPE', `e8pEncode: output has ${out.length} codes, needs ${x.length / 8}`);
  const xf = x instanceof Float32Array ? x : Float32Array.from(x);
  // checked after the conversion: a finite f64 beyond the f32 range (±3.4e38) becomes ±Infinity here
  for (let i = 0; i < xf.length; i++) {
    const v = xf[i]!;
    if (v - v !== 0) {
      const why = Number.isFinite(x[i]!) ? ' (outside the f32 range)' : '';
      throw new CalderaError('E_VALUE', `e8pEncode: non-finite input ${x[i]} at index ${i}${why}`);
    }
  }
  const t = getEncodeTables();
  if (options.wasm === false || !e8pEncodeWasmInto(t, xf, 0, x.length / 8, out, 0))
    e8pEncodeInto(t, xf, 0, x.length / 8, out, 0);
  return out;
}

let encodeTables: E8PEncodeTables | null = null;

/** Encoder tables (a pure function of the codebook constants, built once). */
export function getEncodeTables(): E8PEncodeTables {
  if (encodeTables) return encodeTables;
  const { sources, oddSum } = getTables();
  const maskIndex = new Int16Array(256).fill(-1);
  const pos25Index = new Int16Array(8).fill(-1);
  const pairIndex = new Int16Array(64).fill(-1);
  for (let a = 0; a < 227; a++) {
    let mask = 0;
    let pos25 = -1;
    for (let i = 0; i < 8; i++) {
      const m = sources[a * 8 + i]!;
      if (m === 1.5) mask |= 1 << i;
      else if (m === 2.5) pos25 = i;
    }
    if (pos25 < 0) maskIndex[mask] = a;
    else if (mask === 0) pos25Index[pos25] = a;
    else pairIndex[pos25 * 8 + (31 - Math.clz32(mask))] = a;
  }
  const extraHalf = new Int8Array(29 * 3);
  for (let e = 0; e < 29; e++) {
    let k = 0;
    for (let i = 0; i < 8; i++) if (sources[(227 + e) * 8 + i] === 0.5) extraHalf[3 * e + k++] = i;
  }
  encodeTables = { sources, oddSum, maskIndex, pos25Index, pairIndex, extraHalf };
  return encodeTables;
}
