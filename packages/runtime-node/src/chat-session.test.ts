import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ChatSession } from './chat-session.js';
import { generate } from './generate.js';
import { loadModel } from './load.js';
import { HfTokenizer } from './tokenizer.js';

const dir = fileURLToPath(new URL('../../reference-model/model/', import.meta.url));
const { model } = await loadModel(dir);
// the reference model has no chat template: a small one in ChatML's manner, with a marker per role
const TEMPLATE =
  '{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}';
const tokenizer = HfTokenizer.fromJson(
  JSON.parse(readFileSync(`${dir}tokenizer.json`, 'utf8')) as object,
  {},
  { chatTemplate: TEMPLATE },
);

async function collect(it: AsyncIterable<number>): Promise<number[]> {
  const out: number[] = [];
  for await (const t of it) out.push(t);
  return out;
}

/** The ids `generate()` starts from for `messages`: the whole conversation rendered with the generation prompt. */
const rendered = (messages: readonly { role: string; content: string }[]) =>
  tokenizer.encode(tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true }));

describe('ChatSession', () => {
  it("each reply is generate()'s on the whole rendered conversation, while the cache keeps the turns before", async () => {
    const chat = new ChatSession(model, tokenizer, { system: 'You tell stories.' });
    const first = await collect(chat.send('Once upon a time', { maxTokens: 12 }));
    const firstPrompt = rendered([
      { role: 'system', content: 'You tell stories.' },
      { role: 'user', content: 'Once upon a time' },
    ]);
    expect(first).toEqual(await collect(generate(model, firstPrompt, { maxTokens: 12 })));
    expect(chat.lastTurn).toEqual({
      promptTokens: firstPrompt.length,
      reusedTokens: 0,
      generatedTokens: 12,
      endedBy: 'max-tokens',
    });
    expect(chat.messages).toEqual([
      { role: 'system', content: 'You tell stories.' },
      { role: 'user', content: 'Once upon a time' },
      { role: 'assistant', content: tokenizer.decode(first) },
    ]);
    const second = await collect(chat.send('What happened next?', { maxTokens: 12 }));
    const secondPrompt = rendered([
      ...chat.messages.slice(0, 3),
      { role: 'user', content: 'What happened next?' },
    ]);
    // greedy from the same ids: the suffix run over the kept cache against the whole prompt at once differ only in
    // f32 summation order (no near-tie in these 12 steps, so the tokens agree)
    expect(second).toEqual(await collect(generate(model, secondPrompt, { maxTokens: 12 })));
    const turn = chat.lastTurn!;
    expect(turn.promptTokens).toBe(secondPrompt.length);
    // the first turn's prompt and reply are kept, to where the re-encoded reply first differs from the ids generated
    let common = 0;
    const before = [...firstPrompt, ...first.slice(0, -1)];
    while (common < before.length && before[common] === secondPrompt[common]) common++;
    expect(turn.reusedTokens).toBe(common);
    expect(turn.reusedTokens).toBeGreaterThan(firstPrompt.length);
    expect(chat.messages).toHaveLength(5);
  });

  it('an aborted turn adds nothing and the next one still reuses the cache; reset() forgets all but the system message', async () => {
    const chat = new ChatSession(model, tokenizer, { system: 'Be brief.' });
    await collect(chat.send('Hello', { maxTokens: 4 }));
    const ac = new AbortController();
    const it = chat.send('Tell me more', { maxTokens: 8, signal: ac.signal });
    await it.next();
    ac.abort();
    await expect(collect(it)).rejects.toThrow(/E_ABORTED/);
    expect(chat.messages).toHaveLength(3);
    const rerun = rendered([...chat.messages, { role: 'user', content: 'Tell me more' }]);
    const after = await collect(chat.send('Tell me more', { maxTokens: 4 }));
    expect(chat.messages).toHaveLength(5);
    // the cache the aborted turn left (its prompt and a token) gives generate()'s reply; the first turn is kept
    expect(after).toEqual(await collect(generate(model, rerun, { maxTokens: 4 })));
    expect(chat.lastTurn!.reusedTokens).toBeGreaterThan(rendered(chat.messages.slice(0, 2)).length);
    // a caller that stops reading adds nothing either, and the next turn is generate()'s again
    for await (const _ of chat.send('And then?', { maxTokens: 4 })) break;
    expect(chat.messages).toHaveLength(5);
    const next = rendered([...chat.messages, { role: 'user', content: 'And then?' }]);
    expect(await collect(chat.send('And then?', { maxTokens: 4 }))).toEqual(
      await collect(generate(model, next, { maxTokens: 4 })),
    );
    expect(chat.messages).toHaveLength(7);
    chat.reset();
    expect(chat.messages).toEqual([{ role: 'system', content: 'Be brief.' }]);
    await collect(chat.send('Hello', { maxTokens: 2 }));
    expect(chat.lastTurn!.reusedTokens).toBe(0);
  });

  it('refuses a conversation past its context, a model without a chat template, a bad context and a second reply at once', async () => {
    const chat = new ChatSession(model, tokenizer, { contextLength: 16 });
    await expect(
      collect(chat.send('a long message that will not fit in sixteen positions at all')),
    ).rejects.toThrow(
      /^E_VALUE: ChatSession\.send: the conversation with this message is \d+ tokens, the context 16: no room for a reply/,
    );
    expect(chat.messages).toEqual([]);
    // a prompt that fills the context exactly leaves no token either (it added an empty reply); maxTokens 0 neither
    const n = rendered([{ role: 'user', content: 'Hi' }]).length;
    const exact = new ChatSession(model, tokenizer, { contextLength: n });
    await expect(collect(exact.send('Hi'))).rejects.toThrow(/E_VALUE.*no room for a reply/);
    await expect(collect(chat.send('Hi', { maxTokens: 0 }))).rejects.toThrow(
      /E_VALUE.*maxTokens 0 leaves no reply/,
    );
    expect([exact.messages, chat.messages]).toEqual([[], []]);
    // one more position: a reply of one token, cut by the context
    const roomy = new ChatSession(model, tokenizer, { contextLength: n + 1 });
    expect(await collect(roomy.send('Hi', { maxTokens: 5 }))).toHaveLength(1);
    expect(roomy.lastTurn!.endedBy).toBe('context');
    const plain = HfTokenizer.fromJson(JSON.parse(readFileSync(`${dir}tokenizer.json`, 'utf8')) as object);
    expect(() => new ChatSession(model, plain)).toThrow(
      /E_UNSUPPORTED: ChatSession: the tokenizer has no chat template/,
    );
    for (const n of [1, 2.5, model.config.maxPositions + 1])
      expect(() => new ChatSession(model, tokenizer, { contextLength: n })).toThrow(
        /E_VALUE: ChatSession: contextLength .* is not an integer in \[2, \d+\]/,
      );
    // generate()'s options, named as the session's
    await expect(collect(chat.send('Hi', { maxTokens: -1 }))).rejects.toThrow(
      /^E_VALUE: ChatSession\.send: maxTokens must be a non-negative integer/,
    );
    expect(() => new ChatSession(model, null as never)).toThrow(
      /^E_VALUE: ChatSession: tokenizer must be an HfTokenizer/,
    );
    const busy = new ChatSession(model, tokenizer);
    const a = busy.send('Hi', { maxTokens: 4 });
    await a.next();
    await expect(busy.send('again').next()).rejects.toThrow(/E_VALUE: ChatSession.send: another reply/);
    await a.return(undefined);
  });

  it('keeps the reply as generated: no clean-up of spaces, no stop token, and no beginning of the stop string that ended it', async () => {
    const chat = new ChatSession(model, tokenizer);
    const free = await collect(chat.send('Once upon a time', { maxTokens: 12 }));
    const text = tokenizer.decode(free, { cleanUpSpaces: false });
    expect(chat.messages[1]!.content).toBe(text);
    // stop at the text of the fourth and fifth generated tokens: the reply ends before them
    const stop = tokenizer.decode(free.slice(3, 5), { cleanUpSpaces: false }).trim();
    expect(stop.length).toBeGreaterThan(1);
    const again = new ChatSession(model, tokenizer);
    await collect(
      again.send('Once upon a time', {
        maxTokens: 12,
        stopStrings: [stop],
        decode: (ids) => tokenizer.decode(ids, { cleanUpSpaces: false }),
      }),
    );
    expect(again.lastTurn!.endedBy).toBe('stop-string');
    expect(again.messages[1]!.content).toBe(text.slice(0, text.indexOf(stop)));
    // an end-of-turn token ends it too, and is not in the text
    const eot = new ChatSession(model, tokenizer);
    const ids = await collect(eot.send('Once upon a time', { maxTokens: 12, stopTokens: [free[2]!] }));
    expect(ids).toEqual(free.slice(0, 3));
    expect(eot.lastTurn!.endedBy).toBe('stop-token');
    expect(eot.messages[1]!.content).toBe(tokenizer.decode(free.slice(0, 2), { cleanUpSpaces: false }));
  });
});
