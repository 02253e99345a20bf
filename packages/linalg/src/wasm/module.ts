/**
 * Loading the WebAssembly SIMD kernels embedded in `src/generated/kernels.ts` (built from `asm/`).
 * Compiled modules are cached: they are pure functions of the embedded bytes.
 */
import {
  KERNELS_LOCAL_RELAXED_WASM_BASE64,
  KERNELS_LOCAL_WASM_BASE64,
  KERNELS_SHARED_RELAXED_WASM_BASE64,
  KERNELS_SHARED_WASM_BASE64,
} from '../generated/kernels.js';

/** The functions exported by the kernels module (see `asm/kernels.ts` for the packed layouts). */
export interface KernelExports {
  /** f32 panel GEMM: MR = 4 rows × NR = 8 columns per micro-tile. */
  sgemmPanels(
    apack: number,
    bpack: number,
    c: number,
    k: number,
    ip0: number,
    ip1: number,
    jp0: number,
    jp1: number,
    ldc: number,
    kc: number,
    alpha: number,
    beta: number,
  ): void;
  /**
   * f64 panel GEMM: MR = 4 rows × NR = 4 columns per micro-tile. `bps` / `cps`: strides of B's panels and
   * of C's 4-column blocks in elements (0: packed B, row-major C; see `asm/kernels.ts`).
   */
  dgemmPanels(
    apack: number,
    bpack: number,
    c: number,
    k: number,
    ip0: number,
    ip1: number,
    jp0: number,
    jp1: number,
    ldc: number,
    kc: number,
    alpha: number,
    beta: number,
    bps: number,
    cps: number,
  ): void;
  /**
   * Pack `lines` f32 lines of k contiguous values, `ld` elements apart from `src`, into panels of `w` (4 or 8) lines
   * at `dst` (byte offsets; `lines` a multiple of w): the A/B panel layouts of `asm/kernels.ts`.
   */
  packLines32(src: number, ld: number, lines: number, k: number, w: number, dst: number): void;
  /**
   * Pack f32 lines that are adjacent along rows (row p of k: `lines` values, `ld` elements apart from `src`) into
   * panels of `w` (4 or 8) lines at `dst` (byte offsets; `lines` a multiple of w).
   */
  packRows32(src: number, ld: number, k: number, lines: number, w: number, dst: number): void;
  /**
   * Rows `[i0, i1)` of `p = A·v` for the symmetric f64 matrix at `a` (leading dimension `lda` elements) of
   * which only the lower triangle is read; zeroes `p[0..i1)` first (see `asm/kernels.ts`).
   */
  dsymvLowerRows(a: number, lda: number, i0: number, i1: number, v: number, p: number): void;
  /** Panel column update of the blocked tridiagonalisation (`x` = [V | W], row stride 2·nb). */
  dlatrdColumn(a: number, lda: number, x: number, nb: number, c: number, j: number, n: number): void;
  /** Panel correction of the product A·v in the blocked tridiagonalisation (`u`: 2·nb scratch values). */
  dlatrdCorrect(
    x: number,
    nb: number,
    c: number,
    o: number,
    len: number,
    v: number,
    p: number,
    u: number,
  ): void;
  /**
   * Roots j0..j1−1 of the divide-and-conquer secular equation (`dk`, `z2`: k f64 values; `origin`, `tau`: f64
   * outputs, root j = dk[origin[j]] + tau[j]); see `secularRootsRef` in `tridiag-dc.ts`.
   */
  secularRoots(
    dk: number,
    z2: number,
    k: number,
    rho: number,
    zz: number,
    j0: number,
    j1: number,
    origin: number,
    tau: number,
  ): void;
  /** 1 when `bytes` bytes (a multiple of 16) at `ptr` are finite f32 values, else 0. */
  allFinite32(ptr: number, bytes: number): number;
  /** 1 when `bytes` bytes (a multiple of 16) at `ptr` are finite f64 values, else 0. */
  allFinite64(ptr: number, bytes: number): number;
}

/** Rows per micro-tile (both dtypes). */
export const MR = 4;
/** Columns per micro-tile: 8 for f32 (two f32x4), 4 for f64 (two f64x2). */
export const NR_F32 = 8;
export const NR_F64 = 4;
/** The wasm memory's maximum size in 64 KiB pages (4 GiB, the wasm32 limit). */
export const MAX_PAGES = 65536;

function decodeBase64(b64: string): Uint8Array {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** A compiled kernels module and whether it uses relaxed SIMD (fused multiply-add). */
export interface KernelsModule {
  readonly module: WebAssembly.Module;
  readonly relaxedSimd: boolean;
}

const compiled: { shared?: KernelsModule | null; local?: KernelsModule | null } = {};

/**
 * Whether this realm may use the relaxed-SIMD build: not in Node. Its `relaxed_madd` fuses the multiply-add or not as
 * the engine and the CPU choose, so its last bits depend on the machine: Node 20 runs plain SIMD128 (relaxed SIMD only
 * behind `--experimental-wasm-relaxed-simd`) and Node 22 accepts relaxed SIMD, and a checkpoint compressed by shards
 * on the two was neither run's bytes. In Node every engine runs plain SIMD128, so compression gives the same bytes on
 * every machine; browsers, where nothing is compressed and the relaxed build is measured faster (76 against 43
 * GFLOP/s in Chromium), keep it.
 */
export function relaxedSimdAllowed(): boolean {
  const proc = (globalThis as { process?: { versions?: { node?: string } } }).process;
  return typeof proc?.versions?.node !== 'string';
}

function compile(relaxedB64: string, plainB64: string): KernelsModule | null {
  // (in Node the relaxed build is not even decoded)
  if (relaxedSimdAllowed())
    try {
      const relaxed = decodeBase64(relaxedB64) as BufferSource;
      if (WebAssembly.validate(relaxed))
        return { module: new WebAssembly.Module(relaxed), relaxedSimd: true };
    } catch {
      // fall through to plain SIMD128
    }
  try {
    return { module: new WebAssembly.Module(decodeBase64(plainB64) as BufferSource), relaxedSimd: false };
  } catch {
    return null; // no SIMD128 / no threads in this engine: callers fall back to TypeScript kernels
  }
}

/** True when this realm can create shared wasm memories (Node, or a cross-origin-isolated page). */
export function sharedMemorySupported(): boolean {
  if (typeof SharedArrayBuffer === 'undefined') return false;
  const coi = (globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated;
  return coi !== false;
}

/**
 * The compiled kernels module (cached): the relaxed-SIMD build where the engine accepts it outside Node (see
 * {@link relaxedSimdAllowed}), else plain SIMD128; `null` when WebAssembly SIMD is unavailable.
 * @param shared the variant importing a shared memory (for worker pools)
 */
export function kernelsModule(shared: boolean): KernelsModule | null {
  if (shared) {
    if (compiled.shared === undefined) {
      compiled.shared = compile(KERNELS_SHARED_RELAXED_WASM_BASE64, KERNELS_SHARED_WASM_BASE64);
    }
    return compiled.shared;
  }
  if (compiled.local === undefined) {
    compiled.local = compile(KERNELS_LOCAL_RELAXED_WASM_BASE64, KERNELS_LOCAL_WASM_BASE64);
  }
  return compiled.local;
}
