import { assertObject, CalderaError } from '@caldera/core';

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

/**
 * Average bits per weight of a set of layers under the paper's accounting (algorithm brief §5):
 * `B_Q + Σ k(B_L·m + B_R·n) / Σ m·n`, weighted by parameter count, scales and sign vectors excluded.
 */
export function averageBits(
  layers: readonly LayerShape[],
  ranks: readonly number[],
  bits: BitWidths = {},
): number {
  assertObject(layers, 'averageBits', 'layers', 'an array of layer shapes');
  assertObject(ranks, 'averageBits', 'ranks', 'an array of ranks');
  const { qBits: q, lBits: l, rBits: r } = widthsOf(bits, 'averageBits');
  if (ranks.length !== layers.length)
    throw new CalderaError('E_SHAPE', `averageBits: ${ranks.length} ranks for ${layers.length} layers`);
  let params = 0;
  let extra = 0;
  layers.forEach((s, i) => {
    params += s.m * s.n;
    extra += ranks[i]! * (l * s.m + r * s.n);
  });
  return params === 0 ? 0 : q + extra / params;
}

/**
 * The largest rank a layer can be given: min(m, n) (past it L·R gains nothing), and at most `maxRank`, rounded down
 * to a multiple of `granularity` (default 1: no rounding). The cap of {@link allocateRanks}.
 */
export function rankCap(layer: LayerShape, granularity = 1, maxRank = Infinity): number {
  assertObject(layer, 'rankCap', 'layer', 'a layer shape');
  return Math.floor(Math.min(layer.m, layer.n, maxRank) / granularity) * granularity;
}

/** Options for {@link allocateRanks}. */
export interface RankBudgetOptions extends BitWidths {
  /** Target average bits per weight (the paper's accounting). */
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
 */
export function allocateRanks(layers: readonly LayerShape[], options: RankBudgetOptions): RankBudget {
  assertObject(layers, 'allocateRanks', 'layers', 'an array of layer shapes');
  assertObject(options, 'allocateRanks', 'options', 'rank budget options with targetBits');
  const { granularity = 16 } = options;
  const target = options.targetBits;
  if (layers.length === 0) throw new CalderaError('E_VALUE', 'allocateRanks: no layers');
  const widths = widthsOf(options, 'allocateRanks');
  const { qBits: q, lBits: l, rBits: r } = widths;
  if (!Number.isInteger(granularity) || granularity <= 0)
    throw new CalderaError('E_VALUE', `granularity must be a positive integer, got ${granularity}`);
  if (!(target >= q)) {
    throw new CalderaError('E_VALUE', `target ${target} bits/weight is below the ${q} bits of Q alone`);
  }
  const params = layers.reduce((a, s) => a + s.m * s.n, 0);
  const budget = (target - q) * params; // bits available for the factors
  const cap = layers.map((s) => rankCap(s, granularity, options.maxRank));
  const stepCost = layers.map((s) => granularity * (l * s.m + r * s.n));
  const ranks = layers.map(() => 0);
  let used = 0;
  // uniform phase
  while (true) {
    const add = layers.reduce((a, _, i) => a + (ranks[i]! < cap[i]! ? stepCost[i]! : 0), 0);
    if (add === 0 || used + add > budget) break;
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
      if (ranks[i]! < cap[i]! && used + stepCost[i]! <= budget) {
        ranks[i]! += granularity;
        used += stepCost[i]!;
        progress = true;
      }
    }
  }
  return { ranks, averageBits: averageBits(layers, ranks, widths) };
}

/** The target bits per weight that a byte budget for the decomposed layers allows (paper accounting). */
export function bitsForBytes(layers: readonly LayerShape[], maxBytes: number): number {
  assertObject(layers, 'bitsForBytes', 'layers', 'an array of layer shapes');
  const params = layers.reduce((a, s) => a + s.m * s.n, 0);
  if (params === 0) throw new CalderaError('E_VALUE', 'bitsForBytes: no layers');
  return (8 * maxBytes) / params;
}
