import { tensor, type Tensor } from '@caldera/core';
import { gemm } from '@caldera/linalg';
import type { Vec } from './types.js';

function mat(v: Vec, rows: number, cols: number): Tensor<'f32'> | Tensor<'f64'> {
  return v instanceof Float64Array ? tensor('f64', [rows, cols], v) : tensor('f32', [rows, cols], v);
}

function run(
  a: Tensor<'f32'> | Tensor<'f64'>,
  b: Tensor<'f32'> | Tensor<'f64'>,
  transA: boolean,
  transB: boolean,
): Vec {
  // Both operands share the training dtype (f32 in training, f64 in gradient checks).
  return gemm(a as Tensor<'f32'>, b as Tensor<'f32'>, { transA, transB }).data as Vec;
}

/**
 * Dense linear `y = x·Wᵀ` for `x` `[n, inF]` and `W` `[outF, inF]` (Hugging Face layout); returns `[n, outF]`.
 * Runs on `@caldera/linalg`'s gemm.
 */
export function linearForward(x: Vec, w: Vec, n: number, inF: number, outF: number): Vec {
  return run(mat(x, n, inF), mat(w, outF, inF), false, true);
}

/**
 * Backward of {@link linearForward}: returns `dx = dy·W` and adds `dyᵀ·x` into `dw` (accumulating, so tied
 * weights and gradient accumulation sum naturally).
 */
export function linearBackward(dy: Vec, x: Vec, w: Vec, dw: Vec, n: number, inF: number, outF: number): Vec {
  const dx = run(mat(dy, n, outF), mat(w, outF, inF), false, false);
  const g = run(mat(dy, n, outF), mat(x, n, inF), true, false);
  for (let i = 0; i < dw.length; i++) dw[i] = dw[i]! + g[i]!;
  return dx;
}
