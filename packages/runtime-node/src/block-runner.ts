import {
  assertCallbacks,
  CalderaError,
  checkPerplexityArgs,
  perplexityWindows,
  throwIfAborted,
  type CalderaLayerMeta,
  type PerplexityOptions,
  type PerplexityResult,
  type Tensor,
  type TensorStore,
  checkDenseDtype,
  assertFunction,
  assertTensorStore,
} from '@caldera/core';
import type { Pool } from '@caldera/linalg';
import { blockLinearNames, type ModelConfig } from './config.js';
import { checkPathArgument } from './json-file.js';
import { embeddingAndHead, readFloat, readHeld, type HeldFloat } from './held.js';
import { openModelLayout, type ModelLayout } from './layout.js';
import type { Linear } from './linear.js';
import { readBlockWeights } from './load.js';
import { KVCache, LlamaModel, type BlockWeights, type ModelWeights } from './model.js';
import { nextTurn } from './next-turn.js';
import { addWindowNll, type ScoreScratch } from './score.js';
import { modelPerplexityLimit } from './perplexity-limit.js';
import { ModelRunnerAdapter } from './runner.js';

/** Options of {@link BlockLazyRunner.open}. */
export interface BlockLazyRunnerOptions {
  /** Storage of dense weights, as `loadModel`'s {@link LoadOptions.dtype} (default `'auto'`). */
  dtype?: 'auto' | 'f32' | 'f16';
  /** Worker pool for the batch products (as `loadModel`'s). Default: none. */
  pool?: Pool;
  /** Checked while opening (`E_ABORTED`). */
  signal?: AbortSignal;
  /** Called after a block's source weights are read (`'load'`) and after they are dropped (`'release'`). */
  onBlock?: (e: { block: number; event: 'load' | 'release' }) => void;
  /**
   * A view of the opened weights through which every tensor is read: e.g. calibrate's `verifyingTensorStore`, which
   * checks each tensor's sha256 as it is read. Default: the weights as opened.
   */
  wrapStore?: (store: TensorStore) => TensorStore;
}

/** A linear of a block whose weights are not held: shaped, but running or reading it is an error. */
class ReleasedLinear implements Linear {
  readonly weightBytes = 0;
  constructor(
    readonly name: string,
    readonly outFeatures: number,
    readonly inFeatures: number,
  ) {}
  forward(): Float32Array {
    throw new CalderaError('E_MISSING', `layer '${this.name}': its block's weights are not loaded`);
  }
}

/**
 * A calibrate `ModelRunner` over a model directory that holds the token embedding and at most one transformer block
 * of source weights at a time, so that compressing a model needs one block in memory, not the whole model.
 *
 * The drivers of `@caldera/calibrate` (`compressModel`, `accumulateHessians`) call {@link enterBlock} before they use a
 * block and {@link leaveBlock} when they are done with it: entering reads the block's weights from the safetensors
 * (exactly as `loadModel` holds them: `readBlockWeights`), leaving drops them — dense layers and any compressed
 * replacement alike (the driver's results hold the replacements). Entering a block releases the one held before, so
 * at most one is ever held; `weight`, `runBlock` and `replaceLinear` on a block that is not held are `E_MISSING`.
 * `linears` needs no weights (the shapes come from the headers). Outputs are bit for bit those of
 * `new ModelRunnerAdapter((await loadModel(dir)).model)` on the same blocks.
 *
 * {@link perplexity} scores a text as `perplexity(model)` of `@caldera/runtime-node` does, with the same numbers,
 * streaming the windows through one block at a time (the LM head is read for the final step only). Call
 * {@link close} when done (the weight files stay open until then).
 */
export class BlockLazyRunner {
  readonly config: ModelConfig;
  /** The source's layout (headers only). */
  readonly layout: ModelLayout;
  private readonly store: TensorStore;
  private readonly dtype: 'auto' | 'f32' | 'f16';
  private readonly pool: Pool | undefined;
  private readonly onBlock: BlockLazyRunnerOptions['onBlock'];
  /** The model's blocks: the held one's weights, the others `ReleasedLinear` placeholders. */
  private readonly blocks: BlockWeights[];
  private readonly model: LlamaModel;
  private readonly adapter: ModelRunnerAdapter;
  /** The LM head when it is the embedding (tied: held anyway), else null (read for perplexity's last step). */
  private readonly tiedHead: Linear | null;
  private held: number | null = null;
  /** The block being read by {@link enterBlock}, and the read. */
  private reading: { block: number; done: Promise<void> } | null = null;
  private closed = false;
  /** A {@link BlockLazyRunner.perplexity} is under way (one at a time: each releases the blocks the other runs). */
  private scoring = false;

