import { describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { cp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isCalderaError, writeSafetensors, type Tensor } from '@caldera/core';
import { compressModel } from './driver.js';
import { finalizeHessian, HessianAccumulator } from './hessian.js';
import {
  accumulateHessians,
  compressLayerWithSpec,
  executeMatrixJob,
  hashModelTensors,
  hessianKey,
  largestFirst,
  layerSeed,
  makeHessianPlan,
  makeManifest,
  missingJobs,
  readJobResult,
  reduceHessianChunks,
  runHessianChunk,
  sha256Hex,
  shardJobs,
  type HessianPlan,
  type LayerSpec,
} from './jobs.js';
import { ToyRunner } from './testing/toy-runner.js';

const windows = [
  [1, 2, 3, 4, 5],
  [9, 8, 7, 6, 5, 4],
  [3, 1, 4, 1, 5, 9, 2],
  [2, 7, 1, 8],
  [6, 6, 6, 1, 2],
  [5, 3, 5, 8, 9, 7],
  [11, 13, 17],
].map((w) => Int32Array.from(w));

/** A model directory holding the toy runner's weights under `<name>.weight`. */
async function toyModelDir(runner: ToyRunner): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'caldera-jobs-model-'));
  const tensors: Record<string, Tensor> = {};
  for (const [name, w] of runner.weights) tensors[`${name}.weight`] = w;
  await writeSafetensors(join(dir, 'model.safetensors'), tensors);
  return dir;
}

/** The single-pass Hessians: every window's rows added in order into one accumulator per (block, input). */
async function singlePass(runner: ToyRunner): Promise<Map<string, Float64Array>> {
  const out = new Map<string, Float64Array>();
  await accumulateHessians(runner, windows, (b, accs) => {
    for (const [k, acc] of accs) out.set(hessianKey(b, k), finalizeHessian(acc).data);
  });
  return out;
}

async function reduced(plan: HessianPlan, runner: ToyRunner, order: number[]) {
  const work = mkdtempSync(join(tmpdir(), 'caldera-jobs-work-'));
  for (const c of order) expect(await runHessianChunk(work, plan, c, runner)).toBe('computed');
  const refs = await reduceHessianChunks(work, plan);
  const hs = new Map<string, Float64Array>();
  for (const [k, r] of refs) {
    const buf = readFileSync(join(work, r.file));
    hs.set(k, new Float64Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength)));
  }
  return { work, refs, hs };
}

const spec = (seed: number) => (l: { name: string }) =>
  ({
    options: { rank: 4, outerIters: 1, lplrIters: 1 },
    seed: layerSeed(seed, l.name),
  }) satisfies LayerSpec;

describe('sha256Hex', () => {
  it('hashes the bytes of any view or buffer (a Hessian is hashed from its Float64Array, no copy)', () => {
    const h = new Float64Array([1.5, -2, Math.PI, 0]);
    const bytes = new Uint8Array(h.buffer);
    const want = createHash('sha256').update(bytes).digest('hex');
    expect(sha256Hex(h)).toBe(want);
    expect(sha256Hex(h.buffer)).toBe(want);
    expect(sha256Hex(bytes)).toBe(want);
    // a view into a larger buffer hashes only its own bytes
    expect(sha256Hex(new Float64Array(h.buffer, 8, 2))).toBe(
      createHash('sha256').update(bytes.subarray(8, 24)).digest('hex'),
    );
    expect(sha256Hex('abc')).toBe(createHash('sha256').update('abc').digest('hex'));
  });
});

