import {
  CalderaError,
  describeValue,
  linearShape,
  samplingOf,
  visibleText,
  type ModelConfig,
  type ModelSampling,
} from '@caldera/core';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { paperBitsFromMeta } from '@caldera/lowrank';
import {
  blockLinearNames,
  ChatSession,
  createDecodePool,
  generate,
  HfTokenizer,
  perplexity,
  planLlama2cMemory,
  readLlama2cLayout,
  readJsonFile,
  readModelLayout,
  type DecodePool,
  type MemoryPlan,
} from '@caldera/runtime-node';
import {
  checkFlag,
  tokenWindow,
  flagNumber,
  flagString,
  POSITIVE,
  POSITIVE_INT,
  progressBar,
  SEED,
  NON_NEGATIVE_INT,
  THREADS,
  type Args,
} from '../args.js';
import {
  defaultText,
  HELD_OUT_CONTEXT,
  HELD_OUT_TOKENS,
  modelDirOf,
  openModel,
  poolFor,
  leadingTokens,
  readDocuments,
  stopTokenIds,
  unreachableStopWarning,
  weightFileBytes,
  type OpenedModel,
} from './common.js';
import { completionDecoder, streamedText } from '../stream-text.js';

export const evalHelp = `caldera eval [model] [--text FILE] [--whole-text] [--context N] [--stride N] [--max-tokens N]
  [--threads N] [--tokenizer FILE] [--json]
Perplexity of a model (Hugging Face / Caldera directory, or llama2.c .bin) on a text (default: the reference
model's test split). Prints tokens, mean NLL and perplexity. The defaults score what the held-out perplexities of
'caldera compress' and 'caldera finetune' score (the first 8192 tokens, windows of 256), so the numbers agree.
  --whole-text     score the file as one text after one BOS (a .jsonl's texts joined by blank lines), not as documents
                   each after its BOS: the papers' WikiText-2 protocol (GPTQ, QuIP#, CALDERA)
  --context N      tokens per window, 2 … the model's max positions (default 256, or the max positions if fewer)
  --stride N       window step, 1 … context (default: context)
  --max-tokens N   evaluate at most N tokens of the text (default 8192)
  --threads N      threads for the products of each window, 1 … 256 (default 2; 1 = the calling thread only)
  --tokenizer FILE tokenizer.bin of a llama2.c model (default: beside the .bin)`;

/**
 * Open the command's model (`[model]`, and `tokenizer`: the `--tokenizer` of a llama2.c model) with a linear-algebra
 * pool of `--threads` threads (default 2), and with `decode` a decode pool of as many threads too (the single-token
 * products), run `use` on it, and dispose of the pools.
 */
async function withModel(
  a: Args,
  use: (opened: OpenedModel, path: string) => Promise<number>,
  { decode = false, tokenizer }: { decode?: boolean; tokenizer?: string } = {},
): Promise<number> {
  const path = modelDirOf(a.positionals[0]);
  const threads = flagNumber(a, 'threads', 2, THREADS);
  const pool = poolFor(threads);
  // decode threads spin between a token's layers: never more of them than cores
  const decodeThreads = Math.min(threads, availableParallelism());
  let decodePool: DecodePool | undefined;
  try {
    decodePool = decode && decodeThreads > 1 ? await createDecodePool({ threads: decodeThreads }) : undefined;
    return await use(await openModel(path, tokenizer, pool, decodePool), path);
  } finally {
    decodePool?.dispose();
    pool?.dispose();
  }
}

export async function evalCommand(a: Args): Promise<number> {
  // the checks that need no model first; --context (its range is the model's) once the model is open
  const max = flagNumber(a, 'max-tokens', HELD_OUT_TOKENS, POSITIVE_INT);
  if (max < 2)
    throw new CalderaError(
      'E_VALUE',
      `--max-tokens ${max} leaves too few tokens; perplexity needs at least 2`,
    );
  const context = flagNumber(a, 'context');
  const stride = flagNumber(a, 'stride', undefined, POSITIVE_INT);
  if (context !== undefined && stride !== undefined && Number.isInteger(context) && context >= 2)
    checkFlag('stride', stride, { integer: true, min: 1, max: context }, ' (at most --context)');
  return withModel(a, (opened, path) => evaluate(a, path, opened, { max, context, stride }), {
    tokenizer: flagString(a, 'tokenizer'),
  });
}

