import { describe, expect, it } from 'vitest';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { f32ArrayToF16, fromF16Bits, Rng, tensor, writeSafetensors, type Tensor } from '@caldera/core';
import { createPool } from '@caldera/linalg';
import { applyDecomposition, caldera, randomDecomposition } from '@caldera/lowrank';
import { parseModelConfig, type ModelConfig } from './config.js';
import { CalderaLinear, DenseF16Linear, DenseLinear } from './linear.js';
import { KVCache, LlamaModel, type BlockWeights } from './model.js';
import { loadModel } from './load.js';
import { randomModel as randomModelOf } from './testing/random-model.js';
import { referenceLogits } from './testing/reference.js';
import { heldBytes } from './testing/held-bytes.js';
import type { MemoryPlan } from './memory-plan.js';

const hf = {
  architectures: ['LlamaForCausalLM'],
  hidden_size: 32,
  intermediate_size: 48,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 40,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: true,
};
const cfg: ModelConfig = parseModelConfig(hf);

function rand(rng: Rng, shape: number[], std = 0.2): Tensor<'f32'> {
  return tensor('f32', shape, rng.fillNormal(new Float32Array(shape.reduce((a, b) => a * b, 1)), 0, std));
}

function randomModel(seed: number): { model: LlamaModel; raw: Record<string, Tensor<'f32'>> } {
  const rng = new Rng(seed);
  const { hiddenSize: d, intermediateSize: I, vocabSize: V, numLayers: L } = cfg;
  const raw: Record<string, Tensor<'f32'>> = {
    'model.embed_tokens.weight': rand(rng, [V, d], 1),
    'model.norm.weight': rand(rng, [d], 0.1),
  };
  raw['model.norm.weight']!.data.forEach((v, i, a) => (a[i] = 1 + v));
  const blocks: BlockWeights[] = [];
  for (let b = 0; b < L; b++) {
    const p = `model.layers.${b}`;
    const w = (n: string, shape: number[]) => (raw[`${p}.${n}.weight`] = rand(rng, shape));
    const norm = (n: string) => {
      const t = rand(rng, [d], 0.1);
      t.data.forEach((v, i, a) => (a[i] = 1 + v));
      return (raw[`${p}.${n}.weight`] = t).data;
    };
    blocks.push({
      inputNorm: norm('input_layernorm'),
      postAttnNorm: norm('post_attention_layernorm'),
      q: new DenseLinear(w('self_attn.q_proj', [32, d])),
      k: new DenseLinear(w('self_attn.k_proj', [16, d])),
      v: new DenseLinear(w('self_attn.v_proj', [16, d])),
      o: new DenseLinear(w('self_attn.o_proj', [d, 32])),
      gate: new DenseLinear(w('mlp.gate_proj', [I, d])),
      up: new DenseLinear(w('mlp.up_proj', [I, d])),
      down: new DenseLinear(w('mlp.down_proj', [d, I])),
    });
  }
  const embed = raw['model.embed_tokens.weight']!;
  return {
    model: new LlamaModel(cfg, { embed, blocks, norm: raw['model.norm.weight']!.data, lmHead: embed }),
    raw,
  };
}

