import { describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cp, mkdir, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  cast,
  isCalderaError,
  openSafetensorsDir,
  tensor,
  writeSafetensors,
  type Tensor,
} from '@caldera/core';
import { compressModel, type CompressProgress } from './driver.js';
import { finalizeHessian, HessianAccumulator } from './hessian.js';
import {
  accumulateHessians,
  compressLayerWithSpec,
  executeMatrixJob,
  hashModelTensors,
  hasHessianChunk,
  hessianKey,
  largestFirst,
  layerSeed,
  makeHessianPlan,
  makeManifest,
  missingJobs,
  readJobResult,
  readHessianPlan,
  reduceHessianChunks,
  runHessianChunks,
  sha256Hex,
  shardJobs,
  type HessianPlan,
  type LayerSpec,
  type LayerSpecProgress,
  verifyingTensorStore,
  writeHessianPlan,
} from './jobs.js';
import { OneBlockRunner, ToyRunner } from './testing/toy-runner.js';

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
  for (const c of order) expect(await runHessianChunks(work, plan, [c], runner)).toEqual(['computed']);
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
    expect(await runHessianChunks(a.work, plan, [1], runner)).toEqual(['cached']);
  });

  it('chunks run together read each block once and write the bytes that running them one by one writes', async () => {
    const plan = makeHessianPlan('/toy', 'sha', 3, windows, 3);
    const alone = new OneBlockRunner(8);
    const a = await reduced(plan, alone, [0, 1, 2]);
    expect(alone.events.filter((e) => e.startsWith('enter'))).toHaveLength(9); // 3 chunks × 3 blocks
    const together = new OneBlockRunner(8);
    const work = mkdtempSync(join(tmpdir(), 'caldera-jobs-work-'));
    // chunk 1 already on disk (copied from the one-by-one run) is not recomputed; a repeated index runs once
    await runHessianChunks(work, plan, [1], new ToyRunner(8));
    expect(await runHessianChunks(work, plan, [2, 1, 0, 2], together)).toEqual([
      'computed',
      'cached',
      'computed',
      'computed',
    ]);
    expect(together.events).toEqual(['enter 0', 'leave 0', 'enter 1', 'leave 1', 'enter 2', 'leave 2']);
    const names = readdirSync(join(a.work, 'hessian-chunks')).sort();
    expect(readdirSync(join(work, 'hessian-chunks')).sort()).toEqual(names);
    for (const f of names)
      expect(
        readFileSync(join(work, 'hessian-chunks', f)).equals(readFileSync(join(a.work, 'hessian-chunks', f))),
        f,
      ).toBe(true);
    await expect(runHessianChunks(work, plan, [3], together)).rejects.toSatisfy(
      (e: unknown) =>
        isCalderaError(e, 'E_VALUE') && /chunk 3 is not in the plan \(3\)/.test((e as Error).message),
    );
  });

  it('a corrupt chunk file is E_FORMAT, a non-square or non-finite one E_SHAPE / E_VALUE, naming the file', async () => {
    const plan = makeHessianPlan('/toy', 'sha', 1, [Int32Array.of(1)], 1);
    const work = mkdtempSync(join(tmpdir(), 'caldera-jobs-work-'));
    const file = join(work, 'hessian-chunks', `${plan.chunks[0]!.key}-b0000.safetensors`);
    await mkdir(join(work, 'hessian-chunks'));
    const write = (t: Tensor, counts: string | undefined) =>
      writeSafetensors(file, { in: t }, counts === undefined ? {} : { metadata: { counts } });
    const fails = async (code: string, message: RegExp) => {
      const e = await reduceHessianChunks(work, plan).then(
        () => 'no error',
        (err: unknown) => err,
      );
      expect(isCalderaError(e, code as never), String(e)).toBe(true);
      expect((e as Error).message).toMatch(message);
      expect((e as Error).message).toContain(file);
    };
    const eye = tensor('f64', [2, 2], [1, 0, 0, 1]);
    // before: a raw SyntaxError from JSON.parse
    await write(eye, '{oops');
    await fails('E_FORMAT', /metadata 'counts' is not valid JSON/);
    // before: counts 0 assumed, "Hessian has no samples"
    await write(eye, undefined);
    await fails('E_FORMAT', /metadata 'counts' is missing or not an object/);
    await write(eye, '{"other":3}');
    await fails('E_FORMAT', /no row count for 'in' \(got undefined\)/);
    await write(eye, '{"in":-1}');
    await fails('E_FORMAT', /no row count for 'in' \(got -1\)/);
    // before: "Hessian sums have 6 values, expected 2·2", naming neither file nor tensor
    await write(tensor('f64', [2, 3]), '{"in":1}');
    await fails('E_SHAPE', /'in' has shape \[2, 3\], expected a square matrix/);
    // before: stored in hessians/ with NaN off the diagonal (finalizeHessian only checked the trace)
    await write(tensor('f64', [2, 2], [1, NaN, 0, 1]), '{"in":1}');
    await fails('E_VALUE', /'in' \(block 0\): Hessian sums hold a non-finite value NaN at \(0, 1\)/);
    expect(readdirSync(join(work, 'hessians'))).toEqual([]);
    // before: E_MISSING "missing or unreadable" for a file that is there but truncated
    await write(eye, '{"in":1}');
    const bytes = readFileSync(file);
    writeFileSync(file, bytes.subarray(0, bytes.length - 4));
    await fails('E_FORMAT', /^E_FORMAT: Hessian partial sums .* cannot be read \(.*past the end/);
    writeFileSync(file, bytes);
    const refs = await reduceHessianChunks(work, plan);
    expect([...refs.keys()]).toEqual(['0/in']);
  });

  it('a missing chunk fails the reduction with E_MISSING', async () => {
    const runner = new ToyRunner(7);
    const plan = makeHessianPlan('/toy', 'sha', runner.numBlocks, windows, 2);
    const work = mkdtempSync(join(tmpdir(), 'caldera-jobs-work-'));
    await runHessianChunks(work, plan, [0], runner);
    await expect(reduceHessianChunks(work, plan)).rejects.toSatisfy((e: unknown) =>
      isCalderaError(e, 'E_MISSING'),
    );
  });
});

