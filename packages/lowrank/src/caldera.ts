import {
  assertFunction,
  assertNotAbortSignal,
  assertObject,
  CalderaError,
  definedOptions,
  describeValue,
  f16ArrayToF32,
  f32ArrayToF16,
  Rng,
  tensor,
  throwIfAborted,
  toF32,
  toF64,
  type Tensor,
} from '@caldera/core';
import {
  cholesky,
  choleskyWithInfo,
  gemm,
  gemmInto,
  invTriangular,
  mirrorUpper,
  randomizedSvd,
  svd as exactSvd,
  type Pool,
} from '@caldera/linalg';
import { assertFiniteSymmetric, ldlq, prepareLdlq, type LdlqHessian } from '@caldera/quant';
import {
  latticeRound,
  latticeRoundRaw,
  optScale,
  rounderFor,
  type FactorBits,
  type LatticeCodes,
} from './codec.js';
import type { Decomposition, StoredFactor } from './decomposition.js';
import { timesLower, timesLowerTransposed } from './lower-product.js';
import { transposed } from './transpose.js';
import { paddedSize, randomSigns, rotateHessian, rotateWeight, unrotateWeight } from './rotate.js';

/** Options of {@link caldera}. Defaults follow the paper where they earn their cost (see the package README). */
export interface CalderaOptions {
  /**
   * Rank k of L·R; 0 gives Q alone (LDLQ only, a QuIP#-style quantizer). Default 64; on a W with min(m, n) < 64 the
   * default is refused (`E_VALUE`, asking for `rank`), not clamped.
   */
  rank?: number;
  /** Bits per entry of Q (E8P12 = 2, RVQ 3/4), or 0 for no Q at all (low-rank only, "LPLR"). Default 2. */
  qBits?: 0 | 2 | 3 | 4;
  /** Bits per entry of L (lattice 2/3/4, or 16 = half precision, no quantization). Default 4. */
  lBits?: FactorBits;
  /** Bits per entry of R. Default 4. */
  rBits?: FactorBits;
  /** Outer alternations (each: an LR update and a Q update, in the order `updateOrder` sets). Default 4. */
  outerIters?: number;
  /**
   * Which update each outer alternation runs first. `'lr-first'`: the LR step, then the Q step (the authors' code's
   * `update_order` `["LR", "Q"]`): the first LR step fits W itself (Q = 0). `'q-first'`: the Q step, then the LR step
   * (the paper's Algorithm 1): the first Q step is LDLQ of W itself (L·R = 0), and the LR step then fits W − Q. Either
   * way the best iterate is chosen among those after both components exist. No effect at `rank` 0 or `qBits` 0 (one
   * step only). With `hessianDowndate`, a first Q step has no L·R to downdate by and uses H itself. Default
   * `'lr-first'`.
   */
  updateOrder?: 'lr-first' | 'q-first';
  /** Alternating quantized least-squares rounds inside each LR update. Default 4. */
  lplrIters?: number;
  /** Quantize Q with LDLQ against H (else round to nearest). Default true. */
  dataAwareQ?: boolean;
  /** Fit L·R in the H-weighted norm (else the plain Frobenius norm). Default true. */
  dataAwareLR?: boolean;
  /** Remove the input directions L·R already explains from H before each LDLQ (brief §2.2b). Default false. */
  hessianDowndate?: boolean;
  /** Power iterations of the randomized SVD (more = closer to the exact truncated SVD). Default 2. */
  svdPowerIters?: number;
  /**
   * How the rank-k truncated SVDs are computed (the LR step's SVD of `(W − Q)·M`, and the `hessianDowndate`'s SVD of
   * `L·R·M`): `'randomized'` (`svdPowerIters` power iterations, 10 oversampling directions) or `'exact'`, linalg's full
   * `svd` (QR + one-sided Jacobi, O(m·n·min(m, n)) per sweep, far slower on large layers) truncated to rank k, for
   * which `svdPowerIters` is ignored. Default `'randomized'`.
   */
  svd?: 'randomized' | 'exact';
  /**
   * Relative diagonal damping δ: the decomposition fits against `H + δ·mean(diag H)·I`, added once to the H you pass
   * (the paper's setting is 0.01). The reported `error`/`errors` (and the choice of the best iterate) are measured
   * against the undamped H you passed. No effect when H is null (identity). Finite and ≥ 0. Default 0 (H as given).
   */
  damping?: number;
  /** Randomized Hadamard incoherence processing. Default true. */
  hadamard?: boolean;
  /** LDLQ block-coordinate refinement passes. Default 0. */
  tuneIters?: number;
  /** Seed of the sign vectors and the randomized SVD. Default 0. */
  seed?: number;
  /**
   * Let `caldera` write the rotated H into H's own storage instead of a fresh n × n f64 array (8·n² bytes: 0.97 GB,
   * and ~3 s of page faults on some machines, at n = 11008): H's values are garbage afterwards. Used only where H is
   * an f64 tensor, contiguous at offset 0 with exactly n² entries in its data, the rotation needs no padding of W or
   * H and `damping` is 0 (elsewhere H is still read after the rotation, and is left alone). Never changes the result.
   * Default false.
   */
  overwriteH?: boolean;
  pool?: Pool;
  /**
   * Checked before every sub-step, inside the Cholesky factorisation of H and the SVDs, and between LDLQ's column
   * buffers (`E_ABORTED`). `caldera` is synchronous, so only code it calls (e.g. `onProgress`) can fire it mid-run; a
   * timer on the same thread runs after `caldera` returns.
   */
  signal?: AbortSignal;
  onProgress?: (p: CalderaProgress) => void;
}

/** Progress of {@link caldera}: after every sub-step. */
export interface CalderaProgress {
  iteration: number;
  iterations: number;
  step: 'LR' | 'Q';
  error: number;
}

const DEFAULTS = {
  rank: 64,
  qBits: 2 as 0 | 2 | 3 | 4,
  lBits: 4 as FactorBits,
  rBits: 4 as FactorBits,
  outerIters: 4,
  updateOrder: 'lr-first' as 'lr-first' | 'q-first',
  lplrIters: 4,
  dataAwareQ: true,
  dataAwareLR: true,
  hessianDowndate: false,
  svdPowerIters: 2,
  svd: 'randomized' as 'randomized' | 'exact',
  damping: 0,
  overwriteH: false,
  hadamard: true,
  tuneIters: 0,
  seed: 0,
};

