import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { openSafetensors, writeSafetensors, type Tensor } from '@caldera/core';
import { loadModel } from '@caldera/runtime-node';
import { fastCompressSetup, runCli } from './test-cli.js';
import { writeTinyModel } from './test-models.js';

const { tmp, fast: FAST, data, heldOut } = fastCompressSetup('caldera-sources-');
const run = runCli;

/** Linear weights (q/k/v/o, gate/up/down) of a tiny model's tensors: their number of values. */
const linearParams = (raw: Record<string, Tensor>) =>
  Object.entries(raw)
    .filter(([n]) => /_proj\.weight$/.test(n))
    .reduce((s, [, t]) => s + t.data.length, 0);

describe('caldera compress: source models', () => {
  it('compresses a sharded bf16 model (index + 2 shards): report of the shard bytes, source dtype in the table', async () => {
    const { dir: src, raw } = await writeTinyModel(join(tmp, 'sharded'), { shards: 2, dtype: 'bf16' });
    const out = join(tmp, 'sharded-out');
    const r = run(['compress', src, '--out', out, ...FAST]);
    expect(r.status, r.stderr).toBe(0);
    expect(existsSync(`${out}.partial`)).toBe(false);
    const report = JSON.parse(readFileSync(join(out, 'report.json'), 'utf8'));
    const shards = readdirSync(src).filter((f) => /^model-\d{5}-of-00002\.safetensors$/.test(f));
    expect(shards).toHaveLength(2);
    expect(report.fileBytes.original).toBe(shards.reduce((s, f) => s + statSync(join(src, f)).size, 0));
    // bf16 on disk: 2 bytes per linear weight (not the 4 of the f32 copy the runtime holds)
    expect(report.sourceDtype).toBe('bf16');
    expect(report.linearBytes.original).toBe(2 * linearParams(raw));
    expect(r.stdout).toMatch(/'original \(bf16\)'\s*│\s*16\s*│/);
    const { model } = await loadModel(out);
    expect(model.forward([1, 2, 3]).every(Number.isFinite)).toBe(true);
  }, 60_000);

  it('keeps bf16 tensors as stored, and an f32 one beyond f16 in f32 (a norm weight of 1e5 became Infinity)', async () => {
    // in the final norm: the blocks' calibration does not see it
    const outlier = (raw: Record<string, Tensor<'f32'>>) => {
      raw['model.norm.weight']!.data[5] = 1e5;
    };
    const dtypesOf = async (dir: string) => {
      const r = await openSafetensors(join(dir, 'model.safetensors'));
      try {
        return Object.fromEntries(r.header.tensors.map((t) => [t.name, t.dtype]));
      } finally {
        await r.close();
      }
    };
    for (const dtype of ['bf16', 'f32'] as const) {
      const { dir: src } = await writeTinyModel(join(tmp, `outlier-${dtype}`), {
        dtype,
        patch: outlier,
        seed: 8,
      });
      const out = join(tmp, `outlier-${dtype}-out`);
      const r = run(['compress', src, '--out', out, ...FAST]);
      expect(r.status, r.stderr).toBe(0); // it failed in the final load: "non-finite value (Infinity)"
      const dtypes = await dtypesOf(out);
      expect(dtypes['model.norm.weight']).toBe(dtype === 'bf16' ? 'BF16' : 'F32');
      // the other carried tensors: bf16 as stored, f32 ones that fit in f16
      expect(dtypes['model.layers.0.input_layernorm.weight']).toBe(dtype === 'bf16' ? 'BF16' : 'F16');
      expect(dtypes['model.embed_tokens.weight']).toBe(dtype === 'bf16' ? 'BF16' : 'F16');
      const { model } = await loadModel(out);
      expect(model.forward([1, 2, 3]).every(Number.isFinite)).toBe(true);
    }
  }, 120_000);

  it('merge refuses a source model that changed after the shards ran (its carried tensors made a checkpoint of two models)', async () => {
    const { dir: src } = await writeTinyModel(join(tmp, 'swap'), { seed: 9 });
    const out = join(tmp, 'swap-out');
    const r = run(['compress', src, '--out', out, ...FAST, '--propagate', 'original', '--shard', '0/1']);
    expect(r.status, r.stderr).toBe(0);
    const weights = readFileSync(join(src, 'model.safetensors'));
    const config = readFileSync(join(src, 'config.json'), 'utf8');
    await writeTinyModel(src, { seed: 10 }); // another model at the same path (the same config)
    const m = run(['merge', out]);
    expect(m.status).toBe(1);
    expect(m.stderr).toMatch(
      /E_FORMAT: the model at .*swap is not the one this run compressed: its tensors \(first: lm_head\.weight\) changed since/,
    );
    expect(existsSync(out)).toBe(false);
    writeFileSync(join(src, 'model.safetensors'), weights);
    writeFileSync(
      join(src, 'config.json'),
      config.replace('"rms_norm_eps": 0.000001', '"rms_norm_eps": 0.00001'),
    );
    expect(run(['merge', out]).stderr).toMatch(
      /is not the one this run compressed: its config\.json changed since/,
    );
    writeFileSync(join(src, 'config.json'), config);
    // another model given as [model]: that one is named as not the run's, the recorded one as the run's
    const { dir: other } = await writeTinyModel(join(tmp, 'swap-other'), { seed: 10 });
    expect(run(['merge', out, other]).stderr).toMatch(
      /E_FORMAT: the model at .*swap-other is not the one this run compressed \(.*swap, as the run recorded it\): its tensors \(first: lm_head\.weight\) differ; give that model's path on this machine/,
    );
    const ok = run(['merge', out]);
    expect(ok.status, ok.stderr).toBe(0);
    const { model } = await loadModel(out);
    expect(model.forward([1, 2, 3]).every(Number.isFinite)).toBe(true);
  }, 120_000);

  it('on a model with fewer than 128 positions the default --length is its max positions; a larger --length is refused', async () => {
    const { dir: src } = await writeTinyModel(join(tmp, 'short'), { maxPositions: 48, seed: 5 });
    const out = join(tmp, 'short-out');
    // FAST without its --length: the default (128) applies
    const opts = ['--windows', '4', '--outer-iters', '1', '--lplr-iters', '1', '--eval-tokens', '128'];
    const more = [...opts, '--data', data, '--eval', heldOut, '--json'];
    const r = run(['compress', src, '--out', out, ...more]);
    expect(r.status, r.stderr).toBe(0);
    const report = JSON.parse(readFileSync(join(out, 'report.json'), 'utf8'));
    expect(report.calibration).toEqual({ windows: 4, length: 48 });
    expect(report.perplexity.context).toBe(48); // eval's 256, clamped to the max positions
    expect(JSON.parse(readFileSync(join(out, 'caldera.json'), 'utf8')).options.length).toBe(48);
    // an explicit --length past the max positions is a mistake, refused before any work
    const big = join(tmp, 'short-big');
    const refused = run(['compress', src, '--out', big, ...more, '--length', '64']);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(
      /E_VALUE: --length must be an integer in \[2, 48\] \(the model's max positions\), got 64/,
    );
    expect(existsSync(big)).toBe(false);
    expect(existsSync(`${big}.partial`)).toBe(false);
    // eval's default window is clamped the same way (the shared rule)
    const ev = run(['eval', src, '--text', heldOut, '--max-tokens', '100', '--json']);
    expect(ev.status, ev.stderr).toBe(0);
    expect(JSON.parse(ev.stdout).context).toBe(48);
  }, 60_000);

  it('labels an f32 source as 32 bits per weight in the summary table', async () => {
    const { dir: src, raw } = await writeTinyModel(join(tmp, 'f32'), { seed: 2 });
    const out = join(tmp, 'f32-out');
    const r = run(['compress', src, '--out', out, ...FAST]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/'original \(f32\)'\s*│\s*32\s*│/);
    const report = JSON.parse(readFileSync(join(out, 'report.json'), 'utf8'));
    expect(report.linearBytes.original).toBe(4 * linearParams(raw));
  }, 60_000);

  it('a side file that is a FIFO is refused before any work (the copy at the end waited for a writer for ever)', async () => {
    const { dir: src } = await writeTinyModel(join(tmp, 'fifo'));
    execFileSync('mkfifo', [join(src, 'special_tokens_map.json')]);
    const out = join(tmp, 'fifo-out');
    const t0 = Date.now();
    const r = run(['compress', src, '--out', out, ...FAST]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain(
      `E_IO: ${join(src, 'special_tokens_map.json')} is a FIFO (named pipe), not a file to copy`,
    );
    expect(Date.now() - t0).toBeLessThan(20_000);
    expect(existsSync(out)).toBe(false);
  }, 60_000);

  it('carries Qwen2 q/k/v biases into the checkpoint: it loads and its logits stay close to the source', async () => {
    const { dir: src } = await writeTinyModel(join(tmp, 'qwen2'), { qwen2BiasStd: 1 });
    const out = join(tmp, 'qwen2-out');
    // low-rank only with 16-bit factors at full rank (64 = min(m, n) of every layer): Ŵ is W up to f16 rounding
    // and the LPLR fit, so the logits must follow the source's closely, biases included
    // (lplr has no outer iterations: FAST's --outer-iters would be refused)
    const lplr = FAST.filter((f, i) => f !== '--outer-iters' && FAST[i - 1] !== '--outer-iters');
    const r = run(['compress', src, '--out', out, ...lplr, '--method', 'lplr', '--rank', '64', '--json']);
    expect(r.status, r.stderr).toBe(0);
    const a = await openSafetensors(join(src, 'model.safetensors'));
    const b = await openSafetensors(join(out, 'model.safetensors'));
    // low rank only: no Q tensors (an all-zero 2-bit Q plane was stored before), codec 'none'
    expect(b.header.tensors.filter((t) => /\.caldera\.Q/.test(t.name)).map((t) => t.name)).toEqual([]);
    const ck = JSON.parse(readFileSync(join(out, 'caldera.json'), 'utf8'));
    expect(new Set(Object.values(ck.layers).map((l) => (l as { codecs: { Q: string } }).codecs.Q))).toEqual(
      new Set(['none']),
    );
    const biases = a.header.tensors.filter((t) => t.name.endsWith('.bias'));
    expect(biases).toHaveLength(6); // q, k, v of 2 layers
    for (const t of biases)
      expect(Buffer.from(await b.readRaw(t.name))).toEqual(Buffer.from(await a.readRaw(t.name)));
    // the same source with the biases zeroed: what a checkpoint without them would compute
    const noBias = join(tmp, 'qwen2-zero-bias');
    mkdirSync(noBias);
    const zeroed: Record<string, Tensor> = {};
    for (const t of a.header.tensors) {
      const v = await a.readTensor(t.name);
      if (t.name.endsWith('.bias')) v.data.fill(0);
      zeroed[t.name] = v;
    }
    await writeSafetensors(join(noBias, 'model.safetensors'), zeroed);
    for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json'])
      copyFileSync(join(src, f), join(noBias, f));
    await a.close();
    await b.close();
    const tokens = Array.from({ length: 24 }, (_, i) => (i * 37 + 5) % 2048);
    const logits = async (dir: string) => Float32Array.from((await loadModel(dir)).model.forward(tokens));
    const [ref, got, bad] = await Promise.all([src, out, noBias].map(logits));
    const relErr = (x: Float32Array) => {
      let num = 0;
      let den = 0;
      for (let i = 0; i < x.length; i++) {
        num += (x[i]! - ref![i]!) ** 2;
        den += ref![i]! ** 2;
      }
      return Math.sqrt(num / den);
    };
    // measured: ≈ 0.001 for the checkpoint (f16 rounding of the factors, embeddings and norms), ≈ 1 without the
    // biases; 0.02 leaves 20× room for that rounding and is 50× below what dropping the biases does
    expect(relErr(bad!)).toBeGreaterThan(0.5);
    expect(relErr(got!)).toBeLessThan(0.02);
  }, 60_000);
});
