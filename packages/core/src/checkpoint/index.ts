export * from './meta.js';
export * from './names.js';
export * from './validate.js';
export * from './dir.js';
