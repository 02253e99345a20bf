/**
 * The model-config parser lives in @caldera/core (shared with @caldera/runtime-webgpu); re-exported here so that
 * `parseModelConfig`, `ModelConfig` and `blockLinearNames` stay importable from @caldera/runtime-node.
 */
export { blockLinearNames, parseModelConfig, type ModelConfig } from '@caldera/core';
