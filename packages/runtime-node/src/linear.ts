import { CalderaError, f16ArrayToF32, type Tensor } from '@caldera/core';
import { gemm, hadamardRowsInPlace } from '@caldera/linalg';
import { type Decomposition, latticeDecode } from '@caldera/lowrank';
import { e8pDecodeInto, e8pMatvecLut } from './kernels/e8p-lut.js';
import { matvecF16, matvecF32 } from './kernels/matvec.js';

/** Up to this many rows a dense product runs as matrix–vector products in TypeScript, above it through `gemm`. */
const MATVEC_MAX_ROWS = 4;

/** A linear layer `y = x·Wᵀ (+ b)` on `rows` row vectors. Implementations differ in how W is stored. */
export interface Linear {
  readonly inFeatures: number;
  readonly outFeatures: number;
  /** Bytes of weight storage (the format's real size). */
  readonly weightBytes: number;
  forward(x: Float32Array, rows: number): Float32Array;
}

function addBias(y: Float32Array, rows: number, bias: Float32Array | null): Float32Array {
  if (!bias) return y;
  const m = bias.length;
  for (let r = 0; r < rows; r++) for (let i = 0; i < m; i++) y[r * m + i]! += bias[i]!;
  return y;
}

function checkInput(what: string, x: Float32Array, rows: number, n: number): void {
  if (x.length !== rows * n)
    throw new CalderaError('E_SHAPE', `${what}: input has ${x.length} values, expected ${rows}·${n}`);
}

/** Dense f32 weights `[out, in]` (contiguous, row-major). */
export class DenseLinear implements Linear {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly weightBytes: number;
  constructor(
    readonly weight: Tensor<'f32'>,
    readonly bias: Float32Array | null = null,
  ) {
    [this.outFeatures, this.inFeatures] = weight.shape as [number, number];
    this.weightBytes = this.outFeatures * this.inFeatures * 4;
  }
  forward(x: Float32Array, rows: number): Float32Array {
    checkInput('linear', x, rows, this.inFeatures);
    const w = this.weight;
    if (rows <= MATVEC_MAX_ROWS && w.offset === 0 && w.strides[0] === this.inFeatures && w.strides[1] === 1) {
      const y = new Float32Array(rows * this.outFeatures);
      matvecF32(w.data, this.outFeatures, this.inFeatures, x, rows, y);
      return addBias(y, rows, this.bias);
    }
    const xt: Tensor<'f32'> = {
      dtype: 'f32',
      shape: [rows, this.inFeatures],
      strides: [this.inFeatures, 1],
      offset: 0,
      data: x,
    };
    return addBias(gemm(xt, this.weight, { transB: true, checkFinite: false }).data, rows, this.bias);
  }
}

/** `x·Wᵀ` for a few rows with contiguous `W [m, n]`: `[rows, m]`. */
function matvecRows(w: Float32Array, m: number, n: number, x: Float32Array, rows: number): Float32Array {
  const y = new Float32Array(rows * m);
  matvecF32(w, m, n, x, rows, y);
  return y;
}

/** Rows of W converted to f32 per chunk in the batched paths of {@link DenseF16Linear} and {@link CalderaLinear}. */
const F16_CHUNK_ROWS = 256;

/**
 * Dense weights kept as f16 bits `[out, in]` (half the memory of f32) and converted to f32 on the fly: row by row
 * for decode, in chunks of {@link F16_CHUNK_ROWS} rows fed to `gemm` for batches. W is never held in f32 whole.
 */
export class DenseF16Linear implements Linear {
  readonly weightBytes: number;
  constructor(
    /** f16 bits, row-major `[outFeatures, inFeatures]`. */
    readonly bits: Uint16Array,
    readonly outFeatures: number,
    readonly inFeatures: number,
    readonly bias: Float32Array | null = null,
  ) {
    if (bits.length !== outFeatures * inFeatures)
      throw new CalderaError(
        'E_SHAPE',
        `f16 linear: ${bits.length} weights, expected ${outFeatures}·${inFeatures}`,
      );
    this.weightBytes = bits.length * 2;
  }
  forward(x: Float32Array, rows: number): Float32Array {
    const { outFeatures: m, inFeatures: n } = this;
    checkInput('f16 linear', x, rows, n);
    const y = new Float32Array(rows * m);
    if (rows <= MATVEC_MAX_ROWS) {
      matvecF16(this.bits, m, n, x, rows, y);
      return addBias(y, rows, this.bias);
    }
    const xt: Tensor<'f32'> = { dtype: 'f32', shape: [rows, n], strides: [n, 1], offset: 0, data: x };
    const chunk = new Float32Array(F16_CHUNK_ROWS * n);
    for (let i0 = 0; i0 < m; i0 += F16_CHUNK_ROWS) {
      const c = Math.min(F16_CHUNK_ROWS, m - i0);
      f16ArrayToF32(this.bits.subarray(i0 * n, (i0 + c) * n), chunk);
      const wt: Tensor<'f32'> = { dtype: 'f32', shape: [c, n], strides: [n, 1], offset: 0, data: chunk };
      const part = gemm(xt, wt, { transB: true, checkFinite: false }).data; // rows × c
      for (let r = 0; r < rows; r++) y.set(part.subarray(r * c, r * c + c), r * m + i0);
    }
    return addBias(y, rows, this.bias);
  }
}

