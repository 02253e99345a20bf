// Whole-model compression at the size of real models: writes a random-weight model with the architecture of
// SmolLM2-135M (`--arch smollm2`: 30 blocks, hidden 576, MLP 1536, 9 heads / 3 KV heads, vocabulary 49152, tied
// embeddings) or TinyLlama-1.1B (`--arch tinyllama`: 22 blocks, hidden 2048, MLP 5632, 32 heads / 4 KV heads,
// vocabulary 32000, untied) or Qwen3-0.6B (`--arch qwen3-0.6b`: 28 blocks, hidden 1024, MLP 3072, 16 heads / 8 KV
// heads of head_dim 128, per-head query and key norms, vocabulary 151936, tied) or SmolLM3-3B (`--arch smollm3-3b`: 36
// blocks, hidden 2048, MLP 11008, 16 heads / 4 KV heads, every fourth block without RoPE, vocabulary 128256, tied) or
// Llama-3.1-8B (`--arch llama3.1-8b`: 32 blocks, hidden 4096, MLP 14336, 32 heads / 8 KV heads, vocabulary 128256,
// untied, Llama 3's rope_scaling), from their config.json files, in bf16, then runs `caldera compress` (the built CLI) on
// it with the default method and budget and records wall time, peak resident memory (/usr/bin/time -v), every
// layer's rank and seconds, each block's calibration passes (captureSeconds, propagateSeconds) and the checkpoint's
// size in docs/data/compress-time-<arch>.jsonl. The speed of CALDERA does not depend on the weights' values, so this
// is what compressing the real model costs on the same machine; the perplexities mean nothing (random weights), and
// the reference model's tokenizer (2048 tokens) stands in for the model's own, so only the first 2048 embedding rows
// are used.
//   node docs/scripts/measure-compress-time.mjs --arch smollm2|tinyllama|qwen3-0.6b|smollm3-3b|llama3.1-8b
//     [--out-root DIR] [--stdout]
//     [--blocks N]
//     [-- compress flags…]
// --out-root: where the model and the checkpoint go (default /tmp/caldera-compress-time). --blocks N: only the first
// N blocks (the recorded TinyLlama run used 3 of 22; each block costs the same). Flags after `--` go to
// `caldera compress` as they are. The meta line records the date and the code revision (`git describe --dirty`).
/* global process, console, performance, URL */
import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { f32ArrayToBf16, Rng, writeSafetensors } from '@caldera/core';

const dashes = process.argv.indexOf('--');
const args = dashes < 0 ? process.argv.slice(2) : process.argv.slice(2, dashes);
const compressFlags = dashes < 0 ? [] : process.argv.slice(dashes + 1);
const at = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
};
const arch = at('arch', 'smollm2');
const outRoot = at('out-root', '/tmp/caldera-compress-time');
const repo = fileURLToPath(new URL('../../', import.meta.url));
const refModel = join(repo, 'packages/reference-model/model');
const refData = join(repo, 'packages/reference-model/data');

// The models' config.json files (HuggingFaceTB/SmolLM2-135M, TinyLlama/TinyLlama-1.1B-Chat-v1.0), less what the
// loader does not read.
const common = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_act: 'silu',
  head_dim: 64,
  rms_norm_eps: 1e-5,
  torch_dtype: 'bfloat16',
  bos_token_id: 0,
  eos_token_id: 0,
  attention_bias: false,
};
const archs = {
  smollm2: {
    ...common,
    hidden_size: 576,
    intermediate_size: 1536,
    num_hidden_layers: 30,
    num_attention_heads: 9,
    num_key_value_heads: 3,
    vocab_size: 49152,
    max_position_embeddings: 8192,
    rope_theta: 100000,
    tie_word_embeddings: true,
  },
  tinyllama: {
    ...common,
    hidden_size: 2048,
    intermediate_size: 5632,
    num_hidden_layers: 22,
    num_attention_heads: 32,
    num_key_value_heads: 4,
    vocab_size: 32000,
    max_position_embeddings: 2048,
    rope_theta: 10000,
    tie_word_embeddings: false,
  },
  // Qwen/Qwen3-0.6B
  'qwen3-0.6b': {
    ...common,
    architectures: ['Qwen3ForCausalLM'],
    model_type: 'qwen3',
    head_dim: 128,
    rms_norm_eps: 1e-6,
    hidden_size: 1024,
    intermediate_size: 3072,
    num_hidden_layers: 28,
    num_attention_heads: 16,
    num_key_value_heads: 8,
    vocab_size: 151936,
    max_position_embeddings: 40960,
    rope_theta: 1000000,
    tie_word_embeddings: true,
  },
  // HuggingFaceTB/SmolLM3-3B (its head_dim, hidden / heads, written out; every fourth block without RoPE)
  'smollm3-3b': {
    ...common,
    architectures: ['SmolLM3ForCausalLM'],
    model_type: 'smollm3',
    head_dim: 128,
    rms_norm_eps: 1e-6,
    hidden_size: 2048,
    intermediate_size: 11008,
    num_hidden_layers: 36,
    num_attention_heads: 16,
    num_key_value_heads: 4,
    vocab_size: 128256,
    max_position_embeddings: 65536,
    rope_theta: 5000000,
    no_rope_layer_interval: 4,
    tie_word_embeddings: true,
  },
  // meta-llama/Llama-3.1-8B (untied head; Llama 3's rope_scaling)
  'llama3.1-8b': {
    ...common,
    head_dim: 128,
    hidden_size: 4096,
    intermediate_size: 14336,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    vocab_size: 128256,
    max_position_embeddings: 131072,
    rope_theta: 500000,
    rope_scaling: {
      rope_type: 'llama3',
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    },
    tie_word_embeddings: false,
  },
};
if (!archs[arch]) throw new Error(`--arch must be one of ${Object.keys(archs).join(', ')}`);
const config = { ...archs[arch] };
if (at('blocks') !== undefined) config.num_hidden_layers = Number(at('blocks'));
const numLayers = config.num_hidden_layers;

