import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isCalderaError, Rng } from '@caldera/core';
import { describe, expect, it } from 'vitest';
import { SCOPE_TEST_CONFIG } from '../testing/train-scope.js';
import { initTrainParams, lossAndGrad, type TrainConfig } from './model.js';
import { Trainer, type Objective } from './trainer.js';

const cfg: TrainConfig = {
  hiddenSize: 16,
  intermediateSize: 32,
  numLayers: 2,
  numHeads: 2,
  numKvHeads: 1,
  headDim: 8,
  vocabSize: 13,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
};
const rng = new Rng(9);
// A token stream with structure (a repeating pattern with noise) so the loss moves.
const data = Array.from({ length: 400 }, (_, i) => (rng.uniform() < 0.9 ? (i * 5) % 13 : rng.int(13)));
const opts = { seqLen: 16, batch: 2, lr: 1e-2, warmup: 2, totalSteps: 12, seed: 4 };

/** The training state `bytes` with its JSON header replaced by `h` (the tensors after it unchanged). */
function withStateHeader(bytes: Uint8Array, h: unknown): Uint8Array {
  const n = new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true);
  const json = new TextEncoder().encode(JSON.stringify(h));
  const out = new Uint8Array(4 + json.length + bytes.length - 4 - n);
  new DataView(out.buffer).setUint32(0, json.length, true);
  out.set(json, 4);
  out.set(bytes.subarray(4 + n), 4 + json.length);
  return out;
}

