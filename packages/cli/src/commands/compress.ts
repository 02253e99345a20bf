import { readdir, readFile, rm } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import {
  atomicWriteFile,
  cast,
  CalderaError,
  isCalderaError,
  openSafetensors,
  openSafetensorsDir,
  parseModelConfig,
  writeCheckpointDir,
  writeSafetensors,
  type CalderaCheckpointMeta,
  type CalderaLayerMeta,
  type ModelConfig,
  type Tensor,
  type WritableTensor,
} from '@caldera/core';
import {
  compressLayerWithSpec,
  compressModel,
  executeMatrixJob,
  hashModelTensors,
  hasHessianChunk,
  largestFirst,
  layerSeed,
  makeHessianPlan,
  makeManifest,
  missingJobs,
  readJobResult,
  readHessianPlan,
  readManifest,
  reduceHessianChunks,
  runHessianChunks,
  sampleWindows,
  sha256Hex,
  shardJobs,
  writeHessianPlan,
  writeManifest,
  type BlockStore,
  type CompressProgress,
  type HessianPlan,
  type HashModelOptions,
  type JobManifest,
  type LayerOptions,
  type LayerResult,
  type LayerSpec,
  type LinearInfo,
} from '@caldera/calibrate';
import { calderaCheckpointMeta, type CalderaOptions } from '@caldera/lowrank';
import {
  BlockLazyRunner,
  loadModel,
  loadTokenizer,
  perplexity,
  readJsonFile,
  settingsDiff,
} from '@caldera/runtime-node';
import {
  flagNumber,
  flagString,
  givenFlags,
  POSITIVE,
  POSITIVE_INT,
  NON_NEGATIVE_INT,
  SEED,
  tokenWindow,
  type Args,
} from '../args.js';
import {
  checkInputFiles,
  checkTextLength,
  checkOutDir,
  checkWorkDirs,
  shellWord,
  defaultText,
  exists,
  fileSha256,
  HELD_OUT_CONTEXT,
  HELD_OUT_TOKENS,
  modelDirOf,
  modelSideFiles,
  poolFor,
  leadingFileTokens,
  readDocuments,
  tokenizeDocuments,
  weightFileBytes,
  makeDir,
  onStopSignals,
  progressFor,
  outPath,
} from './common.js';
import { chooseRanks, parseLayerRanks, type RankChoice } from './ranks.js';
import { lockOutput } from './out-lock.js';
import { checkRedisReachable, queueNameOf } from './redis.js';
import type { QueueTask } from './task.js';

export const compressHelp = `caldera compress [model-dir] [options]

Compress every linear layer of a Llama-family model with CALDERA (W ≈ Q + L·R) and write a Caldera checkpoint.
Without model-dir, compresses the embedded reference model with its bundled calibration text.

Options:
  --out DIR            output checkpoint directory (default: ./caldera-out/<model>-<method>)
  --method NAME        caldera (default) | ldlq (rank 0, QuIP#-style) | rtn (E8P rounding, no Hessian) | lplr (low-rank only)
  --rank K             rank of L·R for every layer, at most its min(m, n) (instead of --bits; not with it)
  --bits B             target average bits per weight (paper accounting), ranks chosen per layer (default
                       --q-bits + 0.4: 2.4; lplr 3.6)
  --max-bytes N        instead of --bits: a byte budget for all compressed layers (paper accounting)
  --layer-rank SPEC    per-layer ranks by name substring, first match wins, e.g. 'mlp=32,self_attn=16'; the
                       budget (--bits / --max-bytes) is met over all layers, the rest get what is left
  --q-bits B           bits per entry of Q: 2 (E8P lattice, default) | 3 | 4 (residual vector quantization)
  --lr-bits B          bits per entry of L and R: 2 | 3 | 4 (lattice; default 4) | 16 (half precision; lplr's default)
  --data FILE          calibration text (.txt, documents separated by blank lines, or .jsonl with "text")
  --windows N          calibration windows (default 32); windows × length should reach the largest linear input
                       width (e.g. 11008 for Llama-2-7B's down_proj), else those Hessians are rank-deficient (warned)
  --length L           tokens per window, 2 … the model's max positions (default 128, or the max positions if fewer)
  --eval FILE          held-out text for perplexity before/after (default: the reference test split), scored in
                       windows of 256 tokens (or the max positions if fewer), as 'caldera eval' and finetune score it
  --eval-tokens N      tokens of held-out text to score (default 8192)
  --outer-iters N      CALDERA outer iterations (default 4)   --lplr-iters N   inner LPLR rounds (default 4)
  --propagate MODE     compressed (default) | original (Hessians of the original model: every matrix is an independent
                       job, run by this process, by --shard or through --queue; see docs/guide/scale-out.md)
  --threads N          threads of this process's linear-algebra pool, 1 … 256 (default 2; 1 = no pool)
  --seed S             seed (default 0)
  --json               JSON lines on stdout instead of tables

Scale-out (--propagate original; work files in <out>.work, kept until the checkpoint is written):
  --hessian-chunks C   calibration windows are cut into C chunks reduced in a fixed order (default 4)
  --plan-only          compute the Hessians and write <out>.work/manifest.json, then stop
  --shard I/N          run shard I of N (0-based) of the Hessian chunks and matrix jobs, then stop; 'caldera merge'
                       assembles the checkpoint once every shard has finished
  --queue URL          coordinate through a BullMQ queue on Redis (redis://host:port): enqueue the jobs, show the
                       progress of 'caldera worker' processes, assemble the checkpoint
  --queue-name NAME    BullMQ queue name (default caldera)   --attempts N   tries per job (default 3)`;

export const mergeHelp = `caldera merge <out> [model] [--json]

Assemble the checkpoint <out> from the job outputs in <out>.work (written by 'caldera compress --shard I/N' or by
workers), byte-identical to a single-process 'caldera compress --propagate original' with the same options.
[model]: the source model's directory on this machine, where it is not the path the run recorded (shards that ran
on machines with their own copies at other paths); it is checked to be the same model (a sha256 of every tensor).`;

export const workerHelp = `caldera worker --queue URL [options]

Take jobs of 'caldera compress --queue URL' runs from a BullMQ queue on Redis and execute them (Hessian chunks and
matrix decompositions), on this or any machine that sees the same work directory. Outputs are named by content hash
and written atomically, so a retried or duplicated job is harmless. Stops cleanly on SIGINT/SIGTERM: the job in hand
is cancelled and handed back to the queue for another worker.

Options:
  --queue URL          redis://host:port[/db] of the Redis server
  --queue-name NAME    BullMQ queue name (default caldera)
  --threads N          linear-algebra threads per job, 1 … 256 (default 1: one worker process per core scales best)
  --concurrency N      jobs at a time in this process, an integer in [1, 256] (default 1)
  --lock-seconds S     BullMQ job lock, in [1, 2147483]; a dead worker's job is retried within about 2×S seconds of its death (default 30)
  --json               JSON lines on stdout (events: ready, job-start, job-done, job-failed, job-returned,
                       redis-lost, redis-back, stopped)`;

type Method = 'caldera' | 'ldlq' | 'rtn' | 'lplr';
/** Bits per entry of L and R. */
type FactorBits = NonNullable<CalderaOptions['lBits']>;

/** Every option that determines a run's result (stored in the job manifest, so 'merge' needs nothing else). */
interface RunSettings {
  method: Method;
  windows: number;
  length: number;
  data: string;
  eval: string;
  evalTokens: number;
  propagate: 'compressed' | 'original';
  outerIters: number;
  lplrIters: number;
  hessianChunks: number;
  /** Bits per entry of Q (0 for lplr: no Q). Absent from the manifests of versions before --q-bits: 2 (lplr 0). */
  qBits: 0 | 2 | 3 | 4;
  /** Bits per entry of L and R (unused by the rank-0 methods). Absent before --lr-bits: 4 (lplr 16). */
  lrBits: FactorBits;
  ranks: Record<string, number>;
}

