/**
 * Orthogonal Hadamard transforms `M_n = (H_K ⊗ H_{2^p}) / √n` for `n = K·2^p` (algorithm brief §3.1), with
 * flat index `a·2^p + b`: a fast Walsh–Hadamard transform over `b` and a dense `H_K` mix over `a`.
 *
 * `H_K` for K > 1: Paley I (order q+1, q ≡ 3 mod 4 prime) for K ∈ {12, 20, 60, 108, 140}, Paley II (order
 * 2(q+1), q ≡ 1 mod 4 prime) for K ∈ {28, 36}, Sylvester doubling for K = 40, and Williamson's array of four
 * symmetric circulant ±1 matrices for K = 4t ∈ {44, 52, 76, 148, 156, 172} (t = 11, 13, 19, 37, 39, 43; the four
 * first rows are published sequences — Hall 1983, and Londoño 2013 for t = 39). Every size n = K·2^p with one of
 * these K is supported — e.g. 11 008 = 172·64 (Llama-2-7B), 5 632 = 44·128 (TinyLlama), 4 864 = 76·64 (Qwen2-0.5B),
 * 18 944 = 148·128 (Qwen2-7B), 14 336 = 28·512; other sizes are padded by callers to {@link nextHadamardSize}.
 */
import {
  assertBooleanOptions,
  assertObject,
  CalderaError,
  describeValue,
  type Matrix,
  type Tensor,
} from '@caldera/core';
import { assertCount, assertFiniteMatrix, assertFiniteScalar, assertMatrix, newMatrix } from './check.js';
import { gemmInto } from './gemm.js';
import type { Pool } from './pool/pool.js';

/** The orders K > 1 with a construction here, largest first (the search order for a size n). */
export const HADAMARD_BASE_ORDERS: readonly number[] = [
  172, 156, 148, 140, 108, 76, 60, 52, 44, 40, 36, 28, 20, 12,
];

function isPrime(q: number): boolean {
  if (q < 2) return false;
  for (let d = 2; d * d <= q; d++) if (q % d === 0) return false;
  return true;
}

/** Legendre symbol χ(x) over GF(q), q an odd prime. */
function chi(x: number, q: number): number {
  const r = ((x % q) + q) % q;
  if (r === 0) return 0;
  let acc = 1;
  let base = r;
  let e = (q - 1) / 2;
  while (e > 0) {
    if (e & 1) acc = (acc * base) % q;
    base = (base * base) % q;
    e >>= 1;
  }
  return acc === 1 ? 1 : -1;
}

function paley1(q: number): Int8Array {
  const k = q + 1;
  const h = new Int8Array(k * k);
  // S = [[0, 1ᵀ], [−1, Q]], H = S + I, Q_ij = χ(j − i)
  for (let i = 0; i < k; i++)
    for (let j = 0; j < k; j++) {
      let s: number;
      if (i === 0 && j === 0) s = 0;
      else if (i === 0) s = 1;
      else if (j === 0) s = -1;
      else s = chi(j - i, q);
      h[i * k + j] = s + (i === j ? 1 : 0);
    }
  return h;
}

function paley2(q: number): Int8Array {
  const c = q + 1;
  const k = 2 * c;
  const h = new Int8Array(k * k);
  // C = [[0, 1ᵀ], [1, Q]] (symmetric conference); H = C ⊗ [[1,1],[1,−1]] + I ⊗ [[1,−1],[−1,−1]]
  for (let i = 0; i < c; i++)
    for (let j = 0; j < c; j++) {
      const cij = i === 0 && j === 0 ? 0 : i === 0 || j === 0 ? 1 : chi(j - i, q);
      for (let a = 0; a < 2; a++)
        for (let b = 0; b < 2; b++) {
          const t1 = cij * (a === 1 && b === 1 ? -1 : 1);
          const t2 = i === j ? (a === 0 && b === 0 ? 1 : -1) : 0;
          h[(2 * i + a) * k + 2 * j + b] = t1 + t2;
        }
    }
  return h;
}

