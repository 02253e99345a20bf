import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { referenceModelDir, referenceTextPath } from '@caldera/reference-model';
import { loadTokenizer } from '@caldera/runtime-node';
import {
  compactTokenIds,
  leadingTokens,
  modelSideFiles,
  PARALLEL_TOKENIZE_CHARS,
  readDocuments,
  splitByLength,
  tokenizeDocuments,
  utf8Text,
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

  it('an abort stops the encoding within a slice and ends the threads (Ctrl-C of compress waited 8–150 s for the text)', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'caldera-tok-'));
    try {
      // a thread that would finish 1.5 s in (and then never answer): its mark must not appear once it is ended
      const marker = join(tmp, 'thread-went-on');
      const slow = pathToFileURL(join(tmp, 'slow.mjs'));
      writeFileSync(
        slow,
        `import { writeFileSync } from 'node:fs';\nsetTimeout(() => writeFileSync(${JSON.stringify(marker)}, ''), 1500);\nsetInterval(() => {}, 1000);\n`,
      );
      // the reference calibration text: this thread's half takes seconds to encode in one go
      const docs = readFileSync(referenceTextPath('train'), 'utf8').split(/\n\s*\n/);
      const ac = new AbortController();
      const reason = new Error('stop');
      setTimeout(() => ac.abort(reason), 200);
      const t0 = performance.now();
      await expect(
        tokenizeDocuments(dir, docs, null, { threads: 2, workerUrl: slow, signal: ac.signal }),
      ).rejects.toMatchObject({ code: 'E_ABORTED', cause: reason });
      // the abort at 200 ms, then at most a slice of 64 Ki characters (~0.1 s here; the rest is a loaded CI's margin)
      expect(performance.now() - t0).toBeLessThan(1500);
      await new Promise((r) => setTimeout(r, 2000));
      expect(existsSync(marker)).toBe(false);
      // an aborted signal is refused before any work
      await expect(tokenizeDocuments(dir, docs, null, { signal: ac.signal })).rejects.toMatchObject({
        code: 'E_ABORTED',
      });
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }, 30_000);

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

  it('an invalid token id from tokenizer.json is the same E_FORMAT on a thread as on the main thread (a thread made it 0)', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'caldera-tok-'));
    try {
      const t = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')) as { added_tokens: object[] };
      t.added_tokens.push({ content: '<x>', special: false }); // no id
      writeFileSync(join(tmp, 'tokenizer.json'), JSON.stringify(t));
      const doc = 'The cat sat on the mat. '.repeat(2000);
      const docs = Array.from({ length: Math.ceil(PARALLEL_TOKENIZE_CHARS / doc.length) + 2 }, () => doc);
      docs[docs.length - 1] = `${doc} <x> ${doc}`; // the last document: tokenized on the second thread
      for (const threads of [1, 2])
        await expect(tokenizeDocuments(tmp, docs, 0, { threads, workerUrl })).rejects.toMatchObject({
          code: 'E_FORMAT',
          message: expect.stringMatching(/^E_FORMAT: tokenizer\.json gives no valid token id \(undefined/),
        });
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});

