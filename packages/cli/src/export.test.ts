import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import {
  f32ArrayToBf16,
  f32ArrayToF16,
  openSafetensors,
  readCheckpointMeta,
  Rng,
  writeCheckpointDir,
  type CalderaLayerMeta,
  type Tensor,
} from '@caldera/core';
import {
  calderaCheckpointMeta,
  fromCheckpointTensors,
  reconstruct,
  toCheckpointTensors,
  withTrainableFactors,
} from '@caldera/lowrank';
import { generate, loadModel, type LlamaModel } from '@caldera/runtime-node';
import { main } from './cli.js';
import { fastCompressSetup, runCli, sigintWhen } from './test-cli.js';
import { writeTinyModel } from './test-models.js';

const { tmp, fast: FAST } = fastCompressSetup('caldera-export-');
const run = (args: string[]) => runCli(args, 120_000);

/** Every tensor of a single-file model directory. */
async function tensorsOf(dir: string): Promise<Map<string, Tensor>> {
  const r = await openSafetensors(join(dir, 'model.safetensors'));
  try {
    const out = new Map<string, Tensor>();
    for (const t of r.header.tensors) out.set(t.name, await r.readTensor(t.name));
    return out;
  } finally {
    await r.close();
  }
}

/**
 * A compressed checkpoint with what a dense export has to carry over: Qwen2 q/k/v biases (beside the compressed
 * layers), compressed layers of rank 0 and, in the others, fine-tuned factors L_ft/R_ft (the first 2 components moved
 * out of the quantized L, R by lowrank's withTrainableFactors, then perturbed so that they differ from what the codes
 * held).
 */
async function fineTunedCheckpoint(): Promise<string> {
  const { dir: src } = await writeTinyModel(join(tmp, 'qwen2'), { qwen2BiasStd: 0.5, seed: 3 });
  const ckpt = join(tmp, 'qwen2-caldera');
  const r = run(['compress', src, '--out', ckpt, ...FAST, '--json']);
  expect(r.status, r.stderr).toBe(0);
  const meta = await readCheckpointMeta(ckpt);
  const stored = await tensorsOf(ckpt);
  const rng = new Rng(7);
  const tensors: Record<string, Tensor> = {};
  const layers: Record<string, CalderaLayerMeta> = {};
  for (const [name, t] of stored) if (!name.includes('.caldera.')) tensors[name] = t;
  for (const [prefix, layer] of Object.entries(meta.layers)) {
    const d = fromCheckpointTensors(prefix, (n) => stored.get(n), layer);
    // (the layers of rank 0, LDLQ only, stay as they are: they have no factors to fine-tune)
    const ft = layer.rank > 0 ? withTrainableFactors(d, 2) : d;
    if (ft.ft)
      for (const f of [ft.ft.l, ft.ft.r]) for (let i = 0; i < f.length; i++) f[i]! += 0.02 * rng.normal();
    const c = toCheckpointTensors(prefix, ft);
    Object.assign(tensors, c.tensors);
    layers[prefix] = c.meta;
  }
  const out = join(tmp, 'qwen2-ft');
  await writeCheckpointDir(out, {
    meta: calderaCheckpointMeta(layers, { method: meta.method, options: meta.options, seed: meta.seed }),
    tensors,
    copyFiles: ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']
      .filter((f) => existsSync(join(ckpt, f)))
      .map((f) => join(ckpt, f)),
  });
  // a generation config to carry over, and the compression report, which is not part of a dense model
  writeFileSync(join(out, 'generation_config.json'), JSON.stringify({ bos_token_id: 0, eos_token_id: 0 }));
  copyFileSync(join(ckpt, 'report.json'), join(out, 'report.json'));
  expect(Object.keys(meta.layers).length).toBe(14);
  expect(Object.keys(tensors).filter((n) => n.endsWith('.caldera.L_ft'))).toHaveLength(8);
  expect(Object.keys(tensors).filter((n) => n.endsWith('_proj.bias'))).toHaveLength(6);
  return out;
}

