import type { Pool } from '@caldera/linalg';
import { yieldAndCheckAbort } from './abort.js';
import { HessianAccumulator } from './hessian.js';
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