describe("a plan's per-tensor hashes and verifyingTensorStore", () => {
  it('passes the planned tensors through unchanged and refuses a changed or unplanned one, naming it', async () => {
    const runner = new ToyRunner(3);
    const model = await toyModelDir(runner);
    const hashes = await hashModelTensors(model);
    const configSha256 = 'c'.repeat(64);
    const plan = makeHessianPlan(model, hashes.sha256, runner.numBlocks, windows, 2, '', {
      tensorSha256: hashes.tensors,
      configSha256,
    });
    expect(plan.configSha256).toBe(configSha256);
    expect(plan.tensorSha256).toEqual(Object.fromEntries(hashes.tensors));
    // the plan is JSON: written and read back, its hashes give the same check
    const expected = new Map(Object.entries(JSON.parse(JSON.stringify(plan)).tensorSha256 as object));
    const names = [...hashes.tensors.keys()];
    const plain = await openSafetensorsDir(model);
    const store = verifyingTensorStore(await openSafetensorsDir(model), expected, 'the model at M');
    try {
      expect(store.names()).toEqual(plain.names());
      for (const name of names) {
        const t = await store.readTensor(name);
        expect(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)).toEqual(
          Buffer.from(await plain.readRaw(name)),
        );
        expect(Buffer.from(await store.readRaw(name))).toEqual(Buffer.from(await plain.readRaw(name)));
      }
    } finally {
      await store.close();
      await plain.close();
    }
    // one weight changed in its last byte: that tensor is E_FORMAT naming it, the others still read
    const other = new ToyRunner(3);
    const [victim, w] = [...other.weights][1]!;
    const data = w.data as Float32Array;
    data[data.length - 1] = data[data.length - 1]! + 1;
    const changed = await toyModelDir(other);
    const bad = verifyingTensorStore(await openSafetensorsDir(changed), expected, 'the model at M');
    try {
      await expect(bad.readTensor(`${victim}.weight`)).rejects.toThrow(
        new RegExp(
          `^E_FORMAT: the model at M: its tensor '${victim}\\.weight' has sha256 [0-9a-f]{12}…, the plan's ${expected.get(`${victim}.weight`)!.slice(0, 12)}…$`,
        ),
      );
      await expect(bad.readRaw(`${victim}.weight`)).rejects.toThrow(/E_FORMAT/);
      await expect(bad.readTensor(names.find((n) => n !== `${victim}.weight`)!)).resolves.toBeDefined();
    } finally {
      await bad.close();
    }
    // a tensor the plan's model lacks
    const fewer = new Map(expected);
    fewer.delete(names[0]!);
    const extra = verifyingTensorStore(await openSafetensorsDir(model), fewer, 'the model at M');
    try {
      await expect(extra.readTensor(names[0]!)).rejects.toThrow(
        `E_FORMAT: the model at M: it has a tensor '${names[0]}' the plan's model lacks`,
      );
    } finally {
      await extra.close();
    }
    // per-tensor hashes that are not those of the model hash, and a non-Map, are refused
    const planWith = (identity: unknown) => () =>
      makeHessianPlan(model, hashes.sha256, runner.numBlocks, windows, 2, '', identity as never);
    expect(planWith({ tensorSha256: fewer })).toThrow(
      /E_VALUE: makeHessianPlan: identity.tensorSha256 is not the per-tensor hashes of modelSha256/,
    );
    expect(planWith({ tensorSha256: {} })).toThrow(
      /E_VALUE: makeHessianPlan: identity.tensorSha256 must be a Map/,
    );
    expect(planWith({ configSha256: 'abc' })).toThrow(
      "E_VALUE: makeHessianPlan: identity.configSha256 must be 64 lowercase hex digits, got 'abc'",
    );
    expect(planWith(null)).toThrow(/E_VALUE: makeHessianPlan: identity must be an object, got null/);
    // none given: neither is in the plan (as in plans written before they existed)
    const bare = makeHessianPlan(model, hashes.sha256, runner.numBlocks, windows, 2);
    expect('tensorSha256' in bare || 'configSha256' in bare).toBe(false);
    // the config is part of each chunk's key: sums made under another config.json are not taken for this plan's
    const otherConfig = makeHessianPlan(model, hashes.sha256, runner.numBlocks, windows, 2, '', {
      configSha256: 'd'.repeat(64),
    });
    for (let c = 0; c < 2; c++) {
      expect(otherConfig.chunks[c]!.key).not.toBe(plan.chunks[c]!.key);
      expect(bare.chunks[c]!.key).not.toBe(plan.chunks[c]!.key);
    }
    // a plan file whose identity fields are malformed is E_FORMAT naming the file and the field
    const work = mkdtempSync(join(tmpdir(), 'caldera-jobs-plan-'));
    for (const [field, value] of [
      ['configSha256', 'abc'],
      ['tensorSha256', { x: 'nope' }],
      ['tensorSha256', null],
    ] as const) {
      writeFileSync(join(work, 'hessian-plan.json'), JSON.stringify({ ...plan, [field]: value }));
      await expect(readHessianPlan(work)).rejects.toThrow(
        new RegExp(`^E_FORMAT: .*hessian-plan\\.json: ${field} is not`),
      );
    }
    await writeHessianPlan(work, plan);
    expect(await readHessianPlan(work)).toEqual(plan);
    expect(() => verifyingTensorStore(plain, {} as never, 'x')).toThrow(
      /E_VALUE: verifyingTensorStore: expected must be a Map/,
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
    await runHessianChunks(work, plan, [0], runner);
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
    return { runner, model, work, manifest, refs };
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

  it('a weight stored as f16, f64 or bf16 gives the result of the same values stored as f32; an integer one is E_DTYPE', async () => {
    // Real checkpoints are bf16 or f16, the toy model f32: loadWeight casts the others to f32. Values first rounded to
    // f16 (or bf16) are exact in every wider dtype, so each copy must give the f32 copy's result bit for bit: any
    // tolerance would hide a cast that loses or misplaces bits.
    const { runner, work, refs } = await setup(14);
    const linears = Array.from({ length: runner.numBlocks }, (_, b) => runner.linears(b)).flat();
    const results = async (dtype: 'f32' | 'f16' | 'f64' | 'bf16' | 'i32', round: 'f16' | 'bf16') => {
      const dir = mkdtempSync(join(tmpdir(), `caldera-jobs-${dtype}-`));
      const tensors: Record<string, Tensor> = {};
      for (const [name, w] of runner.weights)
        tensors[`${name}.weight`] = cast(cast(w, round), dtype === 'i32' ? 'f32' : dtype);
      if (dtype === 'i32') for (const k of Object.keys(tensors)) tensors[k] = cast(tensors[k]!, 'i32');
      await writeSafetensors(join(dir, 'model.safetensors'), tensors);
      const store = await openSafetensorsDir(dir);
      expect((await store.readTensor('b0.up.weight')).dtype).toBe(dtype); // the file holds the dtype under test
      await store.close();
      const hashes = await hashModelTensors(dir);
      const manifest = makeManifest({
        model: dir,
        modelSha256: hashes.sha256,
        seed: 14,
        settings: {},
        linears,
        weightSha256: hashes.tensors,
        hessians: refs,
        spec: spec(14),
      });
      const out = [];
      for (const j of manifest.jobs) {
        await executeMatrixJob(work, manifest, j);
        out.push({ ...(await readJobResult(work, j)), seconds: 0 });
      }
      return out;
    };
    const f32 = await results('f32', 'f16');
    expect(await results('f16', 'f16')).toEqual(f32);
    expect(await results('f64', 'f16')).toEqual(f32);
    expect(await results('bf16', 'bf16')).toEqual(await results('f32', 'bf16'));
    await expect(results('i32', 'f16')).rejects.toSatisfy(
      (e: unknown) => isCalderaError(e, 'E_DTYPE') && /b0\.up: weight dtype i32/.test((e as Error).message),
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
      accumulateHessians(runner, windows, (b) => void blocks.push(b), { signal: ctl.signal }),
    ).rejects.toSatisfy((e: unknown) => isCalderaError(e, 'E_ABORTED'));
    expect(calls).toBeLessThan(runner.numBlocks * windows.length);
  });

  it("executeMatrixJob reports its decomposition's progress, ending at 1, with the same result; a cached job none", async () => {
    const { work, manifest } = await setup(12);
    const plainWork = join(mkdtempSync(join(tmpdir(), 'caldera-jobs-work-')), 'plain');
    await cp(work, plainWork, { recursive: true });
    for (const j of manifest.jobs) {
      const events: LayerSpecProgress[] = [];
      expect(await executeMatrixJob(work, manifest, j, { onProgress: (p) => events.push(p) })).toBe(
        'computed',
      );
      // spec(…): outerIters 1, LR then Q
      expect(events.map((e) => [e.step, e.fraction])).toEqual([
        ['LR', 0.5],
        ['Q', 1],
      ]);
      await executeMatrixJob(plainWork, manifest, j);
      // the same tensors and metadata (but the time it took)
      expect({ ...(await readJobResult(work, j)), seconds: 0 }).toEqual({
        ...(await readJobResult(plainWork, j)),
        seconds: 0,
      });
      const again: LayerSpecProgress[] = [];
      expect(await executeMatrixJob(work, manifest, j, { onProgress: (p) => again.push(p) })).toBe('cached');
      expect(again).toEqual([]);
    }
  });

  it('executeMatrixJob honours its signal and refuses a bare AbortSignal for its options', async () => {
    const { work, manifest } = await setup(13);
    const ctl = new AbortController();
    ctl.abort();
    await expect(
      executeMatrixJob(work, manifest, manifest.jobs[0]!, { signal: ctl.signal }),
    ).rejects.toSatisfy((e: unknown) => isCalderaError(e, 'E_ABORTED'));
    await expect(executeMatrixJob(work, manifest, manifest.jobs[0]!, ctl.signal as never)).rejects.toSatisfy(
      (e: unknown) => isCalderaError(e, 'E_VALUE') && /executeMatrixJob: options/.test((e as Error).message),
    );
    expect(await missingJobs(work, manifest)).toHaveLength(manifest.jobs.length);
  });

  it('readJobResult: a missing result is E_MISSING; a corrupt one, or malformed metadata, E_FORMAT naming the file', async () => {
    const { work, manifest } = await setup(12);
    const job = manifest.jobs[0]!;
    const path = join(work, 'results', `${job.id}.safetensors`);
    const fails = async (code: string, message: RegExp) => {
      const e = await readJobResult(work, job).then(
        () => 'no error',
        (err: unknown) => err,
      );
      expect(isCalderaError(e, code as never), String(e)).toBe(true);
      expect((e as Error).message).toMatch(message);
      expect((e as Error).message).toContain(path);
    };
    await fails('E_MISSING', /job b0\.up: result .* is missing/);
    await executeMatrixJob(work, manifest, job);
    const good = readFileSync(path);
    const ok = await readJobResult(work, job);
    // before: E_MISSING "has no result" for a result file that is there but truncated
    writeFileSync(path, good.subarray(0, good.length - 4));
    await fails('E_FORMAT', /^E_FORMAT: job b0\.up: result .* cannot be read \(/);
    const t = { a: tensor('f32', [1]) };
    // before: a raw SyntaxError from JSON.parse
    await writeSafetensors(path, t, { metadata: { caldera_job: '{bad' } });
    await fails('E_FORMAT', /metadata 'caldera_job' is not valid JSON/);
    await writeSafetensors(path, t);
    await fails('E_FORMAT', /is not the result of job b0\.up/);
    await writeSafetensors(path, t, {
      metadata: {
        caldera_job: JSON.stringify({ id: job.id, name: job.name, error: 0.5, rank: 4, seconds: 1 }),
      },
    });
    await fails('E_FORMAT', /field 'bitsPerWeight' must be a number, got undefined/);
    writeFileSync(path, good);
    expect(await readJobResult(work, job)).toEqual(ok);
  });

  it('the Hessian accumulator round-trips through fromSums', () => {
    const a = new HessianAccumulator(3);
    a.add(Float32Array.from([1, 2, 3, 4, 5, 6]), 2);
    const b = HessianAccumulator.fromSums(3, a.sum, a.count);
    expect(b.secondMoment()).toEqual(a.secondMoment());
    expect(() => HessianAccumulator.fromSums(3, new Float64Array(8), 1)).toThrow(/expected 3·3/);
  });
});

describe('progress within a layer and options objects', () => {
  it('compressLayerWithSpec: fractions rise after every CALDERA sub-step to exactly 1, results unchanged', () => {
    const runner = new ToyRunner(14);
    const w = runner.weight('b0.up');
    const cases: [LayerSpec['options'], number][] = [
      [{ rank: 4, outerIters: 3, lplrIters: 1 }, 6], // LR and Q, 3 outer iterations
      [{ rank: 4, outerIters: 3, lplrIters: 1, updateOrder: 'q-first' }, 6], // Q and LR: the Q step is first
      [{ rank: 0, outerIters: 3 }, 1], // Q only: one iteration
      [{ rank: 4, qBits: 0, outerIters: 3, lplrIters: 1 }, 1], // LR only: one iteration
    ];
    for (const [options, n] of cases) {
      const layerSpec: LayerSpec = { options, seed: 3 };
      const events: LayerSpecProgress[] = [];
      const withProgress = compressLayerWithSpec(w, null, 'b0.up', layerSpec, {
        onProgress: (p) => events.push(p),
      });
      expect(events.map((e) => e.fraction)).toEqual(Array.from({ length: n }, (_, i) => (i + 1) / n));
      expect(events.at(-1)!.iteration).toBe(events.at(-1)!.iterations);
      const plain = compressLayerWithSpec(w, null, 'b0.up', layerSpec);
      expect(withProgress.error).toBe(plain.error);
      for (const [k, t] of Object.entries(plain.replacement.tensors))
        expect(withProgress.replacement.tensors[k]!.data).toEqual(t.data);
    }
  });

  it('compressModel with compressLayerWithSpec: within-layer fractions per layer, rising to 1', async () => {
    const events: CompressProgress[] = [];
    await compressModel(new ToyRunner(15), windows, {
      propagate: 'original', // the toy runner applies dense replacements only
      compressLayer: (w, h, info, o) =>
        compressLayerWithSpec(
          w,
          h,
          info.name,
          { options: { rank: 4, outerIters: 2, lplrIters: 1 }, seed: layerSeed(0, info.name) },
          o,
        ),
      onProgress: (p) => events.push(p),
    });
    const byLayer = new Map<string, number[]>();
    for (const e of events)
      if (e.phase === 'compress') byLayer.set(e.layer!, [...(byLayer.get(e.layer!) ?? []), e.layerFraction!]);
    expect([...byLayer.keys()]).toEqual(['b0.up', 'b0.down', 'b1.up', 'b1.down', 'b2.up', 'b2.down']);
    for (const fractions of byLayer.values()) expect(fractions).toEqual([0, 0.25, 0.5, 0.75, 1]);
  });

  it('hashModelTensors reports every tensor in name order, honours its signal, refuses a bare AbortSignal', async () => {
    const runner = new ToyRunner(16);
    const model = await toyModelDir(runner);
    const events: { tensor: string; done: number; total: number }[] = [];
    const withProgress = await hashModelTensors(model, { onProgress: (e) => events.push(e) });
    const names = [...runner.weights.keys()].map((n) => `${n}.weight`).sort();
    expect(events).toEqual(names.map((tensor, i) => ({ tensor, done: i + 1, total: names.length })));
    const plain = await hashModelTensors(model);
    expect(withProgress.sha256).toBe(plain.sha256);
    expect([...withProgress.tensors]).toEqual([...plain.tensors]);
    // aborted after the second tensor: no third is hashed
    const ctl = new AbortController();
    const seen: number[] = [];
    await expect(
      hashModelTensors(model, {
        signal: ctl.signal,
        onProgress: ({ done }) => {
          seen.push(done);
          if (done === 2) ctl.abort();
        },
      }),
    ).rejects.toSatisfy((e: unknown) => isCalderaError(e, 'E_ABORTED'));
    expect(seen).toEqual([1, 2]);
    for (const bad of [ctl.signal, null])
      await expect(hashModelTensors(model, bad as never)).rejects.toSatisfy(
        (e: unknown) =>
          isCalderaError(e, 'E_VALUE') &&
          / hashModelTensors: options must be an object/.test((e as Error).message),
      );
  });

  it('accumulateHessians reports each block after onBlock is done with it, and refuses a bare AbortSignal', async () => {
    const runner = new ToyRunner(17);
    const log: string[] = [];
    await accumulateHessians(runner, windows, async (b) => void log.push(`block ${b}`), {
      onProgress: ({ done, total }) => void log.push(`${done}/${total}`),
    });
    expect(log).toEqual(['block 0', '1/3', 'block 1', '2/3', 'block 2', '3/3']);
    const ctl = new AbortController();
    await expect(accumulateHessians(runner, windows, () => undefined, ctl.signal as never)).rejects.toSatisfy(
      (e: unknown) =>
        isCalderaError(e, 'E_VALUE') &&
        / accumulateHessians: options must be an object/.test((e as Error).message),
    );
  });

  it('runHessianChunks reports its blocks as their files are written, stops on its signal, reports nothing when cached', async () => {
    const runner = new ToyRunner(18);
    const plan = makeHessianPlan('/toy', 'sha', runner.numBlocks, windows, 2);
    const work = mkdtempSync(join(tmpdir(), 'caldera-jobs-work-'));
    // aborted once the first block's file is written: the chunk is left incomplete
    const ctl = new AbortController();
    const files: number[] = [];
    await expect(
      runHessianChunks(work, plan, [0], runner, {
        signal: ctl.signal,
        onProgress: ({ done }) => {
          files.push(readdirSync(join(work, 'hessian-chunks')).length);
          if (done === 1) ctl.abort();
        },
      }),
    ).rejects.toSatisfy((e: unknown) => isCalderaError(e, 'E_ABORTED'));
    expect(files).toEqual([1]);
    expect(await hasHessianChunk(work, plan, 0)).toBe(false);
    const events: string[] = [];
    const onProgress = ({ done, total }: { done: number; total: number }) =>
      void events.push(`${done}/${total}`);
    expect(await runHessianChunks(work, plan, [0], runner, { onProgress })).toEqual(['computed']);
    expect(events).toEqual(['1/3', '2/3', '3/3']);
    expect(await runHessianChunks(work, plan, [0], runner, { onProgress })).toEqual(['cached']);
    expect(events).toHaveLength(3);
    await expect(runHessianChunks(work, plan, [1], runner, ctl.signal as never)).rejects.toSatisfy(
      (e: unknown) =>
        isCalderaError(e, 'E_VALUE') &&
        / runHessianChunks: options must be an object/.test((e as Error).message),
    );
  });
});

describe('layerSeed arguments', () => {
  it('keeps integer seeds modulo 2³² and rejects a fractional or non-finite seed and a non-string name', () => {
    expect(layerSeed(2 ** 32 + 5, 'a.b')).toBe(layerSeed(5, 'a.b'));
    expect(layerSeed(-1, 'a.b')).toBe(layerSeed(2 ** 32 - 1, 'a.b'));
    for (const bad of [NaN, 1.5, Infinity])
      expect(() => layerSeed(bad, 'a.b')).toThrow(
        `E_VALUE: layerSeed: seed must be a safe integer, got ${String(bad)}`,
      );
    expect(() => layerSeed(0, null as never)).toThrow('E_VALUE: layerSeed: name must be a string, got null');
  });
});
