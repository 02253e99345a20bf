import { allocateRanks, bitsForBytes, rankCap, type BitWidths, type LayerShape } from '@caldera/calibrate';
import { CalderaError } from '@caldera/core';
import { checkFlag, NON_NEGATIVE_INT, POSITIVE } from '../args.js';

/** How `caldera compress` chooses the rank of every layer. */
export interface RankChoice {
  /** Bit widths of Q, L, R (the paper's accounting). */
  widths: Required<BitWidths>;
  /** One rank for every layer not matched by `overrides` (takes precedence over a budget). */
  rank?: number;
  /** Target average bits per weight over all layers (default 2.4 when neither `rank` nor `maxBytes` is given). */
  bits?: number;
  /** Budget in bytes for all compressed layers (paper accounting); converted to a bits target. */
  maxBytes?: number;
  /** `[pattern, rank]`: layers whose name contains `pattern` get `rank` (first match wins). */
  overrides?: readonly (readonly [string, number])[];
  /** Ranks are multiples of this in the budgeted allocation (default 8). */
  granularity?: number;
  /**
   * The option the user set the budget with (`--rank`, `--max-bytes` or `--bits`), when they gave one: refused when
   * `overrides` fix every layer's rank, which would leave it nothing to apply to.
   */
  budgetFlag?: string;
}

/**
 * Parses `--layer-rank` (`mlp=32,self_attn=16`, `layers.0.=64`: a substring of the layer name and a rank, first
 * match wins).
 */
export function parseLayerRanks(spec: string): [string, number][] {
  return spec
    .split(',')
    .filter((s) => s.trim())
    .map((part) => {
      const i = part.lastIndexOf('=');
      const pattern = part.slice(0, i).trim();
      const rank = Number(part.slice(i + 1));
      if (i <= 0 || !pattern || !Number.isInteger(rank) || rank < 0)
        throw new CalderaError(
          'E_VALUE',
          `--layer-rank: '${part}' is not PATTERN=RANK with a non-negative integer rank`,
        );
      return [pattern, rank];
    });
}

/** Largest `x` with two decimals that is ≤ `v` (a limit shown to a user must be one they can pass). */
const floor2 = (v: number) => Math.floor(v * 100 + 1e-9) / 100;

/**
 * The rank of every layer: layers matched by an override get that rank (clamped to min(m, n)); the others get
 * `rank`, or ranks allocated so that the average over *all* layers meets the bits target (`bits`, or `maxBytes`
 * converted) exactly under the paper's accounting, the overridden layers' cost counted first. Fails with `E_VALUE`
 * naming the option (`--rank`, `--bits`, `--max-bytes`) and its allowed range when `rank` is not a non-negative
 * integer, when the budget is below the bits of Q (with the overrides' cost), or when `bits` is above what every
 * layer at full rank gives (its {@link rankCap}: min(m, n) in steps of the granularity): such a target cannot be met,
 * and is refused rather than silently capped. A `maxBytes` above the full-rank size is a ceiling that is simply not
 * reached.
 */
export function chooseRanks(layers: readonly LayerShape[], c: RankChoice): Record<string, number> {
  const { qBits: q, lBits: l, rBits: r } = c.widths;
  const g = c.granularity ?? 8;
  if (c.rank !== undefined) checkFlag('rank', c.rank, NON_NEGATIVE_INT);
  if (c.maxBytes !== undefined) checkFlag('max-bytes', c.maxBytes, POSITIVE);
  if (c.bits !== undefined) checkFlag('bits', c.bits, POSITIVE);
  const out: Record<string, number> = {};
  const free: LayerShape[] = [];
  let fixedBits = 0;
  let fixedParams = 0;
  for (const s of layers) {
    const hit = c.overrides?.find(([p]) => s.name.includes(p));
    if (hit) {
      const k = Math.min(hit[1], rankCap(s));
      out[s.name] = k;
      fixedBits += q * s.m * s.n + k * (l * s.m + r * s.n);
      fixedParams += s.m * s.n;
    } else free.push(s);
  }
  // a pattern that matches no layer would be silently ignored (a typo such as 'mpl=32'): refused, with what it could
  // match (the layers' kinds: their names without the block prefix)
  for (const [p] of c.overrides ?? [])
    if (!layers.some((s) => s.name.includes(p))) {
      const kinds = [...new Set(layers.map((s) => s.name.replace(/^.*\.layers\.\d+\./, '')))];
      throw new CalderaError(
        'E_VALUE',
        `--layer-rank: '${p}' matches no layer (a pattern is a part of a layer name, e.g. one of ` +
          `${kinds.slice(0, 12).join(', ')}${kinds.length > 12 ? ', …' : ''}; or 'layers.0.' for a block)`,
      );
    }
  if (free.length === 0 && c.budgetFlag !== undefined)
    throw new CalderaError(
      'E_VALUE',
      `--layer-rank fixes the rank of every layer, so ${c.budgetFlag} has no layer to apply to; give one of them`,
    );
  if (c.rank !== undefined) {
    for (const s of free) out[s.name] = Math.min(c.rank, rankCap(s));
    return out;
  }
  if (free.length === 0) return out;
  const all = fixedParams + free.reduce((a, s) => a + s.m * s.n, 0);
  const target = c.maxBytes !== undefined ? bitsForBytes(layers, c.maxBytes) : (c.bits ?? 2.4);
  const freeParams = all - fixedParams;
  const freeTarget = (target * all - fixedBits) / freeParams;
  // the least and the most the free layers can take: Q alone, and every layer at the largest rank allocateRanks
  // gives it (its cap at this granularity)
  const minBits = (fixedBits + q * freeParams) / all;
  const fullBits =
    (fixedBits + free.reduce((a, s) => a + q * s.m * s.n + rankCap(s, g) * (l * s.m + r * s.n), 0)) / all;
  if (!(freeTarget >= q)) {
    if (c.maxBytes !== undefined)
      throw new CalderaError(
        'E_VALUE',
        `--max-bytes must be at least ${Math.ceil((minBits * all) / 8)}, the size of ` +
          (fixedParams === 0 ? `Q alone at ${q} bits/weight` : 'Q and the --layer-rank layers') +
          ` over the ${all} compressed weights, got ${c.maxBytes}`,
      );
    throw new CalderaError(
      'E_VALUE',
      fixedParams === 0 && c.bits !== undefined
        ? `--bits must be in [${q}, ${floor2(fullBits)}] (${q}: Q alone; ${floor2(fullBits)}: every layer at full rank), got ${c.bits}`
        : `the budget of ${target.toFixed(3)} bits/weight is too small: the --layer-rank layers use ` +
            `${(fixedBits / fixedParams).toFixed(3)} bits/weight over ${fixedParams} weights, leaving ` +
            `${freeTarget.toFixed(3)} for the rest (Q alone needs ${q}); --bits must be at least ${Math.ceil(minBits * 1000) / 1000}`,
    );
  }
  if (c.maxBytes === undefined && target > fullBits + 1e-9)
    throw new CalderaError(
      'E_VALUE',
      `--bits must be at most ${floor2(fullBits)}, what every layer at full rank gives (ranks are at most min(m, n), ` +
        `in steps of ${g}${fixedParams === 0 ? '' : ', with the --layer-rank layers as given'}), got ${target}; ` +
        'a larger target cannot be met',
    );
  const budget = allocateRanks(free, { targetBits: freeTarget, ...c.widths, granularity: g });
  free.forEach((s, i) => (out[s.name] = budget.ranks[i]!));
  return out;
}
