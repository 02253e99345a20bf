import { describe, expect, it } from 'vitest';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Rng, tensor, type Tensor } from '@caldera/core';
import { Llama2cTokenizer, loadLlama2c, planLlama2cMemory, readLlama2cLayout } from './llama2c.js';
import { DenseF16Linear } from './linear.js';
import type { MemoryPlan } from './memory-plan.js';
import { heldBytes, heldBytesExcept, sharedBuffersExcept, wasmMemories } from './testing/held-bytes.js';
import { createDecodePool } from './kernels/decode-pool.js';
import { referenceLogits } from './testing/reference.js';

const dim = 16;
const hidden = 24;
const layers = 2;
const heads = 4;
const kvHeads = 2;
const vocab = 20;
const seqLen = 32;

/** The shape of the model {@link build} writes (by default the small one above). */
const SMALL = { dim, hidden, layers, vocab };

/** A llama2.c file with random weights (classifier `wcls` when `untied`) and the same tensors under HF names. */
function build(
  untied: boolean,
  { dim, hidden, layers, vocab } = SMALL,
): { bin: Uint8Array; raw: Record<string, Tensor<'f32'>> } {
  const hd = dim / heads;
  const rng = new Rng(5);
  const parts: Float32Array[] = [];
  const raw: Record<string, Tensor<'f32'>> = {};
  const put = (n: number, name?: string, shape?: number[], std = 0.3, one = false) => {
    const a = rng.fillNormal(new Float32Array(n), 0, std);
    if (one) a.forEach((v, i) => (a[i] = 1 + v));
    parts.push(a);
    if (name) raw[name] = tensor('f32', shape!, a);
  };
  put(vocab * dim, 'model.embed_tokens.weight', [vocab, dim], 1);
  const kv = kvHeads * hd;
  const L = (n: string) => Array.from({ length: layers }, (_, l) => `model.layers.${l}.${n}.weight`);
  L('input_layernorm').forEach((n) => put(dim, n, [dim], 0.1, true));
  L('self_attn.q_proj').forEach((n) => put(dim * dim, n, [dim, dim]));
  L('self_attn.k_proj').forEach((n) => put(kv * dim, n, [kv, dim]));
  L('self_attn.v_proj').forEach((n) => put(kv * dim, n, [kv, dim]));
  L('self_attn.o_proj').forEach((n) => put(dim * dim, n, [dim, dim]));
  L('post_attention_layernorm').forEach((n) => put(dim, n, [dim], 0.1, true));
  L('mlp.gate_proj').forEach((n) => put(hidden * dim, n, [hidden, dim]));
  L('mlp.down_proj').forEach((n) => put(dim * hidden, n, [dim, hidden]));
  L('mlp.up_proj').forEach((n) => put(hidden * dim, n, [hidden, dim]));
  put(dim, 'model.norm.weight', [dim], 0.1, true);
  put(seqLen * hd); // freq_cis_real + freq_cis_imag (unused by the loader)
  if (untied) put(vocab * dim, 'lm_head.weight', [vocab, dim], 1);
  const header = Int32Array.of(dim, hidden, layers, heads, kvHeads, untied ? -vocab : vocab, seqLen);
  const total = parts.reduce((s, p) => s + p.length, 0);
  const bin = new Uint8Array(28 + 4 * total);
  bin.set(new Uint8Array(header.buffer), 0);
  let o = 28;
  for (const p of parts) {
    bin.set(new Uint8Array(p.buffer), o);
    o += 4 * p.length;
  }
  return { bin, raw };
}