/** The Q widths `--q-bits` takes (E8P12 2-bit, RVQ 3/4-bit) and the factor widths `--lr-bits` takes. */
const Q_BITS = [2, 3, 4] as const;
const LR_BITS = [2, 3, 4, 16] as const;

/** The widths of a run, with the defaults of the versions that had no --q-bits / --lr-bits for a manifest without. */
function widthsOf(s: Pick<RunSettings, 'method'> & Partial<Pick<RunSettings, 'qBits' | 'lrBits'>>): {
  qBits: 0 | 2 | 3 | 4;
  lrBits: FactorBits;
} {
  return {
    qBits: s.qBits ?? (s.method === 'lplr' ? 0 : 2),
    lrBits: s.lrBits ?? (s.method === 'lplr' ? 16 : 4),
  };
}

/** `--q-bits` and `--lr-bits` of `method`: a width its decomposition has no use for is refused, not ignored. */
function bitsFromFlags(a: Args, method: Method): { qBits: 0 | 2 | 3 | 4; lrBits: FactorBits } {
  const q = flagNumber(a, 'q-bits', undefined, { integer: true, min: 0 });
  const lr = flagNumber(a, 'lr-bits', undefined, { integer: true, min: 0 });
  if (q !== undefined && !(Q_BITS as readonly number[]).includes(q))
    throw new CalderaError(
      'E_VALUE',
      `--q-bits must be 2 (E8P lattice), 3 or 4 (residual vector quantization), got ${q}`,
    );
  if (lr !== undefined && !(LR_BITS as readonly number[]).includes(lr))
    throw new CalderaError(
      'E_VALUE',
      `--lr-bits must be 2, 3, 4 (lattice-quantized factors) or 16 (half precision), got ${lr}`,
    );
  if (method === 'lplr' && q !== undefined)
    throw new CalderaError(
      'E_VALUE',
      '--method lplr has no Q (low-rank only): --q-bits would be ignored; use --method caldera',
    );
  return widthsOf({
    method,
    ...(q !== undefined && method !== 'lplr' ? { qBits: q as 2 | 3 | 4 } : {}),
    ...(lr !== undefined ? { lrBits: lr as FactorBits } : {}),
  });
}

/**
 * Options the method (and propagation) has no use for are refused, not ignored (a run would record them in
 * caldera.json as if they had been applied): rtn rounds without calibration data (no Hessian, so no --data, --windows,
 * --length, --propagate or --hessian-chunks), a single pass has no outer iterations (ldlq: rank 0; lplr: no Q) and
 * rank 0 no LPLR rounds, and --hessian-chunks cuts only the Hessians of --propagate original.
 */
function checkMethodFlags(a: Args, method: string, propagate: string): void {
  const refuse = (flags: string[], why: string, instead: string) => {
    if (flags.length > 0)
      throw new CalderaError('E_VALUE', `${why}: ${flags.join(', ')} would be ignored; ${instead}`);
  };
  if (method === 'rtn')
    refuse(
      givenFlags(a, [
        'data',
        'windows',
        'length',
        'propagate',
        'hessian-chunks',
        'outer-iters',
        'lplr-iters',
      ]),
      '--method rtn rounds each weight without calibration data (no Hessian, one pass)',
      'use --method ldlq or caldera for a calibration-aware Q',
    );
  if (method === 'ldlq')
    refuse(
      givenFlags(a, ['outer-iters', 'lplr-iters']),
      '--method ldlq has no low-rank part (one LDLQ pass, rank 0)',
      'use --method caldera to alternate Q and L·R',
    );
  if (method === 'lplr')
    refuse(
      givenFlags(a, ['outer-iters']),
      '--method lplr has no Q to alternate with (low-rank only: --lplr-iters sets its rounds)',
      'use --method caldera to alternate Q and L·R',
    );
  if (propagate !== 'original')
    refuse(
      givenFlags(a, ['hessian-chunks']),
      '--hessian-chunks cuts the Hessians of --propagate original into jobs',
      'give --propagate original with it',
    );
  if (!a.flags.has('queue'))
    refuse(
      givenFlags(a, ['queue-name', 'attempts']),
      'they set the jobs of a run on a Redis queue',
      'give --queue URL with them',
    );
  // read where the jobs are queued, so checked here, before any work
  flagNumber(a, 'attempts', 3, POSITIVE_INT);
  if (a.flags.has('queue')) queueNameOf(a);
}

/**
 * The settings the run's method used, as caldera.json records them: rtn none of the calibration (no data), ldlq and
 * lplr no outer iterations, ldlq no LPLR rounds (see {@link checkMethodFlags}, which refuses them when given).
 */
function usedSettings(s: RunSettings): Record<string, unknown> {
  if (s.method === 'rtn') return {};
  return {
    windows: s.windows,
    length: s.length,
    propagate: s.propagate,
    ...(s.method === 'caldera' ? { outerIters: s.outerIters } : {}),
    ...(s.method !== 'ldlq' ? { lplrIters: s.lplrIters } : {}),
    ...(s.propagate === 'original' ? { hessianChunks: s.hessianChunks } : {}),
  };
}

/** The run's settings that need no model (`length`: the --length given, if any; its range is the model's). */
function settingsFromFlags(a: Args): Omit<RunSettings, 'ranks' | 'length'> & { length: number | undefined } {
  const method = (flagString(a, 'method', 'caldera') as Method) ?? 'caldera';
  if (!['caldera', 'ldlq', 'rtn', 'lplr'].includes(method))
    throw new CalderaError('E_VALUE', `unknown --method '${method}'`);
  const propagate = flagString(a, 'propagate', 'compressed');
  if (propagate !== 'compressed' && propagate !== 'original')
    throw new CalderaError('E_VALUE', `--propagate must be compressed or original, got '${propagate}'`);
  checkMethodFlags(a, method, propagate);
  return {
    method,
    windows: flagNumber(a, 'windows', 32, POSITIVE_INT),
    length: flagNumber(a, 'length', undefined, { integer: true, min: 2 }),
    data: resolve(flagString(a, 'data') ?? defaultText('train')),
    eval: resolve(flagString(a, 'eval') ?? defaultText('test')),
    evalTokens: flagNumber(a, 'eval-tokens', HELD_OUT_TOKENS, { integer: true, min: 2 }),
    propagate,
    outerIters: flagNumber(a, 'outer-iters', 4, POSITIVE_INT),
    lplrIters: flagNumber(a, 'lplr-iters', 4, POSITIVE_INT),
    hessianChunks: flagNumber(a, 'hessian-chunks', 4, POSITIVE_INT),
    ...bitsFromFlags(a, method),
  };
}

