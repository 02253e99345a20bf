import { describe, expect, it } from 'vitest';
import {
  checkPerplexityArgs,
  checkWindowNll,
  DEFAULT_PERPLEXITY_CONTEXT,
  perplexityWindows,
  tokenNll,
} from './perplexity.js';

/** Positions each window scores, in order. */
function scored(length: number, context: number, stride: number): number[] {
  const out: number[] = [];
  for (const w of perplexityWindows(length, context, stride)) {
    expect(w.end - w.start).toBeLessThanOrEqual(context);
    expect(w.from).toBeGreaterThan(w.start); // a scored position has at least one token of context in its window
    for (let p = w.from; p < w.end; p++) out.push(p);
  }
  return out;
}

describe('perplexityWindows', () => {
  it('overlapping windows score every position after the first exactly once', () => {
    for (const [n, c, s] of [
      [45, 16, 7],
      [46, 40, 6],
      [2, 2, 1],
      [100, 64, 8],
    ] as const)
      expect(scored(n, c, s)).toEqual(Array.from({ length: n - 1 }, (_, i) => i + 1));
  });

  it('arguments out of range are E_VALUE naming them (a stride of 0 gave the first window forever)', () => {
    const first = (length: number, context: number, stride: number) => () =>
      perplexityWindows(length, context, stride).next();
    expect(first(10, 4, 0)).toThrow(
      'E_VALUE: perplexityWindows: stride must be an integer in [1, 4] (the context), got 0',
    );
    expect(first(10, 4, 5)).toThrow(/stride must be an integer in \[1, 4\]/);
    expect(first(10, -1, 1)).toThrow('E_VALUE: perplexityWindows: context must be an integer ≥ 2, got -1');
    expect(first(10, 2.5, 1)).toThrow(/context must be an integer ≥ 2, got 2.5/);
    expect(first(-3, 4, 4)).toThrow('E_VALUE: perplexityWindows: length must be an integer ≥ 0, got -3');
    expect([...perplexityWindows(0, 4, 4)]).toEqual([]);
  });

  it('non-overlapping windows leave each later window’s first position unscored', () => {
    expect(scored(45, 16, 16)).toEqual(
      [...Array(44).keys()].map((i) => i + 1).filter((p) => p !== 16 && p !== 32),
    );
    expect(scored(10, 16, 16)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]); // one window holds the whole text
  });
});

describe('tokenNll', () => {
  it('is −log softmax at the target, also for logits far from 0', () => {
    const row = [0.5, -1, 2, 800, 799.5];
    const at = (shift: number, target: number) =>
      tokenNll(Float64Array.from([9, ...row.map((x) => x + shift)]), 1, row.length, target);
    const direct = (target: number) => {
      const z = row.reduce((a, x) => a + Math.exp(x - 800), 0);
      return -(row[target]! - 800 - Math.log(z));
    };
    for (let t = 0; t < row.length; t++) {
      // f64 throughout, logits of size ~800: a few ulps of 800
      expect(Math.abs(at(0, t) - direct(t))).toBeLessThan(1e-12 * 800);
      expect(Math.abs(at(-1000, t) - direct(t))).toBeLessThan(1e-12 * 1800);
    }
  });

  it('a target that is not a token of the row is E_VALUE (it gave NaN)', () => {
    const row = Float64Array.of(1, 2);
    for (const t of [2, 5, -1, 0.5, NaN])
      expect(() => tokenNll(row, 0, 2, t), String(t)).toThrow(
        new RegExp(`^E_VALUE: tokenNll: target ${t} is not a token id in \\[0, 2\\)$`),
      );
    expect(tokenNll(row, 0, 2, 1)).toBeCloseTo(Math.log(1 + Math.exp(-1)), 12);
  });

  it('checkWindowNll: a window whose logits overflow to NaN is E_VALUE naming its tokens; a finite or infinite NLL is a result', () => {
    const window = { start: 0, end: 6, from: 1 };
    // Infinity − Infinity: logits that overflowed f32
    const overflowed = Float64Array.of(Infinity, Infinity, 0);
    const nll = 1.5 + tokenNll(overflowed, 0, 3, 2);
    expect(nll).toBeNaN();
    expect(() => checkWindowNll(nll, window)).toThrow(
      /^E_VALUE: perplexity: the model's logits for tokens 1–5 are NaN: its weights overflow f32/,
    );
    expect(() => checkWindowNll(NaN, window, 'scoreText')).toThrow(/^E_VALUE: scoreText: /);
    // a target the model rules out (−Infinity logit) has infinite NLL: a perplexity of Infinity, not an error
    expect(() => checkWindowNll(tokenNll(Float64Array.of(0, -Infinity), 0, 2, 1), window)).not.toThrow();
    expect(() => checkWindowNll(3.25, window)).not.toThrow();
  });
});

