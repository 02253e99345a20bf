/* global console, process */
// Writes src/testing/fixtures/tokenizer-reference.json: small tokenizers in the layouts of the model families the runtime
// loads, the texts of a test corpus, and the token ids and decoded strings that the reference implementation (the
// Rust `tokenizers` library through its official Node binding, npm package `tokenizers`) gives for them.
// tokenizer.test.ts checks that Caldera's tokenizer (`@huggingface/tokenizers`) reproduces them exactly.
//
// A development tool, run once (the binding is not a dependency of any package):
//   npm install --no-save tokenizers@0.23.2 && node packages/runtime-node/scripts/tokenizer-fixture.mjs
//
// Merges are learnt here from Brown-corpus text with the reference library's own normalizer and pre-tokenizer, so
// every merge is one a real trainer could produce; what matters is that both implementations run the same file.
import { readFileSync, writeFileSync, renameSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..', '..');
const { Tokenizer } = createRequire(import.meta.url)('tokenizers');
const referenceVersion = JSON.parse(
  readFileSync(createRequire(import.meta.url).resolve('tokenizers/package.json'), 'utf8'),
).version;

const docsOf = (file) =>
  readFileSync(join(repo, 'packages/reference-model/data', file), 'utf8')
    .split(/\n\s*\n/)
    .filter((d) => d.trim());
const trainText = docsOf('train.txt').slice(0, 60).join('\n\n');

const special = (id, content) => ({
  id,
  content,
  single_word: false,
  lstrip: false,
  rstrip: false,
  normalized: false,
  special: true,
});

const GPT2_BYTES = (() => {
  const keep = [];
  for (let b = 33; b <= 126; b++) keep.push(b);
  for (let b = 161; b <= 172; b++) keep.push(b);
  for (let b = 174; b <= 255; b++) keep.push(b);
  const map = new Array(256);
  for (const b of keep) map[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (!keep.includes(b)) map[b] = String.fromCharCode(256 + n++);
  return map;
})();
const hex = (b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`;
const LLAMA3_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const byteLevel = (useRegex) => ({
  type: 'ByteLevel',
  add_prefix_space: false,
  trim_offsets: true,
  use_regex: useRegex,
});

/**
 * The families: each gives the tokenizer.json skeleton (everything but the BPE vocab and merges) and the base
 * vocabulary; a pre-token starts as its characters.
 */
const families = {
  // GPT-2 / SmolLM / the reference model: byte-level BPE with the GPT-2 regex
  gpt2ByteLevel: {
    specials: [special(0, '<|endoftext|>')],
    base: GPT2_BYTES,
    skeleton: {
      normalizer: null,
      pre_tokenizer: byteLevel(true),
      post_processor: byteLevel(true),
      decoder: byteLevel(true),
      bpe: { byte_fallback: false, ignore_merges: false, unk_token: null, fuse_unk: false },
    },
  },
  // Llama 3 / Qwen2: a Split regex, then byte-level without its own regex; ignore_merges; BOS by template
  llama3ByteLevel: {
    specials: [special(0, '<|begin_of_text|>'), special(1, '<|end_of_text|>'), special(2, '<|eot_id|>')],
    base: GPT2_BYTES,
    skeleton: {
      normalizer: { type: 'NFC' },
      pre_tokenizer: {
        type: 'Sequence',
        pretokenizers: [
          { type: 'Split', pattern: { Regex: LLAMA3_SPLIT }, behavior: 'Isolated', invert: false },
          byteLevel(false),
        ],
      },
      post_processor: {
        type: 'TemplateProcessing',
        single: [
          { SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } },
          { Sequence: { id: 'A', type_id: 0 } },
        ],
        pair: [
          { SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } },
          { Sequence: { id: 'A', type_id: 0 } },
          { Sequence: { id: 'B', type_id: 1 } },
        ],
        special_tokens: {
          '<|begin_of_text|>': { id: '<|begin_of_text|>', ids: [0], tokens: ['<|begin_of_text|>'] },
        },
      },
      decoder: byteLevel(true),
      bpe: { byte_fallback: false, ignore_merges: true, unk_token: null, fuse_unk: false },
    },
  },
  // Llama 2 / TinyLlama / Mistral v0.1: SentencePiece BPE as converted by transformers (normalizer prepends ▁ and
  // replaces spaces; byte fallback for characters outside the vocabulary)
  sentencePieceBpe: {
    specials: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    base: Array.from({ length: 256 }, (_, b) => hex(b)),
    skeleton: {
      normalizer: {
        type: 'Sequence',
        normalizers: [
          { type: 'Prepend', prepend: '▁' },
          { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
        ],
      },
      pre_tokenizer: null,
      post_processor: null,
      decoder: {
        type: 'Sequence',
        decoders: [
          { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
          { type: 'ByteFallback' },
          { type: 'Fuse' },
          { type: 'Strip', content: ' ', start: 1, stop: 0 },
        ],
      },
      bpe: { byte_fallback: true, ignore_merges: false, unk_token: '<unk>', fuse_unk: true },
    },
  },
  // Mistral v0.3 and later Llama-2 derivatives: the Metaspace pre-tokenizer (prepend_scheme "first")
  metaspaceBpe: {
    specials: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    base: Array.from({ length: 256 }, (_, b) => hex(b)),
    skeleton: {
      normalizer: null,
      pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
      post_processor: null,
      decoder: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
      bpe: { byte_fallback: true, ignore_merges: false, unk_token: '<unk>', fuse_unk: true },
    },
  },
};

function tokenizerJson(family, vocab, merges) {
  const { skeleton, specials } = family;
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials,
    normalizer: skeleton.normalizer,
    pre_tokenizer: skeleton.pre_tokenizer,
    post_processor: skeleton.post_processor,
    decoder: skeleton.decoder,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: skeleton.bpe.unk_token,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: skeleton.bpe.fuse_unk,
      byte_fallback: skeleton.bpe.byte_fallback,
      ignore_merges: skeleton.bpe.ignore_merges,
      vocab: Object.fromEntries(vocab),
      merges: merges.map((m) => [...m]),
    },
  };
}

/** Greedy BPE training on pre-token counts: the most frequent adjacent pair first (ties: first seen). */
function learn(family, mergesWanted) {
  const vocab = new Map(family.specials.map((s) => [s.content, s.id]));
  for (const b of family.base) vocab.set(b, vocab.size);
  // pre-tokens of the training text as the reference library produces them (normalizer, then pre-tokenizer)
  const probe = Tokenizer.fromString(JSON.stringify(tokenizerJson(family, vocab, [])));
  const normalizer = probe.getNormalizer();
  const pre = probe.getPreTokenizer();
  const counts = new Map();
  for (const para of trainText.split('\n')) {
    const text = normalizer ? normalizer.normalizeString(para) : para;
    const pieces = pre ? pre.preTokenizeString(text).map(([p]) => p) : [text];
    for (const p of pieces) counts.set(p, (counts.get(p) ?? 0) + 1);
  }
  // SentencePiece-style vocabularies hold characters; the frequent ones join the base vocabulary
  const sentencePiece = !family.skeleton.pre_tokenizer || family.skeleton.pre_tokenizer.type === 'Metaspace';
  if (sentencePiece) {
    const chars = new Map();
    for (const [p, c] of counts) for (const ch of p) chars.set(ch, (chars.get(ch) ?? 0) + c);
    for (const [ch] of [...chars].filter(([, c]) => c >= 3).sort((a, b) => b[1] - a[1]))
      if (!vocab.has(ch)) vocab.set(ch, vocab.size);
  }
  let words = [...counts].map(([p, c]) => ({ s: Array.from(p).filter((x) => vocab.has(x)), c }));
  const merges = [];
  while (merges.length < mergesWanted) {
    const freq = new Map();
    for (const { s, c } of words)
      for (let i = 0; i + 1 < s.length; i++) {
        const k = `${s[i]}\u0000${s[i + 1]}`;
        freq.set(k, (freq.get(k) ?? 0) + c);
      }
    let best = '';
    let bf = 1;
    for (const [k, f] of freq)
      // like SentencePiece, pieces never cross a word boundary (▁ only at the start of a piece)
      if (f > bf && !(sentencePiece && k.split('\u0000')[1].includes('▁'))) [best, bf] = [k, f];
    if (!best) break;
    const [a, b] = best.split('\u0000');
    merges.push([a, b]);
    if (!vocab.has(a + b)) vocab.set(a + b, vocab.size);
    words = words.map(({ s, c }) => {
      const out = [];
      for (let i = 0; i < s.length; i++)
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          out.push(a + b);
          i++;
        } else out.push(s[i]);
      return { s: out, c };
    });
  }
  return tokenizerJson(family, vocab, merges);
}

const texts = [
  '',
  ' ',
  'Hello',
  ' Hello world',
  '   leading and trailing spaces   ',
  'Multiple   spaces\tand\ttabs\nand\n\nnewlines\r\nCRLF',
  "It's the jury's belief; they'LL say I'M sure we'd won't can't",
  'Numbers: 1, 12, 123, 1234, 1234567 and 3.14159 or 1,250,000 (2024-11-22)',
  'Naïve café résumé — “quotes” and ‘single’ ellipsis… €5 £3 ¥7',
  'Decomposed: cafe\u0301 vs café; Ångström; ﬁ ligature',
  'Emoji 🙂 👩‍👩‍👧 🇩🇪 and CJK 漢字かなカナ 한국어, Arabic مرحبا, Hebrew שלום, Greek αβγ, Cyrillic привет',
  'Special tokens inline: <|endoftext|> <s> </s> <|begin_of_text|> <unk> done',
  'Code: for (let i = 0; i < n; i++) { x[i] = y[i] * 2; } // comment',
  'URL https://example.com/a?b=c&d=e#f and e-mail someone@example.org',
  'ALL CAPS SHOUTING and MiXeD cAsE words',
  "Spaces before punctuation stay: the headline ' City Hooked ' , today -- , isn 't it ? yes ! no . do n't",
  '\u0000\u0001 control \u007f chars \u200b zero-width',
  ...docsOf('test.txt')
    .slice(0, 6)
    .map((d) => d.slice(0, 1500)),
];

const out = {
  reference: `tokenizers@${referenceVersion} (Hugging Face, Rust, Node binding)`,
  texts,
  tokenizers: {},
};
for (const [name, family] of Object.entries(families)) {
  const json = learn(family, 700);
  const ref = Tokenizer.fromString(JSON.stringify(json));
  const ids = [];
  const decoded = [];
  for (const text of texts) {
    const e = await ref.encode(text, null, { addSpecialTokens: false });
    ids.push(e.getIds());
    decoded.push(await ref.decode(e.getIds(), true));
  }
  out.tokenizers[name] = { tokenizer: json, ids, decoded };
  console.log(`${name}: vocab ${ref.getVocabSize(true)}, ${ids.flat().length} ids`);
}
const target = join(here, '..', 'src', 'testing', 'fixtures', 'tokenizer-reference.json');
writeFileSync(`${target}.tmp`, JSON.stringify(out) + '\n');
renameSync(`${target}.tmp`, target);
console.log(`wrote ${target}`);
process.exit(0);
