import { CalderaError } from '@caldera/core';
import { zerosLike, type Vec } from './types.js';

/** Result of {@link crossEntropy}. */
export interface CrossEntropyResult {
  /** Mean negative log-likelihood over the rows whose target is not ignored (0 when all are ignored). */
  loss: number;
  /** Number of rows that count. */
  count: number;
  /** d loss / d logits, `[rows, vocab]` (zero on ignored rows). */
  dLogits: Vec;
}

/**
 * Softmax cross-entropy of `logits` (`[rows, vocab]`, row-major) against integer `targets`, averaged over rows
 * whose target differs from `ignoreIndex`, with its gradient (`softmax − onehot`, divided by the count).
 * Uses the max-shifted log-sum-exp, so large logits do not overflow.
 * @param ignoreIndex target value that is skipped (default -100, as in PyTorch).
 */
export function crossEntropy(
  logits: Vec,
  rows: number,
  vocab: number,
  targets: ArrayLike<number>,
  ignoreIndex = -100,
): CrossEntropyResult {
  if (logits.length !== rows * vocab || targets.length !== rows)
    throw new CalderaError(
      'E_SHAPE',
      `crossEntropy: logits has ${logits.length} values, targets ${targets.length}; expected [${rows}, ${vocab}] and [${rows}]`,
    );
  const d = zerosLike(logits, logits.length);
  let count = 0;
  for (let r = 0; r < rows; r++) if (targets[r] !== ignoreIndex) count++;
  let total = 0;
  for (let r = 0; r < rows; r++) {
    const t = targets[r]!;
    if (t === ignoreIndex) continue;
    if (!Number.isInteger(t) || t < 0 || t >= vocab)
      throw new CalderaError('E_VALUE', `crossEntropy: target ${t} at row ${r} is outside [0, ${vocab})`);
    const o = r * vocab;
    let mx = -Infinity;
    for (let j = 0; j < vocab; j++) mx = Math.max(mx, logits[o + j]!);
    let s = 0;
    for (let j = 0; j < vocab; j++) s += Math.exp(logits[o + j]! - mx);
    const lse = mx + Math.log(s);
    total += lse - logits[o + t]!;
    for (let j = 0; j < vocab; j++) d[o + j] = Math.exp(logits[o + j]! - lse) / count;
    d[o + t] = d[o + t]! - 1 / count;
  }
  return { loss: count > 0 ? total / count : 0, count, dLogits: d };
}

/**
 * Cross-entropy against soft targets (distillation): the mean over rows of `−Σ_j p_j·log softmax(logits)_j`, with
 * `probs` (`[rows, vocab]`, each row summing to 1) e.g. a teacher model's softmax, and its gradient
 * `(softmax − p) / rows`. Equal to the mean KL divergence from `p` up to the (constant) entropy of `p`.
 */
export function softCrossEntropy(
  logits: Vec,
  rows: number,
  vocab: number,
  probs: ArrayLike<number>,
): CrossEntropyResult {
  if (logits.length !== rows * vocab || probs.length !== rows * vocab)
    throw new CalderaError(
      'E_SHAPE',
      `softCrossEntropy: logits has ${logits.length} values, probs ${probs.length}; expected ${rows}·${vocab}`,
    );
  const d = zerosLike(logits, logits.length);
  let total = 0;
  for (let r = 0; r < rows; r++) {
    const o = r * vocab;
    let mx = -Infinity;
    for (let j = 0; j < vocab; j++) mx = Math.max(mx, logits[o + j]!);
    let s = 0;
    for (let j = 0; j < vocab; j++) s += Math.exp(logits[o + j]! - mx);
    const lse = mx + Math.log(s);
    for (let j = 0; j < vocab; j++) {
      const p = probs[o + j]!;
      total -= p * (logits[o + j]! - lse);
      d[o + j] = (Math.exp(logits[o + j]! - lse) - p) / rows;
    }
  }
  return { loss: rows > 0 ? total / rows : 0, count: rows, dLogits: d };
}
