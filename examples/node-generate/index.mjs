// Stream a greedy continuation from a model directory (default: the embedded reference model), using the runtime API
// directly: loadModel → tokenizer → generate (an async iterator of token ids). Each token's products run on two
// threads (a decode pool: the rows of the larger layers split over them; the tokens are the same as on one).
//   node index.mjs [model-dir] [prompt]
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { stopTokenIdsOf } from '@caldera/core';
import { referenceModelDir } from '@caldera/reference-model';
import { createDecodePool, generate, loadModel, loadTokenizer, readJsonFile } from '@caldera/runtime-node';

const args = process.argv.slice(2);
const USAGE = 'usage: node index.mjs [model-dir] [prompt]   (default: the reference model)';
const usage = (why) => {
  console.error(`${why}\n${USAGE}`);
  process.exit(2);
};
if (args.includes('--help') || args.includes('-h')) {
  console.log(USAGE); // asked for: on stdout, exit 0 (as `caldera --help`)
  process.exit(0);
}
if (args.length > 2) usage(`unexpected argument '${args[2]}' (quote a prompt of several words)`);
if (args[0] !== undefined && !statSync(args[0], { throwIfNoEntry: false })?.isDirectory())
  usage(`${args[0]} is not a model directory`);
const dir = args[0] ?? referenceModelDir();
const prompt = args[1] ?? 'The jury said';

// a reader that went away (`node index.mjs | head -1`) ends the program quietly, as a Unix filter killed by SIGPIPE
process.stdout.on('error', (e) => {
  if (e.code === 'EPIPE') process.exit(141);
  throw e;
});

const decodePool = await createDecodePool({ threads: 2 });
try {
  const { model, config } = await loadModel(dir, { decodePool });
  const tok = await loadTokenizer(dir);
  // the ids generation stops at, as `caldera generate`: config.json's and generation_config.json's eos_token_id
  const genFile = join(dir, 'generation_config.json');
  const stopTokens = stopTokenIdsOf(config, await readJsonFile(genFile, { optional: true }), genFile);
  // BOS first when the model has one (as `caldera generate`)
  const ids = [...(config.bosTokenId === null ? [] : [config.bosTokenId]), ...tok.encode(prompt)];
  if (ids.length === 0) usage('the prompt is empty');
  process.stdout.write(prompt);
  const out = [];
  let printed = '';
  // the completion as it reads after the prompt: decoded alone, SentencePiece-style tokenizers would drop its
  // leading space; and without the clean-up of spaces some configs ask for, which rewrites text printed already
  const decode = (more) => tok.decode(more, { cleanUpSpaces: false });
  const promptText = decode(ids);
  const completion = () => decode([...ids, ...out]).slice(promptText.length);
  for await (const id of generate(model, ids, { maxTokens: 40, stopTokens })) {
    out.push(id);
    // a character whose bytes are split over tokens decodes to U+FFFD until its last byte: hold those back
    const stable = completion().replace(/\uFFFD+$/u, '');
    if (stable.length > printed.length) {
      process.stdout.write(stable.slice(printed.length));
      printed = stable;
    }
  }
  // the end: what is still held back is what the model produced
  process.stdout.write(`${completion().slice(printed.length)}\n`);
} finally {
  decodePool.dispose();
}
