export { gemm, gemmInto, type GemmOptions, type GemmIntoOptions } from './gemm.js';
export { createPool, type Pool, type PoolOptions } from './pool/pool.js';
