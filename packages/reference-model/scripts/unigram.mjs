// The unigram baseline of the reference model's README: an add-one (Laplace) unigram model of the train split's
// tokens, scored on every token of the test split. Documents are the splits' blank-line-separated blocks, encoded
// with the model's own tokenizer without special tokens (no BOS: a unigram model has no context to begin).
// Usage (in this package): node scripts/unigram.mjs  →  one JSON line {"tokens", "ppl", "trainTokens"}
/* global console, URL */
import { readFileSync } from 'node:fs';
import { Tokenizer } from '@huggingface/tokenizers';

const here = (p) => new URL(`../${p}`, import.meta.url);
const json = (p) => JSON.parse(readFileSync(here(p), 'utf8'));
const tokenizer = new Tokenizer(json('model/tokenizer.json'), json('model/tokenizer_config.json'));
const vocab = json('model/config.json').vocab_size;

const tokens = (split) =>
  readFileSync(here(`data/${split}.txt`), 'utf8')
    .split(/\n\s*\n/)
    .filter((d) => d.trim().length > 0)
    .flatMap((d) => tokenizer.encode(d, { add_special_tokens: false }).ids);

const train = tokens('train');
const counts = new Float64Array(vocab);
for (const t of train) counts[t]++;
const test = tokens('test');
let nll = 0;
for (const t of test) nll -= Math.log((counts[t] + 1) / (train.length + vocab));
console.log(
  JSON.stringify({
    tokens: test.length,
    ppl: Number(Math.exp(nll / test.length).toFixed(2)),
    trainTokens: train.length,
  }),
);
