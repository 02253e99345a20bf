import { f16ArrayToF32 } from '@caldera/core';

/**
 * `y[r·m + i] = Σ_j x[r·n + j]·w[i·n + j]` for `rows` input rows, W row-major `[m, n]` f32. Four partial sums per
 * output; the weight row is read once per input row (decode is memory-bound, so no copy into WebAssembly memory).
 */
export function matvecF32(
  w: Float32Array,
  m: number,
  n: number,
  x: Float32Array,
  rows: number,
  y: Float32Array,
) {
  const n4 = n - (n % 4);
  for (let r = 0; r < rows; r++) {
    const xo = r * n;
    for (let i = 0; i < m; i++) {
      const wo = i * n;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      let j = 0;
      for (; j < n4; j += 4) {
        s0 += x[xo + j]! * w[wo + j]!;
        s1 += x[xo + j + 1]! * w[wo + j + 1]!;
        s2 += x[xo + j + 2]! * w[wo + j + 2]!;
        s3 += x[xo + j + 3]! * w[wo + j + 3]!;
      }
      for (; j < n; j++) s0 += x[xo + j]! * w[wo + j]!;
      y[r * m + i] = s0 + s1 + s2 + s3;
    }
  }
}

/**
 * As {@link matvecF32} with W stored as f16 bits: each weight row is converted into a scratch row of f32 (exact) and
 * then used for every input row, so W is never materialised in f32.
 */
export function matvecF16(
  w: Uint16Array,
  m: number,
  n: number,
  x: Float32Array,
  rows: number,
  y: Float32Array,
) {
  const row = new Float32Array(n);
  const n4 = n - (n % 4);
  for (let i = 0; i < m; i++) {
    f16ArrayToF32(w.subarray(i * n, i * n + n), row);
    for (let r = 0; r < rows; r++) {
      const xo = r * n;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      let j = 0;
      for (; j < n4; j += 4) {
        s0 += x[xo + j]! * row[j]!;
        s1 += x[xo + j + 1]! * row[j + 1]!;
        s2 += x[xo + j + 2]! * row[j + 2]!;
        s3 += x[xo + j + 3]! * row[j + 3]!;
      }
      for (; j < n; j++) s0 += x[xo + j]! * row[j]!;
      y[r * m + i] = s0 + s1 + s2 + s3;
    }
  }
}
