/**
 * The c×r transpose of the r×c row-major `a`, as a new array of its type, by 32×32 tiles (a tile's rows and columns
 * stay in cache). An exact copy: the one transpose of this package besides the in-place square one.
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

/**
 * In place: the n×n row-major `a` becomes its transpose, by 32×32 tiles on and above the diagonal, each swapped with
 * its mirror. Exact; no second array (a fresh n² f64 array, first touched, costs seconds at n = 11008 where page faults
 * are slow).
 */
export function transposeSquareInPlace(a: Float32Array | Float64Array, n: number): void {
  const B = 32;
  for (let i0 = 0; i0 < n; i0 += B)
    for (let j0 = i0; j0 < n; j0 += B) {
      const i1 = Math.min(n, i0 + B);
      const j1 = Math.min(n, j0 + B);
      for (let i = i0; i < i1; i++)
        for (let j = Math.max(j0, i + 1); j < j1; j++) {
          const u = a[i * n + j]!;
          a[i * n + j] = a[j * n + i]!;
          a[j * n + i] = u;
        }
    }
}