function sylvesterDouble(h: Int8Array, k: number): Int8Array {
  const out = new Int8Array(4 * k * k);
  for (let i = 0; i < k; i++)
    for (let j = 0; j < k; j++) {
      const v = h[i * k + j]!;
      out[i * 2 * k + j] = v;
      out[i * 2 * k + j + k] = v;
      out[(i + k) * 2 * k + j] = v;
      out[(i + k) * 2 * k + j + k] = -v;
    }
  return out;
}

/** First rows of Williamson quadruples (symmetric circulants A, B, C, D with A² + B² + C² + D² = 4t·I), by t. */
const WILLIAMSON: Readonly<Record<number, readonly [string, string, string, string]>> = {
  11: ['++--------+', '++-+-++-+-+', '++-++--++-+', '+-++----++-'],
  13: ['++++-+--+-+++', '+---+-++-+---', '++---+--+---+', '++---+--+---+'],
  19: ['++--+++-+--+-+++--+', '++-++--+-++-+--++-+', '+-+---++++++++---+-', '++--+-++++++++-+--+'],
  37: [
    '+--+-+-+-++---+--++++--+---++-+-+-+--',
    '+---++-++--+-+-++----++-+-+--++-++---',
    '+++++-+-----++----++----++-----+-++++',
    '+--+++-+-----+----++----+-----+-+++--',
  ],
  39: [
    '+++--+-+-----+--++----++--+-----+-+--++',
    '+++--++-+---+-+--+----+--+-+---+-++--++',
    '++++---+--++----+-+--+-+----++--+---+++',
    '+---++-+-+-----+++-++-+++-----+-+-++---',
  ],
  43: [
    '++---++++-+--+--++--------++--+--+-++++---+',
    '+++-+-++--+-+-++++-+----+-++++-+-+--++-+-++',
    '++-++++++----+-+--++-++-++--+-+----++++++-+',
    '+---++--++++-+-+++-++--++-+++-+-++++--++---',
  ],
};

/**
 * Williamson's array `[[A, B, C, D], [−B, A, −D, C], [−C, D, A, −B], [−D, −C, B, A]]`: with symmetric, pairwise
 * commuting (circulant) blocks, `H·Hᵀ = diag(A² + B² + C² + D²) = 4t·I`.
 */
function williamson(t: number): Int8Array {
  const rows = WILLIAMSON[t]!.map((r) => Array.from(r, (c) => (c === '+' ? 1 : -1)));
  const k = 4 * t;
  const h = new Int8Array(k * k);
  // block (bi, bj) = sign · circulant(rows[which]); entry (i, j) of circulant(r) is r[(j − i) mod t]
  const which = [
    [0, 1, 2, 3],
    [1, 0, 3, 2],
    [2, 3, 0, 1],
    [3, 2, 1, 0],
  ];
  const sign = [
    [1, 1, 1, 1],
    [-1, 1, -1, 1],
    [-1, 1, 1, -1],
    [-1, -1, 1, 1],
  ];
  for (let bi = 0; bi < 4; bi++)
    for (let bj = 0; bj < 4; bj++) {
      const r = rows[which[bi]![bj]!]!;
      const sg = sign[bi]![bj]!;
      for (let i = 0; i < t; i++)
        for (let j = 0; j < t; j++) h[(bi * t + i) * k + bj * t + j] = sg * r[(j - i + t) % t]!;
    }
  return h;
}

const baseCache = new Map<number, Int8Array>();