/** The rank options, checked before any work (their limits, which depend on the layers, by chooseRanks). */
function rankChoiceOf(a: Args, method: Method, widths: ReturnType<typeof widthsOf>): RankChoice {
  if (method !== 'caldera' && method !== 'lplr') {
    const given = givenFlags(a, ['lr-bits', 'rank', 'bits', 'max-bytes', 'layer-rank']);
    if (given.length > 0)
      throw new CalderaError(
        'E_VALUE',
        `--method ${method} has no low-rank part (Q alone, rank 0): ` +
          `${given.join(', ')} would be ignored; use --method caldera or lplr`,
      );
  }
  // one budget: two of them given, one would be silently ignored (--rank wins over both, --max-bytes over --bits)
  const budgets = givenFlags(a, ['rank', 'max-bytes', 'bits']);
  if (budgets.length > 1)
    throw new CalderaError(
      'E_VALUE',
      `${budgets.join(' and ')} conflict: each sets the ranks of every layer, so all but one would be ignored; ` +
        'give one of them (with --layer-rank for per-layer exceptions)',
    );
  const overrides = flagString(a, 'layer-rank');
  const rank = flagNumber(a, 'rank', undefined, NON_NEGATIVE_INT);
  const maxBytes = flagNumber(a, 'max-bytes', undefined, POSITIVE_INT);
  return {
    widths: { qBits: widths.qBits, lBits: widths.lrBits, rBits: widths.lrBits },
    ...(rank !== undefined ? { rank } : {}),
    ...(maxBytes !== undefined ? { maxBytes } : {}),
    bits: flagNumber(a, 'bits', method === 'lplr' ? 2 + 16 * 0.1 : widths.qBits + 0.4, POSITIVE),
    ...(overrides ? { overrides: parseLayerRanks(overrides) } : {}),
    ...(a.flags.has('rank')
      ? { budgetFlag: '--rank' }
      : a.flags.has('max-bytes')
        ? { budgetFlag: '--max-bytes' }
        : a.flags.has('bits')
          ? { budgetFlag: '--bits' }
          : {}),
  };
}

/**
 * The rank of every layer for `method` (none without a low-rank part). `lplr` has no Q: a layer of rank 0 would have
 * no weights at all, so every rank must be at least 1 (`E_VALUE` naming the option that gave 0; it was raised to 1
 * silently, and caldera.json recorded 0).
 */
function ranksFor(choice: RankChoice, method: Method, layers: readonly LinearInfo[]): Record<string, number> {
  if (method !== 'caldera' && method !== 'lplr') return {};
  const ranks = chooseRanks(
    layers.map((l) => ({ name: l.name, m: l.outFeatures, n: l.inFeatures })),
    choice,
  );
  const zero = method === 'lplr' ? Object.keys(ranks).filter((name) => ranks[name] === 0) : [];
  if (zero.length > 0) {
    const overridden = zero.find((name) => choice.overrides?.some(([p]) => name.includes(p)));
    const by = overridden
      ? `--layer-rank gives ${overridden} rank 0`
      : choice.rank !== undefined
        ? '--rank 0'
        : `the budget leaves ${zero.length} of ${layers.length} layers at rank 0 (${zero[0]}, …): raise --bits or --max-bytes`;
    throw new CalderaError(
      'E_VALUE',
      `--method lplr needs a rank of at least 1 for every layer (it has no Q: a layer of rank 0 would be all zeros); ${by}`,
    );
  }
  return ranks;
}

/** The decomposition of one layer under the run's settings: the same spec in every mode. */
function layerSpec(s: RunSettings, seed: number, name: string): LayerSpec {
  const base = { outerIters: s.outerIters, lplrIters: s.lplrIters };
  const { qBits, lrBits } = widthsOf(s);
  let options: LayerOptions;
  switch (s.method) {
    case 'caldera':
      options = { ...base, rank: s.ranks[name] ?? 0, qBits, lBits: lrBits, rBits: lrBits };
      break;
    case 'ldlq':
      options = { ...base, rank: 0, qBits };
      break;
    case 'rtn':
      options = { ...base, rank: 0, qBits, dataAwareQ: false };
      break;
    case 'lplr':
      options = { ...base, rank: s.ranks[name]!, qBits: 0, lBits: lrBits, rBits: lrBits };
      break;
  }
  return { options, seed: layerSeed(seed, name) };
}

/**
 * What determines the blocks of a 'compressed'-propagation run, recorded in `<out>.partial/run.json` with its first
 * block: a rerun resumes only when every field is the same (else its blocks would mix two runs' settings).
 */
type RunFingerprint = {
  /** sha256 of config.json and of every tensor's bytes. */
  model: string;
  method: Method;
  qBits: number;
  lrBits: number;
  ranks: Record<string, number>;
  outerIters: number;
  lplrIters: number;
  propagate: RunSettings['propagate'];
  /** sha256 of the calibration text. */
  data: string;
  windows: number;
  length: number;
  seed: number;
};

const PARTIAL_RUN_FILE = 'run.json';

/** sha256 of the source model's identity: its config.json and every tensor (names and bytes, {@link hashModelTensors}). */
async function modelIdentity(modelDir: string, options: HashModelOptions): Promise<string> {
  const config = await fileSha256(join(modelDir, 'config.json'));
  return sha256Hex(JSON.stringify([config, (await hashModelTensors(modelDir, options)).sha256]));
}

async function runFingerprint(
  modelDir: string,
  s: RunSettings,
  seed: number,
  options: HashModelOptions,
): Promise<RunFingerprint> {
  return {
    model: await modelIdentity(modelDir, options),
    method: s.method,
    ...widthsOf(s),
    ranks: Object.fromEntries(Object.entries(s.ranks).sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0))),
    outerIters: s.outerIters,
    lplrIters: s.lplrIters,
    propagate: s.propagate,
    data: await fileSha256(s.data),
    windows: s.windows,
    length: s.length,
    seed,
  };
}

const FINGERPRINT_LABELS: Record<keyof RunFingerprint, string> = {
  model: 'source model (config.json or weight files)',
  method: '--method',
  qBits: '--q-bits',
  lrBits: '--lr-bits',
  ranks: 'layer ranks (--rank / --bits / --max-bytes / --layer-rank)',
  outerIters: '--outer-iters',
  lplrIters: '--lplr-iters',
  propagate: '--propagate',
  data: 'calibration text (--data content)',
  windows: '--windows',
  length: '--length',
  seed: '--seed',
};

/**
 * Refuse to resume from `partial` when its committed blocks were made with other settings than `fp` (or by a
 * version that did not record them). A missing or block-less partial directory is fine.
 */
async function checkResume(partial: string, fp: RunFingerprint): Promise<void> {
  const files = await readdir(partial).catch(() => [] as string[]);
  if (!files.some((f) => /^block-\d+\.json$/.test(f))) return;
  const advice = `rerun with the options of the interrupted run to resume it, or delete ${shellWord(partial)} to start over`;
  let old: Partial<RunFingerprint>;
  try {
    old = JSON.parse(await readFile(join(partial, PARTIAL_RUN_FILE), 'utf8')) as Partial<RunFingerprint>;
    // a version before --q-bits / --lr-bits recorded no widths: it used the defaults
    if (old.method !== undefined) old = { ...widthsOf({ method: old.method }), ...old };
  } catch {
    throw new CalderaError(
      'E_VALUE',
      `${partial} holds blocks of an interrupted run without a readable ${PARTIAL_RUN_FILE} (the settings they ` +
        `were made with are unknown); delete ${shellWord(partial)} to start over`,
    );
  }
  // `label (then, now)` as train and finetune name a changed setting (the sha256 of the model and of the text
  // shortened), except the ranks: one per layer, their JSON shortened would name neither a layer nor a rank, so the
  // first layer whose rank differs is named instead
  const differ = settingsDiff(old, fp, { ignore: ['ranks'], labels: FINGERPRINT_LABELS });
  const [ra, rb] = [old.ranks ?? {}, fp.ranks];
  const layer = [...new Set([...Object.keys(ra), ...Object.keys(rb)])].find((l) => ra[l] !== rb[l]);
  if (layer !== undefined)
    differ.push(
      `${FINGERPRINT_LABELS.ranks}, e.g. ${layer}: ${ra[layer] ?? 'none'} then, ${rb[layer] ?? 'none'} now`,
    );
  if (differ.length > 0)
    throw new CalderaError(
      'E_VALUE',
      `${partial} holds blocks of an interrupted run with other settings: ${differ.join('; ')}; ${advice}`,
    );
}

