import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { CalderaError } from '@caldera/core';

/** Load `tokenizer.json` (+ `tokenizer_config.json` when present) of a model directory. */
export async function loadTokenizer(dir: string): Promise<Tokenizer> {
  let json: unknown;
  try {
    json = JSON.parse(await readFile(join(dir, 'tokenizer.json'), 'utf8'));
  } catch (e) {
    throw new CalderaError('E_IO', `cannot read ${join(dir, 'tokenizer.json')}: ${(e as Error).message}`, {
      cause: e,
    });
  }
  let config: unknown = {};
  try {
    config = JSON.parse(await readFile(join(dir, 'tokenizer_config.json'), 'utf8'));
  } catch {
    config = {};
  }
  return new Tokenizer(json as object, config as object);
}
