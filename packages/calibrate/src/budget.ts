import { assertObject, CalderaError, describeValue } from '@caldera/core';

/** A weight matrix to be decomposed: `m` outputs × `n` inputs. */
export interface LayerShape {
  name: string;
  m: number;
  n: number;
}

/**
 * Bit widths of the decomposition, in bits per entry, named as lowrank's `CalderaOptions` names them (`qBits`,
 * `lBits`, `rBits`), so one object can serve both.
 */
export interface BitWidths {
  /** Bits per entry of Q. Default 2; 0 means no Q. */
  qBits?: number;
  /** Bits per entry of L. Default 4. */
  lBits?: number;
  /** Bits per entry of R. Default 4. */
  rBits?: number;
}

/** The widths with their defaults (Q 2 bits, L and R 4), checked by {@link checkBitWidths}. */
function widthsOf(bits: BitWidths | undefined, fn: string): Required<BitWidths> {
  const given = (bits ?? {}) as BitWidths & Record<string, unknown>;
  // the names these widths had before they took lowrank's: refused, since ignoring them would silently use defaults
  for (const old of ['q', 'l', 'r'] as const)
    if (old in given)
      throw new CalderaError('E_VALUE', `${fn}: bit width '${old}' is now named '${old}Bits'`);
  const { qBits = 2, lBits = 4, rBits = 4 } = given;
  checkBitWidths({ qBits, lBits, rBits });
  return { qBits, lBits, rBits };
}

/** Throw `E_VALUE` unless the widths are finite, L's and R's positive and Q's non-negative (0: no Q). */
function checkBitWidths(bits: Required<BitWidths>): void {
  for (const [key, b] of Object.entries(bits))
    if (!Number.isFinite(b) || b < 0 || (b === 0 && key !== 'qBits'))
      throw new CalderaError(
        'E_VALUE',
        `bit width ${key} must be a ${key === 'qBits' ? 'non-negative' : 'positive'} number, got ${b}`,
      );
}

/** A value for an error message: a number as itself, a string quoted, anything else as {@link describeValue} says. */
const shown = (v: unknown): string =>
  typeof v === 'number'
    ? String(v)
    : typeof v === 'string' && v !== ''
      ? `the string '${v}'`
      : describeValue(v);

/**
 * Throw `E_VALUE` naming the function and the layer (its index, and its name when it has one) unless `layer` is a
 * layer shape: `name` a string, `m` and `n` positive integers (a negative `m` gave rank 0 and a string `'4096'` a
 * rank computed from text).
 */
function checkLayer(layer: unknown, fn: string, what: string): asserts layer is LayerShape {
  assertObject(layer, fn, what, 'a layer shape { name, m, n }');
  const l = layer as Partial<Record<keyof LayerShape, unknown>>;
  const named = typeof l.name === 'string' ? ` ('${l.name}')` : '';
  if (typeof l.name !== 'string')
    throw new CalderaError('E_VALUE', `${fn}: ${what} name must be a string, got ${shown(l.name)}`);
  for (const key of ['m', 'n'] as const) {
    const v = l[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0)
      throw new CalderaError(
        'E_VALUE',
        `${fn}: ${what}${named} ${key} must be a positive integer, got ${shown(v)}`,
      );
  }
}

/** {@link checkLayer} for every layer of an array (already checked to be an object). */
function checkLayers(layers: readonly LayerShape[], fn: string): void {
  for (let i = 0; i < layers.length; i++) checkLayer(layers[i], fn, `layers[${i}]`);
}

/**
 * Average bits per weight of a set of layers under the paper's accounting (algorithm brief §5):
 * `B_Q + Σ k(B_L·m + B_R·n) / Σ m·n`, weighted by parameter count, scales and sign vectors excluded. Each rank `k`
 * must be a non-negative integer (`E_VALUE` naming it and its layer).
 */
