import { assertObject, CalderaError, tensor, type Tensor } from '@caldera/core';
import { syrkInto, type Pool } from '@caldera/linalg';
import { checkDamping } from './damping.js';

/** Options for {@link finalizeHessian}. */
export interface HessianOptions {
  /**
   * Damping σ added to the diagonal after normalising H to unit mean diagonal: `H ← H/mean(diag H) + σI`.
   * Default 0.01, the reference implementation's `sigma_reg` (1 % of the mean diagonal).
   */
  damping?: number;
}

/** Options of {@link HessianAccumulator}. */
export interface HessianAccumulatorOptions {
  /**
   * A `@caldera/linalg` worker pool (`createPool`) for the `Σ xxᵀ` products: they are split over its threads, to the
   * same bits as without it. Default: the calling thread.
   */
  pool?: Pool;
}

/**
 * Streaming accumulator of the second moment `Σ xxᵀ` of the inputs of one linear layer (one row per token),
 * in float64, so that millions of f32 rows add up without loss. Partial accumulators of disjoint token sets
 * merge exactly by {@link HessianAccumulator.merge} (addition in f64 is what makes sharded calibration possible).
 */
export class HessianAccumulator {
  readonly n: number;
  /** Σ xxᵀ, row-major `n × n`; its upper triangle is what counts (as {@link HessianAccumulator.fromSums} takes it). */
  readonly sum: Float64Array;
  count = 0;
  private readonly pool: Pool | undefined;

  constructor(n: number, options: HessianAccumulatorOptions = {}) {
    if (!Number.isInteger(n) || n <= 0)
      throw new CalderaError('E_VALUE', `Hessian size must be a positive integer, got ${n}`);
    assertObject(options, 'HessianAccumulator', 'options', 'an options object such as { pool }');
    this.n = n;
    this.sum = new Float64Array(n * n);
    this.pool = options.pool;
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
    acc.sum.set(sum);
    acc.count = count;
    return acc;
  }

  /**
   * Add `rows` input vectors stored row-major in `x` (length rows·n): `Σ += xᵀx` by linalg's `syrkInto`, whose
   * products of f32 inputs are exact in f64 and whose sums are f64 (WebAssembly SIMD, split over the pool's threads
   * when there is one). The same calls in the same order give the same bits.
   */
  add(x: Float32Array | Float64Array, rows: number): void {
    const n = this.n;
    assertObject(x, 'HessianAccumulator.add', 'x', 'a Float32Array or Float64Array');
    if (!Number.isInteger(rows) || rows < 0)
      throw new CalderaError('E_VALUE', `Hessian row count must be a non-negative integer, got ${rows}`);
    if (x.length !== rows * n) {
      throw new CalderaError(
        'E_SHAPE',
        `Hessian input has ${x.length} values, expected rows·n = ${rows}·${n}`,
      );
    }
    if (rows > 0) {
      const xs = x instanceof Float32Array ? tensor('f32', [rows, n], x) : tensor('f64', [rows, n], x);
      // non-finite inputs are not checked here: they reach the sums (a non-finite x_i makes diagonal (i, i)
      // non-finite), and finalizeHessian refuses such a Hessian (E_VALUE), as it did with the scalar loop before
      syrkInto(tensor('f64', [n, n], this.sum), xs, { beta: 1, checkFinite: false, pool: this.pool });
    }
    this.count += rows;
  }

  /** Add another accumulator's sums (exact in the sense of f64 addition). */
  merge(other: HessianAccumulator): void {
    assertObject(other, 'HessianAccumulator.merge', 'other', 'a HessianAccumulator');
    if (other.n !== this.n)
      throw new CalderaError('E_SHAPE', `cannot merge Hessians of size ${other.n} and ${this.n}`);
    for (let i = 0; i < this.sum.length; i++) this.sum[i]! += other.sum[i]!;
    this.count += other.count;
  }

  /** The raw second moment `XᵀX / N` as a full symmetric f64 matrix. */
  secondMoment(): Tensor<'f64'> {
    if (this.count === 0) throw new CalderaError('E_VALUE', 'Hessian has no samples');
    const n = this.n;
    const h = new Float64Array(n * n);
    const inv = 1 / this.count;
    for (let i = 0; i < n; i++) {
      for (let j = i; j < n; j++) {
        const v = this.sum[i * n + j]! * inv;
        h[i * n + j] = v;
        h[j * n + i] = v;
      }
    }
    return tensor('f64', [n, n], h);
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
  const h = acc.secondMoment();
  const n = acc.n;
  const d = h.data;
  let trace = 0;
  for (let i = 0; i < n; i++) trace += d[i * n + i]!;
  const mean = trace / n;
  // a non-finite input x_i makes Σ x_i² (diagonal i) non-finite, so the trace catches every NaN or infinity of the
  // rows given to `add`
  if (!Number.isFinite(mean))
    throw new CalderaError(
      'E_VALUE',
      `Hessian of size ${n} is not finite: the layer's inputs (${acc.count} rows) held NaN or infinite values`,
    );
  // sums not made by `add` (fromSums, merge, writes into `sum`) may hold one off the diagonal only: one pass over the
  // n² values, cheap next to the products that made them, so that no non-finite Hessian is ever returned
  for (let i = 0; i < d.length; i++)
    if (!Number.isFinite(d[i]!))
      throw new CalderaError(
        'E_VALUE',
        `Hessian of size ${n} is not finite: entry (${Math.floor(i / n)}, ${i % n}) is ${d[i]}, its sums ` +
          `(${acc.count} rows) held NaN or infinite values`,
      );
  if (!(mean > 0))
    throw new CalderaError(
      'E_VALUE',
      `Hessian of size ${n} has mean diagonal ${mean}; the layer saw no input`,
    );
  const inv = 1 / mean;
  for (let i = 0; i < d.length; i++) d[i]! *= inv;
  for (let i = 0; i < n; i++) d[i * n + i]! += damping;
  return h;
}
