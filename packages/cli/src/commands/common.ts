import { CalderaError } from '@caldera/core';
import { createPool, type Pool } from '@caldera/linalg';
import { referenceModelDir, referenceTextPath } from '@caldera/reference-model';
import { dirname, join } from 'node:path';
import { readdir, readFile, stat } from 'node:fs/promises';
import {
  Llama2cTokenizer,
  loadLlama2c,
  loadModel,
  loadTokenizer,
  type LlamaModel,
  type LoadedModel,
  type ModelConfig,
  type TextTokenizer,
} from '@caldera/runtime-node';

/** Whether a file or directory exists at `path`. */
export async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** The model directory: the positional argument, or the embedded reference model. */
export function modelDirOf(positional: string | undefined): string {
  return positional ?? referenceModelDir();
}

/** Documents of a text file: blocks separated by blank lines. */
export async function readDocuments(path: string): Promise<string[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new CalderaError('E_IO', `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
  if (path.endsWith('.jsonl')) {
    return text
      .split('\n')
      .filter((l) => l.trim())
      .map((l, i) => {
        try {
          const o = JSON.parse(l);
          return String(o.text ?? o.content ?? '');
        } catch {
          throw new CalderaError('E_FORMAT', `${path}:${i + 1} is not a JSON object`);
        }
      });
  }
  return text.split(/\n\s*\n/).filter((d) => d.trim().length > 0);
}

/** Token ids of documents (each document prefixed with the BOS token when the model has one). */
export async function tokenizeDocuments(
  modelDir: string,
  docs: string[],
  bos: number | null,
): Promise<number[][]> {
  const tok = await loadTokenizer(modelDir);
  return docs.map((d) => {
    const ids = tok.encode(d);
    return bos === null ? ids : [bos, ...ids];
  });
}

/** Default calibration and evaluation texts for the reference model. */
export function defaultText(split: 'train' | 'valid' | 'test'): string {
  return referenceTextPath(split);
}

/** A linear-algebra pool of `threads` threads, or none for 1 (results do not depend on it). */
export function poolFor(threads: number): Pool | undefined {
  if (!Number.isInteger(threads) || threads < 1)
    throw new CalderaError('E_VALUE', `--threads must be a positive integer, got ${threads}`);
  return threads > 1 ? createPool({ threads }) : undefined;
}

/** A model opened for generate/eval/inspect, from a Hugging Face / Caldera directory or a llama2.c `.bin`. */
export interface OpenedModel {
  model: LlamaModel;
  config: ModelConfig;
  tokenizer: TextTokenizer;
  calderaMeta: LoadedModel['calderaMeta'];
  /** Bytes of the weight file(s). */
  fileBytes: number;
  format: 'huggingface' | 'caldera' | 'llama2.c';
}

/**
 * Open `path`: a llama2.c checkpoint when it ends in `.bin` (tokenizer: `tokenizerPath` or `tokenizer.bin` beside
 * it), else a model directory (config.json, safetensors, tokenizer.json).
 */
export async function openModel(path: string, tokenizerPath?: string, pool?: Pool): Promise<OpenedModel> {
  if (path.endsWith('.bin')) {
    const { model, config } = await loadLlama2c(path, pool ? { pool } : {});
    const tokenizer = await Llama2cTokenizer.load(
      tokenizerPath ?? join(dirname(path), 'tokenizer.bin'),
      config.vocabSize,
    );
    return {
      model,
      config,
      tokenizer,
      calderaMeta: null,
      fileBytes: (await stat(path)).size,
      format: 'llama2.c',
    };
  }
  const { model, config, calderaMeta } = await loadModel(path, pool ? { pool } : {});
  const tokenizer = await loadTokenizer(path);
  let fileBytes = 0;
  for (const f of await readdir(path))
    if (f.endsWith('.safetensors')) fileBytes += (await stat(join(path, f))).size;
  return {
    model,
    config,
    tokenizer,
    calderaMeta,
    fileBytes,
    format: calderaMeta ? 'caldera' : 'huggingface',
  };
}
