/**
 * Run CALDERA-compressed and dense Llama-family checkpoints on WebGPU: create a device, load a model, generate and
 * score text. The kernels and GPU layers the model is built from are offered apart, at
 * `@caldera/runtime-webgpu/kernels` (see `kernels.ts`).
 *
 * @packageDocumentation
 * @mergeModuleWith <project>
 */
export { createDevice, type CalderaDevice, type CreateDeviceOptions } from './device.js';
/** The model-config parser shared with @caldera/runtime-node (it lives in @caldera/core). */
export { blockLinearNames, parseModelConfig, type ModelConfig } from '@caldera/core';
export {
  loadModel,
  loadModelFromBuffer,
  loadModelFromStore,
  loadModelFromUrl,
  planMemory,
  type LoadedWebGpuModel,
  type LoadOptions,
  type MemoryPlan,
  type UrlLoadOptions,
} from './load.js';
export {
  WebGpuModel,
  type BatchOutput,
  type GpuBlockWeights,
  type GpuModelWeights,
  type KernelChoice,
  type SequenceClaim,
  type StepOutput,
  type TopKResult,
  type WebGpuModelOptions,
} from './model.js';
export type { TunedCandidate, TuneOptions, TuneProgress, TuneReport } from './tune.js';
/** Option types of {@link WebGpuModelOptions} (the kernels' `lanes`, `rowsPerLane`, `gateStep` and `codeBatch`). */
export type { RowsPerLane, Lanes, GateStep, CodeBatch } from './kernels/index.js';
export {
  generate,
  perplexity,
  sample,
  type GenerateOptions,
  type PerplexityOptions,
  type PerplexityResult,
} from './generate.js';
