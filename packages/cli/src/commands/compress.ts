import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import {
  atomicWriteFile,
  cast,
  CalderaError,
  openSafetensors,
  writeCheckpointDir,
  writeSafetensors,
  type CalderaCheckpointMeta,
  type Tensor,
} from '@caldera/core';
import {
  allocateRanks,
  compressModel,
  sampleWindows,
  type BlockStore,
  type CompressLayerFn,
  type LayerResult,
} from '@caldera/calibrate';
import { createPool } from '@caldera/linalg';
import { caldera, toCheckpointTensors, type CalderaOptions } from '@caldera/lowrank';
import { loadModel, ModelRunnerAdapter, perplexity } from '@caldera/runtime-node';
import { flagNumber, flagString, progressBar, type Args } from '../args.js';
import { defaultText, modelDirOf, readDocuments, tokenizeDocuments } from './common.js';

export const compressHelp = `caldera compress [model-dir] [options]

Compress every linear layer of a Llama-family model with CALDERA (W ≈ Q + L·R) and write a Caldera checkpoint.
Without model-dir, compresses the embedded reference model with its bundled calibration text.

Options:
  --out DIR            output checkpoint directory (default: ./caldera-out/<model>-<method>)
  --method NAME        caldera (default) | ldlq (rank 0, QuIP#-style) | rtn (E8P rounding, no Hessian) | lplr (low-rank only, 16-bit)
  --rank K             rank of L·R for every layer (overrides --bits)
  --bits B             target average bits per weight (paper accounting), ranks chosen per layer (default 2.4)
  --data FILE          calibration text (.txt, documents separated by blank lines, or .jsonl with "text")
  --windows N          calibration windows (default 32)   --length L   tokens per window (default 128)
  --eval FILE          held-out text for perplexity before/after (default: the reference test split)
  --eval-tokens N      tokens of held-out text to score (default 8192)
  --outer-iters N      CALDERA outer iterations (default 4)   --lplr-iters N   inner LPLR rounds (default 4)
  --propagate MODE     compressed (default) | original
  --seed S             seed (default 0)
  --json               JSON lines on stdout instead of tables`;

type Method = 'caldera' | 'ldlq' | 'rtn' | 'lplr';

/** FNV-1a of a layer name: per-layer seeds independent of processing order (resumed runs are identical). */
function nameSeed(seed: number, name: string): number {
  let h = 2166136261 ^ seed;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return h >>> 0;
}

