import { ropeAttentionFactor, ropeInvFreq, type Tensor } from '@caldera/core';
import type { ModelConfig } from '../config.js';

/**
 * Straightforward f64 reference forward written from the Llama definition (independent of LlamaModel), for tests:
 * HF tensor names in `raw`, logits of every position. `rope` selects the q/k pair layout. Qwen3 (transformers'
 * Qwen3Attention): each head's query and key RMS-normed with `self_attn.q_norm`/`k_norm` before RoPE. With a
 * `ropeScaling`, the rotate-half layout takes core's scaled frequencies and attention factor (`ropeInvFreq`,
 * `ropeAttentionFactor`, checked against transformers' formulas in @caldera/core) instead of `θ^(−2i/hd)`.
 */
export function referenceLogits(
  cfg: ModelConfig,
  raw: Record<string, Tensor<'f32'>>,
  tokens: number[],
  rope: 'rotate-half' | 'interleaved' = 'rotate-half',
): number[][] {
  const { hiddenSize: d, numHeads: H, numKvHeads: KV, headDim: hd, vocabSize: V } = cfg;
  const W = (n: string) => raw[n]!;
  const mv = (w: Tensor<'f32'>, x: number[]) =>
    Array.from({ length: w.shape[0]! }, (_, i) =>
      x.reduce((s, xj, j) => s + xj * w.data[i * w.shape[1]! + j]!, 0),
    );
  const norm = (x: number[], w: Float32Array) => {
    const r = 1 / Math.sqrt(x.reduce((s, v) => s + v * v, 0) / x.length + cfg.rmsNormEps);
    return x.map((v, i) => v * r * w[i]!);
  };
  const scaled = cfg.ropeScaling ? { inv: ropeInvFreq(cfg), factor: ropeAttentionFactor(cfg) } : null;
  const ropeVec = (v: number[], pos: number) => {
    const out = v.slice();
    if (rope === 'interleaved') {
      // Meta / llama2.c: pairs (2i, 2i+1) rotate at frequency θ^(−2i/hd)
      for (let i = 0; i < hd / 2; i++) {
        const a = pos / cfg.ropeTheta ** ((2 * i) / hd);
        out[2 * i] = v[2 * i]! * Math.cos(a) - v[2 * i + 1]! * Math.sin(a);
        out[2 * i + 1] = v[2 * i + 1]! * Math.cos(a) + v[2 * i]! * Math.sin(a);
      }
      return out;
    }
    for (let i = 0; i < hd / 2; i++) {
      const a = scaled ? pos * scaled.inv[i]! : pos / cfg.ropeTheta ** ((2 * i) / hd);
      const [c, s] = [Math.cos(a) * (scaled?.factor ?? 1), Math.sin(a) * (scaled?.factor ?? 1)];
      out[i] = v[i]! * c - v[i + hd / 2]! * s;
      out[i + hd / 2] = v[i + hd / 2]! * c + v[i]! * s;
    }
    return out;
  };
  let xs = tokens.map((t) => Array.from(W('model.embed_tokens.weight').data.subarray(t * d, t * d + d)));
  for (let b = 0; b < cfg.numLayers; b++) {
    const p = `model.layers.${b}`;
    // SmolLM3: the blocks listed in nopeLayers rotate nothing
    const rotate = cfg.nopeLayers?.includes(b) ? (v: number[]) => v : ropeVec;
    const hs = xs.map((x) => norm(x, W(`${p}.input_layernorm.weight`).data));
    const qwen3 = cfg.architecture === 'Qwen3ForCausalLM';
    const headNorm = (v: number[], which: 'q' | 'k') =>
      qwen3 ? norm(v, W(`${p}.self_attn.${which}_norm.weight`).data) : v;
    const qs = hs.map((h, pos) =>
      Array.from({ length: H }, (_, hh) =>
        rotate(headNorm(mv(W(`${p}.self_attn.q_proj.weight`), h).slice(hh * hd, hh * hd + hd), 'q'), pos),
      ),
    );
    const ks = hs.map((h, pos) =>
      Array.from({ length: KV }, (_, hh) =>
        rotate(headNorm(mv(W(`${p}.self_attn.k_proj.weight`), h).slice(hh * hd, hh * hd + hd), 'k'), pos),
      ),
    );
    const vs = hs.map((h) =>
      Array.from({ length: KV }, (_, hh) =>
        mv(W(`${p}.self_attn.v_proj.weight`), h).slice(hh * hd, hh * hd + hd),
      ),
    );
    xs = xs.map((x, t) => {
      const att: number[] = [];
      for (let hh = 0; hh < H; hh++) {
        const kv = Math.floor(hh / (H / KV));
        const sc = Array.from(
          { length: t + 1 },
          (_, u) => qs[t]![hh]!.reduce((s, q, i) => s + q * ks[u]![kv]![i]!, 0) / Math.sqrt(hd),
        );
        const mx = Math.max(...sc);
        const e = sc.map((s) => Math.exp(s - mx));
        const z = e.reduce((a, c) => a + c, 0);
        for (let i = 0; i < hd; i++) att.push(e.reduce((s, ei, u) => s + (ei / z) * vs[u]![kv]![i]!, 0));
      }
      const x1 = x.map((v, i) => v + mv(W(`${p}.self_attn.o_proj.weight`), att)[i]!);
      const h2 = norm(x1, W(`${p}.post_attention_layernorm.weight`).data);
      const g = mv(W(`${p}.mlp.gate_proj.weight`), h2);
      const u = mv(W(`${p}.mlp.up_proj.weight`), h2);
      const a = g.map((gi, i) => (gi / (1 + Math.exp(-gi))) * u[i]!);
      const dn = mv(W(`${p}.mlp.down_proj.weight`), a);
      return x1.map((v, i) => v + dn[i]!);
    });
  }
  return xs.map((x) =>
    mv(
      W(raw['lm_head.weight'] ? 'lm_head.weight' : 'model.embed_tokens.weight'),
      norm(x, W('model.norm.weight').data),
    ).slice(0, V),
  );
}
