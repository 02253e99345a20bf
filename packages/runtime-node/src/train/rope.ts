import { assertObject, CalderaError } from '@caldera/core';
import { zerosLike, type Vec } from './types.js';

/**
 * Rotary position embedding in the Hugging Face "rotate half" layout on `x` (`[T, heads, headDim]`, one
 * sequence, positions `pos0 … pos0+T−1`): pair `(j, j+headDim/2)` of position `t` is rotated by angle
 * `t·invFreq[j]` (`invFreq` from core's `ropeInvFreq`: the frequencies the runtime uses) and multiplied by
 * `options.scale` (YaRN's attention factor, core's `ropeAttentionFactor`; default 1), as transformers multiplies cos
 * and sin. With `options.transpose` the rotation is by the negative angle (times `scale` again): the transpose of the
 * forward map, so `ropeApply(dy, …, { scale, transpose: true })` is the backward pass (and the inverse when `scale` is
 * 1). `options.pos0` defaults to 0. `options` that is not an object (the boolean that was the sixth argument before)
 * is `E_VALUE`, as is a `scale` that is not a finite number.
 */
export function ropeApply(
  x: Vec,
  T: number,
  heads: number,
  headDim: number,
  invFreq: Float64Array,
  options: { scale?: number; transpose?: boolean; pos0?: number } = {},
): Vec {
  assertObject(options, 'ropeApply', 'options', 'an object such as { scale, transpose }');
  const { scale = 1, transpose = false, pos0 = 0 } = options;
  if (typeof scale !== 'number' || !Number.isFinite(scale))
    throw new CalderaError('E_VALUE', `ropeApply: scale must be a finite number, got ${String(scale)}`);
  const half = headDim / 2;
  if (!(invFreq instanceof Float64Array) || invFreq.length !== half)
    throw new CalderaError(
      'E_VALUE',
      `ropeApply: invFreq must be a Float64Array of headDim / 2 = ${half} inverse frequencies (ropeInvFreq)`,
    );
  const y = zerosLike(x, x.length);
  const sign = transpose ? -1 : 1;
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < half; j++) {
      const a = (pos0 + t) * invFreq[j]!;
      const c = Math.cos(a) * scale;
      const s = sign * Math.sin(a) * scale;
      for (let h = 0; h < heads; h++) {
        const o = (t * heads + h) * headDim;
        const x1 = x[o + j]!;
        const x2 = x[o + j + half]!;
        y[o + j] = x1 * c - x2 * s;
        y[o + j + half] = x2 * c + x1 * s;
      }
    }
  }
  return y;
}
