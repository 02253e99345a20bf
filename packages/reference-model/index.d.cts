/** Absolute path of the reference model's Hugging Face directory (config.json, model.safetensors, tokenizer.json). */
export declare function referenceModelDir(): string;
/** Absolute path of a text split of the reference model's corpus: 'train' (calibration), 'valid' or 'test'. */
export declare function referenceTextPath(split: 'train' | 'valid' | 'test'): string;
