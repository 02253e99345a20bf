import {
  assertBooleanOptions,
  assertCallbacks,
  assertNotAbortSignal,
  assertFinite,
  cast,
  CalderaError,
  isCalderaError,
  isContiguous,
  throwIfAborted,
  toF32,
  type Matrix,
  type Tensor,
} from '@caldera/core';
import {
  assertMatrix,
  blockLDL,
  blockLDLFromCholesky,
  choleskyWithInfo,
  gemmInto,
  type BlockLDL,
  type Pool,
} from '@caldera/linalg';
import { allocPlanes, e8pRounder, type CodePlane, type GroupRounder } from './rounder.js';

/** Options of {@link ldlq}. */
export interface LdlqOptions {
  /**
   * Codebook rounding groups of `dim` consecutive columns (any {@link GroupRounder}: `e8pRounder()`,
   * `rvqRounder(3 | 4)`, or a scalar rounder with `dim = 1`). `dim` must divide n. Default: E8P12 (2 bits, dim 8).
   */
  quantizer?: GroupRounder;
  /**
   * Block-coordinate refinement passes after LDLQ (QuIP#'s `quip_tune_iters`; each costs about 2·m·n² flops, as
   * much as LDLQ itself); an integer ≥ 0 (else `E_VALUE`). Default 0.
   */
  tuneIters?: number;
  /** Columns per buffer: feedback from columns right of a buffer is one gemm. Multiple of `dim`. Default 128. */
  bufferCols?: number;
  /**
   * Damping σ: `σ·mean(diag H)·I` is added to H before factoring (QuIP#'s `sigma_reg`, brief §1.1). Default
   * `0.01`. Pass `0` when H is already damped (e.g. a Hessian from `@caldera/calibrate`, which adds 1 % itself).
   * A still-singular H (zero columns of X with `damping: 0`) is repaired with a diagonal jitter and `repaired` is
   * set: the jitter starts at 1e-6·mean|diag H| and grows 10× per failed try (at most 12 tries), so an indefinite
   * H is "repaired" too, by a large jitter — check `repaired`. Not allowed with a prepared H (`E_VALUE`): its
   * damping is the one given to {@link prepareLdlq}.
   */
  damping?: number;
  /** Worker pool from `@caldera/linalg`'s `createPool` for the gemm parts. Default: single-threaded. */
  pool?: Pool;
  /** Abort during the block LDL of H (`blockLDL`'s checks) and between buffers (`E_ABORTED`). */
  signal?: AbortSignal;
  /** Called after each buffer with the fraction of LDLQ (and tuning) work done. */
  onProgress?: (fraction: number) => void;
  /**
   * Compute {@link LdlqResult.proxyLoss} (default true). Its denominator `tr(WHWᵀ)` is a product `W·L` as large as
   * LDLQ's own feedback products; `false` skips it (the result's `proxyLoss` is then `NaN`).
   */
  proxyLoss?: boolean;
  /**
   * An f32 tensor `[m, n]`, contiguous and row-major (`E_DTYPE`, `E_SHAPE`, `E_VALUE` otherwise), that receives
   * `(W − Ŵ)·M`, where `M = L·chol(D)` is the lower Cholesky factor of the H that was factored (damped, and with the
   * jitter when `repaired`; `H = M·Mᵀ`): the error weighted by a square root of H, so its squared norm is the proxy
   * loss's numerator `tr((W − Ŵ)H(W − Ŵ)ᵀ)`. About m·n·g/2 multiply-adds, where the product costs m·n²/2: LDLQ's
   * rounding residuals r_k are `((W − Ŵ)·L)_k`, and `(W − Ŵ)·M` is `r_k·chol(D_k)` block by block. Only for LDLQ
   * alone (`tuneIters: 0`, else `E_VALUE`: the passes change Ŵ after the residuals are known). It must not share
   * memory with W or `wHatInto` (`E_VALUE`).
   */
  weightedErrorInto?: Tensor<'f32'>;
  /**
   * An f32 tensor `[m, n]`, contiguous and row-major (`E_DTYPE`, `E_SHAPE`, `E_VALUE` otherwise), that receives Ŵ:
   * the result's `wHat` is then a view of it. Saves the m × n array LDLQ otherwise allocates. It must not share
   * memory with W or `weightedErrorInto` (`E_VALUE`).
   */
  wHatInto?: Tensor<'f32'>;
  /**
   * Use W's own storage as LDLQ's working array for the rounding error: afterwards it holds `W − Ŵ` (each entry the
   * f32 difference; `tuneIters` passes update it in place, so after them up to round-off; after an error or an abort,
   * something in between). Saves an m × n array. W must then be a contiguous, row-major f32 tensor (`E_VALUE`
   * otherwise). Default false.
   */
  overwriteW?: boolean;
}

/** Result of {@link ldlq}. */
export interface LdlqResult {
  /** Codes, one plane per stage, each `[m, n/dim]` row-major (code j of row i covers columns dim·j..dim·j+dim−1). */
  codes: CodePlane[];
  /** The quantized matrix Ŵ (f32, m × n): a view of {@link LdlqOptions.wHatInto} when that is given. */
  wHat: Tensor<'f32'>;
  /** True when H was singular and a small diagonal jitter had to be added to factor it. */
  repaired: boolean;
  /**
   * Relative proxy loss `tr((Ŵ − W)H(Ŵ − W)ᵀ) / tr(WHWᵀ)` against the damped H that was factored (with the
   * jitter when `repaired`; the tuning passes minimise the same H). After LDLQ
   * alone the numerator is free (`Σ_k tr(r_k D_k r_kᵀ)`); the denominator and the loss after tuning cost one
   * triangular product each. `NaN` with `proxyLoss: false`.
   */
  proxyLoss: number;
}