type Mat = Tensor<'f32'>;
const mat = (rows: number, cols: number, data: Float32Array): Mat => tensor('f32', [rows, cols], data);

function rms(x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i]! * x[i]!;
  return Math.sqrt(s / Math.max(1, x.length));
}

/** The power of two nearest to `x` in ratio (0 for 0). */
function nearestPowerOfTwo(x: number): number {
  return x > 0 ? 2 ** Math.round(Math.log2(x)) : 0;
}

const Q_BITS: readonly number[] = [0, 2, 3, 4];
const FACTOR_BITS: readonly number[] = [2, 3, 4, 16];

/** Throw `E_VALUE` naming the first option that {@link caldera} cannot honour (before any work is done). */
function checkOptions(o: typeof DEFAULTS & CalderaOptions, m: number, n: number, rankGiven: boolean): void {
  const fail = (msg: string): never => {
    throw new CalderaError('E_VALUE', `caldera: ${msg}`);
  };
  const k = o.rank;
  // the default rank is refused, not clamped, on a small W: a default must not silently change meaning
  if (!rankGiven && k > Math.min(m, n))
    fail(`the default rank ${k} exceeds min(m, n) = ${Math.min(m, n)} of W [${m}, ${n}]; pass options.rank`);
  if (!Number.isInteger(k) || k < 0 || k > Math.min(m, n))
    fail(`rank ${k} must be in [0, ${Math.min(m, n)}]`);
  if (!Q_BITS.includes(o.qBits)) fail(`qBits ${o.qBits} must be one of ${Q_BITS.join(', ')}`);
  for (const key of ['lBits', 'rBits'] as const)
    if (!FACTOR_BITS.includes(o[key])) fail(`${key} ${o[key]} must be one of ${FACTOR_BITS.join(', ')}`);
  if (o.qBits === 0 && k === 0) fail('qBits 0 (no Q) needs rank > 0');
  // a truthy string such as 'no' would run as true and be recorded as it is (parseCalderaMeta then refuses the
  // checkpoint): refused here, before any work
  for (const key of ['hadamard', 'dataAwareQ', 'dataAwareLR', 'hessianDowndate', 'overwriteH'] as const)
    if (typeof o[key] !== 'boolean') fail(`${key} ${describeOption(o[key])} must be true or false`);
  if (!Number.isInteger(o.outerIters) || o.outerIters < 1)
    fail(`outerIters ${o.outerIters} must be a positive integer`);
  for (const key of ['lplrIters', 'tuneIters', 'svdPowerIters'] as const)
    if (!Number.isInteger(o[key]) || o[key] < 0) fail(`${key} ${o[key]} must be a non-negative integer`);
  if (!Number.isSafeInteger(o.seed)) fail(`seed ${o.seed} must be an integer`);
  if (o.updateOrder !== 'lr-first' && o.updateOrder !== 'q-first')
    fail(`updateOrder ${describeOption(o.updateOrder)} must be 'lr-first' or 'q-first'`);
  if (o.svd !== 'randomized' && o.svd !== 'exact')
    fail(`svd ${String(o.svd)} must be 'randomized' or 'exact'`);
  if (typeof o.damping !== 'number' || !Number.isFinite(o.damping) || o.damping < 0)
    fail(`damping ${String(o.damping)} must be a finite number >= 0`);
  // null is none, like undefined; anything else must be callable (a number failed after the first sub-step)
  if (o.onProgress != null) assertFunction(o.onProgress, 'caldera', 'options.onProgress');
}

/** An option's value for a message: a string quoted, anything else as `String` gives it. */
const describeOption = (v: unknown): string => (typeof v === 'string' ? `'${v}'` : String(v));

/**
 * Throw `E_VALUE` unless `x` is a tensor (an object with a `dtype` name, a `shape` array, `strides` of as many entries,
 * a non-negative integer `offset` and a typed-array `data`), or, with `orNull`, null or undefined: `{}`, a plain array
 * or `{ shape, data }` without strides in its place failed with a TypeError from its first use.
 */
function checkTensorArgument(x: unknown, name: string, orNull: boolean): void {
  if (orNull && x == null) return;
  const t = x as {
    dtype?: unknown;
    shape?: unknown;
    strides?: unknown;
    offset?: unknown;
    data?: unknown;
  } | null;
  if (
    t === null ||
    typeof t !== 'object' ||
    typeof t.dtype !== 'string' ||
    !Array.isArray(t.shape) ||
    !Array.isArray(t.strides) ||
    t.strides.length !== t.shape.length ||
    !Number.isSafeInteger(t.offset) ||
    (t.offset as number) < 0 ||
    !ArrayBuffer.isView(t.data) ||
    t.data instanceof DataView
  )
    throw new CalderaError(
      'E_VALUE',
      `caldera: ${name} must be a tensor${orNull ? ' or null' : ''} (an object with dtype, shape, strides, offset and data), got ${describeValue(x)}`,
    );
}

/** H + δ·mean(diag H)·I for a contiguous n×n H (a copy; H itself is left alone). */
function damped(h: Tensor<'f64'>, n: number, delta: number): Tensor<'f64'> {
  const out = Float64Array.from(h.data);
  let mean = 0;
  for (let i = 0; i < n; i++) mean += out[i * n + i]!;
  mean /= n;
  for (let i = 0; i < n; i++) out[i * n + i]! += delta * mean;
  return tensor('f64', [n, n], out);
}

/**
 * Throw `E_VALUE` unless H (n×n, contiguous) can be an input second moment: finite and symmetric as LDLQ requires
 * (quant's `assertFiniteSymmetric`), with a non-negative diagonal that is not all zero.
 */
function checkHessian(h: Float64Array, n: number): void {
  assertFiniteSymmetric(h, n, 'caldera: H');
  let dmax = 0;
  for (let i = 0; i < n; i++) {
    const d = h[i * n + i]!;
    if (d < 0)
      throw new CalderaError(
        'E_VALUE',
        `caldera: H has a negative diagonal entry ${d} at (${i}, ${i}); it must be positive semidefinite`,
      );
    dmax = Math.max(dmax, d);
  }
  if (dmax === 0) throw new CalderaError('E_VALUE', 'caldera: H has an all-zero diagonal (no input signal)');
}