  private constructor(
    layout: ModelLayout,
    store: TensorStore,
    embed: HeldFloat,
    options: BlockLazyRunnerOptions,
  ) {
    this.layout = layout;
    this.config = layout.config;
    this.store = store;
    this.dtype = options.dtype ?? 'auto';
    this.pool = options.pool;
    this.onBlock = options.onBlock;
    this.blocks = Array.from({ length: this.config.numLayers }, (_, b) => this.releasedBlock(b));
    const { hiddenSize: d, vocabSize: V } = this.config;
    let head: Pick<ModelWeights, 'embed' | 'head'>;
    if (layout.lmHead === layout.embed) {
      // tied: the head is the embedding, built as loadModel builds it (the table held once)
      head = embeddingAndHead(embed, embed, V, d);
      this.tiedHead = head.head!;
    } else {
      // the head is not held: perplexity reads it for its last step, into a model of its own
      head = { embed, head: new ReleasedLinear('lm_head', V, d) };
      this.tiedHead = null;
    }
    this.model = new LlamaModel(
      this.config,
      { ...head, blocks: this.blocks, norm: new Float32Array(d) },
      this.pool ? { pool: this.pool } : {},
    );
    this.adapter = new ModelRunnerAdapter(this.model);
  }

  /**
   * Open the model directory `dir` (a Hugging Face Llama-family model or a Caldera checkpoint): its structure is
   * checked as `loadModel` checks it, and the token embedding read as `loadModel` holds it (values checked finite).
   * No block is read yet.
   */
  static async open(dir: string, options: BlockLazyRunnerOptions = {}): Promise<BlockLazyRunner> {
    checkPathArgument(dir, 'BlockLazyRunner.open', 'the model directory');
    options ??= {};
    checkDenseDtype(options.dtype, 'BlockLazyRunner.open');
    assertCallbacks(options, 'BlockLazyRunner.open', ['onBlock']);
    throwIfAborted(options.signal, 'loading');
    if (options.wrapStore !== undefined)
      assertFunction(options.wrapStore, 'BlockLazyRunner.open', 'options.wrapStore');
    const opened = await openModelLayout(dir, { dtype: options.dtype ?? 'auto' });
    const { layout } = opened;
    let store = opened.store;
    try {
      if (options.wrapStore) {
        const wrapped = options.wrapStore(store);
        assertTensorStore(wrapped, 'BlockLazyRunner.open', 'what options.wrapStore returned');
        store = wrapped;
      }
      throwIfAborted(options.signal, 'loading');
      const embed = await readHeld(store, layout.embed.name, options.dtype ?? 'auto');
      return new BlockLazyRunner(layout, store, embed, options);
    } catch (e) {
      await opened.store.close().catch(() => undefined);
      throw e;
    }
  }

  get numBlocks(): number {
    return this.config.numLayers;
  }

  get hiddenSize(): number {
    return this.config.hiddenSize;
  }

  /** The block whose source weights are held, or null. */
  get heldBlock(): number | null {
    return this.held;
  }

  /** The linear sublayers of block `block` (from the headers: the block need not be held). */
  linears(block: number) {
    const per = blockLinearNames(0).length;
    this.checkBlock(block);
    return blockLinearNames(block).map(({ name, input }, i) => {
      const l = this.layout.linears[block * per + i]!;
      return { name, block, input, outFeatures: l.outFeatures, inFeatures: l.inFeatures };
    });
  }

  /** Read block `block`'s source weights (releasing the block held before, if another); nothing when it is held. */
  async enterBlock(block: number, signal?: AbortSignal): Promise<void> {
    this.checkOpen();
    this.checkBlock(block);
    if (this.held === block) return;
    // a read of this block already under way (a concurrent caller): wait for it rather than read it twice
    if (this.reading?.block === block) return this.reading.done;
    if (this.held !== null) this.leaveBlock(this.held);
    throwIfAborted(signal, 'loading');
    const done = (async () => {
      const weights = await readBlockWeights(this.store, this.layout, block, this.dtype);
      // closed while reading: the weights are dropped, the caller told
      this.checkOpen();
      // another block entered while this one was read (concurrent callers): keep the one-block invariant
      if (this.held !== null) this.leaveBlock(this.held);
      this.blocks[block] = weights;
      this.held = block;
      this.onBlock?.({ block, event: 'load' });
    })();
    this.reading = { block, done };
    try {
      await done;
    } finally {
      if (this.reading?.done === done) this.reading = null;
    }
  }