/** The ±1 Hadamard matrix of order K (row-major, K×K) used in `M_n`; K = 1 gives [1]. */
export function hadamardBase(k: number): Int8Array {
  const hit = baseCache.get(k);
  if (hit) return hit;
  let h: Int8Array;
  if (k === 1) h = Int8Array.of(1);
  else if (k === 40) h = sylvesterDouble(hadamardBase(20), 20);
  else if (k % 4 === 0 && WILLIAMSON[k / 4]) h = williamson(k / 4);
  else if (isPrime(k - 1) && (k - 1) % 4 === 3) h = paley1(k - 1);
  else if (k % 2 === 0 && isPrime(k / 2 - 1) && (k / 2 - 1) % 4 === 1) h = paley2(k / 2 - 1);
  else throw new CalderaError('E_UNSUPPORTED', `no Hadamard construction of order ${k} is implemented`);
  baseCache.set(k, h);
  return h;
}

/** `{ K, p }` with `n = K·2^p` for the first supported K (largest first), or null when n is not supported. */
export function hadamardFactor(n: number): { K: number; p: number } | null {
  if (!Number.isInteger(n) || n <= 0) return null;
  for (const K of [...HADAMARD_BASE_ORDERS, 1]) {
    if (n % K !== 0) continue;
    const r = n / K;
    if ((r & (r - 1)) === 0) return { K, p: Math.round(Math.log2(r)) };
  }
  return null;
}

/** True when `M_n` is available. */
export function hadamardSupported(n: number): boolean {
  return hadamardFactor(n) !== null;
}

/** Smallest supported size ≥ n (the size to zero-pad to). `n` must be a finite number (else `E_VALUE`). */
export function nextHadamardSize(n: number): number {
  assertFiniteScalar(n, 'nextHadamardSize', 'n');
  let m = Math.max(1, Math.ceil(n));
  while (!hadamardSupported(m)) m++;
  return m;
}

/** In-place unnormalised Walsh–Hadamard transform of `len` (a power of two) values at `off`. */
function fwht(v: Float32Array | Float64Array, off: number, len: number): void {
  for (let h = 1; h < len; h <<= 1) {
    for (let i = off; i < off + len; i += h << 1) {
      for (let j = i; j < i + h; j++) {
        const a = v[j]!;
        const b = v[j + h]!;
        v[j] = a + b;
        v[j + h] = a - b;
      }
    }
  }
}

/** Options of {@link hadamardRowsInPlace} and {@link hadamardColumnsInPlace}. */
export interface HadamardInPlaceOptions {
  /** Apply `M_nᵀ` instead of `M_n`. Default false. */
  transpose?: boolean;
  /** Index in `data` of the matrix's first entry, a non-negative integer. Default 0. */
  offset?: number;
  /** Worker pool for the products of the `H_K` mix (only where K > 1 and the matrix is large). Default: none. */
  pool?: Pool;
}

/**
 * The checks both in-place transforms make: `data` a Float32Array or Float64Array (another typed array `E_DTYPE`,
 * anything else `E_VALUE`), `n` supported (`E_UNSUPPORTED` naming the size to pad to), `count` and `offset`
 * non-negative integers (`E_VALUE`), `count·n` entries from `offset` inside `data` (`E_SHAPE`, naming `counted`).
 * Returns `n`'s factors.
 */
function checkInPlace(
  what: string,
  data: Float32Array | Float64Array,
  count: number,
  n: number,
  counted: string,
  offset: number,
): { K: number; p: number } {
  if (!(data instanceof Float32Array) && !(data instanceof Float64Array)) {
    // an Int32Array's sums would wrap and its scaled values truncate: silently wrong, so refused (O(1) check)
    assertObject(data, what, 'data', 'a Float32Array or Float64Array');
    const view = ArrayBuffer.isView(data);
    throw new CalderaError(
      view ? 'E_DTYPE' : 'E_VALUE',
      `${what}: data must be a Float32Array or Float64Array, got ` +
        (view ? (data as object).constructor.name : describeValue(data)),
    );
  }
  // (a missing n was blamed on nextHadamardSize, called for the message below)
  assertCount(n, 1, what, 'n');
  const f = hadamardFactor(n);
  if (!f)
    throw new CalderaError(
      'E_UNSUPPORTED',
      `hadamard: size ${n} is not K·2^p for a supported K; pad to ${nextHadamardSize(n)}`,
    );
  assertCount(count, 0, 'hadamard', counted);
  assertCount(offset, 0, 'hadamard', 'offset');
  if (offset + count * n > data.length)
    throw new CalderaError(
      'E_SHAPE',
      `hadamard: ${count} ${counted} of ${n} exceed the data length ${data.length}`,
    );
  return f;
}

