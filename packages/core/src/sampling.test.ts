import { describe, expect, expectTypeOf, it } from 'vitest';
import { Rng } from './rng.js';
import { GenerationRules, sampleToken, samplingOf, visibleText, type GenerateOptions } from './sampling.js';

/**
 * The sampler's definition written the direct way, as an independent oracle: sort every index by logit (a stable
 * sort, so equal logits keep index order), cut to top-k, softmax, cut to the top-p nucleus, renormalise, walk the
 * cumulative probabilities with one uniform draw. Without top-k it normalises over the whole vocabulary in index order,
 * as the sampler does (the two orders of that sum could differ in the last bit).
 */
function referenceSample(l: Float64Array, o: GenerateOptions, rng: Rng): number {
  const temp = o.temperature ?? 0;
  let idx = [...l.keys()].sort((a, b) => l[b]! - l[a]!);
  if (temp <= 0) return idx[0]!;
  const all = !(o.topK && o.topK > 0 && o.topK < l.length);
  if (!all) idx = idx.slice(0, o.topK);
  const mx = l[idx[0]!]!;
  const w = (i: number) => Math.exp((l[i]! - mx) / temp);
  const z = all ? Array.from(l.keys(), w).reduce((a, b) => a + b, 0) : idx.map(w).reduce((a, b) => a + b, 0);
  let probs = idx.map((i) => w(i) / z);
  if (o.topP && o.topP < 1) {
    let acc = 0;
    let cut = probs.length;
    for (let i = 0; i < probs.length; i++) {
      acc += probs[i]!;
      if (acc >= o.topP) {
        cut = i + 1;
        break;
      }
    }
    idx = idx.slice(0, cut);
    probs = probs.slice(0, cut);
    const z2 = probs.reduce((a, b) => a + b, 0);
    probs = probs.map((p) => p / z2);
  }
  let u = rng.uniform();
  for (let i = 0; i < probs.length; i++) {
    u -= probs[i]!;
    if (u <= 0) return idx[i]!;
  }
  return idx[idx.length - 1]!;
}

