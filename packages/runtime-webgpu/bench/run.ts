/**
 * WebGPU runtime benchmark. JSON Lines on stdout (scripts/bench-line.ts): `refs` measured in the same run (a check's
 * outcome as 1 or 0), `info` the adapter, the model's facts and the options.
 * - `webgpu_decode_caldera_tok_s`, `webgpu_decode_dense_f16_tok_s`: greedy decode tokens/s of the reference model
 *   (packages/reference-model, 4 blocks, hidden 256, dense f16) and of a CALDERA-compressed copy of it (every linear:
 *   Q 2-bit E8P12, rank 16, L/R 4-bit; one outer/inner iteration, built here in a temporary directory), each next to
 *   runtime-node on the same checkpoint (`refs.runtime_node`) with the share of identical greedy tokens
 *   (`refs.agreement`), and the rate of one-at-a-time steps (`refs.one_at_a_time_tok_s`: each token read back before
 *   the next pass is submitted, where `generate()` keeps the GPU a pass ahead) with whether its tokens are the same.
 * - `webgpu_sample_topk_caldera_tok_s`: sampled decode tokens/s of the CALDERA copy (temperature 0.8, top 40 found on
 *   the GPU, repetition penalty 1.1), next to the same decode picking every token from the whole logits read back
 *   (`refs.logits_read_back_tok_s`) and whether both gave the same tokens (`refs.same_tokens`, 1 or 0); the random models
 *   report the same (`refs.sampled_topk_tok_s`, `refs.sampled_logits_read_back_tok_s`, `refs.sampled_same_tokens`).
 * - `webgpu_perplexity_caldera_tok_s`: tokens scored per second by `perplexity()` on the CALDERA copy (windows of 128,
 *   NLL on the GPU), next to the same windows scored from read-back logits on the CPU (`refs.logits_on_cpu_tok_s`)
 *   and the two perplexities' relative difference (`refs.ppl_rel_diff`); the random models below report the same, in
 *   windows of their shorter context (the prompt and the decoded tokens: 69, or 21 with `--quick`).
 * - `webgpu_prefill_caldera_tok_s`: a prompt through the CALDERA copy in batches of 32 rows, next to the same prompt
 *   token by token (`refs.token_by_token`, prefillChunk 1).
 * - `webgpu_matvec_caldera_gbs`: the memory-bandwidth roofline of the compressed matvec (bench/roofline.ts): weight
 *   bytes per second of the fused E8P kernel on 16384×8192 rank-64 layers (`info.q_products`: packed f16 where the
 *   device has `shader-f16`, with the f32 form's rate in `refs.f32_form_gbs`, its rows per lane in
 *   `info.f16_rows_per_lane` and, when more than one, its rate with one in `refs.one_row_per_lane_gbs`), `refs.stream_read_gbs` the
 *   streaming-read anchor of the same run, `refs.roofline_share` their ratio; the dense f16 kernel beside it, and whole 4096×4096
 *   CALDERA and f16 layers as in a decode step (`refs.layer_*`).
 * - `webgpu_dispatch_us`: microseconds per kernel launch that depends on the one before (bench/dispatch.ts), and the
 *   round trip of one token (`refs.round_trip_us`): a step's fixed costs.
 * - `webgpu_decode_random_<shape>_caldera_tok_s` and `…_f16_tok_s`: decode tokens/s of a random-weight Llama-shaped
 *   model (bench/random-model.ts; `1b`: TinyLlama-1.1B's shape, CALDERA rank 64) in both forms, with the rate its
 *   launches and round trip alone would allow (`refs.launch_bound_tok_s`) and the rates of one-at-a-time steps
 *   (`refs.one_at_a_time_tok_s`, `refs.f16_one_at_a_time_tok_s`), and perplexity's tokens/s with NLL on the GPU and
 *   from read-back logits (`refs.perplexity_tok_s`, `refs.perplexity_logits_on_cpu_tok_s`); with `shader-f16`
 *   CALDERA decodes with f16 Q̂ products and again in f32 (`refs.f32_products_tok_s`). Default: `1b` on a GPU in a
 *   full run, none on a CPU adapter or with `--quick`; `--random-model tiny|tiny32k|1b|none` overrides.
 * `--quick`: 16 decoded tokens instead of 64, a 32-token prompt instead of 128, a quarter of the roofline bytes.
 * `--lanes 1|32`: lanes per row of the matrix kernels instead of the adapter's default; `--vector-workgroup N`,
 * `--rows-per-lane N`, `--max-local-hadamard N`, `--gate-step FORM`, `--code-batch N`, `--written-mix true|false`:
 * those loader options for every model
 * (./loader-flags.ts); `--tune`: each random model tunes its kernel choice on the device first
 * (`WebGpuModel.tuneKernels`, from those options), reported in its line (`info.tuned_choice`,
 * `refs.tuned_step_ms`, `refs.untuned_step_ms`, `info.tuning_candidates`).
 * Without a GPU (SwiftShader) the numbers are only a record. `CALDERA_DAWN_TOGGLES=vulkan_enable_f16_on_nvidia` lets
 * Dawn offer `shader-f16` on NVIDIA's Vulkan driver, where it is off by default (driver bugs; the decode's agreement
 * with runtime-node still checks the tokens).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  cast,
  openSafetensorsDir,
  perplexityWindows,
  tokenNll,
  writeSafetensors,
  type CalderaLayerMeta,
  type GenerateOptions,
  type Tensor,
} from '@caldera/core';
import { caldera, calderaCheckpointMeta, toCheckpointTensors } from '@caldera/lowrank';
import * as node from '@caldera/runtime-node';
import { generate, loadModel, perplexity, type TuneReport, type WebGpuModel } from '../src/index.js';
import { nodeDevice } from '../src/testing/gpu.js';
import { sampleFromAllLogits } from '../src/testing/sampling.js';
import { parameterCount, SHAPES, writeRandomCalderaModel, writeRandomF16Model } from './random-model.js';
import { measureDispatchCost } from './dispatch.js';
import { LOADER_FLAGS, loaderFlagOptions } from './loader-flags.js';
import { checkBenchArgs } from '../../../scripts/bench-args.js';
import { benchLine, type BenchLine, type BenchRefs } from '../../../scripts/bench-line.js';
import { measureRoofline } from './roofline.js';

checkBenchArgs(
  'usage: npm run bench -w @caldera/runtime-webgpu [-- --quick] [-- --tune] [-- --random-model tiny|tiny32k|1b|none] ' +
    `[-- --lanes 1|32] [-- ${LOADER_FLAGS.join(' V] [-- ')} V]`,
  ['--quick', '--tune'],
  ['--random-model', '--lanes', ...LOADER_FLAGS],
);
const quick = process.argv.includes('--quick');
const randomAt = process.argv.indexOf('--random-model');
const randomArg = randomAt < 0 ? undefined : process.argv[randomAt + 1];
if (randomAt >= 0 && !['tiny', 'tiny32k', '1b', 'none'].includes(randomArg ?? '')) {
  console.error(`--random-model takes tiny, tiny32k, 1b or none, got ${randomArg}`);
  process.exit(2);
}
// lanes per row of the matrix kernels (default: the adapter's; 32 runs the GPU forms, f16 included, on a CPU adapter)
const lanesAt = process.argv.indexOf('--lanes');
const lanesArg = lanesAt < 0 ? undefined : process.argv[lanesAt + 1];
if (lanesAt >= 0 && lanesArg !== '1' && lanesArg !== '32') {
  console.error(`--lanes takes 1 or 32, got ${lanesArg}`);
  process.exit(2);
}
const lanes = lanesArg === undefined ? {} : { lanes: Number(lanesArg) as 1 | 32 };
// kernel choices of every model (default: the adapter's; see ./loader-flags.ts)
const modelKernels = { ...lanes, ...loaderFlagOptions(process.argv) };
// --tune: each random model times kernel choices on the device (WebGpuModel.tuneKernels) before its decode is measured
const tune = process.argv.includes('--tune');
const TOKENS = quick ? 16 : 64;
const PROMPT = [0, 17, 250, 1033, 5];
const REF = fileURLToPath(new URL('../../reference-model/model/', import.meta.url));

/** The refs of a tuned model: its step time, and the loader's choice's. */
function tunedRefs(t: TuneReport | null): BenchRefs {
  return t ? { tuned_step_ms: r4(t.stepMs), untuned_step_ms: r4(t.initial.stepMs) } : {};
}

