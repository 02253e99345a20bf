export * from './device.js';
/** The model-config parser shared with @caldera/runtime-node (it lives in @caldera/core). */
export { blockLinearNames, parseModelConfig, type ModelConfig } from '@caldera/core';
export * from './kernels/index.js';
export * from './linear.js';
export * from './model.js';
export * from './load.js';
export * from './generate.js';