describe('sampleToken (the runtimes shared sampler)', () => {
  const logits = Float64Array.from([0.1, 2.0, -1.0, 1.5, 0.0]);

  it('is the argmax at temperature 0 and with top-k 1', () => {
    expect(sampleToken(logits, {}, new Rng(1))).toBe(1);
    expect(sampleToken(logits, { temperature: 0.7, topK: 1 }, new Rng(1))).toBe(1);
  });

  it('checks its options as generate() does, and refuses empty and NaN logits (E_VALUE)', () => {
    // before: each of these returned a token: NaN temperature the least likely one, topP 0 and topK -1 whatever an
    // unrestricted draw gave, empty logits 0, a NaN logit whatever the comparisons made of it
    const bad: [GenerateOptions, RegExp][] = [
      [{ temperature: NaN }, /^E_VALUE: sampleToken: temperature must be a finite number ≥ 0, got NaN$/],
      [{ temperature: -1 }, /sampleToken: temperature .* got -1$/],
      [{ temperature: 1, topP: 0 }, /^E_VALUE: sampleToken: topP must be in \(0, 1\], got 0$/],
      [{ temperature: 1, topK: -1 }, /^E_VALUE: sampleToken: topK must be a number ≥ 0 \(0: all\), got -1$/],
    ];
    for (const [o, message] of bad)
      expect(() => sampleToken(logits, o, new Rng(1)), JSON.stringify(o)).toThrow(message);
    for (const temperature of [0, 1]) {
      expect(() => sampleToken(new Float64Array(0), { temperature }, new Rng(1))).toThrow(
        /^E_VALUE: sampleToken: empty logits/,
      );
      for (const at of [0, 1, 2])
        expect(() =>
          sampleToken(Float64Array.of(1, 2, 3).fill(NaN, at, at + 1), { temperature }, new Rng(1)),
        ).toThrow(new RegExp(`^E_VALUE: sampleToken: logit ${at} is NaN$`));
    }
    expect(() => sampleToken(Float64Array.of(-Infinity, -Infinity), { temperature: 1 }, new Rng(1))).toThrow(
      /^E_VALUE: sampleToken: every logit is -Infinity/,
    );
    expect(sampleToken(Float64Array.of(-Infinity, -Infinity), {}, new Rng(1))).toBe(0); // the first argmax
    expect(sampleToken(logits, null as never, new Rng(1))).toBe(1); // null options are none
  });

  it('gives +Infinity logits all the probability, in equal shares (the softmax limit)', () => {
    // before: [+Inf, 1] at temperature 1 gave 1 (exp(∞ − ∞) is NaN)
    for (let seed = 1; seed <= 50; seed++) {
      expect(sampleToken(Float64Array.of(Infinity, 1), { temperature: 1 }, new Rng(seed))).toBe(0);
      expect(
        sampleToken(Float64Array.of(1, Infinity, 50), { temperature: 3, topP: 0.5 }, new Rng(seed)),
      ).toBe(1);
    }
    expect(sampleToken(Float64Array.of(1, Infinity, Infinity), {}, new Rng(1))).toBe(1);
    const counts = [0, 0, 0, 0];
    const rng = new Rng(3);
    const l = Float64Array.of(Infinity, 9, Infinity, -Infinity);
    for (let i = 0; i < 4000; i++) counts[sampleToken(l, { temperature: 0.5 }, rng)]!++;
    expect(counts[1]! + counts[3]!).toBe(0);
    expect(Math.abs(counts[0]! - 2000)).toBeLessThan(200);
    // top-k 1: the first of them
    expect(sampleToken(Float64Array.of(2, Infinity, Infinity), { temperature: 1, topK: 1 }, new Rng(7))).toBe(
      1,
    );
  });

  it('takes a fractional top-k as its integer part', () => {
    for (let seed = 1; seed <= 50; seed++) {
      expect(sampleToken(logits, { temperature: 5, topK: 1.5 }, new Rng(seed))).toBe(1);
      expect(sampleToken(logits, { temperature: 5, topK: 2.7 }, new Rng(seed))).toBe(
        sampleToken(logits, { temperature: 5, topK: 2 }, new Rng(seed)),
      );
    }
  });

  it('draws from the tempered softmax: frequencies over 20 000 seeded draws match the probabilities', () => {
    const rng = new Rng(5);
    const counts = new Array<number>(5).fill(0);
    const N = 20_000;
    for (let i = 0; i < N; i++) counts[sampleToken(logits, { temperature: 0.8 }, rng)]!++;
    const e = Array.from(logits, (l) => Math.exp(l / 0.8));
    const z = e.reduce((a, b) => a + b, 0);
    // binomial standard deviation ≤ √(N/4) = 71 draws; 5σ keeps a correct sampler from failing
    e.forEach((v, i) => expect(Math.abs(counts[i]! - (N * v) / z)).toBeLessThan(5 * 71));
  });

  it('top-p keeps only the smallest nucleus', () => {
    const rng = new Rng(2);
    const seen = new Set<number>();
    // probabilities at T = 1: ≈ 0.52 (id 1), 0.31 (id 3), then 0.08, 0.07, 0.03: p = 0.75 keeps ids 1 and 3
    for (let i = 0; i < 2000; i++) seen.add(sampleToken(logits, { temperature: 1, topP: 0.75 }, rng));
    expect([...seen].sort()).toEqual([1, 3]);
  });

  it('equals the direct definition (full sort) on 2 400 draws: vocabularies up to 5 000, ties, top-k, top-p', () => {
    const gen = new Rng(9);
    let draws = 0;
    for (const V of [1, 2, 7, 300, 5000])
      for (const ties of [false, true]) {
        // with ties: logits on a grid of 0.5, so many tokens share a value and the index order decides
        const l = Float64Array.from({ length: V }, () => {
          const x = 3 * gen.normal();
          return ties ? Math.round(2 * x) / 2 : x;
        });
        for (const temperature of [0, 0.7, 1.3])
          for (const topK of [0, 1, 5, V + 3])
            for (const topP of [undefined, 0.5, 0.95, 1])
              // undefined: no nucleus (0 is out of range)
              for (const seed of [1, 2, 3, 4, 5]) {
                const o = { temperature, topK, topP };
                expect(sampleToken(l, o, new Rng(seed)), JSON.stringify({ V, ties, ...o, seed })).toBe(
                  referenceSample(l, o, new Rng(seed)),
                );
                draws++;
              }
      }
    expect(draws).toBe(2400);
  });
});

