import { describe, expect, it, vi } from 'vitest';
import { parseModelConfig } from './config.js';
import { perplexity } from './eval.js';
import { generate } from './generate.js';
import { randomModel } from './testing/random-model.js';

const cfg = parseModelConfig({
  architectures: ['LlamaForCausalLM'],
  hidden_size: 16,
  intermediate_size: 24,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 12,
  max_position_embeddings: 64,
  tie_word_embeddings: true,
});
const { model } = randomModel(cfg, 3);
const V = cfg.vocabSize;

async function collect(it: AsyncIterable<number>): Promise<number[]> {
  const out: number[] = [];
  for await (const t of it) out.push(t);
  return out;
}

function argmaxLast(ids: number[]): number {
  const l = model.forward(ids);
  const row = l.subarray((ids.length - 1) * V);
  let best = 0;
  for (let i = 1; i < V; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

/** log-softmax of logits row, f64. */
function logProb(logits: Float32Array, row: number, id: number): number {
  let mx = -Infinity;
  for (let v = 0; v < V; v++) mx = Math.max(mx, logits[row * V + v]!);
  let se = 0;
  for (let v = 0; v < V; v++) se += Math.exp(logits[row * V + v]! - mx);
  return logits[row * V + id]! - mx - Math.log(se);
}

describe('generate', () => {
  const prompt = [1, 4, 7];

  it('greedy decoding with the KV cache equals argmax of full recomputation at every step', async () => {
    const got = await collect(generate(model, prompt, { maxTokens: 6 }));
    const ctx = [...prompt];
    for (const t of got) {
      expect(t).toBe(argmaxLast(ctx));
      ctx.push(t);
    }
    expect(got).toHaveLength(6);
  });

  it('sampling is deterministic given the seed; top-k 1 is greedy; stop tokens, stop strings and abort', async () => {
    const opts = { maxTokens: 8, temperature: 1.5, topP: 0.9, seed: 11 };
    const a = await collect(generate(model, prompt, opts));
    expect(await collect(generate(model, prompt, opts))).toEqual(a);
    expect(await collect(generate(model, prompt, { ...opts, seed: 12, maxTokens: 30 }))).not.toEqual(a);
    const greedy = await collect(generate(model, prompt, { maxTokens: 5 }));
    expect(await collect(generate(model, prompt, { maxTokens: 5, temperature: 2, topK: 1 }))).toEqual(greedy);
    const stop = await collect(generate(model, prompt, { maxTokens: 5, stopTokens: [greedy[1]!] }));
    expect(stop).toEqual(greedy.slice(0, greedy.indexOf(greedy[1]!) + 1));
    const decode = (ids: number[]) => ids.map((i) => String.fromCharCode(97 + i)).join('');
    const st = decode(greedy.slice(1, 3));
    const s = await collect(generate(model, prompt, { maxTokens: 5, decode, stopStrings: [st] }));
    let k = 1;
    while (!decode(greedy.slice(0, k)).includes(st)) k++;
    expect(s).toEqual(greedy.slice(0, k - 1)); // the token completing the stop string is not yielded
    const ac = new AbortController();
    const it = generate(model, prompt, { maxTokens: 5, signal: ac.signal });
    await it.next();
    ac.abort();
    await expect(it.next()).rejects.toThrow(/E_ABORTED/);
    // bad requests fail on the first next(), naming the problem (the KV cache is never overrun)
    await expect(collect(generate(model, prompt, { maxTokens: -1 }))).rejects.toThrow(/E_VALUE.*maxTokens/);
    const long = Array.from({ length: model.config.maxPositions + 1 }, (_, i) => i % V);
    await expect(collect(generate(model, long, { maxTokens: 1 }))).rejects.toThrow(
      /E_VALUE.*prompt of \d+ tokens/,
    );
  });

  it('lets timers run between tokens, so an AbortSignal fired by a timer stops generation', async () => {
    // forward passes are synchronous: without a turn of the event loop between tokens this timer fired only after
    // the whole generation, and the signal was never seen
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 0);
    const got: number[] = [];
    await expect(
      (async () => {
        for await (const t of generate(model, prompt, { maxTokens: 50, signal: ac.signal })) got.push(t);
      })(),
    ).rejects.toThrow(/E_ABORTED/);
    expect(got.length).toBeLessThan(50);
  });

  it('runs one forward pass per token: none after the last, none for maxTokens 0 or an aborted signal', async () => {
    const spy = vi.spyOn(model, 'forward');
    try {
      const calls = async (p: number[], o: Parameters<typeof generate>[2]) => {
        spy.mockClear();
        const n = (await collect(generate(model, p, o))).length;
        return [n, spy.mock.calls.length];
      };
      expect(await calls(prompt, { maxTokens: 3 })).toEqual([3, 3]);
      expect(await calls(prompt, { maxTokens: 1 })).toEqual([1, 1]);
      expect(await calls(prompt, { maxTokens: 0 })).toEqual([0, 0]);
      // the context leaves room for 2 tokens after this prompt
      const near = Array.from({ length: model.config.maxPositions - 2 }, (_, i) => i % V);
      expect(await calls(near, { maxTokens: 5 })).toEqual([2, 2]);
      expect(await calls([...near, 1, 2], { maxTokens: 5 })).toEqual([0, 0]);
      spy.mockClear();
      await expect(collect(generate(model, prompt, { signal: AbortSignal.abort() }))).rejects.toThrow(
        /E_ABORTED/,
      );
      expect(spy).not.toHaveBeenCalled();
    } finally {
      spy.mockRestore();
    }
  });

  it('a prompt that is not an array is E_VALUE, not a TypeError; null options are none', async () => {
    for (const p of [null, undefined, 5])
      await expect(collect(generate(model, p as unknown as number[]))).rejects.toThrow(
        /^E_VALUE: generate: the prompt must be an array of token ids, got (null|undefined|a number)$/,
      );
    const greedy = await collect(generate(model, prompt));
    expect(await collect(generate(model, prompt, null as unknown as object))).toEqual(greedy);
    // no model, or an object that is none: named (TypeErrors before)
    await expect(collect(generate(null as never, prompt))).rejects.toThrow(
      "E_VALUE: generate: model must be a LlamaModel (loadModel's model), got null",
    );
    await expect(perplexity({} as never, prompt)).rejects.toThrow(
      "E_VALUE: perplexity: model must be a LlamaModel (loadModel's model), got an object without its config",
    );
    const long = Array.from({ length: model.config.maxPositions + 1 }, (_, i) => i % V);
    await expect(collect(generate(model, long))).rejects.toThrow(
      new RegExp(
        `^E_VALUE: generate: prompt of ${long.length} tokens exceeds the model's context of ` +
          `${model.config.maxPositions} tokens \\(its max positions: max_position_embeddings \\(YaRN's factor × original_max_position_embeddings when longer\\), or sliding_window when smaller\\)$`,
      ),
    );
  });

  it('repetition penalty changes the choice away from tokens already seen', async () => {
    const plain = await collect(generate(model, prompt, { maxTokens: 12 }));
    const pen = await collect(generate(model, prompt, { maxTokens: 12, repetitionPenalty: 50 }));
    const repeats = (ids: number[]) =>
      ids.filter((t, i) => [...prompt, ...ids.slice(0, i)].includes(t)).length;
    expect(repeats(pen)).toBeLessThanOrEqual(repeats(plain));
    expect(pen).not.toEqual(plain);
  });
});

describe('perplexity', () => {
  const ids = Array.from({ length: 23 }, (_, i) => (i * 7 + 3) % V);

  it('with one window equals the mean next-token NLL of a full forward', async () => {
    const logits = model.forward(ids);
    let nll = 0;
    for (let p = 1; p < ids.length; p++) nll -= logProb(logits, p - 1, ids[p]!);
    const r = await perplexity(model, ids, { context: 64 });
    expect(r.tokens).toBe(ids.length - 1);
    // f32 logits, f64 sums: 1e-9 absolute is far above the rounding of 22 terms
    expect(Math.abs(r.nll - nll / (ids.length - 1))).toBeLessThan(1e-9);
    expect(r.ppl).toBeCloseTo(Math.exp(r.nll), 12);
  });

  it('sliding windows score every token once, each with the left context its window gives', async () => {
    const context = 8;
    const stride = 3;
    const r = await perplexity(model, ids, { context, stride });
    // brute force: token p is scored in the first window [s, s+8) (s multiple of 3) with p < s+8 and p > s, using
    // the tokens of that window before it
    let nll = 0;
    let scored = 1;
    for (let s = 0; scored < ids.length; s += stride) {
      const end = Math.min(ids.length, s + context);
      for (let p = Math.max(scored, s + 1); p < end; p++) {
        const window = ids.slice(s, p + 1);
        nll -= logProb(model.forward(window), window.length - 2, ids[p]!);
      }
      scored = end;
    }
    expect(r.tokens).toBe(ids.length - 1);
    expect(Math.abs(r.nll - nll / r.tokens)).toBeLessThan(1e-6);
    await expect(perplexity(model, ids, { context: 4, stride: 5 })).rejects.toThrow(
      /E_VALUE.*stride.*\[1, 4\]/,
    );
    await expect(perplexity(model, ids, { context: 4, stride: 1.5 })).rejects.toThrow(/E_VALUE.*stride/);
    const max = model.config.maxPositions;
    await expect(perplexity(model, ids, { context: max + 1 })).rejects.toThrow(
      new RegExp(`E_VALUE.*context must be an integer in \\[2, ${max}\\].*got ${max + 1}`),
    );
    await expect(perplexity(model, ids, { context: 0 })).rejects.toThrow(/E_VALUE.*context/);
    await expect(perplexity(model, [1], {})).rejects.toThrow(
      /E_VALUE: perplexity: needs at least 2 tokens, got 1$/,
    );
    // tokens that are not an array: E_VALUE (checkPerplexityArgs of @caldera/core), not a TypeError
    for (const t of [null, undefined])
      await expect(perplexity(model, t as unknown as number[])).rejects.toThrow(
        /^E_VALUE: perplexity: tokens must be an array of token ids, got (null|undefined)$/,
      );
    // every id before the first window (a bad last token, only ever a target, included): E_VALUE naming perplexity
    const V = model.config.vocabSize;
    await expect(perplexity(model, [...ids, V], { context: 4 })).rejects.toThrow(
      new RegExp(`^E_VALUE: perplexity: token id ${V} out of range \\[0, ${V}\\)$`),
    );
    // null options are none: the defaults (one window of min(128, max positions) tokens)
    expect(await perplexity(model, ids, null as unknown as object)).toEqual(await perplexity(model, ids));
    // an onProgress that is not a function: E_VALUE before any window, as runtime-webgpu (a TypeError after one)
    await expect(perplexity(model, ids, { onProgress: 5 as never })).rejects.toThrow(
      /^E_VALUE: perplexity: onProgress must be a function, got a number$/,
    );
  });

  it('reports progress as { done, total } objects: the end of each window, in tokens, up to the length', async () => {
    const seen: { done: number; total: number }[] = [];
    const r = await perplexity(model, ids, { context: 8, stride: 3, onProgress: (e) => seen.push(e) });
    // windows [0, 8), [3, 11), …, [15, 23): ends 8, 11, …, 23
    expect(seen).toEqual([8, 11, 14, 17, 20, 23].map((done) => ({ done, total: ids.length })));
    expect(r).toEqual(await perplexity(model, ids, { context: 8, stride: 3 }));
  });

  it('lets the event loop turn between windows: a timer fired mid-run aborts it with E_ABORTED', async () => {
    // A synchronous perplexity would never let this timer run before it returned (and would resolve with a number).
    // The timer is set after the first window and made due before the first onProgress returns (a 5 ms wait), so the
    // event loop's next timers phase, before the turn that precedes the second window, fires it: deterministic.
    const ac = new AbortController();
    const seen: { done: number; total: number }[] = [];
    const onProgress = (e: { done: number; total: number }) => {
      seen.push(e);
      if (seen.length > 1) return;
      setTimeout(() => ac.abort(new Error('timer')), 0);
      const t0 = performance.now();
      while (performance.now() - t0 < 5); // the timer is due
    };
    const run = perplexity(model, ids, { context: 4, stride: 2, signal: ac.signal, onProgress });
    await expect(run).rejects.toMatchObject({ code: 'E_ABORTED', cause: new Error('timer') });
    await expect(run).rejects.toThrow(/perplexity/);
    // stopped mid-run: after the first of the 11 windows
    expect(seen).toEqual([{ done: 4, total: ids.length }]);
  });
});