describe('llama2.c import', () => {
  it.each([false, true])(
    'logits equal a reference forward with interleaved RoPE on the file weights (untied=%s)',
    async (untied) => {
      const { bin, raw } = build(untied);
      const dir = await mkdtemp(join(tmpdir(), 'caldera-l2c-'));
      await writeFile(join(dir, 'model.bin'), bin);
      const { model, config } = await loadLlama2c(join(dir, 'model.bin'));
      expect(config.tieWordEmbeddings).toBe(!untied);
      const tokens = [1, 7, 3, 19, 0, 5];
      const got = model.forward(tokens);
      const ref = referenceLogits(config, raw, tokens, 'interleaved');
      let max = 0;
      ref.forEach((r) => r.forEach((v) => (max = Math.max(max, Math.abs(v)))));
      // f32 forward vs f64 reference on a 2-layer model: 1e-4 relative to the logit scale
      ref.forEach((r, t) =>
        r.forEach((v, j) => expect(Math.abs(got[t * vocab + j]! - v)).toBeLessThan(1e-4 * max)),
      );
      await writeFile(join(dir, 'short.bin'), bin.subarray(0, bin.length - 4));
      await expect(loadLlama2c(join(dir, 'short.bin'))).rejects.toThrow(/E_FORMAT.*bytes, expected/);
      // a path that is not a string is E_VALUE (not Node's TypeError, nor E_IO); null options are none
      for (const path of [null, undefined])
        await expect(loadLlama2c(path as unknown as string)).rejects.toThrow(
          /^E_VALUE: loadLlama2c: the checkpoint path must be a path \(a non-empty string\), got (null|undefined)$/,
        );
      expect((await loadLlama2c(join(dir, 'model.bin'), null as unknown as object)).config.vocabSize).toBe(
        vocab,
      );
    },
  );

  it('readLlama2cLayout reads the header and size only; loading checks values per tensor, aborts, reports progress and rounds to f16', async () => {
    const { bin } = build(true);
    const dir = await mkdtemp(join(tmpdir(), 'caldera-l2c-layout-'));
    const path = join(dir, 'model.bin');
    await writeFile(path, bin);
    const layout = await readLlama2cLayout(path);
    expect(layout.header).toEqual({
      dim,
      hidden,
      layers,
      heads,
      kvHeads,
      vocab,
      seqLen,
      sharedClassifier: false,
    });
    expect(layout.fileBytes).toBe(bin.length);
    expect(layout.config.tieWordEmbeddings).toBe(false);
    // only the header and size are looked at: weights full of NaN do not matter to the layout, but to the loader
    const nan = bin.slice();
    new Float32Array(nan.buffer, 28 + 4 * (vocab * dim + 3), 1)[0] = NaN; // the 4th float of the first norm
    await writeFile(join(dir, 'nan.bin'), nan);
    expect((await readLlama2cLayout(join(dir, 'nan.bin'))).fileBytes).toBe(bin.length);
    await expect(loadLlama2c(join(dir, 'nan.bin'))).rejects.toThrow(
      `${join(dir, 'nan.bin')}: non-finite weight at float index ${vocab * dim + 3}`,
    );
    await writeFile(join(dir, 'short.bin'), bin.subarray(0, 20));
    await expect(readLlama2cLayout(join(dir, 'short.bin'))).rejects.toThrow(
      /too short for a llama2.c header/,
    );
    await expect(readLlama2cLayout(join(dir, 'none.bin'))).rejects.toThrow(/E_MISSING/);
    // progress: bytes read, rising to the file size
    const seen: number[] = [];
    const f32 = await loadLlama2c(path, {
      onProgress: ({ done, total }) => (expect(total).toBe(bin.length), seen.push(done)),
    });
    expect(seen.length).toBe(11); // the embedding, nine per-layer sections, the end
    expect(seen.every((d, i) => i === 0 || d > seen[i - 1]!)).toBe(true);
    expect(seen.at(-1)).toBe(bin.length);
    // abort between tensors
    const ac = new AbortController();
    const stop = loadLlama2c(path, { signal: ac.signal, onProgress: () => ac.abort(new Error('stop')) });
    await expect(stop).rejects.toThrow(/E_ABORTED: loading was aborted/);
    // dtype f16: 16-bit linears and head; the logits those of the f32 model within f16 rounding
    const half = await loadLlama2c(path, { dtype: 'f16' });
    expect(half.model.linear('model.layers.1.mlp.down_proj')).toBeInstanceOf(DenseF16Linear);
    expect(half.model.weights.lmHead).toBeUndefined();
    const tokens = [1, 7, 3, 19];
    const a = half.model.forward(tokens);
    const b = f32.model.forward(tokens);
    let max = 0;
    b.forEach((v) => (max = Math.max(max, Math.abs(v))));
    // weights of std 0.3 rounded to f16 (relative 2⁻¹¹) through two layers: well under 1 % of the logit scale
    for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(0.01 * max);
    await expect(loadLlama2c(path, { dtype: 'bf16' as never })).rejects.toThrow(/dtype must be/);
  });

  it('onPlan states what the loaded model holds (tied and untied, f32 and f16), before any weight is read', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-l2c-plan-'));
    for (const untied of [false, true]) {
      const path = join(dir, `model-${untied}.bin`);
      await writeFile(path, build(untied).bin);
      for (const dtype of ['auto', 'f16'] as const) {
        const plans: MemoryPlan[] = [];
        const { model, config } = await loadLlama2c(path, { dtype, onPlan: (p) => plans.push(p) });
        expect(plans).toHaveLength(1);
        // exact: every weight array and kernel memory the model keeps (an untied f32 classifier once, not twice)
        const head = (model as unknown as { head: unknown }).head;
        expect(heldBytes(model.weights, head), `untied ${untied}, ${dtype}`).toBe(plans[0]!.weightBytes);
        expect(heldBytes(head)).toBe(plans[0]!.parts.lmHead);
        expect(planLlama2cMemory(config, dtype)).toEqual(plans[0]);
        // the blocks' linears in one memory (the model's dense arena), not one each
        expect(wasmMemories([], model.weights.blocks), `untied ${untied}, ${dtype}`).toBe(1);
        // kernelArenas false: one memory per linear, as its plan counts them
        const own: MemoryPlan[] = [];
        const alone = await loadLlama2c(path, { dtype, kernelArenas: false, onPlan: (p) => own.push(p) });
        const aloneHead = (alone.model as unknown as { head: unknown }).head;
        expect(heldBytes(alone.model.weights, aloneHead)).toBe(own[0]!.weightBytes);
        expect(own[0]).toEqual(planLlama2cMemory(config, dtype, false));
        expect(wasmMemories([], alone.model.weights.blocks)).toBe(7 * config.numLayers);
        // with a decode pool (this model's layers are too small to split, its head then too: headSplits; the test
        // below splits them): the same plan, bytes and logits
        const decodePool = await createDecodePool({ threads: 2 });
        try {
          const pooled = await loadLlama2c(path, { dtype, decodePool });
          const pooledHead = (pooled.model as unknown as { head: unknown }).head;
          expect(heldBytesExcept([decodePool], pooled.model.weights, pooledHead)).toBe(plans[0]!.weightBytes);
          expect(heldBytesExcept([decodePool], pooledHead)).toBe(plans[0]!.parts.lmHead);
          const tokens = [1, 7, 3, 19, 0, 5];
          expect(pooled.model.forward(tokens)).toEqual(model.forward(tokens));
        } finally {
          decodePool.dispose();
        }
        // refused in onPlan: nothing read (no progress), the error rethrown
        let progress = 0;
        const refuse = () => {
          throw new Error('over budget');
        };
        await expect(
          loadLlama2c(path, { dtype, onPlan: refuse, onProgress: () => progress++ }),
        ).rejects.toThrow('over budget');
        const ac = new AbortController();
        await expect(
          loadLlama2c(path, { signal: ac.signal, onPlan: () => ac.abort(), onProgress: () => progress++ }),
        ).rejects.toThrow(/E_ABORTED/);
        expect(progress).toBe(0);
      }
    }
  });

  it('tokenizer.bin: BPE by score with dummy prefix and byte fallback; decode inverts encode', () => {
    // vocabulary: <unk> <s> </s>, 256 byte tokens, then pieces with scores (higher merges first)
    const pieces: [string, number][] = [
      ['<unk>', 0],
      ['<s>', 0],
      ['</s>', 0],
      ...Array.from({ length: 256 }, (_, b): [string, number] => [
        `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`,
        0,
      ]),
      [' ', -1],
      ['a', -1],
      ['b', -1],
      ['c', -1],
      ['ab', -2],
      [' a', -3],
      [' ab', -2.5],
      ['abc', -4],
    ];
    const enc = new TextEncoder();
    const chunks: Uint8Array[] = [new Uint8Array(Int32Array.of(8).buffer)];
    for (const [s, score] of pieces) {
      const b = enc.encode(s);
      const head = new DataView(new ArrayBuffer(8));
      head.setFloat32(0, score, true);
      head.setInt32(4, b.length, true);
      chunks.push(new Uint8Array(head.buffer), b);
    }
    const bytes = new Uint8Array(chunks.reduce((s, c) => s + c.length, 0));
    let o = 0;
    for (const c of chunks) {
      bytes.set(c, o);
      o += c.length;
    }
    const tok = Llama2cTokenizer.fromBytes(bytes, pieces.length);
    const id = (s: string) => pieces.findIndex(([p]) => p === s);
    // " abc": [' ','a','b','c'] → 'ab' (−2) first → [' ','ab','c'] → ' ab' (−2.5) → [' ab','c'] (no ' abc')
    expect(tok.encode('abc', { bos: true })).toEqual([1, id(' ab'), id('c')]);
    // 'é' is not a piece: two UTF-8 byte tokens (3 + byte)
    expect(tok.encode('aé')).toEqual([id(' a'), 3 + 0xc3, 3 + 0xa9]);
    expect(() => tok.encode(null as never)).toThrow('E_VALUE: encode: text must be a string, got null');
    for (const text of ['abc', 'aé cab', 'ba  c'])
      expect(tok.decode(tok.encode(text, { bos: true }))).toBe(text);
    // encode and decode passed on as functions (generate's decode option) keep their tokenizer
    const { encode, decode } = tok;
    expect(decode(encode('abc'))).toBe('abc');
    expect(() => Llama2cTokenizer.fromBytes(bytes.subarray(0, 30), pieces.length)).toThrow(/E_FORMAT/);
    // a vocabulary size that is not a positive integer: an empty vocabulary (every text as byte tokens) or a
    // RangeError before
    for (const [bad, shown] of [
      [undefined, 'undefined'],
      [NaN, 'NaN'],
      [0, '0'],
      [1.5, '1.5'],
      [-1, '-1'],
    ] as const)
      expect(() => Llama2cTokenizer.fromBytes(bytes, bad as never)).toThrow(
        `E_VALUE: tokenizer.bin: vocabSize must be an integer ≥ 3 (BOS, EOS and the tokens after them), got ${shown}`,
      );
    // decode: arrays of ids in the vocabulary only (a string's characters were looked up as ids, a number gave '')
    for (const [bad, message] of [
      [null, 'decode: ids must be an array of token ids, got null'],
      [5, 'decode: ids must be an array of token ids, got a number'],
      ['12', 'decode: ids must be an array of token ids, got a string'],
      [['5'], "decode: token 0 is the string '5', not a token id"],
      [[4, 999], 'decode: token id 999 out of range [0, 267)'],
    ] as const)
      expect(() => tok.decode(bad as never)).toThrow(`E_VALUE: ${message}`);
  });

  it("encode merges as run.c's quadratic loop does (highest score, leftmost of equal ones), on random vocabularies with tied scores", () => {
    // run.c's loop, as the tokenizer had it: rescan every adjacent pair after each merge
    const bruteForce = (tok: Llama2cTokenizer, text: string) => {
      const ids = new Map<string, number>();
      tok.vocab.forEach((s, i) => ids.has(s) || ids.set(s, i));
      const out: number[] = [];
      if (text.length > 0) out.push(ids.get(' ')!);
      for (const ch of text) {
        const id = ids.get(ch);
        if (id !== undefined) out.push(id);
        else for (const b of new TextEncoder().encode(ch)) out.push(b + 3);
      }
      for (;;) {
        let best = -Infinity;
        let at = -1;
        let bestId = -1;
        for (let i = 0; i + 1 < out.length; i++) {
          const id = ids.get(tok.vocab[out[i]!]! + tok.vocab[out[i + 1]!]!);
          if (id !== undefined && tok.scores[id]! > best) {
            best = tok.scores[id]!;
            at = i;
            bestId = id;
          }
        }
        if (at < 0) return out;
        out.splice(at, 2, bestId);
      }
    };
    const rng = new Rng(5);
    const letters = ['a', 'b', 'c', ' ', 'é'];
    for (let trial = 0; trial < 40; trial++) {
      // 259 specials and bytes, the letters, then random concatenations of pieces (scores from a few values: ties)
      const vocab = [
        '<unk>',
        '<s>',
        '</s>',
        ...Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).padStart(2, '0').toUpperCase()}>`),
        ...letters,
      ];
      const pieces = new Set(vocab);
      while (vocab.length < 259 + letters.length + 30) {
        const a = vocab[259 + Math.floor(rng.uniform() * (vocab.length - 259))]!;
        const b = vocab[259 + Math.floor(rng.uniform() * (vocab.length - 259))]!;
        if (!pieces.has(a + b) && (a + b).length <= 6) {
          pieces.add(a + b);
          vocab.push(a + b);
        }
      }
      const scores = Float32Array.from(vocab, () => -Math.floor(rng.uniform() * 4));
      const tok = new Llama2cTokenizer(vocab, scores);
      const text = Array.from(
        { length: 1 + Math.floor(rng.uniform() * 60) },
        () => letters[Math.floor(rng.uniform() * letters.length)],
      ).join('');
      expect(tok.encode(text), `trial ${trial}: ${JSON.stringify(text)}`).toEqual(bruteForce(tok, text));
    }
  });
  it('with a decode pool that splits the MLP, the loader splits the head too (tied and untied, f32 and f16): same logits and bytes', async () => {
    // 4096 × 64 MLP layers and head: 2¹⁸ weights each, the split threshold
    const big = { dim: 64, hidden: 4096, layers: 1, vocab: 4096 };
    const dir = await mkdtemp(join(tmpdir(), 'caldera-l2c-split-'));
    const decodePool = await createDecodePool({ threads: 2 });
    try {
      for (const untied of [false, true]) {
        const path = join(dir, `model-${untied}.bin`);
        await writeFile(path, build(untied, big).bin);
        for (const dtype of ['auto', 'f16'] as const) {
          const what = `untied ${untied}, ${dtype}`;
          const alone = await loadLlama2c(path, { dtype });
          const plans: MemoryPlan[] = [];
          const pooled = await loadLlama2c(path, { dtype, decodePool, onPlan: (p) => plans.push(p) });
          const head = (pooled.model as unknown as { head: unknown }).head;
          // a split dense layer holds its weights in a shared memory
          expect(sharedBuffersExcept([decodePool], head), what).toBe(1);
          expect(heldBytesExcept([decodePool], pooled.model.weights, head), what).toBe(plans[0]!.weightBytes);
          const tokens = [1, 7, 3, 19, 0, 5];
          expect(pooled.model.forward(tokens), what).toEqual(alone.model.forward(tokens));
        }
      }
    } finally {
      decodePool.dispose();
    }
  });
});
