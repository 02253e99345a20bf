import { allocateRanks, bitsForBytes, type LayerShape } from '@caldera/calibrate';
import { CalderaError } from '@caldera/core';

/** How `caldera compress` chooses the rank of every layer. */
export interface RankChoice {
  /** Bit widths of Q, L, R (the paper's accounting). */
  widths: { q: number; l: number; r: number };
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

/**
 * The rank of every layer: layers matched by an override get that rank (clamped to min(m, n)); the others get
 * `rank`, or ranks allocated so that the average over *all* layers meets the bits target (`bits`, or `maxBytes`
 * converted) exactly under the paper's accounting, the overridden layers' cost counted first. Fails with `E_VALUE`
 * when the overrides alone exceed the budget or when the budget is below the bits of Q.
 */
export function chooseRanks(layers: readonly LayerShape[], c: RankChoice): Record<string, number> {
  const { q, l, r } = c.widths;
  const out: Record<string, number> = {};
  const free: LayerShape[] = [];
  let fixedBits = 0;
  let fixedParams = 0;
  for (const s of layers) {
    const hit = c.overrides?.find(([p]) => s.name.includes(p));
    if (hit) {
      const k = Math.min(hit[1], s.m, s.n);
      out[s.name] = k;
      fixedBits += q * s.m * s.n + k * (l * s.m + r * s.n);
      fixedParams += s.m * s.n;
    } else free.push(s);
  }
  if (c.rank !== undefined) {
    for (const s of free) out[s.name] = Math.min(c.rank, s.m, s.n);
    return out;
  }
  if (free.length === 0) return out;
  const all = fixedParams + free.reduce((a, s) => a + s.m * s.n, 0);
  const target = c.maxBytes !== undefined ? bitsForBytes(layers, c.maxBytes) : (c.bits ?? 2.4);
  const freeParams = all - fixedParams;
  const freeTarget = (target * all - fixedBits) / freeParams;
  if (!(freeTarget >= q))
    throw new CalderaError(
      'E_VALUE',
      fixedParams === 0
        ? `the budget of ${target.toFixed(3)} bits/weight is below the ${q} bits/weight of Q alone`
        : `the budget of ${target.toFixed(3)} bits/weight is too small: the --layer-rank layers use ` +
            `${(fixedBits / fixedParams).toFixed(3)} bits/weight over ${fixedParams} weights, leaving ` +
            `${freeTarget.toFixed(3)} for the rest (Q alone needs ${q})`,
    );
  const budget = allocateRanks(free, { targetBits: freeTarget, q, l, r, granularity: c.granularity ?? 8 });
  free.forEach((s, i) => (out[s.name] = budget.ranks[i]!));
  return out;
}
