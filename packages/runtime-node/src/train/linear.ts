import { tensor, type Tensor } from '@caldera/core';
import { gemm, gemmInto } from '@caldera/linalg';
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
 * weights and gradient accumulation sum naturally). `dw` null = W is frozen (its gemm is skipped).
 */
export function linearBackward(
  dy: Vec,
  x: Vec,
  w: Vec,
  dw: Vec | null,
  n: number,
  inF: number,
  outF: number,
): Vec {
  const dx = run(mat(dy, n, outF), mat(w, outF, inF), false, false);
  if (dw) accumulateProduct(dw, dy, x, outF, n, inF);
  return dx;
}

/** `acc [rows, cols] += aᵀ·b` for `a [k, rows]`, `b [k, cols]`, in place (gemm with β = 1, no temporary). */
function accumulateProduct(acc: Vec, a: Vec, b: Vec, rows: number, k: number, cols: number): void {
  gemmInto(
    mat(acc, rows, cols) as Tensor<'f32'>,
    mat(a, k, rows) as Tensor<'f32'>,
    mat(b, k, cols) as Tensor<'f32'>,
    {
      transA: true,
      beta: 1,
      checkFinite: false,
    },
  );
}

function addInto(acc: Vec, v: Vec): void {
  for (let i = 0; i < acc.length; i++) acc[i] = acc[i]! + v[i]!;
}

/** A low-rank adapter `ΔW = A·B` of a linear layer: `A [outF, rank]`, `B [rank, inF]`, row-major. */
export interface LoraPair {
  a: Vec;
  b: Vec;
  rank: number;
}

/** Adds the adapter term `(x·Bᵀ)·Aᵀ` to `y` (`[n, outF]`, in place); returns `z = x·Bᵀ` (`[n, rank]`) for backward. */
export function loraForward(y: Vec, x: Vec, p: LoraPair, n: number, inF: number, outF: number): Vec {
  const z = run(mat(x, n, inF), mat(p.b, p.rank, inF), false, true);
  addInto(y, run(mat(z, n, p.rank), mat(p.a, outF, p.rank), false, true));
  return z;
}

/**
 * Backward of {@link loraForward}: adds `dyᵀ·z` into `da` and `(dy·A)ᵀ·x` into `db` (either may be null when
 * frozen) and `(dy·A)·B` into `dx` (in place).
 */
export function loraBackward(
  dx: Vec,
  dy: Vec,
  x: Vec,
  z: Vec,
  p: LoraPair,
  da: Vec | null,
  db: Vec | null,
  n: number,
  inF: number,
  outF: number,
): void {
  const k = p.rank;
  const u = run(mat(dy, n, outF), mat(p.a, outF, k), false, false); // n × k
  addInto(dx, run(mat(u, n, k), mat(p.b, k, inF), false, false));
  if (da) accumulateProduct(da, dy, z, outF, n, k);
  if (db) accumulateProduct(db, u, x, k, n, inF);
}
