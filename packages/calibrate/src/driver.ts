import {
  assertBooleanOptions,
  assertCallbacks,
  assertFunction,
  assertObject,
  CalderaError,
  shownValue,
  type Tensor,
} from '@caldera/core';
import { checkDamping } from './damping.js';
import type { Pool } from '@caldera/linalg';
import { yieldAndCheckAbort } from './abort.js';
import { captureBlock, finalizeInContext, runWindowGroups } from './capture.js';
import { HessianAccumulator } from './hessian.js';
import type { LinearInfo, LinearReplacement, ModelRunner } from './runner.js';

/** What compressing one linear layer produced. */
export interface LayerResult {
  name: string;
  replacement: LinearReplacement;
  /** Activation-aware relative error ‖(Ŵ − W)H^½‖_F / ‖W H^½‖_F. */
  error: number;
  /** Bits per weight of this layer under the paper's accounting. */
  bitsPerWeight: number;
  rank: number;
  seconds: number;
}

/** Progress within one layer's compression. */
export interface LayerProgress {
  /** Fraction of the layer's work done, in [0, 1]; 1 when its last step has finished. */
  fraction: number;
}

/** What {@link compressModel} passes to its {@link CompressLayerFn}. */
export interface CompressLayerOptions {
  /** The run's signal: a compressor may check it while it works (`E_ABORTED`). */
  signal?: AbortSignal;
  /**
   * Progress within the layer, reported as often as the compressor likes (e.g. after every CALDERA sub-step); the
   * driver forwards it as {@link CompressProgress.layerFraction}. May be called synchronously from inside the work.
   */
  onProgress?: (p: LayerProgress) => void;
  /**
   * True when the compressor may overwrite H: this layer is the last that reads it, and the driver keeps no reference
   * to it after the call (so caldera's `overwriteH`, passed on by `compressLayerWithSpec`, saves an n × n f64 array).
   * False for the layers before.
   */
  overwriteH: boolean;
}

/**
 * Compress one weight `W [m, n]` given its input Hessian `H [n, n]` (null for data-free methods). The driver always
 * passes `options` (`{ signal?, onProgress?, overwriteH }`, the SDK's convention for long work) as the fourth
 * argument.
 */
export type CompressLayerFn = (
  w: Tensor<'f32'>,
  h: Tensor<'f64'> | null,
  info: LinearInfo,
  options: CompressLayerOptions,
) => Promise<Omit<LayerResult, 'seconds' | 'name'>> | Omit<LayerResult, 'seconds' | 'name'>;

/** Persistence of finished blocks, so a killed run resumes where it stopped. */
export interface BlockStore {
  /** Results of a finished block, or null when the block has not been committed. */
  load(block: number): Promise<LayerResult[] | null>;
  /** Commit a finished block atomically. */
  save(block: number, results: LayerResult[]): Promise<void>;
}

/** Progress of {@link compressModel}. */
export interface CompressProgress {
  phase: 'capture' | 'compress' | 'propagate' | 'resume';
  /**
   * Index of the block the event is about, counted from 0 like `LinearInfo.block`, `enterBlock` and the store's keys
   * (the last is `numBlocks - 1`). Text for people shows `block + 1` of `numBlocks` (the CLI's "block 1/N").
   */
  block: number;
  numBlocks: number;
  layer?: string;
  /**
   * On `'compress'` events: the fraction of `layer`'s work done, in [0, 1]. 0 when the layer starts, then what the
   * compressor reports through its `onProgress` (`compressLayerWithSpec`: after every CALDERA sub-step, 1 after the
   * last), so that `layersDone + layerFraction` counts the layers done, the running one's part included.
   */
  layerFraction?: number;
  /** Layers finished so far over all blocks, and in total. */
  layersDone: number;
  layersTotal: number;
  elapsedSeconds: number;
  /**
   * Estimated seconds left, from the mean time per finished layer times the layers left (less the running layer's
   * `layerFraction`); undefined before the first layer finishes.
   */
  etaSeconds?: number;
}

