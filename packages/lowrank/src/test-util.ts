import { validateCalderaCheckpoint, type CalderaLayerMeta } from '@caldera/core';
import type { toCheckpointTensors } from './decomposition.js';

/**
 * Check one layer's checkpoint tensors against its metadata with @caldera/core's validator, inside a minimal
 * `caldera.json` (throws `E_FORMAT`/`E_SHAPE`/`E_MISSING` naming the tensor on a mismatch).
 */
export function validateLayer(prefix: string, ck: ReturnType<typeof toCheckpointTensors>): void {
  validateCalderaCheckpoint(
    {
      format: 'caldera',
      version: 1,
      method: 'caldera',
      options: {},
      seed: 0,
      bitsPerWeight: ck.meta.bitsPerWeight,
      layers: { [prefix]: ck.meta as CalderaLayerMeta },
    },
    ck.tensors,
  );
}
