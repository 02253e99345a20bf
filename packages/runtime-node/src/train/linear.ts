import { zerosLike, type Vec } from './types.js';

/** Dense linear `y = x·Wᵀ` for `x` `[n, inF]` and `W` `[outF, inF]` (Hugging Face layout); returns `[n, outF]`. */
export function linearForward(x: Vec, w: Vec, n: number, inF: number, outF: number): Vec {
  const y = zerosLike(x, n * outF);
  for (let r = 0; r < n; r++) {
    const xo = r * inF;
    for (let o = 0; o < outF; o++) {
      const wo = o * inF;
      let s = 0;
      for (let j = 0; j < inF; j++) s += x[xo + j]! * w[wo + j]!;
      y[r * outF + o] = s;
    }
  }
  return y;
}

/**
 * Backward of {@link linearForward}: returns `dx = dy·W` and adds `dyᵀ·x` into `dw` (accumulating, so tied
 * weights and gradient accumulation sum naturally).
 */
export function linearBackward(dy: Vec, x: Vec, w: Vec, dw: Vec, n: number, inF: number, outF: number): Vec {
  const dx = zerosLike(x, n * inF);
  for (let r = 0; r < n; r++) {
    const xo = r * inF;
    for (let o = 0; o < outF; o++) {
      const g = dy[r * outF + o]!;
      if (g === 0) continue;
      const wo = o * inF;
      for (let j = 0; j < inF; j++) {
        dx[xo + j] = dx[xo + j]! + g * w[wo + j]!;
        dw[wo + j] = dw[wo + j]! + g * x[xo + j]!;
      }
    }
  }
  return dx;
}
