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
  /** Checked before every group of windows (`E_ABORTED`, naming `what`). */
  signal: AbortSignal | undefined;
  what: string;
  /** Threads for the Hessians' products. */
  pool?: Pool;
  /**
   * Whether the block's outputs are wanted. Without them a runner with `runWindows` skips what no capture reads (a
   * Llama block's down_proj).
   */
  outputs: boolean;
}

/**
 * The Hessian capture of one block, which the sequential driver (`compressModel`) and the scale-out's partial sums
 * (`accumulateHessians`) share: run the hidden states of every window through block `block` (by
 * {@link runWindowGroups}), adding the input of each linear to the `Σ xxᵀ` of its input key (on `pool`'s threads when
 * given). Not exported from the package.
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
  const out = await runWindowGroups(runner, block, hidden, windows, {
    capture: (key, x, rows) => accs.get(key)?.add(x, rows),
    output: outputs,
    signal,
    what,
  });
  return { accs, outputs: out };
}

/**
 * Rows of the windows a runner's `runWindows` gets at once: each linear then runs once per group, which spreads its
 * per-call costs (a bf16 weight's conversion, the packing of its operand, a CALDERA layer's decoding) over 4 windows
 * of the default 128 tokens. 512: the f32 gemm's best rate on the 2-core machine (34 GMAC/s, 33 at 128 rows, 30 at
 * 1024), and a 3B model's activations of the group (about 90 MB) stay small.
 */
const GROUP_ROWS = 512;

/**
 * Block `block` on every window's hidden states: through `runner.runWindows` on groups of consecutive windows of at
 * most {@link GROUP_ROWS} rows (a longer window alone) where the runner has it, else `runBlock` window by window.
 * Returns each window's output (views of their group's array), or null without `output` (then `runWindows` may skip
 * what no capture reads). Yields to the event loop and checks `signal` before every group (`E_ABORTED`, naming `what`).
 */
export async function runWindowGroups(
  runner: ModelRunner,
  block: number,
  hidden: readonly Float32Array[],
  windows: readonly Int32Array[],
  options: {
    capture?: (input: string, x: Float32Array, rows: number) => void;
    output: boolean;
    signal: AbortSignal | undefined;
    what: string;
  },
): Promise<Float32Array[] | null> {
  const { capture, output, signal, what } = options;
  const outs: Float32Array[] | null = output ? [] : null;
  for (let w = 0; w < hidden.length;) {
    await yieldAndCheckAbort(signal, what);
    if (!runner.runWindows) {
      const y = runner.runBlock(block, hidden[w]!, windows[w]!.length, capture);
      outs?.push(y);
      w++;
      continue;
    }
    let end = w + 1;
    let rows = windows[w]!.length;
    while (end < hidden.length && rows + windows[end]!.length <= GROUP_ROWS) rows += windows[end++]!.length;
    const lengths = windows.slice(w, end).map((t) => t.length);
    let x = hidden[w]!;
    if (end - w > 1) {
      x = new Float32Array(rows * runner.hiddenSize);
      for (let i = w, at = 0; i < end; at += hidden[i++]!.length) x.set(hidden[i]!, at);
    }
    const y = runner.runWindows(block, x, lengths, capture, { output });
    if (outs) {
      if (!y) throw new CalderaError('E_VALUE', `${what}: runWindows returned no output for block ${block}`);
      const d = runner.hiddenSize;
      for (let i = w, r0 = 0; i < end; r0 += windows[i++]!.length)
        outs.push(y.subarray(r0 * d, (r0 + windows[i]!.length) * d));
    }
    w = end;
  }
  return outs;
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
