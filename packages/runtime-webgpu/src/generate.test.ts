import { describe, expect, it } from 'vitest';
import { CalderaError, serializeSafetensors } from '@caldera/core';
import { calderaCheckpointMeta } from '@caldera/lowrank';
import { generate, perplexity } from './generate.js';
import { loadModelFromBuffer } from './load.js';
import { gpuTitle, testDevice } from './testing/gpu.js';
import { sampleFromAllLogits } from './testing/sampling.js';
import { tinyModel, tinyModelSource } from './testing/tiny-model.js';

const { device: dev, reason } = await testDevice();

async function collect(it: AsyncIterable<number>): Promise<number[]> {
  const out: number[] = [];
  for await (const t of it) out.push(t);
  return out;
}

/**
 * {@link tinyModel} on the test device with a KV cache of `contextLength` tokens and prefill batches of 2 (`lmHeadStd`:
 * its untied LM head's spread).
 */
async function loadTinyModel(contextLength: number, lmHeadStd?: number, topKOnGpu?: boolean) {
  const source = await tinyModelSource(lmHeadStd === undefined ? {} : { lmHeadStd });
  return (await loadModelFromBuffer(dev!, source, { contextLength, prefillChunk: 2, topKOnGpu })).model;
}

describe.skipIf(!dev)(gpuTitle('generate and perplexity on one model', reason), () => {
  it("two generate() calls on one model: the one whose sequence the other took over fails with E_VALUE at its next token, never continuing from the other's cache; perplexity likewise", async () => {
    const model = await loadTinyModel(32);
    try {
      const a = [1, 29, 3, 3, 17];
      const b = [2, 5, 11];
      const opts = { maxTokens: 10 };
      const soloA = await collect(generate(model, a, opts));
      const soloB = await collect(generate(model, b, opts));
      const text = [4, 9, 1, 28, 7, 7, 13, 2, 21, 6, 0, 15];
      const soloPpl = await perplexity(model, text, { context: 6, stride: 3 });

      // interleaved by hand: B takes the sequence over and gives its own tokens; A fails when resumed
      const itA = generate(model, a, opts);
      const first = await itA.next();
      expect(first.value).toBe(soloA[0]);
      const itB = generate(model, b, opts);
      expect((await itB.next()).value).toBe(soloB[0]);
      const resumed = await itA.next().catch((e: unknown) => e);
      expect(resumed).toBeInstanceOf(CalderaError);
      expect((resumed as CalderaError).code).toBe('E_VALUE');
      expect((resumed as CalderaError).message).toMatch(/generate: the model's sequence was changed/);
      const restB: number[] = [];
      for (let r = await itB.next(); !r.done; r = await itB.next()) restB.push(r.value);
      expect([soloB[0], ...restB]).toEqual(soloB);

      // at once: every call that completes gives what it gives alone; the others fail with E_VALUE
      for (const runs of [
        () => [collect(generate(model, a, opts)), collect(generate(model, b, opts))],
        () => [perplexity(model, text, { context: 6, stride: 3 }), collect(generate(model, a, opts))],
        () => [collect(generate(model, b, opts)), perplexity(model, text, { context: 6, stride: 3 })],
      ]) {
        const settled = await Promise.allSettled(runs());
        const want = [soloA, soloB, soloPpl];
        for (const s of settled)
          if (s.status === 'rejected') {
            expect(s.reason).toBeInstanceOf(CalderaError);
            expect((s.reason as CalderaError).code).toBe('E_VALUE');
          } else expect(want).toContainEqual(s.value);
        expect(settled.some((s) => s.status === 'fulfilled')).toBe(true);
      }
      // and the model works on after them
      expect(await collect(generate(model, a, opts))).toEqual(soloA);
    } finally {
      model.dispose();
    }
  });

  it("argument checks shared with runtime-node (core's GenerationRules and checkPerplexityArgs): the same messages, naming the range; null options are none", async () => {
    const parts = await tinyModelSource();
    const model = (await loadModelFromBuffer(dev!, parts, null as unknown as object)).model;
    const text = [4, 9, 1, 28, 7, 7, 13, 2, 21, 6, 0, 15];
    const value = (p: Promise<unknown>, message: RegExp) =>
      expect(p).rejects.toThrow(
        expect.objectContaining({ code: 'E_VALUE', message: expect.stringMatching(message) }),
      );
    try {
      const max = model.contextLength;
      await value(
        perplexity(model, text, { context: 6, stride: 7 }),
        /^E_VALUE: perplexity: stride must be an integer in \[1, 6\] \(the context\), got 7$/,
      );
      await value(
        perplexity(model, text, { context: max + 1 }),
        new RegExp(
          `^E_VALUE: perplexity: context must be an integer in \\[2, ${max}\\] \\(the model's contextLength, its KV cache's length\\), got ${max + 1}$`,
        ),
      );
      await value(perplexity(model, [3]), /^E_VALUE: perplexity: needs at least 2 tokens, got 1$/);
      // no model, or an object that is none: named (TypeErrors before)
      await value(
        perplexity(null as never, text),
        /^E_VALUE: perplexity: model must be a WebGpuModel \(a loader's model\), got null$/,
      );
      await value(
        collect(generate({} as never, [1])),
        /^E_VALUE: generate: model must be a WebGpuModel .*, got an object$/,
      );
      await value(
        perplexity(model, null as unknown as number[]),
        /tokens must be an array of token ids, got null$/,
      );
      await value(
        collect(
          generate(
            model,
            Array.from({ length: max + 1 }, (_, i) => i % 30),
          ),
        ),
        new RegExp(
          `^E_VALUE: generate: prompt of ${max + 1} tokens exceeds the model's context of ${max} tokens \\(its contextLength, the KV cache's length\\)$`,
        ),
      );
      await value(
        collect(generate(model, null as unknown as number[])),
        /the prompt must be an array of token ids, got null$/,
      );
      // null options: the defaults (64 greedy tokens)
      const greedy = await collect(generate(model, [1, 29, 3]));
      expect(greedy).toHaveLength(64);
      expect(await collect(generate(model, [1, 29, 3], null as unknown as object))).toEqual(greedy);
      expect(await perplexity(model, text, null as unknown as object)).toEqual(await perplexity(model, text));
      // progress: { done, total } after each window, done the end of the window in tokens of the text
      const seen: { done: number; total: number }[] = [];
      await perplexity(model, text, { context: 6, stride: 3, onProgress: (e) => seen.push(e) });
      expect(seen).toEqual([6, 9, 12].map((done) => ({ done, total: 12 })));
      // an abort during generate's prefill names generate (the prefill runs through generate's claim)
      await expect(collect(generate(model, text, { signal: AbortSignal.abort() }))).rejects.toThrow(
        /^E_ABORTED: generate was aborted$/,
      );
    } finally {
      model.dispose();
    }
  });

  it('a layer whose scale overflows f32 when applied (finite, so it loads): perplexity, greedy and sampled generate are E_VALUE, not a NaN perplexity or arbitrary tokens', async () => {
    const { config, tensors, layers } = tinyModel();
    const scale = 'model.layers.0.mlp.up_proj.caldera.Q_scale';
    tensors[scale] = { ...tensors[scale]!, data: Float32Array.of(3e38) };
    const weights = await serializeSafetensors(tensors);
    const { model } = await loadModelFromBuffer(
      dev!,
      { config, calderaMeta: calderaCheckpointMeta(layers), weights },
      { contextLength: 16, topKOnGpu: true },
    );
    try {
      await expect(perplexity(model, [1, 29, 3, 4, 5])).rejects.toThrow(
        /^E_VALUE: perplexity: the model's logits for tokens 1–4 are NaN: its weights overflow f32/,
      );
      await expect(collect(generate(model, [1, 29, 3], { maxTokens: 3 }))).rejects.toThrow(
        /^E_VALUE: WebGpuModel: the model's logits at position 2 are NaN: its weights overflow f32/,
      );
      await expect(collect(generate(model, [1, 29, 3], { maxTokens: 3, temperature: 1 }))).rejects.toThrow(
        /^E_VALUE: generate: the model's logit \d+ is NaN after 0 generated tokens/,
      );
      // sampling from the GPU's top-k: its NaN flag
      await expect(
        collect(generate(model, [1, 29, 3], { maxTokens: 3, temperature: 1, topK: 4 })),
      ).rejects.toThrow(
        /^E_VALUE: WebGpuModel: the model's logits at position 2 are NaN: its weights overflow f32/,
      );
    } finally {
      model.dispose();
    }
  });

  it("sampling from the GPU's top-k gives the tokens of sampling from all the logits read back (penalised tokens' logits read back too); stepTopK is the logits' top k to the bit", async () => {
    // off by default on CPU fallback adapters (SwiftShader): asked for
    const byDefault = await loadTinyModel(40);
    expect(byDefault.topKOnGpu).toBe(!dev!.fallbackAdapter);
    byDefault.dispose();
    await expect(loadTinyModel(40, undefined, 1 as unknown as boolean)).rejects.toThrow(
      /^E_VALUE: topKOnGpu must be a boolean, got 1$/,
    );
    const model = await loadTinyModel(40, undefined, true);
    try {
      const prompt = [1, 29, 3, 3, 17];
      const stepTopK = model.stepTopK.bind(model);
      let topkPasses = 0;
      model.stepTopK = (...a: Parameters<typeof stepTopK>) => {
        topkPasses++;
        return stepTopK(...a);
      };
      for (const o of [
        { maxTokens: 12, temperature: 1.3, topK: 5, seed: 1 },
        { maxTokens: 12, temperature: 0.7, topK: 1, seed: 2 },
        { maxTokens: 12, temperature: 2, topK: 29, topP: 0.9, repetitionPenalty: 1.6, seed: 3 },
        { maxTokens: 12, temperature: 1, topK: 6, repetitionPenalty: 0.5, stopTokens: [4], seed: 4 },
      ]) {
        topkPasses = 0;
        const got = await collect(generate(model, prompt, o));
        expect(topkPasses, JSON.stringify(o)).toBe(got.length);
        // generate's tokens the way it sampled before the top-k: every token picked from the whole logits
        expect(got, JSON.stringify(o)).toEqual(await collect(sampleFromAllLogits(model, prompt, o)));
      }
      // a top-k of the whole vocabulary (30) or none, or a model without topKOnGpu: all the logits, as before
      topkPasses = 0;
      await collect(generate(model, prompt, { maxTokens: 4, temperature: 1, topK: 30 }));
      await collect(generate(model, prompt, { maxTokens: 4, temperature: 1 }));
      const off = await loadTinyModel(40, undefined, false);
      off.stepTopK = model.stepTopK;
      await collect(generate(off, prompt, { maxTokens: 4, temperature: 1, topK: 5 }));
      off.dispose();
      expect(topkPasses).toBe(0);
      model.stepTopK = stepTopK;

      // the same pass's logits (the same kernels up to the LM head), their top k by a sort
      model.reset();
      await model.prefill([2, 5]);
      const l = await model.step(11, 'logits');
      model.truncate(2);
      for (const [k, exclude] of [
        [3, []],
        [29, [7, 0, 29]],
        [28, [...Array(30).keys()].slice(5)],
      ] as const) {
        const r = await model.stepTopK(11, k, exclude);
        model.truncate(2);
        const want = [...l.keys()]
          .filter((i) => !(exclude as readonly number[]).includes(i))
          .sort((a, b) => (l[a]! > l[b]! ? -1 : l[a]! < l[b]! ? 1 : a - b))
          .slice(0, k);
        expect(Array.from(r.ids)).toEqual(want);
        expect(Array.from(r.values)).toEqual(want.map((i) => l[i]));
        expect(Array.from(r.excluded)).toEqual(exclude.map((i) => l[i]));
      }
      for (const [k, exclude, message] of [
        [0, [], /^E_VALUE: stepTopK: k must be an integer in \[1, 29\], got 0$/],
        [30, [], /k must be an integer in \[1, 29\], got 30$/],
        [2.5, [], /got 2\.5$/],
        [2, [30], /^E_VALUE: stepTopK: exclude/],
        [2, Array(41).fill(1), /^E_VALUE: stepTopK: 41 tokens to exclude, at most 40 \(contextLength\)$/],
      ] as const)
        await expect(model.stepTopK(11, k, exclude as readonly number[])).rejects.toThrow(message);
      expect(model.length).toBe(2); // refused before any pass
      // from JavaScript, a null exclude is none (a TypeError before)
      const none = await model.stepTopK(11, 3, null as never);
      expect(Array.from(none.ids)).toEqual([...l.keys()].sort((a, b) => l[b]! - l[a]! || a - b).slice(0, 3));
      // a full KV cache: E_VALUE naming the call, as stepBatch's and prefill's
      model.truncate(0);
      await model.prefill(Array.from({ length: 40 }, (_, i) => i % 30));
      await expect(model.stepTopK(11, 3, [])).rejects.toThrow(
        /^E_VALUE: stepTopK: 1 tokens after the 40 cached exceed the KV cache capacity 40$/,
      );
    } finally {
      model.dispose();
    }
  });

  it("forward(tokens, { signal }) checks the signal before each batch as prefill does: E_ABORTED with the signal's reason as its cause, the batches before the abort kept in the cache", async () => {
    const model = await loadTinyModel(16); // prefill batches of 2
    const stop = new Error('stop');
    const aborted = async (p: Promise<unknown>, what: string) => {
      const e = await p.then(
        () => null,
        (x: unknown) => x,
      );
      expect(e).toBeInstanceOf(CalderaError);
      expect(e).toMatchObject({ code: 'E_ABORTED', message: `E_ABORTED: ${what} was aborted`, cause: stop });
    };
    try {
      const plain = await model.forward([1, 2, 3, 4, 5]);
      model.reset();
      // already aborted: nothing runs, as in prefill
      await aborted(model.forward([1, 2, 3], { signal: AbortSignal.abort(stop) }), 'forward');
      await aborted(model.prefill([1, 2, 3], { signal: AbortSignal.abort(stop) }), 'prefill');
      expect(model.length).toBe(0);
      // aborted during the first batch: it completes, the second does not start
      const controller = new AbortController();
      const stepBatch = model.stepBatch.bind(model);
      model.stepBatch = (async (t: number[], o: 'all') => {
        const r = await stepBatch(t, o);
        controller.abort(stop);
        return r;
      }) as typeof model.stepBatch;
      await aborted(model.forward([1, 2, 3, 4, 5], { signal: controller.signal }), 'forward');
      model.stepBatch = stepBatch;
      expect(model.tokens).toEqual([1, 2]);
      // an abort from a timer during prefill or generate's prompt: seen at the next batch (every batch was queued in
      // one turn of the event loop before, so a long prompt ran to its end; 7 batches of 2 here)
      model.reset();
      const prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
      for (const [what, run] of [
        ['prefill', (signal: AbortSignal) => model.prefill(prompt, { signal })],
        ['generate', (signal: AbortSignal) => collect(generate(model, prompt, { signal, maxTokens: 1 }))],
      ] as const) {
        model.reset();
        const timer = new AbortController();
        setTimeout(() => timer.abort(stop), 0);
        await aborted(run(timer.signal), what);
        expect(model.length, what).toBeGreaterThan(0);
        expect(model.length, what).toBeLessThan(prompt.length);
        expect(model.tokens, what).toEqual(prompt.slice(0, model.length));
      }
      // a signal that does not fire, or null options: the logits of a plain forward
      model.reset();
      expect(await model.forward([1, 2, 3, 4, 5], { signal: new AbortController().signal })).toEqual(plain);
      model.reset();
      expect(await model.forward([1, 2, 3, 4, 5], null as unknown as object)).toEqual(plain);
    } finally {
      model.dispose();
    }
  });

  it('bad arguments of step, stepBatch, prefill, forward, generate and perplexity are E_VALUE naming them, checked before the cache changes: output values, null tokens, a bad id or too many tokens for the KV cache, onProgress that is not a function', async () => {
    const model = await loadTinyModel(16); // prefill batches of 2; vocab 30
    const value = (p: Promise<unknown>, message: string) =>
      expect(p).rejects.toThrow(expect.objectContaining({ code: 'E_VALUE', message: `E_VALUE: ${message}` }));
    try {
      await model.step(1, 'logits');
      // before: the previous step's read-back
      await value(
        model.step(2, 'bogus' as 'none'),
        "step: output must be 'none', 'argmax' or 'logits', got 'bogus'",
      );
      await value(
        model.stepBatch([2], 5 as unknown as 'none'),
        "stepBatch: output must be 'none', 'argmax', 'logits' or 'all', got 5",
      );
      expect(model.tokens).toEqual([1]);
      for (const [f, what] of [
        [(t: never) => model.prefill(t), 'prefill'],
        [(t: never) => model.forward(t), 'forward'],
        [(t: never) => model.stepBatch(t, 'none'), 'stepBatch'],
      ] as const) {
        await value(f(null as never), `${what}: tokens must be an array of token ids, got null`);
        await value(f(5 as never), `${what}: tokens must be an array of token ids, got a number`);
      }
      // the whole request checked first: 16 tokens after 1 cached do not fit, and nothing runs (before: 7 batches
      // ran, filling the cache, then E_VALUE)
      const many = Array.from({ length: 16 }, (_, i) => i + 1);
      await value(
        model.forward(many),
        'forward: 16 tokens after the 1 cached exceed the KV cache capacity 16',
      );
      await value(
        model.prefill(many),
        'prefill: 16 tokens after the 1 cached exceed the KV cache capacity 16',
      );
      await value(model.forward([1, 2, 3, 99]), 'forward: token id 99 out of range [0, 30)');
      // a string is not an id (it was reported as out of range)
      await value(model.forward([1, '2' as never]), "forward: token 1 is the string '2', not a token id");
      await value(model.stepBatch([null as never], 'none'), 'stepBatch: token 0 is null, not a token id');
      expect(model.tokens).toEqual([1]);
      // generate checks the prompt before cutting the cache back to the prefix it shares
      model.reset();
      await model.prefill([1, 2, 3, 4, 5]);
      await value(collect(generate(model, [1, 2, 3, 99])), 'generate: token id 99 out of range [0, 30)');
      expect(model.tokens).toEqual([1, 2, 3, 4, 5]);
      // scoreBatch: one target id per token
      await value(model.scoreBatch([1, 2], [3]), 'scoreBatch: 1 targets for 2 tokens (one target per token)');
      await value(model.scoreBatch([1, 2], [3, 30]), 'scoreBatch: targets: token id 30 out of range [0, 30)');
      await value(
        model.scoreBatch([1, 2], null as never),
        'scoreBatch: targets must be an array of token ids, got null',
      );
      // perplexity's token ids before the first window runs (a bad last token, which is only ever a target)
      await value(perplexity(model, [4, 9, 1, 30]), 'perplexity: token id 30 out of range [0, 30)');
      await value(perplexity(model, [4, 9, 1.5, 3]), 'perplexity: token id 1.5 out of range [0, 30)');
      expect(model.tokens).toEqual([1, 2, 3, 4, 5]);
      // perplexity's onProgress before the first window runs
      const passes = model.stepBatch.bind(model);
      let ran = 0;
      model.stepBatch = ((t: number[], o: 'all') => (ran++, passes(t, o))) as typeof model.stepBatch;
      await value(
        perplexity(model, [4, 9, 1, 28, 7], { onProgress: 5 as never }),
        'perplexity: onProgress must be a function, got a number',
      );
      model.stepBatch = passes;
      expect(ran).toBe(0);
      // stepBatch on a nearly full cache
      await model.prefill(many.slice(0, 10));
      await value(
        model.stepBatch([1, 2], 'none'),
        'stepBatch: 2 tokens after the 15 cached exceed the KV cache capacity 16',
      );
      expect(model.length).toBe(15);
    } finally {
      model.dispose();
    }
  });

  it('greedy decoding runs a pass ahead of the host (decodeGreedy): the tokens and the cached sequence are those of one-at-a-time steps, also when the consumer stops early, aborts, meets a stop token or string, fills the context, or another call takes the sequence over', async () => {
    // an untied head: greedy tokens that change from one to the next (the tied one repeats the prompt's last)
    const model = await loadTinyModel(32, 1);
    try {
      const prompt = [1, 29, 3, 3, 17];
      // the reference: one step at a time, each reading its argmax back before the next is submitted, up to a full
      // KV cache (27 tokens after the prompt's 5: the last one read, not run)
      const oneByOne: number[] = [];
      await model.prefill(prompt.slice(0, -1));
      let last = prompt.at(-1)!;
      for (let n = 0; n < 27; n++) oneByOne.push((last = await model.step(last, 'argmax')));
      // the sequence after k tokens of one-at-a-time decoding: the prompt and every token yielded but the last
      const after = (k: number) => [...prompt, ...oneByOne.slice(0, k - 1)];

      expect(await collect(generate(model, prompt, { maxTokens: 10 }))).toEqual(oneByOne.slice(0, 10));
      expect(model.tokens).toEqual(after(10));
      // up to the end of the KV cache
      expect(await collect(generate(model, prompt, { maxTokens: 100 }))).toEqual(oneByOne);
      expect(model.tokens).toEqual(after(27));
      // the consumer stops: the pass run ahead over the last token yielded never joins the sequence
      for (const k of [1, 2, 5]) {
        const got: number[] = [];
        for await (const t of generate(model, prompt, { maxTokens: 10 })) if (got.push(t) === k) break;
        expect(got).toEqual(oneByOne.slice(0, k));
        expect(model.tokens).toEqual(after(k));
      }
      // a stop token (yielded; the first token not met before it, so that it stops there)
      const s = oneByOne.findIndex((t, i) => i > 0 && !oneByOne.slice(0, i).includes(t));
      expect(s).toBeGreaterThan(0);
      const stopped = await collect(generate(model, prompt, { maxTokens: 10, stopTokens: [oneByOne[s]!] }));
      expect(stopped).toEqual(oneByOne.slice(0, s + 1));
      expect(model.tokens).toEqual(after(s + 1));
      // a stop string: the token that completes it is read but not yielded, and not run
      const decode = (ids: number[]) => String.fromCharCode(...ids.map((i) => 97 + i));
      const opts = { maxTokens: 10, stopStrings: [decode([oneByOne[s]!])], decode };
      expect(await collect(generate(model, prompt, opts))).toEqual(oneByOne.slice(0, s));
      expect(model.tokens).toEqual(after(s + 1));
      // aborted after 3 tokens: E_ABORTED before the 4th is read, the cache as one-at-a-time decoding leaves it; an
      // abort after the last token ends the generation as usual
      for (const [at, count] of [
        [3, 10],
        [4, 4],
      ] as const) {
        const controller = new AbortController();
        const got: number[] = [];
        const run = async () => {
          for await (const t of generate(model, prompt, { maxTokens: count, signal: controller.signal }))
            if (got.push(t) === at) controller.abort();
        };
        if (at < count) await expect(run()).rejects.toMatchObject({ code: 'E_ABORTED' });
        else await run();
        expect(got).toEqual(oneByOne.slice(0, at));
        expect(model.tokens).toEqual(after(at));
      }

      // while the first token is read back the GPU already runs the pass over it, which is not in the sequence yet,
      // and the model is busy; suspended, the sequence is one-at-a-time decoding's
      model.reset();
      await model.prefill(prompt.slice(0, -1));
      const it = model.decodeGreedy(prompt.at(-1)!, 3);
      const first = it.next();
      expect(model.tokens).toEqual(prompt);
      await expect(model.step(1, 'argmax')).rejects.toThrow(/called while a step is running/);
      expect((await first).value).toBe(oneByOne[0]);
      expect(model.tokens).toEqual(after(1));
      expect(await collect({ [Symbol.asyncIterator]: () => it })).toEqual(oneByOne.slice(1, 3));
      expect(model.tokens).toEqual(after(3));

      // another call takes the sequence over while a generation is suspended: it continues from one-at-a-time
      // decoding's sequence, its pass at the position the pass run ahead wrote (7: another token there; the logits
      // of that pass and the next equal those of the same sequence run one token at a time), and the generation
      // fails at its next token; by hand with the token yielded last, that continues the generation
      for (const [taken, token] of [
        [1, 7],
        [2, oneByOne[1]!],
      ] as const) {
        const gen = generate(model, prompt, { maxTokens: 10 });
        for (let k = 0; k < taken; k++) expect((await gen.next()).value).toBe(oneByOne[k]);
        const other = await model.step(token, 'logits');
        const then = await model.step(5, 'logits');
        await expect(gen.next()).rejects.toMatchObject({ code: 'E_VALUE' });
        expect(model.tokens).toEqual([...after(taken), token, 5]);
        if (token === oneByOne[taken - 1]) expect(other.indexOf(Math.max(...other))).toBe(oneByOne[taken]);
        model.reset();
        for (const t of after(taken)) await model.step(t, 'none');
        expect(await model.step(token, 'logits')).toEqual(other);
        expect(await model.step(5, 'logits')).toEqual(then);
      }
      // after a break, a prompt that extends the sequence left (its last token at the position the pass run ahead
      // wrote) continues the generation
      const five: number[] = [];
      for await (const t of generate(model, prompt, { maxTokens: 10 })) if (five.push(t) === 5) break;
      expect(model.tokens).toEqual(after(5));
      const extended = [...after(5), oneByOne[4]!];
      expect(await collect(generate(model, extended, { maxTokens: 3 }))).toEqual(oneByOne.slice(5, 8));
      // arguments checked before any pass: the sequence is left as it was
      const held = [...model.tokens];
      const bad = async (token: number, count: number, message: string) =>
        expect(collect({ [Symbol.asyncIterator]: () => model.decodeGreedy(token, count) })).rejects.toThrow(
          expect.objectContaining({ code: 'E_VALUE', message: `E_VALUE: ${message}` }),
        );
      await bad(30, 1, 'decodeGreedy: token id 30 out of range [0, 30)');
      await bad(1, 1.5, 'decodeGreedy: count must be an integer ≥ 0, got 1.5');
      const room = 32 - held.length;
      await bad(
        1,
        room + 1,
        `decodeGreedy: ${room + 1} tokens after the ${held.length} cached exceed the KV cache capacity 32`,
      );
      expect(model.tokens).toEqual(held);
    } finally {
      model.dispose();
    }
  });

  it('model.tokens passed back as the prompt (prefix reuse, as a chat app does) gives the tokens of a copy; perplexity likewise', async () => {
    // the model's own history array was returned: generate's truncation cut the prompt while it read it (the last
    // token dropped, every later token wrong) and perplexity's reset emptied it
    const model = await loadTinyModel(32);
    try {
      const run = async (asIs: boolean) => {
        model.reset();
        await collect(generate(model, [1, 5, 3, 9, 2], { maxTokens: 4 }));
        const prompt = asIs ? model.tokens : [...model.tokens];
        return collect(generate(model, prompt, { maxTokens: 5 }));
      };
      const copied = await run(false);
      expect(await run(true)).toEqual(copied);
      model.reset();
      await collect(generate(model, [1, 5, 3, 9, 2], { maxTokens: 4 }));
      const text = [...model.tokens];
      const want = await perplexity(model, text);
      await collect(generate(model, [1, 5, 3, 9, 2], { maxTokens: 4 }));
      expect((await perplexity(model, model.tokens)).ppl).toBe(want.ppl);
    } finally {
      model.dispose();
    }
  });

  it('maxTokens 0 or a prompt that fills the context runs no pass (the cache is left as it was), as in runtime-node', async () => {
    const model = await loadTinyModel(8);
    try {
      expect(await collect(generate(model, [1, 2, 3], { maxTokens: 2 }))).toHaveLength(2);
      const cached = [...model.tokens];
      expect(cached.length).toBeGreaterThan(0);
      expect(await collect(generate(model, [7, 8, 9, 10], { maxTokens: 0 }))).toEqual([]);
      expect(await collect(generate(model, [5, 6, 7, 8, 9, 10, 11, 12]))).toEqual([]);
      expect([...model.tokens]).toEqual(cached);
    } finally {
      model.dispose();
    }
  });
});