function fileStore(dir: string): BlockStore {
  const paths = (b: number) => ({
    st: join(dir, `block-${String(b).padStart(4, '0')}.safetensors`),
    js: join(dir, `block-${String(b).padStart(4, '0')}.json`),
  });
  return {
    async load(b) {
      const p = paths(b);
      const ok = await stat(p.js).then(
        () => true,
        () => false,
      );
      if (!ok) return null;
      const info = JSON.parse(await readFile(p.js, 'utf8')) as Omit<LayerResult, 'replacement'>[] &
        { meta?: unknown }[];
      const reader = await openSafetensors(p.st);
      try {
        const out: LayerResult[] = [];
        for (const r of info as (Omit<LayerResult, 'replacement'> & {
          meta: Record<string, unknown>;
          tensorNames: string[];
        })[]) {
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
      await mkdir(dir, { recursive: true });
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

export async function compressCommand(a: Args): Promise<number> {
  const json = a.flags.has('json');
  const modelDir = modelDirOf(a.positionals[0]);
  const method = (flagString(a, 'method', 'caldera') as Method) ?? 'caldera';
  if (!['caldera', 'ldlq', 'rtn', 'lplr'].includes(method))
    throw new CalderaError('E_VALUE', `unknown --method '${method}'`);
  const seed = flagNumber(a, 'seed', 0);
  const out =
    flagString(a, 'out') ??
    join('caldera-out', `${basename(modelDir.replace(/\/$/, '')) || 'model'}-${method}`);
  const windowsN = flagNumber(a, 'windows', 32);
  const length = flagNumber(a, 'length', 128);
  const evalTokens = flagNumber(a, 'eval-tokens', 8192);
  const propagate = (flagString(a, 'propagate', 'compressed') as 'compressed' | 'original') ?? 'compressed';
  const log = (o: Record<string, unknown>) => (json ? console.log(JSON.stringify(o)) : undefined);
  const t0 = performance.now();

  const loaded = await loadModel(modelDir);
  const cfg = loaded.config;
  const bos = cfg.bosTokenId;
  const calib = await tokenizeDocuments(
    modelDir,
    await readDocuments(flagString(a, 'data') ?? defaultText('train')),
    bos,
  );
  const windows = sampleWindows(calib, { count: windowsN, length, seed });
  const heldOut = (
    await tokenizeDocuments(modelDir, await readDocuments(flagString(a, 'eval') ?? defaultText('test')), bos)
  )
    .flat()
    .slice(0, evalTokens);
  const evalCtx = Math.min(length * 2, cfg.maxPositions);
  const before = perplexity(loaded.model, heldOut, { context: evalCtx });
  log({ event: 'baseline', ppl: before.ppl, tokens: before.tokens });

  const originalLinearBytes = loaded.model.linearBytes(); // before the runner swaps in compressed layers
  const runner = new ModelRunnerAdapter(loaded.model);
  const layers = Array.from({ length: cfg.numLayers }, (_, b) => runner.linears(b)).flat();
  let ranks = new Map<string, number>();
  if (method === 'caldera' || method === 'lplr') {
    const fixed = flagNumber(a, 'rank');
    if (fixed !== undefined)
      ranks = new Map(layers.map((l) => [l.name, Math.min(fixed, l.outFeatures, l.inFeatures)]));
    else {
      const target = flagNumber(a, 'bits', method === 'lplr' ? 2 + 16 * 0.1 : 2.4);
      const budget =
        method === 'lplr'
          ? allocateRanks(
              layers.map((l) => ({ name: l.name, m: l.outFeatures, n: l.inFeatures })),
              { targetBits: target, q: 0, l: 16, r: 16, granularity: 8 },
            )
          : allocateRanks(
              layers.map((l) => ({ name: l.name, m: l.outFeatures, n: l.inFeatures })),
              { targetBits: target, granularity: 8 },
            );
      ranks = new Map(layers.map((l, i) => [l.name, budget.ranks[i]!]));
    }
  }
  const pool = createPool({ threads: 2 });
  const base: CalderaOptions = {
    outerIters: flagNumber(a, 'outer-iters', 4),
    lplrIters: flagNumber(a, 'lplr-iters', 4),
    pool,
  };
  const methodOptions = (name: string): CalderaOptions => {
    switch (method) {
      case 'caldera':
        return { ...base, rank: ranks.get(name) ?? 0 };
      case 'ldlq':
        return { ...base, rank: 0 };
      case 'rtn':
        return { ...base, rank: 0, dataAwareQ: false };
      case 'lplr':
        return { ...base, rank: Math.max(1, ranks.get(name) ?? 1), qBits: 0, lBits: 16, rBits: 16 };
    }
  };
  const compressLayer: CompressLayerFn = (w, h, info) => {
    const d = caldera(w, h, { ...methodOptions(info.name), seed: nameSeed(seed, info.name) });
    return {
      replacement: toCheckpointTensors(info.name, d) as unknown as LayerResult['replacement'],
      error: d.error,
      bitsPerWeight: d.paperBitsPerWeight,
      rank: d.rank,
    };
  };
  const bar = progressBar('compress', !json && process.stderr.isTTY === true);
  let results: LayerResult[];
  try {
    results = await compressModel(runner, windows, {
      compressLayer,
      propagate,
      needsHessian: method !== 'rtn',
      store: fileStore(`${out}.partial`),
      onProgress: (p) => {
        bar.update(
          p.layersDone,
          p.layersTotal,
          p.etaSeconds,
          `${p.phase} block ${p.block}${p.layer ? ' ' + p.layer.split('.').slice(-2).join('.') : ''}`,
        );
        log({ event: 'progress', ...p });
      },
    });
  } finally {
    pool.dispose();
    bar.done();
  }

  // checkpoint: dense non-linear tensors in f16, compressed linears as codes
  const tensors: Record<string, Tensor> = {};
  const w = loaded.model.weights;
  tensors['model.embed_tokens.weight'] = cast(w.embed, 'f16');
  w.blocks.forEach((blk, b) => {
    tensors[`model.layers.${b}.input_layernorm.weight`] = cast(
      { dtype: 'f32', shape: [blk.inputNorm.length], strides: [1], offset: 0, data: blk.inputNorm },
      'f16',
    );
    tensors[`model.layers.${b}.post_attention_layernorm.weight`] = cast(
      { dtype: 'f32', shape: [blk.postAttnNorm.length], strides: [1], offset: 0, data: blk.postAttnNorm },
      'f16',
    );
  });
  tensors['model.norm.weight'] = cast(
    { dtype: 'f32', shape: [w.norm.length], strides: [1], offset: 0, data: w.norm },
    'f16',
  );
  if (!cfg.tieWordEmbeddings && w.lmHead !== w.embed) tensors['lm_head.weight'] = cast(w.lmHead, 'f16');
  const layerMeta: CalderaCheckpointMeta['layers'] = {};
  let bitNum = 0;
  let bitDen = 0;
  for (const r of results) {
    Object.assign(tensors, r.replacement.tensors);
    layerMeta[r.name] = r.replacement.meta as unknown as CalderaCheckpointMeta['layers'][string];
    const [m, n] = (r.replacement.meta as { shape: [number, number] }).shape;
    bitNum += r.bitsPerWeight * m * n;
    bitDen += m * n;
  }
  const meta: CalderaCheckpointMeta = {
    format: 'caldera',
    version: 1,
    method,
    options: {
      windows: windowsN,
      length,
      propagate,
      outerIters: base.outerIters,
      lplrIters: base.lplrIters,
      ranks: Object.fromEntries(ranks),
    },
    seed,
    bitsPerWeight: bitNum / bitDen,
    layers: layerMeta,
  };
  const copy: Record<string, string> = {};
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) {
    if (
      await stat(join(modelDir, f)).then(
        () => true,
        () => false,
      )
    )
      copy[f] = join(modelDir, f);
  }
  await writeCheckpointDir(out, { meta, tensors, copyFiles: copy }, { overwrite: true });
  await rm(`${out}.partial`, { recursive: true, force: true });

  const compressed = await loadModel(out);
  const after = perplexity(compressed.model, heldOut, { context: evalCtx });
  const sizeOf = async (dir: string) => (await stat(join(dir, 'model.safetensors'))).size;
  const report = {
    model: modelDir,
    out,
    method,
    seed,
    calibration: { windows: windowsN, length },
    bitsPerWeight: meta.bitsPerWeight,
    linearBytes: { original: originalLinearBytes, compressed: compressed.model.linearBytes() },
    fileBytes: { original: await sizeOf(modelDir), compressed: await sizeOf(out) },
    perplexity: { original: before.ppl, compressed: after.ppl, tokens: after.tokens, context: evalCtx },
    seconds: (performance.now() - t0) / 1000,
    layers: results.map((r) => ({
      name: r.name,
      rank: r.rank,
      bitsPerWeight: r.bitsPerWeight,
      error: r.error,
      seconds: r.seconds,
    })),
  };
  await atomicWriteFile(join(out, 'report.json'), JSON.stringify(report, null, 2) + '\n');
  if (json) console.log(JSON.stringify({ event: 'report', ...report }));
  else {
    console.log(
      `\nCALDERA compression of ${modelDir}\n→ ${out}  (method ${method}, ${report.seconds.toFixed(1)} s)\n`,
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
        model: 'original (f16)',
        'bits/weight': 16,
        'linear MB': +(report.linearBytes.original / 1e6).toFixed(2),
        'file MB': +(report.fileBytes.original / 1e6).toFixed(2),
        perplexity: +before.ppl.toFixed(2),
      },
      {
        model: `${method}`,
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
  return 0;
}
