import {
  assertObject,
  CalderaError,
  describeValue,
  GenerationRules,
  visibleText,
  type GenerateOptions,
} from '@caldera/core';
import { checkModelArgument } from './model-argument.js';
import { KVCache, type LlamaModel } from './model.js';
import { decodeTokens } from './decode-loop.js';
import { HfTokenizer } from './tokenizer.js';

/** One message of a {@link ChatSession}: the role the chat template knows it by (`system`, `user`, `assistant`). */
export interface ChatMessage {
  role: string;
  content: string;
}

/** Options of {@link ChatSession}. */
export interface ChatSessionOptions {
  /** A system message before the conversation (default none). */
  system?: string;
  /**
   * More names for the chat template, as `HfTokenizer.applyChatTemplate`'s `variables` (e.g. `{ enable_thinking:
   * false }` for Qwen3). Default none.
   */
  variables?: Readonly<Record<string, unknown>>;
  /**
   * Positions of the conversation's KV cache: the rendered conversation and each reply must fit them. Default
   * `min(config.maxPositions, 4096)`; at most `config.maxPositions`.
   */
  contextLength?: number;
}

/** What the last turn of a {@link ChatSession} ran. */
export interface ChatTurnStats {
  /** Tokens of the conversation rendered with the template for this turn (history, the new message, the prompt). */
  promptTokens: number;
  /** Of those, the tokens whose keys and values the cache still held from the turns before (not run again). */
  reusedTokens: number;
  /** Tokens generated (the end-of-turn token included when it came). */
  generatedTokens: number;
  /**
   * Why the reply ended: a stop token (the model's end of turn), a stop string, `maxTokens`, or the context filled up
   * (the reply is cut; {@link ChatSession.reset} frees the context).
   */
  endedBy: 'stop-token' | 'stop-string' | 'max-tokens' | 'context';
}

/**
 * A multi-turn conversation with a chat model: its messages, and one KV cache across turns. Each turn renders the
 * whole conversation with the model's chat template, as a chat model sees it, keeps the cached positions that the new
 * rendering shares with what the cache holds (the longest common prefix of token ids: usually all of the previous
 * turns), and runs only the rest. So every reply is the one `generate()` gives on the whole rendered conversation,
 * without recomputing the history each turn. Templates that render earlier turns differently (Qwen3 drops an earlier
 * answer's thinking) lose only the positions from the first difference on.
 */
export class ChatSession {
  private readonly cache: KVCache;
  /** The token ids whose keys and values the cache holds, in order (`cache.length` of them). */
  private cached: number[] = [];
  private readonly history: ChatMessage[] = [];
  private stats: ChatTurnStats | null = null;
  private busy = false;
  readonly contextLength: number;

  /**
   * `E_UNSUPPORTED` when the tokenizer has no chat template; `E_VALUE` for a `contextLength` that is not an integer in
   * [2, `maxPositions`], or a `system` that is not a string.
   */
  constructor(
    readonly model: LlamaModel,
    readonly tokenizer: HfTokenizer,
    private readonly options: ChatSessionOptions = {},
  ) {
    checkModelArgument(model, 'ChatSession');
    options ??= {};
    assertObject(options, 'ChatSession', 'options');
    this.options = options;
    if (!(tokenizer instanceof HfTokenizer))
      throw new CalderaError(
        'E_VALUE',
        `ChatSession: tokenizer must be an HfTokenizer (loadTokenizer), got ${describeValue(tokenizer)}`,
      );
    if (!tokenizer.hasChatTemplate)
      throw new CalderaError(
        'E_UNSUPPORTED',
        'ChatSession: the tokenizer has no chat template (chat_template.jinja, or chat_template in tokenizer_config.json)',
      );
    const max = model.config.maxPositions;
    const n = options.contextLength ?? Math.min(max, 4096);
    if (!Number.isInteger(n) || n < 2 || n > max)
      throw new CalderaError(
        'E_VALUE',
        `ChatSession: contextLength ${String(n)} is not an integer in [2, ${max}] (the model's max positions)`,
      );
    if (options.system !== undefined && typeof options.system !== 'string')
      throw new CalderaError('E_VALUE', 'ChatSession: system must be a string');
    this.contextLength = n;
    this.cache = new KVCache(model.config, n);
  }

