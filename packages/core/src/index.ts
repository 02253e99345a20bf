export * from './errors.js';
export * from './options.js';
export * from './dtype.js';
export * from './half.js';
export * from './tensor.js';
export * from './rng.js';
export * from './ndarray.js';
export * from './fs-atomic.js';
export {
  danglingLinkError,
  notRegularFile,
  readJsonFile,
  readTextFile,
  specialFileKind,
} from './text-file.js';
export * from './safetensors/index.js';
export * from './checkpoint/index.js';
export * from './model-config.js';
export * from './sampling.js';
export * from './perplexity.js';
export * from './model-files.js';
export * from './token-ids.js';
export * from './number-rule.js';
