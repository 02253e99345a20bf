import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { generate, loadModel, loadTokenizer, perplexity } from '@caldera/runtime-node';
import { flagNumber, flagString, progressBar, type Args } from '../args.js';
import { defaultText, modelDirOf, readDocuments, tokenizeDocuments } from './common.js';

export const evalHelp = `caldera eval [model-dir] [--text FILE] [--context N] [--stride N] [--max-tokens N] [--json]
Perplexity of a model (dense or Caldera checkpoint) on a text (default: the reference model's test split).`;

export async function evalCommand(a: Args): Promise<number> {
  const dir = modelDirOf(a.positionals[0]);
  const { model, config } = await loadModel(dir);
  const ids = (
    await tokenizeDocuments(
      dir,
      await readDocuments(flagString(a, 'text') ?? defaultText('test')),
      config.bosTokenId,
    )
  ).flat();
  const max = flagNumber(a, 'max-tokens', 16384);
  const context = flagNumber(a, 'context', 256);
  const bar = progressBar('eval', !a.flags.has('json') && process.stderr.isTTY === true);
  const r = perplexity(model, ids.slice(0, max), {
    context,
    stride: flagNumber(a, 'stride', context),
    onProgress: (d, t) => bar.update(d, t),
  });
  bar.done();
  if (a.flags.has('json')) console.log(JSON.stringify({ model: dir, ...r, context }));
  else
    console.log(
      `${dir}: perplexity ${r.ppl.toFixed(3)} (nll ${r.nll.toFixed(4)}) over ${r.tokens} tokens, context ${context}`,
    );
  return 0;
}

export const generateHelp = `caldera generate [model-dir] --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K] [--top-p P]
  [--repetition-penalty R] [--seed S] [--json]
Generate text (greedy by default), streaming tokens to stdout.`;

export async function generateCommand(a: Args): Promise<number> {
  const dir = modelDirOf(a.positionals[0]);
  const { model, config } = await loadModel(dir);
  const tok = await loadTokenizer(dir);
  const prompt = flagString(a, 'prompt', 'The')!;
  const ids = tok.encode(prompt, { add_special_tokens: false }).ids as number[];
  const full = config.bosTokenId === null ? ids : [config.bosTokenId, ...ids];
  const out: number[] = [];
  const t0 = performance.now();
  if (!a.flags.has('json')) process.stdout.write(prompt);
  let printed = '';
  for await (const t of generate(model, full, {
    maxTokens: flagNumber(a, 'max-tokens', 48),
    temperature: flagNumber(a, 'temperature', 0),
    topK: flagNumber(a, 'top-k', 0),
    topP: flagNumber(a, 'top-p', 1),
    repetitionPenalty: flagNumber(a, 'repetition-penalty', 1),
    seed: flagNumber(a, 'seed', 0),
    stopTokens: config.eosTokenId === null ? [] : [config.eosTokenId],
  })) {
    out.push(t);
    const text = tok.decode(out);
    if (!a.flags.has('json')) process.stdout.write(text.slice(printed.length));
    printed = text;
  }
  const secs = (performance.now() - t0) / 1000;
  if (a.flags.has('json'))
    console.log(
      JSON.stringify({ prompt, completion: printed, tokens: out.length, tokensPerSecond: out.length / secs }),
    );
  else console.log(`\n\n[${out.length} tokens, ${(out.length / secs).toFixed(1)} tokens/s]`);
  return 0;
}

export const inspectHelp = `caldera inspect [model-dir] [--json]
Architecture, parameter count, bits per weight per layer and file size of a model or Caldera checkpoint.`;

export async function inspectCommand(a: Args): Promise<number> {
  const dir = modelDirOf(a.positionals[0]);
  const { model, config, calderaMeta } = await loadModel(dir);
  const size = (await stat(join(dir, 'model.safetensors'))).size;
  const linearParams = Array.from({ length: config.numLayers }, (_, b) =>
    ['q', 'k', 'v', 'o', 'gate', 'up', 'down'].map((k) => {
      const l = model.weights.blocks[b]![k as 'q'];
      return l.inFeatures * l.outFeatures;
    }),
  )
    .flat()
    .reduce((x, y) => x + y, 0);
  const params =
    linearParams +
    config.vocabSize * config.hiddenSize * (config.tieWordEmbeddings ? 1 : 2) +
    config.hiddenSize * (2 * config.numLayers + 1);
  const info = {
    dir,
    architecture: config.architecture,
    config,
    parameters: params,
    fileBytes: size,
    linearBytes: model.linearBytes(),
    compressed: calderaMeta !== null,
    bitsPerWeight: calderaMeta ? (calderaMeta as { bitsPerWeight?: number }).bitsPerWeight : 16,
    layers: calderaMeta
      ? Object.entries(calderaMeta.layers).map(([name, l]) => ({
          name,
          rank: l.rank,
          bits: l.bitsPerWeight,
          error: l.error,
        }))
      : [],
  };
  if (a.flags.has('json')) console.log(JSON.stringify(info));
  else {
    console.log(
      `${dir}\n${config.architecture}: ${config.numLayers} layers, hidden ${config.hiddenSize}, MLP ${config.intermediateSize}, heads ${config.numHeads}/${config.numKvHeads} (q/kv), vocab ${config.vocabSize}`,
    );
    console.log(
      `parameters ${(params / 1e6).toFixed(2)} M, file ${(size / 1e6).toFixed(2)} MB, linear weights ${(info.linearBytes / 1e6).toFixed(2)} MB, ${info.compressed ? `CALDERA ${Number(info.bitsPerWeight).toFixed(3)} bits/weight` : 'dense'}`,
    );
    if (info.layers.length) console.table(info.layers);
  }
  return 0;
}
