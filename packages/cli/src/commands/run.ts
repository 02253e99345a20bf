import { blockLinearNames, generate, perplexity } from '@caldera/runtime-node';
import { flagNumber, flagString, progressBar, type Args } from '../args.js';
import { defaultText, modelDirOf, openModel, poolFor, readDocuments, type OpenedModel } from './common.js';

export const evalHelp = `caldera eval [model] [--text FILE] [--context N] [--stride N] [--max-tokens N] [--threads N]
  [--tokenizer FILE] [--json]
Perplexity of a model (Hugging Face / Caldera directory, or llama2.c .bin) on a text (default: the reference
model's test split). Prints tokens, mean NLL and perplexity.
  --context N      tokens per window (default 256)
  --stride N       window step, ≤ context (default: context)
  --max-tokens N   evaluate at most N tokens of the text (default 16384)
  --threads N      threads for the products of each window (default 2; 1 = the calling thread only)
  --tokenizer FILE tokenizer.bin of a llama2.c model (default: beside the .bin)`;

/**
 * Open the command's model (`[model]`, `--tokenizer`) with a linear-algebra pool of `--threads` threads (default 2),
 * run `use` on it, and dispose of the pool.
 */
async function withModel(
  a: Args,
  use: (opened: OpenedModel, path: string) => Promise<number>,
): Promise<number> {
  const path = modelDirOf(a.positionals[0]);
  const pool = poolFor(flagNumber(a, 'threads', 2));
  try {
    return await use(await openModel(path, flagString(a, 'tokenizer'), pool), path);
  } finally {
    pool?.dispose();
  }
}

export async function evalCommand(a: Args): Promise<number> {
  return withModel(a, (opened, path) => evaluate(a, path, opened));
}

async function evaluate(a: Args, path: string, { model, config, tokenizer }: OpenedModel): Promise<number> {
  const docs = await readDocuments(flagString(a, 'text') ?? defaultText('test'));
  const bos = config.bosTokenId;
  const ids = docs.flatMap((d) => (bos === null ? tokenizer.encode(d) : [bos, ...tokenizer.encode(d)]));
  const max = flagNumber(a, 'max-tokens', 16384);
  const context = flagNumber(a, 'context', 256);
  const bar = progressBar('eval', !a.flags.has('json') && process.stderr.isTTY === true);
  const t0 = performance.now();
  const r = perplexity(model, ids.slice(0, max), {
    context,
    stride: flagNumber(a, 'stride', context),
    onProgress: (d, t) => {
      const el = (performance.now() - t0) / 1000;
      bar.update(d, t, d > 0 ? (el / d) * (t - d) : undefined);
    },
  });
  bar.done();
  if (a.flags.has('json')) console.log(JSON.stringify({ model: path, ...r, context }));
  else
    console.log(
      `${path}: perplexity ${r.ppl.toFixed(3)} (nll ${r.nll.toFixed(4)}) over ${r.tokens} tokens, context ${context}`,
    );
  return 0;
}

export const generateHelp = `caldera generate [model] --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K] [--top-p P]
  [--repetition-penalty R] [--stop STRING] [--seed S] [--threads N] [--tokenizer FILE] [--json]
Generate text (greedy by default), streaming tokens to stdout. Model: Hugging Face / Caldera directory or llama2.c .bin.
--threads N: threads for the prompt's products (default 2; 1 = the calling thread only; decoding uses one).`;

export async function generateCommand(a: Args): Promise<number> {
  return withModel(a, (opened) => generateText(a, opened));
}

async function generateText(a: Args, { model, config, tokenizer }: OpenedModel): Promise<number> {
  const prompt = flagString(a, 'prompt', 'The')!;
  const ids = tokenizer.encode(prompt);
  const full = config.bosTokenId === null ? ids : [config.bosTokenId, ...ids];
  const json = a.flags.has('json');
  const out: number[] = [];
  const t0 = performance.now();
  if (!json) process.stdout.write(prompt);
  let printed = '';
  const stop = flagString(a, 'stop');
  for await (const t of generate(model, full, {
    maxTokens: flagNumber(a, 'max-tokens', 48),
    temperature: flagNumber(a, 'temperature', 0),
    topK: flagNumber(a, 'top-k', 0),
    topP: flagNumber(a, 'top-p', 1),
    repetitionPenalty: flagNumber(a, 'repetition-penalty', 1),
    seed: flagNumber(a, 'seed', 0),
    stopTokens: config.eosTokenId === null ? [] : [config.eosTokenId],
    ...(stop ? { stopStrings: [stop], decode: (x: number[]) => tokenizer.decode(x) } : {}),
  })) {
    out.push(t);
    const text = tokenizer.decode(out);
    if (!json) process.stdout.write(text.slice(printed.length));
    printed = text;
  }
  const secs = (performance.now() - t0) / 1000;
  if (json)
    console.log(
      JSON.stringify({ prompt, completion: printed, tokens: out.length, tokensPerSecond: out.length / secs }),
    );
  else console.log(`\n\n[${out.length} tokens, ${(out.length / secs).toFixed(1)} tokens/s]`);
  return 0;
}

export const inspectHelp = `caldera inspect [model] [--tokenizer FILE] [--json]
Architecture, parameter count, bits per weight per layer and file size of a model, Caldera checkpoint or llama2.c .bin.`;

export async function inspectCommand(a: Args): Promise<number> {
  const path = modelDirOf(a.positionals[0]);
  const { model, config, calderaMeta, fileBytes, format } = await openModel(path, flagString(a, 'tokenizer'));
  const layers = Array.from({ length: config.numLayers }, (_, b) =>
    blockLinearNames(b).map(({ name }) => {
      const l = model.linear(name);
      const meta = calderaMeta?.layers?.[name];
      return {
        name,
        shape: `${l.outFeatures}x${l.inFeatures}`,
        kind: meta ? 'caldera' : l.weightBytes === l.inFeatures * l.outFeatures * 2 ? 'f16' : 'f32',
        rank: meta?.rank ?? null,
        bitsPerWeight: Number(((l.weightBytes * 8) / (l.inFeatures * l.outFeatures)).toFixed(4)),
        error: meta?.error ?? null,
      };
    }),
  ).flat();
  const linearParams = layers.reduce((s, l) => {
    const [m, n] = l.shape.split('x').map(Number) as [number, number];
    return s + m * n;
  }, 0);
  const params =
    linearParams +
    config.vocabSize * config.hiddenSize * (config.tieWordEmbeddings ? 1 : 2) +
    config.hiddenSize * (2 * config.numLayers + 1);
  const linearBytes = model.linearBytes();
  const info = {
    path,
    format,
    architecture: config.architecture,
    config,
    parameters: params,
    fileBytes,
    linearBytes,
    linearBitsPerWeight: (linearBytes * 8) / linearParams,
    layers,
  };
  if (a.flags.has('json')) console.log(JSON.stringify(info));
  else {
    console.log(
      `${path} (${format})\n${config.architecture}: ${config.numLayers} layers, hidden ${config.hiddenSize}, MLP ${config.intermediateSize}, heads ${config.numHeads}/${config.numKvHeads} (q/kv), head dim ${config.headDim}, vocab ${config.vocabSize}`,
    );
    console.log(
      `parameters ${(params / 1e6).toFixed(2)} M, files ${(fileBytes / 1e6).toFixed(2)} MB, linear weights ${(linearBytes / 1e6).toFixed(2)} MB (${info.linearBitsPerWeight.toFixed(3)} bits/weight)`,
    );
    console.table(layers);
  }
  return 0;
}
