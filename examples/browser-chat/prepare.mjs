// Put a compressed checkpoint at dist/model/: copy the directory given as argument (e.g. the output of
// `caldera compress`), or, without one, compress the embedded reference model here with @caldera/lowrank
// (data-free: identity Hessian, rank 32, Q 2-bit E8P12, L/R 4-bit; about 20 s). Skipped when dist/model exists.
import { existsSync } from 'node:fs';
import { cp, copyFile, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { cast, openSafetensorsDir, writeSafetensors } from '@caldera/core';
import { caldera, calderaCheckpointMeta, toCheckpointTensors } from '@caldera/lowrank';
import { referenceModelDir } from '@caldera/reference-model';

const out = new URL('./dist/model/', import.meta.url).pathname;
const from = process.argv[2];
if (existsSync(join(out, 'config.json')) && !from) {
  console.log(`dist/model already present (delete it to rebuild)`);
  process.exit(0);
}
await mkdir(out, { recursive: true });
if (from) {
  await cp(from, out, { recursive: true });
  console.log(`copied ${from} to dist/model`);
  process.exit(0);
}
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
await writeSafetensors(join(out, 'model.safetensors'), tensors);
const meta = calderaCheckpointMeta(layers, {
  options: { hessian: 'identity', rank: 32, outerIters: 2, lplrIters: 2 },
});
await writeFile(join(out, 'caldera.json'), JSON.stringify(meta));
for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json'])
  if (existsSync(join(src, f))) await copyFile(join(src, f), join(out, f));
console.log(
  `\nwrote dist/model (${meta.bitsPerWeight.toFixed(2)} bits per weight in the linear layers, paper accounting)`,
);
