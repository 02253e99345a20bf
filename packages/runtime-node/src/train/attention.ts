import { zerosLike, type Vec } from './types.js';

/** Shape of one causal grouped-query attention call (one sequence). */
export interface AttentionShape {
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

/**
 * Causal softmax attention: `out[t,h] = Σ_{s≤t} softmax_s(q[t,h]·k[s,g]/√d) · v[s,g]` with `g` the KV head of
 * query head `h`. `q` is `[T, heads, d]`, `k`/`v` are `[T, kvHeads, d]`, `out` is `[T, heads, d]`.
 */
export function attentionForward(
  q: Vec,
  k: Vec,
  v: Vec,
  shape: AttentionShape,
): { out: Vec; cache: AttentionCache } {
  const { T, heads, kvHeads, headDim: d } = shape;
  const group = heads / kvHeads;
  const scale = 1 / Math.sqrt(d);
  const out = zerosLike(q, T * heads * d);
  const probs = zerosLike(q, heads * T * T);
  for (let h = 0; h < heads; h++) {
    const g = Math.floor(h / group);
    for (let t = 0; t < T; t++) {
      const qo = (t * heads + h) * d;
      const po = (h * T + t) * T;
      let mx = -Infinity;
      for (let s = 0; s <= t; s++) {
        const ko = (s * kvHeads + g) * d;
        let dot = 0;
        for (let j = 0; j < d; j++) dot += q[qo + j]! * k[ko + j]!;
        probs[po + s] = dot * scale;
        mx = Math.max(mx, dot * scale);
      }
      let sum = 0;
      for (let s = 0; s <= t; s++) {
        const e = Math.exp(probs[po + s]! - mx);
        probs[po + s] = e;
        sum += e;
      }
      for (let s = 0; s <= t; s++) {
        const p = probs[po + s]! / sum;
        probs[po + s] = p;
        const vo = (s * kvHeads + g) * d;
        for (let j = 0; j < d; j++) out[qo + j] = out[qo + j]! + p * v[vo + j]!;
      }
    }
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
  shape: AttentionShape,
): { dq: Vec; dk: Vec; dv: Vec } {
  const { T, heads, kvHeads, headDim: d } = shape;
  const group = heads / kvHeads;
  const scale = 1 / Math.sqrt(d);
  const dq = zerosLike(q, q.length);
  const dk = zerosLike(q, k.length);
  const dv = zerosLike(q, v.length);
  const dp = zerosLike(q, T);
  const { probs } = cache;
  for (let h = 0; h < heads; h++) {
    const g = Math.floor(h / group);
    for (let t = 0; t < T; t++) {
      const qo = (t * heads + h) * d;
      const po = (h * T + t) * T;
      let rowDot = 0;
      for (let s = 0; s <= t; s++) {
        const vo = (s * kvHeads + g) * d;
        const p = probs[po + s]!;
        let acc = 0;
        for (let j = 0; j < d; j++) {
          acc += dOut[qo + j]! * v[vo + j]!;
          dv[vo + j] = dv[vo + j]! + p * dOut[qo + j]!;
        }
        dp[s] = acc;
        rowDot += acc * p;
      }
      for (let s = 0; s <= t; s++) {
        const ds = probs[po + s]! * (dp[s]! - rowDot) * scale;
        const ko = (s * kvHeads + g) * d;
        for (let j = 0; j < d; j++) {
          dq[qo + j] = dq[qo + j]! + ds * k[ko + j]!;
          dk[ko + j] = dk[ko + j]! + ds * q[qo + j]!;
        }
      }
    }
  }
  return { dq, dk, dv };
}