describe("GenerationRules (the runtimes' per-token rules)", () => {
  it('checks the prompt and the stop-string options', () => {
    expect(() => new GenerationRules([], {})).toThrow(/E_VALUE.*empty prompt/);
    expect(() => new GenerationRules([1], { stopStrings: ['x'] })).toThrow(/E_VALUE.*decode/);
    expect(new GenerationRules([1]).maxTokens).toBe(64);
    expect(new GenerationRules([1], { maxTokens: 5 }).maxTokens).toBe(5);
    expect(new GenerationRules([1], { maxTokens: 0 }).maxTokens).toBe(0);
    for (const maxTokens of [-1, 2.5, NaN])
      expect(() => new GenerationRules([1], { maxTokens })).toThrow(/E_VALUE.*maxTokens/);
    // a string is shown as one (it read "got 3")
    expect(() => new GenerationRules([1], { maxTokens: '3' as never })).toThrow(
      "E_VALUE: generate: maxTokens must be a non-negative integer, got '3'",
    );
  });

  it('a null field is a value, not the default: E_VALUE for each, as for temperature (maxTokens: null meant 64)', () => {
    for (const field of [
      'maxTokens',
      'temperature',
      'topK',
      'topP',
      'repetitionPenalty',
      'seed',
      'stopTokens',
    ])
      expect(() => new GenerationRules([1], { [field]: null } as never), field).toThrow(
        new RegExp(`E_VALUE: generate: ${field} must be`),
      );
  });

  it('a prompt that is not an array (null, undefined, a number, a string) is E_VALUE, not a TypeError; null options are none', () => {
    for (const prompt of [null, undefined, 3, 'abc'])
      expect(() => new GenerationRules(prompt as unknown as number[])).toThrow(
        expect.objectContaining({
          code: 'E_VALUE',
          message: expect.stringMatching(/generate: the prompt must be an array of token ids, got /),
        }),
      );
    const rules = new GenerationRules([1], null as unknown as GenerateOptions);
    expect(rules.maxTokens).toBe(64);
    expect(rules.greedy).toBe(true);
  });

  it('pick: NaN logits (weights that overflow f32) are E_VALUE naming the logit and the tokens generated so far', () => {
    for (const options of [{}, { temperature: 1 }, { repetitionPenalty: 1.2 }]) {
      const rules = new GenerationRules([1], options);
      expect(rules.pick(Float64Array.of(0, 2, 1))).toBeTypeOf('number');
      rules.accept(1);
      expect(() => rules.pick(Float64Array.of(0, NaN, 1))).toThrow(
        /^E_VALUE: generate: the model's logit 1 is NaN after 1 generated tokens: its weights overflow f32/,
      );
    }
  });

  it('tokensToGenerate: min(maxTokens, context − prompt), E_VALUE when the prompt exceeds the context', () => {
    const prompt = [1, 2, 3];
    expect(new GenerationRules(prompt, { maxTokens: 5 }).tokensToGenerate(100)).toBe(5);
    expect(new GenerationRules(prompt, { maxTokens: 5 }).tokensToGenerate(6)).toBe(3);
    expect(new GenerationRules(prompt).tokensToGenerate(3)).toBe(0); // the prompt fills the context
    expect(new GenerationRules(prompt, { maxTokens: 0 }).tokensToGenerate(100)).toBe(0);
    expect(() => new GenerationRules(prompt).tokensToGenerate(2, 'its max positions')).toThrow(
      expect.objectContaining({
        code: 'E_VALUE',
        message:
          "E_VALUE: generate: prompt of 3 tokens exceeds the model's context of 2 tokens (its max positions)",
      }),
    );
  });

  it('rejects sampling options out of range instead of silently sampling something else', () => {
    // each of these used to run: NaN temperature → the least likely token, topP 0 → the whole vocabulary,
    // penalty 0 → Infinity logits for seen tokens, seed 2^32 → the tokens of seed 0
    const bad: [keyof GenerateOptions, unknown][] = [
      ['temperature', NaN],
      ['temperature', -1],
      ['temperature', Infinity],
      ['topK', -3],
      ['topK', NaN],
      ['topP', 0],
      ['topP', -0.5],
      ['topP', 1.5],
      ['topP', NaN],
      ['repetitionPenalty', 0],
      ['repetitionPenalty', -1.2],
      ['repetitionPenalty', NaN],
      ['seed', -1],
      ['seed', 1.5],
      ['seed', NaN],
      ['seed', 2 ** 32],
    ];
    for (const [k, v] of bad)
      expect(() => new GenerationRules([1], { [k]: v }), `${k} = ${v}`).toThrow(new RegExp(`E_VALUE.*${k}`));
    const good: GenerateOptions = {
      temperature: 0,
      topK: 2.5,
      topP: 1,
      repetitionPenalty: 0.5,
      seed: 2 ** 32 - 1,
    };
    expect(() => new GenerationRules([1], good)).not.toThrow();
    expect(() => new GenerationRules([1], { temperature: 1e-3, topK: 0, topP: 1e-9, seed: 0 })).not.toThrow();
  });

  it('is greedy exactly at temperature 0 without a repetition penalty, and then picks the first argmax', () => {
    expect(new GenerationRules([1]).greedy).toBe(true);
    expect(new GenerationRules([1], { temperature: 0.7 }).greedy).toBe(false);
    expect(new GenerationRules([1], { repetitionPenalty: 1.3 }).greedy).toBe(false);
    expect(new GenerationRules([1]).pick([0.5, 2, 2, -1])).toBe(1);
  });

  it('samples like sampleToken on the penalised logits of the prompt and the accepted tokens (one seeded stream)', () => {
    // oracle: the penalty written out per step over the growing context, the direct-definition sampler, one Rng
    const rng = new Rng(11);
    const V = 40;
    const steps = Array.from({ length: 30 }, () => Float64Array.from({ length: V }, () => 3 * rng.normal()));
    const o: GenerateOptions = { temperature: 0.8, topK: 12, topP: 0.9, repetitionPenalty: 1.7, seed: 5 };
    const prompt = [3, 7, 7, 20];
    const rules = new GenerationRules(prompt, o);
    const oracleRng = new Rng(5);
    const context = new Set(prompt);
    for (const l of steps) {
      const want = referenceSample(
        l.map((v, i) => (context.has(i) ? (v > 0 ? v / 1.7 : v * 1.7) : v)),
        o,
        oracleRng,
      );
      const got = rules.pick(l);
      expect(got).toBe(want);
      expect(rules.accept(got)).toBe('continue');
      context.add(got);
    }
  });

  it('pickTopK gives the tokens of pick from the top k of the unpenalised logits and the penalised ones, to the bit', () => {
    // 4 000 tokens over 200 runs: logits on a coarse grid (many ties, −0 beside 0, ±Infinity now and then), top
    // ids shuffled and padded with ids ≥ V as a GPU's top-k may return them; each run's two rules share one stream
    const rng = new Rng(3);
    const V = 60;
    const grid = [-Infinity, -2, -0.5, -0, 0, 0.25, 1, 1.5, 3, Infinity];
    let draws = 0;
    for (let run = 0; run < 200; run++) {
      const o: GenerateOptions = {
        temperature: [0.3, 1, 2.5][run % 3],
        topK: [1, 5, 17, 59][run % 4],
        topP: run % 5 === 0 ? 0.8 : 1,
        repetitionPenalty: run % 2 === 0 ? 1.6 : 1,
        seed: run,
      };
      const prompt = Array.from({ length: 1 + (run % 7) }, () => Math.floor(rng.uniform() * V));
      const full = new GenerationRules(prompt, o);
      const part = new GenerationRules(prompt, o);
      const k = part.topKOf(V)!;
      expect(k).toBe(Math.floor(o.topK!));
      for (let step = 0; step < 20; step++) {
        const l = Float32Array.from({ length: V }, () =>
          rng.uniform() < 0.05
            ? grid[Math.floor(rng.uniform() * grid.length)]!
            : Math.round(rng.normal() * 4) / 4,
        );
        if (l.every((v) => v === -Infinity)) l[0] = 0;
        const pen = part.penalized();
        expect(new Set(pen).size).toBe(pen.length);
        const others = [...l.keys()].filter((i) => !pen.includes(i));
        // the top k of the others by (logit, then lower index): a brute-force sort
        const top = others.sort((a, b) => (l[a]! > l[b]! ? -1 : l[a]! < l[b]! ? 1 : a - b)).slice(0, k);
        const shuffled = [...top, V, V + 3].sort(() => rng.uniform() - 0.5);
        let want: number;
        try {
          want = full.pick(l);
        } catch {
          // every logit −Infinity after the draw of the grid: both refuse
          expect(() =>
            part.pickTopK({ ids: shuffled, values: shuffled.map((i) => l[i] ?? 0) }, [], V),
          ).toThrow();
          continue;
        }
        const got = part.pickTopK(
          { ids: shuffled, values: shuffled.map((i) => l[i] ?? 123) },
          pen.map((i) => l[i]!),
          V,
        );
        expect(got).toBe(want);
        draws++;
        expect(part.accept(got)).toBe(full.accept(want));
      }
    }
    expect(draws).toBeGreaterThan(3900);
  });

  it('pickTopK refuses what it cannot stand in for, and inputs that cannot be a top k', () => {
    const r = new GenerationRules([1, 2], { temperature: 1, topK: 2, repetitionPenalty: 2 });
    expect(r.topKOf(2)).toBe(null); // k not below the vocabulary: normalised over all of it
    expect(new GenerationRules([1], { topK: 2 }).topKOf(10)).toBe(null); // greedy
    expect(new GenerationRules([1], { temperature: 1 }).topKOf(10)).toBe(null); // no top-k
    expect(r.penalized()).toEqual([1, 2]);
    expect(() => r.pickTopK({ ids: [0, 3], values: [1, 2] }, [1, 2], 2)).toThrow(
      /^E_VALUE: pickTopK: these options/,
    );
    expect(() => r.pickTopK({ ids: [0, 3], values: [1] }, [1, 2], 10)).toThrow(
      /^E_VALUE: pickTopK: 2 top ids with 1/,
    );
    expect(() => r.pickTopK({ ids: [1], values: [1] }, [1, 2], 10)).toThrow(
      /token 1 is no token id or is given twice/,
    );
    expect(() => r.pickTopK({ ids: [], values: [] }, [1], 10)).toThrow(/1 values for 2 penalized/);
    expect(() => r.pickTopK({ ids: [12], values: [1] }, [1, 2], 10)).not.toThrow(); // padding beyond the vocabulary
    expect(() => r.pickTopK({ ids: [0], values: [NaN] }, [1, 2], 10)).toThrow(
      /logit 0 is NaN after 0 generated/,
    );
    expect(() =>
      new GenerationRules([1], { temperature: 1, topK: 3 }).pickTopK({ ids: [0], values: [1] }, [], 10),
    ).toThrow(/^E_VALUE: pickTopK: 1 tokens given, 3 needed/);
  });

  it('stops on a stop token after yielding it, and on a stop string before yielding the token that completes it', () => {
    const stopToken = new GenerationRules([1], { stopTokens: [9] });
    expect(stopToken.accept(4)).toBe('continue');
    expect(stopToken.accept(9)).toBe('last');
    const text = (ids: number[]) => ids.map((i) => String.fromCharCode(97 + i)).join('');
    const stopString = new GenerationRules([1], { stopStrings: ['', 'cd'], decode: text });
    expect(stopString.accept(2)).toBe('continue'); // "c"
    expect(stopString.accept(3)).toBe('stop'); // "cd" (the empty stop string never matches)
  });
});