describe('Trainer', () => {
  it('an option given as undefined takes its default (lr undefined made every parameter NaN; betas a TypeError)', () => {
    const base = { seqLen: 16, totalSteps: 12, seed: 4 };
    const given = new Trainer(cfg, initTrainParams(cfg, new Rng(1)), data, {
      ...base,
      lr: undefined,
      warmup: undefined,
      clip: undefined,
      betas: undefined,
      lrScale: undefined,
      weightDecay: undefined,
      batch: undefined,
    });
    const plain = new Trainer(cfg, initTrainParams(cfg, new Rng(1)), data, base);
    const a = Array.from({ length: 3 }, () => given.step());
    const b = Array.from({ length: 3 }, () => plain.step());
    expect(a.map((r) => r.loss)).toEqual(b.map((r) => r.loss));
    expect(a.map((r) => r.lr)).toEqual(b.map((r) => r.lr));
    expect(a.every((r) => Number.isFinite(r.loss) && r.loss > 0)).toBe(true);
  });

  it('resume after save/load gives the same losses as an uninterrupted run', async () => {
    const a = new Trainer(cfg, initTrainParams(cfg, new Rng(1)), data, opts);
    const full = Array.from({ length: 8 }, () => a.step().loss);

    const b = new Trainer(cfg, initTrainParams(cfg, new Rng(1)), data, opts);
    const first = Array.from({ length: 4 }, () => b.step().loss);
    const dir = await mkdtemp(join(tmpdir(), 'caldera-train-'));
    try {
      await b.save(join(dir, 'state.bin'));
      // resuming with the run's own options (activation checkpointing may change: it changes no result)
      // save's options: extra state comes back as `restored`; an aborted signal writes nothing (E_ABORTED)
      await b.save(join(dir, 'extra.bin'), { info: { note: 1 }, tensors: { best: Float32Array.of(1, 2) } });
      const e = await Trainer.load(join(dir, 'extra.bin'), cfg, data, undefined, { expect: opts });
      expect(e.restored).toEqual({ info: { note: 1 }, tensors: { best: Float32Array.of(1, 2) } });
      const ac = new AbortController();
      ac.abort(new Error('stop'));
      await expect(b.save(join(dir, 'aborted.bin'), { signal: ac.signal })).rejects.toThrow(/E_ABORTED/);
      await expect(stat(join(dir, 'aborted.bin'))).rejects.toThrow(/ENOENT/);
      // the old positional signal is refused, not silently ignored
      await expect(b.save(join(dir, 'old.bin'), ac.signal as never)).rejects.toThrow(
        /E_VALUE: Trainer.save: options must be an object such as \{ signal \}, got an AbortSignal/,
      );
      const c = await Trainer.load(join(dir, 'state.bin'), cfg, data, undefined, {
        expect: { ...opts, checkpoint: true },
      });
      expect(c.stepCount).toBe(4);
      expect(c.options.checkpoint).toBe(true);
      const rest = Array.from({ length: 4 }, () => c.step().loss);
      // Same f32 arithmetic in the same order on restored f32 state: identical, not just close.
      expect([...first, ...rest]).toEqual(full);
      // other options, data or model would mix two runs: refused, naming what differs
      const state = join(dir, 'state.bin');
      await expect(
        Trainer.load(state, cfg, data, undefined, { expect: { ...opts, lr: 2e-2 }, labels: { lr: '--lr' } }),
      ).rejects.toThrow(/E_VALUE.*other settings: --lr \(0\.01 then, 0\.02 now\)/);
      await expect(
        Trainer.load(state, cfg, data, undefined, { expect: { ...opts, totalSteps: 20 } }),
      ).rejects.toThrow(/E_VALUE.*totalSteps \(12 then, 20 now\)/);
      const other = data.map((t, i) => (i === 7 ? (t + 1) % 13 : t));
      // the text's sha256, cut inside its quotes (one was left open)
      await expect(Trainer.load(state, cfg, other, undefined, { expect: opts })).rejects.toThrow(
        /E_VALUE.*data \("[0-9a-f]{11}…" then, "[0-9a-f]{11}…" now\)/,
      );
      await expect(
        Trainer.load(state, { ...cfg, hiddenSize: cfg.hiddenSize * 2 }, data, undefined, { expect: opts }),
      ).rejects.toThrow(/E_VALUE.*config\.hiddenSize \(16 then, 32 now\)/);
      // configs are compared with their defaults filled in: the saved run's config left the optional fields out, and
      // one naming them at their defaults (as a parsed config.json does, with fields training does not read) resumes
      const spelledOut = { ...cfg, tieWordEmbeddings: true, attentionBias: false, ropeScaling: null };
      const parsed = { ...spelledOut, architecture: 'LlamaForCausalLM' as const, maxPositions: 2048 };
      expect((await Trainer.load(state, parsed, data, undefined, { expect: opts })).stepCount).toBe(4);
      await expect(
        Trainer.load(state, { ...cfg, tieWordEmbeddings: false }, data, undefined, { expect: opts }),
      ).rejects.toThrow(/E_VALUE.*config\.tieWordEmbeddings \(true then, false now\)/);
      // a state saved from the spelled-out config resumes under the bare one; one of an untied model does not
      // (before, the comparison read only the resuming side's fields, and a bare config resumed an untied model's run)
      const t = new Trainer(parsed, initTrainParams(cfg, new Rng(1)), data, opts);
      t.step();
      await t.save(join(dir, 'parsed.bin'));
      expect(
        (await Trainer.load(join(dir, 'parsed.bin'), cfg, data, undefined, { expect: opts })).stepCount,
      ).toBe(1);
      const untied = { ...cfg, tieWordEmbeddings: false };
      const u = new Trainer(untied, initTrainParams(untied, new Rng(1)), data, opts);
      await u.save(join(dir, 'untied.bin'));
      await expect(
        Trainer.load(join(dir, 'untied.bin'), cfg, data, undefined, { expect: opts }),
      ).rejects.toThrow(/E_VALUE.*config\.tieWordEmbeddings \(false then, true now\)/);
      // with q/k/v biases, Llama's o_proj has one too: the architecture counts there, and only there
      const biased = { ...cfg, attentionBias: true, architecture: 'LlamaForCausalLM' as const };
      const v = new Trainer(biased, initTrainParams(biased, new Rng(1)), data, opts);
      await v.save(join(dir, 'biased.bin'));
      await expect(
        Trainer.load(join(dir, 'biased.bin'), { ...cfg, attentionBias: true }, data, undefined, {
          expect: opts,
        }),
      ).rejects.toThrow(/E_VALUE.*config\.architecture \("LlamaForCausalLM" then, null now\)/);
      const mistral = { ...parsed, architecture: 'MistralForCausalLM' as const };
      expect(
        (await Trainer.load(join(dir, 'parsed.bin'), mistral, data, undefined, { expect: opts })).stepCount,
      ).toBe(1);
      // the caller's own settings (`also`, given the saved extra info) are refused in the same error
      const seen: unknown[] = [];
      await expect(
        Trainer.load(state, cfg, data, undefined, {
          expect: { ...opts, lr: 2e-2 },
          what: 'a test run',
          also: (info) => (seen.push(info), ['mine (1 then, 2 now)']),
        }),
      ).rejects.toThrow(
        /state of a test run with other settings: lr \(0\.01 then, 0\.02 now\); mine \(1 then, 2 now\)/,
      );
      expect(seen).toEqual([undefined]); // saved without extra info
      expect(
        (await Trainer.load(state, cfg, data, undefined, { expect: opts, also: () => [] })).stepCount,
      ).toBe(4);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    expect(full[7]!).toBeLessThan(full[0]!);
  });

  it("compares SmolLM3's blocks without RoPE, and resumes a state saved before RoPE scalings had a type", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-trainer-rope-'));
    try {
      // a state of a model with a NoPE block does not resume as the same-shaped Llama, nor the other way round
      // (nopeLayers left out where empty: the comparison, which reads the resuming side's keys, missed the first)
      const smol = { ...cfg, architecture: 'SmolLM3ForCausalLM' as const, nopeLayers: [1] };
      await new Trainer(smol, initTrainParams(smol, new Rng(1)), data, opts).save(join(dir, 'smol.bin'));
      await expect(
        Trainer.load(join(dir, 'smol.bin'), cfg, data, undefined, { expect: opts }),
      ).rejects.toThrow(/E_VALUE.*config\.nopeLayers \(\[1\] then, \[\] now\)/);
      await new Trainer(cfg, initTrainParams(cfg, new Rng(1)), data, opts).save(join(dir, 'llama.bin'));
      await expect(
        Trainer.load(join(dir, 'llama.bin'), smol, data, undefined, { expect: opts }),
      ).rejects.toThrow(/E_VALUE.*config\.nopeLayers \(\[\] then, \[1\] now\)/);
      expect(
        (await Trainer.load(join(dir, 'smol.bin'), smol, data, undefined, { expect: opts })).stepCount,
      ).toBe(0);
      // Llama 3 scaling as states before 2026-12-07 recorded it (no `type`): the same settings, so it resumes
      const scaled = SCOPE_TEST_CONFIG;
      const t = new Trainer(scaled, initTrainParams(scaled, new Rng(1)), data, opts);
      t.step();
      const path = join(dir, 'scaled.bin');
      await t.save(path);
      const bytes = new Uint8Array(await readFile(path));
      const n = new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true);
      const header = JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + n))) as {
        config: { ropeScaling: Record<string, unknown> };
      };
      expect(header.config.ropeScaling.type).toBe('llama3');
      delete header.config.ropeScaling.type;
      await writeFile(join(dir, 'old.bin'), withStateHeader(bytes, header));
      expect(
        (await Trainer.load(join(dir, 'old.bin'), scaled, data, undefined, { expect: opts })).stepCount,
      ).toBe(1);
      // and another scaling still differs
      await expect(
        Trainer.load(
          join(dir, 'old.bin'),
          { ...scaled, ropeScaling: { type: 'linear', factor: 8 } },
          data,
          undefined,
          {
            expect: opts,
          },
        ),
      ).rejects.toThrow(/E_VALUE.*config\.ropeScaling/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses a state file that is not a whole training state at load, E_FORMAT naming the file and the tensor', async () => {
    // before: an empty file was a RangeError, a garbage header a SyntaxError, and a state cut short loaded and then
    // failed in the first step with "adamWStep: param 128, grad 128, moments 128/78 differ"
    const dir = await mkdtemp(join(tmpdir(), 'caldera-train-'));
    const rejects = async (bytes: Uint8Array, message: RegExp, code = 'E_FORMAT', c: TrainConfig = cfg) => {
      const file = join(dir, 'bad.bin');
      await writeFile(file, bytes);
      let caught: unknown;
      try {
        await Trainer.load(file, c, data);
      } catch (e) {
        caught = e;
      }
      expect(isCalderaError(caught, code as never), String(caught)).toBe(true);
      expect((caught as Error).message).toContain(file);
      expect((caught as Error).message).toMatch(message);
    };
    try {
      const t = new Trainer(cfg, initTrainParams(cfg, new Rng(1)), data, opts);
      t.step();
      const good = join(dir, 'state.bin');
      await t.save(good);
      const bytes = new Uint8Array(await readFile(good));
      const headerBytes = new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true);
      const withHeader = (h: unknown) => withStateHeader(bytes, h);
      const header = JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + headerBytes))) as {
        tensors: Record<string, [number, number]>;
      };

      await rejects(new Uint8Array(0), /not a Caldera training state \(0 bytes, too short/);
      await rejects(Uint8Array.of(5, 0, 0, 0, 0x7b, 0x22, 0x61, 0x22, 0x3a), /header is not valid JSON/);
      await rejects(Uint8Array.of(0xff, 0xff, 0, 0, 0x7b), /a 65535-byte header does not fit in its 5 bytes/);
      await rejects(withHeader(null), /: not a Caldera training state$/);
      await rejects(withHeader({ ...header, step: -1 }), /step -1 is not a count/);
      await rejects(
        withHeader({ ...header, tensors: { ...header.tensors, x: [0, 'a'] } }),
        /tensor x has a malformed entry/,
      );
      // cut short: the last tensor (the second moment of the last parameter) runs past the end
      const last = Object.keys(header.tensors).pop()!;
      expect(last).toMatch(/\.v$/);
      await rejects(
        bytes.subarray(0, bytes.length - 200),
        new RegExp(
          `tensor ${last.replace(/\./g, '\\.')} \\(floats \\d+…\\d+\\) runs past the end of the file`,
        ),
      );
      // a moment of another size than its parameter
      const p = 'model.norm.weight';
      const [off] = header.tensors[`${p}.m`]!;
      await rejects(
        withHeader({ ...header, tensors: { ...header.tensors, [`${p}.m`]: [off, 3] } }),
        /tensor model\.norm\.weight\.m has 3 values, its parameter model\.norm\.weight 16/,
      );
      // a parameter of another size than the config's (default objective: the whole model)
      const [eOff] = header.tensors['model.norm.weight']!;
      await rejects(
        withHeader({
          ...header,
          tensors: {
            ...header.tensors,
            'model.norm.weight': [eOff, 8],
            'model.norm.weight.m': [eOff, 8],
            'model.norm.weight.v': [eOff, 8],
          },
        }),
        /tensor model\.norm\.weight has 8 values, the model config's \[16\] needs 16/,
        'E_SHAPE',
      );
      await rejects(bytes, /tensor lm_head\.weight is missing/, 'E_MISSING', {
        ...cfg,
        tieWordEmbeddings: false,
      });
      // the intact state still loads and steps
      expect((await Trainer.load(good, cfg, data)).step().step).toBe(2);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('stepAsync is step with the event loop turning after each sequence; an aborted step is dropped whole', async () => {
    const batch = 4;
    const o = { ...opts, batch };
    const a = new Trainer(cfg, initTrainParams(cfg, new Rng(1)), data, o);
    const sync = Array.from({ length: 3 }, () => a.step());

    // an objective that counts its sequences and lets a callback abort the signal while the second step is under way,
    // as a signal handler would. (Queued with setImmediate, it runs in the turn after this sequence, before the step
    // looks: a setTimeout(0) waits at least 1 ms, which that turn may not last, and CI once saw it a sequence later.)
    const ac = new AbortController();
    let calls = 0;
    let timersRun = 0;
    const objective: Objective = (p, t, g, grad, into) => {
      calls++;
      if (calls === batch + 2) setImmediate(() => ac.abort(new Error('user stop')));
      if (calls > batch + 1) setImmediate(() => timersRun++);
      return lossAndGrad(p, cfg, t, g, grad, undefined, into);
    };
    const b = new Trainer(cfg, initTrainParams(cfg, new Rng(1)), data, o, objective);
    expect(await b.stepAsync({ signal: ac.signal })).toEqual(sync[0]);
    const before = Object.fromEntries(Object.entries(b.params).map(([k, v]) => [k, Float32Array.from(v)]));
    const err = await b.stepAsync({ signal: ac.signal }).catch((e: unknown) => e);
    expect(isCalderaError(err) && err.code).toBe('E_ABORTED');
    expect((err as Error).message).toMatch(/training step was aborted/);
    expect(((err as Error).cause as Error).message).toBe('user stop');
    // the abort was seen inside the step (after its second sequence, whose turn ran the timer), not after it
    expect(calls).toBe(batch + 2);
    expect(timersRun).toBeGreaterThan(0);
    expect(b.stepCount).toBe(1);
    for (const [k, v] of Object.entries(b.params)) expect(v, k).toEqual(before[k]);
    // the RNG was rewound: the next steps draw the same windows as the uninterrupted run, with the same results
    expect(await b.stepAsync()).toEqual(sync[1]);
    expect(b.step()).toEqual(sync[2]);
    // an aborted signal fails before any work; a signal where the options go is refused
    await expect(b.stepAsync({ signal: ac.signal })).rejects.toThrow(/E_ABORTED/);
    expect(b.stepCount).toBe(3);
    await expect(b.stepAsync(ac.signal as never)).rejects.toThrow(
      /E_VALUE: Trainer.stepAsync: options must be/,
    );
  });

  it('rejects a token stream shorter than a window', () => {
    expect(() => new Trainer(cfg, initTrainParams(cfg, new Rng(1)), [1, 2, 3], opts)).toThrow(/shorter/);
  });

  it('refuses options outside their range as E_VALUE naming them (a NaN lr failed inside gemm, a negative one climbed)', () => {
    const params = initTrainParams(cfg, new Rng(1));
    for (const [bad, message] of [
      [{ seqLen: 0 }, 'seqLen must be a positive integer, got 0'],
      [{ batch: 1.5 }, 'batch must be a positive integer, got 1.5'],
      [{ lr: NaN }, 'lr must be a number > 0, got NaN'],
      [{ lr: -1 }, 'lr must be a number > 0, got -1'],
      [{ warmup: -5 }, 'warmup must be a non-negative integer, got -5'],
      [{ totalSteps: 2.5 }, 'totalSteps must be a positive integer, got 2.5'],
      [{ minLrRatio: 2 }, 'minLrRatio must be a number in [0, 1], got 2'],
      [{ weightDecay: -1 }, 'weightDecay must be a number ≥ 0, got -1'],
      [{ clip: 0 }, 'clip must be a number > 0, got 0'],
      [{ seed: -1 }, 'seed must be an integer in [0, 4294967295], got -1'],
      [{ lr: '0.1' }, "lr must be a number > 0, got '0.1'"],
      [{ betas: [0.9, 1] }, 'betas must be two numbers in [0, 1), got'],
    ] as const)
      expect(() => new Trainer(cfg, params, data, { ...opts, ...bad } as never)).toThrow(
        `E_VALUE: Trainer: ${message}`,
      );
    expect(() => new Trainer(cfg, params, data, null as never)).not.toThrow(); // null options are none
  });

  it('decays matrices, not norms or biases (weight decay is the only difference between two runs)', () => {
    const c = SCOPE_TEST_CONFIG;
    const run = (weightDecay: number) => {
      const t = new Trainer(c, initTrainParams(c, new Rng(2)), data, { ...opts, weightDecay });
      t.step();
      return t.params;
    };
    const plain = run(0);
    const decayed = run(0.5);
    for (const [name, p] of Object.entries(plain)) {
      const vector = name.endsWith('norm.weight') || name.endsWith('.bias');
      if (vector) expect(Array.from(decayed[name]!), name).toEqual(Array.from(p));
      else expect(Array.from(decayed[name]!), name).not.toEqual(Array.from(p));
    }
    expect(Object.keys(plain).filter((k) => k.endsWith('.bias')).length).toBe(8);
  });

  it('decides decay by name: a rank-1 LoRA factor of hidden length is decayed, sign vectors never (by length before)', () => {
    const d = cfg.hiddenSize;
    const grads = (n: number) => new Float32Array(n).fill(0); // no gradient: weight decay is all that moves them
    const params = {
      'x.caldera.L_ft': new Float32Array(d).fill(1), // o_proj's L_ft at rank 1: hidden-size long
      'x.caldera.SU': new Float32Array(d).fill(1),
      'x.caldera.SV': new Float32Array(2 * d).fill(1),
    };
    const objective: Objective = (p) => ({
      loss: 0,
      count: 1,
      grads: Object.fromEntries(Object.keys(p).map((k) => [k, grads(p[k]!.length)])),
    });
    const t = new Trainer(cfg, params, data, { ...opts, weightDecay: 0.5, warmup: 0 }, objective);
    t.step();
    expect(params['x.caldera.L_ft'][0]).toBeLessThan(1);
    expect(Array.from(params['x.caldera.SU'])).toEqual(new Array(d).fill(1));
    expect(Array.from(params['x.caldera.SV'])).toEqual(new Array(2 * d).fill(1));
  });
});
