/** Largest absolute difference of `a` from `b`, relative to `b`'s largest magnitude (at least 1). */
export function maxRel(a: Float32Array, b: Float32Array): number {
  let e = 0;
  let s = 1;
  for (let i = 0; i < a.length; i++) {
    e = Math.max(e, Math.abs(a[i]! - b[i]!));
    s = Math.max(s, Math.abs(b[i]!));
  }
  return e / s;
}