/**
 * X·Yᵀ for X (`rows` × c) and Y (`rowsY` × c), f32 row-major: in f64, every product of two f32 values exact and the
 * sums in f64, as the scalar loops this replaced gave them, on the gemm kernels (those loops, k²·(m + 2n) multiply-adds
 * per LPLR iteration, were a quarter of a decomposition at rank 300). With `y` null, X·Xᵀ, made exactly symmetric.
 * The f64 copies of X and Y go into `scratch` ((rows + rowsY)·c entries at least).
 */
function productF64(
  x: Float32Array,
  rows: number,
  y: Float32Array | null,
  rowsY: number,
  pool: { pool?: Pool },
  scratch: Float64Array,
): Float64Array {
  const cols = rows === 0 ? 0 : x.length / rows;
  const xs = scratch.subarray(0, rows * cols);
  xs.set(x);
  const xd = tensor('f64', [rows, cols], xs);
  let yd = xd;
  if (y) {
    const ys = scratch.subarray(rows * cols, (rows + rowsY) * cols);
    ys.set(y);
    yd = tensor('f64', [rowsY, cols], ys);
  }
  const out = gemm(xd, yd, { transB: true, checkFinite: false, ...pool }).data;
  if (!y) mirrorUpper(tensor('f64', [rows, rows], out));
  return out;
}

/**
 * Solve G·X = B (`side` 'left', B k×r) or X·G = B (`side` 'right', B r×k) for X, G k×k symmetric positive
 * semidefinite, through a jittered Cholesky G = C·Cᵀ and C's inverse: X = C⁻ᵀ·(C⁻¹·B) or X = (B·C⁻ᵀ)·C⁻¹, two f64
 * products. C⁻¹ costs about k³/2 multiply-adds (substitution over the identity's columns); the substitution it
 * replaces ran over all r right-hand sides in scalar code (with the transposes of a right-side solve, ~0.3 s per call
 * for r = 11 008, k = 152, against ~0.05 s). The two ways differ in round-off (trials with G = Q·Λ·Qᵀ, Q a random
 * orthogonal basis, cond(G) from 1e2 to 1e14, random B: relative differences ≤ 4e-15, the residuals ‖X·G − B‖/‖B‖
 * within 4× of each other). X, rounded to f32, goes into `into` (which may be `b`); the products' f64 operands into
 * `scratch` (2·k·r entries at least).
 */
function solveSpd(
  b: Float32Array,
  shape: [number, number],
  g: Float64Array,
  k: number,
  side: 'left' | 'right',
  pool: { pool?: Pool },
  scratch: Float64Array,
  into: Float32Array,
): Float32Array {
  const ci = invTriangular(cholesky(tensor('f64', [k, k], g), { jitter: true })); // C⁻¹, lower
  const size = shape[0] * shape[1];
  const bs = scratch.subarray(0, size);
  bs.set(b);
  const bd = tensor('f64', shape, bs);
  const yd = tensor('f64', shape, scratch.subarray(size, 2 * size));
  const opts = { checkFinite: false, ...pool };
  if (side === 'left') {
    gemmInto(yd, ci, bd, opts); // C⁻¹·B
    gemmInto(bd, ci, yd, { transA: true, ...opts }); // C⁻ᵀ·(C⁻¹·B)
  } else {
    gemmInto(yd, bd, ci, { transB: true, ...opts }); // B·C⁻ᵀ
    gemmInto(bd, yd, ci, opts); // (B·C⁻ᵀ)·C⁻¹
  }
  into.set(bs);
  return into;
}

/** What every step of {@link caldera} uses of the rotated H (see {@link factorRotatedHessian}). */
interface RotatedHessianFactors {
  /** The lower-triangular Cholesky factor M of H (H = M·Mᵀ), in f32, np × np: products with it go through timesLower. */
  Mf: Float32Array;
  /** LDLQ's prepared H, or null where not asked for. */
  baseQ: LdlqHessian | null;
  /** True when `baseQ` was derived from M itself (its L·chol(D) is M), so LDLQ can give its (A − Q̂)·M. */
  baseQFromM: boolean;
  /** H itself (f64), or null where not asked for. */
  hDown: Float64Array | null;
}

/**
 * The factors of the rotated H (`rotated` makes it: np × np, f64) that the steps use, made so that few n×n arrays are
 * alive at once: H itself is dropped once LDLQ's factor is made (unless `keepRotated`), the f64 Cholesky factor once
 * its f32 copy is. The peak is H, its f64 factor and LDLQ's f32 one (20·n² bytes; at n = 11008, a 3B model's MLP
 * input, 2.4 GB); what stays is 8·n² (the f32 factor and LDLQ's). H is made here, not passed in, so that no caller's
 * reference keeps it alive.
 */
function factorRotatedHessian(
  rotated: () => Float64Array,
  np: number,
  options: {
    prepareQ: boolean;
    keepRotated: boolean;
    prepare: (h: Float64Array, cholesky?: Tensor<'f64'>) => LdlqHessian;
    pool?: Pool;
    signal?: AbortSignal;
  },
): RotatedHessianFactors {
  const { pool, signal } = options;
  let hr: Float64Array | null = rotated();
  throwIfAborted(signal, 'caldera'); // an abort during the setup names the call, not its first step
  const chol = choleskyWithInfo(tensor('f64', [np, np], hr), {
    jitter: true,
    ...(pool ? { pool } : {}),
    ...(signal ? { signal } : {}),
  });
  // An H with a negative eigenvalue (not a Gram matrix of activations) factors only with a jitter of that eigenvalue's
  // size: the fit would minimise, and `error` report, a quantity that is no norm. A PSD H, singular or rounded to f32,
  // needs none or the first try's (1e-6 of the mean diagonal); 1e-4 leaves a hundredfold margin.
  let trace = 0;
  for (let i = 0; i < np; i++) trace += hr[i * np + i]!;
  if (chol.jitter > 1e-4 * (trace / np))
    throw new CalderaError(
      'E_NOT_PD',
      `caldera: H is not positive semidefinite: its Cholesky factor needed a diagonal jitter of ` +
        `${chol.jitter.toPrecision(3)} (${(chol.jitter / (trace / np)).toPrecision(3)} × its mean diagonal); ` +
        'pass XᵀX of real activations (see calibrate)',
    );
  // LDLQ's block LDL is derived from the factor when it is H's own (no jitter needed: LDLQ would have computed the
  // same factor), else factored as LDLQ does, with its own repair
  const baseQ = options.prepareQ ? options.prepare(hr, chol.jitter === 0 ? chol.l : undefined) : null;
  const hDown = options.keepRotated ? hr : null;
  hr = null;
  return {
    Mf: Float32Array.from(chol.l.data),
    baseQ,
    baseQFromM: baseQ !== null && chol.jitter === 0,
    hDown,
  };
}

