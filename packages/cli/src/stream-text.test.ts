import { describe, expect, it } from 'vitest';
import { streamedText } from './stream-text.js';

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