/** Options of {@link compressModel}. */
export interface CompressModelOptions {
  compressLayer: CompressLayerFn;
  /**
   * Which hidden states feed block i+1: `'compressed'` (default) runs the windows through the block after its layers
   * are replaced, so later blocks are calibrated on the inputs they will really see; `'original'` propagates through
   * the unmodified model, as the reference implementation does (then the runner is never modified).
   */
  propagate?: 'compressed' | 'original';
  /** Hessian damping (relative to the mean diagonal). Default 0.01. */
  damping?: number;
  /**
   * Whether the method needs Hessians. Default true. Data-free methods (RTN) skip the capture and the propagation: the
   * windows are not used (they may be empty).
   */
  needsHessian?: boolean;
  /**
   * A `@caldera/linalg` worker pool for the Hessians' `Σ xxᵀ` products (the {@link HessianAccumulator}s' `pool`): the
   * same bits, sooner. Default: the calling thread. (`compressLayer` takes its own.)
   */
  pool?: Pool;
  store?: BlockStore;
  /**
   * Stops the run with `E_ABORTED`. The driver yields to the event loop before every group of windows (up to 512 rows,
   * one window where the runner has no `runWindows`) and every layer, so a timer or a SIGINT handler can fire it
   * mid-run; it is also passed to `compressLayer` (in its options).
   */
  signal?: AbortSignal;
  /**
   * Called at every phase of every block, when each layer starts, and within a layer whenever the compressor reports
   * progress (`layerFraction`), synchronously from inside the compressor's work in that case.
   */
  onProgress?: (p: CompressProgress) => void;
}

/**
 * Layer-wise compression of a whole model: for each block in order, capture the inputs of its linear layers on the
 * calibration windows, accumulate one Hessian per input key, compress each layer, then propagate the windows to the
 * next block. Finished blocks are committed to `store`; blocks already there are loaded instead of recomputed, so a
 * resumed run gives the same results as an uninterrupted one (the compressors must be deterministic). A runner with
 * `enterBlock`/`leaveBlock` is told when each block starts and ends (left on failure too), so that it can hold one
 * block's weights at a time.
 */