  /** The conversation so far: the system message when there is one, then each turn's user message and reply. */
  get messages(): readonly ChatMessage[] {
    return [
      ...(this.options.system === undefined ? [] : [{ role: 'system', content: this.options.system }]),
      ...this.history,
    ];
  }

  /** What the last finished turn ran, or null before the first. */
  get lastTurn(): ChatTurnStats | null {
    return this.stats;
  }

  /** Forget the conversation (the system message stays) and what the cache holds. */
  reset(): void {
    if (this.busy) throw new CalderaError('E_VALUE', 'ChatSession.reset: a reply is being generated');
    this.history.length = 0;
    this.cached = [];
    this.cache.length = 0;
    this.stats = null;
  }

  /**
   * Add `content` as the user's message and generate the reply, yielding its token ids as they come (the stop token
   * too, as `generate()` does; give the model's end-of-turn ids as `options.stopTokens`). When the generator finishes,
   * the message and the reply join {@link messages}: its text as generated (decoded without the clean-up of spaces
   * some tokenizer configs ask for), less the stop token, and less the beginning of a stop string that ended it. A
   * turn that throws (an abort, `E_ABORTED`) or that the caller leaves early adds nothing. `options` are
   * `generate()`'s (`maxTokens` default 64, greedy by default; the errors name `ChatSession.send`). `E_VALUE` before any pass
   * when the rendered conversation leaves no room for a token in the context ({@link reset} frees it), for `maxTokens`
   * 0, or while another reply of this session runs.
   */
  async *send(content: string, options: GenerateOptions = {}): AsyncGenerator<number> {
    if (typeof content !== 'string')
      throw new CalderaError('E_VALUE', 'ChatSession.send: content must be a string');
    if (this.busy)
      throw new CalderaError('E_VALUE', 'ChatSession.send: another reply of this session is running');
    this.busy = true;
    try {
      const messages = [...this.messages, { role: 'user', content }];
      const ids = this.tokenizer.encode(
        this.tokenizer.applyChatTemplate(messages, {
          addGenerationPrompt: true,
          ...(this.options.variables ? { variables: this.options.variables } : {}),
        }),
      );
      if (ids.length >= this.contextLength)
        throw new CalderaError(
          'E_VALUE',
          `ChatSession.send: the conversation with this message is ${ids.length} tokens, the context ` +
            `${this.contextLength}: no room for a reply (reset() frees it; a larger contextLength holds more)`,
        );
      const rules = new GenerationRules(ids, options, 'ChatSession.send');
      const count = rules.tokensToGenerate(this.contextLength);
      if (count === 0) throw new CalderaError('E_VALUE', 'ChatSession.send: maxTokens 0 leaves no reply');
      // keep the cached positions the new rendering starts with; at least one token must run to give logits
      let reused = 0;
      const limit = Math.min(this.cached.length, ids.length - 1);
      while (reused < limit && this.cached[reused] === ids[reused]) reused++;
      this.cache.length = reused;
      this.cached.length = reused;
      const tokens = decodeTokens(this.model, this.cache, ids.slice(reused), count, rules, {
        signal: options.signal,
        what: 'ChatSession.send',
        onRun: (run) => {
          for (let i = 0; i < run.length; i++) this.cached.push(run[i]!);
        },
      });
      const out: number[] = [];
      let endedBy: ChatTurnStats['endedBy'];
      for (;;) {
        const step = await tokens.next();
        if (step.done) {
          endedBy =
            step.value === 'count' ? (count < rules.maxTokens ? 'context' : 'max-tokens') : step.value;
          break;
        }
        out.push(step.value);
        yield step.value;
      }
      const stops = new Set(options.stopTokens ?? []);
      const text = this.tokenizer.decode(
        out.filter((t) => !stops.has(t)),
        { cleanUpSpaces: false },
      );
      // the tokens before the one that completed a stop string may hold its beginning
      const reply = endedBy === 'stop-string' ? visibleText(text, options.stopStrings ?? []).text : text;
      this.history.push({ role: 'user', content }, { role: 'assistant', content: reply });
      this.stats = { promptTokens: ids.length, reusedTokens: reused, generatedTokens: out.length, endedBy };
    } finally {
      this.busy = false;
    }
  }
}