export function averageBits(
  layers: readonly LayerShape[],
  ranks: readonly number[],
  bits: BitWidths = {},
): number {
  assertObject(layers, 'averageBits', 'layers', 'an array of layer shapes');
  assertObject(ranks, 'averageBits', 'ranks', 'an array of ranks');
  checkLayers(layers, 'averageBits');
  const { qBits: q, lBits: l, rBits: r } = widthsOf(bits, 'averageBits');
  if (ranks.length !== layers.length)
    throw new CalderaError('E_SHAPE', `averageBits: ${ranks.length} ranks for ${layers.length} layers`);
  for (let i = 0; i < ranks.length; i++) {
    const k = ranks[i];
    const { name, m, n } = layers[i]!;
    // a rank above min(m, n) has no decomposition (1000 on a 64 × 64 layer was counted, 127 bits per weight)
    if (typeof k !== 'number' || !Number.isInteger(k) || k < 0 || k > Math.min(m, n))
      throw new CalderaError(
        'E_VALUE',
        `averageBits: ranks[${i}] ('${name}') must be an integer in [0, ${Math.min(m, n)}] (min(m, n)), got ${shown(k)}`,
      );
  }
  let params = 0;
  let extra = 0;
  layers.forEach((s, i) => {
    params += s.m * s.n;
    extra += ranks[i]! * (l * s.m + r * s.n);
  });
  return params === 0 ? 0 : q + extra / params;
}

/**
 * Throw `E_VALUE` naming the function and the argument unless `granularity` is a positive integer and `maxRank` a
 * non-negative number (`Infinity`: no bound). Before, granularity 0 gave a NaN cap, −16 the full rank, and a maxRank
 * of NaN or −16 rank 0 everywhere.
 */
function checkRankBounds(granularity: unknown, maxRank: unknown, fn: string, prefix: string): void {
  if (typeof granularity !== 'number' || !Number.isInteger(granularity) || granularity <= 0)
    throw new CalderaError(
      'E_VALUE',
      `${fn}: ${prefix}granularity must be a positive integer, got ${shown(granularity)}`,
    );
  if (typeof maxRank !== 'number' || !(maxRank >= 0))
    throw new CalderaError(
      'E_VALUE',
      `${fn}: ${prefix}maxRank must be a non-negative number (Infinity: no bound), got ${shown(maxRank)}`,
    );
}

/**
 * The largest rank a layer can be given: min(m, n) (past it L·R gains nothing), and at most `maxRank`, rounded down
 * to a multiple of `granularity` (default 1: no rounding). The cap of {@link allocateRanks}. `granularity` must be a
 * positive integer and `maxRank` a non-negative number (`E_VALUE`).
 */
export function rankCap(layer: LayerShape, granularity = 1, maxRank = Infinity): number {
  checkLayer(layer, 'rankCap', 'layer');
  checkRankBounds(granularity, maxRank, 'rankCap', '');
  return Math.floor(Math.min(layer.m, layer.n, maxRank) / granularity) * granularity;
}

/** Options for {@link allocateRanks}. */
export interface RankBudgetOptions extends BitWidths {
  /**
   * Target average bits per weight (the paper's accounting); required, finite, at least `qBits`. Above what full
   * ranks cost, every layer gets its cap and the result's `averageBits` says what that costs.
   */
  targetBits: number;
  /** Ranks are multiples of this (16 keeps lattice-coded factors packable). Default 16. */
  granularity?: number;
  /** Upper bound on any rank. Default: min(m, n) of each layer, rounded down to the granularity. */
  maxRank?: number;
}

/** Result of {@link allocateRanks}. */
export interface RankBudget {
  ranks: number[];
  averageBits: number;
}

/**
 * Pick a rank per layer so that the average bits per weight comes close to `targetBits` without exceeding it: first
 * the largest rank shared by all layers, then one granularity step at a time to the layers whose step is cheapest in
 * bits (smaller layers first), while the budget allows. Greedy, not an exact knapsack: the result is below the target
 * by less than the cheapest step of any layer still under its cap. Deterministic.
 *
 * A target above what full ranks cost is not an error: every layer gets its cap ({@link rankCap}) and the returned
 * `averageBits` is what that costs, below the target (e.g. target 99 on 4-bit factors: about 10 for square layers).
 * Compare it with the target to detect an unreachable one (the `caldera compress` command refuses those itself).
 * `targetBits` must be a finite number, `granularity` a positive integer, `maxRank` a non-negative number, and each
 * layer's `m` and `n` positive integers (`E_VALUE` naming the option or the layer).
 */