function fileStore(dir: string, fingerprint: RunFingerprint): BlockStore {
  const paths = (b: number) => ({
    st: join(dir, `block-${String(b).padStart(4, '0')}.safetensors`),
    js: join(dir, `block-${String(b).padStart(4, '0')}.json`),
  });
  let recorded = false;
  return {
    async load(b) {
      const p = paths(b);
      if (!(await exists(p.js))) return null;
      const info = JSON.parse(await readFile(p.js, 'utf8')) as (Omit<LayerResult, 'replacement'> & {
        meta: CalderaLayerMeta;
        tensorNames: string[];
      })[];
      const reader = await openSafetensors(p.st);
      try {
        const out: LayerResult[] = [];
        for (const r of info) {
          const tensors: Record<string, Tensor> = {};
          for (const n of r.tensorNames) tensors[n] = await reader.readTensor(n);
          out.push({
            name: r.name,
            error: r.error,
            bitsPerWeight: r.bitsPerWeight,
            rank: r.rank,
            seconds: r.seconds,
            replacement: { tensors, meta: r.meta },
          });
        }
        return out;
      } finally {
        await reader.close();
      }
    },
    async save(b, results) {
      // the settings go first: a block never exists without the record of what it was made with. Once per run, before
      // its first new block: they do not change during the run (a resumed run's are those recorded, checkResume), and
      // a record left without blocks by another run is replaced then
      if (!recorded) {
        await makeDir(dir);
        await atomicWriteFile(join(dir, PARTIAL_RUN_FILE), JSON.stringify(fingerprint));
        recorded = true;
      }
      const p = paths(b);
      const tensors: Record<string, Tensor> = {};
      for (const r of results) Object.assign(tensors, r.replacement.tensors);
      await writeSafetensors(p.st, tensors);
      const info = results.map((r) => ({
        name: r.name,
        error: r.error,
        bitsPerWeight: r.bitsPerWeight,
        rank: r.rank,
        seconds: r.seconds,
        meta: r.replacement.meta,
        tensorNames: Object.keys(r.replacement.tensors),
      }));
      await atomicWriteFile(p.js, JSON.stringify(info));
    },
  };
}

/**
 * Calibration windows of a run (deterministic in the settings and seed). `E_VALUE` naming the --data file when it has
 * fewer tokens than one window, or its windows cannot be cut.
 */
async function calibrationWindows(
  modelDir: string,
  s: RunSettings,
  seed: number,
  bos: number | null,
  threads: number,
  signal: AbortSignal,
) {
  const docs = await readDocuments(s.data);
  const calib = await tokenizeDocuments(modelDir, docs, bos, { threads, signal });
  const tokens = calib.reduce((n, d) => n + d.length, 0);
  const advice =
    'give a longer calibration text, or fewer or shorter windows (--windows, --length; ' +
    `now ${s.windows} × ${s.length} tokens)`;
  if (docs.length === 0 || tokens < s.length)
    throw new CalderaError(
      'E_VALUE',
      `--data ${s.data} ${docs.length === 0 ? 'has no text' : `has ${tokens} tokens, fewer than one calibration window of --length ${s.length}`}; ${advice}`,
    );
  try {
    return sampleWindows(calib, { count: s.windows, length: s.length, seed });
  } catch (e) {
    if (isCalderaError(e) && e.code === 'E_VALUE')
      throw new CalderaError('E_VALUE', `--data ${s.data}: ${e.message}; ${advice}`, { cause: e });
    throw e;
  }
}

function parseShard(v: string | undefined): { index: number; count: number } | null {
  if (v === undefined) return null;
  const m = /^(\d+)\/(\d+)$/.exec(v);
  const index = m ? Number(m[1]) : NaN;
  const count = m ? Number(m[2]) : NaN;
  if (!m || !(count >= 1) || !(index < count))
    throw new CalderaError('E_VALUE', `--shard must be I/N with 0 ≤ I < N, got '${v}'`);
  return { index, count };
}

interface Ctx {
  modelDir: string;
  out: string;
  seed: number;
  json: boolean;
  log: (o: Record<string, unknown>) => void;
  t0: number;
  /** Ctrl-C or SIGTERM: seen by every step, the final write and scoring included. */
  signal: AbortSignal;
}