/** Options of {@link prepareLdlq}. */
export interface PrepareLdlqOptions {
  /** The codebook dimension g the factor is blocked by (`GroupRounder.dim`; g must divide n). Default 8 (E8P12). */
  dim?: number;
  /**
   * Damping σ, as {@link LdlqOptions.damping} (default 0.01): `σ·mean(diag H)·I` is added to H before factoring.
   * Required with `cholesky` (`E_VALUE` without it): the damping that factor already includes.
   */
  damping?: number;
  /**
   * The lower-triangular Cholesky factor of H after damping (f64, contiguous), when you have one: the block LDL is
   * then derived from it in O(n²·g) instead of factoring H. It is trusted to be that factor (shape and diagonal are
   * checked, the product is not); `repaired` is then false.
   */
  cholesky?: Tensor<'f64'>;
  /**
   * Keep the damped H (f64, n × n) in the result: LDLQ's `tuneIters` passes need it. When `repaired`, it includes
   * the jitter: it is the H that was factored. Default false.
   */
  keepHessian?: boolean;
  /** Worker pool for the Cholesky factorisation. */
  pool?: Pool;
  /** Abort inside the factorisation (`E_ABORTED`). */
  signal?: AbortSignal;
}

/**
 * H prepared for {@link ldlq}: its block LDL factor, with L in f32 as LDLQ's feedback products use it. Pass it to
 * `ldlq` in place of H to quantize several matrices against the same H (one factorisation, and no per-call copies).
 */
export interface LdlqHessian {
  readonly kind: 'ldlq-hessian';
  /** Size of H. */
  readonly n: number;
  /** Block size: the codebook dimension it serves. */
  readonly dim: number;
  /** Unit block-lower-triangular factor, n × n row-major. */
  readonly L: Float32Array;
  /** Diagonal blocks `[n/dim, dim, dim]` (f64). */
  readonly D: Float64Array;
  /** True when H was singular and a diagonal jitter had to be added to factor it. */
  readonly repaired: boolean;
  /** The damped H that was factored (n × n, f64; with the jitter when `repaired`) with `keepHessian`, else null. */
  readonly hessian: Float64Array | null;
}

/**
 * Factor H once for {@link ldlq}: damping, the symmetry and finiteness checks, and the block LDL (or, with
 * `options.cholesky`, its O(n²·g) derivation from a Cholesky factor you already have).
 */
export function prepareLdlq(h: Matrix, options: PrepareLdlqOptions = {}): LdlqHessian {
  return prepare(h, options ?? {}, 'prepareLdlq'); // from JavaScript: null options are none
}

/** {@link prepareLdlq}, naming `what` in its errors. */
function prepare(h: Matrix, options: PrepareLdlqOptions, what: string): LdlqHessian {
  assertMatrix(h, what, 'H');
  const n = h.shape[0]!;
  if (h.shape.length !== 2 || h.shape[1] !== n)
    throw new CalderaError('E_SHAPE', `${what}: H must be square, got [${h.shape.join(', ')}]`);
  const g = options.dim ?? 8;
  if (!Number.isInteger(g) || g <= 0 || n % g !== 0)
    throw new CalderaError('E_SHAPE', `${what}: n = ${n} is not a multiple of the codebook dimension ${g}`);
  const c = options.cholesky;
  if (c && (c.shape.length !== 2 || c.shape[0] !== n || c.shape[1] !== n))
    throw new CalderaError(
      'E_SHAPE',
      `${what}: cholesky has shape [${c.shape.join(', ')}], expected [${n}, ${n}] for H`,
    );
  if (c && options.damping === undefined)
    throw new CalderaError(
      'E_VALUE',
      `${what}: with cholesky, pass damping: the damping that factor includes (0 when it is H's own factor)`,
    );
  throwIfAborted(options.signal, what);
  const damping = options.damping ?? 0.01;
  const keep = options.keepHessian ?? false;
  if (c) {
    // H is only checked (in place when it is a contiguous f64 matrix) unless it is kept
    const inPlace = !keep && h.dtype === 'f64' && h.offset === 0 && h.strides[0] === n && h.strides[1] === 1;
    if (inPlace) {
      assertFiniteSymmetric((h.data as Float64Array).subarray(0, n * n), n, `${what}: H [${n}, ${n}]`);
      checkDamping(damping, what);
    }
    const hessian = inPlace ? null : dampedCopy(h, damping, what);
    const signal = options.signal ? { signal: options.signal } : {};
    const ldl = blockLDLFromCholesky(c, g, { dtype: 'f32', ...signal });
    return ldlqHessian(n, g, ldl.L.data, ldl.D.data, false, keep ? hessian : null);
  }
  const hd = dampedCopy(h, damping, what);
  const { ldl, repaired } = factorDamped(hd, n, g, options.pool, options.signal);
  return ldlqHessian(n, g, Float32Array.from(ldl.L.data), ldl.D.data, repaired, keep ? hd : null);
}

function ldlqHessian(
  n: number,
  dim: number,
  L: Float32Array,
  D: Float64Array,
  repaired: boolean,
  hessian: Float64Array | null,
): LdlqHessian {
  return { kind: 'ldlq-hessian', n, dim, L, D, repaired, hessian };
}

function isLdlqHessian(h: unknown): h is LdlqHessian {
  return typeof h === 'object' && h !== null && (h as { kind?: unknown }).kind === 'ldlq-hessian';
}

