import {
  assertBooleanOptions,
  assertObject,
  CalderaError,
  shownValue,
  tensor,
  type Tensor,
} from '@caldera/core';
import { mirrorUpper, syrkInto, type Pool } from '@caldera/linalg';
import { checkDamping } from './damping.js';

/** Options for {@link finalizeHessian}. */
export interface HessianOptions {
  /**
   * Damping σ added to the diagonal after normalising H to unit mean diagonal: `H ← H/mean(diag H) + σI`.
   * Default 0.01, the reference implementation's `sigma_reg` (1 % of the mean diagonal).
   */
  damping?: number;
  /**
   * Make H in the accumulator's own n² array instead of a new one (default false): the accumulator is spent, every
   * later use of it `E_VALUE`. For a caller done with the sums: at n = 11008 a fresh array is 0.97 GB of page faults.
   */
  consume?: boolean;
}

/** Options of {@link HessianAccumulator}. */
export interface HessianAccumulatorOptions {
  /**
   * A `@caldera/linalg` worker pool (`createPool`) for the `Σ xxᵀ` products: they are split over its threads, to the
   * same bits as without it. Default: the calling thread.
   */
  pool?: Pool;
  /**
   * Bytes of f32 rows held back and added in one product (default 64 MiB: 1524 rows at n = 11008; 0: each `add` is a
   * product of its own). Each product reads and writes all n² sums: with windows of 128 rows at n = 11008 that
   * traffic cost more than the products. On the WebAssembly kernels, windows whose row counts are multiples of 128 give
   * the same bits with any buffer (the kernel sums 128 rows at a time into the f64 sums); other windows, and linalg's
   * TypeScript path (no SIMD, or products under 8192 multiply-adds), the same values to f64 rounding.
   */
  bufferBytes?: number;
}

/** {@link HessianAccumulatorOptions.bufferBytes}'s default. */
const BUFFER_BYTES = 64 * 2 ** 20;

/**
 * Streaming accumulator of the second moment `Σ xxᵀ` of the inputs of one linear layer (one row per token),
 * in float64, so that millions of f32 rows add up without loss. Partial accumulators of disjoint token sets
 * merge exactly by {@link HessianAccumulator.merge} (addition in f64 is what makes sharded calibration possible).
 */
export class HessianAccumulator {
  readonly n: number;
  /** Rows added so far (those still held in the buffer included). */
  count = 0;
  private readonly sums: Float64Array;
  private readonly pool: Pool | undefined;
  /** The most rows the buffer holds (0: no buffer). */
  private readonly bufferRows: number;
  /** f32 rows added but not yet in `sums`: the first `pending` rows of `buffer`, which grows to `bufferRows`. */
  private buffer: Float32Array | null = null;
  private pending = 0;
  /** The sums were handed to finalizeHessian (`consume`). */
  private spent = false;

  constructor(n: number, options: HessianAccumulatorOptions = {}) {
    if (!Number.isInteger(n) || n <= 0)
      throw new CalderaError('E_VALUE', `Hessian size must be a positive integer, got ${n}`);
    assertObject(options, 'HessianAccumulator', 'options', 'an options object such as { pool }');
    const bytes = options.bufferBytes ?? BUFFER_BYTES;
    if (typeof bytes !== 'number' || !Number.isInteger(bytes) || bytes < 0)
      throw new CalderaError(
        'E_VALUE',
        `HessianAccumulator: bufferBytes must be a non-negative integer, got ${shownValue(bytes)}`,
      );
    this.n = n;
    this.sums = new Float64Array(n * n);
    this.pool = options.pool;
    this.bufferRows = Math.floor(bytes / (4 * n));
  }

  /**
   * Σ xxᵀ, row-major `n × n`, with every row added so far (buffered rows are added first); its upper triangle is what
   * counts (as {@link HessianAccumulator.fromSums} takes it), the lower one is not kept up to date.
   */
  get sum(): Float64Array {
    const sums = this.sumsFor('sum');
    this.buffer = null; // read at the end, as a rule: the buffer's memory goes back (another add makes a new one)
    return sums;
  }

  /**
   * @internal The sums with every row in them (buffered rows added), for `what`; `E_VALUE` naming it once
   * {@link HessianAccumulator.takeSums} has handed the sums over.
   */
  sumsFor(what: string): Float64Array {
    this.checkLive(what);
    this.flush();
    return this.sums;
  }

