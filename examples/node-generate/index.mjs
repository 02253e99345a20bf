// Stream a greedy continuation from a model directory (default: the embedded reference model), using the runtime API
// directly: loadModel → tokenizer → generate (an async iterator of token ids). Each token's products run on two
// threads (a decode pool: the rows of the larger layers split over them; the tokens are the same as on one).
import { referenceModelDir } from '@caldera/reference-model';
import { createDecodePool, generate, loadModel, loadTokenizer } from '@caldera/runtime-node';

const dir = process.argv[2] ?? referenceModelDir();
const prompt = process.argv[3] ?? 'The jury said';
const decodePool = await createDecodePool({ threads: 2 });
const { model, config } = await loadModel(dir, { decodePool });
const tok = await loadTokenizer(dir);
const ids = [config.bosTokenId ?? 0, ...tok.encode(prompt)];
process.stdout.write(prompt);
const out = [];
let shown = '';
for await (const id of generate(model, ids, { maxTokens: 40 })) {
  out.push(id);
  const text = tok.decode(out);
  process.stdout.write(text.slice(shown.length));
  shown = text;
}
process.stdout.write('\n');
decodePool.dispose();
