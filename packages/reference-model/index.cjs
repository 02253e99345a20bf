'use strict';
const { join } = require('node:path');

/** Absolute path of the reference model's Hugging Face directory (config.json, model.safetensors, tokenizer.json). */
function referenceModelDir() {
  return join(__dirname, 'model') + '/';
}

/** Absolute path of a text split of the reference model's corpus: 'train' (calibration), 'valid' or 'test'. */
function referenceTextPath(split) {
  if (!['train', 'valid', 'test'].includes(split)) throw new Error(`unknown split '${split}'`);
  return join(__dirname, 'data', `${split}.txt`);
}

module.exports = { referenceModelDir, referenceTextPath };
