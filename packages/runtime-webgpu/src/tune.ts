/**
 * Choosing kernel forms by timing them on the device at hand ({@link WebGpuModel.tuneKernels}): which input-step
 * workgroup size, rows per lane or gate-step form is fastest differs between GPUs (and from CPU adapters), and only a
 * measurement on the device says which. The search is a coordinate descent: from the model's choice, each axis
 * (one option) in turn tries its other values, each timed against the best so far in alternation, and keeps a value
 * that is faster by more than a margin. Pure over a {@link ChoiceRunner}; the model supplies the GPU side.
 */
import { assertCallbacks, CalderaError, shownValue, throwIfAborted } from '@caldera/core';
import type { CalderaDevice } from './device.js';
import { encodeDispatches, Kernels, type Dispatch } from './kernels/index.js';
import type { KernelChoice, WebGpuModelOptions } from './model.js';

/** The keys of {@link KernelChoice}. */
export const KERNEL_CHOICE_KEYS = [
  'lanes',
  'maxLocalHadamard',
  'f16',
  'rowsPerLane',
  'vectorWorkgroup',
  'gateStep',
  'codeBatch',
  'writtenMix',
] as const satisfies readonly (keyof KernelChoice)[];

/** The kernel choice in `options`: its {@link KERNEL_CHOICE_KEYS} that are set (unchecked: Kernels checks them). */
export function kernelChoiceOf(options: WebGpuModelOptions): KernelChoice {
  const out: Record<string, unknown> = {};
  for (const key of KERNEL_CHOICE_KEYS) if (options[key] !== undefined) out[key] = options[key];
  return out as KernelChoice;
}

/** Options of {@link WebGpuModel.tuneKernels}. */
export interface TuneOptions {
  /**
   * The choices to time, each against the best so far (the model's own first); default: a coordinate search over
   * lanes per row, the one-workgroup kernels' invocations, rows per lane, the gate step's form, the code loads per
   * batch, the written-out or table mix and the global-memory rotation for the widest vectors (`defaultTuningAxes`),
   * which leaves `f16` (a precision choice) as it is. Each candidate is a whole choice: an option it leaves unset
   * takes the loader's default, not the model's current value (spread `model.kernelChoice` into it to vary one
   * option). Each is checked as the loader checks these options (`E_VALUE`) before anything runs.
   */
  candidates?: readonly KernelChoice[];
  /** Milliseconds the model's own choice runs untimed first, so that a GPU leaves its idle clocks. Default 500. */
  warmUpMs?: number;
  /** Each timing runs enough decode steps to take at least this long (ms). Default 50. */
  minTimingMs?: number;
  /** Timings of a candidate and of the best so far, alternating; the least of each is compared. Default 3. */
  repeats?: number;
  /** A candidate replaces the best only when its step time is less than `(1 − margin)` times the best's. Default 0.02. */
  margin?: number;
  /** Checked between timings: `E_ABORTED`, the model left with the choice it had. */
  signal?: AbortSignal;
  /** Called after each candidate is timed (or rejected). */
  onProgress?: (e: TuneProgress) => void;
}

/** One candidate's outcome, as {@link TuneOptions.onProgress} reports it and {@link TuneReport.tried} lists it. */
export interface TunedCandidate {
  choice: KernelChoice;
  /** Its decode step time in milliseconds (the least of its timings); null when rejected. */
  stepMs: number | null;
  /** The best choice's step time in the same alternation. */
  againstMs: number | null;
  /** Why it was not timed: its launches failed on the device, or its logits disagreed with the model's. */
  rejected?: string;
  /** Whether it became the best. */
  adopted: boolean;
}

/** Progress of a tuning run. */
export interface TuneProgress extends TunedCandidate {
  /** Candidates done so far (this one included). */
  done: number;
}

/** What {@link WebGpuModel.tuneKernels} found. */
export interface TuneReport {
  /** The choice the model runs from now on: pass it to the loader (it is JSON) to start from it without tuning. */
  choice: KernelChoice;
  /**
   * Its decode step time (ms), timed last, in alternation with the model's choice before tuning: the choice the search
   * found is kept only when faster there by more than the margin, else the model keeps its own.
   */
  stepMs: number;
  /** The model's choice before tuning and its step time in that last alternation (the same when none was faster). */
  initial: { choice: KernelChoice; stepMs: number };
  /** Every candidate, in the order tried. */
  tried: TunedCandidate[];
  /** Decode steps per timing. */
  stepsPerTiming: number;
}