/**
 * Replace each of `rows` consecutive rows (length n) of `data` by `v·M_n` (or `v·M_nᵀ` with `transpose`).
 * The kernel the runtimes use on activations. `data` must be a Float32Array or Float64Array (another typed array is
 * `E_DTYPE`, anything else `E_VALUE`), `rows` and `offset` non-negative integers (`E_VALUE`), and the rows must fit
 * in `data` (`E_SHAPE`).
 */
export function hadamardRowsInPlace(
  data: Float32Array | Float64Array,
  rows: number,
  n: number,
  options: HadamardInPlaceOptions = {},
): void {
  const off0 = options.offset ?? 0;
  const { K } = checkInPlace('hadamardRowsInPlace', data, rows, n, 'rows', off0);
  const P = n / K;
  const scale = 1 / Math.sqrt(n);
  const H = hadamardBase(K);
  if (K > 1 && rows >= MIX_GEMM_MIN_ROWS) {
    mixRowsByGemm(data, off0, rows, n, K, H, options.transpose ?? false, scale, options.pool);
    return;
  }
  const tmp = K > 1 ? new Float64Array(n) : null;
  for (let r = 0; r < rows; r++) {
    const o = off0 + r * n;
    for (let a = 0; a < K; a++) fwht(data, o + a * P, P);
    if (tmp) {
      // out[a'] = Σ_a H[a][a'] V[a]  (v·M);  transpose: out[a'] = Σ_a H[a'][a] V[a]
      tmp.fill(0);
      for (let a = 0; a < K; a++)
        for (let a2 = 0; a2 < K; a2++) {
          const hv = options.transpose ? H[a2 * K + a]! : H[a * K + a2]!;
          const src = o + a * P;
          const dst = a2 * P;
          if (hv === 1) for (let b = 0; b < P; b++) tmp[dst + b]! += data[src + b]!;
          else for (let b = 0; b < P; b++) tmp[dst + b]! -= data[src + b]!;
        }
      for (let i = 0; i < n; i++) data[o + i] = tmp[i]! * scale;
    } else {
      for (let i = 0; i < n; i++) data[o + i]! *= scale;
    }
  }
}

/** Columns per pass of {@link hadamardColumnsInPlace}'s Walsh–Hadamard transforms (2^p rows of them in cache). */
const FWHT_COLUMN_CHUNK = 512;

/**
 * Replace each column `v` of the n × `cols` row-major matrix at `data` by `(vᵀ·M_n)ᵀ = M_nᵀ·v` (with `transpose`,
 * `M_n·v`): the matrix X becomes `M_nᵀ·X`, the transpose of what {@link hadamardRowsInPlace} makes of Xᵀ, to the
 * bit (from 16 columns on, as its batched mix of 16 rows or more; below, each column through it). Without the
 * transposes that costs: the Walsh–Hadamard butterflies combine whole rows, and the `H_K` mix is one product
 * `H_Kᵀ·X` with X read as K rows of 2^p·cols values, in chunks of columns. The same checks as
 * {@link hadamardRowsInPlace}, with `cols` for its `rows`.
 */
