export * from './types.js';
export * from './loss.js';
export * from './rmsnorm.js';
export * from './swiglu.js';
export * from './optim.js';
export * from './rope.js';
export * from './attention.js';