/**
 * LDLQ (QuIP#/OPTQ adaptive rounding): quantize `W (m × n)` group by group from the last column block to the first,
 * feeding back the rounding error through the block-LDL factor of `H (n × n)`, so that `tr((Ŵ − W)H(Ŵ − W)ᵀ)` is
 * `Σ_k tr(r_k D_k r_kᵀ)` (brief §3.3). Buffered: the feedback from columns right of each buffer is a single gemm.
 * With `H = I` it equals round-to-nearest exactly. The caller chooses the scale of W (codebooks are unscaled).
 * `h` is H itself, factored on every call, or an {@link LdlqHessian} from {@link prepareLdlq} (then `damping` is the
 * one given there, and the option here must be left out, else `E_VALUE`).
 */
export function ldlq(w: Matrix, h: Matrix | LdlqHessian, options: LdlqOptions = {}): LdlqResult {
  options ??= {}; // from JavaScript: null options are none
  assertNotAbortSignal(options, 'ldlq'); // ldlq(W, H, signal): refused, not ignored
  assertCallbacks(options, 'ldlq', ['onProgress']);
  assertBooleanOptions(options, 'ldlq', ['proxyLoss', 'overwriteW']);
  const rounder = options.quantizer ?? e8pRounder();
  const g = rounder.dim;
  assertMatrix(w, 'ldlq', 'W');
  const prepared = isLdlqHessian(h);
  if (!prepared) assertMatrix(h, 'ldlq', 'H');
  const [m, n] = w.shape as [number, number];
  const hn = prepared ? [h.n, h.n] : h.shape;
  if (hn.length !== 2 || hn[0] !== n || hn[1] !== n) {
    throw new CalderaError(
      'E_SHAPE',
      `ldlq: H has shape [${hn.join(', ')}], expected [${n}, ${n}] for W [${m}, ${n}]`,
    );
  }
  if (n % g !== 0)
    throw new CalderaError('E_SHAPE', `ldlq: n = ${n} is not a multiple of the codebook dimension ${g}`);
  if (prepared && !(Number.isInteger(h.n) && h.L.length === h.n * h.n && h.D.length === h.n * h.dim))
    throw new CalderaError(
      'E_VALUE',
      `ldlq: the prepared H is malformed (n ${h.n}, dim ${h.dim}, L of ${h.L.length}, D of ${h.D.length})`,
    );
  if (prepared && h.dim !== g)
    throw new CalderaError(
      'E_VALUE',
      `ldlq: the prepared H is blocked by ${h.dim}, the quantizer's dimension is ${g} (prepareLdlq's dim)`,
    );
  if (prepared && options.damping !== undefined)
    throw new CalderaError(
      'E_VALUE',
      'ldlq: damping belongs to prepareLdlq when H is prepared; leave it out here',
    );
  const tune = options.tuneIters ?? 0;
  if (!Number.isSafeInteger(tune) || tune < 0)
    throw new CalderaError('E_VALUE', `ldlq: tuneIters must be an integer ≥ 0, got ${tune}`);
  if (prepared && tune > 0 && !h.hessian)
    throw new CalderaError('E_VALUE', 'ldlq: tuneIters needs H: prepare it with keepHessian: true');
  const weighted = options.weightedErrorInto;
  if (weighted !== undefined) {
    checkOutput(weighted, 'weightedErrorInto', m, n);
    if (tune > 0)
      throw new CalderaError(
        'E_VALUE',
        `ldlq: weightedErrorInto comes from LDLQ's residuals, which tuneIters (${tune}) passes would make stale`,
      );
  }
  const wHatInto = options.wHatInto;
  if (wHatInto !== undefined) checkOutput(wHatInto, 'wHatInto', m, n);
  const overwrite = options.overwriteW ?? false;
  if (overwrite && !(w.dtype === 'f32' && w.data instanceof Float32Array && isPlain(w)))
    throw new CalderaError(
      'E_VALUE',
      `ldlq: overwriteW needs W as a contiguous, row-major f32 tensor (got ${w.dtype}, strides [${w.strides.join(', ')}], offset ${w.offset})`,
    );
  checkDisjoint(w.data, [
    ['weightedErrorInto', weighted?.data],
    ['wHatInto', wHatInto?.data],
  ]);
  const B = options.bufferCols ?? 128;
  if (!Number.isInteger(B) || B <= 0 || B % g !== 0)
    throw new CalderaError('E_VALUE', `ldlq: bufferCols ${B} must be a positive multiple of ${g}`);
  const W = overwrite ? (w.data as Float32Array).subarray(0, m * n) : toF32(w).data;
  for (let i = 0; i < W.length; i++) {
    if (!Number.isFinite(W[i]!))
      throw new CalderaError('E_VALUE', `ldlq: W has a non-finite value at (${Math.floor(i / n)}, ${i % n})`);
  }
  throwIfAborted(options.signal, 'ldlq'); // an abort before any work names the call, not its first step
  const factor = prepared
    ? h
    : prepare(
        h,
        {
          dim: g,
          damping: options.damping ?? 0.01,
          keepHessian: tune > 0,
          ...(options.pool ? { pool: options.pool } : {}),
          ...(options.signal ? { signal: options.signal } : {}),
        },
        'ldlq',
      );
  const { L, repaired } = factor;
  const hd = factor.hessian;
  // W − Ŵ of the columns done so far (the feedback products read only those; W's own columns are read before theirs
  // are written, so the two may share storage)
  const E = overwrite ? W : new Float32Array(m * n);
  const What = wHatInto ? (wHatInto.data as Float32Array) : new Float32Array(m * n);
  const groupsPerRow = n / g;
  const planes = allocPlanes(rounder, m * groupsPerRow);
  const totalWork = 1 + tune;
  const x = new Float32Array(m * g);
  const vals = new Float32Array(m * g);
  const F = new Float32Array(m * B);
  // The buffer's own columns of W, E, Ŵ and Y, contiguous (m × bw): a group's columns in the m × n arrays lie a row
  // (n floats) apart, one memory page per row at n ≥ 1024, and those stores and loads cost more than the arithmetic
  // inside the buffer; each buffer is copied in and out in rows instead.
  const Wb = new Float32Array(m * B);
  const Eb = new Float32Array(m * B);
  const Whb = new Float32Array(m * B);
  const Lb = new Float32Array(B * B); // L[s:e, s:e], contiguous
  const sub = Math.max(g, Math.floor(Math.min(32, B) / g) * g); // sub-buffer width (JS feedback inside it)
  const D = factor.D;
  const pool = options.pool ? { pool: options.pool } : {};
  const measure = options.proxyLoss ?? true;
  const Y = weighted?.data as Float32Array | undefined; // (W − Ŵ)·M, written buffer by buffer
  const Yb = Y ? new Float32Array(m * B) : null;
  const den = measure ? traceWHWt(W, L, D, m, n, g, B, options.pool) : NaN;
  let num = 0;

  const bufferStarts: number[] = [];
  for (let s = 0; s < n; s += B) bufferStarts.push(s);
  bufferStarts.reverse();
  for (const s of bufferStarts) {
    throwIfAborted(options.signal, 'ldlq');
    const e = Math.min(n, s + B);
    const bw = e - s;
    // F = W[:, s:e] + E[:, e:n]·L[e:n, s:e]  (the bulk of the work: one gemm per buffer)
    for (let r = 0; r < m; r++) F.set(W.subarray(r * n + s, r * n + e), r * bw);
    Wb.set(F.subarray(0, m * bw));
    if (e < n) {
      const fView: Tensor<'f32'> = { dtype: 'f32', shape: [m, bw], strides: [bw, 1], offset: 0, data: F };
      const eView: Tensor<'f32'> = { dtype: 'f32', shape: [m, n - e], strides: [n, 1], offset: e, data: E };
      const lView: Tensor<'f32'> = {
        dtype: 'f32',
        shape: [n - e, bw],
        strides: [n, 1],
        offset: e * n + s,
        data: L,
      };
      gemmInto(fView, eView, lView, { alpha: 1, beta: 1, checkFinite: false, ...pool });
    }
    for (let j = 0; j < bw; j++) Lb.set(L.subarray((s + j) * n + s, (s + j) * n + e), j * bw);
    let subEnd = e; // the buffer is processed in sub-buffers of SUB columns, right to left
    for (let c = e - g; c >= s; c -= g) {
      const cl = c - s;
      if ((e - c - g) % sub === 0 && c + g < e) {
        // entering sub-buffer [s2, c+g): its feedback from the sub-buffers to its right in one small gemm
        subEnd = c + g;
        const s2 = Math.max(s, subEnd - sub);
        const fv: Tensor<'f32'> = {
          dtype: 'f32',
          shape: [m, subEnd - s2],
          strides: [bw, 1],
          offset: s2 - s,
          data: F,
        };
        const ev: Tensor<'f32'> = {
          dtype: 'f32',
          shape: [m, e - subEnd],
          strides: [bw, 1],
          offset: subEnd - s,
          data: Eb,
        };
        const lv: Tensor<'f32'> = {
          dtype: 'f32',
          shape: [e - subEnd, subEnd - s2],
          strides: [bw, 1],
          offset: (subEnd - s) * bw + (s2 - s),
          data: Lb,
        };
        gemmInto(fv, ev, lv, { alpha: 1, beta: 1, checkFinite: false });
      }
      const jEnd = subEnd - s;
      // x = F[:, c:c+g] + E[:, c+g:subEnd]·L[c+g:subEnd, c:c+g]  (feedback from this sub-buffer's finished blocks)
      if (g === 8) feedback8(x, F, Eb, Lb, m, bw, cl, jEnd);
      else {
        for (let r = 0; r < m; r++) {
          const xr = r * g;
          for (let t = 0; t < g; t++) x[xr + t] = F[r * bw + cl + t]!;
          const er = r * bw;
          for (let j = cl + g; j < jEnd; j++) {
            const ev = Eb[er + j]!;
            const lj = j * bw + cl;
            for (let t = 0; t < g; t++) x[xr + t]! += ev * Lb[lj + t]!;
          }
        }
      }
      rounder.round(x, m, vals, planes, c / g, groupsPerRow);
      const dk = (c / g) * g * g;
      if (Yb) weightResiduals(Yb, x, vals, choleskyOfBlock(D, dk, g), m, bw, cl, g);
      for (let r = 0; r < m; r++) {
        const b = r * bw + cl;
        for (let t = 0; t < g; t++) {
          const v = vals[r * g + t]!;
          Whb[b + t] = v;
          Eb[b + t] = Wb[b + t]! - v;
        }
      }
      // tr(r_k D_k r_kᵀ): the exact contribution of block k to the proxy loss, where it is asked for
      if (measure)
        for (let r = 0; r < m; r++)
          for (let t = 0; t < g; t++) {
            const rt = x[r * g + t]! - vals[r * g + t]!;
            let acc = 0;
            for (let u = 0; u < g; u++) acc += D[dk + t * g + u]! * (x[r * g + u]! - vals[r * g + u]!);
            num += rt * acc;
          }
    }
    for (let r = 0; r < m; r++) {
      const from = r * bw;
      E.set(Eb.subarray(from, from + bw), r * n + s);
      What.set(Whb.subarray(from, from + bw), r * n + s);
      if (Y) Y.set(Yb!.subarray(from, from + bw), r * n + s);
    }
    options.onProgress?.((n - s) / n / totalWork);
  }
  for (let it = 0; it < tune; it++) {
    num = tunePass(What, E, hd!, n, m, rounder, planes, B, options);
    options.onProgress?.((2 + it) / totalWork);
  }
  const proxyLoss = !measure ? NaN : den > 0 ? num / den : 0;
  return {
    codes: planes,
    wHat: { dtype: 'f32', shape: [m, n], strides: [n, 1], offset: 0, data: What },
    repaired,
    proxyLoss,
  };
}