describe('stop options and the rng', () => {
  it('are E_VALUE naming the option when they are not what they say', () => {
    const logits = Float64Array.of(0, 1, 2);
    const gen = (o: object) => () => new GenerationRules([1], o as never);
    expect(gen({ stopTokens: 5 })).toThrow(
      'E_VALUE: generate: stopTokens must be an array of token ids, got 5',
    );
    expect(gen({ stopTokens: ['x'] })).toThrow(
      'E_VALUE: generate: stopTokens must be an array of token ids, got x',
    );
    expect(gen({ stopStrings: 'a' })).toThrow(
      'E_VALUE: generate: stopStrings must be an array of strings, got a',
    );
    expect(gen({ stopStrings: ['a'], decode: 5 })).toThrow(
      'E_VALUE: generate: decode must be a function, got a number',
    );
    expect(gen({ stopStrings: ['a'] })).toThrow('E_VALUE: generate: stopStrings need a decode function');
    expect(gen({ stopTokens: [2], stopStrings: ['a'], decode: () => '' })).not.toThrow();
    // a decode that returns no string: E_VALUE at the first token (a TypeError in text.includes before)
    const noText = new GenerationRules([1], { stopStrings: ['a'], decode: (() => null) as never });
    expect(() => noText.accept(2)).toThrow(
      'E_VALUE: generate: decode must return a string (for stopStrings), returned null',
    );
    expect(() => sampleToken(logits, { temperature: 1 }, undefined as never)).toThrow(
      'E_VALUE: sampleToken: rng must be an Rng above temperature 0, got undefined',
    );
    // greedy needs no generator
    expect(sampleToken(logits, {}, undefined as never)).toBe(2);
  });
});