/**
 * A CALDERA layer executed without materialising W (docs/architecture.md): the input is rotated (signs + Hadamard),
 * multiplied by Q̂ whose E8P codes are decoded on the fly from the codebook table, plus the low-rank term
 * `(x'·R̂ᵀ)·L̂ᵀ`, and rotated back. L̂ and R̂ (k·(m+n) values) are decoded once at construction.
 */
export class CalderaLinear implements Linear {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly weightBytes: number;
  private readonly lt: Tensor<'f32'> | null; // k × mp
  private readonly r: Tensor<'f32'> | null; // k × np
  /** 2-bit Q codes, group-major `[np/8, mp]` (the transpose of the checkpoint layout; same bytes). */
  private readonly qCodesT: Uint16Array | null;
  /** L̂ row-major `[mp, k]` (decoded once) for the decode path: y_i += ⟨L̂_i, z⟩. */
  private readonly lRows: Float32Array | null;
  /** The trainable LoRA pair (L_ft `[mp, kf]` row-major, R_ft `[kf, np]`), when the checkpoint has one. */
  private readonly ftL: Tensor<'f32'> | null;
  private readonly ftR: Tensor<'f32'> | null;
  constructor(
    readonly d: Decomposition,
    readonly bias: Float32Array | null = null,
  ) {
    [this.outFeatures, this.inFeatures] = d.shape;
    const [mp, np] = d.padded;
    const k = d.rank;
    const fv = (f: Decomposition['l']) => (f.kind === 'dense' ? f.values : latticeDecode(f.codes));
    this.lt = k > 0 ? { dtype: 'f32', shape: [k, mp], strides: [mp, 1], offset: 0, data: fv(d.l) } : null;
    this.r = k > 0 ? { dtype: 'f32', shape: [k, np], strides: [np, 1], offset: 0, data: fv(d.r) } : null;
    if (this.lt) {
      const lr = new Float32Array(mp * k);
      const lt = this.lt.data;
      for (let t = 0; t < k; t++) for (let i = 0; i < mp; i++) lr[i * k + t] = lt[t * mp + i]!;
      this.lRows = lr;
    } else this.lRows = null;
    if (d.q.bits === 2) {
      const codes = d.q.planes[0] as Uint16Array;
      const groups = np / 8;
      const t = new Uint16Array(codes.length);
      for (let i = 0; i < mp; i++) for (let g = 0; g < groups; g++) t[g * mp + i] = codes[i * groups + g]!;
      this.qCodesT = t;
    } else this.qCodesT = null;
    const ft = d.ft && d.ft.rank > 0 ? d.ft : null;
    this.ftL = ft
      ? { dtype: 'f32', shape: [mp, ft.rank], strides: [ft.rank, 1], offset: 0, data: ft.l }
      : null;
    this.ftR = ft ? { dtype: 'f32', shape: [ft.rank, np], strides: [np, 1], offset: 0, data: ft.r } : null;
    this.weightBytes = Math.ceil((d.bitsPerWeight * this.inFeatures * this.outFeatures) / 8);
  }