function storeFactor(x: Float32Array, bits: FactorBits): { stored: StoredFactor; values: Float32Array } {
  if (bits === 16) {
    const values = f16ArrayToF32(f32ArrayToF16(x));
    return { stored: { kind: 'dense', values }, values };
  }
  const { codes, values } = latticeRound(x, bits);
  return { stored: { kind: 'lattice', codes }, values };
}

/**
 * `L` (mp × k, row-major; scaled in place and returned) with each column i scaled by d_i, against the rows of `R`
 * (k × np) it was fitted to, so that component i is balanced between the two factors once R is refitted to it (the
 * least-squares R absorbs any column scaling of L exactly, so L·R stays what the fit makes it). With one quantization
 * scale per factor, every entry of a factor gets noise of about the same size, so the noise of L̂·R̂ grows like
 * (Σ‖L_i‖²)·(Σ w_i²‖R_i‖²), which for fixed products ‖L_i‖·‖R_i‖ is least when ‖L_i‖ = w_i·‖R_i‖ (Cauchy–Schwarz).
 * w_i weighs R's noise as the error does: with H, w_i² ∝ R_iHR_iᵀ/‖R_i‖² + mean(diag H) (`G` holds R·H·Rᵀ);
 * without, w_i = 1. Unbalanced (L's columns of unit norm, as the data-aware start makes them), the components of small
 * singular value drown in the noise that the scale of the large ones sets: near full rank the error rose again
 * instead of falling.
 */
function balanceAgainst(
  L: Float32Array,
  mp: number,
  R: ArrayLike<number>,
  np: number,
  k: number,
  hw: { G: Float64Array; meanH: number } | null,
): Float32Array {
  // in place: column i is read before it is scaled, and only it
  for (let i = 0; i < k; i++) {
    let ln = 0;
    let rn = 0;
    for (let a = 0; a < mp; a++) ln += L[a * k + i]! * L[a * k + i]!;
    for (let c = 0; c < np; c++) rn += R[i * np + c]! * R[i * np + c]!;
    if (!(ln > 0 && rn > 0)) continue;
    const w = hw ? Math.sqrt((hw.G[i * k + i]! / rn + hw.meanH) / (2 * hw.meanH)) : 1;
    // ‖L_i‖·d_i = w_i·‖R_i‖/d_i
    const d = Math.sqrt(w * Math.sqrt(rn / ln));
    for (let a = 0; a < mp; a++) L[a * k + i]! *= d;
  }
  return L;
}

interface LowRank {
  l: StoredFactor; // Lᵀ, k × mp
  r: StoredFactor; // k × np
  lValues: Float32Array; // L̂ᵀ's values, k × mp
  rValues: Float32Array; // R̂'s values, k × np
  product: Float32Array; // L̂·R̂, mp × np: the decomposition's one product array, valid while this is the current pair
  rM: Float32Array | null; // R̂·M (k × np), made by the first error measured on this pair
}

/**
 * CALDERA (Saha et al., NeurIPS 2024): `W ≈ Q + L·R` with Q on a lattice codebook (LDLQ against H) and a quantized
 * low-rank pair fitted in the H-weighted norm, alternating and keeping the best iterate by the activation-aware
 * error `‖(Ŵ − W)H^½‖_F / ‖W H^½‖_F`. `W` is `m × n` (f32/f64), `H` is the `n × n` input Hessian (null: identity).
 * With `damping` δ > 0 every step fits against `H + δ·mean(diag H)·I`, while the error stays measured against H.
 * Arguments and options are checked before any work (`E_VALUE`: a W or H that is not a tensor, an option out of range
 * or of the wrong type, an `onProgress` that is not a function; `E_SHAPE`: shapes); null `options` count as none.
 */
