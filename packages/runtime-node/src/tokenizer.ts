import { Tokenizer } from '@huggingface/tokenizers';
import { CalderaError, checkTokenArray, danglingLinkError, describeValue, readTextFile } from '@caldera/core';
import { nodePath } from './node-builtins.js';
import { checkPathArgument, readJsonFile } from './json-file.js';
import { CHAT_TEMPLATE_LIMITS, renderChatTemplate } from './chat-template.js';

/** The tokenizer interface the runtime and CLI use (Hugging Face `tokenizer.json` or llama2.c `tokenizer.bin`). */
export interface TextTokenizer {
  /** Token ids of `text`, without special tokens. */
  encode(text: string): number[];
  /** Text of `ids`; special tokens are skipped. */
  decode(ids: ArrayLike<number>, options?: DecodeOptions): string;
}

/** Options of {@link TextTokenizer.decode}. */
export interface DecodeOptions {
  /**
   * Remove the spaces before punctuation and contractions (" ." → ".", " 's" → "'s") when the tokenizer's config asks
   * for it (`clean_up_tokenization_spaces`); false never does. Text streamed as it is generated wants false: the
   * clean-up rewrites text printed already. Default: true (as the config says). llama2.c tokenizers never clean up.
   */
  cleanUpSpaces?: boolean;
}

/** Options of {@link HfTokenizer}. */
export interface HfTokenizerOptions {
  /**
   * The chat template from a separate `chat_template.jinja` file (how recent transformers save it): it takes the
   * place of `tokenizer_config.json`'s `chat_template`, as in transformers. Default: none.
   */
  chatTemplate?: string;
  /**
   * `special_tokens_map.json`'s entries (`bos_token`, `eos_token`, `unk_token`, …): a chat template gets each special
   * token `tokenizer_config.json` does not name from there, as transformers gives templates its special tokens map.
   * Default: none.
   */
  specialTokens?: Record<string, unknown>;
}

/** The special tokens transformers passes to a chat template (its special tokens map), when a file names them. */
const TEMPLATE_TOKENS = [
  'bos_token',
  'eos_token',
  'unk_token',
  'sep_token',
  'pad_token',
  'cls_token',
  'mask_token',
];

/**
 * The chat template a tokenizer config names: its `chat_template` string, or, in the older multi-template form (a
 * list of `{ name, template }`), the one named "default" (as transformers picks); null otherwise.
 */
/** The list each component type `Sequence` of a `tokenizer.json` holds its parts in. */
const SEQUENCE_LISTS = {
  normalizer: 'normalizers',
  pre_tokenizer: 'pretokenizers',
  post_processor: 'processors',
  decoder: 'decoders',
} as const;

/**
 * Every `Sequence` normalizer, pre-tokenizer, post-processor or decoder of `json` (nested ones too) has its list: the
 * reference library (Rust `tokenizers`) refuses a file without one, `@huggingface/tokenizers` ran it as an empty
 * sequence, so a byte-level BPE got raw text and dropped spaces and non-ASCII text without a word.
 */
function checkSequenceLists(json: object): void {
  const check = (part: unknown, path: string, listName: string): void => {
    if (typeof part !== 'object' || part === null || (part as { type?: unknown }).type !== 'Sequence') return;
    const list = (part as Record<string, unknown>)[listName];
    if (!Array.isArray(list))
      throw new CalderaError(
        'E_FORMAT',
        `tokenizer.json: ${path} is a Sequence without its list "${listName}" (got ${describeValue(list)})`,
      );
    list.forEach((item, i) => check(item, `${path}.${listName}[${i}]`, listName));
  };
  for (const [key, listName] of Object.entries(SEQUENCE_LISTS))
    check((json as Record<string, unknown>)[key], key, listName);
}

function configChatTemplate(config: Record<string, unknown>): string | null {
  const t = config.chat_template;
  if (typeof t === 'string') return t;
  if (!Array.isArray(t)) return null;
  const entry = (t as unknown[]).find(
    (e) => !!e && typeof e === 'object' && (e as { name?: unknown }).name === 'default',
  ) as { template?: unknown } | undefined;
  return typeof entry?.template === 'string' ? entry.template : null;
}

/** jinja2's literals, which no variable can replace (`none` is None whatever the context holds), and what they are. */
const TEMPLATE_LITERALS: Record<string, string> = {
  true: 'True',
  false: 'False',
  none: 'None',
  True: 'True',
  False: 'False',
  None: 'None',
};

