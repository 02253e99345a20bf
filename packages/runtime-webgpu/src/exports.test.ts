import { describe, expect, expectTypeOf, it } from 'vitest';
import * as root from './index.js';
import * as kernels from './kernels.js';
import type { StepOutput, WebGpuModel } from './index.js';

describe('entry points', () => {
  it('the root exports the API for running models, and no kernels', () => {
    expect(Object.keys(root).sort()).toEqual([
      'WebGpuModel',
      'blockLinearNames',
      'createDevice',
      'generate',
      'loadModel',
      'loadModelFromBuffer',
      'loadModelFromStore',
      'loadModelFromUrl',
      'parseModelConfig',
      'perplexity',
      'planMemory',
      'sample',
    ]);
  });

  it('/kernels exports the kernels, their WGSL, buffer helpers and GPU layers, and nothing of the root', () => {
    const names = Object.keys(kernels);
    for (const name of [
      'Kernels',
      'encodeDispatches',
      'matvecWgsl',
      'e8pMatvecWgsl',
      'rmsNormWgsl',
      'attentionWgsl',
      'storageBuffer',
      'readBuffer',
      'uploadMatrix',
      'e8pSourcePairs',
      'GpuCalderaLinear',
      'GpuDenseLinear',
      'createLinearContext',
    ])
      expect(names).toContain(name);
    expect(names.filter((n) => n in root)).toEqual([]);
  });

  it('model-assembly and device-check helpers are exported from neither', () => {
    for (const name of [
      'bindLayers',
      'bindPending',
      'bindNormed',
      'watchDeviceLost',
      'deviceLostInfo',
      'checkDeviceAlive',
      'checkFits',
      'bufferBytes',
      'contextLengthOf',
      'prefillChunkOf',
      'activationRowsOf',
      'PREFILL_ROW_TILE',
      'ropeInvFreq',
    ]) {
      expect(root).not.toHaveProperty(name);
      expect(kernels).not.toHaveProperty(name);
    }
  });

  it('step() takes a StepOutput variable, as stepBatch() a BatchOutput (its literal overloads refused the union; tsc checks this file)', () => {
    const step = (m: WebGpuModel, o: StepOutput) => m.step(1, o);
    expectTypeOf(step).returns.toEqualTypeOf<Promise<null | number | Float32Array>>();
    expectTypeOf((m: WebGpuModel) => m.step(1, 'argmax')).returns.toEqualTypeOf<Promise<number>>();
  });
});
