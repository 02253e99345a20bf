import { CalderaError } from '@caldera/core';
import { align16, checkHeapBase, embeddedModule, KERNEL_BASE } from './wasm-module.js';
import { ATTENTION_WASM_BASE64 } from '../generated/attention-wasm.js';

type Attend = (
  q: number,
  K: number,
  V: number,
  out: number,
  scores: number,
  rows: number,
  pos0: number,
  H: number,
  KV: number,
  hd: number,
  scale: number,
) => void;

/** Query rows per kernel call (longer prompts go through in chunks). */
const CHUNK_ROWS = 16;

/** Shape of the attention a cache serves. */
export interface AttentionShape {
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
}

/**
 * A KV cache's keys and values for every layer, resident in one WebAssembly memory, with the SIMD attention kernel of
 * asm/attention.ts reading them in place (only the query rows and the result cross the boundary). `k[layer]` /
 * `v[layer]` are views `[capacity, kvHeads·headDim]` into that memory. {@link AttentionKernel.create} returns null
 * without WebAssembly SIMD or when the cache does not fit in one memory (4 GiB); the cache then uses plain arrays
 * and the model its TypeScript loops.
 */
export class AttentionKernel {
  private constructor(
    readonly shape: AttentionShape,
    readonly capacity: number,
    readonly k: Float32Array[],
    readonly v: Float32Array[],
    private readonly run: Attend,
    private readonly qView: Float32Array,
    private readonly outView: Float32Array,
    private readonly at: { k: number[]; v: number[]; q: number; out: number; scores: number },
  ) {}

  /** True when the kernel's module compiles here (WebAssembly SIMD). */
  static available(): boolean {
    return embeddedModule(ATTENTION_WASM_BASE64) !== null;
  }

  static create(shape: AttentionShape, capacity: number): AttentionKernel | null {
    const mod = embeddedModule(ATTENTION_WASM_BASE64);
    if (!mod) return null;
    const { layers, heads, kvHeads, headDim } = shape;
    const kw = kvHeads * headDim;
    const qw = heads * headDim;
    // the module's static data (Mathf.exp's tables) sits in the first page
    const base = KERNEL_BASE;
    const layerBytes = align16(capacity * kw * 4);
    const kAt = Array.from({ length: layers }, (_, b) => base + b * layerBytes);
    const vAt = kAt.map((a) => a + layers * layerBytes);
    const q = base + 2 * layers * layerBytes;
    const out = q + align16(CHUNK_ROWS * qw * 4);
    const scores = out + align16(CHUNK_ROWS * qw * 4);
    // the scores of up to `capacity` positions, then one head's partial sum of weighted values
    const bytes = scores + align16((capacity + headDim) * 4);
    const pages = Math.ceil(bytes / 65536);
    if (pages > 65536) return null;
    let memory: WebAssembly.Memory;
    let run: Attend;
    let exports: WebAssembly.Exports;
    try {
      memory = new WebAssembly.Memory({ initial: pages, maximum: pages });
      exports = new WebAssembly.Instance(mod, { env: { memory } }).exports;
      run = exports.attend as Attend;
    } catch {
      return null;
    }
    checkHeapBase(exports, 'attention kernel');
    const view = (a: number, n: number) => new Float32Array(memory.buffer, a, n);
    return new AttentionKernel(
      shape,
      capacity,
      kAt.map((a) => view(a, capacity * kw)),
      vAt.map((a) => view(a, capacity * kw)),
      run,
      view(q, CHUNK_ROWS * qw),
      view(out, CHUNK_ROWS * qw),
      { k: kAt, v: vAt, q, out, scores },
    );
  }

  /**
   * Causal attention of `rows` query rows (`q` `[rows, heads·headDim]`, RoPE applied) at positions pos0 + r over
   * layer `layer`'s cached keys and values (positions 0 … pos0 + rows − 1 already written): `[rows, heads·headDim]`.
   */
  attend(layer: number, q: Float32Array, rows: number, pos0: number): Float32Array {
    const { heads, kvHeads, headDim, layers } = this.shape;
    if (pos0 + rows > this.capacity || layer < 0 || layer >= layers || q.length < rows * heads * headDim)
      throw new CalderaError(
        'E_SHAPE',
        `attention: layer ${layer} of ${layers}, positions up to ${pos0 + rows} of ${this.capacity}, q of ${q.length}`,
      );
    const qw = heads * headDim;
    const out = new Float32Array(rows * qw);
    const scale = 1 / Math.sqrt(headDim);
    for (let r0 = 0; r0 < rows; r0 += CHUNK_ROWS) {
      const c = Math.min(CHUNK_ROWS, rows - r0);
      this.qView.set(q.subarray(r0 * qw, (r0 + c) * qw));
      const { at } = this;
      this.run(
        at.q,
        at.k[layer]!,
        at.v[layer]!,
        at.out,
        at.scores,
        c,
        pos0 + r0,
        heads,
        kvHeads,
        headDim,
        scale,
      );
      out.set(this.outView.subarray(0, c * qw), r0 * qw);
    }
    return out;
  }
}
