// Put a compressed checkpoint at dist/model/: copy the directory given as argument (e.g. the output of
// `caldera compress`), or, without one, compress the embedded reference model here with @caldera/lowrank
// (data-free: identity Hessian, rank 32, Q 2-bit E8P12, L/R 4-bit; about 20 s). Skipped when dist/model exists. A
// directory given is checked to be a model first.
import { existsSync, statSync } from 'node:fs';
import { cp, copyFile, mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { writeServiceWorker } from './offline.mjs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cast, openSafetensorsDir, writeSafetensors } from '@caldera/core';
import { caldera, calderaCheckpointMeta, toCheckpointTensors } from '@caldera/lowrank';
import { referenceModelDir } from '@caldera/reference-model';

const out = fileURLToPath(new URL('./dist/model', import.meta.url));
const from = process.argv[2];
const fail = (message) => {
  console.error(`prepare-model: ${message}`);
  process.exit(1);
};
for (const e of await readdir(dirname(out)).catch(() => []))
  if (e.startsWith('.model-tmp-')) await rm(join(dirname(out), e), { recursive: true, force: true });
if (from !== undefined) {
  // the page needs config.json, the weights (model.safetensors, or the shards of model.safetensors.index.json) and
  // tokenizer.json; caldera.json is optional (a dense model)
  if (from === '') fail('the model directory given is an empty string');
  const st = statSync(from, { throwIfNoEntry: false });
  if (!st) fail(`${resolve(from)} does not exist`);
  if (!st.isDirectory()) fail(`${resolve(from)} is not a directory (give a model directory)`);
  const has = (f) => existsSync(join(from, f));
  const missing = [
    ...(has('config.json') ? [] : ['config.json']),
    ...(has('model.safetensors') || has('model.safetensors.index.json') ? [] : ['model.safetensors']),
    ...(has('tokenizer.json') ? [] : ['tokenizer.json']),
  ];
  if (missing.length > 0)
    fail(
      `${resolve(from)} is not a model directory: it has no ${missing.join(', ')} (a caldera compress output has them)`,
    );
} else if (existsSync(join(out, 'config.json'))) {
  console.log(`dist/model already present (delete it to rebuild)`);
  process.exit(0);
}
// The model is written to a temporary sibling and renamed to dist/model when complete: an interrupted run leaves no
// half-written dist/model (which later runs would take as present); their leftovers are removed above.
await mkdir(dirname(out), { recursive: true });
const tmp = join(dirname(out), `.model-tmp-${process.pid}`);
/**
 * Replace dist/model by the complete `tmp`; in a built site (dist/sw.js exists) also the service worker, whose new
 * version makes returning visitors fetch the new model (they kept the old one from its cache).
 */
const commit = async () => {
  await rm(out, { recursive: true, force: true });
  await rename(tmp, out);
  if (existsSync(join(dirname(out), 'sw.js'))) await writeServiceWorker(dirname(out));
};
if (from !== undefined) {
  try {
    await cp(from, tmp, { recursive: true, dereference: true }); // (a Hugging Face cache links its files)
    await commit();
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    fail(`cannot copy ${resolve(from)} to dist/model: ${e.message}`);
  }
  console.log(`copied ${from} to dist/model`);
  process.exit(0);
}
await mkdir(tmp);
const src = referenceModelDir();
const store = await openSafetensorsDir(src);
const tensors = {};
for (const n of store.names()) tensors[n] = await store.readTensor(n);
await store.close();
const layers = {};
for (const name of Object.keys(tensors)) {
  if (!/(self_attn|mlp)\.\w+_proj\.weight$/.test(name)) continue;
  const prefix = name.slice(0, -'.weight'.length);
  const d = caldera(cast(tensors[name], 'f32'), null, { rank: 32, outerIters: 2, lplrIters: 2 });
  const ck = toCheckpointTensors(prefix, d);
  delete tensors[name];
  Object.assign(tensors, ck.tensors);
  layers[prefix] = ck.meta;
  process.stdout.write(`\r${prefix}: error ${d.error.toFixed(3)}          `);
}
await writeSafetensors(join(tmp, 'model.safetensors'), tensors);
const meta = calderaCheckpointMeta(layers, {
  options: { hessian: 'identity', rank: 32, outerIters: 2, lplrIters: 2 },
});
await writeFile(join(tmp, 'caldera.json'), JSON.stringify(meta));
for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json'])
  if (existsSync(join(src, f))) await copyFile(join(src, f), join(tmp, f));
await commit();
console.log(
  `\nwrote dist/model (${meta.bitsPerWeight.toFixed(2)} bits per weight in the linear layers, paper accounting)`,
);
