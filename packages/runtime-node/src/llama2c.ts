import {
  assertBooleanOptions,
  assertCallbacks,
  assertFinite,
  CalderaError,
  describeValue,
  f32ArrayToF16,
  linearShape,
  openFileSource,
  tensor,
  throwIfAborted,
  checkDenseDtype,
  checkTokenArray,
  checkTokenIds,
  shownValue,
} from '@caldera/core';
import { nodeFs } from './node-builtins.js';
import { blockLinearNames, parseModelConfig, type ModelConfig } from './config.js';
import { planMemory, type MemoryPlan } from './memory-plan.js';
import {
  DenseF16Linear,
  DenseLinear,
  footprintBytes,
  type DenseLinearOptions,
  type Linear,
} from './linear.js';
import { KernelArenas } from './kernels/kernel-arenas.js';
import { LlamaModel, type BlockWeights, type LlamaModelOptions } from './model.js';
import { checkPathArgument } from './json-file.js';
import type { DecodePool } from './kernels/decode-pool.js';
import { headSplits } from './kernels/row-split.js';
import type { TextTokenizer } from './tokenizer.js';

async function readBytes(path: string): Promise<Uint8Array> {
  try {
    return new Uint8Array(await (await nodeFs()).readFile(path));
  } catch (e) {
    throw new CalderaError('E_IO', `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Reorder the rows of a q/k projection from Meta's interleaved RoPE layout (pairs `(2i, 2i+1)` of each head) to the
 * Hugging Face rotate-half layout (`(i, i + hd/2)`): new row `h·hd + j·hd/2 + i` ← old row `h·hd + 2i + j`.
 */
export function permuteRotary(w: Float32Array, heads: number, headDim: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  const half = headDim / 2;
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < half; i++)
      for (let j = 0; j < 2; j++) {
        const src = (h * headDim + 2 * i + j) * cols;
        out.set(w.subarray(src, src + cols), (h * headDim + j * half + i) * cols);
      }
  return out;
}

/** The llama2.c header's seven fields (`vocab` made positive; `sharedClassifier`: its sign). */
export interface Llama2cHeader {
  dim: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  seqLen: number;
  /** A positive `vocab_size` in the file: the classifier is the embedding (no separate weights). */
  sharedClassifier: boolean;
}

/** What {@link readLlama2cLayout} finds in a llama2.c checkpoint, from its 28-byte header and its size. */
export interface Llama2cLayout {
  path: string;
  header: Llama2cHeader;
  config: ModelConfig;
  /** Bytes of the file (checked: exactly the header's tensors, all f32). */
  fileBytes: number;
}

/** f32 counts of the file's sections, in file order. */
function sectionFloats(h: Llama2cHeader) {
  const hd = h.dim / h.heads;
  const kvDim = h.kvHeads * hd;
  return {
    embed: h.vocab * h.dim,
    perLayer: h.dim * 2 + h.dim * h.dim * 2 + h.dim * kvDim * 2 + h.dim * h.hidden * 3,
    final: h.dim,
    freq: h.seqLen * hd, // freq_cis_real + freq_cis_imag, unused
    cls: h.sharedClassifier ? 0 : h.vocab * h.dim,
  };
}

/** Parse and check the header, and check the file's size against it (`E_FORMAT` naming `path`). */
function parseLlama2cLayout(path: string, head: Uint8Array, fileBytes: number): Llama2cLayout {
  if (fileBytes < 28 || head.length < 28)
    throw new CalderaError('E_FORMAT', `${path}: too short for a llama2.c header`);
  const hv = new DataView(head.buffer, head.byteOffset, 28);
  const [dim, hidden, layers, heads, kvHeads, vocabSigned, seqLen] = Array.from({ length: 7 }, (_, i) =>
    hv.getInt32(4 * i, true),
  ) as [number, number, number, number, number, number, number];
  const vocab = Math.abs(vocabSigned);
  const fields = { dim, hidden, layers, heads, kvHeads, vocab, seqLen };
  if (Object.values(fields).some((v) => !(v > 0)) || dim % heads !== 0 || heads % kvHeads !== 0)
    throw new CalderaError('E_FORMAT', `${path}: invalid llama2.c header ${JSON.stringify(fields)}`);
  const header: Llama2cHeader = { ...fields, sharedClassifier: vocabSigned > 0 };
  const sizes = sectionFloats(header);
  const floats = sizes.embed + layers * sizes.perLayer + sizes.final + sizes.freq + sizes.cls;
  if (fileBytes !== 28 + 4 * floats)
    throw new CalderaError(
      'E_FORMAT',
      `${path}: ${fileBytes} bytes, expected ${28 + 4 * floats} for header ${JSON.stringify(fields)}`,
    );
  const config = parseModelConfig(
    {
      architectures: ['LlamaForCausalLM'],
      hidden_size: dim,
      intermediate_size: hidden,
      num_hidden_layers: layers,
      num_attention_heads: heads,
      num_key_value_heads: kvHeads,
      vocab_size: vocab,
      max_position_embeddings: seqLen,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      tie_word_embeddings: header.sharedClassifier,
      bos_token_id: 1,
      eos_token_id: 2,
    },
    path,
  );
  return { path, header, config, fileBytes };
}

/**
 * The structure of a llama2.c checkpoint from its 28-byte header and its size alone (no weights are read): the
 * header's fields, the model config they imply, and the file size, checked to be exactly the header's tensors.
 * `E_FORMAT` for a bad header or size, `E_MISSING`/`E_IO` when the file cannot be opened, `E_VALUE` for a `path` that
 * is not a string.
 */
export async function readLlama2cLayout(path: string): Promise<Llama2cLayout> {
  checkPathArgument(path, 'readLlama2cLayout', 'the checkpoint path');
  const source = await openFileSource(path);
  try {
    const head = await source.read(0, Math.min(28, source.size));
    return parseLlama2cLayout(path, head, source.size);
  } finally {
    await source.close();
  }
}

/**
 * The linear layers of a llama2.c checkpoint as {@link loadLlama2c} builds them, in its order (the file stores each
 * kind of tensor for all layers together: every wq, then every wk, …), with their footprints under `dtype`.
 */
function llama2cLinears(config: ModelConfig, dtype: 'auto' | 'f32' | 'f16') {
  const half = dtype === 'f16';
  const kinds = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'down_proj', 'up_proj'];
  return kinds.flatMap((kind) =>
    Array.from({ length: config.numLayers }, (_, b) => {
      const name = blockLinearNames(b).find((l) => l.name.endsWith(`.${kind}`))!.name;
      const [m, n] = linearShape(config, kind);
      const footprint = half ? DenseF16Linear.footprint(m, n, false) : DenseLinear.footprint(m, n, false);
      return { name, kind: half ? ('f16' as const) : ('f32' as const), footprint };
    }),
  );
}

/**
 * The memory plan of a llama2.c checkpoint loaded with `dtype` ({@link Llama2cLoadOptions.dtype}), from its config
 * alone: linears and classifier f32 (or f16 with `'f16'`), the embedding and norms f32, the linears' kernels in one
 * model's arenas (`kernelArenas` false: each in a memory of its own, {@link Llama2cLoadOptions.kernelArenas}). A shared
 * classifier is the embedding's table when f32 (held once), an f16 copy beside the f32 embedding with `'f16'`.
 */
export function planLlama2cMemory(
  config: ModelConfig,
  dtype: 'auto' | 'f32' | 'f16' = 'auto',
  kernelArenas = true,
): MemoryPlan {
  const half = dtype === 'f16';
  const linears = llama2cLinears(config, dtype);
  const bytes = new Map(linears.map((l) => [l.name, footprintBytes(l.footprint, kernelArenas)]));
  const layers = Array.from({ length: config.numLayers }, (_, b) =>
    blockLinearNames(b).map(({ name }) => ({
      name,
      kind: half ? ('f16' as const) : ('f32' as const),
      bytes: bytes.get(name)!,
    })),
  ).flat();
  return planMemory({
    config,
    embed: 'f32',
    head: { dtype: half ? 'f16' : 'f32', tied: !half && config.tieWordEmbeddings },
    layers,
    regions: kernelArenas ? linears.flatMap((l) => l.footprint.regions) : [],
  });
}

/** Options of {@link loadLlama2c}. */
export interface Llama2cLoadOptions extends LlamaModelOptions {
  /**
   * Storage of the linear weights (LM head included): `'auto'` or `'f32'` (default: as stored, f32), or `'f16'` (rounded
   * to f16: half the memory; a value beyond f16's range is `E_VALUE`). The embedding and norms stay f32.
   */
  dtype?: 'auto' | 'f32' | 'f16';
  /**
   * Called once with the memory plan ({@link planLlama2cMemory}) after the header is checked, before any weight is
   * read, as {@link LoadOptions.onPlan}: an error it throws stops loading and is rethrown, an abort of `signal` it
   * makes stops loading with `E_ABORTED`.
   */
  onPlan?: (plan: MemoryPlan) => void;
  /** Threads for single-token decode, as {@link LoadOptions.decodePool} (its layers are dense). Default: none. */
  decodePool?: DecodePool;
  /** Abort between tensors (`E_ABORTED`, the signal's reason as its cause). */
  signal?: AbortSignal;
  /** The linears' kernels in one model's arenas (default true), as {@link LoadOptions.kernelArenas}. */
  kernelArenas?: boolean;
  /**
   * Called after each section of the file is read: `done` of `total` bytes (the file stores each kind of tensor for
   * all layers together, so there is no per-block order to report).
   */
  onProgress?: (e: { done: number; total: number }) => void;
}

/**
 * Load a llama2.c checkpoint (`model.bin`: a 7-int32 header `dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 * vocab_size (negative = separate classifier), seq_len`, then f32 tensors). The header and the file size are checked
 * first ({@link readLlama2cLayout}), then the weights are read tensor by tensor (no copy of the whole file: files of
 * any size, beyond `readFile`'s 2 GiB too), each checked finite. q/k rows are permuted to the rotate-half RoPE layout
 * this runtime uses; RMSNorm ε = 1e-5 and θ = 10000 as in llama2.c. A `path` that is not a string (null, undefined)
 * is `E_VALUE`; null `options` count as none.
 */
export async function loadLlama2c(
  path: string,
  options: Llama2cLoadOptions = {},
): Promise<{ model: LlamaModel; config: ModelConfig }> {
  checkPathArgument(path, 'loadLlama2c', 'the checkpoint path');
  options ??= {}; // from JavaScript: null options are none
  const { signal, onProgress, onPlan, dtype = 'auto', decodePool, kernelArenas, ...modelOptions } = options;
  const inArenas = kernelArenas !== false;
  checkDenseDtype(dtype, 'loadLlama2c');
  assertCallbacks(options, 'loadLlama2c', ['onProgress', 'onPlan']);
  assertBooleanOptions(options, 'loadLlama2c', ['kernelArenas']);
  throwIfAborted(signal, 'loading');
  const source = await openFileSource(path);
  try {
    const { header, config, fileBytes } = parseLlama2cLayout(
      path,
      await source.read(0, Math.min(28, source.size)),
      source.size,
    );
    onPlan?.(planLlama2cMemory(config, dtype, inArenas));
    // an onPlan that decided against this model aborts before any weight is read
    throwIfAborted(signal, 'loading');
    // every linear's kernel in a few memories, sized by the plan (the head keeps its own)
    const arenas = inArenas
      ? new KernelArenas({
          threads: decodePool?.threads ?? 1,
          planned: llama2cLinears(config, dtype).flatMap((l) => l.footprint.regions),
        })
      : undefined;
    const linearOptions = { ...(decodePool ? { decodePool } : {}), ...(arenas ? { arenas } : {}) };
    const { dim, hidden, layers, heads, kvHeads, vocab } = header;
    const sizes = sectionFloats(header);
    const hd = dim / heads;
    const kvDim = kvHeads * hd;
    let offset = 28;
    /** The next `n` floats of the file, checked finite (the index in messages counts floats after the header). */
    const take = async (n: number): Promise<Float32Array> => {
      throwIfAborted(signal, 'loading');
      const out = new Float32Array(n);
      await source.readInto!(offset, out);
      for (let i = 0; i < n; i++)
        if (!Number.isFinite(out[i]!))
          throw new CalderaError(
            'E_VALUE',
            `${path}: non-finite weight at float index ${(offset - 28) / 4 + i}`,
          );
      offset += 4 * n;
      return out;
    };
    /** A linear layer as held under `dtype`: the f32 array itself, or its f16 rounding (the f32 array then dropped). */
    const lin = (
      w: Float32Array,
      m: number,
      n: number,
      name: string,
      options: DenseLinearOptions = linearOptions,
    ): Linear => {
      if (dtype !== 'f16') return new DenseLinear(tensor('f32', [m, n], w), null, options);
      const bits = f32ArrayToF16(w);
      assertFinite(tensor('f16', [m, n], bits), `${path}: ${name} rounded to f16`);
      return new DenseF16Linear(bits, m, n, null, 'f16', options);
    };
    /**
     * One section, the same tensor of every layer, each turned into what the model holds as soon as it is read: no
     * second copy of the model (with dtype 'f16', never the f32 model beside the f16 one).
     */
    const per = async <T>(n: number, hold: (w: Float32Array, l: number) => T): Promise<T[]> => {
      const out: T[] = [];
      for (let l = 0; l < layers; l++) out.push(hold(await take(n), l));
      onProgress?.({ done: offset, total: fileBytes });
      return out;
    };
    const asIs = (w: Float32Array) => w;
    const embedData = await take(sizes.embed);
    onProgress?.({ done: offset, total: fileBytes });
    const embed = tensor('f32', [vocab, dim], embedData);
    const attnNorm = await per(dim, asIs);
    const q = await per(dim * dim, (w, l) =>
      lin(permuteRotary(w, heads, hd, dim), dim, dim, `layer ${l} wq`),
    );
    const k = await per(kvDim * dim, (w, l) =>
      lin(permuteRotary(w, kvHeads, hd, dim), kvDim, dim, `layer ${l} wk`),
    );
    const v = await per(kvDim * dim, (w, l) => lin(w, kvDim, dim, `layer ${l} wv`));
    const o = await per(dim * dim, (w, l) => lin(w, dim, dim, `layer ${l} wo`));
    const ffnNorm = await per(dim, asIs);
    const gate = await per(hidden * dim, (w, l) => lin(w, hidden, dim, `layer ${l} w1`));
    const down = await per(dim * hidden, (w, l) => lin(w, dim, hidden, `layer ${l} w2`));
    const up = await per(hidden * dim, (w, l) => lin(w, hidden, dim, `layer ${l} w3`));
    const norm = await take(dim);
    offset += 4 * sizes.freq; // freq_cis_real, freq_cis_imag: unused (RoPE is computed)
    const lmHead = header.sharedClassifier ? embed : tensor('f32', [vocab, dim], await take(sizes.cls));
    onProgress?.({ done: fileBytes, total: fileBytes });
    const blocks: BlockWeights[] = Array.from({ length: layers }, (_, l) => ({
      inputNorm: attnNorm[l]!,
      postAttnNorm: ffnNorm[l]!,
      q: q[l]!,
      k: k[l]!,
      v: v[l]!,
      o: o[l]!,
      gate: gate[l]!,
      up: up[l]!,
      down: down[l]!,
    }));
    // an f16 head, or with a decode pool that splits it an f32 one built here (the model would build it without the
    // pool): a tied f32 head's kernel copy is then the embedding too, as the model does it
    const headPool = decodePool && headSplits(config) ? { decodePool } : null;
    const head =
      dtype === 'f16' || headPool ? lin(lmHead.data, vocab, dim, 'classifier', headPool ?? {}) : undefined;
    const sharedTable = head instanceof DenseLinear && lmHead === embed;
    const model = new LlamaModel(
      config,
      {
        embed: sharedTable ? head.weight : embed,
        blocks,
        norm,
        ...(head ? { head } : { lmHead }),
      },
      modelOptions,
    );
    return { model, config };
  } finally {
    await source.close();
  }
}

/**
 * The SentencePiece-style BPE of llama2.c's `tokenizer.bin` (`int32 max_len`, then per token `f32 score, int32 len,
 * bytes`): a dummy-prefix space, code points looked up directly or as byte tokens `<0xXX>` (ids 3 + byte), then
 * repeated merging of the adjacent pair whose concatenation is a token with the highest score.
 */
export class Llama2cTokenizer implements TextTokenizer {
  private readonly ids = new Map<string, number>();
  readonly bosTokenId = 1;
  readonly eosTokenId = 2;
  constructor(
    readonly vocab: string[],
    readonly scores: Float32Array,
  ) {
    vocab.forEach((s, i) => {
      if (!this.ids.has(s)) this.ids.set(s, i);
    });
    // bound, to be passed on as a function (`generate`'s `decode` option)
    this.encode = this.encode.bind(this);
    this.decode = this.decode.bind(this);
  }

  /**
   * Parse `tokenizer.bin` bytes for a vocabulary of `vocabSize` tokens (a positive integer, the model's: `E_VALUE`
   * otherwise, as an empty vocabulary encoded every text to byte tokens).
   */
  static fromBytes(bytes: Uint8Array, vocabSize: number, file = 'tokenizer.bin'): Llama2cTokenizer {
    if (!Number.isSafeInteger(vocabSize) || vocabSize < 3)
      throw new CalderaError(
        'E_VALUE',
        `${file}: vocabSize must be an integer ≥ 3 (BOS, EOS and the tokens after them), got ${shownValue(vocabSize)}`,
      );
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const dec = new TextDecoder('utf-8');
    const vocab: string[] = [];
    const scores = new Float32Array(vocabSize);
    let o = 4;
    for (let i = 0; i < vocabSize; i++) {
      if (o + 8 > bytes.length) throw new CalderaError('E_FORMAT', `${file}: truncated at token ${i}`);
      scores[i] = dv.getFloat32(o, true);
      const len = dv.getInt32(o + 4, true);
      o += 8;
      if (len < 0 || o + len > bytes.length)
        throw new CalderaError('E_FORMAT', `${file}: token ${i} has invalid length ${len}`);
      vocab.push(dec.decode(bytes.subarray(o, o + len)));
      o += len;
    }
    return new Llama2cTokenizer(vocab, scores);
  }

  /** Read `tokenizer.bin`. */
  static async load(path: string, vocabSize: number): Promise<Llama2cTokenizer> {
    return Llama2cTokenizer.fromBytes(await readBytes(path), vocabSize, path);
  }

  /** Token ids of `text` (with BOS first when `bos`; default false, as for every {@link TextTokenizer}). */
  encode(text: string, options: { bos?: boolean } = {}): number[] {
    if (typeof text !== 'string')
      throw new CalderaError('E_VALUE', `encode: text must be a string, got ${describeValue(text)}`);
    const out: number[] = [];
    if (text.length > 0) {
      const sp = this.ids.get(' ');
      if (sp !== undefined) out.push(sp);
    }
    const enc = new TextEncoder();
    for (const ch of text) {
      const id = this.ids.get(ch);
      if (id !== undefined) out.push(id);
      else for (const b of enc.encode(ch)) out.push(b + 3);
    }
    const merged = mergePieces(out, this.vocab, this.ids, this.scores);
    return options.bos === true ? [this.bosTokenId, ...merged] : merged;
  }

  /**
   * Text of `ids` (byte tokens reassembled as UTF-8; BOS and EOS skipped; the dummy-prefix space of the first piece,
   * or of one after BOS, dropped). `E_VALUE` for anything but an array of ids in the vocabulary.
   */
  decode(ids: ArrayLike<number>): string {
    checkTokenArray(ids, 'decode', 'ids');
    checkTokenIds(ids, this.vocab.length, 'decode');
    const bytes: number[] = [];
    const enc = new TextEncoder();
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (id === this.bosTokenId || id === this.eosTokenId) continue;
      let s = this.vocab[id]!;
      const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(s);
      if (m) {
        bytes.push(parseInt(m[1]!, 16));
        continue;
      }
      if ((i === 0 || ids[i - 1] === this.bosTokenId) && s.startsWith(' ')) s = s.slice(1);
      bytes.push(...enc.encode(s));
    }
    return new TextDecoder().decode(new Uint8Array(bytes));
  }
}

/**
 * llama2.c's merging of `pieces` (token ids, in order): while some adjacent pair concatenates to a token, merge the
 * pair whose token has the highest score, the leftmost of equal ones (run.c's loop, which rescans every pair after
 * each merge). Here a heap of the candidate pairs, keyed by score then position, with each node's version telling a
 * stale entry (a pair one of whose pieces has merged since): O(n log n) where run.c's loop is quadratic (a 20 000
 * character text took 38 s), the same merges in the same order.
 */
function mergePieces(
  pieces: number[],
  vocab: readonly string[],
  ids: ReadonlyMap<string, number>,
  scores: Float32Array,
): number[] {
  const n = pieces.length;
  if (n < 2) return pieces;
  const id = Int32Array.from(pieces);
  const next = new Int32Array(n);
  const prev = new Int32Array(n);
  const version = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
  }
  // a pair entry: its merged token's score, the left node, the merged token, both nodes' versions when pushed
  interface Pair {
    score: number;
    left: number;
    token: number;
    lv: number;
    rv: number;
  }
  const heap: Pair[] = [];
  const before = (a: Pair, b: Pair) => a.score > b.score || (a.score === b.score && a.left < b.left);
  const push = (e: Pair) => {
    let i = heap.push(e) - 1;
    while (i > 0) {
      const up = (i - 1) >> 1;
      if (!before(heap[i]!, heap[up]!)) break;
      [heap[i], heap[up]] = [heap[up]!, heap[i]!];
      i = up;
    }
  };
  const pop = (): Pair => {
    const top = heap[0]!;
    const last = heap.pop()!;
    if (heap.length > 0) {
      heap[0] = last;
      for (let i = 0; ;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < heap.length && before(heap[l]!, heap[m]!)) m = l;
        if (r < heap.length && before(heap[r]!, heap[m]!)) m = r;
        if (m === i) break;
        [heap[i], heap[m]] = [heap[m]!, heap[i]!];
        i = m;
      }
    }
    return top;
  };
  const candidate = (left: number) => {
    if (left < 0) return;
    const right = next[left]!;
    if (right < 0) return;
    const token = ids.get(vocab[id[left]!]! + vocab[id[right]!]!);
    if (token !== undefined)
      push({ score: scores[token]!, left, token, lv: version[left]!, rv: version[right]! });
  };
  for (let i = 0; i + 1 < n; i++) candidate(i);
  while (heap.length > 0) {
    const e = pop();
    const right = next[e.left]!;
    // stale: the left node merged away or changed, or its right neighbour is another node or changed
    if (id[e.left]! < 0 || right < 0 || version[e.left] !== e.lv || version[right] !== e.rv) continue;
    id[e.left] = e.token;
    version[e.left]!++;
    id[right] = -1;
    version[right]!++;
    next[e.left] = next[right]!;
    if (next[right]! >= 0) prev[next[right]!] = e.left;
    candidate(prev[e.left]!);
    candidate(e.left);
  }
  const out: number[] = [];
  for (let i = 0; i >= 0; i = next[i]!) out.push(id[i]!);
  return out;
}
