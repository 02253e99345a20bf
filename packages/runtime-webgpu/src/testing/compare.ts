/**
 * max |a − b| / max(1, max |b|): the error relative to the output scale, for comparing GPU results with references
 * that sum in f32 in another order.
 */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0;
  let s = 1;
  for (let i = 0; i < b.length; i++) {
    e = Math.max(e, Math.abs(a[i]! - b[i]!));
    s = Math.max(s, Math.abs(b[i]!));
  }
  return e / s;
}
