/**
 * `@caldera/runtime-webgpu/kernels`: the building blocks a `WebGpuModel` is made of, for research and
 * benchmarks — the WGSL kernels (the fused CALDERA matrix–vector product that decodes E8P codes on the fly, the dense
 * matrix–vector product, RMSNorm, the sign/Hadamard rotations, RoPE with the KV-cache store, attention, SwiGLU,
 * argmax) with their typed entry points ({@link Kernels}, {@link encodeDispatches}), the buffer and weight-packing
 * helpers that feed them, and whole linear layers on the GPU ({@link GpuCalderaLinear}, {@link GpuDenseLinear}).
 *
 * Lower level than the root export (`createDevice`, the loaders, `WebGpuModel`, `generate`, `perplexity`) and
 * less stable: launch options and WGSL follow the model's needs and may change in any minor version. Pass a device
 * from the root's `createDevice`.
 *
 * @example
 * ```ts
 * import { createDevice } from '@caldera/runtime-webgpu';
 * import { encodeDispatches, Kernels, readBuffer, storageBuffer } from '@caldera/runtime-webgpu/kernels';
 *
 * const dev = await createDevice();
 * const k = new Kernels(dev);
 * const w = { buffer: storageBuffer(dev, weights, 'w'), rows: m, cols: n, dtype: 'f32', rowWords: n } as const;
 * const out = storageBuffer(dev, new Float32Array(m), 'out');
 * const enc = dev.device.createCommandEncoder();
 * const dummy = storageBuffer(dev, new Float32Array(4), 'dummy'); // bound where a launch has no bias
 * encodeDispatches(enc, [k.matvec(w, storageBuffer(dev, x, 'x'), out, { bias: null, accumulate: false, dummy })]);
 * dev.device.queue.submit([enc.finish()]);
 * const y = new Float32Array(await readBuffer(dev, out, m * 4));
 * ```
 *
 * @module kernels
 */
// typed entry points: one recorded launch per call, replayed into compute passes
export {
  encodeDispatches,
  F16_MIN_WORKGROUPS,
  KernelPipeline,
  Kernels,
  bufferBindingTypes,
  type Dispatch,
  type E8pSegment,
  type GateInput,
  type GpuMatrix,
  type InputProjectionOptions,
  type ProjectionCodes,
  type ResidualInput,
  type RopeKvOptions,
  type RotateOptions,
  type RotationBuffers,
  type RotationInput,
  type RotationMember,
} from './kernels/index.js';

// the WGSL sources (and their binding orders and sizes) the entry points compile
export {
  ARGMAX_NAN_FLAG,
  ARGMAX_WGSL,
  NLL_WGSL,
  attentionWgsl,
  e8pBindings,
  e8pF16WorkgroupBytes,
  E8P_MAX_SEGMENTS,
  e8pMatvecF16Wgsl,
  e8pMatvecWgsl,
  e8pTablesUniform,
  embedWgsl,
  HADAMARD_MIX_WGSL,
  hadamardChunkWgsl,
  hadamardStrideWgsl,
  hadamardWgsl,
  inputProjectionBindings,
  inputProjectionWgsl,
  matvecWgsl,
  rmsNormWgsl,
  ROPE_KV_WGSL,
  ROPE_NORM_WG,
  ropeKvNormWgsl,
  ROTATION_MAX_MEMBERS,
  ROTATION_MAX_OUTPUTS_WITH_INPUT,
  rotationAttentionWgsl,
  rotationNormWgsl,
  rotationRopeKvWgsl,
  ROWS_PER_WG,
  rowsPerWorkgroup,
  SWIGLU_WGSL,
  TOPK_BLOCK,
  TOPK_GATHER_WGSL,
  TOPK_MAX,
  TOPK_MAX_LEVELS,
  topkLevelBlocks,
  topkLevelWgsl,
  unpackBf16Wgsl,
  WG,
  type DenseDtype,
  type RowsPerLane,
  type Lanes,
  type LatticeCodec,
  type PreviousStep,
  type RotationInputKind,
} from './kernels/wgsl.js';

// GPU buffers for the kernels' inputs and outputs
export {
  BufferUsage,
  MAP_READ_MODE,
  readBuffer,
  scratchBuffer,
  storageBuffer,
  uniformBuffer,
  uniformWords,
  type UniformField,
} from './device.js';

// weights in the kernels' layouts, and whole linear layers on the GPU
export {
  createCalderaLinears,
  createDenseLinears,
  createLinearContext,
  e8pSourcePairs,
  GpuCalderaGroup,
  GpuCalderaLinear,
  GpuDenseGroup,
  GpuDenseLinear,
  gpuCodecOf,
  groupable,
  MAX_GROUP_LAYERS,
  packCodePlanes,
  uploadMatrix,
  type CalderaLayerInput,
  type DenseLayerInput,
  type GpuLinear,
  type GroupBindOptions,
  type LinearContext,
  type ScratchNeeds,
} from './linear.js';
export { ropeTable } from './model.js';
