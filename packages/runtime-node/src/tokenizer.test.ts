import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HfTokenizer, loadTokenizer } from './tokenizer.js';

interface Fixture {
  reference: string;
  texts: string[];
  tokenizers: Record<string, { tokenizer: object; ids: number[][]; decoded: string[] }>;
}

/**
 * What this proves: on four tokenizer layouts of the families the runtime loads (GPT-2 byte-level; Llama-3/Qwen2
 * Split regex + byte-level with ignore_merges and NFC; Llama-2 SentencePiece BPE with byte fallback; Metaspace BPE),
 * our tokenizer gives exactly the token ids and decoded strings of the reference implementation (Hugging Face's Rust
 * `tokenizers`, recorded by scripts/tokenizer-fixture.mjs) on a corpus of Brown-corpus documents and adversarial
 * strings (empty, whitespace runs, CRLF, digits, contractions, NFD accents, ZWJ emoji, CJK/RTL scripts, control
 * characters, special-token text inline). Exact equality: tokenization is discrete, no tolerance applies.
 */
describe('HfTokenizer against the reference implementation', () => {
  const fixture = JSON.parse(
    readFileSync(new URL('./testing/fixtures/tokenizer-reference.json', import.meta.url), 'utf8'),
  ) as Fixture;
  it.each(Object.keys(fixture.tokenizers))('%s: ids and decoded text equal the reference', (name) => {
    const { tokenizer, ids, decoded } = fixture.tokenizers[name]!;
    const tok = HfTokenizer.fromJson(tokenizer);
    expect(fixture.texts.length).toBeGreaterThan(20);
    fixture.texts.forEach((text, i) => {
      expect(tok.encode(text), `text ${i}: ${JSON.stringify(text.slice(0, 40))}`).toEqual(ids[i]);
      expect(tok.decode(ids[i]!), `decode of text ${i}`).toBe(decoded[i]);
    });
  });
});

/**
 * What this proves: `@huggingface/tokenizers`, driven by our loader, encodes a byte-level BPE `tokenizer.json` exactly
 * as an independent byte-level BPE written here from the GPT-2 definition (byte→unicode map, pre-tokenisation regex,
 * lowest-rank merge first) on a small corpus, and decodes back to the text. It does not prove agreement with the
 * Python/Rust reference on real vocabularies (no Python here); the merges are learnt by this test from the corpus.
 */
function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const map: string[] = new Array(256);
  for (const b of bs) map[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) map[b] = String.fromCharCode(256 + n++);
  return map;
}

const SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
const B2U = bytesToUnicode();
const words = (text: string) =>
  (text.match(SPLIT) ?? []).map((w) => Array.from(new TextEncoder().encode(w), (b) => B2U[b]!));

/** Learn `count` merges greedily from a corpus (most frequent pair, ties by first seen). */
function learnMerges(corpus: string, count: number): [string, string][] {
  let seqs = words(corpus);
  const merges: [string, string][] = [];
  for (let k = 0; k < count; k++) {
    const freq = new Map<string, number>();
    for (const s of seqs)
      for (let i = 0; i + 1 < s.length; i++) {
        const key = `${s[i]} ${s[i + 1]}`;
        freq.set(key, (freq.get(key) ?? 0) + 1);
      }
    let best = '';
    let bf = 0;
    for (const [key, f] of freq) if (f > bf) [best, bf] = [key, f];
    if (!best) break;
    const [a, b] = best.split(' ') as [string, string];
    merges.push([a, b]);
    seqs = seqs.map((s) => {
      const out: string[] = [];
      for (let i = 0; i < s.length; i++)
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          out.push(a + b);
          i++;
        } else out.push(s[i]!);
      return out;
    });
  }
  return merges;
}