export async function compressModel(
  runner: ModelRunner,
  windows: readonly Int32Array[],
  options: CompressModelOptions,
): Promise<LayerResult[]> {
  assertObject(runner, 'compressModel', 'runner', 'a ModelRunner');
  assertObject(windows, 'compressModel', 'windows', 'an array of token windows');
  assertObject(options, 'compressModel', 'options', 'an object');
  assertFunction(options.compressLayer, 'compressModel', 'options.compressLayer');
  assertCallbacks(options, 'compressModel', ['onProgress']);
  // before any work: a misspelt propagate ran every block twice, a bad damping failed after block 0's capture
  const propagate = options.propagate ?? 'compressed';
  if (propagate !== 'compressed' && propagate !== 'original')
    throw new CalderaError(
      'E_VALUE',
      `compressModel: propagate must be 'compressed' or 'original', got ${shownValue(propagate)}`,
    );
  assertBooleanOptions(options, 'compressModel', ['needsHessian']);
  const needsHessian = options.needsHessian ?? true;
  const damping = checkDamping(options.damping);
  if (windows.length === 0 && needsHessian)
    throw new CalderaError('E_VALUE', 'compressModel: no calibration windows');
  const t0 = performance.now();
  const numBlocks = runner.numBlocks;
  const layersTotal = Array.from({ length: numBlocks }, (_, b) => runner.linears(b).length).reduce(
    (a, c) => a + c,
    0,
  );
  let layersDone = 0;
  let computeSeconds = 0;
  let computedLayers = 0;
  const report = (
    p: Omit<CompressProgress, 'numBlocks' | 'layersDone' | 'layersTotal' | 'elapsedSeconds' | 'etaSeconds'>,
  ) => {
    const eta =
      computedLayers > 0
        ? (computeSeconds / computedLayers) * Math.max(0, layersTotal - layersDone - (p.layerFraction ?? 0))
        : undefined;
    options.onProgress?.({
      ...p,
      numBlocks,
      layersDone,
      layersTotal,
      elapsedSeconds: (performance.now() - t0) / 1000,
      ...(eta === undefined ? {} : { etaSeconds: eta }),
    });
  };

  const all: LayerResult[] = [];
  /** Block `b`: its layers compressed (or loaded from the store), and the hidden states that feed block b+1. */
  const compressBlock = async (b: number, hidden: Float32Array[]): Promise<Float32Array[]> => {
    const linears = runner.linears(b);
    const stored = options.store ? await options.store.load(b) : null;
    let results: LayerResult[];
    let next: Float32Array[] | null = null;
    if (stored) {
      report({ phase: 'resume', block: b });
      results = stored;
    } else {
      let accs = new Map<string, HessianAccumulator>();
      if (needsHessian) {
        report({ phase: 'capture', block: b });
        // the outputs only where they feed the next block: propagating the original model, to a block after this one
        const outputs = propagate === 'original' && b < numBlocks - 1;
        const captured = await captureBlock(runner, b, linears, hidden, windows, {
          signal: options.signal,
          what: 'compression',
          ...(options.pool ? { pool: options.pool } : {}),
          outputs,
        });
        accs = captured.accs;
        if (outputs) next = captured.outputs;
      }
      // each accumulator is dropped once its H is made, each H after the last layer that reads it: at a 3B model's MLP
      // width (11008) each is 0.97 GB, and the accumulators were held through the whole block's decompositions
      const hessians = new Map<string, Tensor<'f64'>>();
      for (const [key, acc] of accs) {
        hessians.set(key, finalizeInContext(acc, damping, b, key, linears));
        accs.delete(key);
      }
      const lastReader = new Map(linears.map((l) => [l.input, l.name]));
      results = [];
      for (const l of linears) {
        await yieldAndCheckAbort(options.signal, 'compression');
        report({ phase: 'compress', block: b, layer: l.name, layerFraction: 0 });
        const ts = performance.now();
        const h = needsHessian ? hessians.get(l.input)! : null;
        const overwriteH = h !== null && lastReader.get(l.input) === l.name;
        if (overwriteH) hessians.delete(l.input);
        const r = await options.compressLayer(runner.weight(l.name), h, l, {
          overwriteH,
          ...(options.signal ? { signal: options.signal } : {}),
          ...(options.onProgress
            ? {
                onProgress: ({ fraction }: LayerProgress) => {
                  // a compressor's figure outside [0, 1] is clamped, one that is not a number dropped
                  if (typeof fraction !== 'number' || Number.isNaN(fraction)) return;
                  report({
                    phase: 'compress',
                    block: b,
                    layer: l.name,
                    layerFraction: Math.min(1, Math.max(0, fraction)),
                  });
                },
              }
            : {}),
        });
        const seconds = (performance.now() - ts) / 1000;
        computeSeconds += seconds;
        computedLayers++;
        results.push({ ...r, name: l.name, seconds });
        layersDone++;
      }
      if (options.store) await options.store.save(b, results);
    }
    if (stored) layersDone += linears.length;
    all.push(...results);
    if (propagate === 'compressed') {
      for (const r of results) runner.replaceLinear(r.name, r.replacement);
    }
    // a data-free method's later blocks need no inputs
    if (b < numBlocks - 1 && needsHessian) {
      if (!next) {
        report({ phase: 'propagate', block: b });
        next = (await runWindowGroups(runner, b, hidden, windows, {
          output: true,
          signal: options.signal,
          what: 'compression',
        }))!;
      }
      return next;
    }
    return hidden;
  };

  let states = needsHessian ? windows.map((w) => runner.embed(w)) : [];
  for (let b = 0; b < numBlocks; b++) {
    await yieldAndCheckAbort(options.signal, 'compression');
    try {
      await runner.enterBlock?.(b, options.signal);
      states = await compressBlock(b, states);
    } finally {
      runner.leaveBlock?.(b);
    }
  }
  return all;
}