  /**
   * An accumulator holding given partial sums (upper triangle of Σxxᵀ, full n×n storage) of `count` rows. The upper
   * triangle must be finite and its diagonal (sums of squares) non-negative, else `E_VALUE` naming the entry: sums
   * read from a file are checked here, once, since a NaN off the diagonal would not show in the trace that
   * {@link finalizeHessian} checks first (the lower triangle is not read).
   */
  static fromSums(n: number, sum: Float64Array, count: number): HessianAccumulator {
    const acc = new HessianAccumulator(n);
    assertObject(sum, 'HessianAccumulator.fromSums', 'sum', 'a Float64Array');
    if (sum.length !== n * n)
      throw new CalderaError('E_SHAPE', `Hessian sums have ${sum.length} values, expected ${n}·${n}`);
    if (!Number.isInteger(count) || count < 0)
      throw new CalderaError('E_VALUE', `Hessian row count must be a non-negative integer, got ${count}`);
    for (let i = 0; i < n; i++) {
      for (let j = i; j < n; j++) {
        const v = sum[i * n + j]!;
        if (!Number.isFinite(v))
          throw new CalderaError('E_VALUE', `Hessian sums hold a non-finite value ${v} at (${i}, ${j})`);
      }
      const diag = sum[i * n + i]!;
      if (diag < 0)
        throw new CalderaError(
          'E_VALUE',
          `Hessian sums have a negative diagonal entry ${diag} at (${i}, ${i}), not a sum of squares`,
        );
    }
    acc.sums.set(sum);
    acc.count = count;
    return acc;
  }

  /**
   * Add `rows` input vectors stored row-major in `x` (length rows·n): `Σ += xᵀx` by linalg's `syrkInto`, whose
   * products of f32 inputs are exact in f64 and whose sums are f64 (WebAssembly SIMD, split over the pool's threads
   * when there is one). f32 rows are copied into a buffer and added with the next calls' in one product
   * ({@link HessianAccumulatorOptions.bufferBytes}); `x` may be reused once this returns. The same calls in the same
   * order, with the same `bufferBytes`, give the same bits.
   */
  add(x: Float32Array | Float64Array, rows: number): void {
    const n = this.n;
    this.checkLive('add');
    assertObject(x, 'HessianAccumulator.add', 'x', 'a Float32Array or Float64Array');
    if (!Number.isInteger(rows) || rows < 0)
      throw new CalderaError('E_VALUE', `Hessian row count must be a non-negative integer, got ${rows}`);
    if (x.length !== rows * n) {
      throw new CalderaError(
        'E_SHAPE',
        `Hessian input has ${x.length} values, expected rows·n = ${rows}·${n}`,
      );
    }
    if (rows === 0) return;
    this.count += rows;
    // whole calls stay together: a call's rows are not split between two products; rows that are not buffered (f64,
    // or more than the buffer holds) go in after the buffered ones
    const direct = !(x instanceof Float32Array) || rows > this.bufferRows;
    if (direct || this.pending + rows > this.bufferRows) this.flush();
    if (direct) {
      this.product(x instanceof Float32Array ? tensor('f32', [rows, n], x) : tensor('f64', [rows, n], x));
      return;
    }
    const need = (this.pending + rows) * n;
    if (!this.buffer || this.buffer.length < need) {
      // grows by doubling, to at most bufferRows rows: a small model's few windows take no more than they need
      const grown = new Float32Array(
        Math.min(this.bufferRows * n, Math.max(need, 2 * (this.buffer?.length ?? 0))),
      );
      if (this.buffer) grown.set(this.buffer.subarray(0, this.pending * n));
      this.buffer = grown;
    }
    this.buffer.set(x.subarray(0, rows * n), this.pending * n);
    this.pending += rows;
  }

  /** Add the buffered rows to the sums. */
  private flush(): void {
    if (this.pending === 0) return;
    const rows = this.pending;
    this.pending = 0;
    this.product(tensor('f32', [rows, this.n], this.buffer!.subarray(0, rows * this.n)));
  }

  /** `sums += xᵀx` on the upper triangle (the lower one is never read). */
  private product(xs: Tensor<'f32'> | Tensor<'f64'>): void {
    const n = this.n;
    // non-finite inputs are not checked here: they reach the sums (a non-finite x_i makes diagonal (i, i)
    // non-finite), and finalizeHessian refuses such a Hessian (E_VALUE), as it did with the scalar loop before
    syrkInto(tensor('f64', [n, n], this.sums), xs, {
      beta: 1,
      checkFinite: false,
      triangle: 'upper',
      pool: this.pool,
    });
  }

  /** Add another accumulator's sums (exact in the sense of f64 addition). */
  merge(other: HessianAccumulator): void {
    assertObject(other, 'HessianAccumulator.merge', 'other', 'a HessianAccumulator');
    if (other.n !== this.n)
      throw new CalderaError('E_SHAPE', `cannot merge Hessians of size ${other.n} and ${this.n}`);
    const mine = this.sumsFor('merge');
    const theirs = other.sumsFor('merge');
    for (let i = 0; i < mine.length; i++) mine[i]! += theirs[i]!;
    this.count += other.count;
  }