/** Greedy tokens of a model after `prompt`. */
async function greedy(model: LlamaModel, prompt: number[], n: number): Promise<number[]> {
  const out: number[] = [];
  for await (const t of generate(model, prompt, { maxTokens: n })) out.push(t);
  return out;
}

const maxAbs = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
const maxDiff = (a: Float32Array, b: Float32Array) =>
  a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

describe('caldera export', () => {
  let ckpt: string;
  beforeAll(async () => {
    ckpt = await fineTunedCheckpoint();
  }, 120_000);

  it('writes each compressed layer as reconstruct() rounded to --dtype, copies the rest, and loads as a plain model', async () => {
    const source = await tensorsOf(ckpt);
    const meta = await readCheckpointMeta(ckpt);
    for (const dtype of ['f16', 'bf16', 'f32'] as const) {
      const out = join(tmp, `dense-${dtype}`);
      const r = run(['export', ckpt, '--out', out, '--dtype', dtype, '--json']);
      expect(r.status, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout.trim())).toMatchObject({ out, dtype, layers: 14 });
      expect(readdirSync(out).sort()).toEqual([
        'config.json',
        'generation_config.json',
        'model.safetensors',
        'tokenizer.json',
        'tokenizer_config.json',
      ]);
      expect(readdirSync(tmp).filter((f) => f.includes('.tmp-'))).toEqual([]);
      const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
      const srcConfig = JSON.parse(readFileSync(join(ckpt, 'config.json'), 'utf8'));
      expect(config).toEqual({
        ...srcConfig,
        torch_dtype: { f16: 'float16', bf16: 'bfloat16', f32: 'float32' }[dtype],
      });
      const dense = await tensorsOf(out);
      // (a) the dense weights, rebuilt here from the checkpoint's tensors with lowrank directly
      for (const [prefix, layer] of Object.entries(meta.layers)) {
        const w = reconstruct(fromCheckpointTensors(prefix, (n) => source.get(n), layer)).data;
        const want = dtype === 'f16' ? f32ArrayToF16(w) : dtype === 'bf16' ? f32ArrayToBf16(w) : w;
        const got = dense.get(`${prefix}.weight`)!;
        expect(got.dtype).toBe(dtype);
        expect(got.shape).toEqual(layer.shape);
        expect(Buffer.from(got.data.buffer, got.data.byteOffset, got.data.byteLength)).toEqual(
          Buffer.from(want.buffer, want.byteOffset, want.byteLength),
        );
      }
      // every other tensor as stored (biases, norms, embeddings), and nothing of the codes
      const others = [...source.keys()].filter((n) => !n.includes('.caldera.'));
      expect([...dense.keys()].sort()).toEqual(
        [...others, ...Object.keys(meta.layers).map((p) => `${p}.weight`)].sort(),
      );
      for (const n of others) expect(dense.get(n)).toEqual(source.get(n));
      const loaded = await loadModel(out);
      expect(loaded.calderaMeta).toBeNull();
    }
  }, 120_000);

  it('the dense export computes what the compressed model computes: f32 to float rounding, f16 to the rounding of its weights', async () => {
    const compressed = (await loadModel(ckpt)).model;
    const tokens = [0, 17, 300, 5, 1999, 42, 7, 1024, 3, 88, 250, 11];
    const want = compressed.forward(tokens);
    const scale = maxAbs(want);
    const prompt = tokens.slice(0, 4);
    const wantGreedy = await greedy(compressed, prompt, 12);
    const diff: Record<string, number> = {};
    for (const dtype of ['f32', 'f16'] as const) {
      const out = join(tmp, `logits-${dtype}`);
      const r = run(['export', ckpt, '--out', out, '--dtype', dtype]);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/wrote .*: 14 compressed layers of .* as dense/);
      const { model } = await loadModel(out);
      diff[dtype] = maxDiff(model.forward(tokens), want) / scale;
      expect(await greedy(model, prompt, 12), dtype).toEqual(wantGreedy);
    }
    // f32: the same matrices, applied in another order (W·x against rotate, Q̂ and L̂R̂ products, rotate back, with the
    // same biases): only float rounding differs, ~1e-7 relative per product, a few e-6 after 2 blocks and the head
    expect(diff.f32!).toBeLessThan(1e-4);
    // f16: every exported weight differs from the compressed model's by at most 2^-11 of itself (round to nearest), so
    // each layer's output moves by at most 2^-11·Σ|w||x| — within a small factor of 2^-11 of its size for these dense
    // random layers. To first order the 14 layers of the 2 blocks add up, at most ≈ 14·2^-11 ≈ 7e-3 of the logits'
    // range when no rounding error cancels (of independent signs, most do; RMSNorm keeps each block's input at scale).
    // The embeddings, norms, biases and LM head are copied exactly. Measured: 5e-4, i.e. ≈ 2^-11.
    expect(diff.f16!).toBeLessThan(14 * 2 ** -11);
    expect(diff.f16!).toBeGreaterThan(diff.f32!); // the rounding is really there (f16 weights were loaded)
  }, 120_000);

  it('refuses a directory that is not a Caldera checkpoint, a non-empty --out, the input as --out and a bad --dtype', async () => {
    const { dir: plain } = await writeTinyModel(join(tmp, 'plain'), { seed: 9 });
    const notCkpt = run(['export', plain, '--out', join(tmp, 'never-1')]);
    expect(notCkpt.status).toBe(1);
    expect(notCkpt.stderr).toMatch(
      /caldera export: E_IO: .*plain is not a CALDERA checkpoint \(no caldera\.json\)/,
    );
    const busy = join(tmp, 'busy');
    mkdirSync(busy);
    writeFileSync(join(busy, 'notes.txt'), 'keep me');
    const full = run(['export', ckpt, '--out', busy]);
    expect(full.status).toBe(1);
    expect(full.stderr).toMatch(
      /E_VALUE: --out .*busy is a non-empty directory \(it holds notes\.txt\): its files would be lost/,
    );
    expect(readdirSync(busy)).toEqual(['notes.txt']);
    const self = run(['export', ckpt, '--out', ckpt]);
    expect(self.status).toBe(1);
    expect(self.stderr).toMatch(
      /E_VALUE: --out .* is the input .*: writing the checkpoint there would destroy it/,
    );
    const dtype = run(['export', ckpt, '--out', join(tmp, 'never-2'), '--dtype', 'f8']);
    expect(dtype.status).toBe(1);
    expect(dtype.stderr).toMatch(/E_VALUE: --dtype must be f16, bf16 or f32, got 'f8'/);
    // an empty --out is taken (and filled); what an export killed with SIGKILL left beside it (its temporary
    // directory, a model's size: left for ever before) is removed under <out>.lock, which is released at the end
    const empty = join(tmp, 'empty-out');
    mkdirSync(empty);
    mkdirSync(`${empty}.tmp-0badf00d`);
    writeFileSync(join(`${empty}.tmp-0badf00d`, 'model.safetensors.tmp-12345678'), 'partial');
    expect(run(['export', ckpt, '--out', empty]).status).toBe(0);
    expect(existsSync(join(empty, 'model.safetensors'))).toBe(true);
    expect(readdirSync(tmp).filter((f) => f.startsWith('empty-out'))).toEqual(['empty-out']);
    for (const f of ['never-1', 'never-2']) expect(existsSync(join(tmp, f))).toBe(false);
    // a config.json of fewer layers than caldera.json describes: refused as the loaders refuse it (the export wrote a
    // model whose last block its config did not have, silently lost on loading)
    const fewer = join(tmp, 'fewer-layers');
    cpSync(ckpt, fewer, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(fewer, 'config.json'), 'utf8'));
    writeFileSync(
      join(fewer, 'config.json'),
      JSON.stringify({ ...cfg, num_hidden_layers: cfg.num_hidden_layers - 1 }),
    );
    const short = run(['export', fewer, '--out', join(tmp, 'never-3')]);
    expect(short.status).toBe(1);
    expect(short.stderr).toMatch(/E_FORMAT: .*caldera\.json lists layer 'model\.layers\.1\./);
    expect(existsSync(join(tmp, 'never-3'))).toBe(false);
  }, 60_000);

  it('a checkpoint whose scale overflows f32 when applied (finite, so it loads): export refuses it in every dtype naming the layer; eval and generate fail with E_VALUE, not a NaN perplexity or text', async () => {
    const source = await tensorsOf(ckpt);
    const meta = await readCheckpointMeta(ckpt);
    const layer = 'model.layers.0.self_attn.q_proj';
    const scale = source.get(`${layer}.caldera.Q_scale`)!;
    const tensors = Object.fromEntries(source);
    tensors[`${layer}.caldera.Q_scale`] = { ...scale, data: Float32Array.of(3e38) };
    const bad = join(tmp, 'overflowing');
    await writeCheckpointDir(bad, {
      meta,
      tensors,
      copyFiles: ['config.json', 'tokenizer.json', 'tokenizer_config.json'].map((f) => join(ckpt, f)),
    });
    for (const dtype of ['f16', 'bf16', 'f32']) {
      const r = run(['export', bad, '--out', join(tmp, `never-nan-${dtype}`), '--dtype', dtype]);
      expect(r.status, dtype).toBe(1);
      expect(r.stderr).toMatch(
        new RegExp(`E_VALUE: layer '${layer}': rebuilt weight (NaN|-?Infinity) at index \\d+ is not finite`),
      );
      expect(existsSync(join(tmp, `never-nan-${dtype}`))).toBe(false);
    }
    const ev = run(['eval', bad, '--max-tokens', '64']);
    expect(ev.status).toBe(1);
    expect(ev.stderr).toMatch(/E_VALUE: perplexity: the model's logits for tokens \d+–\d+ are NaN/);
    const gen = run(['generate', bad, '--max-tokens', '4']);
    expect(gen.status).toBe(1);
    expect(gen.stderr).toMatch(/E_VALUE: generate: the model's logit \d+ is NaN after 0 generated tokens/);
  }, 60_000);

  describe('interrupted', () => {
    afterEach(() => vi.restoreAllMocks());
    it('SIGINT (Ctrl-C) during the export: exit code 130, nothing written, no temporary directory left', async () => {
      const errors: string[] = [];
      vi.spyOn(console, 'error').mockImplementation((...x: unknown[]) => void errors.push(x.join(' ')));
      const out = join(tmp, 'interrupted');
      const before = process.listenerCount('SIGINT');
      // as soon as export listens for SIGINT (after its checks, before it writes), send it one
      const stopWatching = sigintWhen(() => process.listenerCount('SIGINT') > before);
      const code = await main(['export', ckpt, '--out', out]);
      stopWatching();
      expect(code).toBe(130);
      expect(errors.join('\n')).toMatch(/caldera export: interrupted; nothing written/);
      expect(existsSync(out)).toBe(false);
      expect(readdirSync(tmp).filter((f) => f.startsWith('interrupted'))).toEqual([]);
      expect(process.listenerCount('SIGINT')).toBe(before);
    }, 60_000);

    it('SIGTERM during the export: the same, with exit code 143 (128 + 15); both handlers removed', async () => {
      const errors: string[] = [];
      vi.spyOn(console, 'error').mockImplementation((...x: unknown[]) => void errors.push(x.join(' ')));
      const out = join(tmp, 'terminated');
      const before = process.listenerCount('SIGTERM');
      const beforeInt = process.listenerCount('SIGINT');
      const timer = setInterval(() => {
        if (process.listenerCount('SIGTERM') > before) {
          clearInterval(timer);
          process.emit('SIGTERM');
        }
      }, 0);
      const code = await main(['export', ckpt, '--out', out, '--dtype', 'f32']);
      clearInterval(timer);
      expect(code).toBe(143);
      expect(errors.join('\n')).toMatch(/caldera export: interrupted; nothing written/);
      expect(existsSync(out)).toBe(false);
      expect(readdirSync(tmp).filter((f) => f.startsWith('terminated'))).toEqual([]);
      expect(process.listenerCount('SIGTERM')).toBe(before);
      expect(process.listenerCount('SIGINT')).toBe(beforeInt);
    }, 60_000);
  });
});