export function allocateRanks(layers: readonly LayerShape[], options: RankBudgetOptions): RankBudget {
  assertObject(layers, 'allocateRanks', 'layers', 'an array of layer shapes');
  assertObject(options, 'allocateRanks', 'options', 'rank budget options with targetBits');
  const { granularity = 16, maxRank = Infinity } = options;
  const target = options.targetBits;
  if (typeof target !== 'number' || !Number.isFinite(target))
    throw new CalderaError(
      'E_VALUE',
      `allocateRanks: options.targetBits must be a finite number of bits per weight, got ${shown(target)}`,
    );
  if (layers.length === 0) throw new CalderaError('E_VALUE', 'allocateRanks: no layers');
  checkLayers(layers, 'allocateRanks');
  const widths = widthsOf(options, 'allocateRanks');
  const { qBits: q, lBits: l, rBits: r } = widths;
  checkRankBounds(granularity, maxRank, 'allocateRanks', 'options.');
  if (!(target >= q)) {
    throw new CalderaError('E_VALUE', `target ${target} bits/weight is below the ${q} bits of Q alone`);
  }
  const params = layers.reduce((a, s) => a + s.m * s.n, 0);
  // within the target, computed as averageBits computes what it costs (factor bits are integers, summed exactly):
  // a budget (target − q)·params rounded below a reachable target's exact cost (2.19754 for Llama-2-7B at rank 128
  // gave ranks 112/128/144, not 128 everywhere)
  const fits = (factorBits: number) => q + factorBits / params <= target;
  const cap = layers.map((s) => rankCap(s, granularity, maxRank));
  const stepCost = layers.map((s) => granularity * (l * s.m + r * s.n));
  const ranks = layers.map(() => 0);
  let used = 0;
  // uniform phase
  while (true) {
    const add = layers.reduce((a, _, i) => a + (ranks[i]! < cap[i]! ? stepCost[i]! : 0), 0);
    if (add === 0 || !fits(used + add)) break;
    layers.forEach((_, i) => {
      if (ranks[i]! < cap[i]!) ranks[i]! += granularity;
    });
    used += add;
  }
  // greedy fill, cheapest step first, ties by layer order
  const order = layers.map((_, i) => i).sort((a, b) => stepCost[a]! - stepCost[b]! || a - b);
  let progress = true;
  while (progress) {
    progress = false;
    for (const i of order) {
      if (ranks[i]! < cap[i]! && fits(used + stepCost[i]!)) {
        ranks[i]! += granularity;
        used += stepCost[i]!;
        progress = true;
      }
    }
  }
  return { ranks, averageBits: averageBits(layers, ranks, widths) };
}

/**
 * The target bits per weight that a byte budget for the decomposed layers allows (paper accounting). `maxBytes` must
 * be a finite non-negative number (`E_VALUE`).
 */
export function bitsForBytes(layers: readonly LayerShape[], maxBytes: number): number {
  assertObject(layers, 'bitsForBytes', 'layers', 'an array of layer shapes');
  checkLayers(layers, 'bitsForBytes');
  if (typeof maxBytes !== 'number' || !Number.isFinite(maxBytes) || maxBytes < 0)
    throw new CalderaError(
      'E_VALUE',
      `bitsForBytes: maxBytes must be a finite non-negative number of bytes, got ${shown(maxBytes)}`,
    );
  const params = layers.reduce((a, s) => a + s.m * s.n, 0);
  if (params === 0) throw new CalderaError('E_VALUE', 'bitsForBytes: no layers');
  return (8 * maxBytes) / params;
}
