import { assertObject, CalderaError, Rng } from '@caldera/core';

/** Options for {@link sampleWindows}. */
export interface WindowOptions {
  /** Number of windows N. Default 64. */
  count?: number;
  /** Tokens per window L. Default 256. */
  length?: number;
  /** Seed of the sampling; the same seed gives the same windows. Default 0. */
  seed?: number;
  /**
   * How to treat documents shorter than `length`. `'skip'` keeps only documents that fill a whole window (as the
   * reference implementation does); `'concat'` joins the documents (in a seeded order) into one stream first, for corpora
   * of short documents. Default `'auto'`: `'skip'` when at least `count` windows fit inside single documents, else
   * `'concat'`.
   */
  shortDocuments?: 'skip' | 'concat' | 'auto';
}

/**
 * Throw `E_VALUE` naming the first token that is not a valid id: a non-negative integer that an `Int32Array` holds
 * (below 2³¹; a fraction, a negative number, NaN or a larger value would be truncated or wrapped there). One pass
 * over the tokens, a single integer comparison each.
 */
function checkTokenIds(documents: readonly ArrayLike<number>[]): void {
  for (let k = 0; k < documents.length; k++) {
    const d = documents[k]!;
    assertObject(d, 'sampleWindows', `documents[${k}]`, 'an array of token ids');
    for (let t = 0; t < d.length; t++) {
      const id = d[t]!;
      // (id | 0) === id: an integer in [−2³¹, 2³¹) (false for NaN, fractions, anything larger or not a number)
      if ((id | 0) !== id || id < 0)
        throw new CalderaError(
          'E_VALUE',
          `sampleWindows: documents[${k}][${t}] is ${String(id)}; token ids must be non-negative integers below 2^31`,
        );
    }
  }
}

/**
 * Cut calibration windows of exactly `length` tokens from tokenized documents, reproducibly from `seed`.
 * With `'skip'`, each window is a random span inside one random document long enough to hold it; documents
 * are drawn without replacement while possible. With `'concat'`, the documents are shuffled, joined, and
 * non-overlapping windows are taken from random offsets of the joined stream. Every token must be a non-negative
 * integer below 2³¹ (`E_VALUE` naming the first that is not, by document and position).
 */
export function sampleWindows(
  documents: readonly ArrayLike<number>[],
  options: WindowOptions = {},
): Int32Array[] {
  assertObject(documents, 'sampleWindows', 'documents', 'an array of token arrays');
  options ??= {}; // from JavaScript: null options are none
  const count = options.count ?? 64;
  const length = options.length ?? 256;
  if (!Number.isInteger(count) || count <= 0)
    throw new CalderaError('E_VALUE', `sampleWindows: count must be a positive integer, got ${count}`);
  if (!Number.isInteger(length) || length <= 0)
    throw new CalderaError('E_VALUE', `sampleWindows: length must be a positive integer, got ${length}`);
  checkTokenIds(documents);
  const rng = new Rng(options.seed ?? 0);
  const long = documents.map((d, i) => ({ d, i })).filter(({ d }) => d.length >= length);
  let mode = options.shortDocuments ?? 'auto';
  if (mode !== 'skip' && mode !== 'concat' && mode !== 'auto')
    throw new CalderaError(
      'E_VALUE',
      `sampleWindows: shortDocuments must be 'skip', 'concat' or 'auto', got '${String(mode)}'`,
    );
  if (mode === 'auto') mode = long.length >= count ? 'skip' : 'concat';

  if (mode === 'skip') {
    if (long.length === 0) {
      throw new CalderaError(
        'E_VALUE',
        `sampleWindows: no document has ${length} tokens; use shortDocuments: 'concat' or a shorter window`,
      );
    }
    const order = rng.shuffle(long.map((_, k) => k));
    const out: Int32Array[] = [];
    for (let w = 0; w < count; w++) {
      const { d } = long[order[w % order.length]!]!;
      const start = rng.int(d.length - length + 1);
      out.push(Int32Array.from({ length }, (_, t) => d[start + t]!));
    }
    return out;
  }

  const order = rng.shuffle(documents.map((_, k) => k));
  let total = 0;
  for (const k of order) total += documents[k]!.length;
  const slots = Math.floor(total / length);
  if (slots < count) {
    throw new CalderaError(
      'E_VALUE',
      `sampleWindows: corpus has ${total} tokens, too few for ${count} windows of ${length} (need ${count * length})`,
    );
  }
  const stream = new Int32Array(total);
  let p = 0;
  for (const k of order) {
    const d = documents[k]!;
    for (let t = 0; t < d.length; t++) stream[p++] = d[t]!;
  }
  const chosen = rng.shuffle([...Array(slots).keys()]).slice(0, count);
  return chosen.map((s) => stream.slice(s * length, (s + 1) * length));
}