/** The random model: N(0, 0.02²) weights (Llama's initializer range), unit norms. */
async function writeModel(dir) {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2) + '\n');
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(refModel, f), join(dir, f));
  const rng = new Rng(20261203);
  const d = config.hidden_size;
  const I = config.intermediate_size;
  const hd = config.head_dim;
  const bf16 = (shape, std) => ({
    dtype: 'BF16',
    shape,
    data: () => {
      const x = rng.fillNormal(new Float32Array(shape.reduce((a, b) => a * b, 1)), 0, std);
      if (std === 0) x.fill(1);
      return new Uint8Array(f32ArrayToBf16(x).buffer);
    },
  });
  const H = config.num_attention_heads;
  const KV = config.num_key_value_heads;
  const tensors = { 'model.embed_tokens.weight': bf16([config.vocab_size, d], 0.02) };
  for (let b = 0; b < numLayers; b++) {
    const p = `model.layers.${b}`;
    tensors[`${p}.input_layernorm.weight`] = bf16([d], 0);
    tensors[`${p}.post_attention_layernorm.weight`] = bf16([d], 0);
    tensors[`${p}.self_attn.q_proj.weight`] = bf16([H * hd, d], 0.02);
    tensors[`${p}.self_attn.k_proj.weight`] = bf16([KV * hd, d], 0.02);
    tensors[`${p}.self_attn.v_proj.weight`] = bf16([KV * hd, d], 0.02);
    if (config.architectures[0] === 'Qwen3ForCausalLM') {
      tensors[`${p}.self_attn.q_norm.weight`] = bf16([hd], 0);
      tensors[`${p}.self_attn.k_norm.weight`] = bf16([hd], 0);
    }
    tensors[`${p}.self_attn.o_proj.weight`] = bf16([d, H * hd], 0.02);
    tensors[`${p}.mlp.gate_proj.weight`] = bf16([I, d], 0.02);
    tensors[`${p}.mlp.up_proj.weight`] = bf16([I, d], 0.02);
    tensors[`${p}.mlp.down_proj.weight`] = bf16([d, I], 0.02);
  }
  tensors['model.norm.weight'] = bf16([d], 0);
  if (!config.tie_word_embeddings) tensors['lm_head.weight'] = bf16([config.vocab_size, d], 0.02);
  await writeSafetensors(join(dir, 'model.safetensors'), tensors);
}

const modelDir = join(outRoot, `${arch}-shaped-random-${numLayers}`);
if (!existsSync(join(modelDir, 'model.safetensors'))) {
  console.error(`writing ${modelDir}`);
  await writeModel(modelDir);
}
const out = join(outRoot, `${arch}-shaped-random-${numLayers}-caldera`);
const cliArgs = [
  'packages/cli/dist/bin.js',
  'compress',
  modelDir,
  '--data',
  join(refData, 'train.txt'),
  '--eval',
  join(refData, 'test.txt'),
  ...compressFlags,
  '--json',
  '--out',
  out,
];
// peak memory comes from GNU time's report (Linux): BSD/macOS time has no -v, and Windows no /usr/bin/time
if (!existsSync('/usr/bin/time')) {
  console.error(
    'measure-compress-time needs GNU time at /usr/bin/time (Debian/Ubuntu: apt-get install time; Linux only)',
  );
  process.exit(2);
}
const command = `/usr/bin/time -v node ${cliArgs.join(' ')}`;
console.error(`$ ${command}`);

