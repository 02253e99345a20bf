import { CalderaError, nodeFs, tensor } from '@caldera/core';
import { parseModelConfig, type ModelConfig } from './config.js';
import { DenseLinear } from './linear.js';
import { LlamaModel, type BlockWeights, type LlamaModelOptions } from './model.js';
import { checkPathArgument } from './json-file.js';
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

/**
 * Load a llama2.c checkpoint (`model.bin`: a 7-int32 header `dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 * vocab_size (negative = separate classifier), seq_len`, then f32 tensors). q/k rows are permuted to the
 * rotate-half RoPE layout this runtime uses; RMSNorm ε = 1e-5 and θ = 10000 as in llama2.c. A `path` that is not a
 * string (null, undefined) is `E_VALUE`; null `options` count as none.
 */
export async function loadLlama2c(
  path: string,
  options: LlamaModelOptions = {},
): Promise<{ model: LlamaModel; config: ModelConfig }> {
  checkPathArgument(path, 'loadLlama2c', 'the checkpoint path');
  options ??= {}; // from JavaScript: null options are none
  const bytes = await readBytes(path);
  if (bytes.length < 28) throw new CalderaError('E_FORMAT', `${path}: too short for a llama2.c header`);
  const hv = new DataView(bytes.buffer, bytes.byteOffset, 28);
  const [dim, hidden, layers, heads, kvHeads, vocabSigned, seqLen] = Array.from({ length: 7 }, (_, i) =>
    hv.getInt32(4 * i, true),
  ) as [number, number, number, number, number, number, number];
  const vocab = Math.abs(vocabSigned);
  const header = { dim, hidden, layers, heads, kvHeads, vocab, seqLen };
  if (Object.values(header).some((v) => !(v > 0)) || dim % heads !== 0 || heads % kvHeads !== 0)
    throw new CalderaError('E_FORMAT', `${path}: invalid llama2.c header ${JSON.stringify(header)}`);
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
      tie_word_embeddings: vocabSigned > 0,
      bos_token_id: 1,
      eos_token_id: 2,
    },
    path,
  );
  const hd = dim / heads;
  const kvDim = kvHeads * hd;
  const sizes = {
    embed: vocab * dim,
    perLayer: dim * 2 + dim * dim * 2 + dim * kvDim * 2 + dim * hidden * 3,
    final: dim,
    freq: seqLen * hd, // freq_cis_real + freq_cis_imag, unused
    cls: vocabSigned > 0 ? 0 : vocab * dim,
  };
  const floats = sizes.embed + layers * sizes.perLayer + sizes.final + sizes.freq + sizes.cls;
  if (bytes.length !== 28 + 4 * floats)
    throw new CalderaError(
      'E_FORMAT',
      `${path}: ${bytes.length} bytes, expected ${28 + 4 * floats} for header ${JSON.stringify(header)}`,
    );
  const data = new Float32Array(floats);
  new Uint8Array(data.buffer).set(bytes.subarray(28));
  for (let i = 0; i < data.length; i++)
    if (!Number.isFinite(data[i]!))
      throw new CalderaError('E_VALUE', `${path}: non-finite weight at float index ${i}`);
  let off = 0;
  const take = (n: number) => data.subarray(off, (off += n));
  const embed = tensor('f32', [vocab, dim], take(sizes.embed).slice());
  const per = (n: number) => Array.from({ length: layers }, () => take(n).slice());
  const attnNorm = per(dim);
  const wq = per(dim * dim);
  const wk = per(kvDim * dim);
  const wv = per(kvDim * dim);
  const wo = per(dim * dim);
  const ffnNorm = per(dim);
  const w1 = per(hidden * dim);
  const w2 = per(dim * hidden);
  const w3 = per(hidden * dim);
  const norm = take(dim).slice();
  take(sizes.freq);
  const lmHead = vocabSigned > 0 ? embed : tensor('f32', [vocab, dim], take(sizes.cls).slice());
  const lin = (w: Float32Array, m: number, n: number) => new DenseLinear(tensor('f32', [m, n], w));
  const blocks: BlockWeights[] = Array.from({ length: layers }, (_, l) => ({
    inputNorm: attnNorm[l]!,
    postAttnNorm: ffnNorm[l]!,
    q: lin(permuteRotary(wq[l]!, heads, hd, dim), dim, dim),
    k: lin(permuteRotary(wk[l]!, kvHeads, hd, dim), kvDim, dim),
    v: lin(wv[l]!, kvDim, dim),
    o: lin(wo[l]!, dim, dim),
    gate: lin(w1[l]!, hidden, dim),
    up: lin(w3[l]!, hidden, dim),
    down: lin(w2[l]!, dim, hidden),
  }));
  return { model: new LlamaModel(config, { embed, blocks, norm, lmHead }, options), config };
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
  }

  /** Parse `tokenizer.bin` bytes for a vocabulary of `vocabSize` tokens. */
  static fromBytes(bytes: Uint8Array, vocabSize: number, file = 'tokenizer.bin'): Llama2cTokenizer {
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
    for (;;) {
      let best = -Infinity;
      let at = -1;
      let bestId = -1;
      for (let i = 0; i + 1 < out.length; i++) {
        const id = this.ids.get(this.vocab[out[i]!]! + this.vocab[out[i + 1]!]!);
        if (id !== undefined && this.scores[id]! > best) {
          best = this.scores[id]!;
          at = i;
          bestId = id;
        }
      }
      if (at < 0) break;
      out.splice(at, 2, bestId);
    }
    return options.bos === true ? [this.bosTokenId, ...out] : out;
  }

  /** Text of `ids` (byte tokens reassembled as UTF-8; the dummy-prefix space after BOS dropped). */
  decode(ids: ArrayLike<number>): string {
    const bytes: number[] = [];
    const enc = new TextEncoder();
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (id === this.bosTokenId || id === this.eosTokenId) continue;
      let s = this.vocab[id];
      if (s === undefined) throw new CalderaError('E_VALUE', `token id ${id} out of range`);
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
