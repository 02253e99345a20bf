import { CalderaError, type Tensor } from '@caldera/core';
import { gemm, hadamardRowsInPlace } from '@caldera/linalg';
import { type Decomposition, latticeDecode } from '@caldera/lowrank';
import { e8pGrid } from '@caldera/quant';

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

/** Dense f32 weights `[out, in]`. */
export class DenseLinear implements Linear {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly weightBytes: number;
  constructor(
    readonly weight: Tensor<'f32'>,
    readonly bias: Float32Array | null = null,
    storedBytesPerWeight = 4,
  ) {
    [this.outFeatures, this.inFeatures] = weight.shape as [number, number];
    this.weightBytes = this.outFeatures * this.inFeatures * storedBytesPerWeight;
  }
  forward(x: Float32Array, rows: number): Float32Array {
    if (x.length !== rows * this.inFeatures)
      throw new CalderaError(
        'E_SHAPE',
        `linear: input has ${x.length} values, expected ${rows}·${this.inFeatures}`,
      );
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
  private readonly qCodes: Uint16Array;
  private readonly qDense: Float32Array | null; // only for non-2-bit Q (decoded once)
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
    this.qCodes = d.q.planes[0] as Uint16Array;
    this.qDense = d.q.bits === 2 ? null : latticeDecode(d.q);
    this.weightBytes = Math.ceil((d.bitsPerWeight * this.inFeatures * this.outFeatures) / 8);
  }

  forward(x: Float32Array, rows: number): Float32Array {
    const d = this.d;
    const [m, n] = d.shape;
    const [mp, np] = d.padded;
    if (x.length !== rows * n)
      throw new CalderaError(
        'E_SHAPE',
        `caldera linear: input has ${x.length} values, expected ${rows}·${n}`,
      );
    const xr = new Float32Array(rows * np);
    for (let r = 0; r < rows; r++)
      for (let j = 0; j < n; j++) xr[r * np + j] = d.su ? x[r * n + j]! * d.su[j]! : x[r * n + j]!;
    if (d.hadamard) hadamardRowsInPlace(xr, rows, np, { transpose: false });
    const yr = new Float32Array(rows * mp);
    const groups = np / 8;
    if (this.qDense) {
      const q = this.qDense;
      for (let r = 0; r < rows; r++)
        for (let i = 0; i < mp; i++) {
          let s = 0;
          for (let j = 0; j < np; j++) s += xr[r * np + j]! * q[i * np + j]!;
          yr[r * mp + i] = s;
        }
    } else {
      const grid = e8pGrid();
      const codes = this.qCodes;
      const scale = d.q.scale;
      for (let i = 0; i < mp; i++) {
        const rowCodes = i * groups;
        for (let r = 0; r < rows; r++) {
          const xo = r * np;
          let s = 0;
          for (let j = 0; j < groups; j++) {
            const c = codes[rowCodes + j]! * 8;
            const xb = xo + j * 8;
            s +=
              xr[xb]! * grid[c]! +
              xr[xb + 1]! * grid[c + 1]! +
              xr[xb + 2]! * grid[c + 2]! +
              xr[xb + 3]! * grid[c + 3]! +
              xr[xb + 4]! * grid[c + 4]! +
              xr[xb + 5]! * grid[c + 5]! +
              xr[xb + 6]! * grid[c + 6]! +
              xr[xb + 7]! * grid[c + 7]!;
          }
          yr[r * mp + i] = s * scale;
        }
      }
    }
    if (this.lt && this.r) {
      const xt: Tensor<'f32'> = { dtype: 'f32', shape: [rows, np], strides: [np, 1], offset: 0, data: xr };
      const z = gemm(xt, this.r, { transB: true, checkFinite: false }); // rows × k
      const lr = gemm(z, this.lt, { checkFinite: false }).data; // rows × mp
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