/** The info of a tuned model: the choice it decoded with, of how many timed. */
function tunedInfo(t: TuneReport | null): BenchLine['info'] {
  return t ? { tuned_choice: t.choice, tuning_candidates: t.tried.length } : {};
}

/** A measurement to 4 significant digits. */
const r4 = (v: number) => Number(v.toPrecision(4));

/** One line (scripts/bench-line.ts): `refs` measured in this run, `info` the adapter, the model and the options. */
function emit(c: string, value: number, unit: string, refs: BenchRefs, info: BenchLine['info']) {
  console.log(benchLine({ case: c, value: r4(value), unit, refs, info }));
}

async function compress(dir: string): Promise<void> {
  const store = await openSafetensorsDir(REF);
  const tensors: Record<string, Tensor> = {};
  for (const n of store.names()) tensors[n] = await store.readTensor(n);
  await store.close();
  const layers: Record<string, CalderaLayerMeta> = {};
  for (const name of Object.keys(tensors)) {
    if (!/mlp\.|self_attn\./.test(name) || !name.endsWith('.weight')) continue;
    const prefix = name.slice(0, -'.weight'.length);
    const d = caldera(cast(tensors[name]!, 'f32'), null, { rank: 16, outerIters: 1, lplrIters: 1 });
    const ck = toCheckpointTensors(prefix, d);
    delete tensors[name];
    Object.assign(tensors, ck.tensors);
    layers[prefix] = ck.meta;
  }
  await writeSafetensors(join(dir, 'model.safetensors'), tensors);
  await writeFile(
    join(dir, 'caldera.json'),
    JSON.stringify(calderaCheckpointMeta(layers, { options: { hessian: 'identity', rank: 16 } })),
  );
  for (const f of ['config.json', 'tokenizer.json', 'generation_config.json'])
    await copyFile(join(REF, f), join(dir, f));
}

