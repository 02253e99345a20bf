import { assertObject, CalderaError } from '@caldera/core';
import { latticeQuantizer } from './lattice-quantizer.js';
import { normalFloatQuantizer } from './normal-float.js';
import type { Quantizer, QuantizerDescriptor } from './quantizer.js';
import { uniformQuantizer } from './uniform.js';

/**
 * Rebuild a quantizer from its JSON descriptor (`q.descriptor`, e.g. read back from a checkpoint's metadata).
 * Throws `E_VALUE` for an unknown kind, or for a `d` that is not an object (`null`, `undefined`).
 */
export function quantizerFromDescriptor(d: QuantizerDescriptor): Quantizer {
  assertObject(d, 'quantizerFromDescriptor', 'd', 'a quantizer descriptor');
  switch (d.kind) {
    case 'uniform':
      return uniformQuantizer(d);
    case 'nf':
      return normalFloatQuantizer(d);
    case 'e8p12':
    case 'e8p12-rvq3':
    case 'e8p12-rvq4':
      return latticeQuantizer(d.kind, { inputScale: d.inputScale });
    default:
      throw new CalderaError('E_VALUE', `quantizerFromDescriptor: unknown kind in ${JSON.stringify(d)}`);
  }
}