describe('LlamaModel', () => {
  const { model, raw } = randomModel(1);
  const tokens = [3, 17, 5, 39, 0, 22, 8];

  it('dense logits equal a plain-loop reference forward within 1e-4 relative', () => {
    const got = model.forward(tokens);
    const ref = referenceLogits(cfg, raw, tokens);
    const V = cfg.vocabSize;
    let maxRef = 0;
    ref.forEach((r) => r.forEach((v) => (maxRef = Math.max(maxRef, Math.abs(v)))));
    ref.forEach((r, t) =>
      r.forEach((v, j) => expect(Math.abs(got[t * V + j]! - v)).toBeLessThan(1e-4 * maxRef)),
    );
  });

  it("weights need an LM head (layer or f32 weight) and an embedding of the config's shape", () => {
    const { embed, blocks, norm } = model.weights;
    expect(() => new LlamaModel(cfg, { embed, blocks, norm })).toThrow(
      /neither an LM head layer \(head\) nor its weight \(lmHead\)/,
    );
    const wrong = tensor('f32', [cfg.vocabSize - 1, cfg.hiddenSize]);
    expect(() => new LlamaModel(cfg, { embed: wrong, blocks, norm, lmHead: embed as Tensor<'f32'> })).toThrow(
      /embedding has shape \[39, 32\], config implies \[40, 32\]/,
    );
    // an f16 table with an f16 head layer and no f32 weight: lookups widen exactly
    const bits = f32ArrayToF16(embed.data as Float32Array);
    const head = new DenseF16Linear(bits, cfg.vocabSize, cfg.hiddenSize);
    const half = new LlamaModel(cfg, {
      embed: tensor('f16', [cfg.vocabSize, cfg.hiddenSize], head.bits),
      blocks,
      norm,
      head,
    });
    const rows = half.embed([4, 0, 39]);
    for (const [r, id] of [4, 0, 39].entries())
      for (let j = 0; j < cfg.hiddenSize; j++)
        expect(rows[r * cfg.hiddenSize + j]).toBe(fromF16Bits(bits[id * cfg.hiddenSize + j]!));
  });

  it('setLinear refuses a layer of another shape, naming the layer and both shapes; runBlock a block it does not have', () => {
    // before: a wrong swap was accepted and forward failed later with an E_SHAPE naming no layer; runBlock(9, …) on a
    // 2-block model was a TypeError (reading 'inputNorm')
    const m = randomModel(2).model;
    const up = 'model.layers.0.mlp.up_proj';
    const down = m.linear('model.layers.0.mlp.down_proj');
    expect(() => m.setLinear(up, down)).toThrow(
      /^E_SHAPE: setLinear: layer 'model\.layers\.0\.mlp\.up_proj' is \[32, 48\] \(out, in\), the model needs \[48, 32\]$/,
    );
    expect(() => m.setLinear(up, null as never)).toThrow(
      /^E_VALUE: setLinear: layer '.*up_proj' must be a Linear/,
    );
    expect(() => m.setLinear('model.layers.7.mlp.up_proj', down)).toThrow(/^E_MISSING: /);
    expect(m.linear(up)).not.toBe(down); // nothing replaced
    const same = m.linear('model.layers.1.mlp.up_proj');
    m.setLinear(up, same); // the right shape is accepted
    expect(m.linear(up)).toBe(same);
    const x = new Float32Array(cfg.hiddenSize);
    for (const b of [9, 2, -1, 0.5, NaN])
      expect(() => m.runBlock(b, x, 1)).toThrow(
        new RegExp(`^E_VALUE: runBlock: block ${b} is not a block of the model \\(0…1\\)$`),
      );
    expect(m.runBlock(1, x, 1)).toHaveLength(cfg.hiddenSize);
  });

  it('runWindows equals runBlock window by window, bit for bit (dense and CALDERA layers); without output it skips down_proj', () => {
    const m = randomModel(2).model;
    // CALDERA layers take the batch path (≥ 20 rows) for each window and for the group, and at rank 8 their products
    // reach linalg's WebAssembly kernels (≥ 4096 multiply-adds) for each window: the same sums (at rank 4 the
    // smallest window's products of 21 × 32 × 4 went through the TypeScript kernel, summed otherwise)
    const rng = new Rng(6);
    m.setLinear('model.layers.0.self_attn.q_proj', new CalderaLinear(randomDecomposition(32, 32, 8, rng)));
    m.setLinear('model.layers.1.mlp.down_proj', new CalderaLinear(randomDecomposition(32, 48, 8, rng)));
    const lengths = [24, 30, 21];
    const rows = lengths.reduce((a, n) => a + n, 0);
    const d = cfg.hiddenSize;
    const x = new Rng(4).fillNormal(new Float32Array(rows * d), 0, 1);
    for (const b of [0, 1]) {
      const name = `model.layers.${b}.mlp.down_proj`;
      const down = m.linear(name);
      let downCalls = 0;
      // the real layer, its calls counted
      m.setLinear(name, {
        inFeatures: down.inFeatures,
        outFeatures: down.outFeatures,
        weightBytes: down.weightBytes,
        forward: (...a: Parameters<typeof down.forward>) => (downCalls++, down.forward(...a)),
      });
      // window by window: outputs and each key's captured rows, one window after another
      const want = new Float32Array(rows * d);
      const wantCaptures = new Map<string, number[]>();
      for (let w = 0, r0 = 0; w < lengths.length; r0 += lengths[w++]!) {
        const y = m.runBlock(b, x.subarray(r0 * d, (r0 + lengths[w]!) * d), lengths[w]!, undefined, (k, v) =>
          wantCaptures.set(k, [...(wantCaptures.get(k) ?? []), ...v]),
        );
        want.set(y, r0 * d);
      }
      expect(downCalls).toBe(3);
      const captures = new Map<string, number[]>();
      const got = m.runWindows(b, x, lengths, (k, v, r) => {
        expect(r).toBe(rows);
        captures.set(k, [...v]);
      });
      expect(downCalls).toBe(4); // once for all windows
      expect(got).toEqual(want);
      expect(captures).toEqual(wantCaptures);
      const inputsOnly = new Map<string, number[]>();
      expect(m.runWindows(b, x, lengths, (k, v) => inputsOnly.set(k, [...v]), { output: false })).toBeNull();
      expect(downCalls).toBe(4);
      expect([...inputsOnly.keys()]).toEqual(['attn', 'o', 'mlp', 'down']);
      expect(inputsOnly).toEqual(wantCaptures);
    }
    expect(() => m.runWindows(2, x, lengths)).toThrow(
      /^E_VALUE: runWindows: block 2 is not a block of the model/,
    );
    expect(() => m.runWindows(0, x, lengths, undefined, null as never)).toThrow(
      /^E_VALUE: runWindows: options must be an object such as \{ output: false \}, got null/,
    );
    expect(() => m.runWindows(0, x, lengths, undefined, { output: 'no' as never })).toThrow(
      /^E_VALUE: runWindows: output must be true or false, got 'no'/,
    );
    for (const bad of [[], [24, 0], [2.5], 'abc', null])
      expect(() => m.runWindows(0, x, bad as never)).toThrow(
        /^E_VALUE: runWindows: lengths must be a non-empty array of positive integers, got /,
      );
    expect(() => m.runWindows(0, x, [24, 30])).toThrow(
      /^E_SHAPE: runWindows: x has 2400 values, the windows' 54 rows of 32 need 1728$/,
    );
  });

  it('KVCache checks its arguments up front (NaN failed at the first forward, -1 with a RangeError)', () => {
    for (const capacity of [NaN, undefined, -1, 0, 2.5, '8', 2 ** 60])
      expect(() => new KVCache(cfg, capacity as never), String(capacity)).toThrow(
        /^E_VALUE: KVCache: capacity must be a positive integer/,
      );
    expect(() => new KVCache(null as never, 8)).toThrow(/^E_VALUE: KVCache: config must be a ModelConfig/);
    expect(new KVCache(cfg, 8, null as never).capacity).toBe(8);
  });

  it('KV-cache decode (prefill 4, then one token at a time) equals the full recompute', () => {
    const full = model.forward(tokens);
    const cache = new KVCache(cfg, 16);
    const V = cfg.vocabSize;
    const pre = model.forward(tokens.slice(0, 4), cache);
    const rows = [...Array.from({ length: 4 }, (_, t) => pre.subarray(t * V, t * V + V))];
    for (let t = 4; t < tokens.length; t++) rows.push(model.forward([tokens[t]!], cache));
    rows.forEach((r, t) => r.forEach((v, j) => expect(Math.abs(v - full[t * V + j]!)).toBeLessThan(1e-5)));
  });

  it("positions past a sliding window are E_VALUE (full attention is the model's only within it), with a cache or without", () => {
    // it computed full-attention logits there (a reviewer measured relative error 1.26 against windowed attention)
    const mistral = parseModelConfig({ ...hf, architectures: ['MistralForCausalLM'], sliding_window: 6 });
    const m = randomModelOf(mistral, 5).model;
    const ids = [1, 2, 3, 4, 5, 6, 7];
    const message =
      "positions 0…6 exceed the model's sliding window of 6 tokens: this runtime attends to every earlier " +
      'position, which is sliding-window attention only within the window';
    expect(() => m.forward(ids)).toThrow(`E_VALUE: ${message}`);
    const cache = new KVCache(mistral, 16);
    const within = m.forward(ids.slice(0, 6), cache);
    expect(within).toHaveLength(6 * mistral.vocabSize);
    expect(() => m.forward([7], cache)).toThrow(
      /^E_VALUE: positions 6…6 exceed the model's sliding window of 6/,
    );
    expect(cache.length).toBe(6); // refused before any block ran
  });

  it('positions past max positions are E_VALUE, with a cache or without (as generate, perplexity and runtime-webgpu)', () => {
    // it computed logits at positions the model never saw, RoPE extrapolated, and a KVCache larger than them was taken
    const short = parseModelConfig({ ...hf, max_position_embeddings: 5 });
    const m = randomModelOf(short, 5).model;
    expect(m.forward([1, 2, 3, 4, 5])).toHaveLength(5 * short.vocabSize);
    expect(() => m.forward([1, 2, 3, 4, 5, 6])).toThrow(
      "E_VALUE: positions 0…5 exceed the model's max positions (5)",
    );
    const cache = new KVCache(short, 16);
    m.forward([1, 2, 3, 4], cache);
    m.forward([5], cache);
    expect(() => m.forward([6], cache)).toThrow(
      /^E_VALUE: positions 5…5 exceed the model's max positions \(5\)$/,
    );
    expect(cache.length).toBe(5); // refused before any block ran
  });

  it('forward with { last: true } gives the last row of the full logits', () => {
    const full = model.forward(tokens);
    const V = cfg.vocabSize;
    const last = model.forward(tokens, undefined, { last: true });
    expect(last.length).toBe(V);
    // the same computation for that row (the head's matrix–vector path for 1 row vs gemm for 7): 1e-5 is ample
    last.forEach((v, j) => expect(Math.abs(v - full[(tokens.length - 1) * V + j]!)).toBeLessThan(1e-5));
  });

  it('cached decode with TypeScript attention equals cached decode with the SIMD attention kernel', () => {
    const V = cfg.vocabSize;
    const run = (cache: KVCache) => {
      const out: Float32Array[] = [model.forward(tokens.slice(0, 4), cache).slice(3 * V)];
      for (let t = 4; t < tokens.length; t++) out.push(model.forward([tokens[t]!], cache));
      return out;
    };
    const plain = new KVCache(cfg, tokens.length, { kernel: false });
    const simd = new KVCache(cfg, tokens.length);
    expect(plain.kernel).toBeNull();
    expect(simd.kernel).not.toBeNull();
    const a = run(plain);
    const b = run(simd);
    // f64-accumulated vs f32 attention through every layer, logits of size ~10: 1e-4 absolute is ample
    a.forEach((r, t) => r.forEach((v, j) => expect(Math.abs(v - b[t]![j]!)).toBeLessThan(1e-4)));
  });

  it('a block without a cache (TypeScript attention) equals the block over a fresh cache (SIMD attention kernel)', () => {
    const x = model.embed(tokens);
    const cache = new KVCache(cfg, tokens.length);
    expect(cache.kernel).not.toBeNull(); // WebAssembly SIMD runs on Node 20
    for (let b = 0; b < cfg.numLayers; b++) {
      const a = model.runBlock(b, x, tokens.length);
      const k = model.runBlock(b, x, tokens.length, cache);
      // same attention in f32 (kernel) vs f64-accumulated TypeScript; hidden states of size ~1: 1e-5 is ample
      a.forEach((v, i) => expect(Math.abs(v - k[i]!)).toBeLessThan(1e-5));
    }
  });

  it('a CALDERA layer equals Decomposition.apply (odd shapes, padding)', () => {
    const rng = new Rng(4);
    const w = rand(rng, [40, 56], 1);
    const d = caldera(w, null, { rank: 8, outerIters: 2, lplrIters: 2 });
    const x = rng.fillNormal(new Float32Array(3 * 56));
    const a = new CalderaLinear(d).forward(x, 3);
    const b = applyDecomposition(d, x, 3);
    // both evaluate the same sums in f32 in different orders: 1e-4 relative to the output scale
    const scale = Math.max(...Array.from(b, Math.abs));
    for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(1e-4 * scale);
  });

  it('a worker pool changes no bit of the logits (f32, f16 and CALDERA layers; prompts through the batch paths)', () => {
    // layers with more than 64 rows, so that gemm's pool really splits them: gate/up 200 × 64, head 300 × 64
    const big = parseModelConfig({ ...hf, hidden_size: 64, intermediate_size: 200, vocab_size: 300 });
    const { model: dense } = randomModelOf(big, 5);
    const rng = new Rng(6);
    const blocks = dense.weights.blocks.map((b) => ({
      ...b,
      gate: new CalderaLinear(randomDecomposition(200, 64, 8, rng)),
      up: new DenseF16Linear(f32ArrayToF16(rng.fillNormal(new Float32Array(200 * 64), 0, 0.2)), 200, 64),
      down: new CalderaLinear(randomDecomposition(64, 200, 4, rng)),
    }));
    const weights = { ...dense.weights, blocks };
    const pool = createPool({ threads: 2 });
    try {
      expect(pool.threads).toBe(2);
      const prompt = Array.from({ length: 40 }, (_, i) => (i * 37) % 300); // ≥ 20 rows: the CALDERA batch path
      const alone = new LlamaModel(big, weights).forward(prompt);
      const pooled = new LlamaModel(big, weights, { pool }).forward(prompt);
      expect(alone.every(Number.isFinite)).toBe(true);
      expect(pooled.findIndex((v, i) => v !== alone[i])).toBe(-1);
    } finally {
      pool.dispose();
    }
  });

  it('loads a Hugging Face directory and rejects missing tensors and NaNs with CalderaError', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-rt-'));
    await writeFile(join(dir, 'config.json'), JSON.stringify(hf));
    await writeSafetensors(join(dir, 'model.safetensors'), raw);
    const loaded = await loadModel(dir);
    const a = loaded.model.forward(tokens);
    const b = model.forward(tokens);
    for (let i = 0; i < a.length; i++) expect(a[i]).toBeCloseTo(b[i]!, 5);
    const broken = { ...raw };
    delete broken['model.layers.1.mlp.up_proj.weight'];
    await writeSafetensors(join(dir, 'model.safetensors'), broken);
    await expect(loadModel(dir)).rejects.toThrow(/E_MISSING.*up_proj/);
    const nan = { ...raw, 'model.norm.weight': tensor('f32', [32], new Float32Array(32).fill(NaN)) };
    await writeSafetensors(join(dir, 'model.safetensors'), nan);
    await expect(loadModel(dir)).rejects.toThrow(/E_VALUE.*non-finite/);
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...hf, architectures: ['GPT2LMHeadModel'] }));
    await expect(loadModel(dir)).rejects.toThrow(/E_UNSUPPORTED/);
  });
});