describe('readDocuments and utf8Text: the text files every command reads', () => {
  const dir = mkdtempSync(join(tmpdir(), 'caldera-docs-'));
  const file = (name: string, bytes: string | Uint8Array) => {
    const p = join(dir, name);
    writeFileSync(p, bytes);
    return p;
  };

  it('reads LF, CRLF and CR line endings alike (CRLF kept a "\\r" per line, CR made one document)', async () => {
    const docs = ['One line.\nAnother line.', 'Second document.', 'Third.'];
    const lf = docs.join('\n\n');
    for (const [name, text] of [
      ['lf.txt', lf],
      ['crlf.txt', lf.replace(/\n/g, '\r\n')],
      ['cr.txt', lf.replace(/\n/g, '\r')],
    ] as const)
      expect(await readDocuments(file(name, text)), name).toEqual(docs);
    expect(await readDocuments(file('crlf.jsonl', '{"text": "a"}\r\n{"text": "b"}\r\n'))).toEqual(['a', 'b']);
  });

  it('.jsonl in any case; blank texts dropped as a .txt drops blank documents; a .json file refused', async () => {
    const lines = '{"text": "one"}\n{"text": ""}\n{"text": "   "}\n{"content": "two"}\n';
    for (const name of ['a.jsonl', 'b.JSONL'])
      expect(await readDocuments(file(name, lines))).toEqual(['one', 'two']);
    // a file of empty texts is no text at all (it gave BOS tokens only, scored and trained on)
    expect(await readDocuments(file('empty.jsonl', '{"text": ""}\n'.repeat(50)))).toEqual([]);
    await expect(readDocuments(file('c.json', lines))).rejects.toThrow(
      /^E_FORMAT: .*c\.json is a \.json file: give a \.txt/,
    );
  });

  it('reads a pipe to its end (--text /dev/stdin, <(zcat …)); a directory is E_IO naming what it is', async () => {
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const writer = spawn('sh', ['-c', `printf 'one\\n\\ntwo\\n' > ${fifo}`]);
    const closed = new Promise((r) => writer.on('close', r));
    expect(await readDocuments(fifo)).toEqual(['one', 'two\n']);
    await closed;
    await expect(readDocuments(dir)).rejects.toThrow(`E_IO: ${dir} is a directory, not a text file`);
  });

  it('names the first byte that is not UTF-8, and refuses NULs (UTF-16 without a byte-order mark)', () => {
    const at = (bytes: number[]) => {
      try {
        utf8Text(Uint8Array.from(bytes), 'f.txt');
      } catch (e) {
        return (e as Error).message;
      }
      return 'decoded';
    };
    const hello = [...Buffer.from('hello ')];
    // a surrogate (ED A0 80) was named at a later byte, an overlong form (E0 80 AF) at none
    expect(at([...hello, 0xed, 0xa0, 0x80, 0x20, 0xff])).toMatch(
      /^E_FORMAT: f\.txt is not UTF-8 text \(byte 6: 0xed\)/,
    );
    expect(at([...hello, 0xe0, 0x80, 0xaf])).toMatch(/\(byte 6: 0xe0\)/);
    expect(at([...hello, 0xf4, 0x90, 0x80, 0x80])).toMatch(/\(byte 6: 0xf4\)/);
    expect(at([...Buffer.from('hi', 'utf16le')])).toMatch(
      /^E_FORMAT: f\.txt is not UTF-8 text \(byte 1: 0x00, a NUL\)/,
    );
    expect(at([...hello, 0xe2, 0x82, 0xac])).toBe('decoded'); // €
  });

  it('leadingTokens: of one long document, a prefix: the same ids as encoding it whole (it was encoded whole: 31 s for 8 MB)', async () => {
    const tok = await loadTokenizer(referenceModelDir());
    // 1.5 MB of the reference text as a single document (no blank lines)
    const text = readFileSync(referenceTextPath('train'), 'utf8')
      .slice(0, 1_500_000)
      .replace(/\n\s*\n/g, '\n');
    const whole = tok.encode(text);
    let chars = 0;
    const encode = (t: string) => ((chars += t.length), tok.encode(t));
    for (const max of [1, 100, 1000, 8192]) {
      chars = 0;
      expect(leadingTokens(encode, [text], 7, max)).toEqual([7, ...whole].slice(0, max));
      if (max <= 1000) expect(chars).toBeLessThan(0.1 * text.length);
    }
    // a document just longer than a prefix: whole
    expect(leadingTokens(encode, [text.slice(0, 3000)], null, 10)).toEqual(
      tok.encode(text.slice(0, 3000)).slice(0, 10),
    );
  }, 60_000);

  it('leadingTokens: the first max ids of the documents, encoding only those it takes', () => {
    const encoded: string[] = [];
    const encode = (d: string) => (encoded.push(d), [...d].map((c) => c.charCodeAt(0)));
    expect(leadingTokens(encode, ['ab', 'cd', 'ef'], 1, 5)).toEqual([1, 97, 98, 1, 99]);
    expect(encoded).toEqual(['ab', 'cd']);
    expect(leadingTokens(encode, ['ab'], null, 10)).toEqual([97, 98]);
  });
});

describe('modelSideFiles (what a checkpoint copies from its model)', () => {
  it('a side file that is a dangling symbolic link is E_IO naming it (the checkpoint went without it silently)', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'caldera-side-'));
    try {
      writeFileSync(join(tmp, 'config.json'), '{}');
      writeFileSync(join(tmp, 'tokenizer.json'), '{}');
      expect(Object.keys(await modelSideFiles(tmp, true)).sort()).toEqual(['config.json', 'tokenizer.json']);
      symlinkSync(join(tmp, 'blobs', 'gone'), join(tmp, 'tokenizer_config.json'));
      await expect(modelSideFiles(tmp, true)).rejects.toThrow(
        /^E_IO: .*tokenizer_config\.json is a symbolic link to .*blobs\/gone, which does not exist$/,
      );
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
