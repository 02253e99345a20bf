import { tensor, type Tensor } from '@caldera/core';
import { gemm, gemmInto, type Pool } from '@caldera/linalg';
import { e8pGrid } from '@caldera/quant';
import { BATCH_WASM_BASE64 } from '../generated/batch-wasm.js';
import { e8pLutTables } from './e8p-lut.js';
import type { HalfFormat } from './matvec.js';
import { align16, bumpAllocator, checkHeapBase, embeddedModule, KERNEL_BASE } from './wasm-module.js';

/** `{ pool }` for linalg calls when one is given (exactOptionalPropertyTypes: no `pool: undefined`). */
export function poolOf(pool: Pool | undefined): { pool?: Pool } {
  return pool ? { pool } : {};
}

/** What a CALDERA layer lends to the batch path (small vectors copied per call, L̂/R̂ read in place). */
export interface CalderaBatchLayer {
  readonly n: number;
  readonly m: number;
  readonly np: number;
  readonly mp: number;
  readonly rank: number;
  /** Input / output signs (np / mp values). */
  readonly su: Float32Array;
  readonly sv: Float32Array;
  /** Hadamard block mixes of np (`M_n`) and mp (`M_mᵀ`), or null without Hadamard rotations. */
  readonly mixIn: { K: number; mix: Float32Array } | null;
  readonly mixOut: { K: number; mix: Float32Array } | null;
  /**
   * 2-bit Q's E8P codes in slices of rows that together cover all mp rows in order, each group-major: the fused row
   * kernel's copies (one slice, or one per thread of a decode pool), so a layer holds its codes once.
   */
  readonly codes: readonly CodeSlice[];
  readonly qScale: number;
  readonly scale: number;
  /** L̂ `[mp, k]` and R̂ `[k, np]` in f32. */
  readonly lRows: Float32Array;
  readonly r: Float32Array;
}

/** Rows [row0, row0 + rows) of Q's codes, group-major `[np/8, rows]` (code of row row0 + i, group g at `g·rows + i`). */
export interface CodeSlice {
  readonly row0: number;
  readonly rows: number;
  readonly codes: Uint16Array;
}

/** Input rows rotated per pass (the workspace holds this many rows of x', y'). */
const CHUNK_ROWS = 256;
/**
 * Rows of Q̂ decoded to f32 per product (as linear.ts's BLOCK_ROWS for f16 and 3/4-bit weights): ≥ 128 so that the
 * pool's 64-row blocks give every thread work, and few enough to stay small (2 MiB per 1024 input features).
 */
const Q_BLOCK_ROWS = 512;

/** E8P decode tables at fixed addresses: the ta/ts maps (raw entries), then the two half tables of 4-f32 entries. */
const DA = KERNEL_BASE;
const DS = DA + 1024;
const H1 = DS + 1024;
const H2 = H1 + 1024 * 16;
const TABLES_END = H2 + 2048 * 16;

interface DecodeTables {
  da: Uint32Array;
  ds: Uint32Array;
  h1: Float32Array;
  h2: Float32Array;
}

let decodeTables: DecodeTables | null = null;

/**
 * The half tables of asm/batch.ts's `decodeE8P`, filled from every one of the 65 536 codewords of `@caldera/quant`'s
 * grid. The split is exact (each entry receives the same four values from every code that maps to it; checked).
 */
function e8pDecodeTables(): DecodeTables {
  if (decodeTables) return decodeTables;
  const { ta, ts } = e8pLutTables();
  const grid = e8pGrid();
  const h1 = new Float32Array(1024 * 4).fill(NaN);
  const h2 = new Float32Array(2048 * 4).fill(NaN);
  const put = (t: Float32Array, at: number, code: number, half: number) => {
    for (let i = 0; i < 4; i++) {
      const v = grid[code * 8 + half * 4 + i]!;
      const old = t[at * 4 + i]!;
      if (!Number.isNaN(old) && old !== v) throw new Error(`E8P decode tables: code ${code} does not split`);
      t[at * 4 + i] = v;
    }
  };
  for (let code = 0; code < 65536; code++) {
    const e = ta[code >>> 8]! + ts[code & 0xff]!;
    put(h1, e & 0xffff, code, 0);
    put(h2, (e >>> 16) | ((e & 16) << 6), code, 1);
  }
  decodeTables = { da: ta, ds: ts, h1, h2 };
  return decodeTables;
}

