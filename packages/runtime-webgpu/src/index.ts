export * from './device.js';
export * from './config.js';
export * from './kernels/index.js';
export * from './linear.js';
export * from './model.js';
export * from './load.js';
export * from './generate.js';
