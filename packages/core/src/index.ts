export * from './errors.js';
export * from './dtype.js';
export * from './half.js';
export * from './tensor.js';
export * from './rng.js';
export * from './ndarray.js';
export * from './fs-atomic.js';
export * from './safetensors/index.js';
