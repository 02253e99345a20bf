import { hadamardBase, hadamardFactor } from '@caldera/linalg';
import { latticeDecode, type Decomposition } from '@caldera/lowrank';
import { bumpAllocator, checkHeapBase, embeddedModule, KERNEL_BASE } from './wasm-module.js';
import { CALDERA_WASM_BASE64 } from '../generated/caldera-wasm.js';
import type { CalderaBatchLayer } from './batch-workspace.js';
import { e8pLutTables } from './e8p-lut.js';

/** End of the region fixed by asm/e8p.ts: the two 256-entry maps at {@link KERNEL_BASE}, then 2 × 2 groups' tables. */
export const E8P_FIXED_END = KERNEL_BASE + 2048 + 4 * 4096;

/** ta/ts entries as byte offsets (index·4 in each 16-bit half), as asm/e8p.ts reads them. */
export const byteOffsets = (e: number): number => (e & 0xffff) * 4 + (e >>> 16) * 4 * 65536;

/** 2-bit Q's codes group-major (`[np/8, mp]`, the transpose of the checkpoint's `[mp, np/8]`) into `out`. */
export function groupMajorCodes(d: Decomposition, out: Uint16Array): Uint16Array {
  const codes = d.q.planes[0] as Uint16Array;
  const [mp, np] = d.padded;
  const groups = np / 8;
  for (let i = 0; i < mp; i++) for (let g = 0; g < groups; g++) out[g * mp + i] = codes[i * groups + g]!;
  return out;
}

/** The inverse of {@link groupMajorCodes}: row-major `[mp, np/8]` codes from group-major `[np/8, mp]` ones. */
export function rowMajorCodes(groupMajor: Uint16Array, mp: number, np: number): Uint16Array {
  const groups = np / 8;
  const out = new Uint16Array(mp * groups);
  for (let g = 0; g < groups; g++) for (let i = 0; i < mp; i++) out[i * groups + g] = groupMajor[g * mp + i]!;
  return out;
}

/** L̂ row-major `[mp, k]` and R̂ `[k, np]`, decoded to f32 (empty for rank 0). */
export function lowRankFactors(d: Decomposition): { lRows: Float32Array; r: Float32Array } {
  const [mp] = d.padded;
  const k = d.rank;
  if (k === 0) return { lRows: new Float32Array(0), r: new Float32Array(0) };
  const decoded = (f: Decomposition['l']) => (f.kind === 'dense' ? f.values : latticeDecode(f.codes));
  const lt = decoded(d.l); // [k, mp]
  const lRows = new Float32Array(mp * k);
  for (let s = 0; s < k; s++) for (let i = 0; i < mp; i++) lRows[i * k + s] = lt[s * mp + i]!;
  return { lRows, r: decoded(d.r) };
}

/** Fields of asm/caldera.ts's `Layer` record, in order (4 bytes each). */
const LAYER_FIELDS = [
  'n',
  'm',
  'np',
  'mp',
  'rank',
  'kIn',
  'kOut',
  'codes',
  'p1',
  'p2',
  'lRows',
  'r',
  'su',
  'sv',
  'mixIn',
  'mixOut',
  'x',
  'y',
  'xr',
  'yr',
  'z',
  'tmp',
  'qScale',
  'scale',
] as const;

/** What {@link CalderaKernel.memoryBytes} needs of a layer: a `Decomposition`'s fields, or its `caldera.json` entry's. */
export interface CalderaKernelShape {
  /** `[m, n]`. */
  shape: readonly [number, number];
  /** `[mp, np]`. */
  padded: readonly [number, number];
  /** Rank of the quantized low-rank pair (k' = k − k_ft). */
  rank: number;
  hadamard: boolean;
  /** Bits per weight of Q: 2 (E8P12), 3 or 4 (RVQ). */
  qBits: number;
  /** Rank of the trainable LoRA pair (0: none). */
  ftRank: number;
}

const kernelShape = (d: Decomposition): CalderaKernelShape => ({
  shape: d.shape,
  padded: d.padded,
  rank: d.rank,
  hadamard: d.hadamard,
  qBits: d.q.bits,
  ftRank: d.ft?.rank ?? 0,
});

/**
 * Where {@link CalderaKernel.create} puts each buffer of a layer in its memory (after the region fixed by asm/e8p.ts,
 * bump-allocated, 16-byte aligned), given the lengths of its two block-mixing matrices; `end` is the first address
 * past them.
 */
