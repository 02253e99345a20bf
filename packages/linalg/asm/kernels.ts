// WebAssembly SIMD128 GEMM micro-kernels for @caldera/linalg (AssemblyScript source).
//
// Built by scripts/build-wasm.mjs with `asc --enable simd,threads --importMemory --sharedMemory`.
// The module owns no data: the caller lays out packed operands in the (shared) memory and calls these
// kernels on ranges of panels, so several threads can work on disjoint row blocks of C at once.
//
// Packed layouts (all byte offsets are u32; the host keeps every buffer 16-byte aligned):
// - A (op(A), M x K) in panels of MR = 4 rows: panel ip holds, for p = 0..K-1, the 4 values
//   A[4ip..4ip+3, p] contiguously; panel ip starts at apack + ip*K*MR*size. Rows past M are zero.
// - B (op(B), K x N) in panels of NR columns (8 for f32, 4 for f64): panel jp holds, for p = 0..K-1,
//   B[p, NR*jp .. NR*jp+NR-1] contiguously. Columns past N are zero.
// - C is row-major with leading dimension ldc (elements), padded to multiples of MR rows and NR columns.
//
// Each kernel computes C := alpha·A·B + beta·C on the rows of panels ip0..ip1-1 and the columns of panels
// jp0..jp1-1 over the whole K (with beta = 0, C is not read), blocking K by kc so that one B micro-panel (kc x NR) stays in L1 while the A panels
// of the row block stream from L2.

/** First K block with beta = 0: C = alpha·acc. */
const MODE_SCALE = 0;
/** First K block: C = alpha·acc + beta·C. */
const MODE_SCALE_ADD = 1;
/** Later K blocks: C += alpha·acc. */
const MODE_ACCUMULATE = 2;

function fin32(acc: v128, p: usize, va: v128, vb: v128, mode: i32): v128 {
  if (mode == MODE_SCALE) return f32x4.mul(acc, va);
  if (mode == MODE_SCALE_ADD) return f32x4.add(f32x4.mul(acc, va), f32x4.mul(v128.load(p), vb));
  return f32x4.add(v128.load(p), f32x4.mul(acc, va));
}

function fin64(acc: v128, p: usize, va: v128, vb: v128, mode: i32): v128 {
  if (mode == MODE_SCALE) return f64x2.mul(acc, va);
  if (mode == MODE_SCALE_ADD) return f64x2.add(f64x2.mul(acc, va), f64x2.mul(v128.load(p), vb));
  return f64x2.add(v128.load(p), f64x2.mul(acc, va));
}

/** f32: C[4ip0.., 8jp0..] = alpha·A·B + beta·C for panels ip in [ip0, ip1), jp in [jp0, jp1). */
export function sgemmPanels(
  apack: usize,
  bpack: usize,
  c: usize,
  k: i32,
  ip0: i32,
  ip1: i32,
  jp0: i32,
  jp1: i32,
  ldc: i32,
  kc: i32,
  alpha: f64,
  beta: f64,
): void {
  const kk = k as usize;
  const ldcb = (ldc as usize) << 2;
  const va = f32x4.splat(alpha as f32);
  const vb = f32x4.splat(beta as f32);
  for (let p0 = 0; p0 < k; p0 += kc) {
    const kl = min(kc, k - p0);
    const mode = p0 > 0 ? MODE_ACCUMULATE : beta == 0 ? MODE_SCALE : MODE_SCALE_ADD;
    for (let jp = jp0; jp < jp1; jp++) {
      const bstart = bpack + (((jp as usize) * kk + (p0 as usize)) << 5);
      for (let ip = ip0; ip < ip1; ip++) {
        let a = apack + (((ip as usize) * kk + (p0 as usize)) << 4);
        let b = bstart;
        let c00 = f32x4.splat(0);
        let c01 = f32x4.splat(0);
        let c10 = f32x4.splat(0);
        let c11 = f32x4.splat(0);
        let c20 = f32x4.splat(0);
        let c21 = f32x4.splat(0);
        let c30 = f32x4.splat(0);
        let c31 = f32x4.splat(0);
        for (let p = 0; p < kl; p++) {
          const b0 = v128.load(b);
          const b1 = v128.load(b, 16);
          let av = v128.load32_splat(a);
          c00 = f32x4.add(c00, f32x4.mul(av, b0));
          c01 = f32x4.add(c01, f32x4.mul(av, b1));
          av = v128.load32_splat(a, 4);
          c10 = f32x4.add(c10, f32x4.mul(av, b0));
          c11 = f32x4.add(c11, f32x4.mul(av, b1));
          av = v128.load32_splat(a, 8);
          c20 = f32x4.add(c20, f32x4.mul(av, b0));
          c21 = f32x4.add(c21, f32x4.mul(av, b1));
          av = v128.load32_splat(a, 12);
          c30 = f32x4.add(c30, f32x4.mul(av, b0));
          c31 = f32x4.add(c31, f32x4.mul(av, b1));
          a += 16;
          b += 32;
        }
        const cp = c + (((ip as usize) << 2) * (ldc as usize) + ((jp as usize) << 3)) * 4;
        v128.store(cp, fin32(c00, cp, va, vb, mode));
        v128.store(cp, fin32(c01, cp + 16, va, vb, mode), 16);
        v128.store(cp + ldcb, fin32(c10, cp + ldcb, va, vb, mode));
        v128.store(cp + ldcb, fin32(c11, cp + ldcb + 16, va, vb, mode), 16);
        v128.store(cp + 2 * ldcb, fin32(c20, cp + 2 * ldcb, va, vb, mode));
        v128.store(cp + 2 * ldcb, fin32(c21, cp + 2 * ldcb + 16, va, vb, mode), 16);
        v128.store(cp + 3 * ldcb, fin32(c30, cp + 3 * ldcb, va, vb, mode));
        v128.store(cp + 3 * ldcb, fin32(c31, cp + 3 * ldcb + 16, va, vb, mode), 16);
      }
    }
  }
}

