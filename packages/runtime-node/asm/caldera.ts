// AssemblyScript: one CALDERA layer's forward for a few input rows at a time, entirely in WebAssembly SIMD (also
// built over a shared memory, in which decode-pool workers run their rows of Q̂):
//   x' = H_n·(su ⊙ x) (zero-padded to np), y' = qScale·Q̂·x' + L̂·(R̂·x'), y = scale · sv ⊙ (H_mᵀ·y')[0..m)
// with Q̂ read as E8P codes through tables (asm/e8p.ts), never materialised. Compiled by scripts/build-wasm.mjs;
// src/kernels/caldera-kernel.ts lays out the memory and writes the Layer record.
import { e8pRow } from './e8p';
import { hadamardInPlace } from './hadamard';
import { denseF32 } from './matvec';

// A layer's record, at the start of its region of the memory (many layers share a memory): 4-byte fields in this order
// (src/kernels/caldera-kernel.ts writes them).
@unmanaged
class Layer {
  n: i32; // in features
  m: i32; // out features
  np: i32; // padded in features (Hadamard size)
  mp: i32; // padded out features
  rank: i32; // k (0: no low-rank part)
  kIn: i32; // Hadamard block factor K of np (0: no Hadamard)
  kOut: i32; // of mp
  codes: usize; // E8P codes, group-major [np/8, mp] u16
  p1: usize; // first-half patterns, 32 × 4 f32
  p2: usize;
  lRows: usize; // L̂ [mp, k] f32 (row-major)
  r: usize; // R̂ [k, np] f32
  su: usize; // np f32 (input signs; ones when the decomposition has none)
  sv: usize; // mp f32
  mixIn: usize; // K×K f32: block a2 of H_n·v is Σ_a mixIn[a2·K + a]·(fwht of block a)
  mixOut: usize; // the same for H_mᵀ
  x: usize; // input rows, rows × n f32
  y: usize; // output rows, rows × m f32
  xr: usize; // np f32
  yr: usize; // mp f32
  z: usize; // k f32
  tmp: usize; // max(np, mp) f32
  qScale: f32;
  scale: f32;
  mq: i32; // rows of Q̂ this memory holds (the first mq of mp; mp unless the rows are split over threads)
}

/** x' = H_n·(su ⊙ x row r), zero-padded to np, into xr. */
function rotateIn(L: Layer, r: i32): void {
  const n = L.n;
  const x = L.x + ((<usize>(r * n)) << 2);
  for (let j: i32 = 0; j < n; j++)
    store<f32>(
      L.xr + ((<usize>j) << 2),
      load<f32>(x + ((<usize>j) << 2)) * load<f32>(L.su + ((<usize>j) << 2)),
    );
  memory.fill(L.xr + ((<usize>n) << 2), 0, (<usize>(L.np - n)) << 2);
  if (L.kIn > 0) hadamardInPlace(L.xr, L.np, L.kIn, L.mixIn, L.tmp);
}

/** yr[0..mq) = qScale·(Q̂·x')[0..mq): the rows of Q̂ this memory holds (codes group-major [np/8, mq]). */
function qRows(L: Layer): void {
  const mq = L.mq;
  e8pRow(L.codes, L.p1, L.p2, L.xr, L.np >> 3, mq, L.yr);
  const qs = f32x4.splat(L.qScale);
  let i: i32 = 0;
  for (; i + 4 <= mq; i += 4) {
    const p = L.yr + ((<usize>i) << 2);
    v128.store(p, f32x4.mul(v128.load(p), qs));
  }
  for (; i < mq; i++) store<f32>(L.yr + ((<usize>i) << 2), load<f32>(L.yr + ((<usize>i) << 2)) * L.qScale);
}

/** tmp[0..mp) = L̂·(R̂·x') (z = R̂·x' on the way), for a layer with a low-rank part. */
function lowRank(L: Layer): void {
  denseF32(L.r, L.rank, L.np, L.xr, 1, L.z);
  denseF32(L.lRows, L.mp, L.rank, L.z, 1, L.tmp);
}

/** yr (all mp rows) += tmp when the layer has a low-rank part, then y row r = scale · sv ⊙ (H_mᵀ·yr)[0..m). */
function finishRow(L: Layer, r: i32): void {
  const mp = L.mp;
  let i: i32 = 0;
  if (L.rank > 0) {
    for (; i + 4 <= mp; i += 4) {
      const p = L.yr + ((<usize>i) << 2);
      v128.store(p, f32x4.add(v128.load(p), v128.load(L.tmp + ((<usize>i) << 2))));
    }
    for (; i < mp; i++)
      store<f32>(
        L.yr + ((<usize>i) << 2),
        load<f32>(L.yr + ((<usize>i) << 2)) + load<f32>(L.tmp + ((<usize>i) << 2)),
      );
  }
  if (L.kOut > 0) hadamardInPlace(L.yr, mp, L.kOut, L.mixOut, L.tmp);
  const m = L.m;
  const y = L.y + ((<usize>(r * m)) << 2);
  for (i = 0; i < m; i++)
    store<f32>(
      y + ((<usize>i) << 2),
      L.scale * (load<f32>(L.yr + ((<usize>i) << 2)) * load<f32>(L.sv + ((<usize>i) << 2))),
    );
}

/** The whole forward of `rows` input rows, for a memory that holds all of Q̂'s rows (mq = mp). */
export function forward(layer: usize, rows: i32): void {
  const L = changetype<Layer>(layer);
  for (let r: i32 = 0; r < rows; r++) {
    rotateIn(L, r);
    qRows(L);
    if (L.rank > 0) lowRank(L);
    finishRow(L, r);
  }
}

// A forward whose Q̂ rows are split over threads (src/kernels/decode-pool.ts), for input row 0: the caller runs
// `splitIn` and copies x' to the other threads' memories; the workers run `splitRows` on their rows while the caller
// runs `splitOwn` (its first mq rows, and the low-rank term); the caller then copies the workers' rows into
// yr[mq..mp) and runs `splitEnd`. Every value is computed by the same operations as in `forward`, so the output is the
// same to the bit.

/** Input row 0 into x' (xr). */
export function splitIn(layer: usize): void {
  rotateIn(changetype<Layer>(layer), 0);
}

/** A worker's rows of qScale·Q̂·x' into yr (its record sets np, mq, codes, p1, p2, xr, yr and qScale only). */
export function splitRows(layer: usize): void {
  qRows(changetype<Layer>(layer));
}

/** The caller's rows [0, mq) of qScale·Q̂·x' into yr, and L̂·(R̂·x') into tmp. */
export function splitOwn(layer: usize): void {
  const L = changetype<Layer>(layer);
  qRows(L);
  if (L.rank > 0) lowRank(L);
}

/** Add the low-rank term, rotate and scale into output row 0 (all of yr filled). */
export function splitEnd(layer: usize): void {
  finishRow(changetype<Layer>(layer), 0);
}

/** End of this module's static data; the fixed table addresses of asm/e8p.ts start at 65 536 above it (checked). */
export function heapBase(): usize {
  return __heap_base;
}