/** How deep `options.variables` may nest lists and objects (jinja2 itself fails printing ~1000 levels: Python's recursion limit). */
const TEMPLATE_VARIABLE_DEPTH = 500;

/**
 * `applyChatTemplate`'s `options.variables`, checked and copied (each property and item read once, so a getter or
 * proxy cannot hand the template anything other than what was checked): a plain object (absent: none) whose values are
 * JSON data nested at most {@link TEMPLATE_VARIABLE_DEPTH} deep, without the names the arguments give or jinja2's
 * literals. `E_VALUE` naming the variable and what is wrong.
 */
function templateVariables(v: unknown): Record<string, unknown> {
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v))
    throw new CalderaError(
      'E_VALUE',
      `applyChatTemplate: options.variables must be an object of names for the template, got ${describeValue(v)}`,
    );
  const given = { messages: 'the messages argument', add_generation_prompt: 'options.addGenerationPrompt' };
  const names = Object.keys(v);
  for (const [name, arg] of Object.entries(given))
    if (names.includes(name))
      throw new CalderaError('E_VALUE', `applyChatTemplate: options.variables.${name}: give it as ${arg}`);
  for (const name of names)
    if (Object.hasOwn(TEMPLATE_LITERALS, name))
      throw new CalderaError(
        'E_VALUE',
        `applyChatTemplate: options.variables.${name}: ${name} is a literal of templates (${TEMPLATE_LITERALS[name]!}), not a variable: jinja2 ignores a variable of that name`,
      );
  const open = new Set<object>([v]);
  // where the copy is (keys and indices), for messages: `x.a[2]`
  const at: (string | number)[] = [];
  const path = () => at.map((k, i) => (typeof k === 'number' ? `[${k}]` : i > 0 ? `.${k}` : k)).join('');
  const refused = (what: string) =>
    new CalderaError('E_VALUE', `applyChatTemplate: options.variables.${what}`);
  // (values copied: an object held twice is copied twice, so a few levels of objects each holding the next one twice
  // would make 2^depth copies; past as many values as a list may hold, refused)
  let count = 0;
  const copy = (x: unknown): unknown => {
    if (++count > CHAT_TEMPLATE_LIMITS.listItems)
      throw refused(
        `${at[0]!} holds over ${CHAT_TEMPLATE_LIMITS.listItems} values (copied as many times as held)`,
      );
    if (x === null || typeof x === 'string' || typeof x === 'boolean') return x;
    if (typeof x === 'number') {
      if (Number.isFinite(x)) return x;
    } else if (typeof x === 'object') {
      const proto = Object.getPrototypeOf(x) as unknown;
      if (open.has(x)) throw refused(`${path()} refers to itself`);
      if (Array.isArray(x) || proto === Object.prototype || proto === null) {
        // (a variable is at depth 1; jinja2 cannot print a list 1000 deep: Python's recursion limit)
        if (at.length > TEMPLATE_VARIABLE_DEPTH)
          throw refused(`${at[0]!} nests lists and objects over ${TEMPLATE_VARIABLE_DEPTH} deep`);
        open.add(x);
        let made: unknown;
        if (Array.isArray(x)) {
          // (by index: a hole of a sparse array is undefined, refused; forEach skipped it)
          const length = x.length;
          const items: unknown[] = [];
          for (let i = 0; i < length; i++) {
            at.push(i);
            items.push(copy(x[i]));
            at.pop();
          }
          made = items;
        } else made = copyEntries(x as Record<string, unknown>, Object.keys(x));
        open.delete(x);
        return made;
      }
    }
    throw refused(
      `${path()} is ${typeof x === 'number' ? String(x) : describeValue(x)}, not JSON data (a string, finite number, ` +
        'boolean, null, array or plain object)',
    );
  };
  /** The `keys` of object `x`, each value copied (read once). */
  const copyEntries = (x: Record<string, unknown>, keys: readonly string[]): Record<string, unknown> => {
    const entries: Record<string, unknown> = {};
    for (const k of keys) {
      at.push(k);
      // (defined, not assigned: a "__proto__" key stays a key, as JSON.parse makes it)
      Object.defineProperty(entries, k, {
        value: copy(x[k]),
        enumerable: true,
        writable: true,
        configurable: true,
      });
      at.pop();
    }
    return entries;
  };
  return copyEntries(v as Record<string, unknown>, names);
}

