/** A flat floating-point buffer: f32 for training, f64 for gradient checks. */
export type Vec = Float32Array | Float64Array;

/** A new buffer of the same element type as `like`, of length `n`, zero-filled. */
export function zerosLike(like: Vec, n: number): Vec {
  return like instanceof Float64Array ? new Float64Array(n) : new Float32Array(n);
}
