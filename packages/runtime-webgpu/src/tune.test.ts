import { describe, expect, it } from 'vitest';
import { CalderaError } from '@caldera/core';
import { loadModelFromBuffer } from './load.js';
import type { KernelChoice, WebGpuModel, WebGpuModelOptions } from './model.js';
import { gpuTitle, ownTestDevice, testDevice } from './testing/gpu.js';
import { tinyModelSource } from './testing/tiny-model.js';
import { choiceKey, defaultTuningAxes, searchKernelChoices, type Axis, type ChoiceRunner } from './tune.js';

const { device: dev, reason } = await testDevice();

/**
 * The search over a runner whose programs are named choices with given step times (ms) and launch labels: what the
 * coordinate descent adopts, skips, rejects and disposes does not depend on a device, only on the times it is told.
 */
function scriptedRunner(
  times: Record<string, number>,
  labels: Record<string, string[]> = {},
  rejects = new Set<string>(),
) {
  const live = new Set<string>();
  const disposed: string[] = [];
  const timed: string[] = [];
  const name = (c: KernelChoice) => choiceKey(c);
  const runner: ChoiceRunner<string> = {
    build: async (c) => {
      const n = name(c);
      if (rejects.has(n)) return { rejected: `no ${n}` };
      live.add(n);
      return n;
    },
    time: async (p, steps) => {
      timed.push(p);
      return (times[p]! * steps) / 1000;
    },
    labels: (p) => labels[p] ?? [p],
    dispose: (p) => {
      live.delete(p);
      disposed.push(p);
    },
  };
  return { runner, live, disposed, timed };
}

const fast = { warmUpMs: 0, minTimingMs: 0, repeats: 2 };