/** Names of a multi-template `chat_template` list (for the error of a list without a "default"). */
function templateNames(config: Record<string, unknown>): string[] {
  const t = config.chat_template;
  if (!Array.isArray(t)) return [];
  return (t as unknown[]).flatMap((e) =>
    e && typeof e === 'object' && typeof (e as { name?: unknown }).name === 'string'
      ? [(e as { name: string }).name]
      : [],
  );
}

/**
 * What {@link HfTokenizer} calls of its `@huggingface/tokenizers` `Tokenizer` (which has these methods). The library's
 * own class is not named in this package's declarations: its types are ECMAScript-module only, so a CommonJS consumer
 * type-checking under `moduleResolution: node16` could not load them (TS1479).
 */
export interface HfTokenizerEngine {
  encode(text: string, options: { add_special_tokens: boolean }): { ids: ArrayLike<number> };
  decode(
    ids: number[],
    options: { skip_special_tokens: boolean; clean_up_tokenization_spaces?: boolean },
  ): string;
}

/**
 * A Hugging Face tokenizer (`tokenizer.json`, run by `@huggingface/tokenizers`) with its chat template when it has one
 * (`chat_template.jinja`, else `tokenizer_config.json`'s `chat_template`; rendered with `@huggingface/jinja`, within
 * {@link CHAT_TEMPLATE_LIMITS}).
 */
export class HfTokenizer implements TextTokenizer {
  /**
   * The chat template {@link HfTokenizer.applyChatTemplate} renders, or null: `options.chatTemplate` (a
   * `chat_template.jinja` file) when given, else `tokenizer_config.json`'s `chat_template` — a string, or from a list
   * of `{ name, template }` the one named "default".
   */
  readonly chatTemplate: string | null;
  constructor(
    /** The underlying `@huggingface/tokenizers` instance (a `Tokenizer`). */
    readonly tokenizer: HfTokenizerEngine,
    /** `tokenizer_config.json` (empty object when absent). */
    readonly config: Record<string, unknown> = {},
    options: HfTokenizerOptions = {},
  ) {
    this.chatTemplate = options.chatTemplate ?? configChatTemplate(config);
    this.specialTokens = options.specialTokens ?? {};
    this.templateSource =
      options.chatTemplate !== undefined ? 'chat_template.jinja' : "tokenizer_config.json's chat_template";
    // bound: `generate(…, { decode: tokenizer.decode })`, as the docs' stopStrings example reads, lost `this`
    this.encode = this.encode.bind(this);
    this.decode = this.decode.bind(this);
  }

  /** `special_tokens_map.json`'s entries ({@link HfTokenizerOptions.specialTokens}). */
  private readonly specialTokens: Record<string, unknown>;

  /** Where {@link chatTemplate} came from, for messages. */
  private readonly templateSource: string;

  /** Build from the parsed `tokenizer.json` (and optional `tokenizer_config.json`) objects. */
  static fromJson(
    json: object,
    config: Record<string, unknown> = {},
    options: HfTokenizerOptions = {},
  ): HfTokenizer {
    checkSequenceLists(json);
    let tokenizer: HfTokenizerEngine;
    try {
      // Decoding never rewrites spaces unless the config asks for it: the reference library does not, and
      // transformers defaults `clean_up_tokenization_spaces` to false; @huggingface/tokenizers defaults to true.
      const tokOptions = { clean_up_tokenization_spaces: false, ...config };
      tokenizer = new Tokenizer(json, tokOptions);
    } catch (e) {
      throw new CalderaError(
        'E_FORMAT',
        `tokenizer.json (with tokenizer_config.json's settings) is not a supported tokenizer: ${(e as Error).message}`,
        {
          cause: e,
        },
      );
    }
    // what the library loads with a warning at most (a Split pattern of an unknown kind, a vocabulary given as a list)
    // encodes every text to nothing: said at load, not as an empty prompt later
    if (tokenizer.encode('Hello, world! 42', { add_special_tokens: false }).ids.length === 0)
      throw new CalderaError(
        'E_FORMAT',
        "tokenizer.json encodes 'Hello, world! 42' to no tokens at all: its model, normalizer or pre_tokenizer is not one this library runs",
      );
    return new HfTokenizer(tokenizer, config, options);
  }