/**
 * `E_VALUE` naming `what` unless the `n × n` row-major `h` is finite and symmetric up to f32 round-off: each pair
 * `h[i][j]`, `h[j][i]` within `1e-5 · max |h[i][i]|` (the tolerance LDLQ, which factors only one triangle, accepts).
 */
export function assertFiniteSymmetric(h: Float64Array, n: number, what: string): void {
  if (h.length !== n * n)
    throw new CalderaError('E_SHAPE', `${what} has ${h.length} entries, expected ${n}×${n} = ${n * n}`);
  for (let i = 0; i < h.length; i++) {
    if (!Number.isFinite(h[i]!))
      throw new CalderaError('E_VALUE', `${what} has a non-finite value at (${Math.floor(i / n)}, ${i % n})`);
  }
  let dmax = 0;
  for (let i = 0; i < n; i++) dmax = Math.max(dmax, Math.abs(h[i * n + i]!));
  const tol = 1e-5 * dmax;
  for (let i = 0; i < n; i++)
    for (let j = 0; j < i; j++)
      if (Math.abs(h[i * n + j]! - h[j * n + i]!) > tol)
        throw new CalderaError(
          'E_VALUE',
          `${what} is not symmetric at (${i}, ${j}): ${h[i * n + j]} vs ${h[j * n + i]}`,
        );
}

