export * from './e8p.js';
export * from './rvq.js';
export * from './rounder.js';
export * from './ldlq.js';
