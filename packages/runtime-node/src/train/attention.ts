import type { Tensor } from '@caldera/core';
import { gemm } from '@caldera/linalg';
import { zerosLike, type Vec } from './types.js';

/** Shape of one causal grouped-query attention call (one sequence). */
export interface CausalAttentionShape {
  /** Sequence length. */
  T: number;
  /** Query heads. */
  heads: number;
  /** Key/value heads; `heads` must be a multiple. Query head `h` reads KV head `h / (heads/kvHeads)`. */
  kvHeads: number;
  headDim: number;
}

/** Activations {@link attentionForward} keeps: softmax probabilities `[heads, T, T]` (zero above the diagonal). */
export interface AttentionCache {
  probs: Vec;
}

type M = Tensor<'f32'> | Tensor<'f64'>;

/** A `[rows, cols]` view of `data` with row stride `stride` starting at `offset` (no copy). */
function view(data: Vec, rows: number, cols: number, stride: number, offset: number): M {
  const dtype = data instanceof Float64Array ? 'f64' : 'f32';
  return { dtype, shape: [rows, cols], strides: [stride, 1], offset, data } as M;
}

function mm(a: M, b: M, transA: boolean, transB: boolean, alpha = 1): Vec {
  // operands share the training dtype (f32 in training, f64 in gradient checks)
  return gemm(a as Tensor<'f32'>, b as Tensor<'f32'>, { transA, transB, alpha, checkFinite: false })
    .data as Vec;
}

/** `dst[t·stride + offset + j] (+)= src[t·cols + j]` for a `[rows, cols]` block. */
function scatter(
  dst: Vec,
  src: Vec,
  rows: number,
  cols: number,
  stride: number,
  offset: number,
  add: boolean,
) {
  for (let t = 0; t < rows; t++) {
    const o = t * stride + offset;
    const so = t * cols;
    if (add) for (let j = 0; j < cols; j++) dst[o + j] = dst[o + j]! + src[so + j]!;
    else for (let j = 0; j < cols; j++) dst[o + j] = src[so + j]!;
  }
}

/**
 * Causal softmax attention: `out[t,h] = Σ_{s≤t} softmax_s(q[t,h]·k[s,g]/√d) · v[s,g]` with `g` the KV head of
 * query head `h`. `q` is `[T, heads, d]`, `k`/`v` are `[T, kvHeads, d]`, `out` is `[T, heads, d]`. The products
 * per head run on `@caldera/linalg`'s gemm over strided views (the scores of the masked upper triangle are computed
 * and discarded: twice the flops of a causal loop, but at SIMD speed).
 */
export function attentionForward(
  q: Vec,
  k: Vec,
  v: Vec,
  shape: CausalAttentionShape,
): { out: Vec; cache: AttentionCache } {
  const { T, heads, kvHeads, headDim: d } = shape;
  const group = heads / kvHeads;
  const scale = 1 / Math.sqrt(d);
  const out = zerosLike(q, T * heads * d);
  const probs = zerosLike(q, heads * T * T);
  for (let h = 0; h < heads; h++) {
    const g = Math.floor(h / group);
    const sc = mm(view(q, T, d, heads * d, h * d), view(k, T, d, kvHeads * d, g * d), false, true, scale);
    const po = h * T * T;
    for (let t = 0; t < T; t++) {
      const r = t * T;
      let mx = -Infinity;
      for (let s = 0; s <= t; s++) mx = Math.max(mx, sc[r + s]!);
      let sum = 0;
      for (let s = 0; s <= t; s++) {
        const e = Math.exp(sc[r + s]! - mx);
        probs[po + r + s] = e;
        sum += e;
      }
      for (let s = 0; s <= t; s++) probs[po + r + s] = probs[po + r + s]! / sum;
    }
    const oh = mm(view(probs, T, T, T, po), view(v, T, d, kvHeads * d, g * d), false, false);
    scatter(out, oh, T, d, heads * d, h * d, false);
  }
  return { out, cache: { probs } };
}

/**
 * Backward of {@link attentionForward}: `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`,
 * `dQ = dS·K/√d`, `dK = dSᵀ·Q/√d`, with KV gradients summed over the query heads of each group.
 */
export function attentionBackward(
  dOut: Vec,
  q: Vec,
  k: Vec,
  v: Vec,
  cache: AttentionCache,
  shape: CausalAttentionShape,
): { dq: Vec; dk: Vec; dv: Vec } {
  const { T, heads, kvHeads, headDim: d } = shape;
  const group = heads / kvHeads;
  const scale = 1 / Math.sqrt(d);
  const dq = zerosLike(q, q.length);
  const dk = zerosLike(q, k.length);
  const dv = zerosLike(q, v.length);
  const { probs } = cache;
  for (let h = 0; h < heads; h++) {
    const g = Math.floor(h / group);
    const po = h * T * T;
    const P = view(probs, T, T, T, po);
    const dO = view(dOut, T, d, heads * d, h * d);
    const Vg = view(v, T, d, kvHeads * d, g * d);
    scatter(dv, mm(P, dO, true, false), T, d, kvHeads * d, g * d, true);
    const dp = mm(dO, Vg, false, true); // T × T
    for (let t = 0; t < T; t++) {
      const r = t * T;
      let rowDot = 0;
      for (let s = 0; s <= t; s++) rowDot += dp[r + s]! * probs[po + r + s]!;
      for (let s = 0; s <= t; s++) dp[r + s] = probs[po + r + s]! * (dp[r + s]! - rowDot) * scale;
      for (let s = t + 1; s < T; s++) dp[r + s] = 0;
    }
    const dS = view(dp, T, T, T, 0);
    scatter(dq, mm(dS, view(k, T, d, kvHeads * d, g * d), false, false), T, d, heads * d, h * d, false);
    scatter(dk, mm(dS, view(q, T, d, heads * d, h * d), true, false), T, d, kvHeads * d, g * d, true);
  }
  return { dq, dk, dv };
}
