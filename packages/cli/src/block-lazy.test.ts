import { describe, expect, it } from 'vitest';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openSafetensorsDir, type Tensor } from '@caldera/core';
import {
  accumulateHessians,
  compressLayerWithSpec,
  compressModel,
  layerSeed,
  sampleWindows,
  type HessianAccumulator,
  type LayerResult,
  type ModelRunner,
} from '@caldera/calibrate';
import { BlockLazyRunner, loadModel, ModelRunnerAdapter, perplexity } from '@caldera/runtime-node';
import { readDocuments, tokenizeDocuments } from './commands/common.js';
import { runTask } from './commands/task.js';
import { fastCompressSetup, runCli, runUntil } from './test-cli.js';
import { writeTinyModel } from './test-models.js';

const { tmp, data, heldOut, fast } = fastCompressSetup('caldera-block-lazy-');

/** The decomposition of every layer in these tests: what `compress --rank 4` with `fast`'s options gives. */
const compressLayer = (w: Tensor<'f32'>, h: Tensor<'f64'> | null, info: { name: string }) =>
  compressLayerWithSpec(w, h, info.name, {
    options: { outerIters: 1, lplrIters: 1, rank: 4, qBits: 2, lBits: 4, rBits: 4 },
    seed: layerSeed(0, info.name),
  });

/** The calibration windows of `fast` (--windows 4 --length 32 --seed 0), as compress samples them. */
async function windowsOf(dir: string): Promise<Int32Array[]> {
  const ids = await tokenizeDocuments(dir, await readDocuments(data), 0);
  return sampleWindows(ids, { count: 4, length: 32, seed: 0 });
}

/** The open runner with a count of the blocks it holds, which must never exceed one. */
async function countingRunner(dir: string) {
  const events: string[] = [];
  let held = 0;
  let most = 0;
  const runner = await BlockLazyRunner.open(dir, {
    onBlock: ({ block, event }) => {
      events.push(`${event} ${block}`);
      held += event === 'load' ? 1 : -1;
      most = Math.max(most, held);
    },
  });
  return { runner, events, most: () => most, held: () => held };
}

const strip = (rs: LayerResult[]) => rs.map(({ seconds: _s, ...r }) => r);
const walk = (n: number) => Array.from({ length: n }, (_, b) => [`load ${b}`, `release ${b}`]).flat();

