import { zerosLike, type Vec } from './types.js';

/** Activations {@link rmsNormForward} keeps for the backward pass. */
export interface RmsNormCache {
  /** 1 / sqrt(mean(x²) + eps) per row. */
  rstd: Vec;
}

/** RMSNorm of each row of `x` (`[rows, d]`): `y = x · rstd · w`. Returns `y` and the cache for the backward. */
export function rmsNormForward(
  x: Vec,
  w: Vec,
  rows: number,
  d: number,
  eps: number,
): { y: Vec; cache: RmsNormCache } {
  const y = zerosLike(x, rows * d);
  const rstd = zerosLike(x, rows);
  for (let r = 0; r < rows; r++) {
    const o = r * d;
    let ss = 0;
    for (let j = 0; j < d; j++) ss += x[o + j]! * x[o + j]!;
    const s = 1 / Math.sqrt(ss / d + eps);
    rstd[r] = s;
    for (let j = 0; j < d; j++) y[o + j] = x[o + j]! * s * w[j]!;
  }
  return { y, cache: { rstd } };
}

/**
 * Backward of {@link rmsNormForward}: with `g = dy ⊙ w`, `dx = rstd·g − x·rstd³·mean(g ⊙ x)` and
 * `dw = Σ_rows dy ⊙ x · rstd`.
 */
export function rmsNormBackward(
  dy: Vec,
  x: Vec,
  w: Vec,
  cache: RmsNormCache,
  rows: number,
  d: number,
): { dx: Vec; dw: Vec } {
  const dx = zerosLike(x, rows * d);
  const dw = zerosLike(x, d);
  for (let r = 0; r < rows; r++) {
    const o = r * d;
    const s = cache.rstd[r]!;
    let dot = 0;
    for (let j = 0; j < d; j++) dot += dy[o + j]! * w[j]! * x[o + j]!;
    const c = (s * s * s * dot) / d;
    for (let j = 0; j < d; j++) {
      dx[o + j] = s * dy[o + j]! * w[j]! - x[o + j]! * c;
      dw[j] = dw[j]! + dy[o + j]! * x[o + j]! * s;
    }
  }
  return { dx, dw };
}
