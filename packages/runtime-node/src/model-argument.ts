/** The model argument of `generate` and `perplexity` (internal: not exported from the package's entry). */
import { CalderaError, describeValue } from '@caldera/core';

/**
 * `E_VALUE` unless `model` is a loaded model (an object with its parsed `config`): `generate(null, …)` and
 * `perplexity({}, …)` failed with a TypeError from inside.
 */
export function checkModelArgument(model: unknown, fn: string): void {
  const config = (model as { config?: unknown } | null)?.config;
  if (model === null || typeof model !== 'object' || config === null || typeof config !== 'object')
    throw new CalderaError(
      'E_VALUE',
      `${fn}: model must be a LlamaModel (loadModel's model), got ${
        model === null || typeof model !== 'object' ? describeValue(model) : 'an object without its config'
      }`,
    );
}