describe('visibleText (a streamed completion cut at its stop strings)', () => {
  it('cuts before the first stop string; holds back a tail that may begin one; examples', () => {
    expect(visibleText('The Medical Court, the', ['Court'])).toEqual({
      text: 'The Medical ',
      stopped: true,
      held: 0,
    });
    expect(visibleText('The Medical Cour', ['Court'])).toEqual({
      text: 'The Medical ',
      stopped: false,
      held: 4,
    });
    // the earliest occurrence of any stop string; empty ones never match
    expect(visibleText('abcab', ['ca', 'b', ''])).toEqual({ text: 'a', stopped: true, held: 0 });
    expect(visibleText('xyz', [''])).toEqual({ text: 'xyz', stopped: false, held: 0 });
    // the longest tail that begins some stop string
    expect(visibleText('aab', ['abc', 'bq'])).toEqual({ text: 'a', stopped: false, held: 2 });
  });

  it('against a brute-force reference on random texts, and streamed character by character its text only grows', () => {
    const rng = new Rng(5);
    const pick = (n: number) => Array.from({ length: n }, () => 'ab '[rng.int(3)]).join('');
    for (let trial = 0; trial < 300; trial++) {
      const stops = Array.from({ length: 1 + rng.int(3) }, () => pick(1 + rng.int(4)));
      const full = pick(30);
      let before = '';
      for (let end = 0; end <= full.length; end++) {
        const text = full.slice(0, end);
        const got = visibleText(text, stops);
        // reference: the first index where a stop string starts, by trying every index and every string
        let cut = -1;
        for (let i = 0; i < text.length && cut < 0; i++)
          if (stops.some((s) => text.startsWith(s, i))) cut = i;
        if (cut >= 0) expect(got).toEqual({ text: text.slice(0, cut), stopped: true, held: 0 });
        else {
          // reference: the largest k < the string's length whose prefix is text's tail of k characters
          let held = 0;
          for (const s of stops)
            for (let k = 1; k < s.length && k <= text.length; k++)
              if (text.slice(text.length - k) === s.slice(0, k)) held = Math.max(held, k);
          expect(got).toEqual({ text: text.slice(0, text.length - held), stopped: false, held });
        }
        expect(got.text.startsWith(before)).toBe(true);
        before = got.text;
        if (got.stopped) break;
      }
    }
  });
});

