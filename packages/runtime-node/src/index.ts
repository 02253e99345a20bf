export * from './config.js';
export * from './linear.js';
export * from './model.js';
export { AttentionKernel, type AttentionShape } from './kernels/attention-kernel.js';
export * from './load.js';
export type { MemoryPlan } from './memory-plan.js';
export {
  readModelLayout,
  type LinearLayout,
  type ModelLayout,
  type ModelLayoutOptions,
  type StoredFloatDType,
  type TensorLayout,
} from './layout.js';
export { readJsonFile } from './json-file.js';
export * from './eval.js';
export * from './generate.js';
export * from './chat-session.js';
export * from './tokenizer.js';
export { CHAT_TEMPLATE_LIMITS } from './chat-template.js';
export * from './runner.js';
export * from './block-runner.js';
export * from './llama2c.js';
export * from './train/index.js';
export { BatchWorkspace, type CalderaBatchLayer, type CodeSlice } from './kernels/batch-workspace.js';
export { createDecodePool, type DecodePool, type DecodePoolOptions } from './kernels/decode-pool.js';
export {
  KernelArenas,
  type ArenaName,
  type ArenaRequest,
  type KernelArenasOptions,
} from './kernels/kernel-arenas.js';
