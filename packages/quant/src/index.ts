export * from './e8p.js';
export * from './rvq.js';