function kernelLayout(layer: CalderaKernelShape, mixInLength: number, mixOutLength: number, maxRows: number) {
  const [m, n] = layer.shape;
  const [mp, np] = layer.padded;
  const k = layer.rank;
  const { alloc, end } = bumpAllocator(E8P_FIXED_END);
  const at = {
    layer: alloc(LAYER_FIELDS.length * 4),
    p1: alloc(128 * 4),
    p2: alloc(128 * 4),
    codes: alloc((mp * np) / 4),
    lr: alloc(mp * k * 4),
    r: alloc(k * np * 4),
    su: alloc(np * 4),
    sv: alloc(mp * 4),
    mixIn: alloc(mixInLength * 4),
    mixOut: alloc(mixOutLength * 4),
    x: alloc(maxRows * n * 4),
    y: alloc(maxRows * m * 4),
    xr: alloc(np * 4),
    yr: alloc(mp * 4),
    z: alloc(k * 4),
    tmp: alloc(Math.max(np, mp) * 4),
  };
  return { at, end: end() };
}

/**
 * Entries of the block-mixing matrix of a layer's Hadamard transform of size n ({@link blockMix}): K² (K = 1 for a
 * power of two), 0 without a rotation.
 */
export function blockMixLength(n: number, hadamard: boolean): number {
  return hadamard ? (hadamardFactor(n)?.K ?? 0) ** 2 : 0;
}

/**
 * The K×K block-mixing matrix of the Hadamard transform of size n (see asm/hadamard.ts): entry `[a2·K + a]` is the
 * coefficient of block a in output block a2 — `H[a][a2]` for `M_n` (`transpose` false), `H[a2][a]` for `M_nᵀ`, as
 * `@caldera/linalg`'s `hadamardRowsInPlace`. K = 1 (a power of two) has no mix.
 */
function blockMix(n: number, transpose: boolean): { K: number; mix: Float32Array } {
  const f = hadamardFactor(n);
  if (!f) throw new Error(`caldera kernel: ${n} is not a supported Hadamard size`); // the decomposition padded it
  const H = hadamardBase(f.K);
  const mix = new Float32Array(f.K * f.K);
  for (let a2 = 0; a2 < f.K; a2++)
    for (let a = 0; a < f.K; a++) mix[a2 * f.K + a] = transpose ? H[a2 * f.K + a]! : H[a * f.K + a2]!;
  return { K: f.K, mix };
}

/**
 * One CALDERA layer with 2-bit E8P Q resident in its own WebAssembly memory (input rows go through it `maxRows` at a
 * time): the whole forward — signs and Hadamard rotation of the input, the table-driven E8P product, the low-rank
 * term `L̂·(R̂·x')`, the inverse rotation, signs and scale — runs in the SIMD kernel of asm/caldera.ts, so only x and y
 * cross the boundary. Codes are stored group-major (`[np/8, mp]`); L̂ (`[mp, k]`) and R̂ (`[k, np]`) are decoded once
 * to f32. {@link CalderaKernel.create} returns null without WebAssembly SIMD or for a decomposition it does not cover
 * (3/4-bit Q, a trainable LoRA part), and the caller keeps its TypeScript path.
 */
export class CalderaKernel {
  private constructor(
    private readonly run: (layer: number, rows: number) => void,
    private readonly layerAt: number,
    /** Views of the input and output rows (the memory never grows, so they stay valid). */
    private readonly xView: Float32Array,
    private readonly yView: Float32Array,
    readonly n: number,
    readonly m: number,
    readonly maxRows: number,
    /** The same layer for {@link BatchWorkspace}'s batch path (L̂ and R̂ are views of this kernel's memory). */
    readonly batch: CalderaBatchLayer,
  ) {}

  /**
   * Bytes of the WebAssembly memory {@link CalderaKernel.create} would allocate for a layer of this shape (whole 64 KiB
   * pages: the module's static data, the E8P tables, the layer record, Q's codes group-major, L̂ and R̂ in f32, the
   * signs, the block-mixing matrices and the row buffers for `maxRows` rows), or null when `create` returns null for
   * it (no WebAssembly SIMD, 3/4-bit Q, a LoRA part, an odd `mp`). Computed without allocating anything.
   */
  static memoryBytes(layer: CalderaKernelShape, maxRows: number): number | null {
    if (!CalderaKernel.covers(layer)) return null;
    const [mp, np] = layer.padded;
    const { end } = kernelLayout(
      layer,
      blockMixLength(np, layer.hadamard),
      blockMixLength(mp, layer.hadamard),
      maxRows,
    );
    return Math.ceil(end / 65536) * 65536;
  }

  /** True when {@link CalderaKernel.create} runs a layer of this shape (2-bit Q, no LoRA part, even `mp`, SIMD). */
  static covers(layer: CalderaKernelShape): boolean {
    const t = e8pLutTables();
    // fixed at the start (asm/e8p.ts): 32 patterns per half; the kernel computes two rows at a time
    return (
      embeddedModule(CALDERA_WASM_BASE64) !== null &&
      layer.qBits === 2 &&
      layer.ftRank === 0 &&
      t.p1.length === 128 &&
      t.p2.length === 128 &&
      layer.padded[0] % 2 === 0
    );
  }