/**
 * Greedy decode tokens/s of a loaded model: a warm-up (pipeline compilation), then `TOKENS` tokens of `generate()`
 * (the GPU a pass ahead of the host), and (`oneAtATimeTokS`) as many of `model.step(…, 'argmax')`, each token read
 * back before the next pass is submitted: what pipelining gains. `same` says whether both gave the same tokens.
 */
async function decodeRate(
  model: WebGpuModel,
  prompt = PROMPT,
): Promise<{ tokens: number[]; tokS: number; oneAtATimeTokS: number; same: boolean }> {
  await timed(generate(model, prompt, { maxTokens: 4 }));
  const g = await timed(generate(model, prompt, { maxTokens: TOKENS }));
  model.reset();
  await model.prefill(prompt.slice(0, -1));
  let last = prompt[prompt.length - 1]!;
  const one = await timed(
    (async function* () {
      for (let n = 0; n < TOKENS; n++) yield (last = await model.step(last, 'argmax'));
    })(),
  );
  return { ...g, oneAtATimeTokS: one.tokS, same: one.tokens.join() === g.tokens.join() };
}

/** The sampled decode that {@link sampledRates} times: among the top 40, found on the GPU, with a penalty. */
const SAMPLED: GenerateOptions = {
  maxTokens: TOKENS,
  temperature: 0.8,
  topK: 40,
  repetitionPenalty: 1.1,
  seed: 7,
};

/**
 * Sampled decode tokens/s of `generate()` with {@link SAMPLED}'s options (the top k found on the GPU, the penalised
 * tokens' logits read back with it: `WebGpuModel.stepTopK`), after a warm-up, and (`logitsTokS`) the same decode
 * with every token picked from the whole logits read back (how generate() sampled before); `same` says whether the
 * two gave the same tokens (they should: the same logits, the same draws).
 */
async function sampledRates(
  model: WebGpuModel,
  prompt = PROMPT,
): Promise<{ tokS: number; logitsTokS: number; same: boolean }> {
  await timed(generate(model, prompt, { ...SAMPLED, maxTokens: 4 }));
  const g = await timed(generate(model, prompt, SAMPLED));
  const all = await timed(sampleFromAllLogits(model, prompt, SAMPLED));
  return { tokS: g.tokS, logitsTokS: all.tokS, same: all.tokens.join() === g.tokens.join() };
}

/**
 * Tokens scored per second by `perplexity()` (each token's NLL computed on the GPU, one float read back per token)
 * over `n` tokens of a fixed text in windows of the model's context length (at most 128), and by the same windows
 * scored from read-back logits with core's `tokenNll` on the CPU (how perplexity scored before), with the relative
 * difference of the two perplexities. A warm-up window first (pipeline compilation).
 */
