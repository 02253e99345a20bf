import { readFile } from 'node:fs/promises';
import { CalderaError } from '@caldera/core';
import { referenceModelDir, referenceTextPath } from '@caldera/reference-model';
import { loadTokenizer } from '@caldera/runtime-node';

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
    const ids = tok.encode(d, { add_special_tokens: false }).ids as number[];
    return bos === null ? ids : [bos, ...ids];
  });
}

/** Default calibration and evaluation texts for the reference model. */
export function defaultText(split: 'train' | 'test'): string {
  return referenceTextPath(split);
}