/** H (n × n) as a contiguous f64 copy with `damping·mean(diag H)` on the diagonal, checked finite and symmetric. */
function dampedCopy(h: Matrix, damping: number, what: string): Float64Array {
  const n = h.shape[0]!;
  // core's cast: a contiguous f64 copy of its own, read through the view's strides (a copy sized from the offset was
  // short for a view whose offset sits near the end of its data, and its missing entries went unchecked)
  const hd = cast(h, 'f64').data;
  // H must be symmetric (only its lower triangle is factored)
  assertFiniteSymmetric(hd, n, `${what}: H [${n}, ${n}]`);
  checkDamping(damping, what);
  if (damping > 0) {
    let mean = 0;
    for (let i = 0; i < n; i++) mean += hd[i * n + i]!;
    mean /= n;
    for (let i = 0; i < n; i++) hd[i * n + i]! += damping * mean;
  }
  return hd;
}

function checkDamping(damping: number, what: string): void {
  if (damping < 0 || !Number.isFinite(damping)) {
    throw new CalderaError('E_VALUE', `${what}: damping must be a finite number ≥ 0, got ${damping}`);
  }
}

/**
 * The block LDL of the damped `hd`; a singular one is retried with the smallest jitter that factors it, and that
 * jitter is then added to `hd`'s diagonal too, so that `hd` is exactly the H that was factored: the tuning passes
 * read it (an exactly singular H_kk has no inverse) and the proxy loss is measured against it.
 */
function factorDamped(
  hd: Float64Array,
  n: number,
  g: number,
  pool: Pool | undefined,
  signal: AbortSignal | undefined,
): { ldl: BlockLDL; repaired: boolean } {
  const ht: Tensor<'f64'> = { dtype: 'f64', shape: [n, n], strides: [n, 1], offset: 0, data: hd };
  const opt = { ...(pool ? { pool } : {}), ...(signal ? { signal } : {}) };
  try {
    return { ldl: blockLDL(ht, g, opt), repaired: false };
  } catch (e) {
    if (!isCalderaError(e, 'E_NOT_PD')) throw e;
    // singular H (e.g. dead input channels): retry with the smallest jitter, from 1e-6·mean(diag), that factors it
    let mean = 0;
    for (let i = 0; i < n; i++) mean += Math.abs(hd[i * n + i]!);
    const chol = choleskyWithInfo(ht, { ...opt, jitter: 1e-6 * (mean / n) || 1e-6 });
    // the Cholesky factor is that of hd + jitter·I (each diagonal entry plus the jitter, in f64, as here)
    for (let i = 0; i < n; i++) hd[i * n + i]! += chol.jitter;
    const ldl = blockLDLFromCholesky(chol.l, g, signal ? { signal } : {});
    return { ldl, repaired: true };
  }
}

/**
 * One block-coordinate refinement pass: Ŵ_k ← Q(Ŵ_k + (W − Ŵ)·H[:, k]·H[k,k]⁻¹), last block to first. G = E·H is
 * kept current per buffer with gemm and inside the buffer with direct updates.
 */
