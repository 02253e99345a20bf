export {
  E8P_DIM,
  E8P_OPT_SCALE,
  e8pDecode,
  e8pEncode,
  e8pEncodeWasmAvailable,
  e8pGrid,
  e8pSources,
  type E8PEncodeOptions,
} from './e8p.js';
export type { E8PEncodeTables } from './e8p-encode.js';
export * from './rvq.js';
export * from './rounder.js';
export * from './ldlq.js';
// the shared interface; the helpers beside it in quantizer.ts (group iteration, argument and shape checks) are the
// codecs' own, not part of the package's API
export {
  groupCount,
  type Granularity,
  type QuantizedTensor,
  type QuantizerDescriptor,
  type QuantParams,
  type Quantizer,
} from './quantizer.js';
export * from './uniform.js';
export * from './normal-float.js';
export * from './lattice-quantizer.js';
export * from './registry.js';
export * from './pack.js';
export * from './quantizer-rounder.js';