  forward(x: Float32Array, rows: number): Float32Array {
    const d = this.d;
    const [m, n] = d.shape;
    const [mp, np] = d.padded;
    checkInput('caldera linear', x, rows, n);
    const xr = new Float32Array(rows * np);
    for (let r = 0; r < rows; r++)
      for (let j = 0; j < n; j++) xr[r * np + j] = d.su ? x[r * n + j]! * d.su[j]! : x[r * n + j]!;
    if (d.hadamard) hadamardRowsInPlace(xr, rows, np, { transpose: false });
    const yr = new Float32Array(rows * mp);
    if (d.q.bits !== 2) {
      // 3/4-bit RVQ Q: decode a block of rows at a time (codes + residual, scale included) and multiply; Q̂ is
      // never held whole in f32
      const groups = np / 8;
      const xt: Tensor<'f32'> = { dtype: 'f32', shape: [rows, np], strides: [np, 1], offset: 0, data: xr };
      for (let i0 = 0; i0 < mp; i0 += F16_CHUNK_ROWS) {
        const c = Math.min(F16_CHUNK_ROWS, mp - i0);
        const chunk = latticeDecode({
          ...d.q,
          planes: d.q.planes.map((p) => p.subarray(i0 * groups, (i0 + c) * groups)),
        });
        const wt: Tensor<'f32'> = { dtype: 'f32', shape: [c, np], strides: [np, 1], offset: 0, data: chunk };
        const part =
          rows <= MATVEC_MAX_ROWS
            ? matvecRows(chunk, c, np, xr, rows)
            : gemm(xt, wt, { transB: true, checkFinite: false }).data;
        for (let r = 0; r < rows; r++) yr.set(part.subarray(r * c, r * c + c), r * mp + i0);
      }
    } else if (rows <= MATVEC_MAX_ROWS) {
      e8pMatvecLut(this.qCodesT!, mp, np, xr, rows, yr);
      const scale = d.q.scale;
      for (let i = 0; i < yr.length; i++) yr[i]! *= scale;
    } else {
      // batches: decode Q̂ a block of rows at a time (never whole) and multiply with gemm
      const codes = d.q.planes[0] as Uint16Array;
      const groups = np / 8;
      const chunk = new Float32Array(F16_CHUNK_ROWS * np);
      const xt: Tensor<'f32'> = { dtype: 'f32', shape: [rows, np], strides: [np, 1], offset: 0, data: xr };
      for (let i0 = 0; i0 < mp; i0 += F16_CHUNK_ROWS) {
        const c = Math.min(F16_CHUNK_ROWS, mp - i0);
        e8pDecodeInto(codes.subarray(i0 * groups, (i0 + c) * groups), chunk);
        const wt: Tensor<'f32'> = { dtype: 'f32', shape: [c, np], strides: [np, 1], offset: 0, data: chunk };
        const part = gemm(xt, wt, { transB: true, checkFinite: false }).data;
        for (let r = 0; r < rows; r++) yr.set(part.subarray(r * c, r * c + c), r * mp + i0);
      }
      const scale = d.q.scale;
      for (let i = 0; i < yr.length; i++) yr[i]! *= scale;
    }
    if (this.lt && this.r) {
      const k = d.rank;
      if (rows <= MATVEC_MAX_ROWS) {
        // z = x'·R̂ᵀ (rows × k), then yr += z·L̂ᵀ, both as matrix–vector products with contiguous rows
        const z = new Float32Array(rows * k);
        matvecF32(this.r.data, k, np, xr, rows, z);
        const lr = new Float32Array(rows * mp);
        matvecF32(this.lRows!, mp, k, z, rows, lr);
        for (let i = 0; i < lr.length; i++) yr[i]! += lr[i]!;
      } else {
        const xt: Tensor<'f32'> = { dtype: 'f32', shape: [rows, np], strides: [np, 1], offset: 0, data: xr };
        const z = gemm(xt, this.r, { transB: true, checkFinite: false }); // rows × k
        const lr = gemm(z, this.lt, { checkFinite: false }).data; // rows × mp
        for (let i = 0; i < yr.length; i++) yr[i]! += lr[i]!;
      }
    }
    if (this.ftL && this.ftR) {
      // LoRA part: yr += (x'·R_ftᵀ)·L_ftᵀ
      const xt: Tensor<'f32'> = { dtype: 'f32', shape: [rows, np], strides: [np, 1], offset: 0, data: xr };
      const z = gemm(xt, this.ftR, { transB: true, checkFinite: false }); // rows × kf
      const lr = gemm(z, this.ftL, { transB: true, checkFinite: false }).data; // rows × mp
      for (let i = 0; i < yr.length; i++) yr[i]! += lr[i]!;
    }
    if (d.hadamard) hadamardRowsInPlace(yr, rows, mp, { transpose: true });
    const y = new Float32Array(rows * m);
    for (let r = 0; r < rows; r++)
      for (let i = 0; i < m; i++)
        y[r * m + i] = d.scale * (d.sv ? yr[r * mp + i]! * d.sv[i]! : yr[r * mp + i]!);
    return addBias(y, rows, this.bias);
  }
}