function tunePass(
  What: Float32Array,
  E: Float32Array,
  hd: Float64Array,
  n: number,
  m: number,
  rounder: GroupRounder,
  planes: CodePlane[],
  B: number,
  options: LdlqOptions,
): number {
  const g = rounder.dim;
  const H = Float32Array.from(hd);
  const pool = options.pool ? { pool: options.pool } : {};
  const G = new Float32Array(m * n);
  const eT: Tensor<'f32'> = { dtype: 'f32', shape: [m, n], strides: [n, 1], offset: 0, data: E };
  gemmInto(
    { dtype: 'f32', shape: [m, n], strides: [n, 1], offset: 0, data: G },
    eT,
    { dtype: 'f32', shape: [n, n], strides: [n, 1], offset: 0, data: H },
    { checkFinite: false, ...pool },
  );
  // tr(E·H·Eᵀ) now; each accepted block change then lowers it by exactly f_old − f_new (x is the exact
  // block minimiser given the other blocks), so the loss after the pass needs no further product
  let loss = 0;
  for (let i = 0; i < G.length; i++) loss += G[i]! * E[i]!;
  const x = new Float32Array(m * g);
  const vals = new Float32Array(m * g);
  const delta = new Float32Array(m * B); // changes of Ŵ within the current buffer
  const hkk = new Float64Array(g * g);
  const stride = n / g;
  const sub = Math.max(g, Math.floor(Math.min(32, B) / g) * g);
  for (let s = Math.floor((n - 1) / B) * B; s >= 0; s -= B) {
    throwIfAborted(options.signal, 'ldlq tuning');
    const e = Math.min(n, s + B);
    const bw = e - s;
    delta.fill(0);
    let subEnd = e;
    for (let c = e - g; c >= s; c -= g) {
      if ((e - c - g) % sub === 0 && c + g < e) {
        // sub-buffer [c+g, subEnd) finished: G[:, s:c+g] −= Δ[:, sub-buffer]·H[sub-buffer, s:c+g] in one gemm
        const s2 = c + g;
        gemmInto(
          { dtype: 'f32', shape: [m, s2 - s], strides: [n, 1], offset: s, data: G },
          { dtype: 'f32', shape: [m, subEnd - s2], strides: [bw, 1], offset: s2 - s, data: delta },
          { dtype: 'f32', shape: [subEnd - s2, s2 - s], strides: [n, 1], offset: s2 * n + s, data: H },
          { alpha: -1, beta: 1, checkFinite: false },
        );
        subEnd = s2;
      }
      const jStart = Math.max(s, subEnd - sub);
      // H[k,k]⁻¹ (g×g) by Gauss–Jordan in f64
      const inv = invertSmall(hd, n, c, g);
      for (let i = 0; i < g; i++) for (let j = 0; j < g; j++) hkk[i * g + j] = hd[(c + i) * n + c + j]!;
      for (let r = 0; r < m; r++) {
        for (let t = 0; t < g; t++) {
          let acc = 0;
          for (let u = 0; u < g; u++) acc += G[r * n + c + u]! * inv[u * g + t]!;
          x[r * g + t] = What[r * n + c + t]! + acc;
        }
      }
      const saved = planes.map((p) => {
        const keep = new Uint16Array(m);
        for (let r = 0; r < m; r++) keep[r] = p[r * stride + c / g]!;
        return keep;
      });
      rounder.round(x, m, vals, planes, c / g, stride);
      for (let r = 0; r < m; r++) {
        // Guard: the block objective is (q − x)·H_kk·(q − x)ᵀ, but codebooks round in the Euclidean metric; keep
        // the old codeword unless the new one is strictly better, so a pass never increases the proxy loss.
        const fNew = blockObjective(vals, r, r * g, x, hkk, g);
        const fOld = blockObjective(What, r, r * n + c, x, hkk, g);
        if (!(fNew < fOld)) {
          for (let p = 0; p < planes.length; p++) planes[p]![r * stride + c / g] = saved[p]![r]!;
          continue;
        }
        loss += fNew - fOld;
        for (let t = 0; t < g; t++) {
          const d = vals[r * g + t]! - What[r * n + c + t]!;
          if (d === 0) continue;
          What[r * n + c + t] = vals[r * g + t]!;
          E[r * n + c + t]! -= d;
          delta[r * bw + (c - s) + t] = d;
          // keep G current for the blocks still to come in this sub-buffer: G[:, jStart:c] −= d·H[c+t, jStart:c]
          const gr = r * n;
          const hr = (c + t) * n;
          for (let j = jStart; j < c; j++) G[gr + j]! -= d * H[hr + j]!;
        }
      }
    }
    // the rest of G (outside the buffer) at once: G[:, outside] -= Δ·H[s:e, outside]
    const dView: Tensor<'f32'> = { dtype: 'f32', shape: [m, bw], strides: [bw, 1], offset: 0, data: delta };
    if (s > 0) {
      gemmInto(
        { dtype: 'f32', shape: [m, s], strides: [n, 1], offset: 0, data: G },
        dView,
        { dtype: 'f32', shape: [bw, s], strides: [n, 1], offset: s * n, data: H },
        { alpha: -1, beta: 1, checkFinite: false, ...pool },
      );
    }
  }
  return loss;
}

/** `E_DTYPE`/`E_SHAPE`/`E_VALUE` unless `t` (the option `name`) can receive an m × n output of ldlq. */
function checkOutput(t: Tensor<'f32'>, name: string, m: number, n: number): void {
  if (t === null || typeof t !== 'object' || (t as { dtype?: unknown }).dtype !== 'f32')
    throw new CalderaError(
      'E_DTYPE',
      `ldlq: ${name} must be an f32 tensor, got ${t === null || typeof t !== 'object' ? String(t) : `dtype '${String((t as { dtype?: unknown }).dtype)}'`}`,
    );
  assertMatrix(t, 'ldlq', name);
  if (!(t.data instanceof Float32Array))
    throw new CalderaError('E_VALUE', `ldlq: ${name}.data must be a Float32Array`);
  if (t.shape.length !== 2 || t.shape[0] !== m || t.shape[1] !== n)
    throw new CalderaError(
      'E_SHAPE',
      `ldlq: ${name} has shape [${t.shape.join(', ')}], expected [${m}, ${n}] as W`,
    );
  if (!isPlain(t))
    throw new CalderaError(
      'E_VALUE',
      `ldlq: ${name} must be contiguous and row-major (a view with an offset or other strides is not)`,
    );
}