/** f64: C[4ip0.., 4jp0..] = alpha·A·B + beta·C for panels ip in [ip0, ip1), jp in [jp0, jp1) (MR = NR = 4). */
export function dgemmPanels(
  apack: usize,
  bpack: usize,
  c: usize,
  k: i32,
  ip0: i32,
  ip1: i32,
  jp0: i32,
  jp1: i32,
  ldc: i32,
  kc: i32,
  alpha: f64,
  beta: f64,
): void {
  const kk = k as usize;
  const ldcb = (ldc as usize) << 3;
  const va = f64x2.splat(alpha);
  const vb = f64x2.splat(beta);
  for (let p0 = 0; p0 < k; p0 += kc) {
    const kl = min(kc, k - p0);
    const mode = p0 > 0 ? MODE_ACCUMULATE : beta == 0 ? MODE_SCALE : MODE_SCALE_ADD;
    for (let jp = jp0; jp < jp1; jp++) {
      const bstart = bpack + (((jp as usize) * kk + (p0 as usize)) << 5);
      for (let ip = ip0; ip < ip1; ip++) {
        let a = apack + (((ip as usize) * kk + (p0 as usize)) << 5);
        let b = bstart;
        let c00 = f64x2.splat(0);
        let c01 = f64x2.splat(0);
        let c10 = f64x2.splat(0);
        let c11 = f64x2.splat(0);
        let c20 = f64x2.splat(0);
        let c21 = f64x2.splat(0);
        let c30 = f64x2.splat(0);
        let c31 = f64x2.splat(0);
        for (let p = 0; p < kl; p++) {
          const b0 = v128.load(b);
          const b1 = v128.load(b, 16);
          let av = v128.load64_splat(a);
          c00 = f64x2.add(c00, f64x2.mul(av, b0));
          c01 = f64x2.add(c01, f64x2.mul(av, b1));
          av = v128.load64_splat(a, 8);
          c10 = f64x2.add(c10, f64x2.mul(av, b0));
          c11 = f64x2.add(c11, f64x2.mul(av, b1));
          av = v128.load64_splat(a, 16);
          c20 = f64x2.add(c20, f64x2.mul(av, b0));
          c21 = f64x2.add(c21, f64x2.mul(av, b1));
          av = v128.load64_splat(a, 24);
          c30 = f64x2.add(c30, f64x2.mul(av, b0));
          c31 = f64x2.add(c31, f64x2.mul(av, b1));
          a += 32;
          b += 32;
        }
        const cp = c + (((ip as usize) << 2) * (ldc as usize) + ((jp as usize) << 2)) * 8;
        v128.store(cp, fin64(c00, cp, va, vb, mode));
        v128.store(cp, fin64(c01, cp + 16, va, vb, mode), 16);
        v128.store(cp + ldcb, fin64(c10, cp + ldcb, va, vb, mode));
        v128.store(cp + ldcb, fin64(c11, cp + ldcb + 16, va, vb, mode), 16);
        v128.store(cp + 2 * ldcb, fin64(c20, cp + 2 * ldcb, va, vb, mode));
        v128.store(cp + 2 * ldcb, fin64(c21, cp + 2 * ldcb + 16, va, vb, mode), 16);
        v128.store(cp + 3 * ldcb, fin64(c30, cp + 3 * ldcb, va, vb, mode));
        v128.store(cp + 3 * ldcb, fin64(c31, cp + 3 * ldcb + 16, va, vb, mode), 16);
      }
    }
  }
}

/** 1 when the `bytes` bytes at `p` (a multiple of 16) hold only finite f32 values, else 0. */
export function allFinite32(p: usize, bytes: usize): i32 {
  // x·0 is ±0 for finite x and NaN for NaN/±Inf, so the sum stays zero exactly when all are finite.
  const z = f32x4.splat(0);
  let acc0 = z;
  let acc1 = z;
  const end = p + bytes;
  for (; p + 32 <= end; p += 32) {
    acc0 = f32x4.add(acc0, f32x4.mul(v128.load(p), z));
    acc1 = f32x4.add(acc1, f32x4.mul(v128.load(p, 16), z));
  }
  if (p < end) acc0 = f32x4.add(acc0, f32x4.mul(v128.load(p), z));
  const acc = f32x4.add(acc0, acc1);
  return i32(v128.all_true<i32>(f32x4.eq(acc, z)));
}

/** 1 when the `bytes` bytes at `p` (a multiple of 16) hold only finite f64 values, else 0. */
export function allFinite64(p: usize, bytes: usize): i32 {
  const z = f64x2.splat(0);
  let acc0 = z;
  let acc1 = z;
  const end = p + bytes;
  for (; p + 32 <= end; p += 32) {
    acc0 = f64x2.add(acc0, f64x2.mul(v128.load(p), z));
    acc1 = f64x2.add(acc1, f64x2.mul(v128.load(p, 16), z));
  }
  if (p < end) acc0 = f64x2.add(acc0, f64x2.mul(v128.load(p), z));
  const acc = f64x2.add(acc0, acc1);
  return i32(v128.all_true<i64>(f64x2.eq(acc, z)));
}
