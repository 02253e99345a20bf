import { describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isCalderaError, Rng, tensor, type Tensor } from '@caldera/core';
import * as calibrate from './index.js';
import { ToyRunner } from './testing/toy-runner.js';

const w = tensor('f32', [8, 16], new Rng(1).fillNormal(new Float32Array(128)));
const acc = new calibrate.HessianAccumulator(4);
acc.add(new Float32Array([1, 2, 3, 4]), 1);
const work = mkdtempSync(join(tmpdir(), 'caldera-arguments-'));
const windows = [Int32Array.of(1, 2, 3)];
const plan = calibrate.makeHessianPlan('/m', 'sha', 3, windows, 1);
const spec = { options: { rank: 2, outerIters: 1, lplrIters: 1 }, seed: 0 };
const job = {
  id: 'abc',
  name: 'b0.up',
  block: 0,
  input: 'in',
  m: 16,
  n: 8,
  weight: { tensor: 'b0.up.weight', sha256: 's' },
  hessian: null,
  spec,
};
const manifest = {
  format: 'caldera-jobs' as const,
  version: 1 as const,
  model: '/m',
  modelSha256: 's',
  seed: 0,
  settings: {},
  jobs: [job],
};
/** A "compressor" that keeps the layer as it is (the driver passes the metadata through unread). */
const keep = (x: Tensor<'f32'>) => ({
  replacement: {
    tensors: { weight: x },
    meta: {
      shape: x.shape as [number, number],
      padded: x.shape as [number, number],
      rank: 0,
      hadamard: false,
      codecs: { Q: 'f16', L: 'f16', R: 'f16' },
      bitsPerWeight: 16,
    },
  },
  error: 0,
  bitsPerWeight: 16,
  rank: 0,
});

/**
 * Every public entry point with a required object argument: valid arguments (`null` where a valid
 * call would need files that do not exist: only the argument checks are exercised then), and the positions that must
 * be objects or functions.
 */
const entries: [
  name: string,
  call: (...args: never[]) => unknown,
  args: unknown[] | null,
  required: [index: number, argument: string][],
][] = [
  [
    'averageBits',
    calibrate.averageBits,
    [[{ name: 'a', m: 4, n: 8 }], [2]],
    [
      [0, 'layers'],
      [1, 'ranks'],
    ],
  ],
  [
    'allocateRanks',
    calibrate.allocateRanks,
    [[{ name: 'a', m: 64, n: 64 }], { targetBits: 2.5 }],
    [
      [0, 'layers'],
      [1, 'options'],
    ],
  ],
  ['bitsForBytes', calibrate.bitsForBytes, [[{ name: 'a', m: 4, n: 8 }], 100], [[0, 'layers']]],
  ['rankCap', calibrate.rankCap, [{ name: 'a', m: 4, n: 8 }], [[0, 'layer']]],
  ['sampleWindows', calibrate.sampleWindows, [[[1, 2, 3, 4]], { count: 1, length: 2 }], [[0, 'documents']]],
  ['finalizeHessian', calibrate.finalizeHessian, [acc], [[0, 'acc']]],
  [
    'HessianAccumulator.add',
    (x: never) => new calibrate.HessianAccumulator(4).add(x, 1),
    [new Float32Array(4)],
    [[0, 'x']],
  ],
  [
    'HessianAccumulator.merge',
    (o: never) => new calibrate.HessianAccumulator(4).merge(o),
    [acc],
    [[0, 'other']],
  ],
  [
    'HessianAccumulator.fromSums',
    calibrate.HessianAccumulator.fromSums,
    [4, new Float64Array(16), 1],
    [[1, 'sum']],
  ],
  [
    'compressModel',
    calibrate.compressModel,
    [new ToyRunner(1), windows, { compressLayer: keep }],
    [
      [0, 'runner'],
      [1, 'windows'],
      [2, 'options'],
    ],
  ],
  [
    'accumulateHessians',
    calibrate.accumulateHessians,
    [new ToyRunner(1), windows, () => {}],
    [
      [0, 'runner'],
      [1, 'windows'],
      [2, 'onBlock'],
    ],
  ],
  ['compressLayerWithSpec', calibrate.compressLayerWithSpec, [w, null, 'x', spec], [[3, 'spec']]],
  ['makeHessianPlan', calibrate.makeHessianPlan, ['/m', 'sha', 1, windows, 1], [[3, 'windows']]],
  [
    'makeManifest',
    calibrate.makeManifest,
    [
      {
        model: '/m',
        modelSha256: 's',
        seed: 0,
        settings: {},
        linears: [],
        weightSha256: new Map(),
        hessians: null,
        spec: () => spec,
      },
    ],
    [[0, 'args']],
  ],
  ['writeHessianPlan', calibrate.writeHessianPlan, [join(work, 'w1'), plan], [[1, 'plan']]],
  ['writeManifest', calibrate.writeManifest, [join(work, 'w2'), manifest], [[1, 'manifest']]],
  ['matrixJobId', calibrate.matrixJobId, [job], [[0, 'job']]],
  ['largestFirst', calibrate.largestFirst, [[job]], [[0, 'jobs']]],
  ['shardJobs', calibrate.shardJobs, [[job], 0, 1], [[0, 'jobs']]],
  ['jobResultPath', calibrate.jobResultPath, [work, job], [[1, 'job']]],
  ['hasJobResult', calibrate.hasJobResult, [work, job], [[1, 'job']]],
  ['missingJobs', calibrate.missingJobs, [work, manifest], [[1, 'manifest']]],
  ['hasHessianChunk', calibrate.hasHessianChunk, [work, plan, 0], [[1, 'plan']]],
  [
    'runHessianChunks',
    calibrate.runHessianChunks,
    [join(work, 'w3'), plan, [0], new ToyRunner(1)],
    [
      [1, 'plan'],
      [2, 'chunks'],
      [3, 'runner'],
    ],
  ],
  ['reduceHessianChunks', calibrate.reduceHessianChunks, [join(work, 'w3'), plan], [[1, 'plan']]],
  [
    'executeMatrixJob',
    calibrate.executeMatrixJob,
    null,
    [
      [1, 'manifest'],
      [2, 'job'],
    ],
  ],
  ['readJobResult', calibrate.readJobResult, null, [[1, 'job']]],
];