describe('searchKernelChoices (the coordinate descent, on scripted step times)', () => {
  it('adopts a candidate only when faster than the best by more than the margin; each axis starts from the best so far; losers are disposed, the start never', async () => {
    const start: KernelChoice = { vectorWorkgroup: 64 };
    const times = {
      [choiceKey(start)]: 10,
      [choiceKey({ vectorWorkgroup: 128 })]: 8,
      // 1 % faster than 8: within the 2 % margin, not adopted
      [choiceKey({ vectorWorkgroup: 256 })]: 7.92,
      // the second axis is built on the best of the first (128), not on the start
      [choiceKey({ vectorWorkgroup: 128, gateStep: 'split' })]: 5,
    };
    const { runner, live, disposed } = scriptedRunner(times);
    const axes: Axis[] = [
      { name: 'vw', candidates: (b) => [64, 128, 256].map((n) => ({ ...b, vectorWorkgroup: n })) },
      { name: 'gate', candidates: (b) => [{ ...b, gateStep: 'split' as const }] },
    ];
    const { programs, report } = await searchKernelChoices(
      runner,
      { choice: start, programs: choiceKey(start) },
      axes,
      fast,
    );
    expect(report.choice).toEqual({ vectorWorkgroup: 128, gateStep: 'split' });
    expect(programs).toBe(choiceKey(report.choice));
    expect(report.stepMs).toBe(5);
    expect(report.initial).toEqual({ choice: start, stepMs: 10 });
    // the start's own value is not tried again
    expect(report.tried.map((t) => [choiceKey(t.choice), t.stepMs, t.againstMs, t.adopted])).toEqual([
      [choiceKey({ vectorWorkgroup: 128 }), 8, 10, true],
      [choiceKey({ vectorWorkgroup: 256 }), 7.92, 8, false],
      [choiceKey({ vectorWorkgroup: 128, gateStep: 'split' }), 5, 8, true],
    ]);
    expect([...live]).toEqual([choiceKey(report.choice)]);
    expect(disposed).toEqual([choiceKey({ vectorWorkgroup: 256 }), choiceKey({ vectorWorkgroup: 128 })]);
    expect(disposed).not.toContain(choiceKey(start));
  });

  it("keeps the model's own choice when the last alternation does not confirm the one found (noise carried it past the margin)", async () => {
    const start: KernelChoice = { vectorWorkgroup: 64 };
    const found = { vectorWorkgroup: 128 };
    // found measures 8 against 10 while searched, then 10 against 9.9 in the final alternation
    const seq: Record<string, number[]> = {
      [choiceKey(start)]: [10, 10, 10, 10, 9.9, 9.9],
      [choiceKey(found)]: [8, 8, 10, 10],
    };
    const live = new Set<string>();
    const runner: ChoiceRunner<string> = {
      build: async (c) => (live.add(choiceKey(c)), choiceKey(c)),
      time: async (p, steps) => ((seq[p]!.shift() ?? 10) * steps) / 1000,
      labels: (p) => [p],
      dispose: (p) => live.delete(p),
    };
    const { programs, report } = await searchKernelChoices(
      runner,
      { choice: start, programs: choiceKey(start) },
      [{ name: 'vw', candidates: (b) => [{ ...b, ...found }] }],
      { ...fast, repeats: 2 },
    );
    expect(report.tried.map((t) => [t.stepMs, t.againstMs, t.adopted])).toEqual([[8, 10, true]]);
    expect(report.choice).toEqual(start);
    expect(programs).toBe(choiceKey(start));
    expect(report.stepMs).toBe(9.9);
    expect(report.initial.stepMs).toBe(9.9);
    expect([...live]).toEqual([]);
  });

  it('skips untimed a same-launches candidate (the option applies nowhere); reports a rejected one with its reason; reports progress', async () => {
    const start: KernelChoice = { gateStep: 'fused' };
    const split = { gateStep: 'split' as const };
    const chunked = { gateStep: 'chunked' as const };
    const { runner, live, timed } = scriptedRunner(
      { [choiceKey(start)]: 10, [choiceKey(split)]: 1 },
      { [choiceKey(start)]: ['a', 'b'], [choiceKey(split)]: ['a', 'b'] },
      new Set([choiceKey(chunked)]),
    );
    const seen: number[] = [];
    const { report } = await searchKernelChoices(
      runner,
      { choice: start, programs: choiceKey(start) },
      [{ name: 'gate', candidates: () => [split, chunked], sameLaunchesAreSame: true }],
      { ...fast, onProgress: (e) => seen.push(e.done) },
    );
    expect(report.choice).toEqual(start);
    expect(report.tried).toEqual([
      {
        choice: chunked,
        stepMs: null,
        againstMs: null,
        rejected: `no ${choiceKey(chunked)}`,
        adopted: false,
      },
    ]);
    expect(seen).toEqual([1]);
    expect(timed).not.toContain(choiceKey(split));
    expect([...live]).toEqual([]);
  });

  it('an abort disposes every program it built, the best so far included, and throws E_ABORTED', async () => {
    const start: KernelChoice = { vectorWorkgroup: 64 };
    const { runner, live } = scriptedRunner({
      [choiceKey(start)]: 10,
      [choiceKey({ vectorWorkgroup: 128 })]: 5,
      [choiceKey({ vectorWorkgroup: 256 })]: 4,
    });
    const ac = new AbortController();
    const e = await searchKernelChoices(
      runner,
      { choice: start, programs: choiceKey(start) },
      [{ name: 'vw', candidates: (b) => [128, 256].map((n) => ({ ...b, vectorWorkgroup: n })) }],
      { ...fast, onProgress: () => ac.abort(new Error('enough')), signal: ac.signal },
    ).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(CalderaError);
    expect((e as CalderaError).code).toBe('E_ABORTED');
    expect([...live]).toEqual([]);
  });

  it('default axes: the other lane count unless packed-f16 products need 32; powers of two to the device limit; rows per lane only with 32 lanes; the other form of the mix except on CPU adapters', () => {
    const device = { maxWorkgroupInvocations: 512 } as Parameters<typeof defaultTuningAxes>[0];
    const axes = defaultTuningAxes(device, 5632);
    const [lanes, vw, rows, gate, batch, mix, local] = axes;
    expect(axes.map((a) => a.name)).toEqual([
      'lanes',
      'vectorWorkgroup',
      'rowsPerLane',
      'gateStep',
      'codeBatch',
      'writtenMix',
      'maxLocalHadamard',
    ]);
    // the other form of the mix (written out by default on a GPU); none on a CPU adapter
    expect(mix!.candidates({ writtenMix: true })).toEqual([{ writtenMix: false }]);
    expect(mix!.candidates({ writtenMix: false })).toEqual([{ writtenMix: true }]);
    expect(mix!.candidates({})).toEqual([{ writtenMix: false }]);
    expect(mix!.sameLaunchesAreSame).toBe(true);
    expect(defaultTuningAxes({ ...device, fallbackAdapter: true }, 5632)[5]!.candidates({})).toEqual([]);
    expect(batch!.candidates({ codeBatch: 8 })).toEqual([{ codeBatch: 16 }]);
    expect(batch!.candidates({ codeBatch: 4 })).toEqual([{ codeBatch: 8 }, { codeBatch: 16 }]);
    expect(batch!.sameLaunchesAreSame).toBe(true);
    // the widest vectors (5632) into the global-memory rotation; nothing to try once they are there, or when small
    expect(local!.candidates({ maxLocalHadamard: 8192 })).toEqual([{ maxLocalHadamard: 4096 }]);
    expect(local!.candidates({ maxLocalHadamard: 4096 })).toEqual([]);
    expect(defaultTuningAxes(device, 8192)[6]!.candidates({ maxLocalHadamard: 8192 })).toEqual([
      { maxLocalHadamard: 4096 },
    ]);
    expect(defaultTuningAxes(device, 1024)[6]!.candidates({ maxLocalHadamard: 8192 })).toEqual([]);
    expect(lanes!.candidates({ lanes: 32, rowsPerLane: 4 })).toEqual([{ lanes: 1 }]);
    expect(lanes!.candidates({ lanes: 32, f16: true })).toEqual([]);
    expect(vw!.candidates({ vectorWorkgroup: 256 }).map((c) => c.vectorWorkgroup)).toEqual([64, 128, 512]);
    expect(rows!.candidates({ lanes: 1 })).toEqual([]);
    expect(rows!.candidates({ lanes: 32, rowsPerLane: 2 })).toEqual([
      { lanes: 32 },
      { lanes: 32, rowsPerLane: 1 },
      { lanes: 32, rowsPerLane: 4 },
    ]);
    expect(gate!.candidates({}).map((c) => c.gateStep)).toEqual(['split', 'chunked']);
    expect(gate!.sameLaunchesAreSame).toBe(true);
    expect(rows!.sameLaunchesAreSame).toBe(true);
    // workgroup sizes and lanes appear in no label: always timed
    expect(vw!.sameLaunchesAreSame).toBeUndefined();
    expect(lanes!.sameLaunchesAreSame).toBeUndefined();
  });
});