async function perplexityRates(
  model: WebGpuModel,
  n: number,
): Promise<{ tokS: number; logitsOnCpuTokS: number; relDiff: number }> {
  const V = model.config.vocabSize;
  const context = Math.min(128, model.contextLength);
  const text = Array.from({ length: n }, (_, i) => (i * 97 + 5) % V);
  await perplexity(model, text.slice(0, context), { context });
  let t0 = performance.now();
  const gpu = await perplexity(model, text, { context });
  const tokS = gpu.tokens / ((performance.now() - t0) / 1000);
  t0 = performance.now();
  let nll = 0;
  let count = 0;
  // perplexity()'s windows (stride = context: they do not overlap, and each scores every token after its first)
  for (const { start, end } of perplexityWindows(n, context, context)) {
    model.reset();
    for (let b = start; b < end - 1; b += model.prefillChunk) {
      const batch = text.slice(b, Math.min(b + model.prefillChunk, end - 1));
      const all = await model.stepBatch(batch, 'all');
      for (let r = 0; r < batch.length; r++, count++) nll += tokenNll(all, r * V, V, text[b + r + 1]!);
    }
  }
  const logitsOnCpuTokS = count / ((performance.now() - t0) / 1000);
  const cpuPpl = Math.exp(nll / count);
  return { tokS, logitsOnCpuTokS, relDiff: Math.abs(gpu.ppl - cpuPpl) / cpuPpl };
}

async function timed(gen: AsyncIterable<number>): Promise<{ tokens: number[]; tokS: number }> {
  const tokens: number[] = [];
  let t0 = 0;
  for await (const t of gen) {
    // time from the first generated token on: decode only (the prompt is prefilled before it)
    if (tokens.length === 0) t0 = performance.now();
    tokens.push(t);
  }
  return { tokens, tokS: (tokens.length - 1) / ((performance.now() - t0) / 1000) };
}