export async function compressCommand(a: Args): Promise<number> {
  const json = a.flags.has('json');
  const modelDir = resolve(modelDirOf(a.positionals[0]));
  const base = settingsFromFlags(a);
  const rankChoice = rankChoiceOf(a, base.method, base);
  const seed = flagNumber(a, 'seed', 0, SEED);
  const out = outPath(
    flagString(a, 'out') ?? join('caldera-out', `${basename(modelDir) || 'model'}-${base.method}`), // (resolved: no trailing slash)
  );
  const shard = parseShard(flagString(a, 'shard'));
  const queue = flagString(a, 'queue');
  const planOnly = a.flags.has('plan-only');
  const threads = flagNumber(a, 'threads', 2);
  if ((shard || queue || planOnly) && base.propagate !== 'original') {
    throw new CalderaError(
      'E_VALUE',
      '--shard, --queue and --plan-only need --propagate original (independent jobs need Hessians of the original model)',
    );
  }
  if (shard && queue) throw new CalderaError('E_VALUE', '--shard and --queue are alternatives');
  // before any work: the source is a dense model, the inputs are there, and writing the checkpoint loses nothing
  if (await exists(join(modelDir, 'caldera.json')))
    throw new CalderaError(
      'E_VALUE',
      `${modelDir} is a Caldera checkpoint (compressed); compress a dense model (such as the one it was made from)`,
    );
  await checkInputFiles([
    ['--data', base.data],
    ['--eval', base.eval],
  ]);
  await modelSideFiles(modelDir, true); // the side files the checkpoint copies: a FIFO among them, refused now
  await checkOutDir(out, [modelDir]);
  await checkWorkDirs(out, 'compress');
  if (queue) await checkRedisReachable(queue);
  const pool = queue ? undefined : poolFor(threads); // a coordinator computes nothing itself
  // one process writes <out> at a time (shards of one run excepted: they share its work directory by design); the
  // lock is released first on every way out below, before anything else that could throw
  let unlock: () => Promise<void>;
  try {
    unlock = shard ? async () => undefined : await lockOutput(out, 'caldera compress');
  } catch (e) {
    pool?.dispose();
    throw e;
  }
  // Ctrl-C or SIGTERM stops the run from here on, the model's opening included: exit 130 (143), the committed work
  // kept for a rerun to resume
  const stop = onStopSignals();
  const ctx: Ctx = {
    modelDir,
    out,
    seed,
    json,
    log: (o) => (json ? console.log(JSON.stringify(o)) : undefined),
    t0: performance.now(),
    signal: stop.signal,
  };
  const bar = progressFor('compress', json);
  const interrupted = () => reportInterruption(out, base.propagate, stop.exitCode());
  // the source is read one block at a time (the embedding stays): compressModel and the Hessian chunks enter and
  // leave each block, the baseline perplexity streams its windows through them, so the peak is one block's weights
  // and the activations, not the whole model
  let runner: BlockLazyRunner | undefined;
  let layers: LinearInfo[];
  let settings: RunSettings;
  try {
    runner = await BlockLazyRunner.open(modelDir, { ...(pool ? { pool } : {}), signal: stop.signal });
    // calibration windows past the model's max positions (maxPositions: max_position_embeddings, YaRN's stretched
    // context, a sliding window) would run on positions it never saw: an explicit --length beyond them is refused, the
    // default is clamped to them
    const length = tokenWindow('length', base.length, 128, runner.config.maxPositions);
    const r = runner;
    layers = Array.from({ length: r.numBlocks }, (_, b) => r.linears(b)).flat();
    settings = { ...base, length, ranks: ranksFor(rankChoice, base.method, layers) };
  } catch (e) {
    // the run's try/finally below has not started
    await unlock();
    stop.dispose();
    await runner?.close();
    pool?.dispose();
    if (stop.signal.aborted) return interrupted();
    throw e;
  }
  const sourceModel = runner;
  const fewRows =
    settings.method === 'rtn' ? null : calibrationRowsWarning(settings.windows, settings.length, layers);
  if (fewRows) console.error(fewRows);
  const windowsOf = () => {
    // on the bar only (a large text takes a while, and said nothing)
    bar.update(0, 1, undefined, 'tokenizing the calibration text');
    return calibrationWindows(modelDir, settings, seed, sourceModel.config.bosTokenId, threads, stop.signal);
  };
  // hashing a large model's tensors takes a while: on the bar only (the JSON lines' first progress event is a layer's)
  const hashing: HashModelOptions = {
    signal: stop.signal,
    onProgress: ({ done, total }) => bar.update(done, total, undefined, 'hashing the source tensors'),
  };
  try {
    if (settings.propagate === 'compressed') {
      const partial = `${out}.partial`;
      // the calibration text first: a text too short for the windows fails before the hashing and the baseline (rtn
      // reads none: it needs no Hessian, and compressModel then runs no window through the blocks)
      const windows = settings.method === 'rtn' ? [] : await windowsOf();
      const fingerprint = await runFingerprint(modelDir, settings, seed, hashing);
      await checkResume(partial, fingerprint);
      // the source's perplexity now, before compressModel replaces layers
      const held = await sourceBaseline(ctx, settings, sourceModel, partial, fingerprint.model, stop.signal);
      const results = await compressModel(sourceModel, windows, {
        compressLayer: (w, h, info, { signal, onProgress, overwriteH }) =>
          compressLayerWithSpec(w, h, info.name, layerSpec(settings, seed, info.name), {
            ...(pool ? { pool } : {}),
            overwriteH,
            ...(signal ? { signal } : {}),
            ...(onProgress ? { onProgress } : {}),
          }),
        propagate: 'compressed',
        needsHessian: settings.method !== 'rtn',
        ...(pool ? { pool } : {}),
        store: fileStore(partial, fingerprint),
        signal: stop.signal,
        onProgress: (p) => {
          const label = compressProgressLabel(p);
          const done = p.layersDone + (p.layerFraction ?? 0);
          // the fill advances within a layer too; the last layer's end is shown (a log's last line said 27/28)
          if (label !== null || done >= p.layersTotal)
            bar.update(done, p.layersTotal, p.etaSeconds, label ?? 'compressed');
          ctx.log({ event: 'progress', ...p });
        },
      });
      bar.done();
      await sourceModel.close(); // the embedding: finish loads the checkpoint
      await finish(ctx, settings, results, held);
      await rm(partial, { recursive: true, force: true });
      return 0;
    }

    // propagate 'original': phase 1 (Hessian chunks), the manifest, phase 2 (matrix jobs), then assemble
    const work = resolve(`${out}.work`);
    // progress of a phase, aggregated over every process that works on it (ETA from this phase's rate so far), and,
    // where this process runs work itself, within that work: `within.fraction` of it done (it is `within.jobs` jobs,
    // default 1), `within.fields` logged (e.g. { layer, layerFraction }), `within.label` on the bar
    const phaseStart = new Map<string, { t: number; done: number }>();
    type Within = { fraction: number; jobs?: number; fields: Record<string, string | number>; label: string };
    const report = (phase: string, done: number, total: number, within?: Within) => {
      // the rate counts whole jobs, from the first one reported finished
      let s0 = phaseStart.get(phase);
      if (!s0 && !within) phaseStart.set(phase, (s0 = { t: performance.now(), done }));
      const rate = s0 ? (done - s0.done) / ((performance.now() - s0.t) / 1000) : 0;
      const running = within ? within.fraction * (within.jobs ?? 1) : 0;
      const eta = rate > 0 ? Math.max(0, total - done - running) / rate : undefined;
      // a job's last step is followed at once by its 'done' report, which the bar would then hold back (200 ms)
      if (within?.fraction !== 1) bar.update(done, total, eta, within ? `${phase} ${within.label}` : phase);
      ctx.log({
        event: 'progress',
        phase,
        done,
        total,
        ...within?.fields,
        ...(eta === undefined ? {} : { etaSeconds: eta }),
      });
    };
    const needsHessian = settings.method !== 'rtn';
    const hashes = await hashModelTensors(modelDir, hashing);
    let hessians = null;
    if (needsHessian) {
      // the windows of an earlier process of this run (another shard, a restarted coordinator) are reused: tokenizing
      // a large corpus is the slowest part of the set-up
      const source = sha256Hex(
        JSON.stringify({
          data: await fileSha256(settings.data),
          windows: settings.windows,
          length: settings.length,
          seed,
        }),
      );
      const old = await readHessianPlan(work).catch(() => null);
      const plan = makeHessianPlan(
        modelDir,
        hashes.sha256,
        sourceModel.numBlocks,
        old?.source === source && old.modelSha256 === hashes.sha256 ? old.windows : await windowsOf(),
        settings.hessianChunks,
        source,
        { tensorSha256: hashes.tensors, configSha256: await fileSha256(join(modelDir, 'config.json')) },
      );
      await writeHessianPlan(work, plan);
      const all = [...plan.chunks.keys()];
      if (queue) {
        const tasks: QueueTask[] = all.map((c) => ({
          kind: 'hessian',
          work,
          index: c,
          key: plan.chunks[c]!.key,
          label: `hessian ${c}`,
        }));
        const { runOnQueue } = await import('./queue.js'); // BullMQ loads only for queue runs
        await runOnQueue(queue, a, tasks, {
          signal: stop.signal,
          onProgress: (d, t) => report('hessian', d, t),
          log: ctx.log,
        });
      } else {
        // a shard computes its own chunks first, then any chunk no other shard has written yet (never waits); each
        // pass runs its chunks together, reading the source once
        const own = shard ? all.filter((c) => c % shard.count === shard.index) : all;
        const others = all.filter((c) => !own.includes(c));
        let done = 0;
        for (const pass of [own, others]) {
          const chunks = pass === own ? own : await missingChunks(work, plan, others);
          if (chunks.length === 0) {
            done += pass.length;
            continue;
          }
          const results = await runHessianChunks(work, plan, chunks, sourceModel, {
            ...(pool ? { pool } : {}),
            signal: stop.signal,
            onProgress: ({ done: b, total: blocks }) =>
              report('hessian', done, all.length, {
                fraction: b / blocks,
                jobs: chunks.length,
                fields: { chunks: chunks.join(','), chunkFraction: b / blocks },
                label: `chunk${chunks.length > 1 ? 's' : ''} ${chunks.join(',')}: ${b}/${blocks} blocks`,
              }),
          });
          chunks.forEach((c, i) => ctx.log({ event: 'hessian-chunk', chunk: c, result: results[i] }));
          done += pass.length;
          report('hessian', done, all.length);
        }
      }
      hessians = await reduceHessianChunks(work, plan, { signal: stop.signal });
    }
    const manifest = makeManifest({
      model: modelDir,
      modelSha256: hashes.sha256,
      seed,
      settings: settings as unknown as Record<string, unknown>,
      linears: layers,
      weightSha256: hashes.tensors,
      hessians,
      spec: (l) => layerSpec(settings, seed, l.name),
    });
    await writeManifest(work, manifest);
    ctx.log({ event: 'manifest', path: join(work, 'manifest.json'), jobs: manifest.jobs.length });
    if (planOnly) {
      if (!json) console.log(`wrote ${join(work, 'manifest.json')} (${manifest.jobs.length} jobs)`);
      return 0;
    }

    const tm = performance.now();
    if (queue) {
      const todo = await missingJobs(work, manifest);
      ctx.log({ event: 'queue', enqueued: todo.length, cached: manifest.jobs.length - todo.length });
      // largest jobs first, so that the last ones to start are short and no worker idles long at the end
      const taskOf = (j: (typeof todo)[number]): QueueTask => ({
        kind: 'matrix',
        work,
        id: j.id,
        label: j.name,
      });
      const tasks = largestFirst(todo).map(taskOf);
      const left = new Set(todo.map((j) => j.id));
      const { runOnQueue } = await import('./queue.js');
      await runOnQueue(queue, a, tasks, {
        finished: manifest.jobs.filter((j) => !left.has(j.id)).map(taskOf),
        signal: stop.signal,
        onProgress: (d) => report('matrix', manifest.jobs.length - todo.length + d, manifest.jobs.length),
        log: ctx.log,
      });
    } else {
      const mine = shard ? shardJobs(manifest.jobs, shard.index, shard.count) : manifest.jobs;
      let done = 0;
      for (const j of mine) {
        const r = await executeMatrixJob(work, manifest, j, {
          ...(pool ? { pool } : {}),
          signal: stop.signal,
          onProgress: ({ fraction }) =>
            report('matrix', done, mine.length, {
              fraction,
              fields: { layer: j.name, layerFraction: fraction },
              label: layerLabel(j.name, fraction).trimStart(),
            }),
        });
        ctx.log({ event: 'job', name: j.name, id: j.id, result: r });
        report('matrix', ++done, mine.length);
      }
    }
    const matrixSeconds = (performance.now() - tm) / 1000;
    ctx.log({ event: 'matrix-phase', seconds: matrixSeconds });
    bar.done();
    if (shard) {
      const left = (await missingJobs(work, manifest)).length;
      if (!json)
        console.log(
          `shard ${shard.index}/${shard.count} done (${left} jobs of other shards left); then: caldera merge ${shellWord(out)}`,
        );
      return 0;
    }
    // this propagation replaces none of the source's layers
    const held = await scoreHeldOut(
      ctx,
      sourceModel,
      await heldOutOf(modelDir, settings, sourceModel.config),
      stop.signal,
    );
    await sourceModel.close();
    await assemble(ctx, work, manifest, held);
    return 0;
  } catch (e) {
    // the queue's report of jobs that failed after all their attempts stands, even after a Ctrl-C that came once every
    // job had ended: the interruption did not cause it
    const queueFailure = isCalderaError(e) && Array.isArray(e.details?.failed);
    if (!stop.signal.aborted || queueFailure) throw e;
    bar.done();
    if (
      writtenBeforeInterruption(
        e,
        'caldera compress',
        'rerun the same command (it resumes, rewrites it the same)',
      )
    )
      return stop.exitCode();
    return interrupted();
  } finally {
    await unlock();
    stop.dispose();
    await sourceModel.close();
    pool?.dispose();
    bar.done();
  }
}