export function hadamardColumnsInPlace(
  data: Float32Array | Float64Array,
  n: number,
  cols: number,
  options: HadamardInPlaceOptions = {},
): void {
  const off0 = options.offset ?? 0;
  const { K } = checkInPlace('hadamardColumnsInPlace', data, cols, n, 'columns', off0);
  const P = n / K;
  const scale = 1 / Math.sqrt(n);
  const transpose = options.transpose ?? false;
  if (K > 1 && cols < MIX_GEMM_MIN_ROWS) {
    // few columns: each through the rows' transform (its row-by-row mix), copied out and back
    const line = data instanceof Float64Array ? new Float64Array(n) : new Float32Array(n);
    for (let c = 0; c < cols; c++) {
      for (let i = 0; i < n; i++) line[i] = data[off0 + i * cols + c]!;
      hadamardRowsInPlace(line, 1, n, { transpose });
      for (let i = 0; i < n; i++) data[off0 + i * cols + c] = line[i]!;
    }
    return;
  }
  // the butterflies of fwht, along b = 0 … P − 1 for each a, on whole row segments: the same sums as fwht per column
  for (let a = 0; a < K; a++)
    for (let c0 = 0; c0 < cols; c0 += FWHT_COLUMN_CHUNK) {
      const c1 = Math.min(cols, c0 + FWHT_COLUMN_CHUNK);
      for (let h = 1; h < P; h <<= 1)
        for (let i = 0; i < P; i += h << 1)
          for (let j = i; j < i + h; j++) {
            const u = off0 + (a * P + j) * cols;
            const v = u + h * cols;
            for (let c = c0; c < c1; c++) {
              const x = data[u + c]!;
              const y = data[v + c]!;
              data[u + c] = x + y;
              data[v + c] = x - y;
            }
          }
    }
  if (K === 1) {
    for (let i = off0; i < off0 + n * cols; i++) data[i]! *= scale;
    return;
  }
  // Out[a', t] = Σ_a hm[a][a']·X[a, t] with X[a, t] the K × (P·cols) view: Out = hmᵀ·X, by chunks of t
  const H = hadamardBase(K);
  const hmT = new Float64Array(K * K); // hmT[a'][a] = H[a][a'] (v·M) or H[a'][a] (v·Mᵀ)
  for (let a = 0; a < K; a++)
    for (let a2 = 0; a2 < K; a2++) hmT[a2 * K + a] = transpose ? H[a2 * K + a]! : H[a * K + a2]!;
  const width = P * cols;
  const chunk = Math.max(1, Math.min(width, Math.floor(MIX_BATCH_VALUES / K)));
  const mixed = new Float64Array(K * chunk);
  const x = data instanceof Float64Array ? data : null;
  const gathered = x ? null : new Float64Array(K * chunk); // an f32 X is mixed in f64, as the row transform does
  for (let t0 = 0; t0 < width; t0 += chunk) {
    const cnt = Math.min(chunk, width - t0);
    let src: Tensor<'f64'>;
    if (x) src = { dtype: 'f64', shape: [K, cnt], strides: [width, 1], offset: off0 + t0, data: x };
    else {
      for (let a = 0; a < K; a++) {
        const o = off0 + a * width + t0;
        for (let t = 0; t < cnt; t++) gathered![a * cnt + t] = data[o + t]!;
      }
      src = { dtype: 'f64', shape: [K, cnt], strides: [cnt, 1], offset: 0, data: gathered! };
    }
    const out: Tensor<'f64'> = { dtype: 'f64', shape: [K, cnt], strides: [cnt, 1], offset: 0, data: mixed };
    const hm: Tensor<'f64'> = { dtype: 'f64', shape: [K, K], strides: [K, 1], offset: 0, data: hmT };
    gemmInto(out, hm, src, { checkFinite: false, ...(options.pool ? { pool: options.pool } : {}) });
    for (let a = 0; a < K; a++) {
      const o = off0 + a * width + t0;
      for (let t = 0; t < cnt; t++) data[o + t] = mixed[a * cnt + t]! * scale;
    }
  }
}

/** From this many rows on, {@link hadamardRowsInPlace} mixes by gemm ({@link mixRowsByGemm}). */
const MIX_GEMM_MIN_ROWS = 16;
/** Values per batch of {@link mixRowsByGemm} (two f64 buffers of this size: 16 MiB). */
const MIX_BATCH_VALUES = 1 << 20;

