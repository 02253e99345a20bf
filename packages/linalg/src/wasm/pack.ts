/**
 * Packing strided operands into the panel layouts of `asm/kernels.ts`, and unpacking results.
 * A "strided operand" is (data, offset, stride along the panel's short dimension, stride along K).
 */
import type { KernelExports } from './module.js';

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
 * The kernels' packing routines and a staging area in their memory (byte offset and size) where f32 lines are copied
 * before `packLines32` / `packRows32` lay them out in panels.
 */
export interface WasmPacker {
  readonly exports: KernelExports;
  readonly staging: number;
  readonly stagingBytes: number;
}

/** Lines copied to the staging area per packing call: at most 256, and at most 4 MiB of them. */
export function stageLines(k: number): number {
  return Math.min(256, Math.floor(2 ** 22 / (4 * Math.max(1, k))));
}

/** Shortest k for which staging pays (a copy per line or group of lines). */
const STAGE_MIN_K = 16;

/**
 * Pack `count` rows (A) or columns (B) starting at `start`, of length `k`, into panels of `w`:
 * panel q holds for each p the `w` values of lines `start + q·w .. +w-1` at `dst[off + (q·k + p)·w + r]`.
 * Lines at or past `limit` are zero-filled. With `packer`, full panels of f32 lines that are contiguous along k are
 * copied to its staging area and packed by the SIMD kernel (several times faster than the loops here).
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
  packer?: WasmPacker,
): void {
  const panels = Math.ceil(count / w);
  const sd = src.data;
  const { sShort, sK } = src;
  let q0 = 0;
  if (
    packer &&
    (sK === 1 || sShort === 1) &&
    k >= STAGE_MIN_K &&
    dst instanceof Float32Array &&
    sd instanceof Float32Array &&
    sd.buffer !== dst.buffer // a source inside the kernels' memory could overlap the staging area
  ) {
    const full = Math.floor(Math.max(0, Math.min(count, limit - start)) / w); // panels with all w lines valid
    q0 = packStaged(dst, off, sd, src.offset + start * sShort, sShort, sK, full, k, w, packer);
  }
  for (let q = q0; q < panels; q++) {
    const pbase = off + q * k * w;
    const first = start + q * w;
    const valid = Math.max(0, Math.min(w, limit - first, start + count - first));
    if (valid < w) dst.fill(0, pbase, pbase + k * w);
    else if (w === 4 && packFull4(dst, pbase, sd, src.offset + first * sShort, sShort, sK, k)) continue;
    else if (w === 8 && packFull8(dst, pbase, sd, src.offset + first * sShort, sShort, sK, k)) continue;
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

/**
 * The first `full` panels of f32 lines (line i starting at `so`, its values `sK` apart, lines `sShort` apart; one of
 * them 1) through the staging area and the SIMD packing: lines contiguous along k are staged line by line and
 * transposed (`packLines32`); lines adjacent along k (`sShort` 1) are staged row by row and copied in 16-byte pieces
 * (`packRows32`). Returns the number of panels packed (0 when not even one panel fits the staging area).
 */
function packStaged(
  dst: Float32Array,
  off: number,
  sd: Float32Array,
  so: number,
  sShort: number,
  sK: number,
  full: number,
  k: number,
  w: number,
  packer: WasmPacker,
): number {
  const perStage = Math.min(stageLines(k), Math.floor(packer.stagingBytes / (4 * k)));
  const panelsPerStage = Math.floor(perStage / w);
  if (panelsPerStage === 0) return 0;
  const st = packer.staging / 4;
  for (let q = 0; q < full; q += panelsPerStage) {
    const np = Math.min(panelsPerStage, full - q);
    const lines = np * w;
    const first = so + q * w * sShort;
    const to = (off + q * k * w) * 4;
    if (sK === 1) {
      if (sShort === k) dst.set(sd.subarray(first, first + lines * k), st);
      else
        for (let i = 0; i < lines; i++)
          dst.set(sd.subarray(first + i * sShort, first + i * sShort + k), st + i * k);
      packer.exports.packLines32(packer.staging, k, lines, k, w, to);
    } else {
      if (sK === lines) dst.set(sd.subarray(first, first + k * lines), st);
      else
        for (let p = 0; p < k; p++)
          dst.set(sd.subarray(first + p * sK, first + p * sK + lines), st + p * lines);
      packer.exports.packRows32(packer.staging, lines, k, lines, w, to);
    }
  }
  return full;
}

/** Full 4-wide panel, unrolled: contiguous along k (4 row streams) or across the panel. */
function packFull4(
  dst: Float32Array | Float64Array,
  d: number,
  sd: Float32Array | Float64Array,
  s: number,
  sShort: number,
  sK: number,
  k: number,
): boolean {
  if (sK === 1) {
    const s1 = s + sShort;
    const s2 = s1 + sShort;
    const s3 = s2 + sShort;
    for (let p = 0; p < k; p++, d += 4) {
      dst[d] = sd[s + p]!;
      dst[d + 1] = sd[s1 + p]!;
      dst[d + 2] = sd[s2 + p]!;
      dst[d + 3] = sd[s3 + p]!;
    }
    return true;
  }
  if (sShort === 1) {
    for (let p = 0; p < k; p++, d += 4, s += sK) {
      dst[d] = sd[s]!;
      dst[d + 1] = sd[s + 1]!;
      dst[d + 2] = sd[s + 2]!;
      dst[d + 3] = sd[s + 3]!;
    }
    return true;
  }
  return false;
}

/** Full 8-wide panel, unrolled (see {@link packFull4}). */
function packFull8(
  dst: Float32Array | Float64Array,
  d: number,
  sd: Float32Array | Float64Array,
  s: number,
  sShort: number,
  sK: number,
  k: number,
): boolean {
  if (sShort === 1) {
    for (let p = 0; p < k; p++, d += 8, s += sK) {
      dst[d] = sd[s]!;
      dst[d + 1] = sd[s + 1]!;
      dst[d + 2] = sd[s + 2]!;
      dst[d + 3] = sd[s + 3]!;
      dst[d + 4] = sd[s + 4]!;
      dst[d + 5] = sd[s + 5]!;
      dst[d + 6] = sd[s + 6]!;
      dst[d + 7] = sd[s + 7]!;
    }
    return true;
  }
  if (sK === 1) {
    for (let r = 0; r < 8; r += 4) {
      const s0 = s + r * sShort;
      const s1 = s0 + sShort;
      const s2 = s1 + sShort;
      const s3 = s2 + sShort;
      for (let p = 0, q = d + r; p < k; p++, q += 8) {
        dst[q] = sd[s0 + p]!;
        dst[q + 1] = sd[s1 + p]!;
        dst[q + 2] = sd[s2 + p]!;
        dst[q + 3] = sd[s3 + p]!;
      }
    }
    return true;
  }
  return false;
}