describe('data-parallel Hessians', () => {
  it('reducing 1, 2 and 3 chunks equals the single-pass Hessian (1 chunk: bit for bit)', async () => {
    const runner = new ToyRunner(5);
    const ref = await singlePass(runner);
    for (const chunks of [1, 2, 3]) {
      const plan = makeHessianPlan('/toy', 'sha', runner.numBlocks, windows, chunks);
      expect(plan.chunks).toHaveLength(chunks);
      const { hs } = await reduced(plan, runner, [...plan.chunks.keys()]);
      expect([...hs.keys()].sort()).toEqual([...ref.keys()].sort());
      for (const [k, h] of hs) {
        const r = ref.get(k)!;
        if (chunks === 1) expect(h).toEqual(r);
        // Chunked sums regroup the same f64 additions of exact f32·f32 products. With N ≤ 39 token rows per entry,
        // |Σ_chunks − Σ_single| ≤ 2·N·eps64·Σ|x_i x_j| ≈ 1e-14·Σ|x_i x_j|, and normalising by the mean diagonal keeps
        // entries O(1), so 1e-12·(1+|h|) bounds the difference with a wide margin.
        for (let i = 0; i < h.length; i++)
          expect(Math.abs(h[i]! - r[i]!)).toBeLessThan(1e-12 * (1 + Math.abs(r[i]!)));
      }
    }
  });

  it('the plan, not the process count or finishing order, fixes the bytes: chunks in any order give equal files', async () => {
    const runner = new ToyRunner(6);
    const plan = makeHessianPlan('/toy', 'sha', runner.numBlocks, windows, 3);
    const a = await reduced(plan, runner, [0, 1, 2]);
    const b = await reduced(plan, new ToyRunner(6), [2, 0, 1]);
    expect([...b.refs]).toEqual([...a.refs]);
    // a chunk already on disk is not recomputed
    expect(await runHessianChunk(a.work, plan, 1, runner)).toBe('cached');
  });

  it('a missing chunk fails the reduction with E_MISSING', async () => {
    const runner = new ToyRunner(7);
    const plan = makeHessianPlan('/toy', 'sha', runner.numBlocks, windows, 2);
    const work = mkdtempSync(join(tmpdir(), 'caldera-jobs-work-'));
    await runHessianChunk(work, plan, 0, runner);
    await expect(reduceHessianChunks(work, plan)).rejects.toSatisfy((e: unknown) =>
      isCalderaError(e, 'E_MISSING'),
    );
  });
});