  static create(d: Decomposition, maxRows: number): CalderaKernel | null {
    const mod = embeddedModule(CALDERA_WASM_BASE64);
    if (!mod || !CalderaKernel.covers(kernelShape(d))) return null;
    const [m, n] = d.shape;
    const [mp, np] = d.padded;
    const k = d.rank;
    const t = e8pLutTables();
    const mixIn = d.hadamard ? blockMix(np, false) : null;
    const mixOut = d.hadamard ? blockMix(mp, true) : null;
    const { at, end } = kernelLayout(
      kernelShape(d),
      mixIn?.mix.length ?? 0,
      mixOut?.mix.length ?? 0,
      maxRows,
    );
    const pages = Math.ceil(end / 65536);
    let memory: WebAssembly.Memory;
    let run: (layer: number, rows: number) => void;
    let exports: WebAssembly.Exports;
    try {
      memory = new WebAssembly.Memory({ initial: pages, maximum: pages });
      exports = new WebAssembly.Instance(mod, { env: { memory } }).exports;
      run = exports.forward as typeof run;
    } catch {
      return null; // e.g. the address space could not be reserved
    }
    checkHeapBase(exports, 'caldera kernel');
    const buf = memory.buffer;
    const f32 = (addr: number, len: number) => new Float32Array(buf, addr, len);
    new Uint32Array(buf, KERNEL_BASE, 256).set(t.ta.map(byteOffsets));
    new Uint32Array(buf, KERNEL_BASE + 1024, 256).set(t.ts.map(byteOffsets));
    f32(at.p1, t.p1.length).set(t.p1);
    f32(at.p2, t.p2.length).set(t.p2);
    const codes = groupMajorCodes(d, new Uint16Array(buf, at.codes, (mp * np) / 8));
    const { lRows, r } = lowRankFactors(d);
    f32(at.lr, mp * k).set(lRows);
    f32(at.r, k * np).set(r);
    const su = d.su ?? new Float32Array(np).fill(1);
    const sv = d.sv ?? new Float32Array(mp).fill(1);
    f32(at.su, np).set(su);
    f32(at.sv, mp).set(sv);
    if (mixIn) f32(at.mixIn, mixIn.mix.length).set(mixIn.mix);
    if (mixOut) f32(at.mixOut, mixOut.mix.length).set(mixOut.mix);
    const values: Record<(typeof LAYER_FIELDS)[number], number> = {
      n,
      m,
      np,
      mp,
      rank: k,
      kIn: mixIn?.K ?? 0,
      kOut: mixOut?.K ?? 0,
      codes: at.codes,
      p1: at.p1,
      p2: at.p2,
      lRows: at.lr,
      r: at.r,
      su: at.su,
      sv: at.sv,
      mixIn: at.mixIn,
      mixOut: at.mixOut,
      x: at.x,
      y: at.y,
      xr: at.xr,
      yr: at.yr,
      z: at.z,
      tmp: at.tmp,
      qScale: d.q.scale,
      scale: d.scale,
    };
    const ints = new Int32Array(buf, at.layer, LAYER_FIELDS.length);
    const floats = f32(at.layer, LAYER_FIELDS.length);
    LAYER_FIELDS.forEach((f, i) => {
      if (f === 'qScale' || f === 'scale') floats[i] = values[f];
      else ints[i] = values[f];
    });
    const xView = f32(at.x, maxRows * n);
    const yView = f32(at.y, maxRows * m);
    const batch: CalderaBatchLayer = {
      n,
      m,
      np,
      mp,
      rank: k,
      su,
      sv,
      mixIn,
      mixOut,
      codes, // the kernel's own group-major copy (its memory never grows, so the view stays valid)
      qScale: d.q.scale,
      scale: d.scale,
      lRows: f32(at.lr, mp * k),
      r: f32(at.r, k * np),
    };
    return new CalderaKernel(run, at.layer, xView, yView, n, m, maxRows, batch);
  }

  /** `y = x·Ŵᵀ` for `rows` input rows of `n` values (a new array of rows·m values), `maxRows` per kernel call. */
  forward(x: Float32Array, rows: number): Float32Array {
    const { n, m, maxRows } = this;
    if (rows === 1) {
      this.xView.set(x.length === n ? x : x.subarray(0, n));
      this.run(this.layerAt, 1);
      return this.yView.slice(0, m);
    }
    const y = new Float32Array(rows * m);
    for (let r0 = 0; r0 < rows; r0 += maxRows) {
      const c = Math.min(maxRows, rows - r0);
      this.xView.set(x.subarray(r0 * n, (r0 + c) * n));
      this.run(this.layerAt, c);
      y.set(this.yView.subarray(0, c * m), r0 * m);
    }
    return y;
  }
}
