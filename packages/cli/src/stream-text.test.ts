import { describe, expect, it } from 'vitest';
import { HfTokenizer } from '@caldera/runtime-node';
import { completionDecoder, streamedText } from './stream-text.js';

/** Stream `bytes`, one token per byte, decoded as a byte-level tokenizer does (invalid UTF-8 → U+FFFD). */
function stream(bytes: Uint8Array): string[] {
  const decoder = new TextDecoder();
  const chunks: string[] = [];
  let printed = '';
  for (let i = 1; i <= bytes.length; i++) {
    const c = streamedText(printed, decoder.decode(bytes.subarray(0, i)));
    chunks.push(c);
    printed += c;
  }
  chunks.push(streamedText(printed, decoder.decode(bytes), true));
  return chunks;
}

describe('streamedText', () => {
  it('holds back a character split over tokens until its last byte, so no U+FFFD is printed mid-stream', () => {
    const text = 'a é 日本 🙂!';
    const chunks = stream(new TextEncoder().encode(text));
    expect(chunks.join('')).toBe(text);
    for (const c of chunks) expect(c).not.toContain('\uFFFD');
    // '🙂' (4 bytes) appears whole, in the chunk of its last byte
    expect(chunks).toContain('🙂');
  });

  it('prints a dangling partial character at the end, as the model produced it', () => {
    const bytes = new TextEncoder().encode('ok 🙂').subarray(0, 5); // 'ok ' and the first 2 of the emoji's 4 bytes
    const chunks = stream(bytes);
    expect(chunks.slice(0, -1).join('')).toBe('ok ');
    expect(chunks.at(-1)).toBe('\uFFFD');
  });
});

describe('completionDecoder', () => {
  // a word-level tokenizer whose decoder puts a space between words and whose config asks for the clean-up of
  // spaces before punctuation
  const words = ['<s>', 'Hello', 'world', '.', ',', "'s", 'it'];
  const tok = HfTokenizer.fromJson(
    {
      version: '1.0',
      added_tokens: [
        {
          id: 0,
          content: '<s>',
          special: true,
          single_word: false,
          lstrip: false,
          rstrip: false,
          normalized: false,
        },
      ],
      normalizer: null,
      pre_tokenizer: { type: 'WhitespaceSplit' },
      post_processor: null,
      decoder: null,
      model: { type: 'WordLevel', vocab: Object.fromEntries(words.map((w, i) => [w, i])), unk_token: '<s>' },
    },
    { clean_up_tokenization_spaces: true },
  );
  const id = (w: string) => words.indexOf(w);

  it("is the text after the prompt's: the space between them kept, the prompt's special tokens skipped", () => {
    const completion = completionDecoder(tok, [id('<s>'), id('Hello')]);
    expect(completion([id('world')])).toBe(' world');
    expect(tok.decode([id('world')])).toBe('world'); // decoded alone, the space is lost
    expect(completionDecoder(tok, [id('<s>')])([id('world')])).toBe('world');
    expect(completionDecoder(tok, [])([id('it'), id("'s")])).toBe("it 's");
  });

  it("never rewrites text printed already: no clean-up of spaces (the config's would turn ' .' into '.')", () => {
    const completion = completionDecoder(tok, [id('Hello')]);
    const out = [id('world'), id(','), id('it'), id("'s"), id('.')];
    let printed = '';
    for (let i = 1; i <= out.length; i++) {
      const text = completion(out.slice(0, i));
      expect(text.startsWith(printed)).toBe(true);
      printed = text;
    }
    expect(printed).toBe(" world , it 's .");
    expect(tok.decode([id('Hello'), ...out])).toBe("Hello world, it's."); // what the clean-up does
  });
});