describe('option types', () => {
  it('stop lists may be readonly (`as const`; the types asked for mutable arrays that generate never changes)', () => {
    const stops = { stopTokens: [2, 0] as const, stopStrings: ['\n\n'] as const };
    expectTypeOf(stops).toMatchTypeOf<GenerateOptions>();
  });
});

describe('samplingOf (a model generation_config.json, as transformers applies it)', () => {
  // the generation_config.json files of Qwen/Qwen3-0.6B and Qwen/Qwen2.5-7B-Instruct, as published
  const qwen3 = {
    bos_token_id: 151643,
    do_sample: true,
    eos_token_id: [151645, 151643],
    pad_token_id: 151643,
    temperature: 0.6,
    top_k: 20,
    top_p: 0.95,
    transformers_version: '4.51.0',
  };
  const qwen25 = {
    bos_token_id: 151643,
    pad_token_id: 151643,
    do_sample: true,
    eos_token_id: [151645, 151643],
    repetition_penalty: 1.05,
    temperature: 0.7,
    top_p: 0.8,
    top_k: 20,
    transformers_version: '4.37.0',
  };

  it("gives do_sample's temperature, top_k and top_p (transformers' defaults 1, 50, 1), else greedy; repetition_penalty either way", () => {
    expect(samplingOf(qwen3)).toEqual({
      options: { temperature: 0.6, topK: 20, topP: 0.95, repetitionPenalty: 1 },
      notApplied: [],
    });
    expect(samplingOf(qwen25).options).toEqual({
      temperature: 0.7,
      topK: 20,
      topP: 0.8,
      repetitionPenalty: 1.05,
    });
    // do_sample without the others: transformers' GenerationConfig defaults (top_k 50)
    expect(samplingOf({ do_sample: true }).options).toEqual({
      temperature: 1,
      topK: 50,
      topP: 1,
      repetitionPenalty: 1,
    });
    // without do_sample transformers decodes greedily and ignores the sampling fields, not the penalty
    const greedy = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 };
    expect(samplingOf({ ...qwen3, do_sample: false }).options).toEqual(greedy);
    expect(samplingOf({ temperature: 0.6, top_p: 0.9 }).options).toEqual(greedy);
    expect(samplingOf({ repetition_penalty: 1.1 }).options).toEqual({ ...greedy, repetitionPenalty: 1.1 });
    expect(samplingOf(undefined).options).toEqual(greedy);
    expect(samplingOf(null).options).toEqual(greedy);
    // null fields are unset, as transformers reads them
    expect(samplingOf({ do_sample: true, top_k: null, temperature: null }).options.topK).toBe(50);
  });

  it('lists the fields generate() cannot apply, and refuses malformed fields it uses, naming the file', () => {
    expect(samplingOf({ ...qwen3, min_p: 0.05, typical_p: 1, num_beams: 4 }).notApplied).toEqual([
      'min_p 0.05',
      'num_beams 4',
    ]);
    // transformers applies min_p and typical_p only when sampling; the others to greedy decoding too
    expect(
      samplingOf({
        min_p: 0.05,
        typical_p: 0.9,
        bad_words_ids: [[5]],
        min_new_tokens: 10,
        penalty_alpha: 0.6,
      }).notApplied,
    ).toEqual(['penalty_alpha 0.6', 'min_new_tokens 10', 'bad_words_ids [[5]]']);
    // the caller's options replace the file's, which are then not read (as transformers' generate() arguments)
    expect(samplingOf(qwen3, 'g.json', { topK: 5, temperature: 0 }).options).toEqual({
      temperature: 0,
      topK: 5,
      topP: 0.95,
      repetitionPenalty: 1,
    });
    expect(samplingOf({ do_sample: true, top_k: -1 }, 'g.json', { topK: 0 }).options.topK).toBe(0);
    // a field greedy decoding does not read is not checked (transformers only warns about it)
    expect(samplingOf({ do_sample: false, top_p: 0 }).options.topP).toBe(1);
    for (const [bad, message] of [
      [[1], 'm/generation_config.json is an array, not a JSON object'],
      [{ do_sample: 'yes' }, 'm/generation_config.json: do_sample "yes" is not true or false'],
      [
        { do_sample: true, temperature: '0.6' },
        'm/generation_config.json: temperature "0.6" is not a number ≥ 0',
      ],
      [{ do_sample: true, top_p: 0 }, 'm/generation_config.json: top_p 0 is not a number in (0, 1]'],
      [{ do_sample: true, top_k: 2.5 }, 'm/generation_config.json: top_k 2.5 is not an integer ≥ 0'],
      [{ repetition_penalty: -1 }, 'm/generation_config.json: repetition_penalty -1 is not a number > 0'],
    ] as const)
      expect(() => samplingOf(bad, 'm/generation_config.json')).toThrow(`E_FORMAT: ${message}`);
  });

  it("its options are ones sampleToken takes, and a model's sampling draws by them", () => {
    const logits = Float64Array.from([1, 3, 2, 0.5, 2.9]);
    const { options } = samplingOf(qwen3);
    const rng = new Rng(1);
    const drawn = new Set(Array.from({ length: 200 }, () => sampleToken(logits, options, rng)));
    // temperature 0.6, top-p 0.95 over these logits keeps tokens 1, 4 and 2 (0.479, 0.406, 0.091: 0.976 ≥ 0.95)
    expect([...drawn].sort()).toEqual([1, 2, 4]);
  });
});
