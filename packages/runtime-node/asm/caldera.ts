// AssemblyScript: one CALDERA layer's forward for a few input rows at a time, entirely in WebAssembly SIMD:
//   x' = H_n·(su ⊙ x) (zero-padded to np), y' = qScale·Q̂·x' + L̂·(R̂·x'), y = scale · sv ⊙ (H_mᵀ·y')[0..m)
// with Q̂ read as E8P codes through tables (asm/e8p.ts), never materialised. Compiled by scripts/build-wasm.mjs;
// src/kernels/caldera-kernel.ts lays out the memory and writes the Layer record.
import { e8pRow } from './e8p';
import { hadamardInPlace } from './hadamard';
import { denseF32 } from './matvec';

// The layer record at a fixed address: 4-byte fields in this order (src/kernels/caldera-kernel.ts writes them).
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
}

export function forward(layer: usize, rows: i32): void {
  const L = changetype<Layer>(layer);
  const n = L.n;
  const m = L.m;
  const np = L.np;
  const mp = L.mp;
  const k = L.rank;
  for (let r: i32 = 0; r < rows; r++) {
    const x = L.x + ((<usize>(r * n)) << 2);
    for (let j: i32 = 0; j < n; j++)
      store<f32>(
        L.xr + ((<usize>j) << 2),
        load<f32>(x + ((<usize>j) << 2)) * load<f32>(L.su + ((<usize>j) << 2)),
      );
    memory.fill(L.xr + ((<usize>n) << 2), 0, (<usize>(np - n)) << 2);
    if (L.kIn > 0) hadamardInPlace(L.xr, np, L.kIn, L.mixIn, L.tmp);
    e8pRow(L.codes, L.p1, L.p2, L.xr, np >> 3, mp, L.yr);
    const qs = f32x4.splat(L.qScale);
    let i: i32 = 0;
    for (; i + 4 <= mp; i += 4) {
      const p = L.yr + ((<usize>i) << 2);
      v128.store(p, f32x4.mul(v128.load(p), qs));
    }
    for (; i < mp; i++) store<f32>(L.yr + ((<usize>i) << 2), load<f32>(L.yr + ((<usize>i) << 2)) * L.qScale);
    if (k > 0) {
      denseF32(L.r, k, np, L.xr, 1, L.z); // z = R̂·x'
      denseF32(L.lRows, mp, k, L.z, 1, L.tmp); // L̂·z
      for (i = 0; i + 4 <= mp; i += 4) {
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
    const y = L.y + ((<usize>(r * m)) << 2);
    for (i = 0; i < m; i++)
      store<f32>(
        y + ((<usize>i) << 2),
        L.scale * (load<f32>(L.yr + ((<usize>i) << 2)) * load<f32>(L.sv + ((<usize>i) << 2))),
      );
  }
}

/** End of this module's static data; the fixed table addresses of asm/e8p.ts start at 65 536 above it (checked). */
export function heapBase(): usize {
  return __heap_base;
}
