import { NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, SEED, type NumberRule } from '@caldera/core';

/** The numbers fine-tuning passes on to its trainer (the rules of the CLI's flags of the same names). */
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
