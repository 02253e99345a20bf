// Stream a greedy continuation from a model directory (default: the embedded reference model), using the runtime API
// directly: loadModel → tokenizer → generate (an async iterator of token ids).
import { referenceModelDir } from '@caldera/reference-model';
import { generate, loadModel, loadTokenizer } from '@caldera/runtime-node';

const dir = process.argv[2] ?? referenceModelDir();
const prompt = process.argv[3] ?? 'The jury said';
const { model, config } = await loadModel(dir);
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