/**
 * Tell what an interrupted compress keeps (a 'compressed' run: its committed blocks and baseline in `<out>.partial`;
 * an 'original' one: its finished jobs in `<out>.work`) and that rerunning the same command resumes; `code` returned.
 */
async function reportInterruption(
  out: string,
  propagate: RunSettings['propagate'],
  code: number,
): Promise<number> {
  const kept = propagate === 'compressed' ? `${out}.partial` : `${out}.work`;
  const files = await readdir(kept).catch(() => null);
  const blocks = files?.filter((f) => /^block-\d+\.json$/.test(f)).length ?? 0;
  console.error(
    files === null
      ? 'caldera compress: interrupted before anything was committed; nothing written'
      : propagate === 'compressed'
        ? `caldera compress: interrupted; ${blocks === 0 ? "the source's perplexity" : `${blocks} compressed block${blocks === 1 ? '' : 's'}`} kept in ${kept} — rerun the same command to resume from there`
        : `caldera compress: interrupted; the finished work is kept in ${kept} — rerun the same command to resume`,
  );
  return code;
}

/**
 * Say so when the interruption `e` came after the checkpoint was written (while it was scored): it is complete and in
 * place, its report.json is not; `rerun` says how to write it. False for any other error.
 */
function writtenBeforeInterruption(e: unknown, command: string, rerun: string): boolean {
  const written = isCalderaError(e) ? e.details?.checkpointWritten : undefined;
  if (typeof written !== 'string') return false;
  console.error(
    `${command}: interrupted after writing ${written}: the checkpoint is complete, but not its report.json (the perplexity after compression) — ${rerun} to score it and write the report`,
  );
  return true;
}

/**
 * The progress bar's label for an event of `compressModel`: the phase, the block counted from 1 of all (the event's
 * `block` is the 0-based index), the layer's last two name parts and the share of it done, e.g.
 * `compress block 1/2 self_attn.q_proj 37%`. Null for a layer's last step (`layerFraction` 1): the next event follows
 * at once, and the bar, which redraws at most every 200 ms, would hold that one back and name a finished layer while
 * the next one runs.
 */
export function compressProgressLabel(p: CompressProgress): string | null {
  if (p.layerFraction === 1) return null;
  return `${p.phase} block ${p.block + 1}/${p.numBlocks}` + layerLabel(p.layer, p.layerFraction);
}

/**
 * A layer on the bar, after a space: the last two parts of its name (`self_attn.q_proj`) when given, then the share of
 * it done when known (`37%`); empty without either.
 */
function layerLabel(name: string | undefined, fraction: number | undefined): string {
  return (
    (name ? ' ' + name.split('.').slice(-2).join('.') : '') +
    (fraction === undefined ? '' : ` ${Math.floor(fraction * 100)}%`)
  );
}

/** Assemble the checkpoint from a manifest's job outputs, then drop the work directory. */
async function assemble(ctx: Ctx, work: string, manifest: JobManifest, held?: HeldOut): Promise<void> {
  const missing = await missingJobs(work, manifest);
  if (missing.length > 0) {
    throw new CalderaError(
      'E_MISSING',
      `${missing.length} of ${manifest.jobs.length} jobs have no output in ${work} yet (first: ${missing[0]!.name}); ` +
        'run the remaining shards or workers first',
    );
  }
  const results: LayerResult[] = [];
  for (const j of manifest.jobs) results.push(await readJobResult(work, j));
  await finish(ctx, manifest.settings as unknown as RunSettings, results, held);
  await rm(work, { recursive: true, force: true });
}

/**
 * `E_FORMAT` unless the model at the manifest's path is still the one its jobs were made from: its tensors (and, where
 * the Hessian plan recorded it, its `config.json`). The merge reads the carried tensors, the configuration and the
 * baseline from it: another model there gave a checkpoint of two models, silently. One pass over the model, as a
 * compress run's start. `recordedModel`: the path the run recorded, when `merge` was given another (the message then
 * says the given model is another one, rather than that the recorded one changed).
 */