/** The GPU side of a search: programs built for a choice, checked, timed and destroyed. */
export interface ChoiceRunner<P> {
  /**
   * Programs for `choice`, built and run for one step: them, or why not (refused by the kernels, failed on the
   * device, or logits that disagree with the model's), having destroyed what it built.
   */
  build(choice: KernelChoice): Promise<P | { rejected: string }>;
  /** Seconds for `steps` decode steps of `p`, submitted together. */
  time(p: P, steps: number): Promise<number>;
  /** Launch labels of `p`'s decode step (a candidate with the same launches as the best is not timed; see {@link Axis}). */
  labels(p: P): readonly string[];
  dispose(p: P): void;
}

/**
 * One axis of the search: from the best choice so far, the candidates to try. With `sameLaunchesAreSame`, a candidate
 * whose decode step records the same launches as the best's computes the same (the option applies to no layer of
 * this model) and is skipped untimed.
 */
export interface Axis {
  name: string;
  candidates(best: KernelChoice): KernelChoice[];
  sameLaunchesAreSame?: boolean;
}

const GATE_STEPS = ['fused', 'split', 'chunked'] as const;

/**
 * The default axes, in search order: `lanes` (the other of 1 and 32, unless packed-f16 products need 32), then
 * `vectorWorkgroup` (every power of two from 64 to the device's limit, at most 1024), `rowsPerLane` (chosen per launch,
 * 1, 2, 4; with 32 lanes), `gateStep` (the three forms), `codeBatch` (8 and 16), `writtenMix` (the other form, except
 * on CPU fallback adapters; these four skipped untimed where they change no launch) and `maxLocalHadamard` below
 * `widest`, the model's widest rotated vector (padded), when that is over 1024: the largest power of two below it, so
 * that the widest vectors take the global-memory rotation (many workgroups, two or three launches) instead of one
 * workgroup each.
 */
export function defaultTuningAxes(dev: CalderaDevice, widest = 0): Axis[] {
  const most = Math.min(1024, dev.maxWorkgroupInvocations);
  const sizes: number[] = [];
  for (let n = 64; n <= most; n *= 2) sizes.push(n);
  const without = (c: KernelChoice, key: keyof KernelChoice): KernelChoice => {
    const out = { ...c };
    delete out[key];
    return out;
  };
  return [
    {
      name: 'lanes',
      candidates: (b) => (b.f16 ? [] : [{ ...without(b, 'rowsPerLane'), lanes: b.lanes === 1 ? 32 : 1 }]),
    },
    {
      name: 'vectorWorkgroup',
      candidates: (b) =>
        sizes.filter((n) => n !== b.vectorWorkgroup).map((n) => ({ ...b, vectorWorkgroup: n })),
    },
    {
      name: 'rowsPerLane',
      candidates: (b) =>
        b.lanes !== 32
          ? []
          : [
              without(b, 'rowsPerLane'),
              ...([1, 2, 4] as const).map((r) => ({ ...b, rowsPerLane: r })),
            ].filter((c) => c.rowsPerLane !== b.rowsPerLane),
      // the E8P launches' labels name their rows per lane (when more than one): a model without E8P layers, or whose
      // rows allow no other count, records the same launches
      sameLaunchesAreSame: true,
    },
    {
      name: 'gateStep',
      candidates: (b) =>
        GATE_STEPS.filter((f) => f !== (b.gateStep ?? 'fused')).map((f) => ({ ...b, gateStep: f })),
      sameLaunchesAreSame: true,
    },
    {
      // 8 code loads at a time against 16 (4 only when asked for: 8 against one was the H200's measured gain)
      name: 'codeBatch',
      candidates: (b) =>
        ([8, 16] as const).filter((n) => n !== (b.codeBatch ?? 8)).map((n) => ({ ...b, codeBatch: n })),
      // the launches it changes name it in their labels: a model without them records the same launches
      sameLaunchesAreSame: true,
    },
    {
      // the mix written out against read from the table; not on a CPU adapter, where it compiles about twice as slowly
      // and runs no faster (the default there is the table)
      name: 'writtenMix',
      candidates: (b) => (dev.fallbackAdapter ? [] : [{ ...b, writtenMix: b.writtenMix === false }]),
      // the launches it changes end their labels with ' table mix': a model without such orders records the same
      sameLaunchesAreSame: true,
    },
    {
      name: 'maxLocalHadamard',
      candidates: (b) => {
        const below = 2 ** Math.floor(Math.log2(widest - 1));
        return widest > 1024 && below < (b.maxLocalHadamard ?? Infinity)
          ? [{ ...b, maxLocalHadamard: below }]
          : [];
      },
      sameLaunchesAreSame: true,
    },
  ];
}

