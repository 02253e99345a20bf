import { describe, expect, it } from 'vitest';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { cast, openSafetensors } from '@caldera/core';
import { loadModel } from '@caldera/runtime-node';
import { fastCompressSetup, runCli } from './test-cli.js';
import { writeTinyModel } from './test-models.js';

const { tmp, fast: FAST } = fastCompressSetup('caldera-qwen3-');
const run = (args: string[]) => runCli(args, 300_000);

const tokens = Array.from({ length: 24 }, (_, i) => (i * 37 + 5) % 2048);
const logitsOf = async (dir: string) => Float32Array.from((await loadModel(dir)).model.forward(tokens));
/** ‖x − ref‖ / ‖ref‖. */
const relErr = (x: Float32Array, ref: Float32Array) => {
  let num = 0;
  let den = 0;
  for (let i = 0; i < x.length; i++) {
    num += (x[i]! - ref[i]!) ** 2;
    den += ref[i]! ** 2;
  }
  return Math.sqrt(num / den);
};

describe('Qwen3 through the CLI (per-head query and key norms)', () => {
  it('compress carries q_norm/k_norm (in f16, as other norms); the checkpoint follows the source; generate, finetune and export run', async () => {
    const { dir: src } = await writeTinyModel(join(tmp, 'qwen3'), { qwen3: true, tied: true, seed: 5 });
    // low rank only, 16-bit factors at full rank (64 = min(m, n) of every layer): Ŵ is W up to f16 rounding and the
    // LPLR fit, so the logits must follow the source's (as compress-sources' Qwen2 test)
    const lplrOut = join(tmp, 'qwen3-lplr');
    const lplr = FAST.filter((f, i) => f !== '--outer-iters' && FAST[i - 1] !== '--outer-iters');
    const l = run(['compress', src, '--out', lplrOut, ...lplr, '--method', 'lplr', '--rank', '64', '--json']);
    expect(l.status, l.stderr).toBe(0);
    const a = await openSafetensors(join(src, 'model.safetensors'));
    const b = await openSafetensors(join(lplrOut, 'model.safetensors'));
    const norms = a.header.tensors.filter((t) => /self_attn\.[qk]_norm\.weight$/.test(t.name));
    expect(norms).toHaveLength(4); // q and k of 2 layers
    // as every other f32 tensor compress carries (embeddings, norms): in f16, where the values fit it
    for (const t of norms) {
      const half = cast(await a.readTensor(t.name), 'f16').data;
      expect(Buffer.from(await b.readRaw(t.name))).toEqual(
        Buffer.from(half.buffer, half.byteOffset, half.byteLength),
      );
    }
    await a.close();
    await b.close();
    const ref = await logitsOf(src);
    // measured ≈ 1e-3 (f16 rounding of factors, as the Qwen2 test); 0.02 leaves room and is far below a model
    // that drops the norms (the runtime-node tests check that the norms move the logits)
    expect(relErr(await logitsOf(lplrOut), ref)).toBeLessThan(0.02);

    // the default method (2-bit Q + 4-bit factors), then the rest of the tool chain on it
    const ckpt = join(tmp, 'qwen3-caldera');
    const c = run(['compress', src, '--out', ckpt, ...FAST, '--rank', '8', '--json']);
    expect(c.status, c.stderr).toBe(0);
    const g = run(['generate', ckpt, '--prompt', 'Hi', '--max-tokens', '4', '--json']);
    expect(g.status, g.stderr).toBe(0);
    const ft = join(tmp, 'qwen3-ft');
    const f = run([
      'finetune',
      ckpt,
      '--out',
      ft,
      '--ft-rank',
      '2',
      '--steps',
      '4',
      '--batch',
      '1',
      '--seq-len',
      '32',
      '--eval-every',
      '2',
      '--valid-tokens',
      '128',
      '--eval-tokens',
      '256',
      '--data',
      FAST[FAST.indexOf('--data') + 1]!,
      '--json',
    ]);
    expect(f.status, f.stderr).toBe(0);
    const dense = join(tmp, 'qwen3-dense');
    const e = run(['export', ft, '--out', dense, '--dtype', 'f32', '--json']);
    expect(e.status, e.stderr).toBe(0);
    expect(existsSync(join(dense, 'caldera.json'))).toBe(false);
    // the dense export computes what the fine-tuned checkpoint computes: f32 weights of reconstruct(), the norms copied
    // (measured: agreement to f32 rounding of the two products' summation orders, ~1e-6)
    expect(relErr(await logitsOf(dense), await logitsOf(ft))).toBeLessThan(1e-4);
  }, 600_000);
});

describe('RoPE variants through the CLI: SmolLM3 (blocks without RoPE) and Qwen3 with YaRN', () => {
  const cases = [
    {
      name: 'smollm3',
      options: {
        tied: true,
        seed: 6,
        config: { architectures: ['SmolLM3ForCausalLM'], model_type: 'smollm3', no_rope_layer_interval: 2 },
      },
      kept: { no_rope_layer_interval: 2 },
    },
    {
      name: 'qwen3-yarn',
      options: {
        qwen3: true,
        tied: true,
        seed: 7,
        config: { rope_scaling: { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 16 } },
      },
      kept: { rope_scaling: { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 16 } },
    },
  ];
  for (const { name, options, kept } of cases)
    it(`${name}: compress follows the source (full-rank 16-bit LPLR), generate runs, the checkpoint and the export keep the config`, async () => {
      const { dir: src } = await writeTinyModel(join(tmp, name), options);
      const out = join(tmp, `${name}-lplr`);
      const lplr = FAST.filter((f, i) => f !== '--outer-iters' && FAST[i - 1] !== '--outer-iters');
      const l = run(['compress', src, '--out', out, ...lplr, '--method', 'lplr', '--rank', '64', '--json']);
      expect(l.status, l.stderr).toBe(0);
      // as the Qwen3 test above: ≈ 1e-3 from f16 factors; 0.02 is far below what rotating a NoPE block or dropping
      // YaRN moves the logits (the runtime-node tests)
      expect(relErr(await logitsOf(out), await logitsOf(src))).toBeLessThan(0.02);
      const g = run(['generate', out, '--prompt', 'Hi', '--max-tokens', '4', '--json']);
      expect(g.status, g.stderr).toBe(0);
      const dense = join(tmp, `${name}-dense`);
      const e = run(['export', out, '--out', dense, '--dtype', 'f32', '--json']);
      expect(e.status, e.stderr).toBe(0);
      for (const dir of [out, dense])
        expect(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))).toMatchObject(kept);
      expect(relErr(await logitsOf(dense), await logitsOf(out))).toBeLessThan(1e-4);
    }, 600_000);
});