async function evaluate(
  a: Args,
  path: string,
  { model, config, tokenizer }: OpenedModel,
  flags: { max: number; context: number | undefined; stride: number | undefined },
): Promise<number> {
  const maxPos = config.maxPositions;
  const context = tokenWindow('context', flags.context, HELD_OUT_CONTEXT, maxPos);
  const stride =
    flags.stride === undefined
      ? context
      : checkFlag('stride', flags.stride, { integer: true, min: 1, max: context }, ' (at most the context)');
  const text = flagString(a, 'text');
  const docs = await readDocuments(text ?? defaultText('test'), { whole: a.flags.has('whole-text') });
  const bos = config.bosTokenId;
  // the first --max-tokens only (2 or more: the whole text when it has fewer, so the count below is the text's)
  const ids = leadingTokens((d) => tokenizer.encode(d), docs, bos, flags.max);
  // the file and the option at fault, rather than perplexity's "needs at least 2 tokens" (a BOS is not the text's)
  if (ids.length < 2 && text !== undefined)
    throw new CalderaError(
      'E_VALUE',
      `--text ${text} has ${ids.length - (bos === null ? 0 : docs.length)} tokens; perplexity needs at least 2`,
    );
  const bar = progressBar('eval', !a.flags.has('json') && process.stderr.isTTY === true);
  const t0 = performance.now();
  const r = await perplexity(model, ids, {
    context,
    stride,
    onProgress: ({ done: d, total: t }) => {
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

export const generateHelp = `caldera generate [model] [--prompt TEXT] [--chat] [--system TEXT] [--template-vars JSON] [--max-tokens N]
  [--temperature T] [--top-k K] [--top-p P] [--repetition-penalty R] [--stop STRING] [--seed S] [--threads N]
  [--tokenizer FILE] [--json]
Generate text (sampling as the model's generation_config.json asks; greedy without one), streaming tokens to stdout.
Model: Hugging Face / Caldera directory or llama2.c .bin.
  --prompt TEXT              the text to continue (default "The"), or with --chat the user's message
  --chat                     answer --prompt as a chat model: the message rendered with the model's chat template
                             (chat_template.jinja, else tokenizer_config.json's), only the answer printed
  --system TEXT              with --chat, a system message before the user's
  --template-vars JSON       with --chat, more names for the chat template, a JSON object, as transformers'
                             apply_chat_template keyword arguments: e.g. '{"enable_thinking": false}' for Qwen3
                             (JSON numbers do not keep Python's int/float difference: 1.0 is the int 1 there)
  --max-tokens N             tokens to generate at most, a positive integer (default 48; generation also stops at
                             the model's max positions)
  --temperature T            sampling temperature, ≥ 0 (0: greedy)
  --top-k K                  sample among the K most likely tokens, a non-negative integer (0: all)
  --top-p P                  nucleus sampling, in (0, 1] (1: all)
  --repetition-penalty R     > 0; above 1 discourages tokens of the prompt and of the output so far (1: none)
                             Defaults of these four: what the model's generation_config.json asks for, as
                             transformers applies it (with do_sample: its temperature, top_k, top_p; else greedy;
                             its repetition_penalty either way); without one, greedy decoding and no penalty
  --stop STRING              stop when the output contains STRING (not printed)
  --seed S                   sampling seed, an integer in [0, 4294967295] (default 0)
  --threads N                threads for the prompt's products, 1 … 256 (default 2; 1 = the calling thread only),
                             and for decoding each token (the rows of the larger layers split over them; at most
                             one per core); the output does not depend on it
  --tokenizer FILE           tokenizer.bin of a llama2.c model (default: beside the .bin)`;

export async function generateCommand(a: Args): Promise<number> {
  const options = {
    maxTokens: flagNumber(a, 'max-tokens', 48, POSITIVE_INT),
    seed: flagNumber(a, 'seed', 0, SEED),
  };
  const given = givenSampling(a);
  const prompt = flagString(a, 'prompt', 'The')!;
  const system = flagString(a, 'system');
  const chat = a.flags.has('chat');
  if (system !== undefined && !chat) throw new CalderaError('E_VALUE', '--system needs --chat');
  const templateVars = templateVarsOf(flagString(a, 'template-vars'));
  if (templateVars !== undefined && !chat) throw new CalderaError('E_VALUE', '--template-vars needs --chat');
  const stop = flagString(a, 'stop');
  if (stop === '') throw new CalderaError('E_VALUE', '--stop needs a non-empty string');
  return withModel(
    a,
    async (opened, path) =>
      generateText(a, path, opened, chat ? { user: prompt, system, templateVars } : { text: prompt }, {
        ...options,
        ...(await samplingOptions(path, opened, given)),
        stop,
      }),
    { decode: true, tokenizer: flagString(a, 'tokenizer') },
  );
}

/** The sampling flags given; the others come from the model's generation_config.json ({@link samplingOptions}). */
function givenSampling(a: Args): Partial<ModelSampling> {
  return {
    ...(a.flags.has('temperature') ? { temperature: flagNumber(a, 'temperature', 0, { min: 0 }) } : {}),
    ...(a.flags.has('top-k') ? { topK: flagNumber(a, 'top-k', 0, NON_NEGATIVE_INT) } : {}),
    ...(a.flags.has('top-p') ? { topP: flagNumber(a, 'top-p', 1, { above: 0, max: 1 }) } : {}),
    ...(a.flags.has('repetition-penalty')
      ? { repetitionPenalty: flagNumber(a, 'repetition-penalty', 1, POSITIVE) }
      : {}),
  };
}

/**
 * The sampling `generate` and `chat` use: each of `given` (the flags on the command line), else what the model's
 * `generation_config.json` asks for (core's `samplingOf`: transformers' reading; a llama2.c model has none: greedy).
 * Prints to stderr which settings came from the model and any field of it generate cannot apply.
 */
async function samplingOptions(
  path: string,
  opened: OpenedModel,
  given: Partial<ModelSampling>,
): Promise<ModelSampling> {
  const file = join(path, 'generation_config.json');
  const json = opened.format === 'llama2.c' ? undefined : await readJsonFile(file, { optional: true });
  const { options, notApplied } = samplingOf(json, file, given);
  const flags = {
    temperature: 'temperature',
    topK: 'top-k',
    topP: 'top-p',
    repetitionPenalty: 'repetition-penalty',
  };
  // the settings taken from the file that differ from greedy decoding without a penalty (what no file means); top-k
  // and top-p only where they act (a temperature above 0)
  const none = samplingOf(undefined).options;
  const fromModel = (Object.keys(flags) as (keyof ModelSampling)[]).filter(
    (k) =>
      !(k in given) &&
      options[k] !== none[k] &&
      (options.temperature > 0 || k === 'temperature' || k === 'repetitionPenalty'),
  );
  if (fromModel.length)
    console.error(
      `sampling as generation_config.json asks: ${fromModel.map((k) => `--${flags[k]} ${options[k]}`).join(' ')}` +
        (options.temperature > 0 ? ' (--temperature 0 for greedy decoding)' : ''),
    );
  if (notApplied.length)
    console.error(
      `warning: generation_config.json's ${notApplied.join(', ')} not applied (generate has no such option)`,
    );
  return options;
}

/** `--template-vars`: a JSON object (undefined when not given); `E_VALUE` for text that is not one. */
function templateVarsOf(text: string | undefined): Record<string, unknown> | undefined {
  if (text === undefined) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new CalderaError('E_VALUE', `--template-vars is not JSON: ${(e as Error).message}`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new CalderaError(
      'E_VALUE',
      `--template-vars must be a JSON object (e.g. '{"enable_thinking": false}'), got ${describeValue(v)}`,
    );
  return v as Record<string, unknown>;
}

/** The prompt's token ids: the text after BOS, or a chat rendered with the model's template (which places BOS). */
function promptIds(
  { config, tokenizer }: OpenedModel,
  prompt:
    | { text: string }
    | { user: string; system: string | undefined; templateVars: Record<string, unknown> | undefined },
): number[] {
  if ('text' in prompt) {
    const ids = tokenizer.encode(prompt.text);
    if (ids.length === 0) throw new CalderaError('E_VALUE', '--prompt is empty');
    return config.bosTokenId === null ? ids : [config.bosTokenId, ...ids];
  }
  // a chat_template of the wrong type is named by applyChatTemplate (E_FORMAT), not reported as missing
  const field = tokenizer instanceof HfTokenizer ? tokenizer.config.chat_template : undefined;
  if (
    !(tokenizer instanceof HfTokenizer) ||
    (!tokenizer.hasChatTemplate && (field === undefined || field === null))
  )
    throw new CalderaError(
      'E_UNSUPPORTED',
      '--chat needs a model with a chat template (chat_template.jinja, or chat_template in tokenizer_config.json); ' +
        'this one has none',
    );
  const messages = [
    ...(prompt.system === undefined ? [] : [{ role: 'system', content: prompt.system }]),
    { role: 'user', content: prompt.user },
  ];
  // templates write the BOS token themselves (as text, which encodes to its id)
  return tokenizer.encode(
    tokenizer.applyChatTemplate(messages, prompt.templateVars ? { variables: prompt.templateVars } : {}),
  );
}

async function generateText(
  a: Args,
  path: string,
  opened: OpenedModel,
  prompt: Parameters<typeof promptIds>[1],
  options: {
    maxTokens: number;
    temperature: number;
    topK: number;
    topP: number;
    repetitionPenalty: number;
    seed: number;
    /** `--stop`: the text at which the completion ends (cut from it). */
    stop: string | undefined;
  },
): Promise<number> {
  const { model, config, tokenizer } = opened;
  const { stop, ...generateOptions } = options;
  // llama2.c's run.c also stops at BOS, which delimits its sequences (TinyStories models end a story with it)
  const stopTokens =
    opened.format === 'llama2.c'
      ? [...config.eosTokenIds, ...(config.bosTokenId === null ? [] : [config.bosTokenId])]
      : await stopTokenIds(path, config);
  const unreachable = unreachableStopWarning(stopTokens, config.vocabSize);
  if (unreachable) console.error(unreachable);
  const full = promptIds(opened, prompt);
  if (full.length >= config.maxPositions)
    throw new CalderaError(
      'E_VALUE',
      `--prompt is ${full.length} tokens; the model's max positions (${config.maxPositions}) leave no room to generate`,
    );
  const json = a.flags.has('json');
  const out: number[] = [];
  const t0 = performance.now();
  // a continuation is printed after its prompt; a chat answer alone
  if (!json && 'text' in prompt) process.stdout.write(prompt.text);
  let printed = '';
  const completion = completionDecoder(tokenizer, full);
  // the stop string is cut from the text here, not by generate(): a token-level stop would leave its beginning in
  // the tokens before the one that completes it (" Cour" + "t")
  const stops = stop === undefined ? [] : [stop];
  let visible = visibleText('', stops);
  for await (const t of generate(model, full, { ...generateOptions, stopTokens })) {
    out.push(t);
    visible = visibleText(completion(out), stops);
    const chunk = streamedText(printed, visible.text, visible.stopped);
    if (!json) process.stdout.write(chunk);
    printed += chunk;
    if (visible.stopped) break;
  }
  const rest = streamedText(printed, visible.stopped ? visible.text : completion(out), true);
  if (!json) process.stdout.write(rest);
  printed += rest;
  const secs = (performance.now() - t0) / 1000;
  if (json)
    console.log(
      JSON.stringify({
        prompt: 'text' in prompt ? prompt.text : prompt.user,
        ...('text' in prompt ? {} : { system: prompt.system ?? null }),
        promptTokens: full.length,
        sampling: {
          temperature: options.temperature,
          topK: options.topK,
          topP: options.topP,
          repetitionPenalty: options.repetitionPenalty,
        },
        completion: printed,
        tokens: out.length,
        tokensPerSecond: out.length / secs,
      }),
    );
  else console.log(`\n\n[${out.length} tokens, ${(out.length / secs).toFixed(1)} tokens/s]`);
  return 0;
}

export const chatHelp = `caldera chat [model] [--system TEXT] [--template-vars JSON] [--max-tokens N] [--context N]
  [--temperature T] [--top-k K] [--top-p P] [--repetition-penalty R] [--seed S] [--threads N] [--json]
Talk with a chat model: each line read from standard input is your message, and the reply streams to standard
output. The conversation's KV cache is kept between turns, so each turn runs only its new tokens (the whole
conversation is rendered with the model's chat template each turn, as the model sees it). '/reset' forgets the
conversation, '/exit' or the end of the input quits; Ctrl-C stops a reply (the turn is dropped; a second one quits),
at the prompt it quits (exit code 130). A message that no longer fits the context is dropped with a word ('/reset').
Model: Hugging Face / Caldera directory with a chat template (chat_template.jinja, else tokenizer_config.json's); the
embedded reference model has none, so give one.
  --system TEXT              a system message before the conversation
  --template-vars JSON       more names for the chat template, a JSON object (as generate's: '{"enable_thinking":
                             false}' for Qwen3)
  --max-tokens N             tokens per reply at most, a positive integer (default 512)
  --context N                positions of the conversation, 2 … the model's max positions (default 4096, or the
                             max positions if fewer); a message that does not fit is dropped: '/reset' frees them
  --temperature T            sampling temperature, ≥ 0 (0: greedy)
  --top-k K                  sample among the K most likely tokens, a non-negative integer (0: all)
  --top-p P                  nucleus sampling, in (0, 1] (1: all)
  --repetition-penalty R     > 0; above 1 discourages tokens of the conversation and of the reply so far (1: none)
                             Defaults of these four: what the model's generation_config.json asks for (as generate)
  --seed S                   sampling seed of the first message (the i-th message sent, counting from 0 and over
                             /reset, uses S + i), an integer in [0, 4294967295] (default 0)
  --threads N                threads for the products (as generate's; the output does not depend on it)
  --json                     one JSON object per turn (message, reply, prompt and reused tokens, tokens, tokens/s)
                             instead of the text`;

export async function chatCommand(a: Args): Promise<number> {
  const maxTokens = flagNumber(a, 'max-tokens', 512, POSITIVE_INT);
  const seed = flagNumber(a, 'seed', 0, SEED);
  const given = givenSampling(a);
  const system = flagString(a, 'system');
  const variables = templateVarsOf(flagString(a, 'template-vars'));
  const context = flagNumber(a, 'context');
  return withModel(
    a,
    async (opened, path) => {
      const { model, config, tokenizer } = opened;
      if (!(tokenizer instanceof HfTokenizer) || !tokenizer.hasChatTemplate)
        throw new CalderaError(
          'E_UNSUPPORTED',
          'chat needs a model with a chat template (chat_template.jinja, or chat_template in tokenizer_config.json); ' +
            'this one has none',
        );
      const sampling = await samplingOptions(path, opened, given);
      const stopTokens = await stopTokenIds(path, config);
      const unreachable = unreachableStopWarning(stopTokens, config.vocabSize);
      if (unreachable) console.error(unreachable);
      const session = new ChatSession(model, tokenizer, {
        ...(system === undefined ? {} : { system }),
        ...(variables === undefined ? {} : { variables }),
        contextLength: tokenWindow('context', context, 4096, config.maxPositions),
      });
      return converse(session, { ...sampling, maxTokens, stopTokens, seed }, a.flags.has('json'));
    },
    { decode: true },
  );
}

/**
 * The loop of {@link chatCommand}: a turn per line of standard input until '/exit' or its end. Ctrl-C during a reply
 * aborts it (the turn is dropped); at the prompt it ends the chat.
 */
async function converse(
  session: ChatSession,
  options: ModelSampling & { maxTokens: number; stopTokens: number[]; seed: number },
  json: boolean,
): Promise<number> {
  const tty = process.stdin.isTTY === true && !json;
  const lines = createInterface({ input: process.stdin, terminal: false });
  let reply: AbortController | null = null;
  let quit = 0;
  // Ctrl-C stops a reply between two passes; a second one (a long prompt's pass runs on) or one at the prompt quits,
  // with the exit code of an interrupted command
  const onInterrupt = () => {
    if (reply && !reply.signal.aborted) reply.abort(new Error('interrupted'));
    else if (reply) process.exit(130);
    else {
      quit = 130;
      lines.close();
    }
  };
  process.on('SIGINT', onInterrupt);
  const ask = () => tty && process.stdout.write('> ');
  let turn = 0;
  try {
    ask();
    for await (const raw of lines) {
      const line = raw.trim();
      if (line === '/exit') break;
      if (line === '/reset') {
        session.reset();
        if (!json) console.log('[conversation reset]');
        ask();
        continue;
      }
      if (line === '') {
        ask();
        continue;
      }
      reply = new AbortController();
      const out: number[] = [];
      let printed = '';
      const decode = completionDecoder(session.tokenizer, []);
      // the reply's text so far, without the end-of-turn token
      const replyText = () => decode(out.filter((id) => !options.stopTokens.includes(id)));
      const t0 = performance.now();
      let interrupted = false;
      let refused: string | null = null;
      try {
        for await (const t of session.send(line, {
          ...options,
          seed: (options.seed + turn) % 2 ** 32,
          signal: reply.signal,
        })) {
          out.push(t);
          const chunk = streamedText(printed, replyText());
          if (!json) process.stdout.write(chunk);
          printed += chunk;
        }
      } catch (e) {
        if (!(e instanceof CalderaError && (e.code === 'E_ABORTED' || e.code === 'E_VALUE'))) throw e;
        // E_VALUE: the conversation no longer fits the context (or the model gave NaN logits): the turn is dropped
        if (e.code === 'E_VALUE') refused = e.message;
        else interrupted = true;
      } finally {
        reply = null;
      }
      const rest = streamedText(printed, replyText(), true);
      if (!json) process.stdout.write(rest);
      printed += rest;
      const secs = (performance.now() - t0) / 1000;
      const stats = interrupted || refused !== null ? null : session.lastTurn!;
      if (json)
        console.log(
          JSON.stringify({
            turn,
            message: line,
            reply: printed,
            interrupted,
            ...(refused === null ? {} : { error: refused }),
            ...(stats
              ? { promptTokens: stats.promptTokens, reusedTokens: stats.reusedTokens, endedBy: stats.endedBy }
              : {}),
            tokens: out.length,
            tokensPerSecond: out.length / secs,
          }),
        );
      else if (refused !== null) console.log(`[${refused}; the turn is dropped: /reset starts over]\n`);
      else if (interrupted) console.log('\n[interrupted: the turn is dropped]\n');
      else
        console.log(
          `\n[${out.length} tokens, ${(out.length / secs).toFixed(1)} tokens/s` +
            (stats!.endedBy === 'context' ? '; the context is full: /reset starts over' : '') +
            ']\n',
        );
      turn++;
      ask();
    }
  } finally {
    process.off('SIGINT', onInterrupt);
    lines.close();
  }
  return quit;
}

export const inspectHelp = `caldera inspect [model] [--json]
Architecture, parameter count, bits per weight per layer and file size of a model, Caldera checkpoint or llama2.c .bin.
Bits per weight are stored bits (scales and sign vectors included); a checkpoint's are also given in the paper's
accounting (Q's and the factors' widths only), the figure 'compress --bits' targets and compress reports.
Dense layers are reported as stored in the file (f32, f16 or bf16), whatever the runtime holds them as in memory;
"in memory" is what runtime-node's loader holds resident for the weights (its memory plan: a CALDERA layer's codes,
L and R decoded to f32 and signs in its kernel's memory, dense layers in their kernels' memory, embedding, norms).
Nothing but the headers is read: a directory is described from config.json, caldera.json and the safetensors headers,
a llama2.c .bin from its 28-byte header and its size (the weights' values are not checked: 'caldera eval' loads them).`;

/** One linear layer as `inspect` reports it: its shape, storage and, for a CALDERA layer, rank and error. */
interface InspectedLinear {
  name: string;
  outFeatures: number;
  inFeatures: number;
  /** `caldera`, or the stored dtype of a dense weight (`f32`, `f16`, `bf16`, `f64`). */
  kind: string;
  rank: number | null;
  error: number | null;
  /**
   * A CALDERA layer's bits per weight in the paper's accounting (`caldera.json`'s `paperBitsPerWeight`: Q's and the
   * factors' widths, scales and signs excluded), what `--bits` targets; null for a dense layer.
   */
  paperBitsPerWeight: number | null;
  /** Bytes of the weight in the file (a CALDERA layer: its tensors' data, from the safetensors header). */
  bytes: number;
  /** Values of its bias (Qwen2's q/k/v, Llama's with `attention_bias`/`mlp_bias`), 0 without one. */
  biasParams: number;
  /**
   * Bytes the layer holds resident once runtime-node has loaded it (`LinearLayout.memoryBytes`: dense f16 and bf16 as
   * stored, f32 and f64 as f32, in the kernel's region of the model's arena; a CALDERA layer's codes, L̂ and R̂ in f32,
   * signs; the bias).
   */
  memoryBytes: number;
}

/** What `inspect` reports of a model, without its tensor data where it can. */
interface InspectedModel {
  config: ModelConfig;
  fileBytes: number;
  format: OpenedModel['format'];
  layers: InspectedLinear[];
  /** runtime-node's memory plan of the model (default dtype): what `loadModel`'s `onPlan` receives. */
  memory: MemoryPlan;
  /** A checkpoint's `caldera.json` `bitsPerWeight` (the paper's accounting over its compressed layers); else null. */
  paperBitsPerWeight: number | null;
}

/**
 * A Hugging Face / Caldera model directory as runtime-node's `readModelLayout` finds it from config.json,
 * caldera.json and the safetensors headers (checked as `loadModel` checks them, with its messages): no tensor data is
 * read, so a 7B model costs kilobytes, not its size in memory.
 */
async function modelDirLayout(dir: string): Promise<InspectedModel> {
  const { config, calderaMeta, linears, memory } = await readModelLayout(dir);
  return {
    config,
    fileBytes: await weightFileBytes(dir),
    format: calderaMeta ? 'caldera' : 'huggingface',
    paperBitsPerWeight: calderaMeta?.bitsPerWeight ?? null,
    layers: linears.map((l) => ({
      name: l.name,
      outFeatures: l.outFeatures,
      inFeatures: l.inFeatures,
      kind: l.caldera ? 'caldera' : l.weight.dtype,
      rank: l.caldera?.rank ?? null,
      error: l.caldera ? (l.caldera.error ?? null) : null,
      // computed from the entry where caldera.json leaves it out (the format says readers do so)
      paperBitsPerWeight: l.caldera ? (l.caldera.paperBitsPerWeight ?? paperBitsFromMeta(l.caldera)) : null,
      bytes: l.bytes,
      biasParams: l.bias ? l.outFeatures : 0,
      memoryBytes: l.memoryBytes,
    })),
    memory,
  };
}

/** The layout of a llama2.c `.bin` from its header and size (runtime-node's `readLlama2cLayout`; all f32). */
async function llama2cLayout(path: string): Promise<InspectedModel> {
  const { config, fileBytes } = await readLlama2cLayout(path);
  const memory = planLlama2cMemory(config);
  const memoryOf = new Map(memory.layers.map((l) => [l.name, l.bytes]));
  const layers = Array.from({ length: config.numLayers }, (_, b) =>
    blockLinearNames(b).map(({ name, kind }): InspectedLinear => {
      const [m, n] = linearShape(config, kind);
      return {
        name,
        outFeatures: m,
        inFeatures: n,
        kind: 'f32',
        rank: null,
        error: null,
        paperBitsPerWeight: null,
        bytes: 4 * m * n,
        biasParams: 0,
        memoryBytes: memoryOf.get(name)!,
      };
    }),
  ).flat();
  return { config, fileBytes, format: 'llama2.c', layers, memory, paperBitsPerWeight: null };
}

export async function inspectCommand(a: Args): Promise<number> {
  const path = modelDirOf(a.positionals[0]);
  const {
    config,
    fileBytes,
    format,
    layers: linears,
    memory,
    paperBitsPerWeight,
  } = path.endsWith('.bin') ? await llama2cLayout(path) : await modelDirLayout(path);
  let linearBytes = 0;
  let memoryBytes = 0;
  const layers = linears.map((l) => {
    linearBytes += l.bytes;
    memoryBytes += l.memoryBytes;
    return {
      name: l.name,
      shape: `${l.outFeatures}x${l.inFeatures}`,
      kind: l.kind,
      rank: l.rank,
      bitsPerWeight: Number(((l.bytes * 8) / (l.inFeatures * l.outFeatures)).toFixed(4)),
      paperBitsPerWeight: l.paperBitsPerWeight === null ? null : Number(l.paperBitsPerWeight.toFixed(4)),
      error: l.error,
    };
  });
  const linearParams = layers.reduce((s, l) => {
    const [m, n] = l.shape.split('x').map(Number) as [number, number];
    return s + m * n;
  }, 0);
  const params =
    linearParams +
    linears.reduce((s, l) => s + l.biasParams, 0) +
    config.vocabSize * config.hiddenSize * (config.tieWordEmbeddings ? 1 : 2) +
    config.hiddenSize * (2 * config.numLayers + 1);
  const info = {
    path,
    format,
    architecture: config.architecture,
    config,
    parameters: params,
    fileBytes,
    linearBytes,
    linearBitsPerWeight: (linearBytes * 8) / linearParams,
    /** caldera.json's `bitsPerWeight`, the paper's accounting (`--bits` targets it, compress reports it); else null. */
    paperBitsPerWeight,
    /**
     * Bytes the linear layers hold resident in runtime-node (f64 layers as f32; see {@link InspectedLinear}), their
     * kernel arenas' fixed regions and page rounding included.
     */
    linearMemoryBytes: memoryBytes + memory.parts.arenas,
    /** Bytes all the weights hold resident in runtime-node (its memory plan's `weightBytes`). */
    memoryBytes: memory.weightBytes,
    layers,
  };
  if (a.flags.has('json')) console.log(JSON.stringify(info));
  else {
    // caldera.json's figure covers its compressed layers only: said so when the others are stored as they were
    const compressedLayers = linears.filter((l) => l.kind === 'caldera').length;
    const paperScope =
      compressedLayers < linears.length
        ? ` over its ${compressedLayers} compressed layers of ${linears.length}`
        : '';
    console.log(
      `${path} (${format})\n${config.architecture}: ${config.numLayers} layers, hidden ${config.hiddenSize}, MLP ${config.intermediateSize}, heads ${config.numHeads}/${config.numKvHeads} (q/kv), head dim ${config.headDim}, vocab ${config.vocabSize}`,
    );
    console.log(
      `parameters ${(params / 1e6).toFixed(2)} M, files ${(fileBytes / 1e6).toFixed(2)} MB, linear weights ${(linearBytes / 1e6).toFixed(2)} MB (${info.linearBitsPerWeight.toFixed(3)} bits/weight stored${paperBitsPerWeight === null ? '' : `; ${paperBitsPerWeight.toFixed(3)} in the paper's accounting${paperScope}, as compress reports`})` +
        `, in memory ${(memory.weightBytes / 1e6).toFixed(2)} MB (linear layers ${(info.linearMemoryBytes / 1e6).toFixed(2)} MB)`,
    );
    console.table(layers);
  }
  return 0;
}