  encode(text: string): number[] {
    // the library encodes null, a number or an object to [] without a word
    if (typeof text !== 'string')
      throw new CalderaError('E_VALUE', `encode: text must be a string, got ${describeValue(text)}`);
    const ids = Array.from(this.tokenizer.encode(text, { add_special_tokens: false }).ids);
    // the library passes on what the file gives: an added token without an id, or a unk token that is not in the
    // vocabulary, came out as undefined or null (which a worker thread's Int32Array made id 0, a real token)
    const bad = ids.findIndex((id) => !Number.isSafeInteger(id) || id < 0);
    if (bad >= 0)
      throw new CalderaError(
        'E_FORMAT',
        `tokenizer.json gives no valid token id (${String(ids[bad])}, token ${bad} of the text): an added token without an id, or an unknown-token id that is not in the vocabulary?`,
      );
    return ids;
  }

  /**
   * Text of `ids`, special tokens skipped. Ids past the tokenizer's vocabulary (a model's padded embedding rows) are
   * skipped too, as the reference library does; an id that is not a non-negative integer is `E_VALUE` (the library
   * threw a plain Error for fractions and NaN and dropped negative ids silently).
   */
  decode(ids: ArrayLike<number>, options: DecodeOptions = {}): string {
    checkTokenArray(ids, 'decode', 'ids');
    if (ids.length === 0) return ''; // the library rejects an empty list
    const list = Array.from(ids);
    const bad = list.findIndex((id) => !Number.isSafeInteger(id) || id < 0);
    if (bad >= 0)
      throw new CalderaError(
        'E_VALUE',
        `decode: token id ${list[bad]} (at ${bad}) is not a non-negative integer`,
      );
    return this.tokenizer.decode(list, {
      skip_special_tokens: true,
      ...(options?.cleanUpSpaces === false ? { clean_up_tokenization_spaces: false } : {}),
    });
  }

  /** True when the model has a chat template ({@link HfTokenizer.chatTemplate}). */
  get hasChatTemplate(): boolean {
    return this.chatTemplate !== null;
  }

  /**
   * Render `messages` with the model's chat template ({@link HfTokenizer.chatTemplate}, or `options.template`;
   * `bos_token`, `eos_token` from the tokenizer config; `addGenerationPrompt` default true). `E_UNSUPPORTED` when the
   * model has no template (naming the templates of a list without a "default" one).
   *
   * `options.variables`: more names for the template, as transformers' `apply_chat_template(…, **kwargs)` passes them
   * — e.g. `{ enable_thinking: false }` for Qwen3's template, which then writes an empty thinking block so that the
   * model answers directly. They take the place of a special token of the same name (as in transformers); `tools` and
   * `documents` (default none) are given here too. Values are JSON data (strings, finite numbers, booleans, null,
   * arrays and plain objects of them, nested at most 500 deep), copied as they are read: anything else, and the names
   * `messages` and `add_generation_prompt` (the arguments) and `true`, `false`, `none`, `True`, `False`, `None`
   * (literals in a template, which no variable replaces in jinja2), are `E_VALUE`. Numbers arrive as JavaScript
   * numbers, which do not keep Python's int/float difference: an integral one is an int to the template (`1.0` prints
   * `1`, `1e300` all its 301 digits; transformers given Python's float 1.0 prints `1.0`).
   */
  applyChatTemplate(
    messages: readonly { readonly role: string; readonly content: string }[],
    options: {
      addGenerationPrompt?: boolean;
      template?: string;
      variables?: Readonly<Record<string, unknown>>;
    } = {},
  ): string {
    const variables = templateVariables(options.variables);
    const tpl = options.template ?? this.chatTemplate;
    const source = options.template !== undefined ? 'options.template' : this.templateSource;
    if (typeof tpl !== 'string') {
      const names = templateNames(this.config);
      const field = this.config.chat_template;
      if (field !== undefined && field !== null && typeof field !== 'string' && !Array.isArray(field))
        throw new CalderaError(
          'E_FORMAT',
          `tokenizer_config.json's chat_template is ${describeValue(field)}, not a template string (or a list of { name, template })`,
        );
      const entry = Array.isArray(field)
        ? (field as { name?: unknown; template?: unknown }[]).find((e) => e?.name === 'default')
        : undefined;
      if (entry)
        throw new CalderaError(
          'E_FORMAT',
          `tokenizer_config.json's chat_template entry 'default' has a template that is ${describeValue(entry.template)}, not a string`,
        );
      throw new CalderaError(
        'E_UNSUPPORTED',
        names.length
          ? `tokenizer_config.json's chat_template lists templates ${names.map((n) => `'${n}'`).join(', ')} but none named 'default'; pass one as options.template`
          : 'the model has no chat template (no chat_template.jinja, no chat_template in tokenizer_config.json)',
      );
    }
    if (tpl.trim() === '') throw new CalderaError('E_FORMAT', `the chat template (${source}) is empty`);
    // a special token as tokenizer_config.json (else special_tokens_map.json) gives it: a string, or an object with
    // its `content`; absent or null: none. A malformed bos or eos is E_FORMAT; another malformed one, which few
    // templates use, is left out (a numeric pad_token should not stop a template that never names it)
    const tok = (k: string): string | undefined => {
      const inConfig = this.config[k] !== undefined && this.config[k] !== null;
      const v = inConfig ? this.config[k] : this.specialTokens[k];
      if (v === undefined || v === null) return undefined;
      if (typeof v === 'string') return v;
      const content = v && typeof v === 'object' ? (v as { content?: unknown }).content : undefined;
      if (typeof content === 'string') return content;
      if (k !== 'bos_token' && k !== 'eos_token') return undefined;
      // (it rendered as the text "undefined", or "" for a number)
      throw new CalderaError(
        'E_FORMAT',
        `${inConfig ? 'tokenizer_config.json' : 'special_tokens_map.json'}'s ${k} is ${describeValue(v)}${Array.isArray(v) || typeof v !== 'object' ? '' : ' without a string content'}, not a token string or { content }`,
      );
    };
    const tokens = Object.fromEntries(
      TEMPLATE_TOKENS.flatMap((k) => {
        const v = tok(k);
        return v === undefined ? [] : [[k, v]];
      }),
    );
    const context = {
      messages,
      bos_token: '', // (bos and eos are always given: '' when no file names them)
      eos_token: '',
      ...tokens,
      add_generation_prompt: options.addGenerationPrompt ?? true,
      // as transformers passes them when the caller gives none (`tools is not none` is false there)
      tools: null,
      documents: null,
      ...variables,
    };
    try {
      return renderChatTemplate(tpl, context);
    } catch (e) {
      throw new CalderaError('E_FORMAT', `chat template (${source}) failed: ${(e as Error).message}`, {
        cause: e,
      });
    }
  }
}

