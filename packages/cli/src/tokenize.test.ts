import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { referenceModelDir, referenceTextPath } from '@caldera/reference-model';
import { loadTokenizer } from '@caldera/runtime-node';
import {
  compactTokenIds,
  PARALLEL_TOKENIZE_CHARS,
  splitByLength,
  tokenizeDocuments,
} from './commands/common.js';

describe('compactTokenIds (the training text of caldera train)', () => {
  it('keeps every id of a vocabulary above 65 536 (Llama 3, Qwen2): they were cut to 16 bits', () => {
    const ids = [0, 65_535, 65_536, 70_476, 151_935];
    expect(Array.from(compactTokenIds(ids, 151_936))).toEqual(ids);
    const small = compactTokenIds([0, 7, 65_535], 65_536);
    expect(small).toBeInstanceOf(Uint16Array); // two bytes per token where every id fits
    expect(Array.from(small)).toEqual([0, 7, 65_535]);
  });
});

describe('splitByLength', () => {
  it('keeps every document once, in order, in runs of about equal length', () => {
    const docs = Array.from({ length: 101 }, (_, i) => 'x'.repeat(1 + ((i * 37) % 50)));
    const total = docs.join('').length;
    for (const parts of [1, 2, 3, 7]) {
      const runs = splitByLength(docs, parts, 0);
      expect(runs.flat()).toEqual(docs);
      expect(runs.length).toBe(parts);
      // each run ends once it holds its share: it exceeds an equal share by less than one (≤ 50-character) document
      for (const r of runs) expect(r.join('').length).toBeLessThan(total / parts + 50);
    }
    expect(splitByLength(docs, 4, total + 1)).toEqual([docs]);
  });
});

describe('tokenizeDocuments', () => {
  // the built thread entry (the CLI tests run after the build)
  const workerUrl = new URL('../dist/tokenize-thread.js', import.meta.url);
  const dir = referenceModelDir();

  it('gives the same ids on two threads as on one, BOS first', async () => {
    // the first documents of the reference calibration text, just over the size that goes to threads
    const all = readFileSync(referenceTextPath('train'), 'utf8').split(/\n\s*\n/);
    const docs: string[] = [];
    for (let n = 0; n <= PARALLEL_TOKENIZE_CHARS; n += docs.at(-1)!.length) docs.push(all[docs.length]!);
    const tok = await loadTokenizer(dir);
    const serial = docs.map((d) => [7, ...tok.encode(d)]);
    const parallel = await tokenizeDocuments(dir, docs, 7, { threads: 2, workerUrl });
    expect(parallel).toEqual(serial);
    const threeThreads = await tokenizeDocuments(dir, docs, null, { threads: 3, workerUrl });
    expect(threeThreads).toEqual(serial.map((ids) => ids.slice(1)));
  });

  it('fails with E_IO when a thread fails', async () => {
    const docs = ['a'.repeat(PARALLEL_TOKENIZE_CHARS), 'b'.repeat(1000)];
    // a thread entry that throws: its error is reported, not swallowed
    const tmp = mkdtempSync(join(tmpdir(), 'caldera-tok-'));
    try {
      const bad = pathToFileURL(join(tmp, 'throws.mjs'));
      writeFileSync(bad, 'throw new Error("boom");');
      await expect(tokenizeDocuments(dir, docs, null, { threads: 2, workerUrl: bad })).rejects.toMatchObject({
        code: 'E_IO',
        message: expect.stringContaining('boom'),
      });
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