interface Instance {
  memory: WebAssembly.Memory;
  rotateRowsIn(
    x: number,
    n: number,
    rows: number,
    su: number,
    np: number,
    K: number,
    mix: number,
    xr: number,
    tmp: number,
  ): void;
  rotateRowsOut(
    yr: number,
    mp: number,
    rows: number,
    K: number,
    mix: number,
    sv: number,
    scale: number,
    y: number,
    m: number,
    tmp: number,
  ): void;
  decodeE8P(codes: number, count: number, da: number, ds: number, h1: number, h2: number, out: number): void;
  halvesToF32(src: number, count: number, dst: number): void;
  brainHalvesToF32(src: number, count: number, dst: number): void;
  transpose32(src: number, rows: number, cols: number, dst: number): void;
}

/**
 * Workspace of the layers' batch paths (many input rows): one WebAssembly memory, grown to the largest layer and batch
 * seen, shared by all layers of a model ({@link LlamaModel} owns one). The products run in `@caldera/linalg`'s `gemm`,
 * threaded when a pool is given (results do not depend on it: the pool only splits gemm's row blocks); the workspace
 * does what gemm cannot — converting stored weights to f32 a block of rows at a time (SIMD) and, for CALDERA layers,
 * the rotations. For a few rows the per-row kernels are faster; the layers choose.
 */
export class BatchWorkspace {
  private instance: Instance | null = null;
  /** Set when the workspace's memory could not be reserved. */
  private unavailable = false;

  /**
   * Null where WebAssembly SIMD is unavailable or no memory can be reserved for the workspace (a browser process out of
   * address space for WebAssembly memories), as the layers' kernels: the batch paths then run in TypeScript.
   */
  private get(): Instance | null {
    if (this.instance) return this.instance;
    const mod = this.unavailable ? null : embeddedModule(BATCH_WASM_BASE64);
    if (!mod) return null;
    let memory: WebAssembly.Memory;
    let exports: WebAssembly.Exports;
    try {
      memory = new WebAssembly.Memory({ initial: Math.ceil(TABLES_END / 65536), maximum: 65536 });
      exports = new WebAssembly.Instance(mod, { env: { memory } }).exports;
    } catch {
      this.unavailable = true; // not retried on every batch
      return null;
    }
    checkHeapBase(exports, 'batch workspace');
    const t = e8pDecodeTables();
    const buf = memory.buffer;
    new Uint32Array(buf, DA, 256).set(t.da);
    new Uint32Array(buf, DS, 256).set(t.ds);
    new Float32Array(buf, H1, t.h1.length).set(t.h1);
    new Float32Array(buf, H2, t.h2.length).set(t.h2);
    this.instance = { memory, ...(exports as unknown as Omit<Instance, 'memory'>) };
    return this.instance;
  }

  /** True where the batch path can run (WebAssembly SIMD, and its memory reserved). */
  get available(): boolean {
    return this.get() !== null;
  }

  /** The instance with its memory grown to `end` bytes (callers check {@link BatchWorkspace.available} first). */
  private grown(end: number): Instance {
    const ins = this.get();
    if (!ins) throw new Error('batch workspace: WebAssembly SIMD is unavailable');
    const have = ins.memory.buffer.byteLength;
    if (end > have) ins.memory.grow(Math.ceil((end - have) / 65536));
    return ins;
  }

  /**
   * Rows `i0 … i0+c−1` of W `[·, n]` stored as f16 bits, converted to f32 in SIMD (exact, infinities and NaNs kept):
   * a view of this workspace's memory, valid until its next call.
   */
  f16Rows(bits: Uint16Array, n: number, i0: number, c: number): Float32Array {
    return this.halfRows('f16', bits, n, i0, c);
  }

  /** As {@link BatchWorkspace.f16Rows} for W stored as bf16 bits (exact: each value is its bits shifted left by 16). */
  bf16Rows(bits: Uint16Array, n: number, i0: number, c: number): Float32Array {
    return this.halfRows('bf16', bits, n, i0, c);
  }

  private halfRows(format: HalfFormat, bits: Uint16Array, n: number, i0: number, c: number): Float32Array {
    const src = TABLES_END;
    const dst = src + align16(c * n * 2);
    const ins = this.grown(dst + c * n * 4);
    new Uint16Array(ins.memory.buffer, src, c * n).set(bits.subarray(i0 * n, (i0 + c) * n));
    (format === 'f16' ? ins.halvesToF32 : ins.brainHalvesToF32)(src, c * n, dst);
    return new Float32Array(ins.memory.buffer, dst, c * n);
  }