/** A key equal for equal choices (options in a fixed order; unset ones left out). */
export function choiceKey(c: KernelChoice): string {
  return KERNEL_CHOICE_KEYS.filter((k) => c[k] !== undefined)
    .map((k) => `${k}=${String(c[k])}`)
    .join(',');
}

/**
 * `E_VALUE` naming the option for tuning options outside their values, and for a candidate the kernels would refuse
 * on `dev` (checked as the loader checks them).
 */
export function checkTuneOptions(options: TuneOptions, dev: CalderaDevice): void {
  const fn = 'tuneKernels';
  const positive = (
    name: 'warmUpMs' | 'minTimingMs' | 'repeats' | 'margin',
    zeroOk: boolean,
    below?: number,
  ) => {
    const v = options[name];
    if (v === undefined) return;
    const ok =
      typeof v === 'number' &&
      Number.isFinite(v) &&
      (zeroOk ? v >= 0 : v > 0) &&
      (below === undefined || v < below) &&
      (name !== 'repeats' || Number.isInteger(v));
    if (!ok) throw new CalderaError('E_VALUE', `${fn}: ${name} out of range, got ${shownValue(v)}`);
  };
  positive('warmUpMs', true);
  positive('minTimingMs', true);
  positive('repeats', false);
  positive('margin', true, 1);
  assertCallbacks(options, fn, ['onProgress']);
  if (options.candidates !== undefined) {
    if (!Array.isArray(options.candidates))
      throw new CalderaError('E_VALUE', `${fn}: candidates must be an array of kernel choices`);
    options.candidates.forEach((c: unknown, i) => {
      if (typeof c !== 'object' || c === null)
        throw new CalderaError('E_VALUE', `${fn}: candidates[${i}] is not an object, got ${shownValue(c)}`);
      // a key that is no kernel choice (a typo) would be tried as the choice without it, silently
      const unknown = Object.keys(c).filter((k) => !(KERNEL_CHOICE_KEYS as readonly string[]).includes(k));
      if (unknown.length > 0)
        throw new CalderaError(
          'E_VALUE',
          `${fn}: candidates[${i}]: ${unknown.map((k) => `'${k}'`).join(', ')} is no kernel choice (${KERNEL_CHOICE_KEYS.join(', ')})`,
        );
      try {
        // the kernels' own checks (their constructor creates nothing on the device)
        new Kernels(dev, c as KernelChoice);
      } catch (e) {
        // the check's message without its code
        const message = (e as Error).message.replace(/^E_[A-Z_]+: /, '');
        throw new CalderaError('E_VALUE', `${fn}: candidates[${i}]: ${message}`, { cause: e });
      }
    });
  }
  throwIfAborted(options.signal, 'tuning kernels');
}

/**
 * Seconds from submitting `passes` repetitions of `list` (one command buffer) until the GPU has finished them: the
 * timing of the search, and of the benchmarks' roofline and decode profile.
 */
export async function submitSeconds(
  dev: CalderaDevice,
  list: readonly Dispatch[],
  passes: number,
): Promise<number> {
  const enc = dev.device.createCommandEncoder();
  for (let i = 0; i < passes; i++) encodeDispatches(enc, list);
  const t = performance.now();
  dev.device.queue.submit([enc.finish()]);
  await dev.device.queue.onSubmittedWorkDone();
  return (performance.now() - t) / 1000;
}

