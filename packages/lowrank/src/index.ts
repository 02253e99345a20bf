export * from './caldera.js';
export * from './decomposition.js';
export * from './codec.js';
export * from './rotate.js';
export * from './random.js';