  /** A CALDERA layer's `y = x·Ŵᵀ` for `rows` rows (a new array of rows·m values); pool: threads for the products. */
  calderaForward(layer: CalderaBatchLayer, x: Float32Array, rows: number, pool?: Pool): Float32Array {
    const { n, m, np, mp, rank: k } = layer;
    const groups = np / 8;
    const R = Math.min(rows, CHUNK_ROWS);
    const QB = Math.min(mp, Q_BLOCK_ROWS);
    const { alloc, end } = bumpAllocator(TABLES_END);
    const at = {
      su: alloc(np * 4),
      sv: alloc(mp * 4),
      mixIn: alloc((layer.mixIn?.mix.length ?? 0) * 4),
      mixOut: alloc((layer.mixOut?.mix.length ?? 0) * 4),
      tmp: alloc(Math.max(np, mp) * 4),
      x: alloc(R * n * 4),
      xr: alloc(R * np * 4),
      yt: alloc(R * mp * 4),
      yr: alloc(R * mp * 4),
      y: alloc(R * m * 4),
      codes: alloc(QB * groups * 2),
      q: alloc(QB * np * 4),
    };
    const ins = this.grown(end());
    const buf = ins.memory.buffer;
    const f32 = (addr: number, len: number) => new Float32Array(buf, addr, len);
    f32(at.su, np).set(layer.su);
    f32(at.sv, mp).set(layer.sv);
    if (layer.mixIn) f32(at.mixIn, layer.mixIn.mix.length).set(layer.mixIn.mix);
    if (layer.mixOut) f32(at.mixOut, layer.mixOut.mix.length).set(layer.mixOut.mix);
    const codes = new Uint16Array(buf, at.codes, QB * groups);
    const q = f32(at.q, QB * np);
    const lt = k > 0 ? tensor('f32', [mp, k], layer.lRows) : null;
    const rt = k > 0 ? tensor('f32', [k, np], layer.r) : null;
    const y = new Float32Array(rows * m);
    for (let r0 = 0; r0 < rows; r0 += R) {
      const c = Math.min(R, rows - r0);
      f32(at.x, c * n).set(x.subarray(r0 * n, (r0 + c) * n));
      ins.rotateRowsIn(at.x, n, c, at.su, np, layer.mixIn?.K ?? 0, at.mixIn, at.xr, at.tmp);
      const xr = tensor('f32', [c, np], f32(at.xr, c * np));
      const yt = f32(at.yt, mp * c);
      // y'ᵀ = qScale·Q̂·x'ᵀ + L̂·(R̂·x'ᵀ) (mp × c, contiguous: gemm writes its rows whole), then transposed to y': the
      // long dimension (Q̂'s rows) is gemm's first operand, the one its pool splits among threads
      for (let i0 = 0; i0 < mp; i0 += QB) {
        const qb = Math.min(QB, mp - i0);
        // gather the block's rows from the group-major slices into row-major order for the decoder
        for (const s of layer.codes) {
          const a = Math.max(i0, s.row0);
          const b = Math.min(i0 + qb, s.row0 + s.rows);
          for (let g = 0; g < groups; g++) {
            const from = g * s.rows - s.row0;
            for (let i = a; i < b; i++) codes[(i - i0) * groups + g] = s.codes[from + i]!;
          }
        }
        ins.decodeE8P(at.codes, qb * groups, DA, DS, H1, H2, at.q);
        const rowsOut: Tensor<'f32'> = {
          dtype: 'f32',
          shape: [qb, c],
          strides: [c, 1],
          offset: i0 * c,
          data: yt,
        };
        gemmInto(rowsOut, tensor('f32', [qb, np], q.subarray(0, qb * np)), xr, {
          transB: true,
          alpha: layer.qScale,
          checkFinite: false,
          ...poolOf(pool),
        });
      }
      if (lt && rt) {
        const zt = gemm(rt, xr, { transB: true, checkFinite: false, ...poolOf(pool) }); // [k, c]
        gemmInto(tensor('f32', [mp, c], yt), lt, zt, { beta: 1, checkFinite: false, ...poolOf(pool) });
      }
      ins.transpose32(at.yt, mp, c, at.yr);
      ins.rotateRowsOut(at.yr, mp, c, layer.mixOut?.K ?? 0, at.mixOut, at.sv, layer.scale, at.y, m, at.tmp);
      y.set(f32(at.y, c * m), r0 * m);
    }
    return y;
  }
}
