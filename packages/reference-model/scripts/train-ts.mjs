/* global process, console, performance */
// Trains the reference model architecture with Caldera's own TypeScript training engine
// (@caldera/runtime-node `Trainer`: training forward/backward, AdamW, warmup + cosine, clipping, resumable state).
//
//   node scripts/train-ts.mjs [--steps 2000] [--seq 128] [--batch 8] [--lr 3e-3] [--seed 0] [--minutes M]
//                             [--out .tmp/ts-model] [--resume]
// Needs the token ids from `node scripts/prepare.mjs` (.tmp/train.u16) and built @caldera packages.
// Writes a Hugging Face directory to --out (config.json, model.safetensors f16, tokenizer.json,
// generation_config.json, training-log.jsonl); the state .tmp/train-state.bin is saved every 25 steps and on
// SIGINT, and --resume continues from it with the same losses as an uninterrupted run.
import { copyFileSync, existsSync, mkdirSync, readFileSync, appendFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Rng, f32ArrayToF16, writeSafetensors } from '@caldera/core';
import { Trainer, initTrainParams, trainParamShapes } from '@caldera/runtime-node';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const argv = process.argv.slice(2);
const opt = (name, def) => (argv.includes(`--${name}`) ? argv[argv.indexOf(`--${name}`) + 1] : def);
const steps = Number(opt('steps', 2000));
const minutes = Number(opt('minutes', Infinity));
const out = opt('out', join(root, '.tmp', 'ts-model'));
const statePath = join(root, '.tmp', 'train-state.bin');
const cfg = {
  hiddenSize: 256,
  intermediateSize: 768,
  numLayers: 4,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 64,
  vocabSize: 2048,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
};
const u16 = readFileSync(join(root, '.tmp', 'train.u16'));
const data = new Uint16Array(u16.buffer, u16.byteOffset, u16.byteLength / 2);
const options = {
  seqLen: Number(opt('seq', 128)),
  batch: Number(opt('batch', 8)),
  lr: Number(opt('lr', 3e-3)),
  warmup: 50,
  totalSteps: steps,
  seed: Number(opt('seed', 0)),
};
mkdirSync(out, { recursive: true });
const logPath = join(out, 'training-log.jsonl');
const trainer =
  argv.includes('--resume') && existsSync(statePath)
    ? await Trainer.load(statePath, cfg, data)
    : new Trainer(cfg, initTrainParams(cfg, new Rng(options.seed)), data, options);
if (trainer.stepCount === 0) writeFileSync(logPath, '');
let stop = false;
process.on('SIGINT', () => (stop = true));
const t0 = performance.now();
while (trainer.stepCount < steps && !stop && (performance.now() - t0) / 60000 < minutes) {
  const r = trainer.step();
  const s = (performance.now() - t0) / 1000;
  appendFileSync(logPath, JSON.stringify({ ...r, seconds: Math.round(s * 10) / 10 }) + '\n');
  process.stderr.write(`\rstep ${r.step}/${steps} loss ${r.loss.toFixed(3)} lr ${r.lr.toExponential(2)}`);
  if (r.step % 25 === 0) await trainer.save(statePath);
}
await trainer.save(statePath);
process.stderr.write('\n');
const tensors = {};
for (const [name, p] of Object.entries(trainer.params)) {
  const shape = trainParamShapes(cfg)[name];
  tensors[name] = { dtype: 'F16', shape, data: new Uint8Array(f32ArrayToF16(p).buffer) };
}
await writeSafetensors(join(out, 'model.safetensors'), tensors, { metadata: { format: 'pt' } });
const hf = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_act: 'silu',
  tie_word_embeddings: true,
  max_position_embeddings: 512,
  torch_dtype: 'float16',
  bos_token_id: 0,
  eos_token_id: 0,
  attention_bias: false,
  head_dim: cfg.headDim,
  hidden_size: cfg.hiddenSize,
  intermediate_size: cfg.intermediateSize,
  num_hidden_layers: cfg.numLayers,
  num_attention_heads: cfg.numHeads,
  num_key_value_heads: cfg.numKvHeads,
  vocab_size: cfg.vocabSize,
  rms_norm_eps: cfg.rmsNormEps,
  rope_theta: cfg.ropeTheta,
};
writeFileSync(join(out, 'config.json'), JSON.stringify(hf, null, 2) + '\n');
copyFileSync(join(root, 'model', 'generation_config.json'), join(out, 'generation_config.json'));
copyFileSync(join(root, 'model', 'tokenizer.json'), join(out, 'tokenizer.json'));
console.log(`wrote ${out} after ${trainer.stepCount} steps`);