/**
 * The text of `path`, or null when it does not exist (`E_IO` when it cannot be read, is a symbolic link whose target is
 * gone, or is not a regular file: a FIFO there made every command that loads the tokenizer wait for ever).
 */
async function readOptionalText(path: string): Promise<string | null> {
  try {
    return await readTextFile(path, 'chat template');
  } catch (e) {
    if (e instanceof CalderaError) throw e;
    if ((e as { code?: string }).code === 'ENOENT') {
      const dangling = await danglingLinkError(path);
      if (dangling) throw dangling;
      return null;
    }
    throw new CalderaError('E_IO', `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Load `tokenizer.json` (+ `tokenizer_config.json` and `chat_template.jinja` when present) of a model directory. The
 * chat template is `chat_template.jinja`'s text when the file exists (recent transformers save it there; it replaces
 * the config's, as in transformers), else `tokenizer_config.json`'s `chat_template` (a string, or the entry named
 * "default" of a `{ name, template }` list); the special tokens it renders with are `tokenizer_config.json`'s, else
 * `special_tokens_map.json`'s. A `dir` that is not a string (null, undefined) is `E_VALUE`.
 */
export async function loadTokenizer(dir: string): Promise<HfTokenizer> {
  checkPathArgument(dir, 'loadTokenizer', 'the model directory');
  const { join } = await nodePath();
  const json = (await readJsonFile(join(dir, 'tokenizer.json'))) as object;
  const config = await optionalJsonObject(join(dir, 'tokenizer_config.json'));
  const chatTemplate = await readOptionalText(join(dir, 'chat_template.jinja'));
  const specialTokens = await optionalJsonObject(join(dir, 'special_tokens_map.json'));
  return HfTokenizer.fromJson(json, config, {
    ...(chatTemplate === null ? {} : { chatTemplate }),
    specialTokens,
  });
}

/**
 * The object an optional JSON side file holds, `{}` when it is absent (or holds null); `E_FORMAT` naming it when it
 * holds a list, a string or a number (its chat template or special tokens were lost without a word).
 */
async function optionalJsonObject(file: string): Promise<Record<string, unknown>> {
  const v = (await readJsonFile(file, { optional: true })) ?? {};
  if (typeof v !== 'object' || Array.isArray(v))
    throw new CalderaError('E_FORMAT', `${file} is ${describeValue(v)}, not a JSON object`);
  return v as Record<string, unknown>;
}
