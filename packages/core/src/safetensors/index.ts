export * from './dtypes.js';
export * from './header.js';
export * from './source.js';
export * from './reader.js';
export * from './writer.js';
export * from './sharded.js';
export * from './url.js';
