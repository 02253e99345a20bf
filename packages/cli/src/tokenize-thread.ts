// Entry of the threads that tokenize a share of a large text beside the main thread (see tokenizeDocuments in
// commands/common.ts): loads the model's tokenizer, encodes the documents it was given, posts their ids back.
import { parentPort, workerData } from 'node:worker_threads';
import { loadTokenizer } from '@caldera/runtime-node';

const { modelDir, docs } = workerData as { modelDir: string; docs: string[] };
// no top-level await: this entry is built as CommonJS too
void loadTokenizer(modelDir).then((tok) => {
  const ids = docs.map((d) => Int32Array.from(tok.encode(d)));
  parentPort!.postMessage(
    ids,
    ids.map((a) => a.buffer),
  );
});