describe('Qwen3 (per-head query and key norms before RoPE)', () => {
  // head_dim 16 is not hidden_size / heads (8), as in Qwen3-0.6B (128 against 64); tied head as its small models
  const qwen3 = parseModelConfig({
    ...hf,
    architectures: ['Qwen3ForCausalLM'],
    head_dim: 16,
    rms_norm_eps: 1e-6,
  });
  const { model, raw } = randomModelOf(qwen3, 7);
  const tokens = [3, 17, 5, 39, 0, 22, 8];
  const V = qwen3.vocabSize;
  const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
    let m = 0;
    for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
    return m;
  };

  it('logits equal the plain-loop reference within 1e-4 relative, and differ from the model without the norms', () => {
    const got = model.forward(tokens);
    const ref = referenceLogits(qwen3, raw, tokens).flat();
    const scale = Math.max(...ref.map(Math.abs));
    // f32 products and norms against an f64 reference: 1e-4 of the largest logit, as the Llama test above
    expect(maxAbsDiff(got, ref)).toBeLessThan(1e-4 * scale);
    // the norms matter: the same weights read as Qwen2's layout (no q/k norms) give other logits
    const blocks = model.weights.blocks.map(({ qNorm: _q, kNorm: _k, ...rest }) => rest);
    const qwen2 = { ...qwen3, architecture: 'Qwen2ForCausalLM' as const, attentionBias: false };
    const without = new LlamaModel(qwen2, { ...model.weights, blocks });
    expect(maxAbsDiff(without.forward(tokens), got)).toBeGreaterThan(1e-2 * scale);
  });

  it('KV-cache decode equals the full recompute (keys are cached normed and rotated)', () => {
    const full = model.forward(tokens);
    const cache = new KVCache(qwen3, 16);
    const pre = model.forward(tokens.slice(0, 3), cache);
    const rows = [pre];
    for (let t = 3; t < tokens.length; t++) rows.push(model.forward([tokens[t]!], cache));
    const stepwise = new Float32Array(rows.reduce((n, r) => n + r.length, 0));
    rows.reduce((o, r) => (stepwise.set(r, o), o + r.length), 0);
    expect(stepwise.length).toBe(tokens.length * V);
    expect(maxAbsDiff(stepwise, full)).toBeLessThan(1e-5);
  });

  it('a block without its norms, with norms of another length, or norms on a model without them, is refused', () => {
    const w = model.weights;
    const blocks = (f: (b: BlockWeights) => BlockWeights) => ({ ...w, blocks: w.blocks.map(f) });
    const { kNorm: _k, ...noK } = w.blocks[0]!;
    expect(() => new LlamaModel(qwen3, { ...w, blocks: [noK, w.blocks[1]!] }).forward([1])).toThrow(
      "E_MISSING: block 0 lacks kNorm: Qwen3ForCausalLM normalizes each head's query and key (self_attn.q_norm, self_attn.k_norm)",
    );
    const short = blocks((b) => ({ ...b, qNorm: new Float32Array(8).fill(1) }));
    expect(() => new LlamaModel(qwen3, short).forward([1])).toThrow(
      'E_SHAPE: block 0: qNorm has 8 values, head_dim is 16',
    );
    const llama = { ...qwen3, architecture: 'LlamaForCausalLM' as const };
    expect(() => new LlamaModel(llama, w).forward([1])).toThrow(
      'E_VALUE: block 0 has query/key norm weights (qNorm, kNorm), which LlamaForCausalLM does not apply',
    );
  });

  it('loads from a Hugging Face directory (q_norm/k_norm tensors required, of head_dim values)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-qwen3-'));
    const config = { ...hf, architectures: ['Qwen3ForCausalLM'], head_dim: 16, rms_norm_eps: 1e-6 };
    await writeFile(join(dir, 'config.json'), JSON.stringify(config));
    await writeSafetensors(join(dir, 'model.safetensors'), raw);
    const plans: MemoryPlan[] = [];
    const loaded = await loadModel(dir, { onPlan: (p) => plans.push(p) });
    expect(loaded.model.weights.blocks[1]!.kNorm).toEqual(
      raw['model.layers.1.self_attn.k_norm.weight']!.data,
    );
    // the plan counts the query and key norms (2 layers × 2 × 16 f32 values) with the other norms, to the byte
    const head = (loaded.model as unknown as { head: unknown }).head;
    expect(heldBytes(loaded.model.weights, head)).toBe(plans[0]!.weightBytes);
    expect(plans[0]!.parts.norms).toBe(((2 * 2 + 1) * 32 + 2 * 2 * 16) * 4);
    expect(maxAbsDiff(loaded.model.forward(tokens), model.forward(tokens))).toBe(0);
    const broken = { ...raw };
    delete broken['model.layers.1.self_attn.q_norm.weight'];
    await writeSafetensors(join(dir, 'model.safetensors'), broken);
    await expect(loadModel(dir)).rejects.toThrow(/E_MISSING.*model\.layers\.1\.self_attn\.q_norm\.weight/);
    const wrong = {
      ...raw,
      'model.layers.0.self_attn.k_norm.weight': tensor('f32', [8], new Float32Array(8)),
    };
    await writeSafetensors(join(dir, 'model.safetensors'), wrong);
    await expect(loadModel(dir)).rejects.toThrow(/E_SHAPE.*model\.layers\.0\.self_attn\.k_norm\.weight/);
  });
});