/**
 * The search: `start` (the model's choice and programs, never disposed here) is warmed up and timed, then each
 * candidate of each axis is built, checked and timed against the best so far. Returns the best (`start`'s programs,
 * or a candidate's, which the caller then owns) and the report; every other program built is disposed, and all of
 * them when it throws (an abort: `E_ABORTED`).
 */
export async function searchKernelChoices<P>(
  runner: ChoiceRunner<P>,
  start: { choice: KernelChoice; programs: P },
  axes: readonly Axis[],
  options: TuneOptions,
): Promise<{ programs: P; report: TuneReport }> {
  const { warmUpMs = 500, minTimingMs = 50, repeats = 3, margin = 0.02, signal } = options;
  const abortCheck = () => throwIfAborted(signal, 'tuning kernels');
  let best = start;
  const built: P[] = [];
  // a candidate's programs no longer needed: out of `built`, destroyed
  const release = (p: P) => {
    built.splice(built.indexOf(p), 1);
    runner.dispose(p);
  };
  try {
    const t0 = performance.now();
    do {
      abortCheck();
      await runner.time(start.programs, 1);
    } while (performance.now() - t0 < warmUpMs);
    abortCheck();
    const once = (await runner.time(start.programs, 1)) * 1000;
    const steps = Math.max(1, Math.min(1000, Math.ceil(minTimingMs / Math.max(once, 1e-3))));
    const stepMs = async (p: P) => ((await runner.time(p, steps)) * 1000) / steps;
    const tried: TunedCandidate[] = [];
    const seen = new Set([choiceKey(start.choice)]);
    const report = (c: TunedCandidate) => {
      tried.push(c);
      options.onProgress?.({ ...c, done: tried.length });
    };
    for (const axis of axes) {
      for (const choice of axis.candidates(best.choice)) {
        const key = choiceKey(choice);
        if (seen.has(key)) continue;
        seen.add(key);
        abortCheck();
        const made = await runner.build(choice);
        if (isRejection(made)) {
          report({ choice, stepMs: null, againstMs: null, rejected: made.rejected, adopted: false });
          continue;
        }
        const programs = made;
        built.push(programs);
        if (axis.sameLaunchesAreSame && sameLabels(runner.labels(programs), runner.labels(best.programs))) {
          release(programs);
          continue;
        }
        let mine = Infinity;
        let theirs = Infinity;
        for (let r = 0; r < repeats; r++) {
          abortCheck();
          mine = Math.min(mine, await stepMs(programs));
          theirs = Math.min(theirs, await stepMs(best.programs));
        }
        const adopted = mine < theirs * (1 - margin);
        if (adopted) {
          if (best !== start) release(best.programs);
          best = { choice, programs };
        } else release(programs);
        report({ choice, stepMs: mine, againstMs: theirs, adopted });
      }
    }
    // the choice found against the model's own in one last alternation, so that the two step times reported were
    // measured under the same conditions (a GPU's clocks and a CPU adapter's load drift over a search)
    let finalMs = Infinity;
    let startMs = Infinity;
    for (let r = 0; r < repeats; r++) {
      abortCheck();
      finalMs = Math.min(finalMs, await stepMs(best.programs));
      startMs = best === start ? finalMs : Math.min(startMs, await stepMs(start.programs));
    }
    // kept only when that confirms it (noise can carry a candidate past the margin once; a CPU adapter's timings
    // move by several per cent): else the model keeps its own choice
    if (best !== start && !(finalMs < startMs * (1 - margin))) {
      release(best.programs);
      best = start;
      finalMs = startMs;
    }
    return {
      programs: best.programs,
      report: {
        choice: best.choice,
        stepMs: finalMs,
        initial: { choice: start.choice, stepMs: startMs },
        tried,
        stepsPerTiming: steps,
      },
    };
  } catch (e) {
    for (const p of built) runner.dispose(p);
    throw e;
  }
}

function isRejection<P>(made: P | { rejected: string }): made is { rejected: string } {
  return typeof made === 'object' && made !== null && 'rejected' in made;
}

function sameLabels(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((l, i) => l === b[i]);
}
