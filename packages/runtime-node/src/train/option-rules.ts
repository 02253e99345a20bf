import { CalderaError, shownValue } from '@caldera/core';

/**
 * What a numeric option must be: finite, an integer when `integer`, at least `min`, above `above`, at most `max`
 * (the rules of the CLI's flags, so that a library call is refused where the command line would be).
 */
export interface NumberRule {
  integer?: boolean;
  min?: number;
  above?: number;
  max?: number;
}

/** Integers ≥ 1. */
export const POSITIVE_INT: NumberRule = { integer: true, min: 1 };
/** Integers ≥ 0. */
export const NON_NEGATIVE_INT: NumberRule = { integer: true, min: 0 };
/** Numbers > 0. */
export const POSITIVE: NumberRule = { above: 0 };
/** Seeds: integers in [0, 2³² − 1]. */
export const SEED: NumberRule = { integer: true, min: 0, max: 0xffffffff };

/** "an integer ≥ 1", "a number > 0", "a number in [0, 1]", … */
function describeRule(r: NumberRule): string {
  const kind = r.integer ? 'an integer' : 'a number';
  if (r.min !== undefined && r.max !== undefined) return `${kind} in [${r.min}, ${r.max}]`;
  if (r.above !== undefined && r.max !== undefined) return `${kind} in (${r.above}, ${r.max}]`;
  if (r.min !== undefined) return `${kind} ≥ ${r.min}`;
  if (r.above !== undefined) return `${kind} > ${r.above}`;
  return `a finite ${kind.slice(kind.indexOf(' ') + 1)}`;
}

/**
 * `E_VALUE` "`what`: `name` must be …, got …" for the first option of `options` named in `rules` that is given
 * (not undefined) and breaks its rule. A seqLen of 0 made fine-tuning's window loop run for ever; a negative
 * learning rate climbed the loss; NaN failed far away, inside a matrix product.
 */
export function checkNumberOptions(
  what: string,
  options: Readonly<Record<string, unknown>>,
  rules: Readonly<Record<string, NumberRule>>,
): void {
  for (const [name, r] of Object.entries(rules)) {
    const v = options[name];
    if (v === undefined) continue;
    const ok =
      typeof v === 'number' &&
      Number.isFinite(v) &&
      (!r.integer || Number.isInteger(v)) &&
      (r.min === undefined || v >= r.min) &&
      (r.above === undefined || v > r.above) &&
      (r.max === undefined || v <= r.max);
    if (!ok)
      throw new CalderaError('E_VALUE', `${what}: ${name} must be ${describeRule(r)}, got ${shownValue(v)}`);
  }
}

/** The numbers fine-tuning passes on to its trainer. */
const SHARED_RULES = {
  seqLen: POSITIVE_INT,
  batch: POSITIVE_INT,
  lr: POSITIVE,
  warmup: NON_NEGATIVE_INT,
  weightDecay: { min: 0 },
  seed: SEED,
};

/** The rules of `TrainerOptions`' numbers (`betas` apart). */
export const TRAINER_RULES: Readonly<Record<string, NumberRule>> = {
  ...SHARED_RULES,
  totalSteps: POSITIVE_INT,
  minLrRatio: { min: 0, max: 1 },
  clip: POSITIVE,
};

/** The rules of `LoraFinetuneOptions`' numbers. */
export const FINETUNE_RULES: Readonly<Record<string, NumberRule>> = {
  ...SHARED_RULES,
  steps: POSITIVE_INT,
  evalEvery: POSITIVE_INT,
  patience: POSITIVE_INT,
  evalTokens: POSITIVE_INT,
};
