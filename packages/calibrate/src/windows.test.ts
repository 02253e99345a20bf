import { describe, expect, it } from 'vitest';
import { isCalderaError } from '@caldera/core';
import { sampleWindows } from './windows.js';

const docs = Array.from({ length: 30 }, (_, d) => Array.from({ length: 20 + d * 7 }, (_, t) => d * 1000 + t));

describe('sampleWindows', () => {
  it('is reproducible from the seed and differs across seeds', () => {
    const a = sampleWindows(docs, { count: 8, length: 64, seed: 5 });
    const b = sampleWindows(docs, { count: 8, length: 64, seed: 5 });
    const c = sampleWindows(docs, { count: 8, length: 64, seed: 6 });
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
  });

  it("'skip' takes each window from inside one document that fills it", () => {
    const w = sampleWindows(docs, { count: 10, length: 100, seed: 1, shortDocuments: 'skip' });
    expect(w).toHaveLength(10);
    for (const win of w) {
      expect(win).toHaveLength(100);
      const doc = Math.floor(win[0]! / 1000);
      // consecutive tokens of a single document
      for (let t = 0; t < 100; t++) expect(win[t]).toBe(win[0]! + t);
      expect(docs[doc]!.length).toBeGreaterThanOrEqual(100);
    }
    // documents are drawn without replacement while enough exist
    expect(new Set(w.map((win) => Math.floor(win[0]! / 1000))).size).toBe(10);
  });

  it("'concat' joins short documents and returns non-overlapping windows", () => {
    const w = sampleWindows(docs, { count: 20, length: 128, seed: 2, shortDocuments: 'concat' });
    expect(w).toHaveLength(20);
    const seen = new Set<number>();
    for (const win of w) for (const t of win) seen.add(t);
    expect(seen.size).toBe(20 * 128); // every token value is unique in this corpus, so no overlap
  });

  it('rejects impossible requests with CalderaError', () => {
    try {
      sampleWindows(docs, { count: 10_000, length: 128 });
      expect.unreachable();
    } catch (e) {
      expect(isCalderaError(e, 'E_VALUE')).toBe(true);
    }
    expect(() => sampleWindows(docs, { count: 1, length: 10_000, shortDocuments: 'skip' })).toThrow(
      /no document/,
    );
  });

  it('names itself and the option in its errors; null options are the defaults (a TypeError before)', () => {
    expect(() => sampleWindows(docs, { count: 0 })).toThrow(
      'E_VALUE: sampleWindows: count must be a positive integer, got 0',
    );
    expect(() => sampleWindows(docs, { length: -2 })).toThrow(
      'E_VALUE: sampleWindows: length must be a positive integer, got -2',
    );
    // null options are the defaults: 64 windows of 256, more than these documents hold (not a TypeError)
    expect(() => sampleWindows(docs, null as never)).toThrow(
      /^E_VALUE: sampleWindows: corpus has 3645 tokens, too few for 64 windows of 256/,
    );
    expect(sampleWindows(docs.concat(docs, docs, docs, docs), null as never)).toHaveLength(64);
  });

  it('rejects an unknown shortDocuments mode instead of treating it as concat', () => {
    expect(() => sampleWindows(docs, { count: 1, length: 8, shortDocuments: 'split' as never })).toThrow(
      /shortDocuments must be 'skip', 'concat' or 'auto', got 'split'/,
    );
  });

  it('refuses fractional, negative and out-of-range token ids, naming the first', () => {
    // before: 1.5 was truncated to 1 and −3 kept, silently, in the Int32Array windows
    const withBad = (bad: number) => docs.map((d, k) => (k === 4 ? d.map((t, i) => (i === 9 ? bad : t)) : d));
    for (const [bad, shown] of [
      [1.5, '1.5'],
      [-3, '-3'],
      [NaN, 'NaN'],
      [2 ** 31, '2147483648'],
    ] as const) {
      let caught: unknown;
      try {
        sampleWindows(withBad(bad), { count: 4, length: 16 });
      } catch (e) {
        caught = e;
      }
      expect(isCalderaError(caught, 'E_VALUE')).toBe(true);
      expect((caught as Error).message).toBe(
        `E_VALUE: sampleWindows: documents[4][9] is ${shown}; token ids must be non-negative integers below 2^31`,
      );
    }
    // typed arrays of ids pass
    expect(sampleWindows([Int32Array.from(docs[20]!)], { count: 1, length: 16 })).toHaveLength(1);
  });
});