/** True when the matrix `t` is row-major with no offset: its entry (i, j) at `data[i·n + j]`. */
function isPlain(t: Matrix): boolean {
  return t.offset === 0 && isContiguous(t);
}

/**
 * `E_VALUE` when two of W's data and the given output arrays share memory (an output written over W while W is still
 * read, or two outputs written over each other).
 */
function checkDisjoint(w: Matrix['data'], outputs: [string, Matrix['data'] | undefined][]): void {
  const named: [string, Matrix['data']][] = [['W', w]];
  for (const [name, d] of outputs) if (d !== undefined) named.push([name, d]);
  for (let i = 0; i < named.length; i++)
    for (let j = i + 1; j < named.length; j++) {
      const [na, a] = named[i]!;
      const [nb, b] = named[j]!;
      if (
        a.buffer === b.buffer &&
        a.byteOffset < b.byteOffset + b.byteLength &&
        b.byteOffset < a.byteOffset + a.byteLength
      )
        throw new CalderaError('E_VALUE', `ldlq: ${nb} shares memory with ${na}`);
    }
}

/**
 * The lower Cholesky factor C of the g×g diagonal block D_k at `dk` (D_k = C·Cᵀ), f64. D_k comes from a factored,
 * positive definite H, so its pivots are positive; one that round-off takes to ≤ 0 (a direction H does not weight)
 * is a zero column of C.
 */
function choleskyOfBlock(D: Float64Array, dk: number, g: number): Float64Array {
  const c = new Float64Array(g * g);
  for (let j = 0; j < g; j++) {
    let d = D[dk + j * g + j]!;
    for (let p = 0; p < j; p++) d -= c[j * g + p]! * c[j * g + p]!;
    const pivot = d > 0 ? Math.sqrt(d) : 0;
    c[j * g + j] = pivot;
    for (let i = j + 1; i < g; i++) {
      let v = D[dk + i * g + j]!;
      for (let p = 0; p < j; p++) v -= c[i * g + p]! * c[j * g + p]!;
      c[i * g + j] = pivot > 0 ? v / pivot : 0;
    }
  }
  return c;
}

/**
 * One group of `Y = (W − Ŵ)·M` into columns c..c+g of `Y` (m rows, row length `width`): each row's rounding residual
 * r = x − Ŵ (f64) times the block's Cholesky factor C (lower: Y_u = Σ_{t ≥ u} r_t·C_tu).
 */
function weightResiduals(
  Y: Float32Array,
  x: Float32Array,
  vals: Float32Array,
  C: Float64Array,
  m: number,
  width: number,
  c: number,
  g: number,
): void {
  for (let r = 0; r < m; r++) {
    const xr = r * g;
    for (let u = 0; u < g; u++) {
      let acc = 0;
      for (let t = u; t < g; t++) acc += (x[xr + t]! - vals[xr + t]!) * C[t * g + u]!;
      Y[r * width + c + u] = acc;
    }
  }
}

/**
 * The in-buffer feedback for 8-column groups with the accumulators in registers (the hot loop of LDLQ); `Eb` is the
 * buffer's E (m × bw).
 */
function feedback8(
  x: Float32Array,
  F: Float32Array,
  Eb: Float32Array,
  Lb: Float32Array,
  m: number,
  bw: number,
  cl: number,
  jEnd: number,
): void {
  for (let r = 0; r < m; r++) {
    const fr = r * bw + cl;
    let x0 = F[fr]!,
      x1 = F[fr + 1]!,
      x2 = F[fr + 2]!,
      x3 = F[fr + 3]!,
      x4 = F[fr + 4]!,
      x5 = F[fr + 5]!,
      x6 = F[fr + 6]!,
      x7 = F[fr + 7]!;
    const er = r * bw;
    for (let j = cl + 8; j < jEnd; j++) {
      const ev = Eb[er + j]!;
      const lj = j * bw + cl;
      x0 += ev * Lb[lj]!;
      x1 += ev * Lb[lj + 1]!;
      x2 += ev * Lb[lj + 2]!;
      x3 += ev * Lb[lj + 3]!;
      x4 += ev * Lb[lj + 4]!;
      x5 += ev * Lb[lj + 5]!;
      x6 += ev * Lb[lj + 6]!;
      x7 += ev * Lb[lj + 7]!;
    }
    const xr = r * 8;
    x[xr] = x0;
    x[xr + 1] = x1;
    x[xr + 2] = x2;
    x[xr + 3] = x3;
    x[xr + 4] = x4;
    x[xr + 5] = x5;
    x[xr + 6] = x6;
    x[xr + 7] = x7;
  }
}

/** `(q − x)·H_kk·(q − x)ᵀ` for row r, with q = `src[base .. base+g)` and x = row r's group of `x`. */
function blockObjective(
  src: Float32Array,
  r: number,
  base: number,
  x: Float32Array,
  hkk: Float64Array,
  g: number,
): number {
  let f = 0;
  for (let t = 0; t < g; t++) {
    const dt = src[base + t]! - x[r * g + t]!;
    let acc = 0;
    for (let u = 0; u < g; u++) acc += hkk[t * g + u]! * (src[base + u]! - x[r * g + u]!);
    f += dt * acc;
  }
  return f;
}