  /** Drop block `block`'s weights (dense and compressed); nothing when it is not held. */
  leaveBlock(block: number): void {
    if (this.held !== block) return;
    this.blocks[block] = this.releasedBlock(block);
    this.held = null;
    this.onBlock?.({ block, event: 'release' });
  }

  /** The f32 weight of a dense layer of the held block (f16/bf16 widened exactly); `E_UNSUPPORTED` if not dense. */
  weight(name: string): Tensor<'f32'> {
    this.checkHeld(name);
    return this.adapter.weight(name);
  }

  /** Token embeddings of one window. */
  embed(tokens: Int32Array): Float32Array {
    this.checkOpen();
    return this.adapter.embed(tokens);
  }

  /** Run the held block `block` on one window (positions from 0), as `ModelRunnerAdapter.runBlock`. */
  runBlock(
    block: number,
    hidden: Float32Array,
    tokens: number,
    capture?: (input: string, x: Float32Array, rows: number) => void,
  ): Float32Array {
    this.checkHeld(block);
    return this.adapter.runBlock(block, hidden, tokens, capture);
  }

  /** The held block on several windows at once (`ModelRunnerAdapter.runWindows`). */
  runWindows(
    block: number,
    hidden: Float32Array,
    lengths: readonly number[],
    capture?: (input: string, x: Float32Array, rows: number) => void,
    options: { output?: boolean } = {},
  ): Float32Array | null {
    this.checkHeld(block);
    return this.adapter.runWindows(block, hidden, lengths, capture, options);
  }

  /** Swap a dense linear of the held block for its compressed form, until the block is left. */
  replaceLinear(
    name: string,
    replacement: { tensors: Record<string, Tensor>; meta: CalderaLayerMeta },
  ): void {
    this.checkHeld(name);
    this.adapter.replaceLinear(name, replacement);
  }

  /**
   * Perplexity of the source model on `ids`, the same number as `perplexity(model, ids, options)` with the model
   * `loadModel` gives (same windows, same arithmetic, same checks), computed block-major: every window's hidden states
   * go through block 0, then block 1, …, each block read, run and released (any block held before is released
   * first); then the final norm and LM head are read, the windows scored, and the head released. Holds the hidden
   * states of all windows (`ids.length × hiddenSize` f32s, more with overlapping windows) and one block. Yields to the
   * event loop between windows, so that `signal` (`E_ABORTED`) can be fired by a timer or a signal handler.
   *
   * Its progress counts blocks, not tokens (every window goes through a block before any goes through the next):
   * `onProgress({ done, total })` is called after each block with `done` = the blocks run so far (1 … `numBlocks`)
   * and after the scoring with `done = total`, where `total = numBlocks + 1`.
   */
  async perplexity(ids: ArrayLike<number>, options: PerplexityOptions = {}): Promise<PerplexityResult> {
    this.checkOpen();
    // a second call at once failed midway with E_MISSING (the first released the block it ran)
    if (this.scoring)
      throw new CalderaError(
        'E_VALUE',
        'BlockLazyRunner.perplexity: another perplexity of this runner is under way (one at a time)',
      );
    this.scoring = true;
    try {
      return await this.scorePerplexity(ids, options);
    } finally {
      this.scoring = false;
    }
  }