  /** The raw second moment `XᵀX / N` as a full symmetric f64 matrix (a new array). */
  secondMoment(): Tensor<'f64'> {
    const sum = this.sumsFor('secondMoment');
    if (this.count === 0) throw new CalderaError('E_VALUE', 'Hessian has no samples');
    const n = this.n;
    const h = new Float64Array(n * n);
    const inv = 1 / this.count;
    for (let i = 0; i < n; i++) for (let j = i; j < n; j++) h[i * n + j] = sum[i * n + j]! * inv;
    const t = tensor('f64', [n, n], h);
    mirrorUpper(t);
    return t;
  }

  /**
   * @internal The sums with every row in them, for {@link finalizeHessian}'s `consume`: the accumulator is spent
   * (every later use is `E_VALUE`), since H is then made in this array.
   */
  takeSums(): Float64Array {
    const sums = this.sumsFor('finalizeHessian');
    this.spent = true;
    this.buffer = null;
    return sums;
  }

  /** `E_VALUE` once {@link HessianAccumulator.takeSums} has handed the sums over. */
  private checkLive(what: string): void {
    if (this.spent)
      throw new CalderaError(
        'E_VALUE',
        `HessianAccumulator.${what}: this accumulator's sums became a Hessian (finalizeHessian with consume)`,
      );
  }
}

/**
 * The Hessian CALDERA uses for one layer: `H = XᵀX/N`, normalised to unit mean diagonal, plus `damping·I`.
 * Dead input channels (all-zero columns of X) get the damping alone on their diagonal, which keeps H positive
 * definite. An all-zero H (no signal at all) and one with any NaN or infinite entry are rejected (`E_VALUE`).
 */
export function finalizeHessian(acc: HessianAccumulator, options: HessianOptions = {}): Tensor<'f64'> {
  assertObject(acc, 'finalizeHessian', 'acc', 'a HessianAccumulator');
  assertObject(options, 'finalizeHessian', 'options', 'an object'); // null: E_VALUE, as the package's other options
  const damping = checkDamping(options.damping);
  assertBooleanOptions(options, 'finalizeHessian', ['consume']);
  const sum = acc.sumsFor('finalizeHessian');
  if (acc.count === 0) throw new CalderaError('E_VALUE', 'Hessian has no samples');
  const n = acc.n;
  const inv = 1 / acc.count;
  // the same operations as scaling XᵀX/N (secondMoment) and then H/mean, on the upper triangle, then mirrored
  let trace = 0;
  for (let i = 0; i < n; i++) trace += sum[i * n + i]! * inv;
  const mean = trace / n;
  // a non-finite input x_i makes Σ x_i² (diagonal i) non-finite, so the trace catches every NaN or infinity of the
  // rows given to `add`
  if (!Number.isFinite(mean))
    throw new CalderaError(
      'E_VALUE',
      `Hessian of size ${n} is not finite: the layer's inputs (${acc.count} rows) held NaN or infinite values`,
    );
  // sums not made by `add` (fromSums, merge, writes into `sum`) may hold one off the diagonal only: one pass over the
  // upper triangle, cheap next to the products that made them, so that no non-finite Hessian is ever returned (with
  // a finite diagonal, the first non-finite entry of the symmetric matrix in row-major order is in this triangle)
  for (let i = 0; i < n; i++)
    for (let j = i + 1; j < n; j++)
      if (!Number.isFinite(sum[i * n + j]! * inv))
        throw new CalderaError(
          'E_VALUE',
          `Hessian of size ${n} is not finite: entry (${i}, ${j}) is ${sum[i * n + j]! * inv}, its sums ` +
            `(${acc.count} rows) held NaN or infinite values`,
        );
  if (!(mean > 0))
    throw new CalderaError(
      'E_VALUE',
      `Hessian of size ${n} has mean diagonal ${mean}; the layer saw no input`,
    );
  // consume: H made in the accumulator's array (n²·8 bytes of fresh memory fewer: 0.97 GB at n = 11008)
  const h = options.consume ? acc.takeSums() : new Float64Array(n * n);
  const invMean = 1 / mean;
  for (let i = 0; i < n; i++) {
    for (let j = i; j < n; j++) h[i * n + j] = sum[i * n + j]! * inv * invMean;
    h[i * n + i]! += damping;
  }
  const t = tensor('f64', [n, n], h);
  mirrorUpper(t);
  return t;
}
