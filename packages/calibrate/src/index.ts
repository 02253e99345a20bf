export * from './windows.js';
export * from './hessian.js';
export * from './budget.js';
export type * from './runner.js';
export * from './driver.js';
export * from './jobs.js';