describe('checkPerplexityArgs (the runtimes’ shared argument checks)', () => {
  const limit = { max: 64, defaultContext: 32, what: "the model's max positions" };
  const fails = (f: () => unknown, message: RegExp) =>
    expect(f).toThrow(expect.objectContaining({ code: 'E_VALUE', message: expect.stringMatching(message) }));

  it('resolves the defaults: context from the limit, stride = context', () => {
    expect(checkPerplexityArgs([1, 2, 3], {}, limit)).toEqual({ context: 32, stride: 32 });
    expect(checkPerplexityArgs([1, 2, 3], { context: 8 }, limit)).toEqual({ context: 8, stride: 8 });
    expect(checkPerplexityArgs([1, 2], { context: 64, stride: 1 }, limit)).toEqual({
      context: 64,
      stride: 1,
    });
    expect(checkPerplexityArgs(new Int32Array(2), null, limit)).toEqual({ context: 32, stride: 32 });
    // without a defaultContext: the runtimes' shared default, 128 tokens or the limit when smaller
    const what = 'the limit';
    expect(checkPerplexityArgs([1, 2], {}, { max: 500, what }).context).toBe(DEFAULT_PERPLEXITY_CONTEXT);
    expect(DEFAULT_PERPLEXITY_CONTEXT).toBe(128);
    expect(checkPerplexityArgs([1, 2], {}, { max: 64, what }).context).toBe(64);
  });

  it('names the argument, its range and the value: context, stride, the token count', () => {
    for (const context of [1, 0, 65, 2.5, NaN])
      fails(
        () => checkPerplexityArgs([1, 2, 3], { context }, limit),
        new RegExp(
          `^E_VALUE: perplexity: context must be an integer in \\[2, 64\\] \\(the model's max positions\\), got ${context}$`,
        ),
      );
    for (const stride of [0, 9, 1.5, -1])
      fails(
        () => checkPerplexityArgs([1, 2, 3], { context: 8, stride }, limit),
        new RegExp(
          `^E_VALUE: perplexity: stride must be an integer in \\[1, 8\\] \\(the context\\), got ${stride}$`,
        ),
      );
    fails(() => checkPerplexityArgs([1], {}, limit), /^E_VALUE: perplexity: needs at least 2 tokens, got 1$/);
    fails(() => checkPerplexityArgs([], {}, limit), /needs at least 2 tokens, got 0$/);
  });

  it('with limit.vocab, every token id is checked first (the last one, only ever a target, too); without it none are', () => {
    const vocab = { ...limit, vocab: 30 };
    expect(checkPerplexityArgs([0, 29, 3], {}, vocab)).toEqual({ context: 32, stride: 32 });
    for (const [tokens, message] of [
      [[1, 2, 30], 'perplexity: token id 30 out of range [0, 30)'],
      [[1, -1, 2], 'perplexity: token id -1 out of range [0, 30)'],
      [[1, 2.5, 2], 'perplexity: token id 2.5 out of range [0, 30)'],
      [[1, '2', 2], "perplexity: token 1 is the string '2', not a token id"],
      [[1, null, 2], 'perplexity: token 1 is null, not a token id'],
    ] as const)
      fails(
        () => checkPerplexityArgs(tokens as unknown as number[], {}, vocab),
        new RegExp(`^E_VALUE: ${message.replace(/[[\]().]/g, '\\$&')}$`),
      );
    // the windows are checked before the ids
    fails(() => checkPerplexityArgs([1, 99], { context: 1 }, vocab), /context must be an integer/);
    expect(checkPerplexityArgs([1, 99], {}, limit)).toEqual({ context: 32, stride: 32 });
  });

  it('tokens that are not an array (null, undefined, a number) are E_VALUE, not a TypeError', () => {
    for (const [tokens, got] of [
      [null, 'null'],
      [undefined, 'undefined'],
      [5, 'a number'],
    ] as const)
      fails(
        () => checkPerplexityArgs(tokens as unknown as number[], {}, limit),
        new RegExp(`^E_VALUE: perplexity: tokens must be an array of token ids, got ${got}$`),
      );
  });

  it('an onProgress that is not a function is E_VALUE before any window (runtime-node threw a TypeError after one)', () => {
    fails(
      () => checkPerplexityArgs([1, 2, 3], { onProgress: 5 }, limit),
      /^E_VALUE: perplexity: onProgress must be a function, got a number$/,
    );
    expect(checkPerplexityArgs([1, 2, 3], { onProgress: () => undefined }, limit).context).toBe(32);
  });
});