async function loadTiny(options: WebGpuModelOptions = {}, device = dev!) {
  return (
    await loadModelFromBuffer(device, await tinyModelSource({ lmHeadStd: 0.5 }), {
      contextLength: 16,
      ...options,
    })
  ).model;
}

/**
 * What `model.tuneKernels` rejects with (or resolves to) when `interrupt` runs at its first progress event: two
 * candidate vector workgroups, then `more`.
 */
function tuneInterrupted(
  model: WebGpuModel,
  interrupt: () => void,
  more: KernelChoice[] = [],
): Promise<unknown> {
  const initial = model.kernelChoice;
  return model
    .tuneKernels({
      candidates: [{ ...initial, vectorWorkgroup: 128 }, { ...initial, vectorWorkgroup: 256 }, ...more],
      warmUpMs: 0,
      repeats: 1,
      onProgress: interrupt,
    })
    .catch((x: unknown) => x);
}

describe.skipIf(!dev)(gpuTitle('WebGpuModel.tuneKernels', reason), () => {
  it('times the candidates on the device and keeps the fastest: the sequence goes on as before, with the logits of a model loaded with the chosen options', async () => {
    const model = await loadTiny();
    const plain = await loadTiny();
    try {
      const prompt = [3, 1, 4, 1, 5];
      await model.stepBatch(prompt, 'none');
      await plain.stepBatch(prompt, 'none');
      const initial = model.kernelChoice;
      // every option resolved; JSON
      expect(JSON.parse(JSON.stringify(initial))).toEqual(initial);
      const candidates: KernelChoice[] = [
        { ...initial, vectorWorkgroup: initial.vectorWorkgroup === 128 ? 64 : 128 },
        { ...initial, lanes: initial.lanes === 1 ? 32 : 1 },
      ];
      const progress: number[] = [];
      const report = await model.tuneKernels({
        candidates,
        warmUpMs: 0,
        repeats: 1,
        onProgress: (e) => progress.push(e.done),
      });
      expect(progress).toEqual([1, 2]);
      expect(report.initial.choice).toEqual(initial);
      expect(report.tried.map((t) => t.choice)).toEqual(candidates);
      for (const t of report.tried) {
        // both forms run here: timed, neither rejected
        expect(t.rejected).toBeUndefined();
        expect(t.stepMs).toBeGreaterThan(0);
        expect(t.againstMs).toBeGreaterThan(0);
      }
      // the last candidate adopted, or the model's own where the final alternation did not confirm it
      const adopted = report.tried.filter((t) => t.adopted).at(-1)?.choice;
      expect([initial, ...(adopted ? [adopted] : [])]).toContainEqual(report.choice);
      expect(model.kernelChoice).toEqual(report.choice);
      expect(report.stepMs).toBeGreaterThan(0);
      // the sequence is unchanged: the next tokens' logits are the untuned model's (within f32 rounding: the
      // chosen kernels may sum in another order; the scale of these logits is ~1)
      expect(model.length).toBe(prompt.length);
      expect(model.tokens).toEqual(prompt);
      const next = await model.stepBatch([2, 6], 'all');
      const want = await plain.stepBatch([2, 6], 'all');
      for (let i = 0; i < want.length; i++) expect(Math.abs(next[i]! - want[i]!)).toBeLessThan(1e-4);
      // a model loaded with the reported choice computes the same, to the bit, from the start (the tuned model's
      // cache of the prompt came from its first kernels, whose f32 sums may differ in the last bits)
      const again = await loadTiny(report.choice);
      try {
        expect(again.kernelChoice).toEqual(report.choice);
        expect(again.launchLabels).toEqual(model.launchLabels);
        model.reset();
        for (const m of [model, again]) await m.stepBatch([...prompt, 2, 6], 'none');
        expect(await again.step(7, 'logits')).toEqual(await model.step(7, 'logits'));
      } finally {
        again.dispose();
      }
    } finally {
      model.dispose();
      plain.dispose();
    }
  });

  it('the default search tries the axes that apply and skips the gate-step forms where the model has no such step', async () => {
    const model = await loadTiny();
    try {
      const report = await model.tuneKernels({ warmUpMs: 0, repeats: 1 });
      const keys = report.tried.map((t) =>
        Object.keys(t.choice).filter(
          (k) =>
            (t.choice as Record<string, unknown>)[k] !==
            (report.initial.choice as Record<string, unknown>)[k],
        ),
      );
      // this model's MLP (48 wide) has no gate step in two launches: those forms record the same launches, untimed
      expect(report.tried.some((t) => t.choice.gateStep !== undefined && t.choice.gateStep !== 'fused')).toBe(
        false,
      );
      expect(keys.flat()).toContain('vectorWorkgroup');
      expect(model.kernelChoice).toEqual(report.choice);
      expect(await model.step(1, 'argmax')).toBeGreaterThanOrEqual(0);
    } finally {
      model.dispose();
    }
  });

  it('a device lost while tuning ends it with E_DEVICE (the device destroyed after the first candidate)', async () => {
    const own = await ownTestDevice();
    const model = await loadTiny({}, own!);
    const e = await tuneInterrupted(model, () => own!.dispose());
    expect(e).toBeInstanceOf(CalderaError);
    expect((e as CalderaError).code).toBe('E_DEVICE');
    model.dispose();
  });

  it('dispose() while tuning ends it with E_VALUE and leaves no buffer alive (it tuned on, resolved, and could keep a candidate)', async () => {
    const own = (await ownTestDevice())!;
    // every buffer made on this device from here on, until destroyed
    const live = new Set<GPUBuffer>();
    const d = own.device;
    const create = d.createBuffer.bind(d);
    d.createBuffer = (desc: GPUBufferDescriptor) => {
      const b = create(desc);
      live.add(b);
      const destroy = b.destroy.bind(b);
      b.destroy = () => {
        live.delete(b);
        destroy();
      };
      return b;
    };
    try {
      const model = await loadTiny({}, own);
      const e = await tuneInterrupted(model, () => model.dispose(), [
        { ...model.kernelChoice, lanes: model.kernelChoice.lanes === 1 ? 32 : 1 },
      ]);
      expect(e).toBeInstanceOf(CalderaError);
      expect((e as CalderaError).code).toBe('E_VALUE');
      expect((e as Error).message).toMatch(/disposed while its kernels were tuned/);
      expect(live.size).toBe(0);
    } finally {
      own.dispose();
    }
  });

  it('checks: E_VALUE for a candidate the loader would refuse (naming it), bad numbers, a full KV cache, a call while it runs; E_ABORTED leaves the choice as it was', async () => {
    const model = await loadTiny({ contextLength: 4 });
    try {
      const initial = model.kernelChoice;
      const fails = async (p: Promise<unknown>, code: string, message: RegExp) => {
        const e = await p.catch((x: unknown) => x);
        expect(e).toBeInstanceOf(CalderaError);
        expect((e as CalderaError).code).toBe(code);
        expect((e as CalderaError).message).toMatch(message);
      };
      await fails(
        model.tuneKernels({ candidates: [{}, { vectorWorkgroup: 100 }] }),
        'E_VALUE',
        /candidates\[1\]: vectorWorkgroup/,
      );
      await fails(
        model.tuneKernels({ candidates: [{ gateStep: 'twice' as 'split' }] }),
        'E_VALUE',
        /candidates\[0\]: gateStep/,
      );
      // a key that is no kernel choice: tried as the choice without it before
      await fails(
        model.tuneKernels({ candidates: [{ vectorWorkgrup: 128 } as never] }),
        'E_VALUE',
        /candidates\[0\]: 'vectorWorkgrup' is no kernel choice \(lanes, /,
      );
      await fails(model.tuneKernels({ repeats: 0 }), 'E_VALUE', /repeats/);
      await fails(model.tuneKernels({ margin: 1 }), 'E_VALUE', /margin/);
      await fails(model.tuneKernels({ onProgress: 3 as never }), 'E_VALUE', /onProgress/);

      const ac = new AbortController();
      const running = model.tuneKernels({
        candidates: [
          { ...initial, vectorWorkgroup: 128 },
          { ...initial, vectorWorkgroup: 256 },
        ],
        warmUpMs: 0,
        repeats: 1,
        signal: ac.signal,
        onProgress: () => ac.abort(new Error('stop')),
      });
      await fails(model.step(1, 'argmax'), 'E_VALUE', /while a step is running/);
      await fails(running, 'E_ABORTED', /tuning kernels/);
      expect(model.kernelChoice).toEqual(initial);

      await model.stepBatch([1, 2, 3, 4], 'none');
      await fails(model.tuneKernels(), 'E_VALUE', /KV cache is full/);
      model.truncate(3);
      await model.tuneKernels({ candidates: [], warmUpMs: 0 });
      expect(model.length).toBe(3);
    } finally {
      model.dispose();
    }
  });
});
