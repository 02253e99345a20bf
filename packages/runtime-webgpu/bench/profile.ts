/**
 * Where a decode step's time goes, on the adapter at hand: `npx tsx bench/profile.ts [--random-model 1b|tiny]`
 * (`--roofline`: only bench/roofline.ts's measurement; `--ablate a,b`: see ./ablations.ts; loader options
 * `--max-local-hadamard N`, `--rows-per-lane N`, `--vector-workgroup N`, `--gate-step FORM`, `--code-batch N`,
 * `--written-mix true|false`; `--variants 'v;v;…'`: see below).
 * JSON Lines: the adapter's features; the whole step (program and head encoded `REPS` times in one pass, no
 * read-back); per launch class (a label's first word), the step with that class left out; and every launch alone,
 * repeated, summed by class and by label (`labels`: launches, total and mean; small layers then run from the L2
 * cache: a floor of their launch cost, not their memory time), with the slowest launches. Each model's step first
 * runs for a second untimed, so that a GPU has left its idle clocks (see `warmUp`). Reads the model's private launch
 * lists: a measurement tool, not an API.
 *
 * `--variants 'rows-per-lane=4;vector-workgroup=1024,rows-per-lane=4;'` profiles the CALDERA model once per variant
 * (`;`-separated, each a `,`-separated list of the loader options above over those given as flags; an empty one is
 * the flags alone), the models written once: a GPU session compares kernel choices in one run. The f16 model is
 * profiled once per distinct `vector-workgroup` (the only one of these options that changes its launches; the gate
 * step is CALDERA's). Each line names its loader options (`options`).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel, type WebGpuModel } from '../src/index.js';
import type { Dispatch } from '../src/kernels.js';
import { nodeDevice } from '../src/testing/gpu.js';
import { ABLATIONS } from './ablations.js';
import { loaderFlagOptions, tunedOptions, type TunedOptions } from './loader-flags.js';
import { measureRoofline } from './roofline.js';
import { SHAPES, writeRandomCalderaModel, writeRandomF16Model } from './random-model.js';
import { submitSeconds } from '../src/tune.js';
import { warmUp } from './timing.js';

const at = process.argv.indexOf('--random-model');
const shapeName = (at < 0 ? undefined : process.argv[at + 1]) ?? '1b';
const flagOptions = loaderFlagOptions(process.argv);
const variantsAt = process.argv.indexOf('--variants');
const variants: TunedOptions[] =
  variantsAt < 0
    ? [flagOptions]
    : (process.argv[variantsAt + 1] ?? '').split(';').map((v) => ({
        ...flagOptions,
        ...tunedOptions(
          v
            .split(',')
            .filter((p) => p.trim() !== '')
            .map((p) => {
              const [name = '', value = ''] = p.split('=').map((s) => s.trim());
              return [name, value];
            }),
        ),
      }));
const loadOptions = (tuned: TunedOptions) => ({ contextLength: 64, ...tuned });
const shape = SHAPES[shapeName as keyof typeof SHAPES];
const REPS = 20;
const r4 = (v: number) => Number(v.toPrecision(4));

const ablateAt = process.argv.indexOf('--ablate');
const ablations = ablateAt < 0 ? [] : process.argv[ablateAt + 1]!.split(',');
const unknown = ablations.filter((a) => !(a in ABLATIONS));
if (unknown.length || !shape) {
  console.error(
    unknown.length
      ? `--ablate: unknown ${unknown.join(', ')} (known: ${Object.keys(ABLATIONS).join(', ')})`
      : `--random-model takes ${Object.keys(SHAPES).join(' or ')}, got ${shapeName}`,
  );
  process.exit(2);
}
let edits: [RegExp | string, string][] = [];
const matched = new Set<[RegExp | string, string]>();

const { device, reason } = await nodeDevice();
if (!device) {
  console.error(reason);
  process.exit(1);
}
console.log(
  JSON.stringify({
    case: 'adapter',
    description: device.description,
    features: [...device.adapter.features].sort(),
    shaderF16: device.shaderF16,
    maxWorkgroupStorage: device.maxWorkgroupStorage,
  }),
);
const gpu = device.device;
const createShaderModule = gpu.createShaderModule.bind(gpu);
gpu.createShaderModule = (d: GPUShaderModuleDescriptor) => {
  let code = d.code;
  for (const edit of edits) {
    const edited = code.replaceAll(edit[0], edit[1]);
    if (edited !== code) matched.add(edit);
    code = edited;
  }
  return createShaderModule({ ...d, code });
};

/** µs per repetition of `list`: one warm-up submit, then the best of 3 submits of `reps` repetitions. */
async function timePass(list: Dispatch[], reps: number): Promise<number> {
  await submitSeconds(device!, list, reps);
  let best = Infinity;
  for (let i = 0; i < 3; i++) best = Math.min(best, await submitSeconds(device!, list, reps));
  return (best * 1e6) / reps;
}