/**
 * The transform of {@link hadamardRowsInPlace} for many rows with K > 1: the Walsh–Hadamard transforms row by row as
 * there, then the dense `H_K` mix of a batch of rows as one f64 gemm, `Out[(r, b), a'] = Σ_a V[(r, b), a]·H[a][a']`
 * (the batch gathered with index order (row, b, a)). The products by ±1 are exact and the sums are f64, as in the
 * row-by-row mix; only their order differs (WebAssembly SIMD instead of a scalar loop, about 5× faster).
 */
function mixRowsByGemm(
  data: Float32Array | Float64Array,
  off0: number,
  rows: number,
  n: number,
  K: number,
  H: Int8Array,
  transpose: boolean,
  scale: number,
  pool: Pool | undefined,
): void {
  const P = n / K;
  const hm = new Float64Array(K * K); // hm[a][a'] = H[a][a'] (v·M) or H[a'][a] (v·Mᵀ)
  for (let a = 0; a < K; a++)
    for (let a2 = 0; a2 < K; a2++) hm[a * K + a2] = transpose ? H[a2 * K + a]! : H[a * K + a2]!;
  const batch = Math.max(1, Math.min(rows, Math.floor(MIX_BATCH_VALUES / n)));
  const gathered = new Float64Array(batch * n);
  const mixed = new Float64Array(batch * n);
  const mat = (d: Float64Array, r: number, c: number): Tensor<'f64'> => ({
    dtype: 'f64',
    shape: [r, c],
    strides: [c, 1],
    offset: 0,
    data: d,
  });
  for (let r0 = 0; r0 < rows; r0 += batch) {
    const cnt = Math.min(batch, rows - r0);
    for (let r = 0; r < cnt; r++) {
      const o = off0 + (r0 + r) * n;
      for (let a = 0; a < K; a++) fwht(data, o + a * P, P);
      const g = r * n;
      for (let a = 0; a < K; a++) for (let b = 0; b < P; b++) gathered[g + b * K + a] = data[o + a * P + b]!;
    }
    gemmInto(mat(mixed, cnt * P, K), mat(gathered, cnt * P, K), mat(hm, K, K), {
      checkFinite: false,
      ...(pool ? { pool } : {}),
    });
    for (let r = 0; r < cnt; r++) {
      const o = off0 + (r0 + r) * n;
      const g = r * n;
      for (let a = 0; a < K; a++)
        for (let b = 0; b < P; b++) data[o + a * P + b] = mixed[g + b * K + a]! * scale;
    }
  }
}

/** Options of {@link hadamard}. */
export interface HadamardOptions {
  /** Apply `M_nᵀ` instead of `M_n`. Default false. */
  transpose?: boolean;
}

/**
 * Each row `v` of `x` (r × n) mapped to `v·M_n` (or `v·M_nᵀ`), as a new contiguous matrix of x's dtype. Rows of length
 * 0 are their own transform (an [r, 0] matrix gives an [r, 0] matrix); other sizes without an `M_n` are
 * `E_UNSUPPORTED`; a non-finite entry is `E_VALUE` naming it, as in every routine of this package (it spread NaN over
 * its row). The in-place `hadamardRowsInPlace` that the runtimes call per token does not check.
 */
export function hadamard<T extends Matrix>(x: T, options: HadamardOptions = {}): T {
  assertMatrix(x, 'hadamard', 'x');
  assertBooleanOptions(options, 'hadamard', ['transpose']);
  assertFiniteMatrix(x, 'hadamard', 'x');
  const [r, n] = x.shape as [number, number];
  const out = newMatrix(x.dtype, r, n) as Tensor<'f32'> | Tensor<'f64'>;
  if (n === 0) return out as T; // nothing to mix (no M_0 to build: `hadamardFactor(0)` is null)
  for (let i = 0; i < r; i++)
    for (let j = 0; j < n; j++)
      out.data[i * n + j] = x.data[x.offset + i * x.strides[0]! + j * x.strides[1]!]!;
  hadamardRowsInPlace(out.data, r, n, options);
  return out as T;
}
