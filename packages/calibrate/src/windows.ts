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
 * Cut calibration windows of exactly `length` tokens from tokenized documents, reproducibly from `seed`.
 * With `'skip'`, each window is a random span inside one random document long enough to hold it; documents
 * are drawn without replacement while possible. With `'concat'`, the documents are shuffled, joined, and
 * non-overlapping windows are taken from random offsets of the joined stream.
 */
export function sampleWindows(
  documents: readonly ArrayLike<number>[],
  options: WindowOptions = {},
): Int32Array[] {
  assertObject(documents, 'sampleWindows', 'documents', 'an array of token arrays');
  const count = options.count ?? 64;
  const length = options.length ?? 256;
  if (!Number.isInteger(count) || count <= 0)
    throw new CalderaError('E_VALUE', `window count must be a positive integer, got ${count}`);
  if (!Number.isInteger(length) || length <= 0)
    throw new CalderaError('E_VALUE', `window length must be a positive integer, got ${length}`);
  const rng = new Rng(options.seed ?? 0);
  const long = documents.map((d, i) => ({ d, i })).filter(({ d }) => d.length >= length);
  let mode = options.shortDocuments ?? 'auto';
  if (mode !== 'skip' && mode !== 'concat' && mode !== 'auto')
    throw new CalderaError(
      'E_VALUE',
      `shortDocuments must be 'skip', 'concat' or 'auto', got '${String(mode)}'`,
    );
  if (mode === 'auto') mode = long.length >= count ? 'skip' : 'concat';

  if (mode === 'skip') {
    if (long.length === 0) {
      throw new CalderaError(
        'E_VALUE',
        `no document has ${length} tokens; use shortDocuments: 'concat' or a shorter window`,
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
      `corpus has ${total} tokens, too few for ${count} windows of ${length} (need ${count * length})`,
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
