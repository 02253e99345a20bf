/**
 * The side files of a model directory: what a runtime (ours, transformers, llama.cpp's converters) needs of a model
 * besides `config.json` and its weights, and so what every model or checkpoint Caldera writes from another keeps.
 */

/**
 * The files a model directory may hold besides `config.json` and its weights, copied, when present, into every
 * model or checkpoint written from it (`caldera compress`, `export`, `finetune` and `train`):
 *
 * - `generation_config.json`: generation settings, among them the end-of-sequence ids generation stops on;
 * - `tokenizer.json`: the Hugging Face (fast) tokenizer: vocabulary, merges, normalizer, pre-tokenizer;
 * - `tokenizer_config.json`: the tokenizer's settings: its class, BOS/EOS tokens, and the chat template of models
 *   saved before transformers 4.43;
 * - `special_tokens_map.json`: which tokens are BOS, EOS, UNK and padding;
 * - `added_tokens.json`: tokens added to the vocabulary after training (older slow tokenizers);
 * - `tokenizer.model`: the SentencePiece model (Llama 1/2, Mistral and other slow tokenizers);
 * - `vocab.json` and `merges.txt`: the vocabulary and merges of a byte-level BPE (GPT-2 style) slow tokenizer;
 * - `chat_template.jinja`: the chat template in its own file (transformers 4.43 and later; wins over the config's);
 * - `chat_template.json`: the chat template as `{"chat_template": …}` (processors and some earlier saves).
 */
export const MODEL_SIDE_FILES: readonly string[] = Object.freeze([
  'generation_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'added_tokens.json',
  'tokenizer.model',
  'vocab.json',
  'merges.txt',
  'chat_template.jinja',
  'chat_template.json',
]);