/** Independent encoder: per pre-token, repeatedly apply the lowest-rank adjacent merge. */
function referenceEncode(text: string, vocab: Map<string, number>, merges: [string, string][]): number[] {
  const rank = new Map(merges.map(([a, b], i) => [`${a} ${b}`, i]));
  const ids: number[] = [];
  for (let s of words(text)) {
    for (;;) {
      let best = -1;
      let br = Infinity;
      for (let i = 0; i + 1 < s.length; i++) {
        const r = rank.get(`${s[i]} ${s[i + 1]}`);
        if (r !== undefined && r < br) [best, br] = [i, r];
      }
      if (best < 0) break;
      s = [...s.slice(0, best), s[best]! + s[best + 1]!, ...s.slice(best + 2)];
    }
    for (const p of s) ids.push(vocab.get(p)!);
  }
  return ids;
}

const corpus = [
  'The Fulton County Grand Jury said Friday an investigation of recent primary elections produced no evidence.',
  "It's the jury's belief that the city's 1,250 voters weren't treated fairly -- they said so twice.",
  'Naïve café owners paid 3.5 million dollars; the résumé was 12 pages long!',
  '  Multiple   spaces\tand tabs\nand newlines are kept.',
  'Emoji 🙂 and CJK 漢字 fall back to byte tokens.',
];

