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

/**
 * f64: C[4ip0.., 4jp0..] = alpha·A·B + beta·C for panels ip in [ip0, ip1), jp in [jp0, jp1) (MR = NR = 4).
 * `bps`: elements from one B panel to the next (0: packed, 4k); `cps`: elements from one 4-column block of C
 * to the next (0: row-major, 4). With ldc = 4 and cps = 4·h, C (and, through bps, B) may be a matrix of
 * height h stored as 4-column panels — the panel layout itself, so that a product can be kept in place.
 */
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
  bps: i32,
  cps: i32,
): void {
  const kk = k as usize;
  const bstride: usize = bps > 0 ? (bps as usize) : kk << 2;
  const cstride: usize = cps > 0 ? (cps as usize) : 4;
  const ldcb = (ldc as usize) << 3;
  const va = f64x2.splat(alpha);
  const vb = f64x2.splat(beta);
  for (let p0 = 0; p0 < k; p0 += kc) {
    const kl = min(kc, k - p0);
    const mode = p0 > 0 ? MODE_ACCUMULATE : beta == 0 ? MODE_SCALE : MODE_SCALE_ADD;
    for (let jp = jp0; jp < jp1; jp++) {
      const bstart = bpack + (((jp as usize) * bstride + ((p0 as usize) << 2)) << 3);
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
        const cp = c + (((ip as usize) << 2) * (ldc as usize) + (jp as usize) * cstride) * 8;
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

/**
 * Pack `lines` f32 lines (rows of op(A) or columns of op(B); `lines` a multiple of `w`), line l holding k contiguous
 * values at src + l·ld·4, into panels of w = 4 or 8 lines at dst: panel q holds, for p = 0..k−1, the w values of lines
 * q·w … q·w+w−1 contiguously at dst + (q·k + p)·w·4 (the layouts above). Groups of 4 lines are transposed 4×4 at a
 * time in registers.
 */
export function packLines32(src: usize, ld: i32, lines: i32, k: i32, w: i32, dst: usize): void {
  const k4 = k & ~3;
  const rowBytes = (<usize>ld) << 2;
  const step = (<usize>w) << 2; // bytes from one k to the next inside a panel
  for (let l: i32 = 0; l < lines; l += 4) {
    const q = l / w;
    const s0 = src + <usize>l * rowBytes;
    const s1 = s0 + rowBytes;
    const s2 = s1 + rowBytes;
    const s3 = s2 + rowBytes;
    const d0 = dst + ((<usize>q * <usize>k * <usize>w + <usize>(l - q * w)) << 2);
    let p: i32 = 0;
    for (; p < k4; p += 4) {
      const o = (<usize>p) << 2;
      const a = v128.load(s0 + o);
      const b = v128.load(s1 + o);
      const c = v128.load(s2 + o);
      const e = v128.load(s3 + o);
      const t0 = v128.shuffle<f32>(a, b, 0, 4, 1, 5); // a0 b0 a1 b1
      const t1 = v128.shuffle<f32>(a, b, 2, 6, 3, 7); // a2 b2 a3 b3
      const t2 = v128.shuffle<f32>(c, e, 0, 4, 1, 5);
      const t3 = v128.shuffle<f32>(c, e, 2, 6, 3, 7);
      const d = d0 + <usize>p * step;
      v128.store(d, v128.shuffle<f32>(t0, t2, 0, 1, 4, 5)); // k = p:   a0 b0 c0 e0
      v128.store(d + step, v128.shuffle<f32>(t0, t2, 2, 3, 6, 7));
      v128.store(d + 2 * step, v128.shuffle<f32>(t1, t3, 0, 1, 4, 5));
      v128.store(d + 3 * step, v128.shuffle<f32>(t1, t3, 2, 3, 6, 7));
    }
    for (; p < k; p++) {
      const o = (<usize>p) << 2;
      const d = d0 + <usize>p * step;
      store<f32>(d, load<f32>(s0 + o));
      store<f32>(d, load<f32>(s1 + o), 4);
      store<f32>(d, load<f32>(s2 + o), 8);
      store<f32>(d, load<f32>(s3 + o), 12);
    }
  }
}

/**
 * Pack f32 lines that are adjacent along each row: row p of k (p = 0..k−1) holds `lines` values (one per line) at
 * src + p·ld·4, `lines` a multiple of w = 4 or 8. Panel q of w lines receives, for each p, the w values of its lines
 * contiguously at dst + (q·k + p)·w·4 (the layouts above): one or two 16-byte copies per k.
 */
export function packRows32(src: usize, ld: i32, k: i32, lines: i32, w: i32, dst: usize): void {
  const rowBytes = (<usize>ld) << 2;
  for (let q: i32 = 0; q < lines / w; q++) {
    let s = src + ((<usize>(q * w)) << 2);
    let d = dst + ((<usize>q * <usize>k * <usize>w) << 2);
    if (w == 8) {
      for (let p: i32 = 0; p < k; p++, s += rowBytes, d += 32) {
        v128.store(d, v128.load(s));
        v128.store(d, v128.load(s, 16), 16);
      }
    } else {
      for (let p: i32 = 0; p < k; p++, s += rowBytes, d += 16) v128.store(d, v128.load(s));
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

function hsum(x: v128): f64 {
  return f64x2.extract_lane(x, 0) + f64x2.extract_lane(x, 1);
}

/**
 * Rows [i0, i1) of the symmetric matrix–vector product `p = A·v`, where only the lower triangle of A is
 * read (row-major, leading dimension `lda` elements, starting at `a`). Every element A[i, q] (q < i) is
 * loaded once and serves both its row (p[i] += A[i, q]·v[q]) and, by symmetry, its column
 * (p[q] += A[i, q]·v[i]). `p[0..i1)` is zeroed first, so with i0 = 0 it receives A·v; several threads may
 * run disjoint row ranges into separate `p` buffers whose sum is A·v (`p[q]` for q ≥ i1 is not written).
 * Four rows per pass share each load and store of v[q..q+1] and p[q..q+1] (f64x2).
 */
export function dsymvLowerRows(a: usize, lda: i32, i0: i32, i1: i32, v: usize, p: usize): void {
  memory.fill(p, 0, (i1 as usize) << 3);
  const ldb = (lda as usize) << 3;
  let i = i0;
  for (; i + 3 < i1; i += 4) {
    const ii = i as usize;
    const r0 = a + ii * ldb;
    const r1 = r0 + ldb;
    const r2 = r1 + ldb;
    const r3 = r2 + ldb;
    const x0 = load<f64>(v + (ii << 3));
    const x1 = load<f64>(v + (ii << 3), 8);
    const x2 = load<f64>(v + (ii << 3), 16);
    const x3 = load<f64>(v + (ii << 3), 24);
    const w0 = f64x2.splat(x0);
    const w1 = f64x2.splat(x1);
    const w2 = f64x2.splat(x2);
    const w3 = f64x2.splat(x3);
    let s0 = f64x2.splat(0);
    let s1 = f64x2.splat(0);
    let s2 = f64x2.splat(0);
    let s3 = f64x2.splat(0);
    const qe = ii << 3;
    let q: usize = 0;
    for (; q + 16 <= qe; q += 16) {
      const e0 = v128.load(r0 + q);
      const e1 = v128.load(r1 + q);
      const e2 = v128.load(r2 + q);
      const e3 = v128.load(r3 + q);
      const vq = v128.load(v + q);
      s0 = f64x2.add(s0, f64x2.mul(e0, vq));
      s1 = f64x2.add(s1, f64x2.mul(e1, vq));
      s2 = f64x2.add(s2, f64x2.mul(e2, vq));
      s3 = f64x2.add(s3, f64x2.mul(e3, vq));
      const lo = f64x2.add(f64x2.mul(e0, w0), f64x2.mul(e1, w1));
      const hi = f64x2.add(f64x2.mul(e2, w2), f64x2.mul(e3, w3));
      v128.store(p + q, f64x2.add(v128.load(p + q), f64x2.add(lo, hi)));
    }
    let t0 = hsum(s0);
    let t1 = hsum(s1);
    let t2 = hsum(s2);
    let t3 = hsum(s3);
    for (; q < qe; q += 8) {
      const e0 = load<f64>(r0 + q);
      const e1 = load<f64>(r1 + q);
      const e2 = load<f64>(r2 + q);
      const e3 = load<f64>(r3 + q);
      const vq = load<f64>(v + q);
      t0 += e0 * vq;
      t1 += e1 * vq;
      t2 += e2 * vq;
      t3 += e3 * vq;
      store<f64>(p + q, load<f64>(p + q) + (e0 * x0 + e1 * x1) + (e2 * x2 + e3 * x3));
    }
    // the 4×4 diagonal block (lower triangle)
    const a00 = load<f64>(r0 + qe);
    const a10 = load<f64>(r1 + qe);
    const a11 = load<f64>(r1 + qe, 8);
    const a20 = load<f64>(r2 + qe);
    const a21 = load<f64>(r2 + qe, 8);
    const a22 = load<f64>(r2 + qe, 16);
    const a30 = load<f64>(r3 + qe);
    const a31 = load<f64>(r3 + qe, 8);
    const a32 = load<f64>(r3 + qe, 16);
    const a33 = load<f64>(r3 + qe, 24);
    store<f64>(p + qe, t0 + a00 * x0 + a10 * x1 + a20 * x2 + a30 * x3);
    store<f64>(p + qe, t1 + a10 * x0 + a11 * x1 + a21 * x2 + a31 * x3, 8);
    store<f64>(p + qe, t2 + a20 * x0 + a21 * x1 + a22 * x2 + a32 * x3, 16);
    store<f64>(p + qe, t3 + a30 * x0 + a31 * x1 + a32 * x2 + a33 * x3, 24);
  }
  for (; i < i1; i++) {
    const ii = i as usize;
    const r0 = a + ii * ldb;
    const x0 = load<f64>(v + (ii << 3));
    const w0 = f64x2.splat(x0);
    let s0 = f64x2.splat(0);
    const qe = ii << 3;
    let q: usize = 0;
    for (; q + 16 <= qe; q += 16) {
      const e0 = v128.load(r0 + q);
      s0 = f64x2.add(s0, f64x2.mul(e0, v128.load(v + q)));
      v128.store(p + q, f64x2.add(v128.load(p + q), f64x2.mul(e0, w0)));
    }
    let t0 = hsum(s0);
    for (; q < qe; q += 8) {
      const e0 = load<f64>(r0 + q);
      t0 += e0 * load<f64>(v + q);
      store<f64>(p + q, load<f64>(p + q) + e0 * x0);
    }
    store<f64>(p + qe, t0 + load<f64>(r0 + qe) * x0);
  }
}

// Panel kernels of the blocked tridiagonalisation (LAPACK dlatrd scheme). The panel's reflectors V and
// their updates W are kept side by side, `x` = [V | W] row-major with row stride 2·nb (V in columns
// 0..nb−1, W in nb..2nb−1); `c` columns of each are in use.

/** Σ_{q<c} (f[q]·g[q]) for f64 rows at f and g. */
function dotRow(f: usize, g: usize, c: i32): f64 {
  const cb = (c as usize) << 3;
  let s0 = f64x2.splat(0);
  let s1 = f64x2.splat(0);
  let q: usize = 0;
  for (; q + 32 <= cb; q += 32) {
    s0 = f64x2.add(s0, f64x2.mul(v128.load(f + q), v128.load(g + q)));
    s1 = f64x2.add(s1, f64x2.mul(v128.load(f + q, 16), v128.load(g + q, 16)));
  }
  for (; q + 16 <= cb; q += 16) s0 = f64x2.add(s0, f64x2.mul(v128.load(f + q), v128.load(g + q)));
  let t = hsum(f64x2.add(s0, s1));
  if (q < cb) t += load<f64>(f + q) * load<f64>(g + q);
  return t;
}

/**
 * Bring column j of A (rows j..n−1, leading dimension lda) up to date with the panel's first c reflectors:
 * A[i, j] −= Σ_{q<c} V[i, q]·W[j, q] + W[i, q]·V[j, q].
 */
export function dlatrdColumn(a: usize, lda: i32, x: usize, nb: i32, c: i32, j: i32, n: i32): void {
  const ldx = (nb as usize) << 4;
  const half = (nb as usize) << 3;
  const xj = x + (j as usize) * ldx;
  const ldab = (lda as usize) << 3;
  let ap = a + (j as usize) * ldab + ((j as usize) << 3);
  let xi = xj;
  for (let i = j; i < n; i++) {
    const s = dotRow(xi, xj + half, c) + dotRow(xi + half, xj, c);
    store<f64>(ap, load<f64>(ap) - s);
    ap += ldab;
    xi += ldx;
  }
}

/**
 * p[i] −= V[o+i, :c]·(Wᵀv) + W[o+i, :c]·(Vᵀv) for i < len, with the sums over rows o.. of the panel:
 * the correction of the not-yet-updated trailing matrix's product A·v. `u` is scratch for 2·nb values.
 */
export function dlatrdCorrect(
  x: usize,
  nb: i32,
  c: i32,
  o: i32,
  len: i32,
  v: usize,
  p: usize,
  u: usize,
): void {
  const ldx = (nb as usize) << 4;
  const half = (nb as usize) << 3;
  const cb = (c as usize) << 3;
  memory.fill(u, 0, ldx);
  const x0 = x + (o as usize) * ldx;
  // u[q] = Σ_i X[o+i, q]·v[i] over both halves (columns c..nb−1 of each are left out)
  let xi = x0;
  for (let i = 0; i < len; i++) {
    const vi = f64x2.splat(load<f64>(v + ((i as usize) << 3)));
    let q: usize = 0;
    for (; q + 16 <= cb; q += 16) {
      v128.store(u + q, f64x2.add(v128.load(u + q), f64x2.mul(v128.load(xi + q), vi)));
      v128.store(u + half + q, f64x2.add(v128.load(u + half + q), f64x2.mul(v128.load(xi + half + q), vi)));
    }
    if (q < cb) {
      const s = f64x2.extract_lane(vi, 0);
      store<f64>(u + q, load<f64>(u + q) + load<f64>(xi + q) * s);
      store<f64>(u + half + q, load<f64>(u + half + q) + load<f64>(xi + half + q) * s);
    }
    xi += ldx;
  }
  xi = x0;
  for (let i = 0; i < len; i++) {
    const pp = p + ((i as usize) << 3);
    store<f64>(pp, load<f64>(pp) - dotRow(xi, u + half, c) - dotRow(xi + half, u, c));
    xi += ldx;
  }
}

// Secular equation of the divide-and-conquer eigensolver: 1 + ρ·Σ z2[q]/(dk[q] − λ) = 0, dk ascending, z2 > 0,
// ρ > 0. Mirrors `secularRootsRef` in src/tridiag-dc.ts (the same iteration with f64x2 sums).

const SEC_EPS: f64 = 1.1102230246251565e-16; // 2⁻⁵³

/** Σ_{q ∈ [q0, q1)} z2[q]/(dk[q] − d0 − t) and its derivative in t, as the lanes [s, ds]. */
function secularSums(dk: usize, z2: usize, q0: i32, q1: i32, d0: f64, t: f64): v128 {
  const shift = f64x2.splat(d0); // (dk − d0) − t, in the order of the scalar reference
  const tv = f64x2.splat(t);
  let s = f64x2.splat(0);
  let ds = f64x2.splat(0);
  let q = q0;
  for (; q + 1 < q1; q += 2) {
    const off = (q as usize) << 3;
    const inv = f64x2.div(f64x2.splat(1), f64x2.sub(f64x2.sub(v128.load(dk + off), shift), tv));
    const w = f64x2.mul(v128.load(z2 + off), inv);
    s = f64x2.add(s, w);
    ds = f64x2.add(ds, f64x2.mul(w, inv));
  }
  let ss = hsum(s);
  let dss = hsum(ds);
  if (q < q1) {
    const off = (q as usize) << 3;
    const inv = 1 / (load<f64>(dk + off) - d0 - t);
    const w = load<f64>(z2 + off) * inv;
    ss += w;
    dss += w * inv;
  }
  return f64x2.replace_lane(f64x2.splat(ss), 1, dss);
}

/**
 * Roots j0..j1−1 of the secular equation (K = k poles): root j = dk[origin[j]] + tau[j] (origin stored as
 * f64). Bracketing, the two-pole rational model step ("middle way") and the stopping rules are those of
 * `secularRootsRef`.
 */
export function secularRoots(
  dk: usize,
  z2: usize,
  k: i32,
  rho: f64,
  zz: f64,
  j0: i32,
  j1: i32,
  origin: usize,
  tau: usize,
): void {
  for (let j = j0; j < j1; j++) {
    let o = j;
    let lo: f64 = 0;
    let hi: f64 = 0;
    const dj = load<f64>(dk + ((j as usize) << 3));
    if (j < k - 1) {
      const gap = load<f64>(dk + ((j as usize) << 3), 8) - dj;
      const f0 = 1 + rho * f64x2.extract_lane(secularSums(dk, z2, 0, k, dj, gap / 2), 0);
      if (f0 >= 0) {
        hi = gap / 2;
      } else {
        o = j + 1;
        lo = -gap / 2;
      }
    } else {
      hi = rho * zz;
      while (1 + rho * f64x2.extract_lane(secularSums(dk, z2, 0, k, dj, hi), 0) < 0) hi *= 2;
    }
    const d0 = load<f64>(dk + ((o as usize) << 3));
    const dl = dj - d0;
    const dr = j < k - 1 ? load<f64>(dk + ((j as usize) << 3), 8) - d0 : Infinity;
    let t = 0.5 * (lo + hi);
    for (let it = 0; it < 200; it++) {
      const a = secularSums(dk, z2, 0, j + 1, d0, t);
      const b = secularSums(dk, z2, j + 1, k, d0, t);
      const psi = f64x2.extract_lane(a, 0);
      const dpsi = f64x2.extract_lane(a, 1);
      const phi = f64x2.extract_lane(b, 0);
      const dphi = f64x2.extract_lane(b, 1);
      const fm = 1 + rho * (psi + phi);
      if (Math.abs(fm) <= 8 * SEC_EPS * (1 + rho * (phi - psi))) {
        lo = t;
        hi = t;
        break;
      }
      if (fm > 0) hi = t;
      else lo = t;
      const width = hi - lo;
      if (width <= 4 * SEC_EPS * Math.max(Math.abs(lo), Math.abs(hi)) || !(width > 0)) break;
      const e1 = dl - t;
      const bl = rho * dpsi * e1 * e1;
      let next: f64 = NaN;
      if (j == k - 1) {
        const c = fm - bl / e1;
        if (c > 0) next = dl + bl / c;
      } else {
        const e2 = dr - t;
        const br = rho * dphi * e2 * e2;
        const c = fm - bl / e1 - br / e2;
        const qa = c * (e1 + e2) + bl + br;
        const pr = e1 * e2 * fm;
        const disc = Math.sqrt(Math.max(0, qa * qa - 4 * c * pr));
        const h = 0.5 * (qa + (qa >= 0 ? disc : -disc));
        const eta1 = h != 0 ? pr / h : NaN;
        const eta2 = c != 0 ? h / c : NaN;
        next = t + eta1 > lo && t + eta1 < hi ? t + eta1 : t + eta2;
      }
      if (!(next > lo && next < hi)) next = 0.5 * (lo + hi);
      if (next == t) break;
      const step = Math.abs(next - t);
      t = next;
      if (step <= 2 * SEC_EPS * Math.abs(t)) break;
    }
    if (t < lo || t > hi) t = 0.5 * (lo + hi);
    if (t == 0) t = o == j ? hi : lo;
    store<f64>(origin + ((j as usize) << 3), o as f64);
    store<f64>(tau + ((j as usize) << 3), t);
  }
}