describe('YaRN RoPE scaling (Qwen and DeepSeek long-context configs)', () => {
  // original context 512 with head_dim 16 and θ 10000: YaRN's ramp runs over pairs 0 … 4 of 8, so pairs are kept,
  // blended and divided
  const yarn = { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 512 };
  const llama = parseModelConfig({ ...hf, head_dim: 16, max_position_embeddings: 512, rope_scaling: yarn });
  const tokens = [3, 17, 5, 39, 0, 22, 8];
  const V = llama.vocabSize;
  const maxAbs = (a: ArrayLike<number>) => Math.max(...Array.from(a, Math.abs));
  const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>) =>
    Math.max(...Array.from(a, (v, i) => Math.abs(v - b[i]!)));

  it('logits equal the plain-loop reference with the scaled frequencies and attention factor, and differ from plain RoPE', () => {
    for (const cfg of [
      llama,
      parseModelConfig({ ...hf, architectures: ['Qwen3ForCausalLM'], head_dim: 16, rope_scaling: yarn }),
    ]) {
      const { model, raw } = randomModelOf(cfg, 11);
      const got = model.forward(tokens);
      const ref = referenceLogits(cfg, raw, tokens).flat();
      // f32 products against an f64 reference: 1e-4 of the largest logit, as the tests above
      expect(maxAbsDiff(got, ref)).toBeLessThan(1e-4 * maxAbs(ref));
      const plain = new LlamaModel({ ...cfg, ropeScaling: null }, model.weights);
      expect(maxAbsDiff(plain.forward(tokens), got)).toBeGreaterThan(1e-3 * maxAbs(ref));
    }
  });

  it('the attention factor a on cos and sin is the same model as q_proj and k_proj times a (RoPE is linear)', () => {
    const a = 1.5;
    const withFactor = parseModelConfig({
      ...hf,
      head_dim: 16,
      rope_scaling: { ...yarn, attention_factor: a },
    });
    const withoutFactor = parseModelConfig({
      ...hf,
      head_dim: 16,
      rope_scaling: { ...yarn, attention_factor: 1 },
    });
    const { model } = randomModelOf(withFactor, 12);
    const times = (l: BlockWeights['q']) => {
      const w = (l as DenseLinear).weight;
      return new DenseLinear(
        tensor(
          'f32',
          w.shape,
          w.data.map((v) => v * a),
        ),
      );
    };
    const blocks = model.weights.blocks.map((b) => ({ ...b, q: times(b.q), k: times(b.k) }));
    const moved = new LlamaModel(withoutFactor, { ...model.weights, blocks });
    const got = model.forward(tokens);
    // the same products in another order (a·x rounded in the weights instead of in cos/sin): f32 rounding only
    expect(maxAbsDiff(moved.forward(tokens), got)).toBeLessThan(1e-5 * maxAbs(got));
    // and the factor does something: a² = 2.25 on every attention logit
    const ignored = new LlamaModel(withoutFactor, model.weights);
    expect(maxAbsDiff(ignored.forward(tokens), got)).toBeGreaterThan(1e-3 * maxAbs(got));
  });

  it('KV-cache decode equals the full recompute, and runs past max_position_embeddings up to factor × original', () => {
    expect(llama.maxPositions).toBe(2048);
    const { model } = randomModelOf(llama, 13);
    // 600 positions: past the config's 512, within YaRN's 4 × 512
    const long = Array.from({ length: 600 }, (_, i) => (i * 7) % V);
    const full = model.forward(long, undefined, { last: true });
    const cache = new KVCache(llama, 600);
    model.forward(long.slice(0, 597), cache);
    let last: Float32Array = new Float32Array(0);
    for (let t = 597; t < long.length; t++) last = model.forward([long[t]!], cache);
    expect(maxAbsDiff(last, full)).toBeLessThan(1e-5 * maxAbs(full));
  });
});

