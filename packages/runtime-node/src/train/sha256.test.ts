import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createSha256, Sha256 } from './sha256.js';

describe('Sha256', () => {
  it("gives node:crypto's digests for every length around the block and padding boundaries, in any chunking", () => {
    const data = new Uint8Array(300).map((_, i) => (i * 131 + 7) & 255);
    for (let n = 0; n <= 300; n++) {
      const bytes = data.subarray(0, n);
      const want = createHash('sha256').update(bytes).digest('hex');
      expect(new Sha256().update(bytes).digest()).toBe(want);
      // fed in uneven pieces
      const s = new Sha256();
      for (let i = 0; i < n; i += 1 + (i % 70)) s.update(bytes.subarray(i, Math.min(n, i + 1 + (i % 70))));
      expect(s.digest()).toBe(want);
    }
  });

  it('hashes strings as UTF-8, mixed with bytes, as createHash does', () => {
    const bytes = new Uint8Array([1, 2, 3, 250]);
    const want = createHash('sha256').update('model.layers.0 é€😀').update(bytes).update('').digest('hex');
    expect(new Sha256().update('model.layers.0 é€😀').update(bytes).update('').digest()).toBe(want);
    expect(new Sha256().digest()).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });

  it('refuses use after the digest', () => {
    const s = new Sha256();
    s.digest();
    expect(() => s.update('x')).toThrow(/after digest/);
    expect(() => s.digest()).toThrow(/twice/);
  });

  it("createSha256 is node:crypto's in Node (not the JavaScript one) and the JavaScript one without getBuiltinModule", () => {
    const bytes = new Uint8Array(1000).map((_, i) => i & 255);
    const want = createHash('sha256').update('k').update(bytes).digest('hex');
    const h = createSha256();
    expect(h).not.toBeInstanceOf(Sha256);
    expect(h.update('k').update(bytes).digest()).toBe(want);
    const proc = globalThis.process as { getBuiltinModule?: unknown };
    const saved = proc.getBuiltinModule;
    proc.getBuiltinModule = undefined; // as in a browser, or Node before 20.16
    try {
      const js = createSha256();
      expect(js).toBeInstanceOf(Sha256);
      expect(js.update('k').update(bytes).digest()).toBe(want);
    } finally {
      proc.getBuiltinModule = saved;
    }
  });
});
