export * from './windows.js';
export * from './hessian.js';
