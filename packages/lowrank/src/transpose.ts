/**
 * The c×r transpose of the r×c row-major `a`, as a new array of its type, by 32×32 tiles (a tile's rows and columns
 * stay in cache). An exact copy: the one transpose of this package.
 */
export function transposed<T extends Float32Array | Float64Array>(a: T, r: number, c: number): T {
  const out = new (a.constructor as { new (n: number): T })(a.length);
  const B = 32;
  for (let i0 = 0; i0 < r; i0 += B)
    for (let j0 = 0; j0 < c; j0 += B) {
      const i1 = Math.min(r, i0 + B);
      const j1 = Math.min(c, j0 + B);
      for (let i = i0; i < i1; i++) for (let j = j0; j < j1; j++) out[j * r + i] = a[i * c + j]!;
    }
  return out;
}
