import type { Pool } from '@caldera/linalg';
import { CalderaError, type Tensor } from '@caldera/core';
import { yieldAndCheckAbort } from './abort.js';
import { finalizeHessian, HessianAccumulator } from './hessian.js';
import type { LinearInfo, ModelRunner } from './runner.js';

/** What {@link captureBlock} returns. */
export interface CapturedBlock {
  /** One accumulator per distinct input key of the block's linears, in the order the linears name them. */
  accs: Map<string, HessianAccumulator>;
  /** The block's output for every window: the hidden states the next block reads through this runner. */
  outputs: Float32Array[];
}

/**
 * The Hessian capture of one block, which the sequential driver (`compressModel`) and the scale-out's partial sums
 * (`accumulateHessians`) share: run the hidden states of every window through block `block`, adding the input of each
 * linear (rows × n) to the `Σ xxᵀ` of its input key (on `pool`'s threads when given). Yields to the event loop and
 * checks `signal` before every window (`E_ABORTED`, naming `what`). Not exported from the package.
 */
export async function captureBlock(
  runner: ModelRunner,
  block: number,
  linears: readonly LinearInfo[],
  hidden: readonly Float32Array[],
  windows: readonly Int32Array[],
  signal: AbortSignal | undefined,
  what: string,
  pool?: Pool,
): Promise<CapturedBlock> {
  const accs = new Map<string, HessianAccumulator>();
  for (const l of linears)
    if (!accs.has(l.input)) accs.set(l.input, new HessianAccumulator(l.inFeatures, pool ? { pool } : {}));
  const outputs: Float32Array[] = [];
  for (let w = 0; w < hidden.length; w++) {
    await yieldAndCheckAbort(signal, what);
    outputs.push(
      runner.runBlock(block, hidden[w]!, windows[w]!.length, (key, x, rows) => accs.get(key)?.add(x, rows)),
    );
  }
  return { accs, outputs };
}

/**
 * {@link finalizeHessian} of block `block`'s input `key`, its error (e.g. NaN activations) naming the block, the input
 * and the layers that read it (of `linears`). Not exported from the package.
 */
export function finalizeInContext(
  acc: HessianAccumulator,
  damping: number | undefined,
  block: number,
  key: string,
  linears: readonly LinearInfo[],
): Tensor<'f64'> {
  try {
    return finalizeHessian(acc, damping === undefined ? {} : { damping });
  } catch (e) {
    if (!(e instanceof CalderaError)) throw e;
    const readers = linears.filter((l) => l.input === key).map((l) => l.name);
    const who = readers.length ? ` (${readers.join(', ')})` : '';
    throw new CalderaError(
      e.code,
      `block ${block}, input '${key}'${who}: ${e.message.replace(/^E_[A-Z_]+: /, '')}`,
      { cause: e },
    );
  }
}
