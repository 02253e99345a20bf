import type { Tensor } from '@caldera/core';
import { gemmInto, type Pool } from '@caldera/linalg';

/** Columns per block of {@link timesLower}: the extra work over a triangle's is about `block / n`. */
const LOWER_BLOCK = 512;

/**
 * x·M for x (rows×n) and a lower-triangular M (n×n, zeros above the diagonal, as `cholesky` returns it): column
 * block J of the product reads only the rows p ≥ J of M, so each block is the gemm `x[:, J₀:]·M[J₀:, J]`, about
 * half the multiply-adds of a full product. The product goes into `out` (rows×n, every value overwritten) when
 * given, else into a new array.
 */
export function timesLower(
  x: Float32Array,
  rows: number,
  m: Float32Array,
  n: number,
  pool: { pool?: Pool },
  out: Float32Array = new Float32Array(rows * n),
): Float32Array {
  return blockedProduct(x, rows, m, n, pool, out, false);
}

/**
 * x·Mᵀ for x (rows×n) and a lower-triangular M (n×n, zeros above the diagonal): column block J of the product reads
 * only the columns p < J₁ of M's rows J (Mᵀ is upper triangular), so each block is the gemm `x[:, :J₁]·M[J, :J₁]ᵀ`,
 * about half the multiply-adds of a full product. The product goes into `out` (rows×n, every value overwritten) when
 * given, else into a new array.
 */
export function timesLowerTransposed(
  x: Float32Array,
  rows: number,
  m: Float32Array,
  n: number,
  pool: { pool?: Pool },
  out: Float32Array = new Float32Array(rows * n),
): Float32Array {
  return blockedProduct(x, rows, m, n, pool, out, true);
}

/** {@link timesLower} (`transposed` false) or {@link timesLowerTransposed}, one column block of the product at a time. */
function blockedProduct(
  x: Float32Array,
  rows: number,
  m: Float32Array,
  n: number,
  pool: { pool?: Pool },
  out: Float32Array,
  transposed: boolean,
): Float32Array {
  const view = (data: Float32Array, offset: number, r: number, c: number): Tensor<'f32'> => ({
    dtype: 'f32',
    shape: [r, c],
    strides: [n, 1],
    offset,
    data,
  });
  for (let j0 = 0; j0 < n; j0 += LOWER_BLOCK) {
    const w = Math.min(LOWER_BLOCK, n - j0);
    const c = view(out, j0, rows, w);
    if (transposed)
      gemmInto(c, view(x, 0, rows, j0 + w), view(m, j0 * n, w, j0 + w), {
        transB: true,
        checkFinite: false,
        ...pool,
      });
    else
      gemmInto(c, view(x, j0, rows, n - j0), view(m, j0 * n + j0, n - j0, w), {
        checkFinite: false,
        ...pool,
      });
  }
  return out;
}
