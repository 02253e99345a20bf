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

let f16Table: Float32Array | null = null;

/** All 65 536 f16 values as f32 (256 KiB, built once): one table read converts a weight. */
function f16ToF32Table(): Float32Array {
  if (!f16Table) {
    const bits = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) bits[i] = i;
    f16Table = f16ArrayToF32(bits);
  }
  return f16Table;
}

/**
 * As {@link matvecF32} with W stored as f16 bits, converted on the fly by table lookup (exact), so W is never
 * materialised in f32.
 */
export function matvecF16(
  w: Uint16Array,
  m: number,
  n: number,
  x: Float32Array,
  rows: number,
  y: Float32Array,
) {
  const t = f16ToF32Table();
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
        s0 += x[xo + j]! * t[w[wo + j]!]!;
        s1 += x[xo + j + 1]! * t[w[wo + j + 1]!]!;
        s2 += x[xo + j + 2]! * t[w[wo + j + 2]!]!;
        s3 += x[xo + j + 3]! * t[w[wo + j + 3]!]!;
      }
      for (; j < n; j++) s0 += x[xo + j]! * t[w[wo + j]!]!;
      y[r * m + i] = s0 + s1 + s2 + s3;
    }
  }
}