async function checkSourceUnchanged(
  manifest: JobManifest,
  work: string,
  signal: AbortSignal,
  recordedModel: string = manifest.model,
): Promise<void> {
  const now = await hashModelTensors(manifest.model, { signal });
  const plan = await readHessianPlan(work).catch(() => null);
  const changed =
    now.sha256 !== manifest.modelSha256
      ? plan?.tensorSha256
        ? `its tensors (first: ${
            [...new Set([...now.tensors.keys(), ...Object.keys(plan.tensorSha256)])]
              .sort()
              .find((n) => now.tensors.get(n) !== plan.tensorSha256![n]) ?? '?'
          })`
        : 'its tensors'
      : plan?.configSha256 && (await fileSha256(join(manifest.model, 'config.json'))) !== plan.configSha256
        ? 'its config.json'
        : null;
  if (changed)
    throw new CalderaError(
      'E_FORMAT',
      resolve(recordedModel) === resolve(manifest.model)
        ? `the model at ${manifest.model} is not the one this run compressed: ${changed} changed since; ` +
            'put the original back, or compress the new model in a run of its own'
        : // a [model] given to merge: another model, not the one at the recorded path changed
          `the model at ${manifest.model} is not the one this run compressed (${recordedModel}, as the run ` +
            `recorded it): ${changed} ${changed === 'its config.json' ? 'differs' : 'differ'}; give that model's path ` +
            'on this machine',
    );
}

export async function mergeCommand(a: Args): Promise<number> {
  const out = outPath(a.positionals[0]);
  if (!out) throw new CalderaError('E_VALUE', 'caldera merge needs the output directory (as given to --out)');
  const json = a.flags.has('json');
  const work = resolve(`${out}.work`);
  const recorded = await readManifest(work);
  // the model where it is on this machine: the path the last shard recorded, unless given
  const manifest = a.positionals[1] === undefined ? recorded : { ...recorded, model: a.positionals[1] };
  if (!(await exists(join(manifest.model, 'config.json'))))
    throw new CalderaError(
      'E_MISSING',
      a.positionals[1] === undefined
        ? `the model this run compressed, ${manifest.model} (as ${join(work, 'manifest.json')} records it), is not ` +
            `there: give its path on this machine (caldera merge ${shellWord(out)} <model>)`
        : `the model ${manifest.model} has no config.json`,
    );
  // the shards checked --out when they started; what was put there since must not be lost either
  await checkOutDir(out, [manifest.model]);
  await checkWorkDirs(out, 'compress');
  const unlock = await lockOutput(out, 'caldera merge');
  // Ctrl-C or SIGTERM: nothing written, the work directory kept for a rerun
  const stop = onStopSignals();
  try {
    await checkSourceUnchanged(manifest, work, stop.signal, recorded.model);
    await assemble(
      {
        modelDir: manifest.model,
        out,
        seed: manifest.seed,
        json,
        log: (o) => (json ? console.log(JSON.stringify(o)) : undefined),
        t0: performance.now(),
        signal: stop.signal,
      },
      work,
      manifest,
    );
  } catch (e) {
    if (!stop.signal.aborted) throw e;
    if (!writtenBeforeInterruption(e, 'caldera merge', `rerun caldera merge ${shellWord(out)}`))
      console.error(
        `caldera merge: interrupted; the finished work is kept in ${work} — rerun caldera merge ${shellWord(out)}`,
      );
    return stop.exitCode();
  } finally {
    await unlock();
    stop.dispose();
  }
  return 0;
}

/** The chunks of `chunks` whose partial sums are not (yet) all on disk. */
async function missingChunks(work: string, plan: HessianPlan, chunks: readonly number[]): Promise<number[]> {
  const missing: number[] = [];
  for (const c of chunks) if (!(await hasHessianChunk(work, plan, c))) missing.push(c);
  return missing;
}

/** The widths a checkpoint and its report record: Q's, and L's and R's where the method has them (rank > 0). */
function bitsRecord(s: RunSettings): { qBits: number; lBits?: number; rBits?: number } {
  const { qBits, lrBits } = widthsOf(s);
  return s.method === 'caldera' || s.method === 'lplr' ? { qBits, lBits: lrBits, rBits: lrBits } : { qBits };
}

/**
 * The held-out tokens a run scores (the first --eval-tokens of --eval) and their window: `HELD_OUT_CONTEXT`, or the
 * model's max positions if fewer, as `caldera eval` and `caldera finetune` score them.
 */
async function heldOutOf(modelDir: string, s: RunSettings, cfg: ModelConfig) {
  // only the documents the first --eval-tokens take (a large held-out file was encoded whole)
  const tok = await loadTokenizer(modelDir);
  const tokens = await leadingFileTokens(tok, s.eval, cfg.bosTokenId, s.evalTokens);
  checkTextLength(tokens, '--eval', s.eval, 2, 'perplexity needs at least 2');
  return { tokens, context: Math.min(HELD_OUT_CONTEXT, cfg.maxPositions) };
}

/** The source model's held-out perplexity, as `finish` reports it. */
type Baseline = { ppl: number; tokens: number };

/** The held-out tokens of a run and their window ({@link heldOutOf}), with the source's perplexity on them. */
type HeldOut = Awaited<ReturnType<typeof heldOutOf>> & { before: Baseline };

/**
 * `held` scored on the source `runner` (streamed block by block: the same number as `perplexity` of the loaded
 * source), the baseline logged.
 */
async function scoreHeldOut(
  ctx: Ctx,
  runner: BlockLazyRunner,
  held: Awaited<ReturnType<typeof heldOutOf>>,
  signal?: AbortSignal,
): Promise<HeldOut> {
  const r = await runner.perplexity(held.tokens, { context: held.context, ...(signal ? { signal } : {}) });
  const before = { ppl: r.ppl, tokens: r.tokens };
  ctx.log({ event: 'baseline', ...before });
  return { ...held, before };
}

/** Where a 'compressed'-propagation run keeps its baseline, so that a resumed run need not score it again. */
const PARTIAL_BASELINE_FILE = 'baseline.json';

/**
 * The held-out tokens with the source's perplexity, scored on the source `runner` (before any layer is replaced) or,
 * when `partial` holds it for the same model, held-out text, token count and window, read from there; recorded in
 * `partial` when scored.
 */
async function sourceBaseline(
  ctx: Ctx,
  s: RunSettings,
  runner: BlockLazyRunner,
  partial: string,
  modelSha256: string,
  signal?: AbortSignal,
): Promise<HeldOut> {
  const held = await heldOutOf(ctx.modelDir, s, runner.config);
  const key = {
    model: modelSha256,
    eval: await fileSha256(s.eval),
    evalTokens: s.evalTokens,
    context: held.context,
  };
  const file = join(partial, PARTIAL_BASELINE_FILE);
  const saved = await readFile(file, 'utf8')
    .then((t) => JSON.parse(t) as { key?: unknown; ppl?: unknown; tokens?: unknown })
    .catch(() => null);
  if (
    saved &&
    JSON.stringify(saved.key) === JSON.stringify(key) &&
    typeof saved.ppl === 'number' &&
    typeof saved.tokens === 'number'
  ) {
    const before = { ppl: saved.ppl, tokens: saved.tokens };
    ctx.log({ event: 'baseline', ...before });
    return { ...held, before };
  }
  const scored = await scoreHeldOut(ctx, runner, held, signal);
  await makeDir(partial);
  await atomicWriteFile(file, JSON.stringify({ key, ...scored.before }));
  return scored;
}

/**
 * The warning (one line, for stderr) when a run's calibration rows are fewer than the largest linear input width:
 * that layer's Hessian is then rank-deficient, and only the damping keeps it usable. Null when there are enough.
 */
export function calibrationRowsWarning(
  windows: number,
  length: number,
  layers: readonly { name: string; inFeatures: number }[],
): string | null {
  const widest = layers.reduce<{ name: string; inFeatures: number } | null>(
    (w, l) => (w === null || l.inFeatures > w.inFeatures ? l : w),
    null,
  );
  const rows = windows * length;
  if (widest === null || rows >= widest.inFeatures) return null;
  return (
    `warning: ${windows} windows × ${length} tokens = ${rows} calibration rows, fewer than the ${widest.inFeatures} ` +
    `inputs of ${widest.name}: its Hessian is rank-deficient (only the damping keeps it usable); ` +
    `--windows ${Math.ceil(widest.inFeatures / length)} or more gives it full rank`
  );
}