  private async scorePerplexity(
    ids: ArrayLike<number>,
    options: PerplexityOptions,
  ): Promise<PerplexityResult> {
    const cfg = this.config;
    const { context, stride } = checkPerplexityArgs(ids, options, modelPerplexityLimit(cfg));
    const signal = options?.signal ?? undefined;
    const windows = [...perplexityWindows(ids.length, context, stride)];
    const tokens = windows.map(({ start, end }) =>
      Array.from({ length: end - start }, (_, i) => ids[start + i]!),
    );
    const hidden = tokens.map((t) => this.model.embed(t));
    const total = this.numBlocks + 1;
    // the caches LlamaModel.forward would make for these windows (by length; positions always start at 0)
    const caches = new Map<number, KVCache | undefined>();
    for (let b = 0; b < this.numBlocks; b++) {
      // an abort names perplexity (not the block read it would otherwise interrupt)
      throwIfAborted(signal, 'perplexity');
      await this.enterBlock(b);
      try {
        for (let w = 0; w < hidden.length; w++) {
          await nextTurn();
          throwIfAborted(signal, 'perplexity');
          const rows = tokens[w]!.length;
          // in place: the windows' states are held once, plus the one window being run
          hidden[w] = this.model.runBlock(b, hidden[w]!, rows, this.forwardCache(caches, rows));
        }
      } finally {
        this.leaveBlock(b);
      }
      options?.onProgress?.({ done: b + 1, total });
    }
    caches.clear();
    const scorer = await this.headModel(signal);
    const scratch: ScoreScratch = {}; // one array for the logits of every window's batches
    let nll = 0;
    let count = 0;
    for (let w = 0; w < windows.length; w++) {
      await nextTurn();
      throwIfAborted(signal, 'perplexity');
      nll = addWindowNll(nll, scorer, hidden[w]!, ids, windows[w]!, scratch);
      count += windows[w]!.end - windows[w]!.from;
    }
    options?.onProgress?.({ done: total, total });
    return { tokens: count, nll: nll / count, ppl: Math.exp(nll / count) };
  }

  /** Release the held block and close the weight files (the runner is unusable after). */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.held !== null) this.leaveBlock(this.held);
    this.closed = true;
    // a block read under way finishes on the open files (and is then dropped, its caller told E_VALUE: closed)
    await this.reading?.done.catch(() => undefined);
    await this.store.close();
  }

  /**
   * A model whose `logits` are those of the `loadModel` model: the final norm and the LM head read as `loadModel`
   * reads them (same dtype rules), the blocks those of this runner (none held).
   */
  private async headModel(signal: AbortSignal | undefined): Promise<LlamaModel> {
    throwIfAborted(signal, 'perplexity');
    const { layout, store } = this;
    const { hiddenSize: d, vocabSize: V } = this.config;
    const embed = this.model.weights.embed;
    const head: Pick<ModelWeights, 'embed' | 'head' | 'lmHead'> = this.tiedHead
      ? { embed, head: this.tiedHead }
      : embeddingAndHead(embed, await readHeld(store, layout.lmHead.name, this.dtype), V, d);
    const norm = (await readFloat(store, layout.norm.name)).data;
    return new LlamaModel(
      this.config,
      { ...head, blocks: this.blocks, norm },
      this.pool ? { pool: this.pool } : {},
    );
  }

  /** The temporary cache `LlamaModel.forward` uses for a window of `rows` tokens (one per length, reused). */
  private forwardCache(caches: Map<number, KVCache | undefined>, rows: number): KVCache | undefined {
    if (!caches.has(rows)) caches.set(rows, rows > 1 ? this.model.temporaryCache(rows) : undefined);
    return caches.get(rows);
  }

  private releasedBlock(b: number): BlockWeights {
    const [q, k, v, o, gate, up, down] = this.linears(b).map(
      (l): Linear => new ReleasedLinear(l.name, l.outFeatures, l.inFeatures),
    ) as [Linear, Linear, Linear, Linear, Linear, Linear, Linear];
    const empty = new Float32Array(0);
    return { inputNorm: empty, postAttnNorm: empty, q, k, v, o, gate, up, down };
  }

  /** `E_VALUE` unless `block` is a block index of the model. */
  private checkBlock(block: number): void {
    if (!Number.isInteger(block) || block < 0 || block >= this.numBlocks)
      throw new CalderaError('E_VALUE', `block ${block} is not in [0, ${this.numBlocks})`);
  }

  private checkOpen(): void {
    if (this.closed) throw new CalderaError('E_VALUE', 'BlockLazyRunner: closed');
  }

  /** `E_MISSING` unless the block of `what` (an index or a layer name) is the held one. */
  private checkHeld(what: number | string): void {
    this.checkOpen();
    const block =
      typeof what === 'number' ? what : Number(/^model\.layers\.(\d+)\./.exec(what)?.[1] ?? Number.NaN);
    if (block !== this.held || this.held === null)
      throw new CalderaError(
        'E_MISSING',
        `block ${Number.isNaN(block) ? `of '${what}'` : block} is not loaded` +
          (this.held === null ? '' : ` (block ${this.held} is)`) +
          ': enterBlock it first',
      );
  }
}
