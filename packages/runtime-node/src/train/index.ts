export * from './types.js';
export * from './loss.js';
export * from './rmsnorm.js';
export * from './swiglu.js';
export * from './optim.js';
