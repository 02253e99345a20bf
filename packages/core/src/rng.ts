import { CalderaError, describeValue } from './errors.js';

/**
 * A seeded pseudo-random generator (xoshiro128**, seeded through splitmix32). Every Caldera algorithm that
 * needs randomness takes an `Rng` or a seed, so results are deterministic given the seed. Instances hold
 * their own state; there is no global generator.
 */
export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;
  private spare: number | null = null;

  /**
   * @param seed an integer or a string (hashed with FNV-1a). The generator has 2³² seeds: an integer is taken modulo
   *   2³², so −1 seeds as 4294967295 and 2³² as 0 (callers derive seeds by arithmetic, e.g. a layer's seed plus an
   *   offset, and rely on that). Anything else — a fraction, NaN, ±Infinity, `null`, a boolean, a bigint — is
   *   `E_VALUE` (it used to be truncated to a 32-bit integer silently: NaN seeded as 0, 1.9 as 1). Default 0.
   */
  constructor(seed: number | string = 0) {
    let x: number;
    if (typeof seed === 'string') x = hashString(seed);
    else if (typeof seed === 'number' && Number.isInteger(seed)) x = seed >>> 0;
    else {
      throw new CalderaError(
        'E_VALUE',
        `Rng: seed must be an integer or a string, got ${typeof seed === 'number' ? seed : describeValue(seed)}`,
      );
    }
    const next = () => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next();
  }

  /** Next 32-bit unsigned integer. */
  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    this.s0 >>>= 0;
    this.s1 >>>= 0;
    this.s2 >>>= 0;
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  uniform(): number {
    const hi = this.nextU32() >>> 5;
    const lo = this.nextU32() >>> 6;
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    if (!Number.isInteger(n) || n <= 0)
      throw new CalderaError('E_VALUE', `Rng.int: n must be a positive integer, got ${n}`);
    return Math.floor(this.uniform() * n);
  }

  /** Standard normal N(0, 1) (Marsaglia polar method). */
  normal(): number {
    if (this.spare !== null) {
      const v = this.spare;
      this.spare = null;
      return v;
    }
    let u: number, v: number, s: number;
    do {
      u = 2 * this.uniform() - 1;
      v = 2 * this.uniform() - 1;
      s = u * u + v * v;
    } while (s >= 1 || s === 0);
    const f = Math.sqrt((-2 * Math.log(s)) / s);
    this.spare = v * f;
    return u * f;
  }

  /** ±1 with equal probability. */
  rademacher(): 1 | -1 {
    return (this.nextU32() & 1) === 0 ? 1 : -1;
  }

  /** Fill an array with N(mean, std²) samples. */
  fillNormal<T extends Float32Array | Float64Array>(out: T, mean = 0, std = 1): T {
    for (let i = 0; i < out.length; i++) out[i] = mean + std * this.normal();
    return out;
  }

  /** Fill an array with uniform samples in [lo, hi) (lo itself when hi = lo; in (hi, lo] when hi < lo). */
  fillUniform<T extends Float32Array | Float64Array>(out: T, lo = 0, hi = 1): T {
    for (let i = 0; i < out.length; i++) {
      // lo + (hi − lo)·u, stored, rounds up to hi for u within half an ulp of 1 (f32: about one draw in 2^25): drawn
      // again, so that hi never occurs
      do out[i] = lo + (hi - lo) * this.uniform();
      while (out[i]! >= hi && hi > lo);
    }
    return out;
  }

  /** Fill an array with random signs ±1. */
  fillRademacher<T extends Float32Array | Float64Array | Int8Array>(out: T): T {
    for (let i = 0; i < out.length; i++) out[i] = this.rademacher();
    return out;
  }

  /** Shuffle in place (Fisher–Yates). */
  shuffle<T>(arr: T[]): T[] {
    for (let i = arr.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const t = arr[i]!;
      arr[i] = arr[j]!;
      arr[j] = t;
    }
    return arr;
  }

  /** An independent generator derived from this one (e.g. one per layer or per worker). */
  fork(): Rng {
    return new Rng(this.nextU32());
  }

  /** Serialisable state (to resume training bit-exactly). */
  getState(): number[] {
    return [this.s0, this.s1, this.s2, this.s3, this.spare ?? NaN];
  }

  /**
   * Restore a state produced by {@link getState} (its NaN may come back as null from JSON). `E_VALUE` for anything
   * else: not 5 entries, words that are not 32-bit unsigned integers, an all-zero state, an infinite spare.
   */
  static fromState(state: readonly number[]): Rng {
    if (!Array.isArray(state) || state.length !== 5)
      throw new CalderaError('E_VALUE', 'Rng.fromState: expected 5 numbers');
    const words = state.slice(0, 4) as unknown[];
    if (words.some((w) => typeof w !== 'number' || !Number.isInteger(w) || w < 0 || w > 0xffffffff))
      throw new CalderaError(
        'E_VALUE',
        `Rng.fromState: the first 4 numbers must be 32-bit unsigned integers, got [${words.join(', ')}]`,
      );
    if (words.every((w) => w === 0))
      throw new CalderaError('E_VALUE', 'Rng.fromState: an all-zero state (xoshiro128** would stay at zero)');
    // the spare normal sample: NaN for none, or null (JSON writes NaN as null)
    const spare: unknown = state[4];
    if (spare !== null && (typeof spare !== 'number' || spare === Infinity || spare === -Infinity))
      throw new CalderaError(
        'E_VALUE',
        `Rng.fromState: the 5th number (the spare normal, NaN or null for none) must be finite, got ${String(spare)}`,
      );
    const r = new Rng(0);
    r.s0 = state[0]! >>> 0;
    r.s1 = state[1]! >>> 0;
    r.s2 = state[2]! >>> 0;
    r.s3 = state[3]! >>> 0;
    r.spare = spare === null || Number.isNaN(spare) ? null : (spare as number);
    return r;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

function hashString(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}
