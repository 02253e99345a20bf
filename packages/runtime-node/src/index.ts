export * from './config.js';
export * from './linear.js';
export * from './model.js';
export * from './load.js';
export * from './eval.js';
export * from './generate.js';
export * from './tokenizer.js';
export * from './runner.js';
