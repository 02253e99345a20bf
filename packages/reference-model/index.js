import { fileURLToPath } from 'node:url';

/** Absolute path of the reference model's Hugging Face directory (config.json, model.safetensors, tokenizer.json). */
export function referenceModelDir() {
  return fileURLToPath(new URL('./model/', import.meta.url));
}

/** Absolute path of a text split of the reference model's corpus: 'train' (calibration), 'valid' or 'test'. */
export function referenceTextPath(split) {
  if (!['train', 'valid', 'test'].includes(split)) throw new Error(`unknown split '${split}'`);
  return fileURLToPath(new URL(`./data/${split}.txt`, import.meta.url));
}
