import type { Pool } from '@caldera/linalg';
import { CalderaError, type Tensor } from '@caldera/core';
import { yieldAndCheckAbort } from './abort.js';
import { finalizeHessian, HessianAccumulator } from './hessian.js';
import type { LinearInfo, ModelRunner } from './runner.js';

/** What {@link captureBlock} returns. */
export interface CapturedBlock {
  /** One accumulator per distinct input key of the block's linears, in the order the linears name them. */
  accs: Map<string, HessianAccumulator>;
  /** The block's output for every window (the hidden states the next block reads through this runner); null unless asked. */
  outputs: Float32Array[] | null;
}

/** Options of {@link captureBlock}. */
export interface CaptureOptions {
  /** Checked before every window (`E_ABORTED`, naming `what`). */
  signal: AbortSignal | undefined;
  what: string;
  /** Threads for the Hessians' products. */
  pool?: Pool;
  /**
   * Whether the block's outputs are wanted. Without them a runner with `captureInputs` skips what no capture reads
   * (a Llama block's down_proj).
   */
  outputs: boolean;
}

/**
 * The Hessian capture of one block, which the sequential driver (`compressModel`) and the scale-out's partial sums
 * (`accumulateHessians`) share: run the hidden states of every window through block `block`, adding the input of each
 * linear (rows × n) to the `Σ xxᵀ` of its input key (on `pool`'s threads when given). Yields to the event loop and
 * checks `signal` before every window. Not exported from the package.
 */
export async function captureBlock(
  runner: ModelRunner,
  block: number,
  linears: readonly LinearInfo[],
  hidden: readonly Float32Array[],
  windows: readonly Int32Array[],
  { signal, what, pool, outputs }: CaptureOptions,
): Promise<CapturedBlock> {
  const accs = new Map<string, HessianAccumulator>();
  for (const l of linears)
    if (!accs.has(l.input)) accs.set(l.input, new HessianAccumulator(l.inFeatures, pool ? { pool } : {}));
  const add = (key: string, x: Float32Array, rows: number) => accs.get(key)?.add(x, rows);
  const out: Float32Array[] | null = outputs ? [] : null;
  for (let w = 0; w < hidden.length; w++) {
    await yieldAndCheckAbort(signal, what);
    const tokens = windows[w]!.length;
    if (out) out.push(runner.runBlock(block, hidden[w]!, tokens, add));
    else if (runner.captureInputs) runner.captureInputs(block, hidden[w]!, tokens, add);
    else runner.runBlock(block, hidden[w]!, tokens, add);
  }
  return { accs, outputs: out };
}

/**
 * {@link finalizeHessian} of block `block`'s input `key`, its error (e.g. NaN activations) naming the block, the input
 * and the layers that read it (of `linears`). Consumes `acc` (its array becomes H). Not exported from the package.
 */
export function finalizeInContext(
  acc: HessianAccumulator,
  damping: number | undefined,
  block: number,
  key: string,
  linears: readonly LinearInfo[],
): Tensor<'f64'> {
  try {
    // the callers drop the accumulator once its H is made: H is made in its array
    return finalizeHessian(acc, { ...(damping === undefined ? {} : { damping }), consume: true });
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