async function thrown(f: () => unknown): Promise<unknown> {
  try {
    await f();
  } catch (e) {
    return e;
  }
  return undefined;
}

describe('required object arguments', () => {
  for (const [name, call, valid, required] of entries)
    it(`${name}: null or undefined for ${required.map(([, a]) => a).join(', ')} is E_VALUE naming it`, async () => {
      if (valid) expect(await thrown(() => call(...(valid as never[])))).toBeUndefined();
      const args = valid ?? [work, manifest, job].slice(0, Math.max(...required.map(([i]) => i)) + 1);
      for (const [i, argument] of required)
        for (const bad of [null, undefined]) {
          const a = args.slice();
          a[i] = bad;
          const caught = await thrown(() => call(...(a as never[])));
          expect(isCalderaError(caught, 'E_VALUE'), `${argument} = ${String(bad)}: ${String(caught)}`).toBe(
            true,
          );
          expect((caught as Error).message).toContain(`${name}: ${argument} `);
        }
    });

  it('finalizeHessian and reduceHessianChunks: null options and a bare signal are E_VALUE, a bad damping before any read', async () => {
    // null was a TypeError (reading 'damping' / 'signal'); an aborted bare signal was ignored (6 Hessians written)
    expect(String(await thrown(() => calibrate.finalizeHessian(acc, null as never)))).toMatch(
      /E_VALUE: finalizeHessian: options must be an object, got null/,
    );
    const empty = join(work, 'no-chunks');
    expect(String(await thrown(() => calibrate.reduceHessianChunks(empty, plan, null as never)))).toMatch(
      /E_VALUE: reduceHessianChunks: options must be an object, got null/,
    );
    const aborted = AbortSignal.abort();
    expect(String(await thrown(() => calibrate.reduceHessianChunks(empty, plan, aborted as never)))).toMatch(
      /E_VALUE: reduceHessianChunks: .*AbortSignal/,
    );
    // no chunk is there: the damping is refused first (it failed only after reading block 0's chunks)
    expect(String(await thrown(() => calibrate.reduceHessianChunks(empty, plan, { damping: -1 })))).toMatch(
      /E_VALUE: damping must be ≥ 0, got -1/,
    );
  });

  it('makeHessianPlan refuses a numBlocks or token ids it could not honour; compressLayerWithSpec a spec without options', async () => {
    // numBlocks −1 and windows of 1.5 or NaN were saved in the plan (read back as Int32Array: 1, 0)
    for (const n of [-1, 0, 1.5, NaN])
      expect(String(await thrown(() => calibrate.makeHessianPlan('/m', 'sha', n, windows, 1)))).toMatch(
        /E_VALUE: makeHessianPlan: numBlocks must be a positive integer/,
      );
    for (const bad of [[[1.5, 2]], [[1, NaN]], [[-1]]])
      expect(String(await thrown(() => calibrate.makeHessianPlan('/m', 'sha', 1, bad, 1)))).toMatch(
        /E_VALUE: makeHessianPlan: windows\[0\]\[\d\] is .*, not a token id/,
      );
    expect(String(await thrown(() => calibrate.makeHessianPlan('/m', 'sha', 1, [null] as never, 1)))).toMatch(
      /E_VALUE: makeHessianPlan: windows\[0\] must be an array of token ids/,
    );
    const w = tensor('f32', [8, 8]);
    expect(
      String(await thrown(() => calibrate.compressLayerWithSpec(w, null, 'x', { seed: 1 } as never))),
    ).toMatch(/E_VALUE: compressLayerWithSpec: spec.options must be caldera's options, got undefined/);
  });

  it('compressModel: a misspelt propagate, a bad damping, a non-boolean needsHessian or a non-function onProgress is E_VALUE before any work', async () => {
    // before: 'Compressed' ran every block twice (as 'original', its captured outputs thrown away), a damping of -1
    // failed after block 0's capture, 'no' counted as true, and onProgress: 3 was a TypeError at its first call
    for (const [bad, message] of [
      [{ propagate: 'Compressed' }, /propagate must be 'compressed' or 'original', got 'Compressed'/],
      [{ damping: -1 }, /damping must be ≥ 0, got -1/],
      [{ damping: Number.NaN }, /damping must be ≥ 0, got NaN/],
      [{ needsHessian: 'no' }, /needsHessian must be true or false, got 'no'/],
      [{ onProgress: 3 }, /compressModel: onProgress must be a function/],
    ] as const) {
      const runner = new ToyRunner(1);
      let embedded = 0;
      const embed = runner.embed.bind(runner);
      runner.embed = (t) => (embedded++, embed(t));
      const caught = await thrown(() =>
        calibrate.compressModel(runner, windows, { compressLayer: keep as never, ...(bad as object) }),
      );
      expect(isCalderaError(caught) && caught.code, String(caught)).toBe('E_VALUE');
      expect(String(caught)).toMatch(message);
      expect(embedded).toBe(0);
    }
  });

  it('the jobs API: an onProgress that is not a function is E_VALUE before any work', async () => {
    const w = tensor('f32', [8, 16], new Rng(2).fillNormal(new Float32Array(128)));
    expect(
      String(
        await thrown(() => calibrate.compressLayerWithSpec(w, null, 'x', spec, { onProgress: 3 as never })),
      ),
    ).toMatch(/E_VALUE: compressLayerWithSpec: onProgress must be a function/);
    expect(
      String(await thrown(() => calibrate.hashModelTensors('/nonexistent', { onProgress: {} as never }))),
    ).toMatch(/E_VALUE: hashModelTensors: onProgress must be a function/);
  });

  it('compressModel: options without a compressLayer function is E_VALUE before any work', async () => {
    const runner = new ToyRunner(1);
    let embedded = 0;
    const embed = runner.embed.bind(runner);
    runner.embed = (t) => (embedded++, embed(t));
    const caught = await thrown(() => calibrate.compressModel(runner, windows, {} as never));
    expect(String(caught)).toMatch(
      /^CalderaError: E_VALUE: compressModel: options.compressLayer must be a function, got undefined$/,
    );
    expect(embedded).toBe(0);
  });
});