const classOf = (d: Dispatch) => d.label.split(' ')[0]!;

async function profile(name: string, model: WebGpuModel, options: TunedOptions): Promise<void> {
  await model.prefill([1, 2, 3, 4, 5, 6, 7, 8]);
  await model.finish();
  // the model's decode launch lists (private: its Programs record, which tuneKernels replaces)
  const { programs } = model as unknown as { programs: { program: Dispatch[]; head: Dispatch[] } };
  const step = [...programs.program, ...programs.head];
  // out of idle clocks before the first timing, as the roofline does (not on a CPU adapter)
  if (!device!.fallbackAdapter) await warmUp(device!, step, 1000);
  const whole = await timePass(step, REPS);
  const classes = [...new Set(step.map(classOf))];
  const without: Record<string, unknown> = {};
  for (const c of classes) {
    const rest = step.filter((d) => classOf(d) !== c);
    without[c] = { launches: step.length - rest.length, saves_us: r4(whole - (await timePass(rest, REPS))) };
  }
  const alone: Record<string, number> = {};
  const each: { label: string; us: number }[] = [];
  for (const d of step) {
    const us = await timePass([d], 10);
    alone[classOf(d)] = (alone[classOf(d)] ?? 0) + us;
    each.push({ label: d.label, us: r4(us) });
  }
  // per label (a layer kind and shape): launches and their time alone, summed, largest first
  const byLabel = new Map<string, { label: string; launches: number; us: number }>();
  for (const { label, us } of each) {
    const e = byLabel.get(label) ?? { label, launches: 0, us: 0 };
    e.launches++;
    e.us += us;
    byLabel.set(label, e);
  }
  const labels = [...byLabel.values()]
    .sort((a, b) => b.us - a.us)
    .map((e) => ({ ...e, us: r4(e.us), mean_us: r4(e.us / e.launches) }));
  each.sort((a, b) => b.us - a.us);
  console.log(
    JSON.stringify({
      case: `profile_${name}`,
      options,
      step_us: r4(whole),
      launches: step.length,
      without,
      alone_us: Object.fromEntries(Object.entries(alone).map(([k, v]) => [k, r4(v)])),
      labels,
      slowest: each.slice(0, 12),
    }),
  );
}

const dir = await mkdtemp(join(tmpdir(), 'caldera-profile-'));
try {
  if (process.argv.includes('--roofline')) {
    // the roofline alone (bench/run.ts measures it with everything else)
    const roof = await measureRoofline(device);
    console.log(
      JSON.stringify({ case: 'roofline', ...roof, roofline_share: r4(roof.kernelGbs / roof.streamGbs) }),
    );
  } else if (ablations.length) {
    const path = join(dir, 'ablate');
    await writeRandomCalderaModel(path, shape, 64);
    for (const a of ablations) {
      edits = ABLATIONS[a]!;
      const { model } = await loadModel(device, path, loadOptions(flagOptions));
      await profile(`${shapeName}_caldera_${a}`, model, flagOptions);
      model.dispose();
      const roof = await measureRoofline(device, {
        targetBytes: (device.fallbackAdapter ? 4 : 256) * 2 ** 20,
      });
      for (const e of edits)
        if (!matched.has(e)) console.error(`ablation ${a}: ${String(e[0])} matched no shader`);
      console.log(
        JSON.stringify({
          case: `roofline_${a}`,
          kernel_gbs: r4(roof.kernelGbs),
          layer_gbs: r4(roof.layerGbs),
        }),
      );
    }
    edits = [];
  } else {
    const f16Path = join(dir, 'f16');
    await writeRandomF16Model(f16Path, shape);
    const profiledF16 = new Set<number | undefined>();
    for (const options of variants) {
      if (profiledF16.has(options.vectorWorkgroup)) continue;
      profiledF16.add(options.vectorWorkgroup);
      const f16Options =
        options.vectorWorkgroup === undefined ? {} : { vectorWorkgroup: options.vectorWorkgroup };
      const { model } = await loadModel(device, f16Path, loadOptions(f16Options));
      await profile(`${shapeName}_f16`, model, f16Options);
      model.dispose();
    }
    await rm(f16Path, { recursive: true, force: true });
    const calderaPath = join(dir, 'caldera');
    await writeRandomCalderaModel(calderaPath, shape, 64);
    for (const options of variants) {
      const { model } = await loadModel(device, calderaPath, loadOptions(options));
      await profile(`${shapeName}_caldera`, model, options);
      model.dispose();
    }
  }
} finally {
  await rm(dir, { recursive: true, force: true });
  device.dispose();
}
