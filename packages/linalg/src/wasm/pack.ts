/**
 * Packing strided operands into the panel layouts of `asm/kernels.ts`, and unpacking results.
 * A "strided operand" is (data, offset, stride along the panel's short dimension, stride along K).
 */

/** Source view of op(X) as rows × K (for A) or K × columns (for B). */
export interface StridedSrc {
  readonly data: Float32Array | Float64Array;
  readonly offset: number;
  /** stride between consecutive rows of op(A) / columns of op(B) */
  readonly sShort: number;
  /** stride between consecutive k */
  readonly sK: number;
}

/**
 * Pack `count` rows (A) or columns (B) starting at `start`, of length `k`, into panels of `w`:
 * panel q holds for each p the `w` values of lines `start + q·w .. +w-1` at `dst[off + (q·k + p)·w + r]`.
 * Lines at or past `limit` are zero-filled.
 */
export function packPanels(
  dst: Float32Array | Float64Array,
  off: number,
  src: StridedSrc,
  start: number,
  count: number,
  limit: number,
  k: number,
  w: number,
): void {
  const panels = Math.ceil(count / w);
  const sd = src.data;
  const { sShort, sK } = src;
  for (let q = 0; q < panels; q++) {
    const pbase = off + q * k * w;
    const first = start + q * w;
    const valid = Math.max(0, Math.min(w, limit - first, start + count - first));
    if (valid < w) dst.fill(0, pbase, pbase + k * w);
    if (sK === 1 || (sShort !== 1 && Math.abs(sK) < Math.abs(sShort))) {
      // lines are contiguous along k: read each line sequentially, write with stride w
      for (let r = 0; r < valid; r++) {
        let s = src.offset + (first + r) * sShort;
        let d = pbase + r;
        for (let p = 0; p < k; p++, s += sK, d += w) dst[d] = sd[s]!;
      }
    } else {
      // lines are contiguous across the panel: read w neighbours per k, write sequentially
      for (let p = 0; p < k; p++) {
        const s = src.offset + first * sShort + p * sK;
        const d = pbase + p * w;
        for (let r = 0; r < valid; r++) dst[d + r] = sd[s + r * sShort]!;
      }
    }
  }
}