/** The source's held-out perplexity, the source read one block at a time ('caldera merge'). */
async function baselineOf(ctx: Ctx, s: RunSettings, cfg: ModelConfig): Promise<HeldOut> {
  const runner = await BlockLazyRunner.open(ctx.modelDir);
  try {
    return await scoreHeldOut(ctx, runner, await heldOutOf(ctx.modelDir, s, cfg), ctx.signal);
  } finally {
    await runner.close();
  }
}

/** True when every value of `t` is within f16's finite range (|v| ≤ 65504): it can be stored in f16 without an infinity. */
function fitsF16(t: Tensor): boolean {
  const d = t.data as ArrayLike<number>;
  for (let i = 0; i < d.length; i++) if (Math.abs(d[i]!) > 65504) return false;
  return true;
}

/**
 * Write the checkpoint and the report: the same code for every mode, so the bytes agree. `scored`: the held-out
 * tokens with the source's perplexity on them when the run has scored it already (else the source is scored here,
 * one block at a time).
 */

async function finish(ctx: Ctx, s: RunSettings, results: LayerResult[], scored?: HeldOut): Promise<void> {
  const { modelDir, out, seed, json } = ctx;
  const configFile = join(modelDir, 'config.json');
  const cfg = parseModelConfig(await readJsonFile(configFile), configFile);
  const held = scored ?? (await baselineOf(ctx, s, cfg));
  const { tokens: heldOut, context: evalCtx, before } = held;

  // checkpoint: every source tensor that is not replaced by a compressed layer's codes, under its name: f16 and bf16
  // tensors and biases as stored, f32/f64 ones in f16 where every value fits it (else in f32: a value beyond ±65504
  // became Infinity, and the finished checkpoint failed to load); read from the source while it is written
  const tensors: Record<string, WritableTensor> = {};
  const replaced = new Set(results.map((r) => `${r.name}.weight`));
  const source = await openSafetensorsDir(modelDir);
  const sourceLinears = { bytes: 0, params: 0, dtypes: new Set<string>() };
  let meta: CalderaCheckpointMeta;
  try {
    for (const name of source.names()) {
      const info = await source.tensorInfo(name);
      if (replaced.has(name)) {
        sourceLinears.bytes += info.dataOffsets[1] - info.dataOffsets[0];
        sourceLinears.params += info.shape.reduce((x, y) => x * y, 1);
        sourceLinears.dtypes.add(info.dtype.toLowerCase());
        continue;
      }
      if (name === 'lm_head.weight' && cfg.tieWordEmbeddings) continue; // unused: the head is the embedding
      const keep = name.endsWith('.bias') || !['F32', 'F64'].includes(info.dtype);
      // f32 or f64: a pass over the values decides (f64 beyond f16 is kept as f32, which the runtimes load)
      const to = keep ? null : fitsF16(await source.readTensor(name)) ? 'f16' : 'f32';
      tensors[name] = {
        dtype: to === null ? info.dtype : to === 'f16' ? 'F16' : 'F32',
        shape: info.shape,
        data: async () => {
          if (to === null || (to === 'f32' && info.dtype === 'F32')) return source.readRaw(name);
          const t = cast(await source.readTensor(name), to);
          return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
        },
      };
    }
    const layerMeta: CalderaCheckpointMeta['layers'] = {};
    for (const r of results) {
      Object.assign(tensors, r.replacement.tensors);
      layerMeta[r.name] = r.replacement.meta;
    }
    // the headline: each layer's paper bits (its result's bitsPerWeight) weighted by m·n
    meta = calderaCheckpointMeta(layerMeta, {
      method: s.method,
      options: { ...usedSettings(s), ...bitsRecord(s), ranks: s.ranks },
      seed,
    });
    // the source's configuration and side files (tokenizer, chat template, generation settings), when it has them
    const copy = await modelSideFiles(modelDir, true);
    // what is at --out now is replaced only if it still is an earlier checkpoint (the run took a while)
    await checkOutDir(out, []);
    await writeCheckpointDir(
      out,
      { meta, tensors, copyFiles: copy },
      { overwrite: true, signal: ctx.signal, onWarning: (m) => console.error(`warning: ${m}`) },
    );
  } finally {
    await source.close();
  }

  // the checkpoint is in place from here on: an interruption while it is scored leaves it without its report.json, and
  // says so (it said "interrupted", as if --out were as it was)
  const whileScoring = async <T>(work: () => Promise<T>): Promise<T> => {
    try {
      return await work();
    } catch (e) {
      if (!ctx.signal.aborted) throw e;
      throw new CalderaError('E_ABORTED', `interrupted after ${out} was written`, {
        cause: e,
        details: { checkpointWritten: out },
      });
    }
  };
  const compressed = await whileScoring(() => loadModel(out, { signal: ctx.signal }));
  const after = await whileScoring(() =>
    perplexity(compressed.model, heldOut, { context: evalCtx, signal: ctx.signal }),
  );
  // the source's storage as on disk
  const dtypes = [...sourceLinears.dtypes];
  const sourceDtype = dtypes.length === 1 ? dtypes[0]! : 'mixed';
  const report = {
    model: modelDir,
    out,
    method: s.method,
    seed,
    calibration: s.method === 'rtn' ? null : { windows: s.windows, length: s.length },
    ...bitsRecord(s),
    bitsPerWeight: meta.bitsPerWeight,
    sourceDtype,
    linearBytes: { original: sourceLinears.bytes, compressed: compressed.model.linearBytes() },
    fileBytes: { original: await weightFileBytes(modelDir), compressed: await weightFileBytes(out) },
    perplexity: { original: before.ppl, compressed: after.ppl, tokens: after.tokens, context: evalCtx },
    seconds: (performance.now() - ctx.t0) / 1000,
    layers: results.map((r) => ({
      name: r.name,
      rank: r.rank,
      bitsPerWeight: r.bitsPerWeight,
      error: r.error,
      seconds: r.seconds,
    })),
  };
  await whileScoring(() =>
    atomicWriteFile(join(out, 'report.json'), JSON.stringify(report, null, 2) + '\n', { signal: ctx.signal }),
  );
  if (json) console.log(JSON.stringify({ event: 'report', ...report }));
  else {
    console.log(
      `\nCALDERA compression of ${modelDir}\n→ ${out}  (method ${s.method}, ${report.seconds.toFixed(1)} s)\n`,
    );
    console.table(
      report.layers.map((l) => ({
        layer: l.name.replace('model.layers.', 'L'),
        rank: l.rank,
        bits: +l.bitsPerWeight.toFixed(3),
        error: +l.error.toFixed(4),
      })),
    );
    console.table([
      {
        model: `original (${sourceDtype})`,
        'bits/weight': +((8 * sourceLinears.bytes) / sourceLinears.params).toFixed(3),
        'linear MB': +(report.linearBytes.original / 1e6).toFixed(2),
        'file MB': +(report.fileBytes.original / 1e6).toFixed(2),
        perplexity: +before.ppl.toFixed(2),
      },
      {
        model: `${s.method}`,
        'bits/weight': +meta.bitsPerWeight.toFixed(3),
        'linear MB': +(report.linearBytes.compressed / 1e6).toFixed(2),
        'file MB': +(report.fileBytes.compressed / 1e6).toFixed(2),
        perplexity: +after.ppl.toFixed(2),
      },
    ]);
    console.log(
      `held-out perplexity on ${after.tokens} tokens (context ${evalCtx}); report: ${join(out, 'report.json')}`,
    );
  }
}