/** `tr(W·H·Wᵀ) = Σ_k tr(P_k D_k P_kᵀ)` with `P = W·L`, one gemm per buffer over the nonzero rows of L. */
function traceWHWt(
  W: Float32Array,
  L: Float32Array,
  D: Float64Array,
  m: number,
  n: number,
  g: number,
  B: number,
  pool: Pool | undefined,
): number {
  let tr = 0;
  const P = new Float32Array(m * B);
  for (let s = 0; s < n; s += B) {
    const bw = Math.min(B, n - s);
    const pv: Tensor<'f32'> = { dtype: 'f32', shape: [m, bw], strides: [bw, 1], offset: 0, data: P };
    const wv: Tensor<'f32'> = { dtype: 'f32', shape: [m, n - s], strides: [n, 1], offset: s, data: W };
    const lv: Tensor<'f32'> = {
      dtype: 'f32',
      shape: [n - s, bw],
      strides: [n, 1],
      offset: s * n + s,
      data: L,
    };
    gemmInto(pv, wv, lv, { checkFinite: false, ...(pool ? { pool } : {}) });
    for (let r = 0; r < m; r++) {
      for (let c = 0; c < bw; c += g) {
        const dk = ((s + c) / g) * g * g;
        for (let t = 0; t < g; t++) {
          let acc = 0;
          for (let u = 0; u < g; u++) acc += D[dk + t * g + u]! * P[r * bw + c + u]!;
          tr += P[r * bw + c + t]! * acc;
        }
      }
    }
  }
  return tr;
}

function invertSmall(hd: Float64Array, n: number, c: number, g: number): Float64Array {
  const a = new Float64Array(g * g);
  const inv = new Float64Array(g * g);
  for (let i = 0; i < g; i++) {
    for (let j = 0; j < g; j++) a[i * g + j] = hd[(c + i) * n + c + j]!;
    inv[i * g + i] = 1;
  }
  for (let col = 0; col < g; col++) {
    let piv = col;
    for (let r = col + 1; r < g; r++) if (Math.abs(a[r * g + col]!) > Math.abs(a[piv * g + col]!)) piv = r;
    if (piv !== col) {
      for (let j = 0; j < g; j++) {
        [a[col * g + j], a[piv * g + j]] = [a[piv * g + j]!, a[col * g + j]!];
        [inv[col * g + j], inv[piv * g + j]] = [inv[piv * g + j]!, inv[col * g + j]!];
      }
    }
    const p = a[col * g + col]!;
    for (let j = 0; j < g; j++) {
      a[col * g + j]! /= p;
      inv[col * g + j]! /= p;
    }
    for (let r = 0; r < g; r++) {
      if (r === col) continue;
      const f = a[r * g + col]!;
      if (f === 0) continue;
      for (let j = 0; j < g; j++) {
        a[r * g + j]! -= f * a[col * g + j]!;
        inv[r * g + j]! -= f * inv[col * g + j]!;
      }
    }
  }
  return inv;
}

/**
 * `tr((Ŵ − W)H(Ŵ − W)ᵀ) / tr(WHWᵀ)`: the relative proxy loss LDLQ minimises (computed with two gemms); 0 where
 * `tr(WHWᵀ)` is 0 (W = 0), as `ldlq`'s own diagnostic. W and Ŵ are m×n, H n×n (`E_SHAPE` otherwise); a non-finite
 * entry in any of them is `E_VALUE`, and so is an H with `tr(WHWᵀ) < 0` (not positive semi-definite): each gave 0, a
 * perfect loss.
 */
export function proxyLoss(w: Matrix, wHat: Matrix, h: Matrix, pool?: Pool): number {
  assertMatrix(w, 'proxyLoss', 'W');
  assertMatrix(wHat, 'proxyLoss', 'Ŵ');
  assertMatrix(h, 'proxyLoss', 'H');
  const W = toF32(w);
  const Wh = toF32(wHat);
  const [m, n] = W.shape as [number, number];
  if (Wh.shape[0] !== m || Wh.shape[1] !== n || h.shape[0] !== n || h.shape[1] !== n) {
    throw new CalderaError(
      'E_SHAPE',
      `proxyLoss: W [${W.shape.join(', ')}] and Ŵ [${Wh.shape.join(', ')}] must have the same shape, and H ` +
        `[${h.shape.join(', ')}] must be ${n}×${n}`,
    );
  }
  assertFinite(w, 'proxyLoss: W');
  assertFinite(wHat, 'proxyLoss: Ŵ');
  assertFinite(h, 'proxyLoss: H');
  const D = new Float32Array(m * n);
  for (let i = 0; i < D.length; i++) D[i] = Wh.data[i]! - W.data[i]!;
  const H = toF32(h);
  const p = pool ? { pool } : {};
  const dt: Tensor<'f32'> = { dtype: 'f32', shape: [m, n], strides: [n, 1], offset: 0, data: D };
  const DH = new Float32Array(m * n);
  gemmInto({ dtype: 'f32', shape: [m, n], strides: [n, 1], offset: 0, data: DH }, dt, H, {
    checkFinite: false,
    ...p,
  });
  const WH = new Float32Array(m * n);
  gemmInto({ dtype: 'f32', shape: [m, n], strides: [n, 1], offset: 0, data: WH }, W, H, {
    checkFinite: false,
    ...p,
  });
  let num = 0;
  let den = 0;
  for (let i = 0; i < D.length; i++) {
    num += DH[i]! * D[i]!;
    den += WH[i]! * W.data[i]!;
  }
  if (!Number.isFinite(num) || !Number.isFinite(den))
    throw new CalderaError('E_VALUE', `proxyLoss: the traces overflow f32 (${num}, ${den})`);
  if (den < 0)
    throw new CalderaError(
      'E_VALUE',
      `proxyLoss: tr(WHWᵀ) = ${den} < 0: H is not positive semi-definite (a Hessian XᵀX cannot be)`,
    );
  return den > 0 ? num / den : 0;
}