describe('SmolLM3 (blocks without RoPE)', () => {
  // 2 blocks with a NoPE block every second: block 1 attends to its keys unrotated (SmolLM3-3B: blocks 3, 7, …, 35)
  const smol = parseModelConfig({ ...hf, architectures: ['SmolLM3ForCausalLM'], no_rope_layer_interval: 2 });
  const tokens = [3, 17, 5, 39, 0, 22, 8];
  const maxAbs = (a: ArrayLike<number>) => Math.max(...Array.from(a, Math.abs));
  const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>) =>
    Math.max(...Array.from(a, (v, i) => Math.abs(v - b[i]!)));

  it('logits equal the plain-loop reference that skips RoPE in block 1, and differ from the model rotating every block', () => {
    expect(smol.nopeLayers).toEqual([1]);
    const { model, raw } = randomModelOf(smol, 21);
    const got = model.forward(tokens);
    const ref = referenceLogits(smol, raw, tokens).flat();
    // f32 products against an f64 reference: 1e-4 of the largest logit, as the tests above
    expect(maxAbsDiff(got, ref)).toBeLessThan(1e-4 * maxAbs(ref));
    const rotating = new LlamaModel(
      { ...smol, architecture: 'LlamaForCausalLM', nopeLayers: [] },
      model.weights,
    );
    expect(maxAbsDiff(rotating.forward(tokens), got)).toBeGreaterThan(1e-3 * maxAbs(ref));
  });

  it('KV-cache decode equals the full recompute (the NoPE block caches its keys unrotated)', () => {
    const { model } = randomModelOf(smol, 22);
    const full = model.forward(tokens);
    const cache = new KVCache(smol, 16);
    const rows = [model.forward(tokens.slice(0, 3), cache)];
    for (let t = 3; t < tokens.length; t++) rows.push(model.forward([tokens[t]!], cache));
    const stepwise = Float32Array.from(rows.flatMap((r) => Array.from(r)));
    expect(maxAbsDiff(stepwise, full)).toBeLessThan(1e-5 * maxAbs(full));
  });
});
