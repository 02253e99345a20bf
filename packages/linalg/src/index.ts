export { gemm, gemmInto, type GemmOptions, type GemmIntoOptions, type KernelProgress } from './gemm.js';
export { createPool, type Pool, type PoolOptions } from './pool/pool.js';
export { gemv, gemvInto, type GemvOptions, type GemvNewOptions, type Vector } from './gemv.js';
export { syrk, syrkInto, type SyrkOptions, type SyrkNewOptions } from './syrk.js';
export { mirrorUpper } from './symmetric.js';
export { cholesky, choleskyWithInfo, type CholeskyOptions, type CholeskyResult } from './cholesky.js';
export { blockLDL, blockLDLFromCholesky, type BlockLDL, type BlockLDLFromCholeskyOptions } from './ldl.js';
export {
  hadamard,
  hadamardRowsInPlace,
  hadamardColumnsInPlace,
  type HadamardInPlaceOptions,
  hadamardBase,
  hadamardFactor,
  hadamardSupported,
  nextHadamardSize,
  HADAMARD_BASE_ORDERS,
  type HadamardOptions,
} from './hadamard.js';
export {
  randomizedSvd,
  eighJacobi,
  orthonormalizeColumns,
  type RandomizedSvdOptions,
  type TruncatedSvd,
} from './rsvd.js';
export { solveTriangular, invTriangular, type SolveTriangularOptions } from './triangular.js';
export { qr, type QR, type QrOptions } from './qr.js';
export { eigh, type Eigh, type EighOptions } from './eigh.js';
export { svd, type Svd, type SvdOptions } from './svd.js';
export { lstsq, pinv, type Lstsq, type LstsqOptions } from './lstsq.js';
export { sqrtmSym, invSqrtmSym, type SqrtmOptions } from './sqrtm.js';
export { assertMatrix, type FloatDType } from './check.js';