describe('matrix jobs', () => {
  async function setup(seed: number) {
    const runner = new ToyRunner(seed);
    const model = await toyModelDir(runner);
    const hashes = await hashModelTensors(model);
    const plan = makeHessianPlan(model, hashes.sha256, runner.numBlocks, windows, 1);
    const work = mkdtempSync(join(tmpdir(), 'caldera-jobs-work-'));
    await runHessianChunk(work, plan, 0, runner);
    const refs = await reduceHessianChunks(work, plan);
    const linears = Array.from({ length: runner.numBlocks }, (_, b) => runner.linears(b)).flat();
    const manifest = makeManifest({
      model,
      modelSha256: hashes.sha256,
      seed,
      settings: { note: 'test' },
      linears,
      weightSha256: hashes.tensors,
      hessians: refs,
      spec: spec(seed),
    });
    return { runner, model, work, manifest };
  }

  it('with one chunk, the job pipeline reproduces the sequential driver (propagate: original) exactly', async () => {
    const { runner, work, manifest } = await setup(8);
    for (const j of manifest.jobs) expect(await executeMatrixJob(work, manifest, j)).toBe('computed');
    const jobs = await Promise.all(manifest.jobs.map((j) => readJobResult(work, j)));
    const seq = await compressModel(new ToyRunner(8), windows, {
      propagate: 'original',
      compressLayer: (w, h, info) => compressLayerWithSpec(w, h, info.name, spec(8)(info)),
    });
    expect(jobs.map((r) => r.name)).toEqual(seq.map((r) => r.name));
    jobs.forEach((r, i) => {
      expect(r.error).toBe(seq[i]!.error);
      expect(r.replacement.meta).toEqual(JSON.parse(JSON.stringify(seq[i]!.replacement.meta)));
      for (const [k, t] of Object.entries(seq[i]!.replacement.tensors))
        expect(r.replacement.tensors[k]!.data).toEqual(t.data);
    });
    expect(runner.replaced).toHaveLength(0);
  });

  it('shards partition the jobs; any sharding and order gives byte-identical outputs; re-execution is a no-op', async () => {
    const { work, manifest } = await setup(9);
    expect(largestFirst(manifest.jobs).map((j) => j.name)).toEqual([
      'b0.down', // 8×16: same size as up, larger n first
      'b1.down',
      'b2.down',
      'b0.up',
      'b1.up',
      'b2.up',
    ]);
    for (const count of [1, 2, 3]) {
      const shards = Array.from({ length: count }, (_, i) => shardJobs(manifest.jobs, i, count));
      expect(
        shards
          .flat()
          .map((j) => j.id)
          .sort(),
      ).toEqual(manifest.jobs.map((j) => j.id).sort());
    }
    for (const j of manifest.jobs) await executeMatrixJob(work, manifest, j);
    const files = await readdir(join(work, 'results'));
    const bytes = new Map(files.map((f) => [f, readFileSync(join(work, 'results', f))]));
    // a second work directory, jobs run shard by shard in reverse order
    const work2 = join(mkdtempSync(join(tmpdir(), 'caldera-jobs-work-')), 'copy');
    await cp(work, work2, { recursive: true });
    await rm(join(work2, 'results'), { recursive: true });
    for (const i of [1, 0])
      for (const j of shardJobs(manifest.jobs, i, 2).reverse()) {
        expect(await executeMatrixJob(work2, manifest, j)).toBe('computed');
        expect(await executeMatrixJob(work2, manifest, j)).toBe('cached');
      }
    expect(await missingJobs(work2, manifest)).toEqual([]);
    for (const j of manifest.jobs) {
      const a = await readJobResult(work, j);
      const b = await readJobResult(work2, j);
      expect({ ...b, seconds: 0 }).toEqual({ ...a, seconds: 0 });
    }
    expect(files.length).toBe(manifest.jobs.length);
    expect(bytes.size).toBe(manifest.jobs.length);
  });

  it('a corrupted or missing input fails its job with a CalderaError naming the job and file', async () => {
    const { work, manifest } = await setup(10);
    const job = manifest.jobs[1]!;
    const hPath = join(work, job.hessian!.file);
    const good = readFileSync(hPath);
    const bad = Buffer.from(good);
    bad[100] ^= 1;
    writeFileSync(hPath, bad);
    await expect(executeMatrixJob(work, manifest, job)).rejects.toSatisfy(
      (e: unknown) => isCalderaError(e, 'E_FORMAT') && /b0\.down.*corrupted/.test((e as Error).message),
    );
    await rm(hPath);
    await expect(executeMatrixJob(work, manifest, job)).rejects.toSatisfy(
      (e: unknown) => isCalderaError(e, 'E_MISSING') && (e as Error).message.includes(hPath),
    );
    writeFileSync(hPath, good);
    expect(await executeMatrixJob(work, manifest, job)).toBe('computed');
    // a weight that changed since the manifest was made
    const other = { ...manifest, model: (await setup(11)).model };
    await expect(executeMatrixJob(work, other, manifest.jobs[0]!)).rejects.toSatisfy(
      (e: unknown) =>
        isCalderaError(e, 'E_FORMAT') && /does not match the manifest/.test((e as Error).message),
    );
  });

  it('accumulateHessians stops on an abort from a timer between windows', async () => {
    const runner = new ToyRunner(6);
    const ctl = new AbortController();
    const run = runner.runBlock.bind(runner);
    let calls = 0;
    runner.runBlock = (...args: Parameters<ToyRunner['runBlock']>) => {
      if (calls++ === 0) setTimeout(() => ctl.abort(), 0);
      const until = performance.now() + 5; // synchronous work: the 1 ms timer is due by the next check
      while (performance.now() < until);
      return run(...args);
    };
    const blocks: number[] = [];
    await expect(
      accumulateHessians(runner, windows, (b) => void blocks.push(b), ctl.signal),
    ).rejects.toSatisfy((e: unknown) => isCalderaError(e, 'E_ABORTED'));
    expect(calls).toBeLessThan(runner.numBlocks * windows.length);
  });

  it('the Hessian accumulator round-trips through fromSums', () => {
    const a = new HessianAccumulator(3);
    a.add(Float32Array.from([1, 2, 3, 4, 5, 6]), 2);
    const b = HessianAccumulator.fromSums(3, a.sum, a.count);
    expect(b.secondMoment()).toEqual(a.secondMoment());
    expect(() => HessianAccumulator.fromSums(3, new Float64Array(8), 1)).toThrow(/expected 3·3/);
  });
});