const CHROMIUM_LIB = '/usr/lib/chromium';
if (
  !existsSync('/usr/lib/x86_64-linux-gnu/libvulkan.so.1') &&
  existsSync(`${CHROMIUM_LIB}/libvulkan.so.1`) &&
  !(process.env.LD_LIBRARY_PATH ?? '').split(':').includes(CHROMIUM_LIB)
) {
  // no system Vulkan loader: run again with Chromium's (the loader path is read at process start)
  const env = {
    ...process.env,
    LD_LIBRARY_PATH: [CHROMIUM_LIB, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':'),
  };
  const r = spawnSync(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    env,
    stdio: 'inherit',
  });
  process.exit(r.status ?? 1);
}
const { device, reason } = await nodeDevice();
if (!device) {
  console.error(reason);
  process.exit(0);
}
const dir = await mkdtemp(join(tmpdir(), 'caldera-webgpu-bench-'));
try {
  await compress(dir);
  for (const [name, path] of [
    ['webgpu_decode_caldera_tok_s', dir],
    ['webgpu_decode_dense_f16_tok_s', REF],
  ] as const) {
    const { model, linearBitsPerWeight } = await loadModel(device, path, {
      contextLength: PROMPT.length + TOKENS,
      ...modelKernels,
      topKOnGpu: true, // for sampledRates, also on CPU adapters (off there by default)
    });
    const cpu = (await node.loadModel(path)).model;
    const g = await decodeRate(model);
    await timed(node.generate(cpu, PROMPT, { maxTokens: 4 }));
    const c = await timed(node.generate(cpu, PROMPT, { maxTokens: TOKENS }));
    const agree = g.tokens.filter((t, i) => t === c.tokens[i]).length / c.tokens.length;
    emit(
      name,
      g.tokS,
      'tok/s',
      {
        runtime_node: r4(c.tokS),
        agreement: agree,
        one_at_a_time_tok_s: r4(g.oneAtATimeTokS),
        same_tokens_one_at_a_time: g.same ? 1 : 0,
      },
      {
        bits_per_weight: r4(linearBitsPerWeight),
        weight_bytes: model.weightBytes,
        dispatches_per_token: model.dispatchesPerToken,
        adapter: device.description,
      },
    );
    if (name === 'webgpu_decode_caldera_tok_s') {
      const sr = await sampledRates(model);
      emit(
        'webgpu_sample_topk_caldera_tok_s',
        sr.tokS,
        'tok/s',
        { logits_read_back_tok_s: r4(sr.logitsTokS), same_tokens: sr.same ? 1 : 0 },
        { vocab: model.config.vocabSize, options: SAMPLED, adapter: device.description },
      );
    }
    model.dispose();
  }
  const P = quick ? 32 : 128;
  const prompt = Array.from({ length: P }, (_, i) => (i * 97 + 5) % 2048);
  const rate: Record<number, number> = {};
  for (const chunk of [1, 32]) {
    const { model } = await loadModel(device, dir, {
      contextLength: P,
      prefillChunk: chunk,
      ...modelKernels,
    });
    await model.prefill(prompt.slice(0, chunk)); // warm-up (pipeline compilation)
    await model.finish();
    model.reset();
    const t0 = performance.now();
    await model.prefill(prompt);
    await model.finish();
    rate[chunk] = P / ((performance.now() - t0) / 1000);
    model.dispose();
  }
  emit(
    'webgpu_prefill_caldera_tok_s',
    rate[32]!,
    'tok/s',
    { token_by_token: r4(rate[1]!) },
    { prompt_tokens: P, prefill_chunk: 32, adapter: device.description },
  );
  {
    const { model } = await loadModel(device, dir, { contextLength: 128, ...modelKernels });
    const n = quick ? 128 : 512;
    const p = await perplexityRates(model, n);
    emit(
      'webgpu_perplexity_caldera_tok_s',
      p.tokS,
      'tok/s',
      { logits_on_cpu_tok_s: r4(p.logitsOnCpuTokS), ppl_rel_diff: r4(p.relDiff) },
      { text_tokens: n, context: 128, vocab: model.config.vocabSize, adapter: device.description },
    );
    model.dispose();
  }

  const cost = await measureDispatchCost(device);
  emit(
    'webgpu_dispatch_us',
    cost.dependentUs,
    'us',
    { round_trip_us: r4(cost.roundTripUs) },
    { adapter: device.description },
  );
  // tokens/s if a step cost nothing but its launches and one round trip
  const launchFloor = (launches: number) => 1e6 / (launches * cost.dependentUs + cost.roundTripUs);

  const roof = await measureRoofline(device, {
    targetBytes: ((device.fallbackAdapter ? 16 : 512) * 2 ** 20) / (quick ? 4 : 1),
    ...lanes,
  });
  emit(
    'webgpu_matvec_caldera_gbs',
    roof.kernelGbs,
    'GB/s',
    {
      stream_read_gbs: r4(roof.streamGbs),
      roofline_share: r4(roof.kernelGbs / roof.streamGbs),
      [`lanes_${roof.otherLanes.lanes}_gbs`]: r4(roof.otherLanes.kernelGbs),
      ...(roof.f32FormGbs !== null ? { f32_form_gbs: r4(roof.f32FormGbs) } : {}),
      ...(roof.f32FourRowsGbs !== null ? { f32_form_4_rows_per_lane_gbs: r4(roof.f32FourRowsGbs) } : {}),
      ...(roof.oneRowPerLaneGbs !== null ? { one_row_per_lane_gbs: r4(roof.oneRowPerLaneGbs) } : {}),
      dense_f16_gbs: r4(roof.denseF16KernelGbs),
      dense_f16_roofline_share: r4(roof.denseF16KernelGbs / roof.streamGbs),
      layer_gbs: r4(roof.layerGbs),
      layer_f16_gbs: r4(roof.layerF16Gbs),
      layer_weights_per_s_vs_f16: r4(roof.layerWeightsVsF16),
    },
    {
      kernel: roof.shapes.kernel,
      lanes: roof.lanes,
      q_products: roof.f16 ? 'f16' : 'f32',
      ...(roof.rowsPerLane !== null ? { f16_rows_per_lane: roof.rowsPerLane } : {}),
      dense_f16_kernel: roof.shapes.denseKernel,
      layer: roof.shapes.layer,
      layer_bits_per_weight: r4(roof.layerBitsPerWeight),
      adapter: device.description,
    },
  );

  const shapeName = randomArg ?? (quick || device.fallbackAdapter ? 'none' : '1b');
  if (shapeName !== 'none') {
    const shape = SHAPES[shapeName as keyof typeof SHAPES];
    const rates: Record<
      string,
      {
        tokS: number;
        oneAtATimeTokS: number;
        sampled: { tokS: number; logitsTokS: number; same: boolean } | null;
        pplTokS: number;
        pplLogitsOnCpuTokS: number;
        bytes: number;
        bits: number;
        launches: number;
        f16: boolean;
        tuned: TuneReport | null;
      }
    > = {};
    for (const kind of ['f16', 'caldera'] as const) {
      const path = join(dir, `random-${kind}`);
      if (kind === 'f16') await writeRandomF16Model(path, shape);
      else await writeRandomCalderaModel(path, shape, 64);
      // the default form; when the CALDERA model's decode ran f16 E8P products, again with f32 ones
      for (const name of kind === 'caldera' ? ['caldera', 'caldera-f32'] : [kind]) {
        if (name === 'caldera-f32' && !rates.caldera!.f16) break;
        const { model, linearBitsPerWeight } = await loadModel(device, path, {
          contextLength: PROMPT.length + TOKENS,
          ...modelKernels,
          topKOnGpu: true,
          ...(name === 'caldera-f32' ? { f16: false } : {}),
        });
        const prompt = PROMPT.map((t) => t % shape.vocab);
        // --tune: the kernel choice timed on this device first (each model its own; not the f32-products rerun)
        const tuned = tune && name !== 'caldera-f32' ? await model.tuneKernels() : null;
        const { tokS, oneAtATimeTokS } = await decodeRate(model, prompt);
        const ppl = name === 'caldera-f32' ? null : await perplexityRates(model, quick ? 64 : 256);
        const sampled = name === 'caldera-f32' ? null : await sampledRates(model, prompt);
        rates[name] = {
          tokS,
          oneAtATimeTokS,
          sampled,
          pplTokS: ppl?.tokS ?? NaN,
          pplLogitsOnCpuTokS: ppl?.logitsOnCpuTokS ?? NaN,
          bytes: model.weightBytes,
          bits: linearBitsPerWeight,
          launches: model.dispatchesPerToken,
          f16: model.f16Products,
          tuned,
        };
        model.dispose();
      }
      await rm(path, { recursive: true, force: true });
    }
    const f = rates.f16!;
    const c = rates.caldera!;
    const common = { parameters: parameterCount(shape), tokens: TOKENS, adapter: device.description };
    const sampledRefs = (r: typeof f) => ({
      sampled_topk_tok_s: r4(r.sampled!.tokS),
      sampled_logits_read_back_tok_s: r4(r.sampled!.logitsTokS),
      sampled_same_tokens: r.sampled!.same ? 1 : 0,
    });
    emit(
      `webgpu_decode_random_${shapeName}_f16_tok_s`,
      f.tokS,
      'tok/s',
      {
        one_at_a_time_tok_s: r4(f.oneAtATimeTokS),
        ...sampledRefs(f),
        perplexity_tok_s: r4(f.pplTokS),
        perplexity_logits_on_cpu_tok_s: r4(f.pplLogitsOnCpuTokS),
        launch_bound_tok_s: r4(launchFloor(f.launches)),
        ...tunedRefs(f.tuned),
      },
      { weight_bytes: f.bytes, dispatches_per_token: f.launches, ...tunedInfo(f.tuned), ...common },
    );
    emit(
      `webgpu_decode_random_${shapeName}_caldera_tok_s`,
      c.tokS,
      'tok/s',
      {
        f16: r4(f.tokS),
        speedup_vs_f16: r4(c.tokS / f.tokS),
        one_at_a_time_tok_s: r4(c.oneAtATimeTokS),
        f16_one_at_a_time_tok_s: r4(f.oneAtATimeTokS),
        ...sampledRefs(c),
        perplexity_tok_s: r4(c.pplTokS),
        perplexity_logits_on_cpu_tok_s: r4(c.pplLogitsOnCpuTokS),
        launch_bound_tok_s: r4(launchFloor(c.launches)),
        ...(rates['caldera-f32'] ? { f32_products_tok_s: r4(rates['caldera-f32'].tokS) } : {}),
        ...tunedRefs(c.tuned),
      },
      {
        weight_bytes: c.bytes,
        f16_weight_bytes: f.bytes,
        bits_per_weight: r4(c.bits),
        dispatches_per_token: c.launches,
        q_products: c.f16 ? 'f16' : 'f32',
        rank: 64,
        ...tunedInfo(c.tuned),
        ...common,
      },
    );
  }
} finally {
  await rm(dir, { recursive: true, force: true });
  device.dispose();
}