const t0 = performance.now();
let baselineAt = null;
let lastLayer;
// seconds since the start at which each block's phases began ({capture, compress, propagate}: the first event of each)
const phaseAt = [];
let stderr = '';
let report = null;
const child = spawn('/usr/bin/time', ['-v', process.execPath, ...cliArgs], {
  cwd: repo,
  stdio: ['ignore', 'pipe', 'pipe'],
});
let pending = '';
child.stdout.on('data', (chunk) => {
  pending += chunk;
  const lines = pending.split('\n');
  pending = lines.pop();
  for (const line of lines) {
    let e;
    try {
      e = JSON.parse(line);
    } catch {
      continue;
    }
    if (e.event === 'report') report = e;
    if (e.event === 'progress' && e.phase !== undefined && Number.isInteger(e.block)) {
      const at = (phaseAt[e.block] ??= {});
      at[e.phase] ??= (performance.now() - t0) / 1000;
    }
    if (e.event === 'baseline' && baselineAt === null) baselineAt = (performance.now() - t0) / 1000;
    if (e.event === 'progress' && e.layer !== lastLayer) {
      lastLayer = e.layer;
      console.error(
        `${((performance.now() - t0) / 1000).toFixed(0)} s: ${e.layer ?? JSON.stringify(e).slice(0, 120)}`,
      );
    }
  }
});
child.stderr.on('data', (chunk) => (stderr += chunk));
const code = await new Promise((resolve) => child.on('close', resolve));
const seconds = (performance.now() - t0) / 1000;
if (code !== 0 || !report) {
  console.error(stderr.slice(-4000));
  throw new Error(`caldera compress exited with ${code}`);
}
const maxRssKiB = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(stderr)?.[1]);
// seconds of each block's layers (compression only; calibration propagation between blocks is the rest)
const blockSeconds = Array.from({ length: numLayers }, (_, b) =>
  Number(
    report.layers
      .filter((l) => l.name.startsWith(`model.layers.${b}.`))
      .reduce((a, l) => a + l.seconds, 0)
      .toFixed(1),
  ),
);
// each block's calibration passes: its capture (the windows through the source block, the Hessians made; from the
// capture event to the first layer's) and its propagation (the windows through the compressed block, then leaving it
// and reading the next block's weights; to the next block's capture event; the last block has none)
const round1 = (x) => (x === undefined ? null : Number(x.toFixed(1)));
const captureSeconds = phaseAt.map((p) => round1(p?.compress - p?.capture));
const propagateSeconds = phaseAt.map((p, b) => round1(phaseAt[b + 1]?.capture - p?.propagate));
const checkpointBytes = statSync(join(out, 'model.safetensors')).size;
const lines = [
  {
    kind: 'meta',
    what: `caldera compress (defaults) of a random-weight model with ${arch}'s architecture: time and memory`,
    command: `node docs/scripts/measure-compress-time.mjs --arch ${arch} --out-root ${outRoot}${
      at('blocks') !== undefined ? ` --blocks ${numLayers}` : ''
    }${compressFlags.length ? ` -- ${compressFlags.join(' ')}` : ''}`,
    date: new Date().toISOString(),
    revision: execFileSync('git', ['describe', '--always', '--dirty'], {
      cwd: repo,
      encoding: 'utf8',
    }).trim(),
    node: process.version,
    cpu: `${cpus().length} × ${cpus()[0]?.model ?? 'unknown'}`,
    memoryGiB: Number((totalmem() / 2 ** 30).toFixed(1)),
  },
  {
    kind: 'run',
    command,
    blocks: numLayers,
    seconds: Number(seconds.toFixed(1)),
    maxRssMiB: Number((maxRssKiB / 1024).toFixed(0)),
    baselineDoneSeconds: baselineAt === null ? null : Number(baselineAt.toFixed(1)),
    blockSeconds,
    captureSeconds,
    propagateSeconds,
    bitsPerWeight: Number(report.bitsPerWeight.toFixed(4)),
    checkpointBytes,
    linearBytes: report.linearBytes,
    fileBytes: report.fileBytes,
    perplexity: report.perplexity,
    layers: report.layers.map((l) => ({ name: l.name, rank: l.rank, seconds: Number(l.seconds.toFixed(2)) })),
  },
];
const text = lines.map((l) => JSON.stringify(l)).join('\n') + '\n';
if (args.includes('--stdout')) process.stdout.write(text);
else {
  const file = join(repo, `docs/data/compress-time-${arch}.jsonl`);
  writeFileSync(file, text);
  console.error(`wrote ${file}`);
}