describe('HfTokenizer', () => {
  const merges = learnMerges(corpus.slice(0, 3).join(' '), 120);
  const vocab = new Map<string, number>();
  vocab.set('<|endoftext|>', 0);
  for (let b = 0; b < 256; b++) vocab.set(B2U[b]!, vocab.size);
  for (const [a, b] of merges) if (!vocab.has(a + b)) vocab.set(a + b, vocab.size);
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [
      {
        id: 0,
        content: '<|endoftext|>',
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: true,
      },
    ],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: null,
    decoder: byteLevel,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      vocab: Object.fromEntries(vocab),
      merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  };
  const config = {
    bos_token: '<|endoftext|>',
    eos_token: '<|endoftext|>',
    chat_template:
      "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
  };
  const tok = HfTokenizer.fromJson(json, config);

  it('encodes a corpus exactly like an independent byte-level BPE, and decodes back to the text', () => {
    for (const text of corpus) {
      const ids = tok.encode(text);
      expect(ids).toEqual(referenceEncode(text, vocab, merges));
      expect(tok.decode(ids)).toBe(text);
    }
    expect(tok.encode(corpus[0]!).length).toBeLessThan(corpus[0]!.length / 2); // merges really apply
    expect(tok.decode([0, ...tok.encode('jury')])).toBe('jury'); // special tokens skipped
  });

  it("encode and decode passed on as functions keep their tokenizer (generate's decode: tokenizer.decode threw a TypeError)", () => {
    const { encode, decode } = tok;
    expect(decode(encode('jury'))).toBe('jury');
  });

  it('decode: ids past the vocabulary are skipped (padded embedding rows), non-integer or negative ids are E_VALUE', () => {
    const ids = tok.encode('jury');
    expect(tok.decode([...ids, vocab.size + 5])).toBe('jury');
    // a plain Error from the library before (fractions, NaN), or silently nothing (negative ids)
    for (const bad of [1.5, NaN, -1]) expect(() => tok.decode([...ids, bad])).toThrow(/E_VALUE.*token id/);
    // not an array: a raw TypeError (null) or the library's plain Error (a number) before
    for (const [bad, got] of [
      [null, 'null'],
      [undefined, 'undefined'],
      [5, 'a number'],
    ] as const)
      expect(() => tok.decode(bad as never)).toThrow(
        `E_VALUE: decode: ids must be an array of token ids, got ${got}`,
      );
  });

  it("decode: a config's clean_up_tokenization_spaces is applied unless cleanUpSpaces is false (streamed text)", () => {
    const cleaning = HfTokenizer.fromJson(json, { ...config, clean_up_tokenization_spaces: true });
    const ids = tok.encode("I 's a , b .");
    expect(tok.decode(ids)).toBe("I 's a , b ."); // no clean-up when the config does not ask for it
    expect(cleaning.decode(ids)).toBe("I's a, b.");
    expect(cleaning.decode(ids, { cleanUpSpaces: false })).toBe("I 's a , b .");
    expect(cleaning.decode(ids, null as never)).toBe("I's a, b."); // null options are none
  });

  it('encode: text that is no string is E_VALUE (the library gave [] for null, a number or an object)', () => {
    for (const [bad, got] of [
      [null, 'null'],
      [5, 'a number'],
      [{}, 'an object'],
    ] as const)
      expect(() => tok.encode(bad as never)).toThrow(`E_VALUE: encode: text must be a string, got ${got}`);
    expect(tok.encode('')).toEqual([]);
  });

  it("options.variables name more values for the template, as transformers' apply_chat_template kwargs", () => {
    // the end of Qwen3's template (its generation prompt), verbatim; the expected strings are what jinja2 renders
    // (python3 jinja2 3.1.6, transformers' sandboxed environment with trim_blocks and lstrip_blocks), checked here
    const qwen3Tail = `{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}`;
    const render = (variables?: Record<string, unknown>) =>
      tok.applyChatTemplate([], { template: qwen3Tail, ...(variables ? { variables } : {}) });
    expect(render()).toBe('<|im_start|>assistant\n');
    expect(render({ enable_thinking: true })).toBe('<|im_start|>assistant\n');
    expect(render({ enable_thinking: false })).toBe('<|im_start|>assistant\n<think>\n\n</think>\n\n');
    // they take a special token's place (transformers: {**special_tokens_map, **kwargs}); tools are given this way
    const t = '{{ eos_token }}|{{ tools | length if tools else "none" }}|{{ documents }}';
    expect(tok.applyChatTemplate([], { template: t })).toBe('<|endoftext|>|none|None');
    expect(
      tok.applyChatTemplate([], {
        template: t,
        variables: { eos_token: '</s>', tools: [{ type: 'function' }] },
      }),
    ).toBe('</s>|1|None');
    // what the arguments give, and values that are not JSON data, are refused, naming the variable
    for (const [variables, message] of [
      [{ messages: [] }, 'options.variables.messages: give it as the messages argument'],
      [
        { add_generation_prompt: false },
        'options.variables.add_generation_prompt: give it as options.addGenerationPrompt',
      ],
      [{ f: () => 1 }, 'options.variables.f is a function, not JSON data'],
      [{ tools: [{ n: Number.NaN }] }, 'options.variables.tools[0].n is NaN, not JSON data'],
      [{ d: new Date(0) }, 'options.variables.d is'],
      [[1], 'options.variables must be an object of names for the template, got an array'],
    ] as const)
      expect(() => tok.applyChatTemplate([], { template: t, variables: variables as never })).toThrow(
        `E_VALUE: applyChatTemplate: ${message}`,
      );
    const loop: Record<string, unknown> = {};
    loop.self = loop;
    expect(() => tok.applyChatTemplate([], { template: t, variables: { loop } })).toThrow(
      'E_VALUE: applyChatTemplate: options.variables.loop.self refers to itself',
    );
    // null or undefined variables are none
    expect(tok.applyChatTemplate([], { template: t, variables: null as never })).toBe(
      '<|endoftext|>|none|None',
    );
  });

  it('options.variables: the template renders what was checked, a copy read once (a getter could change it after)', () => {
    let reads = 0;
    const variables = {
      get x(): unknown {
        return reads++ === 0 ? 'checked' : () => 'unchecked';
      },
    };
    expect(tok.applyChatTemplate([], { template: '{{ x }}', variables })).toBe('checked');
    expect(reads).toBe(1);
    // a hole of a sparse array is undefined, refused (forEach skipped it: the render failed later, or printed Undefined)
    const sparse = [1, 2, 3];
    delete sparse[1];
    expect(() => tok.applyChatTemplate([], { template: '{{ x|length }}', variables: { x: sparse } })).toThrow(
      'E_VALUE: applyChatTemplate: options.variables.x[1] is undefined, not JSON data',
    );
    // a "__proto__" key (JSON.parse makes it a key) stays one
    expect(
      tok.applyChatTemplate([], {
        template: '{{ x|tojson }}',
        variables: JSON.parse('{"x": {"__proto__": 5}}'),
      }),
    ).toBe('{"__proto__": 5}');
  });

  it("options.variables cannot name jinja2's literals: none, true, false, None, True, False stay what they are", () => {
    // jinja2 3.1.6 renders '{{ none }}|{{ true }}' with none='N', true='T' as 'None|True' (literals, not variables)
    for (const name of ['true', 'false', 'none', 'True', 'False', 'None'])
      expect(() => tok.applyChatTemplate([], { template: '{{ 1 }}', variables: { [name]: 'N' } })).toThrow(
        `E_VALUE: applyChatTemplate: options.variables.${name}: ${name} is a literal of templates`,
      );
  });

  it('options.variables nested over 500 deep are E_VALUE naming the variable (it was a RangeError at 2000)', () => {
    // (jinja2 3.1.6 prints a list 900 deep and fails with a RecursionError at 1000)
    const nest = (n: number) => {
      let v: unknown = 1;
      for (let i = 0; i < n; i++) v = i % 2 ? [v] : { k: v };
      return v;
    };
    expect(
      tok.applyChatTemplate([], { template: '{{ x|tojson|length }}', variables: { x: nest(500) } }),
    ).toBe(String(JSON.stringify(nest(500)).replaceAll(':', ': ').length));
    for (const n of [501, 2000, 100_000])
      expect(() => tok.applyChatTemplate([], { template: '{{ 1 }}', variables: { deep: nest(n) } })).toThrow(
        'E_VALUE: applyChatTemplate: options.variables.deep nests lists and objects over 500 deep',
      );
    // an object held twice is copied twice: 40 levels of it would be 2^40 copies
    let shared: unknown = 1;
    for (let i = 0; i < 40; i++) shared = { a: shared, b: shared };
    expect(() => tok.applyChatTemplate([], { template: '{{ 1 }}', variables: { shared } })).toThrow(
      'E_VALUE: applyChatTemplate: options.variables.shared holds over 1048576 values',
    );
  });

  it('renders the chat template with @huggingface/jinja', () => {
    // a conversation declared `as const` is taken (readonly: the types refused it)
    const conversation = [
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Hello' },
    ] as const;
    const out = tok.applyChatTemplate(conversation);
    expect(out).toBe('<|user|>Hi<|endoftext|><|assistant|>Hello<|endoftext|><|assistant|>');
    expect(() => HfTokenizer.fromJson(json, {}).applyChatTemplate([])).toThrow(/E_UNSUPPORTED/);
  });

  it('loadTokenizer: chat_template.jinja wins over the config (as transformers); a template list gives its "default"', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-tok-'));
    await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(json));
    const msgs = [{ role: 'user', content: 'Hi' }];
    const fromFile = '{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}{{ eos_token }}';
    const listed = [
      { name: 'tool_use', template: 'TOOLS {{ messages[0].content }}' },
      { name: 'default', template: 'DEFAULT {{ messages[0].content }}' },
    ];
    // no config and no file: no template
    expect((await loadTokenizer(dir)).hasChatTemplate).toBe(false);
    // the config's string
    await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify(config));
    expect((await loadTokenizer(dir)).applyChatTemplate(msgs)).toBe('<|user|>Hi<|endoftext|><|assistant|>');
    // chat_template.jinja (recent transformers) replaces it; eos_token still comes from the config
    await writeFile(join(dir, 'chat_template.jinja'), fromFile);
    const tok2 = await loadTokenizer(dir);
    expect(tok2.chatTemplate).toBe(fromFile);
    expect(tok2.applyChatTemplate(msgs)).toBe('[user] Hi<|endoftext|>');
    // ... also when the config has none
    await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '</s>' }));
    expect((await loadTokenizer(dir)).applyChatTemplate(msgs)).toBe('[user] Hi</s>');
    await rm(join(dir, 'chat_template.jinja'));
    // the older list of named templates: the one named "default"
    await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify({ ...config, chat_template: listed }));
    const tok3 = await loadTokenizer(dir);
    expect(tok3.hasChatTemplate).toBe(true);
    expect(tok3.applyChatTemplate(msgs)).toBe('DEFAULT Hi');
    // a list without "default": no template, and the error names the ones there are
    const noDefault = HfTokenizer.fromJson(json, { chat_template: [listed[0]] });
    expect(noDefault.hasChatTemplate).toBe(false);
    expect(() => noDefault.applyChatTemplate(msgs)).toThrow(
      /E_UNSUPPORTED.*'tool_use'.*none named 'default'/,
    );
    expect(noDefault.applyChatTemplate(msgs, { template: listed[0]!.template })).toBe('TOOLS Hi');
    // tools and documents are none, as transformers passes them when a caller gives none (they were undefined)
    expect(
      noDefault.applyChatTemplate(msgs, {
        template: '{% if tools is none and documents is none %}ok{% endif %}',
      }),
    ).toBe('ok');
  });

  it('loadTokenizer: a side file that is a dangling symbolic link is E_IO naming it, not taken as absent', async () => {
    // a Hugging Face cache whose blob was removed: the model ran without its chat template or special tokens
    const dir = await mkdtemp(join(tmpdir(), 'caldera-tok-'));
    try {
      await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(json));
      for (const f of ['chat_template.jinja', 'tokenizer_config.json', 'special_tokens_map.json']) {
        await symlink(join(dir, 'blobs', 'gone'), join(dir, f));
        await expect(loadTokenizer(dir)).rejects.toThrow(
          new RegExp(
            `^E_IO: .*${f.replace('.', '\\.')} is a symbolic link to .*blobs/gone, which does not exist$`,
          ),
        );
        await rm(join(dir, f));
      }
      expect((await loadTokenizer(dir)).hasChatTemplate).toBe(false);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a template that is no string, empty, or does not parse is E_FORMAT naming where it came from', async () => {
    const msgs = [{ role: 'user', content: 'Hi' }];
    expect(() => HfTokenizer.fromJson(json, { chat_template: 123 }).applyChatTemplate(msgs)).toThrow(
      /^E_FORMAT: tokenizer_config\.json's chat_template is a number, not a template string/,
    );
    const dir = await mkdtemp(join(tmpdir(), 'caldera-tok-'));
    await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(json));
    await writeFile(join(dir, 'chat_template.jinja'), ' \n');
    await expect(loadTokenizer(dir).then((t) => t.applyChatTemplate(msgs))).rejects.toThrow(
      /^E_FORMAT: the chat template \(chat_template\.jinja\) is empty$/,
    );
    await writeFile(join(dir, 'chat_template.jinja'), '{% for m in messages %}{{ m.content }');
    await expect(loadTokenizer(dir).then((t) => t.applyChatTemplate(msgs))).rejects.toThrow(
      /^E_FORMAT: chat template \(chat_template\.jinja\) failed: /,
    );
    expect(() => HfTokenizer.fromJson(json, { chat_template: '{{ x ' }).applyChatTemplate(msgs)).toThrow(
      /^E_FORMAT: chat template \(tokenizer_config\.json's chat_template\) failed: /,
    );
  });

  it('an added token without an id is E_FORMAT when met (it came out as undefined, made id 0 on a worker thread)', () => {
    const noId = {
      content: '<|x|>',
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    };
    const broken = HfTokenizer.fromJson({ ...json, added_tokens: [...json.added_tokens, noId] }, config);
    expect(broken.encode('Hello')).toEqual(tok.encode('Hello')); // text without it encodes as before
    expect(() => broken.encode('Hello <|x|> there')).toThrow(
      /^E_FORMAT: tokenizer\.json gives no valid token id \((undefined|null), token \d+ of the text\): an added token without an id/,
    );
  });

  it('side files that are not what they should be: a FIFO chat_template.jinja, a tokenizer_config.json list, a default entry without a template', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-tok-'));
    await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(json));
    // a FIFO: every command that loads the tokenizer waited for a writer for ever
    execFileSync('mkfifo', [join(dir, 'chat_template.jinja')]);
    await expect(loadTokenizer(dir)).rejects.toThrow(
      /^E_IO: .*chat_template\.jinja is a FIFO \(named pipe\), not a chat template$/,
    );
    await rm(join(dir, 'chat_template.jinja'));
    // a list: its template and special tokens were dropped without a word
    await writeFile(join(dir, 'tokenizer_config.json'), '[1, 2]');
    await expect(loadTokenizer(dir)).rejects.toThrow(
      /^E_FORMAT: .*tokenizer_config\.json is an array, not a JSON object$/,
    );
    // the entry named "default" has no string template: it said "none named 'default'"
    const t = HfTokenizer.fromJson(json, { chat_template: [{ name: 'default', template: 42 }] });
    expect(() => t.applyChatTemplate([{ role: 'user', content: 'Hi' }])).toThrow(
      /^E_FORMAT: tokenizer_config\.json's chat_template entry 'default' has a template that is a number, not a string$/,
    );
    await rm(dir, { recursive: true, force: true });
  });

  it('a tokenizer.json that encodes every text to nothing is E_FORMAT at load (it gave an empty prompt later)', () => {
    const unknownPattern = {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Glob: '*' }, behavior: 'Isolated', invert: false },
        byteLevel,
      ],
    };
    expect(() => HfTokenizer.fromJson({ ...json, pre_tokenizer: unknownPattern }, config)).toThrow(
      /^E_FORMAT: tokenizer\.json encodes 'Hello, world! 42' to no tokens at all/,
    );
  });

  it('a Sequence without its list is E_FORMAT naming where (it ran as an empty sequence and dropped text)', () => {
    // without its pre-tokenizer, byte-level BPE got raw text: ' ' and 'é' are no tokens of it and were dropped
    const noList = { type: 'Sequence' };
    expect(() => HfTokenizer.fromJson({ ...json, pre_tokenizer: noList }, config)).toThrow(
      /^E_FORMAT: tokenizer\.json: pre_tokenizer is a Sequence without its list "pretokenizers" \(got undefined\)$/,
    );
    const nested = { type: 'Sequence', decoders: [byteLevel, { type: 'Sequence', decoders: 'x' }] };
    expect(() => HfTokenizer.fromJson({ ...json, decoder: nested }, config)).toThrow(
      /^E_FORMAT: tokenizer\.json: decoder\.decoders\[1\] is a Sequence without its list "decoders"/,
    );
    expect(() =>
      HfTokenizer.fromJson({ ...json, normalizer: { type: 'Sequence', normalizers: null } }, config),
    ).toThrow(
      /^E_FORMAT: tokenizer\.json: normalizer is a Sequence without its list "normalizers" \(got null\)$/,
    );
    // with their lists, the same Sequences encode as the parts alone
    const withList = HfTokenizer.fromJson(
      {
        ...json,
        pre_tokenizer: { type: 'Sequence', pretokenizers: [byteLevel] },
        decoder: { type: 'Sequence', decoders: [byteLevel] },
      },
      config,
    );
    expect(withList.encode('Hello, wörld! 42')).toEqual(tok.encode('Hello, wörld! 42'));
    expect(withList.decode(withList.encode('Hello, wörld! 42'))).toBe('Hello, wörld! 42');
  });

  it("loadTokenizer: a chat template gets special_tokens_map.json's tokens where tokenizer_config.json names none", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-tok-'));
    await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(json));
    const template =
      '{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ unk_token is defined }}|{{ messages[0].content }}';
    await writeFile(
      join(dir, 'tokenizer_config.json'),
      JSON.stringify({ eos_token: '</s>', chat_template: template }),
    );
    const msgs = [{ role: 'user', content: 'Hi' }];
    // no map: bos '' (as before), pad and unk undefined (a boolean prints as Python's: jinja2 gives 'False')
    expect((await loadTokenizer(dir)).applyChatTemplate(msgs)).toBe('|</s>||False|Hi');
    // the map fills what the config lacks (bos, pad), the config wins where both name one (eos)
    await writeFile(
      join(dir, 'special_tokens_map.json'),
      JSON.stringify({ bos_token: { content: '<s>' }, eos_token: '<eos>', pad_token: '<pad>' }),
    );
    expect((await loadTokenizer(dir)).applyChatTemplate(msgs)).toBe('<s>|</s>|<pad>|False|Hi');
    // a malformed token a template may not use (pad_token) is left out, not an error
    await writeFile(join(dir, 'special_tokens_map.json'), JSON.stringify({ bos_token: '<s>', pad_token: 7 }));
    expect((await loadTokenizer(dir)).applyChatTemplate(msgs)).toBe('<s>|</s>||False|Hi');
    await writeFile(join(dir, 'special_tokens_map.json'), JSON.stringify({ bos_token: 5 }));
    expect(() =>
      HfTokenizer.fromJson(
        json,
        { chat_template: template },
        { specialTokens: { bos_token: 5 } },
      ).applyChatTemplate(msgs),
    ).toThrow("E_FORMAT: special_tokens_map.json's bos_token is a number, not a token string or { content }");
    await writeFile(join(dir, 'special_tokens_map.json'), '"x"');
    await expect(loadTokenizer(dir)).rejects.toThrow(
      /^E_FORMAT: .*special_tokens_map\.json is a string, not a JSON object$/,
    );
    await rm(dir, { recursive: true, force: true });
  });

  it('a runaway template is E_FORMAT within bounded time and memory (it ended the process with a V8 fatal error)', () => {
    const msgs = [{ role: 'user', content: 'Hi' }];
    const render = (template: string) => () => tok.applyChatTemplate(msgs, { template });
    const t0 = performance.now();
    // range(1e9) made a billion-item array first; Jinja's sandbox allows 100 000 items
    expect(render('{% for i in range(1000000000) %}{% endfor %}x')).toThrow(
      /^E_FORMAT: chat template \(options\.template\) failed: range\(\) of 1000000000 items, over 100000$/,
    );
    expect(
      render('{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}'),
    ).toThrow(/failed: it ran over 10000000 steps/);
    // a string squared at each step (2, 8, 80, 6560, 4.3e7 characters, then 1.9e15)
    expect(
      render(
        "{% set s = 'ab' %}{% for i in range(5) %}{% set s = s.replace('', s) %}{% endfor %}{{ s|length }}",
      ),
    ).toThrow(/failed: it made a string of \d+ characters, over 4194304/);
    expect(performance.now() - t0).toBeLessThan(20_000); // (each of them: 1 s to 2 s on the 2-core CI machine)
    // what real templates use still works: loops, range, namespace, raise_exception, strftime_now, loop.last
    expect(
      tok.applyChatTemplate(
        [
          { role: 'system', content: 'S' },
          { role: 'user', content: 'Hi' },
        ],
        {
          template:
            '{% set ns = namespace(n=0) %}{% for m in messages[1:] %}{% set ns.n = ns.n + 1 %}{{ m.content }}{% if loop.last %}|{% endif %}{% endfor %}' +
            "{% for i in range(2, 8, 3) %}{{ i }}{% endfor %}{{ ns.n }}{{ strftime_now('%Y')|length }}{{ bos_token }}",
        },
      ),
    ).toBe('Hi|2514<|endoftext|>');
    expect(render("{{ raise_exception('no system role') }}")).toThrow(/failed: no system role$/);
  });

  it('a bos_token or eos_token that is neither a string nor { content } is E_FORMAT (it rendered "undefined")', () => {
    const msgs = [{ role: 'user', content: 'Hi' }];
    const template = '[{{ bos_token }}]{{ messages[0].content }}[{{ eos_token }}]';
    const withTokens = (extra: Record<string, unknown>) =>
      HfTokenizer.fromJson(json, { ...extra, chat_template: template }).applyChatTemplate(msgs);
    expect(withTokens({ bos_token: { content: '<s>' }, eos_token: '</s>' })).toBe('[<s>]Hi[</s>]');
    expect(withTokens({ bos_token: null })).toBe('[]Hi[]');
    for (const [bad, what] of [
      [{ lstrip: false }, 'an object without a string content'],
      [['<s>'], 'an array'],
      [5, 'a number'],
    ] as const)
      expect(() => withTokens({ bos_token: bad })).toThrow(
        `E_FORMAT: tokenizer_config.json's bos_token is ${what}, not a token string or { content }`,
      );
  });
});
