import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';
import { CalderaError } from '@caldera/core';
import { checkPathArgument, readJsonFile } from './json-file.js';

/** The tokenizer interface the runtime and CLI use (Hugging Face `tokenizer.json` or llama2.c `tokenizer.bin`). */
export interface TextTokenizer {
  /** Token ids of `text`, without special tokens. */
  encode(text: string): number[];
  /** Text of `ids`; special tokens are skipped. */
  decode(ids: ArrayLike<number>): string;
}

/**
 * A Hugging Face tokenizer (`tokenizer.json`, run by `@huggingface/tokenizers`) with the chat template of
 * `tokenizer_config.json` when present (rendered with `@huggingface/jinja`).
 */
export class HfTokenizer implements TextTokenizer {
  constructor(
    /** The underlying `@huggingface/tokenizers` instance. */
    readonly tokenizer: Tokenizer,
    /** `tokenizer_config.json` (empty object when absent). */
    readonly config: Record<string, unknown> = {},
  ) {}

  /** Build from the parsed `tokenizer.json` (and optional `tokenizer_config.json`) objects. */
  static fromJson(json: object, config: Record<string, unknown> = {}): HfTokenizer {
    try {
      // Decoding never rewrites spaces unless the config asks for it: the reference library does not, and
      // transformers defaults `clean_up_tokenization_spaces` to false; @huggingface/tokenizers defaults to true.
      const options = { clean_up_tokenization_spaces: false, ...config };
      return new HfTokenizer(new Tokenizer(json, options), config);
    } catch (e) {
      throw new CalderaError(
        'E_FORMAT',
        `tokenizer.json is not a supported tokenizer: ${(e as Error).message}`,
        {
          cause: e,
        },
      );
    }
  }

  encode(text: string): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids as number[];
  }

  /**
   * Text of `ids`, special tokens skipped. Ids past the tokenizer's vocabulary (a model's padded embedding rows) are
   * skipped too, as the reference library does; an id that is not a non-negative integer is `E_VALUE` (the library
   * threw a plain Error for fractions and NaN and dropped negative ids silently).
   */
  decode(ids: ArrayLike<number>): string {
    if (ids.length === 0) return ''; // the library rejects an empty list
    const list = Array.from(ids);
    const bad = list.findIndex((id) => !Number.isSafeInteger(id) || id < 0);
    if (bad >= 0)
      throw new CalderaError(
        'E_VALUE',
        `decode: token id ${list[bad]} (at ${bad}) is not a non-negative integer`,
      );
    return this.tokenizer.decode(list, { skip_special_tokens: true });
  }

  /** True when `tokenizer_config.json` has a chat template. */
  get hasChatTemplate(): boolean {
    return typeof this.config.chat_template === 'string';
  }

  /**
   * Render `messages` with the model's chat template (`bos_token`, `eos_token` from the tokenizer config;
   * `addGenerationPrompt` default true). `E_UNSUPPORTED` when the model has no template.
   */
  applyChatTemplate(
    messages: { role: string; content: string }[],
    options: { addGenerationPrompt?: boolean; template?: string } = {},
  ): string {
    const tpl = options.template ?? this.config.chat_template;
    if (typeof tpl !== 'string')
      throw new CalderaError('E_UNSUPPORTED', 'tokenizer_config.json has no chat_template');
    const tok = (k: string) => {
      const v = this.config[k];
      return typeof v === 'string'
        ? v
        : v && typeof v === 'object'
          ? String((v as { content?: string }).content)
          : '';
    };
    try {
      return new Template(tpl).render({
        messages,
        bos_token: tok('bos_token'),
        eos_token: tok('eos_token'),
        add_generation_prompt: options.addGenerationPrompt ?? true,
      });
    } catch (e) {
      throw new CalderaError('E_FORMAT', `chat template failed: ${(e as Error).message}`, { cause: e });
    }
  }
}

/**
 * Load `tokenizer.json` (+ `tokenizer_config.json` when present) of a model directory; a `dir` that is not a string
 * (null, undefined) is `E_VALUE`.
 */
export async function loadTokenizer(dir: string): Promise<HfTokenizer> {
  checkPathArgument(dir, 'loadTokenizer', 'the model directory');
  const json = (await readJsonFile(join(dir, 'tokenizer.json'))) as object;
  const config = ((await readJsonFile(join(dir, 'tokenizer_config.json'), { optional: true })) ??
    {}) as Record<string, unknown>;
  return HfTokenizer.fromJson(json, config);
}
