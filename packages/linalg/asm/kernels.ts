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
// Each kernel computes C[rows of panels ip0..ip1-1, columns of panels jp0..jp1-1] = A·B over the whole K
// (overwriting C), blocking K by kc so that one B micro-panel (kc x NR) stays in L1 while the A panels
// of the row block stream from L2.

/** f32: C[4ip0.., 8jp0..] = A·B for panels ip in [ip0, ip1), jp in [jp0, jp1). */
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
): void {
  const kk = k as usize;
  const ldcb = (ldc as usize) << 2;
  for (let p0 = 0; p0 < k; p0 += kc) {
    const kl = min(kc, k - p0);
    const first = p0 == 0;
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
        let cp = c + (((ip as usize) << 2) * (ldc as usize) + ((jp as usize) << 3)) * 4;
        if (!first) {
          c00 = f32x4.add(c00, v128.load(cp));
          c01 = f32x4.add(c01, v128.load(cp, 16));
          c10 = f32x4.add(c10, v128.load(cp + ldcb));
          c11 = f32x4.add(c11, v128.load(cp + ldcb, 16));
          c20 = f32x4.add(c20, v128.load(cp + 2 * ldcb));
          c21 = f32x4.add(c21, v128.load(cp + 2 * ldcb, 16));
          c30 = f32x4.add(c30, v128.load(cp + 3 * ldcb));
          c31 = f32x4.add(c31, v128.load(cp + 3 * ldcb, 16));
        }
        v128.store(cp, c00);
        v128.store(cp, c01, 16);
        cp += ldcb;
        v128.store(cp, c10);
        v128.store(cp, c11, 16);
        cp += ldcb;
        v128.store(cp, c20);
        v128.store(cp, c21, 16);
        cp += ldcb;
        v128.store(cp, c30);
        v128.store(cp, c31, 16);
      }
    }
  }
}

/** f64: C[4ip0.., 4jp0..] = A·B for panels ip in [ip0, ip1), jp in [jp0, jp1) (MR = NR = 4). */
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
): void {
  const kk = k as usize;
  const ldcb = (ldc as usize) << 3;
  for (let p0 = 0; p0 < k; p0 += kc) {
    const kl = min(kc, k - p0);
    const first = p0 == 0;
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
        let cp = c + (((ip as usize) << 2) * (ldc as usize) + ((jp as usize) << 2)) * 8;
        if (!first) {
          c00 = f64x2.add(c00, v128.load(cp));
          c01 = f64x2.add(c01, v128.load(cp, 16));
          c10 = f64x2.add(c10, v128.load(cp + ldcb));
          c11 = f64x2.add(c11, v128.load(cp + ldcb, 16));
          c20 = f64x2.add(c20, v128.load(cp + 2 * ldcb));
          c21 = f64x2.add(c21, v128.load(cp + 2 * ldcb, 16));
          c30 = f64x2.add(c30, v128.load(cp + 3 * ldcb));
          c31 = f64x2.add(c31, v128.load(cp + 3 * ldcb, 16));
        }
        v128.store(cp, c00);
        v128.store(cp, c01, 16);
        cp += ldcb;
        v128.store(cp, c10);
        v128.store(cp, c11, 16);
        cp += ldcb;
        v128.store(cp, c20);
        v128.store(cp, c21, 16);
        cp += ldcb;
        v128.store(cp, c30);
        v128.store(cp, c31, 16);
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