describe('compress with the source held one block at a time (BlockLazyRunner)', () => {
  const models = [
    ['f16, untied', { dtype: 'f16', layers: 4, seed: 21 }],
    ['bf16, tied, Qwen2 biases', { dtype: 'bf16', layers: 3, tied: true, qwen2BiasStd: 0.2, seed: 22 }],
    ['f32', { dtype: 'f32', layers: 3, seed: 23 }],
  ] as const;

  it.each(models)(
    '%s: compressModel results, Hessians and baseline perplexity equal the whole model’s, one block held at a time',
    async (label, options) => {
      const { dir } = await writeTinyModel(join(tmp, label.replace(/\W+/g, '-')), options);
      const windows = await windowsOf(dir);
      for (const propagate of ['compressed', 'original'] as const) {
        const eager = await compressModel(new ModelRunnerAdapter((await loadModel(dir)).model), windows, {
          compressLayer,
          propagate,
        });
        const lazy = await countingRunner(dir);
        try {
          const got = await compressModel(lazy.runner, windows, { compressLayer, propagate });
          expect(strip(got)).toEqual(strip(eager));
          expect(lazy.events).toEqual(walk(options.layers));
          expect(lazy.most()).toBe(1);
          expect(lazy.held()).toBe(0);
        } finally {
          await lazy.runner.close();
        }
      }
      // the Hessian chunks of --propagate original
      const sums = async (runner: ModelRunner) => {
        const out: Float64Array[] = [];
        await accumulateHessians(runner, windows, (_b, accs: Map<string, HessianAccumulator>) => {
          for (const acc of accs.values()) out.push(acc.sum);
        });
        return out;
      };
      const lazy = await countingRunner(dir);
      try {
        expect(await sums(lazy.runner)).toEqual(
          await sums(new ModelRunnerAdapter((await loadModel(dir)).model)),
        );
        expect(lazy.events).toEqual(walk(options.layers));
        // the baseline: compress's held-out tokens in eval's windows of 256
        const tokens = (await tokenizeDocuments(dir, await readDocuments(heldOut), 0)).flat().slice(0, 700);
        expect(await lazy.runner.perplexity(tokens, { context: 256 })).toEqual(
          await perplexity((await loadModel(dir)).model, tokens, { context: 256 }),
        );
        expect(lazy.most()).toBe(1);
      } finally {
        await lazy.runner.close();
      }
    },
    120_000,
  );

  it('caldera compress writes the layers the whole-model path computes, and its baseline perplexity', async () => {
    const { dir } = await writeTinyModel(join(tmp, 'cli'), { dtype: 'f16', layers: 3, seed: 24 });
    const out = join(tmp, 'cli-out');
    const r = runCli(['compress', dir, '--out', out, ...fast, '--rank', '4', '--json']);
    expect(r.status, r.stderr).toBe(0);
    const eagerModel = (await loadModel(dir)).model;
    // the source's perplexity first: compressModel replaces the model's layers
    const tokens = (await tokenizeDocuments(dir, await readDocuments(heldOut), 0)).flat().slice(0, 128);
    const baseline = (await perplexity(eagerModel, tokens, { context: 256 })).ppl;
    const eager = await compressModel(new ModelRunnerAdapter(eagerModel), await windowsOf(dir), {
      compressLayer,
    });
    const ckpt = await openSafetensorsDir(out);
    try {
      for (const res of eager)
        for (const [name, t] of Object.entries(res.replacement.tensors)) {
          const raw = await ckpt.readRaw(name);
          expect(Buffer.from(raw), name).toEqual(
            Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength),
          );
        }
    } finally {
      await ckpt.close();
    }
    const report = JSON.parse(r.stdout.split('\n').find((l) => l.includes('"event":"report"'))!) as {
      perplexity: { original: number };
    };
    expect(report.perplexity.original).toBe(baseline);
  }, 120_000);

  it('SIGINT mid-run stops (exit 130, as export and finetune), keeps the committed blocks, and the resumed run gives the same bytes', async () => {
    const { dir } = await writeTinyModel(join(tmp, 'sigint'), { dtype: 'f16', layers: 5, seed: 25 });
    const args = [...fast, '--rank', '4', '--windows', '8', '--length', '64'];
    const whole = join(tmp, 'sigint-whole');
    expect(runCli(['compress', dir, '--out', whole, ...args]).status).toBe(0);
    const out = join(tmp, 'sigint-out');
    const code = await runUntil(
      ['compress', dir, '--out', out, ...args],
      join(`${out}.partial`, 'block-0000.json'),
      'SIGINT',
      2,
    );
    expect(code).toBe(130);
    expect(existsSync(join(out, 'model.safetensors'))).toBe(false);
    expect(existsSync(join(`${out}.partial`, 'block-0000.json'))).toBe(true);
    expect(existsSync(join(`${out}.partial`, 'block-0004.json'))).toBe(false);
    const resumed = runCli(['compress', dir, '--out', out, ...args, '--json']);
    expect(resumed.status, resumed.stderr).toBe(0);
    expect(resumed.stdout).toMatch(/"phase":"resume","block":0/);
    expect(
      readFileSync(join(out, 'model.safetensors')).equals(readFileSync(join(whole, 'model.safetensors'))),
    ).toBe(true);
  }, 120_000);

  it("a queue worker's Hessian chunk (runTask) streams the source to the bytes --plan-only wrote", async () => {
    const { dir } = await writeTinyModel(join(tmp, 'task'), { dtype: 'bf16', layers: 3, seed: 26 });
    const out = join(tmp, 'task-out');
    const r = runCli([
      'compress',
      dir,
      '--out',
      out,
      ...fast,
      '--rank',
      '4',
      '--propagate',
      'original',
      '--plan-only',
    ]);
    expect(r.status, r.stderr).toBe(0);
    const work = `${out}.work`;
    const chunks = join(work, 'hessian-chunks');
    const files = readdirSync(chunks).sort();
    const before = files.map((f) => readFileSync(join(chunks, f)));
    for (const f of files) rmSync(join(chunks, f));
    for (let c = 0; c < 4; c++)
      expect(await runTask({ kind: 'hessian', work, index: c, label: `hessian ${c}` })).toBe('computed');
    expect(readdirSync(chunks).sort()).toEqual(files);
    files.forEach((f, i) => expect(readFileSync(join(chunks, f)).equals(before[i]!), f).toBe(true));
    expect(await runTask({ kind: 'hessian', work, index: 0, label: 'hessian 0' })).toBe('cached');
    // chunk 0's file of block 0 (file names start with the chunk's key, in no particular order)
    const key0 = (
      JSON.parse(readFileSync(join(work, 'hessian-plan.json'), 'utf8')) as { chunks: { key: string }[] }
    ).chunks[0]!.key;
    const chunk0 = files.find((f) => f.startsWith(`${key0}-b0000`))!;
    // the same tensors with another config.json (RoPE base): other activations, so refused before any work
    rmSync(join(chunks, chunk0));
    const configFile = join(dir, 'config.json');
    const config = readFileSync(configFile, 'utf8');
    writeFileSync(configFile, config.replace('"rope_theta": 10000', '"rope_theta": 20000'));
    expect(readFileSync(configFile, 'utf8')).not.toBe(config);
    await expect(runTask({ kind: 'hessian', work, index: 0, label: 'hessian 0' })).rejects.toThrow(
      /^E_FORMAT: hessian 0: the model at .*task is not the one the plan was made from: its config\.json has sha256 [0-9a-f]{12}…, the plan's [0-9a-f]{12}…; give every worker the same model$/,
    );
    expect(existsSync(join(chunks, chunk0))).toBe(false);
    writeFileSync(configFile, config);
    // a worker that sees another model at the plan's path: refused, where it computed wrong Hessians without an error
    await writeTinyModel(join(tmp, 'task'), { dtype: 'bf16', layers: 3, seed: 27 });
    // (checked tensor by tensor as the job reads them: the embedding, read first, differs)
    await expect(runTask({ kind: 'hessian', work, index: 0, label: 'hessian 0' })).rejects.toThrow(
      /^E_FORMAT: hessian 0: the model at .*task is not the one the plan was made from: its tensor 'model\.embed_tokens\.weight' has sha256 [0-9a-f]{12}…, the plan's [0-9a-f]{12}…$/,
    );
    expect(existsSync(join(chunks, chunk0))).toBe(false);
    // a plan written before plans kept per-tensor hashes: the whole model is hashed first, as then
    const planFile = join(work, 'hessian-plan.json');
    const plan = JSON.parse(readFileSync(planFile, 'utf8')) as Record<string, unknown>;
    expect(Object.keys(plan.tensorSha256 as object)).toContain('model.embed_tokens.weight');
    delete plan.tensorSha256;
    writeFileSync(planFile, JSON.stringify(plan));
    await expect(runTask({ kind: 'hessian', work, index: 0, label: 'hessian 0' })).rejects.toThrow(
      /^E_FORMAT: hessian 0: the model at .*task is not the one the plan was made from \(its tensors' sha256 [0-9a-f]{12}…, the plan's [0-9a-f]{12}…\); give every worker the same model$/,
    );
    expect(existsSync(join(chunks, chunk0))).toBe(false);
  }, 120_000);
});
