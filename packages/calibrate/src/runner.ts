import type { CalderaLayerMeta, Tensor } from '@caldera/core';

/** One linear sublayer of a transformer block, as the compression driver sees it. */
export interface LinearInfo {
  /** Tensor-name prefix, e.g. `model.layers.3.mlp.up_proj` (the weight is `<name>.weight`). */
  name: string;
  /** Block index. */
  block: number;
  /**
   * Key of the input this layer reads. Layers with the same key share one Hessian: q/k/v read the attention input,
   * gate/up the MLP input.
   */
  input: string;
  /** Output features m. */
  outFeatures: number;
  /** Input features n. */
  inFeatures: number;
}

/** What replaces a dense linear: the tensors and metadata of one compressed layer in the checkpoint format. */
export interface LinearReplacement {
  tensors: Record<string, Tensor>;
  meta: CalderaLayerMeta;
}

/**
 * The small interface the compression driver needs from a model runtime. `@caldera/runtime-node` implements it;
 * calibrate never imports a runtime. Hidden states are row-major `Float32Array`s of `tokens × hiddenSize`, one
 * calibration window at a time (positions start at 0 for every window).
 */
export interface ModelRunner {
  readonly numBlocks: number;
  readonly hiddenSize: number;
  /** The linear sublayers of block `block`, in execution order. */
  linears(block: number): LinearInfo[];
  /** The current dense weight `[out, in]` of a linear layer, as f32. */
  weight(name: string): Tensor<'f32'>;
  /** Token embeddings of one window. */
  embed(tokens: Int32Array): Float32Array;
  /**
   * Run block `block` on the hidden states of one window and return the block's output. When `capture` is given it
   * is called with the input of each distinct `LinearInfo.input` key (rows × n, row-major).
   */
  runBlock(
    block: number,
    hidden: Float32Array,
    tokens: number,
    capture?: (input: string, x: Float32Array, rows: number) => void,
  ): Float32Array;
  /**
   * Optional: block `block` on several windows at once, `hidden` their hidden states one after another
   * (`Σ lengths × hiddenSize`, each window at positions from 0), as {@link ModelRunner.runBlock} on each in turn: the
   * outputs one after another, `capture` called with all the windows' rows of each input. With `output: false` it
   * returns null and may skip what no capture reads (e.g. the last linear). The drivers use it where it exists, with
   * groups of windows of up to 512 rows: it should compute what `runBlock` computes window by window, the captures'
   * rows in the same order (runtime-node's gives the same bits for windows of 20 rows or more on real layers).
   */
  runWindows?(
    block: number,
    hidden: Float32Array,
    lengths: readonly number[],
    capture?: (input: string, x: Float32Array, rows: number) => void,
    options?: { output?: boolean },
  ): Float32Array | null;
  /** Swap a dense linear for its compressed form (subsequent `runBlock` calls use it). */
  replaceLinear(name: string, replacement: LinearReplacement): void;
  /**
   * Optional, for runners that hold one block's weights at a time (runtime-node's `BlockLazyRunner`): awaited before
   * the driver first uses block `block` (`weight`, `runBlock`, `replaceLinear`). The drivers (`compressModel`,
   * `accumulateHessians`) enter blocks in increasing order, one at a time, and leave each before entering the next.
   * Rejects with `E_ABORTED` when `signal` is aborted.
   */
  enterBlock?(block: number, signal?: AbortSignal): Promise<void>;
  /**
   * Optional: the driver is done with block `block` (no more `weight`, `runBlock` or `replaceLinear` on it), so its
   * weights may be released.
   */
  leaveBlock?(block: number): void;
}