export function caldera(w: Tensor, h: Tensor | null, options: CalderaOptions = {}): Decomposition {
  assertObject(w, 'caldera', 'W', 'a tensor');
  checkTensorArgument(w, 'W', false);
  checkTensorArgument(h, 'H', true);
  options ??= {}; // from JavaScript: null options are none
  assertNotAbortSignal(options, 'caldera'); // caldera(W, H, signal): refused, not ignored
  assertObject(options, 'caldera', 'options');
  const o = {
    ...DEFAULTS,
    ...definedOptions(options),
  } as typeof DEFAULTS & CalderaOptions;
  if (w.shape.length !== 2)
    throw new CalderaError('E_SHAPE', `caldera: W must be 2-D, got [${w.shape.join(', ')}]`);
  const [m, n] = w.shape as [number, number];
  if (h && (h.shape.length !== 2 || h.shape[0] !== n || h.shape[1] !== n)) {
    throw new CalderaError(
      'E_SHAPE',
      `caldera: H has shape [${h.shape.join(', ')}], expected [${n}, ${n}] for W [${m}, ${n}]`,
    );
  }
  if (m === 0 || n === 0) throw new CalderaError('E_SHAPE', `caldera: W [${m}, ${n}] is empty`);
  checkOptions(o, m, n, options.rank !== undefined);
  // the shapes and options checked, an aborted signal is refused before any work (the copies, checks and rotations of
  // W and H took seconds)
  throwIfAborted(o.signal, 'caldera');
  const W0 = toF32(w);
  for (let i = 0; i < W0.data.length; i++) {
    if (!Number.isFinite(W0.data[i]!))
      throw new CalderaError(
        'E_VALUE',
        `caldera: W has a non-finite value at (${Math.floor(i / n)}, ${i % n})`,
      );
  }
  const k = o.rank;
  const pool = o.pool ? { pool: o.pool } : {};
  const sig = o.signal ? { signal: o.signal } : {};
  // The global scale g (W is fitted as g·(Q + LR), at unit RMS). A checkpoint folds g into Q's and the factors'
  // stored values; an f16 factor would be rounded a second time there, so with one g is a power of two, which
  // scales an f16 value exactly: the checkpoint then holds the Ŵ that `error` was measured on (up to Q's scale,
  // stored in f32).
  const g = o.lBits === 16 || o.rBits === 16 ? nearestPowerOfTwo(rms(W0.data)) : rms(W0.data);
  // H in f64 (the caller's own array when it is a contiguous f64 H: it is only read, never written)
  const hd = h ? toF64(h) : null;
  // H is used scaled by a power of two to a mean diagonal near 1 (`hScale`): the fit, LDLQ and the relative error do
  // not depend on H's scale, but its f32 copies do (an H of 1e-50·I or 1e38·I gave an error of 0, NaN or a Cholesky
  // failure). A power of two scales exactly: an H near that scale already (calibrate's) gives the same bits as
  // unscaled. The copies made of H anyway apply it (the rotation and the f32 copy), so no scaled copy of the whole H is
  // held besides them (one was, 8·n² bytes, 0.97 GB at n = 11008); the damping, linear in H, commutes with it exactly.
  let hScale = 1;
  if (hd) {
    checkHessian(hd.data, n);
    let mean = 0;
    for (let i = 0; i < n; i++) mean += hd.data[i * n + i]!;
    hScale = 2 ** -Math.round(Math.log2(mean / n));
  }
  // the H every step fits against (before its scaling); the error is always measured against the caller's hd (see
  // `damping`)
  const hFit = hd && o.damping > 0 ? damped(hd, n, o.damping) : hd;

  const mp = paddedSize(m, o.hadamard);
  const np = paddedSize(n, o.hadamard);
  const rng = new Rng(o.seed);
  const su = o.hadamard ? randomSigns(np, rng) : null;
  const sv = o.hadamard ? randomSigns(mp, rng) : null;
  const Wr = rotateWeight(W0, mp, np, su, sv, pool);
  const invG = g > 0 ? 1 / g : 0;
  for (let i = 0; i < Wr.length; i++) Wr[i]! *= invG;
  // W's values so large that its f32 rotation overflows (RMS beyond ~1e36) cannot be fitted in f32
  if (!Wr.every(Number.isFinite))
    throw new CalderaError(
      'E_VALUE',
      `caldera: W's values (RMS ${g.toPrecision(3)}) overflow f32 once rotated`,
    );
  const order: ('LR' | 'Q')[] =
    k === 0 ? ['Q'] : o.qBits === 0 ? ['LR'] : o.updateOrder === 'q-first' ? ['Q', 'LR'] : ['LR', 'Q'];
  const qDim = o.qBits === 0 ? 8 : rounderFor(o.qBits).dim;
  const prepareQ = (h: Float64Array, cholesky?: Tensor<'f64'>): LdlqHessian =>
    prepareLdlq(tensor('f64', [np, np], h), {
      dim: qDim,
      damping: 0, // H already carries the `damping` option (added once, before the rotation)
      keepHessian: o.tuneIters > 0,
      ...(cholesky ? { cholesky } : {}),
      ...pool,
      ...sig,
    });
  // With padding, the rotated-domain norm would also count the padded rows and columns that reconstruct() crops away
  // (and weight the padded inputs, which are zero, by mean(diag H)): the error is then measured on the cropped
  // estimate against W and the caller's H. Without padding both are equal (the rotations are orthogonal), and the
  // rotated form, which reuses the Cholesky factor, is kept. With damping, the Cholesky factor is that of the damped H,
  // so the error is measured in the original domain too, against the caller's undamped H.
  const inOriginal = mp !== m || np !== n || hFit !== hd;
  // The rotated H goes into an H array that nothing reads later (the error in the original domain reads the caller's):
  // the damped copy, or `toF64`'s copy of an H that was not contiguous f64, both ours, or with `overwriteH` the
  // caller's own (`toF64` returns it as it is where it is contiguous f64)
  const ownH = hd !== null && hd.data !== h!.data;
  const into =
    hFit && np === n && (hFit !== hd || (!inOriginal && (ownH || o.overwriteH))) ? { into: hFit.data } : {};
  const factors = factorRotatedHessian(
    () => rotateHessian(hFit, n, np, su, hScale, { ...pool, ...into }),
    np,
    {
      // LDLQ's block LDL for every Q step that does not downdate (with the downdate, every Q step after an LR step
      // prepares its own; a Q step before any LR step, the first one of 'q-first', has no L·R to downdate by)
      prepareQ: order.includes('Q') && o.dataAwareQ && (k === 0 || !o.hessianDowndate || order[0] === 'Q'),
      // the downdate subtracts from the rotated H (only where a data-aware Q step follows an LR step)
      keepRotated: o.hessianDowndate && k > 0 && order.includes('Q') && o.dataAwareQ,
      prepare: prepareQ,
      ...pool,
      ...sig,
    },
  );
  const { Mf, hDown } = factors;
  // the data-aware LR step's products with H: x·H = (x·M)·Mᵀ, two triangular products (the multiply-adds of one full
  // product, without an f32 copy of H besides M's: 4·n² bytes, 0.48 GB at n = 11008). Where the factor needed a
  // jitter (at most 1e-4 of the mean diagonal, else E_NOT_PD above), M·Mᵀ is H + jitter·I, as in the error's rotated
  // form (`rotatedSq`).
  const timesH =
    k > 0 && o.dataAwareLR
      ? (x: Float32Array, rows: number) =>
          timesLowerTransposed(timesLower(x, rows, Mf, np, pool), rows, Mf, np, pool)
      : null;
  // mean(diag H), diag(H)ᵢ = Σ_p M²ᵢₚ
  let meanH = 0;
  if (timesH) {
    for (let i = 0; i < Mf.length; i++) meanH += Mf[i]! * Mf[i]!;
    meanH /= np;
  }
  // Two mp×np work arrays reused by every step (a fresh array of this size each time cost more in page faults than
  // the arithmetic it held on some machines): `work` for a step's input (W − L·R, W − Q) and the error's terms,
  // `workM` for Y = (W − Q)·M, the product of the residual of the current Q (none before the first Q step) with M.
  // Y is made once per Q step: the data-aware LR step starts from it, and in the rotated domain each step's error comes
  // from it through (Q + L̂R̂ − W)·M = L̂·(R̂·M) − Y, a rank-k product (the error's own product with M, twice per
  // iteration, took as long as Y). As a product Y costs m·n²/2 multiply-adds (10 s at 4096 × 11008 on the 2-core
  // machine, the largest part of a step); it is one only for W·M before the first Q step, and after a Q step where
  // LDLQ's factor is not M's (a jittered or downdated H, tuning passes, round-to-nearest): elsewhere LDLQ gives
  // (A − Q̂)·M from its residuals, and Y = (A − Q̂)·M + L̂·(R̂·M), rank-k again.
  const work = new Float32Array(mp * np);
  const workM = new Float32Array(mp * np);
  const needY = !inOriginal || (k > 0 && o.dataAwareLR);
  /** Y = (W − q)·M into `workM` (q null: Q = 0); `work` is overwritten. */
  const updateY = (q: Float32Array | null): void => {
    if (q) for (let i = 0; i < work.length; i++) work[i] = Wr[i]! - q[i]!;
    timesLower(q ? work : Wr, mp, Mf, np, pool, workM);
  };
  /** ‖(Q + L̂R̂ − W)·M‖² (the rotated-domain error) from Y in `workM`; `work` is overwritten. */
  const rotatedSq = (pair: LowRank | null): number => {
    let s = 0;
    if (!pair) {
      for (let i = 0; i < workM.length; i++) s += workM[i]! * workM[i]!;
      return s;
    }
    pair.rM ??= timesLower(pair.rValues, k, Mf, np, pool); // the LR step's error and the next Q step's use it
    gemmInto(mat(mp, np, work), mat(k, mp, pair.lValues), mat(k, np, pair.rM), {
      transA: true,
      checkFinite: false,
      ...pool,
    });
    for (let i = 0; i < work.length; i++) {
      const d = work[i]! - workM[i]!;
      s += d * d;
    }
    return s;
  };
  let Hc: Mat | null = null;
  if (inOriginal && hd) {
    const c = new Float32Array(hd.data.length);
    for (let i = 0; i < c.length; i++) c[i] = hd.data[i]! * hScale;
    Hc = mat(n, n, c);
  }
  const originalSq = (x: Float32Array): number => {
    // tr(x·H·xᵀ) for x m×n; f32 round-off can take it a hair below 0 when H is singular
    const xh = Hc ? gemm(mat(m, n, x), Hc, { checkFinite: false, ...pool }).data : x;
    let s = 0;
    for (let i = 0; i < x.length; i++) s += xh[i]! * x[i]!;
    return Math.max(0, s);
  };
  if (needY) updateY(null);
  const den = inOriginal ? originalSq(unrotateWeight(Wr, mp, np, m, n, su, sv, pool)) : rotatedSq(null);
  if (!Number.isFinite(den))
    throw new CalderaError('E_VALUE', `caldera: ‖W·H^½‖² = ${den} is not finite in f32: W or H is too large`);
  /** The relative error of the estimate Q + L·R (`q`: Q's values, `pair`: the low-rank pair or null for none). */
  const relError = (q: Float32Array, pair: LowRank | null): number => {
    if (den === 0) return 0;
    if (!inOriginal) return Math.sqrt(rotatedSq(pair) / den);
    const d = work;
    // the estimate rounded to f32 as it is held, then its difference from W
    if (pair) for (let i = 0; i < d.length; i++) d[i] = Math.fround(q[i]! + pair.product[i]!) - Wr[i]!;
    else for (let i = 0; i < d.length; i++) d[i] = q[i]! - Wr[i]!;
    return Math.sqrt(originalSq(unrotateWeight(d, mp, np, m, n, su, sv, pool)) / den);
  };

  /** Rank-k truncated SVD of the mp×np matrix X: u mp×k, s (k), vt k×np, row-major f64. */
  const truncatedSvd = (x: Mat, seed: number): { u: Float64Array; s: Float64Array; vt: Float64Array } => {
    if (o.svd === 'randomized') {
      const r = randomizedSvd(x, k, { seed, powerIters: o.svdPowerIters, ...pool, ...sig });
      return { u: r.u.data, s: r.s, vt: r.vt.data };
    }
    const r = exactSvd(x, sig);
    const c = r.s.length; // min(mp, np)
    const u = new Float64Array(mp * k);
    for (let i = 0; i < mp; i++) for (let j = 0; j < k; j++) u[i * k + j] = r.u.data[i * c + j]!;
    return { u, s: r.s.slice(0, k), vt: r.vt.data.slice(0, k * np) };
  };

  /** L̂·R̂ of the current pair (mp × np, made on the first LR step; a low-rank pair's only full-size array). */
  let product: Float32Array | null = null;
  /** f64 operands of the LR step's small products and solves (2·max(mp, np)·k entries, reused by each). */
  const f64Scratch =
    k > 0 && order.includes('LR') ? new Float64Array(2 * Math.max(mp, np) * k) : new Float64Array(0);
  /** The LR step's pair for A = W − Q (in `work`), Y = A·M being in `workM`. */
  const lowRank = (A: Float32Array, t: number): LowRank => {
    // data-aware rank-k start: SVD of Y = A·M (‖ΔH^½‖ = ‖ΔM‖ since MMᵀ = H), L₀ = U_k, R₀ = Σ_k V_kᵀ M⁻¹
    // (Eckart–Young)
    let L0: Float32Array; // mp × k
    let R0: Float32Array; // k × np
    if (o.dataAwareLR) {
      const svd = truncatedSvd(mat(mp, np, workM), o.seed + 7919 * t);
      L0 = Float32Array.from(svd.u);
      // Σ_k V_kᵀ M⁻¹ = U_kᵀ·A: U_kᵀ·(A·M) = Σ_k V_kᵀ, as the SVD (exact, or the randomized one's SVD of its
      // projection) gives it; a product, where M⁻¹ needed a triangular solve with the f64 factor
      R0 = gemm(mat(mp, k, L0), mat(mp, np, A), { transA: true, checkFinite: false, ...pool }).data;
    } else {
      const svd = truncatedSvd(mat(mp, np, A), o.seed + 7919 * t);
      L0 = new Float32Array(mp * k);
      R0 = new Float32Array(k * np);
      for (let i = 0; i < mp; i++)
        for (let j = 0; j < k; j++) L0[i * k + j] = svd.u[i * k + j]! * Math.sqrt(svd.s[j]!);
      for (let i = 0; i < k; i++)
        for (let j = 0; j < np; j++) R0[i * np + j] = Math.sqrt(svd.s[i]!) * svd.vt[i * np + j]!;
    }
    /**
     * The pair (L̂ᵀ, R̂) as stored and as values, with its product L̂·R̂ made into `product` (only for the pair the step
     * returns: one m·k·n product per step, into the one array, where each better iterate's own fresh product cost a
     * page-faulted mp × np array as well).
     */
    const pairOf = (
      l: { stored: StoredFactor; values: Float32Array },
      r: { stored: StoredFactor; values: Float32Array },
    ): LowRank => {
      product ??= new Float32Array(mp * np);
      gemmInto(mat(mp, np, product), mat(k, mp, l.values), mat(k, np, r.values), {
        transA: true,
        checkFinite: false,
        ...pool,
      });
      return { l: l.stored, r: r.stored, lValues: l.values, rValues: r.values, product, rM: null };
    };
    if (o.lBits === 16 && o.rBits === 16) {
      return pairOf(storeFactor(transposed(L0, mp, k), 16), storeFactor(R0, 16));
    }
    let R = R0;
    // R·H and R·H·Rᵀ, where the last iteration made them (its R̂ is this one's R)
    let RH: Float32Array | null = null;
    let RHRt: Float64Array | null = null;
    let best: { lq: ReturnType<typeof storeFactor>; rq: ReturnType<typeof storeFactor> } | null = null;
    let bestScore = Infinity;
    const Am = mat(mp, np, A);
    /** Quantize L (mp × k) into L̂, fit R to it and quantize R: the pair, R̂'s values and the pair's score. */
    const quantizedPair = (L: Float32Array) => {
      const lq = storeFactor(transposed(L, mp, k), o.lBits);
      // R ← (L̂ᵀL̂)⁻¹·L̂ᵀ·A, the H-weighted optimum too (H sits on the right)
      const LtA = gemm(mat(k, mp, lq.values), Am, { checkFinite: false, ...pool }).data; // k × np
      const Gl = productF64(lq.values, k, null, k, pool, f64Scratch); // L̂ᵀL̂
      // (LtA is read again by the score below: R gets its own array)
      const Rsol = solveSpd(LtA, [k, np], Gl, k, 'left', pool, f64Scratch, new Float32Array(k * np));
      const rq = storeFactor(Rsol, o.rBits);
      // ‖(A − L̂R̂)M‖² − ‖AM‖² = −2⟨L̂ᵀA, R̂H⟩ + ⟨L̂ᵀL̂, R̂HR̂ᵀ⟩
      const RqH = timesH ? timesH(rq.values, k) : rq.values; // the next iteration's R·H (its R is R̂)
      let score = 0;
      for (let i = 0; i < k * np; i++) score -= 2 * LtA[i]! * RqH[i]!;
      const RqHRqt = productF64(RqH, k, rq.values, k, pool, f64Scratch); // R̂HR̂ᵀ
      for (let i = 0; i < k * k; i++) score += Gl[i]! * RqHRqt[i]!;
      return { lq, rq, RqH, RqHRqt, score };
    };
    for (let it = 0; it < Math.max(1, o.lplrIters); it++) {
      // L ← A·H·Rᵀ·(R·H·Rᵀ)⁻¹ (or A·Rᵀ·(R·Rᵀ)⁻¹ data-unaware)
      RH ??= timesH ? timesH(R, k) : R;
      const AHRt = gemm(Am, mat(k, np, RH), { transB: true, checkFinite: false, ...pool }).data; // mp × k
      const G = RHRt ?? productF64(RH, k, R, k, pool, f64Scratch); // R·H·Rᵀ, symmetric up to rounding
      mirrorUpper(tensor('f64', [k, k], G));
      const L = solveSpd(AHRt, [mp, k], G, k, 'right', pool, f64Scratch, AHRt); // AHRt is not read again
      // each component balanced between L and R before L is quantized (the fit of R to L̂ keeps the balance)
      const pair = quantizedPair(balanceAgainst(L, mp, R, np, k, timesH ? { G, meanH } : null));
      if (!best || pair.score < bestScore) {
        bestScore = pair.score;
        best = pair;
      }
      R = pair.rq.values;
      RH = pair.RqH;
      RHRt = pair.RqHRqt;
    }
    return pairOf(best!.lq, best!.rq);
  };

  /**
   * Q̂ for the target A (in place: A is the step's work array, and LDLQ's working array for A − Q̂). LDLQ writes Q̂'s
   * values into `qInto`; with `weightedInto` (LDLQ on a factor derived from M, no tuning passes) also (A − Q̂)·M,
   * from its rounding residuals, and `weighted` is true.
   */
  const quantizeQ = (
    A: Float32Array,
    hq: LdlqHessian | null,
    qInto: Float32Array,
    weightedInto: Float32Array | null,
  ): { codes: LatticeCodes; values: Float32Array; weighted: boolean } => {
    const bits = o.qBits as 2 | 3 | 4;
    const s = rms(A);
    if (s === 0) return { ...latticeRound(A, bits), weighted: false };
    const inScale = optScale(bits) / s;
    for (let i = 0; i < A.length; i++) A[i]! *= inScale; // in place: A is the step's work array
    let planes;
    let values: Float32Array;
    if (hq) {
      const r = ldlq(mat(mp, np, A), hq, {
        quantizer: rounderFor(bits),
        tuneIters: o.tuneIters,
        proxyLoss: false, // the decomposition measures its own error
        // no fresh mp × np arrays (each cost more in page faults than its share of the arithmetic)
        overwriteW: true,
        wHatInto: mat(mp, np, qInto),
        ...(weightedInto ? { weightedErrorInto: mat(mp, np, weightedInto) } : {}),
        ...pool,
        ...(o.signal ? { signal: o.signal } : {}),
      });
      planes = r.codes;
      values = r.wHat.data;
    } else {
      const r = latticeRoundRaw(A, bits); // round to nearest at the codebook's optimal input scale
      planes = r.planes;
      values = r.values;
    }
    // back to A's scale, in place (the array is this call's own), and so the weighted error
    for (let i = 0; i < values.length; i++) values[i] = values[i]! / inScale;
    const weighted = hq !== null && weightedInto !== null;
    if (weighted) for (let i = 0; i < weightedInto.length; i++) weightedInto[i] = weightedInto[i]! / inScale;
    return { codes: { bits, planes, scale: 1 / inScale }, values, weighted };
  };

  const downdated = (lr: Float32Array, hBase: Float64Array): LdlqHessian => {
    // H' = H − M·V_k·V_kᵀ·Mᵀ with V_k the top right singular vectors of (L·R)·M, then a damping repair (P takes
    // `workM`: the Q step that this prepares makes Y anew)
    const P = mat(mp, np, timesLower(lr, mp, Mf, np, pool, workM));
    const svd = truncatedSvd(P, o.seed + 1);
    const C = gemm(mat(k, np, Float32Array.from(svd.vt)), mat(np, np, Mf), {
      transB: true,
      checkFinite: false,
      ...pool,
    }).data; // (M V)ᵀ
    const out = Float64Array.from(hBase);
    for (let t = 0; t < k; t++)
      for (let i = 0; i < np; i++) {
        const ci = C[t * np + i]!;
        if (ci === 0) continue;
        for (let j = 0; j < np; j++) out[i * np + j]! -= ci * C[t * np + j]!;
      }
    let mean = 0;
    for (let i = 0; i < np; i++) mean += out[i * np + i]!;
    mean = Math.abs(mean / np);
    for (let i = 0; i < np; i++) out[i * np + i]! += 0.01 * (mean || 1);
    return prepareQ(out);
  };

  const iters = order.length === 1 ? 1 : o.outerIters;
  // Q̂'s values: zero before the first Q step; LDLQ writes each step's into this array
  let Qv: Float32Array = new Float32Array(mp * np);
  const qValues = Qv;
  let qCodes: LatticeCodes | null = null;
  let lr: LowRank | null = null;
  const errors = { LR: [] as number[], Q: [] as number[] };
  let best: { q: LatticeCodes | null; lr: LowRank | null; error: number } | null = null;
  const updated = new Set<string>();
  for (let t = 0; t < iters; t++) {
    for (const step of order) {
      throwIfAborted(o.signal, 'caldera');
      if (step === 'LR') {
        const A = work;
        for (let i = 0; i < A.length; i++) A[i] = Wr[i]! - Qv[i]!;
        lr = lowRank(A, t);
      } else {
        const A = work;
        for (let i = 0; i < A.length; i++) A[i] = Wr[i]! - (lr ? lr.product[i]! : 0);
        const hq = !o.dataAwareQ ? null : hDown && lr ? downdated(lr.product, hDown) : factors.baseQ;
        // Y = (W − Q̂)·M = (A − Q̂)·M + L̂·(R̂·M): LDLQ on a factor derived from M gives the first term from its
        // rounding residuals, where the product cost m·n²/2 multiply-adds (the largest part of a step at n = 11008)
        const viaLdlq =
          needY && hq !== null && hq === factors.baseQ && factors.baseQFromM && o.tuneIters === 0;
        const q = quantizeQ(A, hq, qValues, viaLdlq ? workM : null);
        if (hDown) factors.baseQ = null; // every later Q step follows an LR step and downdates
        Qv = q.values;
        qCodes = q.codes;
        if (q.weighted) {
          if (lr) {
            lr.rM ??= timesLower(lr.rValues, k, Mf, np, pool);
            gemmInto(mat(mp, np, workM), mat(k, mp, lr.lValues), mat(k, np, lr.rM), {
              transA: true,
              beta: 1,
              checkFinite: false,
              ...pool,
            });
          }
        } else if (needY) updateY(Qv);
      }
      updated.add(step);
      const e = relError(Qv, lr);
      errors[step].push(e);
      o.onProgress?.({ iteration: t + 1, iterations: iters, step, error: e });
      if (updated.size === order.length && (!best || e < best.error)) best = { q: qCodes, lr, error: e };
    }
  }
  const kept = best!;
  const q = kept.q;
  const empty: StoredFactor = { kind: 'dense', values: new Float32Array(0) };
  const l = kept.lr?.l ?? empty;
  const r = kept.lr?.r ?? empty;
  const factorBits = (f: StoredFactor, cols: number) =>
    k === 0 ? 0 : f.kind === 'dense' ? 16 * k * cols : f.codes.bits * k * cols + 32;
  // a low-rank-only decomposition has no Q (its checkpoint stores no Q tensors)
  const qStoreBits = q ? q.bits * mp * np + 32 : 0;
  const signBits = o.hadamard ? 16 * (mp + np) : 0;
  const bitsPerWeight = (qStoreBits + factorBits(l, mp) + factorBits(r, np) + signBits) / (m * n);
  const qb = q ? q.bits : 0;
  const paperBitsPerWeight =
    qb +
    (k *
      ((k ? (l.kind === 'dense' ? 16 : l.codes.bits) : 0) * m +
        (k ? (r.kind === 'dense' ? 16 : r.codes.bits) : 0) * n)) /
      (m * n);
  return {
    shape: [m, n],
    padded: [mp, np],
    rank: k,
    scale: g,
    hadamard: o.hadamard,
    su,
    sv,
    q,
    l,
    r,
    bitsPerWeight,
    paperBitsPerWeight,
    error: kept.error,
    errors,
    seed: o.seed,
  };
}
