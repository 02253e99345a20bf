import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  cast,
  CalderaError,
  openSafetensors,
  openSafetensorsDir,
  Rng,
  serializeSafetensors,
  tensor,
  tokenNll,
  writeSafetensors,
  type CalderaLayerMeta,
  type Tensor,
} from '@caldera/core';
import {
  caldera,
  calderaCheckpointMeta,
  toCheckpointTensors,
  withTrainableFactors,
  type CalderaOptions,
} from '@caldera/lowrank';
import * as node from '@caldera/runtime-node';
import { generate, perplexity } from './generate.js';
import { loadModel, loadModelFromBuffer, type MemoryPlan } from './load.js';
import { WebGpuModel } from './model.js';
import { createLinearContext } from './linear.js';
import { Kernels } from './kernels/index.js';
import type { CalderaDevice } from './device.js';
import { writeRandomCalderaModel } from '../bench/random-model.js';
import { relErr } from './testing/compare.js';
import { gpuTitle, ownTestDevice, testDevice, testF16Device } from './testing/gpu.js';
import { compressLayers, randomLlamaTensors, tinyModelSource } from './testing/tiny-model.js';

const { device: dev, reason } = await testDevice();
const { device: f16dev, reason: f16reason } = await testF16Device();
const REF = fileURLToPath(new URL('../../reference-model/model/', import.meta.url));
const PROMPT = [0, 17, 250, 1033, 5];

/**
 * Compress blocks 0 and 3 of the reference model (all seven linears, rank 8, one iteration each: fast, not good), and
 * block 1 low rank only (no Q, as `--method lplr` writes it: rank 16, 4-bit factors in attention, f16 in the MLP).
 * Block 3 is made a fine-tuned checkpoint as `caldera finetune --signs` leaves it: 3 of the 8 components as a
 * perturbed f32 LoRA pair (L_ft, R_ft) and continuous sign vectors.
 */
async function compressedReference(dir: string): Promise<void> {
  const store = await openSafetensorsDir(REF);
  const tensors: Record<string, Tensor> = {};
  for (const n of store.names()) tensors[n] = await store.readTensor(n);
  await store.close();
  const layers: Record<string, CalderaLayerMeta> = {};
  for (const b of [0, 1, 3])
    for (const p of [
      'self_attn.q_proj',
      'self_attn.k_proj',
      'self_attn.v_proj',
      'self_attn.o_proj',
      'mlp.gate_proj',
      'mlp.up_proj',
      'mlp.down_proj',
    ]) {
      const name = `model.layers.${b}.${p}`;
      const w = cast(tensors[`${name}.weight`]!, 'f32');
      const lowRankOnly: CalderaOptions = {
        rank: 16,
        qBits: 0,
        ...(p.startsWith('mlp') ? { lBits: 16, rBits: 16 } : {}),
      };
      let d = caldera(w, null, {
        rank: 8,
        outerIters: 1,
        lplrIters: 1,
        seed: b,
        ...(b === 1 ? lowRankOnly : {}),
      });
      if (b === 1) expect(d.q).toBeNull();
      if (b === 3) {
        d = withTrainableFactors(d, 3);
        const rng = new Rng(b);
        for (let i = 0; i < d.ft!.l.length; i++) d.ft!.l[i]! *= 1 + 0.5 * rng.normal();
        for (let i = 0; i < d.su!.length; i++) d.su![i]! *= 1 + 0.2 * rng.normal();
        for (let i = 0; i < d.sv!.length; i++) d.sv![i]! *= 1 + 0.2 * rng.normal();
      }
      const ck = toCheckpointTensors(name, d);
      delete tensors[`${name}.weight`];
      Object.assign(tensors, ck.tensors);
      layers[name] = ck.meta;
    }
  await writeSafetensors(join(dir, 'model.safetensors'), tensors);
  await writeFile(join(dir, 'caldera.json'), JSON.stringify(calderaCheckpointMeta(layers)));
  for (const f of ['config.json', 'tokenizer.json', 'generation_config.json'])
    await copyFile(join(REF, f), join(dir, f));
}

async function collect(it: AsyncIterable<number>): Promise<number[]> {
  const out: number[] = [];
  for await (const t of it) out.push(t);
  return out;
}

/**
 * A random CALDERA model of one block whose MLP width is 1536 = 12·128 (its rotations mix K = 12 blocks: two chunks of
 * the mix, written out up to 64; hidden 64, K = 1) in a new temporary directory, whose path it returns.
 */
async function mlpK12Model(prefix: string, intermediate = 1536): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  const shape = { hidden: 64, intermediate, layers: 1, heads: 2, kvHeads: 1, vocab: 64 };
  await writeRandomCalderaModel(dir, shape, 8, { distinct: true });
  return dir;
}

/** The logits of `tokens` in one prefill pass, then of each token stepped alone after a reset. */
async function prefillAndStepLogits(model: WebGpuModel, tokens: readonly number[]): Promise<Float32Array[]> {
  const got = [await model.forward(tokens)];
  model.reset();
  for (const t of tokens) got.push(await model.step(t, 'logits'));
  return got;
}

/**
 * A {@link compressedReference} checkpoint in a temporary directory for the tests of the enclosing `describe`: made
 * before them, removed after; returns its path (set once the tests run).
 */
function compressedReferenceDir(prefix: string): () => string {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), prefix));
    await compressedReference(dir);
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });
  return () => dir;
}

describe.skipIf(!dev)(gpuTitle('WebGpuModel against runtime-node', reason), () => {
  const d = dev!;
  const cdir = compressedReferenceDir('caldera-webgpu-');

  for (const kind of [
    'dense f16 reference model',
    'compressed reference model (blocks 0 and 3 CALDERA, block 3 fine-tuned: LoRA + continuous signs; block 1 low rank only, no Q)',
  ] as const)
    it(`${kind}: logits of a prompt and 12 greedy tokens equal runtime-node's`, async () => {
      const dir = kind.startsWith('dense') ? REF : cdir();
      let plan: MemoryPlan | undefined;
      const { model, calderaMeta, linearBitsPerWeight } = await loadModel(d, dir, {
        contextLength: 64,
        onPlan: (p) => (plan = p),
        topKOnGpu: true, // off by default on CPU adapters
      });
      // the plan from tensor headers is exact for the weights
      expect(plan!.weightBytes).toBe(model.weightBytes);
      expect(Math.abs(plan!.cacheBytes - model.cacheBytes)).toBeLessThan(0.01 * model.cacheBytes);
      const cpu = (await node.loadModel(dir)).model;
      expect(calderaMeta === null).toBe(kind.startsWith('dense'));
      if (calderaMeta) expect(linearBitsPerWeight).toBeLessThan(16);
      else expect(linearBitsPerWeight).toBe(16);
      try {
        const got = await model.forward(PROMPT);
        const want = cpu.forward(PROMPT);
        // f32 on both sides, different summation orders over ≤ 768 terms and 4 blocks: ~1e-5 of the logit scale
        expect(relErr(got, want)).toBeLessThan(1e-4);
        const g = await collect(generate(model, PROMPT, { maxTokens: 12 }));
        const c = await collect(node.generate(cpu, PROMPT, { maxTokens: 12 }));
        expect(g).toHaveLength(12);
        expect(g).toEqual(c);
        // a follow-up turn extends the sequence: only its new tokens run (the cache holds the prompt and the first
        // 11 generated tokens), and it gives the tokens of a run from an empty cache
        const turn2 = [...PROMPT, ...g, 17, 99];
        expect(model.tokens).toEqual([...PROMPT, ...g.slice(0, 11)]);
        let ran = 0;
        const stepBatch = model.stepBatch.bind(model);
        model.stepBatch = ((t: number[], o: 'none') => {
          ran += t.length;
          return stepBatch(t, o);
        }) as typeof model.stepBatch;
        const reused = await collect(generate(model, turn2, { maxTokens: 6 }));
        model.stepBatch = stepBatch;
        // g[11] and 17 prefilled (the passes through stepBatch), then 99 and five generated tokens decoded (greedy:
        // decodeGreedy's passes, the sixth token read and not run)
        expect(ran).toBe(2);
        expect(model.length).toBe(turn2.length + 5);
        model.reset();
        expect(reused).toEqual(await collect(generate(model, turn2, { maxTokens: 6 })));
        expect(() => model.truncate(model.length + 1)).toThrow(CalderaError);
        // sampling uses runtime-node's sampler and Rng, from the GPU's top k (two levels for 2048 tokens; with a
        // penalty, the penalised tokens' logits read back with it) or from all the logits: same tokens for the seed
        for (const opts of [
          { maxTokens: 6, temperature: 0.8, topK: 20, topP: 0.95, seed: 3 },
          { maxTokens: 8, temperature: 1, topK: 50, repetitionPenalty: 1.3, seed: 5 },
          { maxTokens: 6, temperature: 0.8, topP: 0.9, seed: 6 },
        ])
          expect(await collect(generate(model, PROMPT, opts))).toEqual(
            await collect(node.generate(cpu, PROMPT, opts)),
          );
        // greedy with a repetition penalty reads logits back too; a stop token ends both after yielding it
        const penalised = { maxTokens: 8, repetitionPenalty: 1.5, stopTokens: [c[4]!] };
        expect(await collect(generate(model, PROMPT, penalised))).toEqual(
          await collect(node.generate(cpu, PROMPT, penalised)),
        );
        const text = [...PROMPT, ...c];
        const pg = await perplexity(model, text);
        const pc = await node.perplexity(cpu, text, { context: 64 });
        expect(pg.tokens).toBe(pc.tokens);
        expect(Math.abs(pg.ppl - pc.ppl) / pc.ppl).toBeLessThan(1e-4);
        // overlapping windows over a text longer than one: the same tokens scored with the same left context
        const long = Array.from({ length: 45 }, (_, i) => (i * 37 + 11) % 2048);
        const seenG: { done: number; total: number }[] = [];
        const seenC: { done: number; total: number }[] = [];
        const wg = await perplexity(model, long, {
          context: 16,
          stride: 7,
          onProgress: (e) => seenG.push(e),
        });
        const wc = await node.perplexity(cpu, long, {
          context: 16,
          stride: 7,
          onProgress: (e) => seenC.push(e),
        });
        expect(wg.tokens).toBe(44);
        expect(wc.tokens).toBe(44);
        // after each window, the end of the window in tokens of the text, in both runtimes
        expect(seenG).toEqual([16, 23, 30, 37, 44, 45].map((done) => ({ done, total: 45 })));
        expect(seenG).toEqual(seenC);
        // the windows matter: one 45-token window scores the same tokens with more context, a different value
        const one = await node.perplexity(cpu, long, { context: 64 });
        expect(Math.abs(one.ppl - wc.ppl) / wc.ppl).toBeGreaterThan(1e-3);
        expect(Math.abs(wg.ppl - wc.ppl) / wc.ppl).toBeLessThan(1e-4);
        // a window longer than a prefill batch (32) plus the stride: the second window runs its first batch
        // unscored (those tokens were scored by the first window)
        const longer = Array.from({ length: 46 }, (_, i) => (i * 53 + 7) % 2048);
        const sg = await perplexity(model, longer, { context: 40, stride: 6 });
        const sc = await node.perplexity(cpu, longer, { context: 40, stride: 6 });
        expect(sg.tokens).toBe(45);
        expect(sc.tokens).toBe(45);
        expect(Math.abs(sg.ppl - sc.ppl) / sc.ppl).toBeLessThan(1e-4);
        await expect(perplexity(model, long, { context: 65 })).rejects.toMatchObject({ code: 'E_VALUE' });
        // the NLLs perplexity sums, computed on the GPU, against core's tokenNll (f64) over the same pass's logits:
        // f32 exponentials (a few ulps each) summed over the 2048-token vocabulary in 256 partial sums and a tree, and the
        // difference of two logits of magnitude ≲ 20, stay within ~1e-6; 1e-5 leaves a margin
        const batch = longer.slice(0, 12);
        const targets = longer.slice(1, 13);
        model.reset();
        const all = await model.stepBatch(batch, 'all');
        model.reset();
        const nlls = await model.scoreBatch(batch, targets);
        expect(nlls).toHaveLength(12);
        const V = model.config.vocabSize;
        for (let r = 0; r < 12; r++)
          expect(Math.abs(nlls[r]! - tokenNll(all, r * V, V, targets[r]!))).toBeLessThan(1e-5);
        expect(model.tokens).toEqual(batch);
      } finally {
        model.dispose();
      }
    });

  it('a Qwen2-style f32 checkpoint (q/k/v biases, untied head, GQA 4:1, two CALDERA layers) gives runtime-node logits, in every kernel variant', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-webgpu-qwen-'));
    const hf = {
      architectures: ['Qwen2ForCausalLM'],
      hidden_size: 64,
      intermediate_size: 96,
      num_hidden_layers: 2,
      num_attention_heads: 8,
      num_key_value_heads: 2,
      vocab_size: 50,
      tie_word_embeddings: false,
      rope_theta: 1000,
    };
    const t = randomLlamaTensors(new Rng(11), {
      hidden: 64,
      kvDim: 16,
      intermediate: 96,
      vocab: 50,
      std: 0.15,
      lmHeadStd: 0.3,
      biasStd: 0.5,
    });
    // block 1's q_proj (with its bias) and down_proj compressed
    const layers = compressLayers(t, ['model.layers.1.self_attn.q_proj', 'model.layers.1.mlp.down_proj']);
    await writeSafetensors(join(dir, 'model.safetensors'), t);
    await writeFile(join(dir, 'caldera.json'), JSON.stringify(calderaCheckpointMeta(layers)));
    await writeFile(join(dir, 'config.json'), JSON.stringify(hf));
    try {
      const { model } = await loadModel(d, dir, { contextLength: 16 });
      const cpu = (await node.loadModel(dir)).model;
      const tokens = [3, 49, 0, 7, 7, 21, 33];
      expect(relErr(await model.forward(tokens), cpu.forward(tokens))).toBeLessThan(1e-4);
      // f16 storage of the same weights still tracks (f16 rounding of weights: ~1e-3 relative)
      const half = await loadModel(d, dir, { contextLength: 16, dtype: 'f16' });
      expect(relErr(await half.model.forward(tokens), cpu.forward(tokens))).toBeLessThan(2e-2);
      // the GPU kernel variants (32 lanes per row) and the global-memory rotation, in a whole model
      const gpuStyle = await loadModel(d, dir, { contextLength: 16, lanes: 32, maxLocalHadamard: 16 });
      expect(relErr(await gpuStyle.model.forward(tokens), cpu.forward(tokens))).toBeLessThan(1e-4);
      // batched prefill (batches of 3, 3, 1) gives the bits of token-by-token steps in these variants too
      const chunked = await loadModel(d, dir, {
        contextLength: 16,
        lanes: 32,
        maxLocalHadamard: 16,
        prefillChunk: 3,
      });
      const steps = new Float32Array(tokens.length * 50);
      gpuStyle.model.reset();
      for (let i = 0; i < tokens.length; i++)
        steps.set(await gpuStyle.model.step(tokens[i]!, 'logits'), i * 50);
      expect(await chunked.model.forward(tokens)).toEqual(steps);
      chunked.model.dispose();
      gpuStyle.model.dispose();
      // generation stops at the context length like runtime-node: 16 − 7 = 9 tokens
      const gen: number[] = [];
      for await (const id of generate(model, tokens, { maxTokens: 50 })) gen.push(id);
      expect(gen).toHaveLength(9);
      const cpuGen: number[] = [];
      for await (const id of node.generate(cpu, tokens, { maxTokens: 9 })) cpuGen.push(id);
      expect(gen).toEqual(cpuGen);
      model.reset();
      await model.forward(tokens);
      await expect(model.step(1, 'none')).resolves.toBeNull(); // position 7 of 16
      for (let i = 8; i < 16; i++) await model.step(1, 'none');
      await expect(model.step(1, 'none')).rejects.toMatchObject({ code: 'E_VALUE' });
      await expect(model.step(50, 'none')).rejects.toMatchObject({ code: 'E_VALUE' });
      model.dispose();
      half.model.dispose();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("a bf16 checkpoint stays 16-bit with dtype 'auto' (the dense weights in half the bytes of 'f32', as planned) and gives the logits and greedy tokens of runtime-node and of 'f32': tied head (the reference model) and untied", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-webgpu-bf16-'));
    try {
      // the reference model (f16) rounded to bf16, tied head; and a random Qwen2-style model (untied head, q/k/v
      // biases), every tensor bf16
      const store = await openSafetensorsDir(REF);
      const ref: Record<string, Tensor> = {};
      for (const n of store.names()) ref[n] = cast(await store.readTensor(n), 'bf16');
      await store.close();
      const untied = randomLlamaTensors(new Rng(12), {
        hidden: 64,
        kvDim: 16,
        intermediate: 96,
        vocab: 50,
        std: 0.15,
        lmHeadStd: 0.3,
        biasStd: 0.5,
      });
      for (const n of Object.keys(untied)) untied[n] = cast(untied[n]!, 'bf16');
      const qwen = {
        architectures: ['Qwen2ForCausalLM'],
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 8,
        num_key_value_heads: 2,
        vocab_size: 50,
        tie_word_embeddings: false,
      };
      for (const [sub, tensors, config, tokens] of [
        ['ref', ref, null, PROMPT],
        ['untied', untied, qwen, [3, 49, 0, 7, 7, 21, 33]],
      ] as const) {
        const at = join(dir, sub);
        await mkdir(at);
        await writeSafetensors(join(at, 'model.safetensors'), tensors);
        if (config) await writeFile(join(at, 'config.json'), JSON.stringify(config));
        else await copyFile(join(REF, 'config.json'), join(at, 'config.json'));
        const plans: Partial<Record<'auto' | 'f32', MemoryPlan>> = {};
        const load = (dtype: 'auto' | 'f32') =>
          loadModel(d, at, { contextLength: 32, dtype, onPlan: (p) => (plans[dtype] = p) });
        const auto = await load('auto');
        const wide = await load('f32');
        const cpu = (await node.loadModel(at)).model; // 'auto' there too: bf16 kept as bf16 bits
        try {
          // planned exactly; the dense weights (every dimension even here) take half the bytes of f32, the f32 norms
          // and biases (the same in both) apart
          expect(plans.auto!.weightBytes).toBe(auto.model.weightBytes);
          expect(plans.f32!.weightBytes).toBe(wide.model.weightBytes);
          const { hiddenSize: h, numLayers, numHeads, headDim, numKvHeads } = auto.config;
          const f32Only =
            (2 * numLayers + 1) * h * 4 +
            (config ? numLayers * (numHeads * headDim + 2 * numKvHeads * headDim) * 4 : 0);
          expect(plans.f32!.weightBytes - f32Only).toBe(2 * (plans.auto!.weightBytes - f32Only));
          expect(auto.linearBitsPerWeight).toBe(16);
          expect(wide.linearBitsPerWeight).toBe(32);
          // every dense product (q/k/v, o, gate/up, down, LM head) reads bf16; 'f32' reads f32
          const matvecs = (m: WebGpuModel) => m.launchLabels.filter((l) => l.startsWith('matvec '));
          expect(matvecs(auto.model).length).toBeGreaterThan(0);
          expect(matvecs(auto.model).every((l) => / bf16( |$)/.test(l))).toBe(true);
          expect(matvecs(wide.model).some((l) => /f16/.test(l))).toBe(false);
          // bf16 widens to f32 exactly, so the three compute with the same f32 weights and differ only in summation
          // order (GPU lanes and tree, packed pairs against single values, the CPU's SIMD): the f32 path's 1e-4 of
          // the logit scale (~1e-5 seen)
          const got = await auto.model.forward(tokens);
          const want = cpu.forward(tokens);
          const f32 = await wide.model.forward(tokens);
          expect(relErr(got, want)).toBeLessThan(1e-4);
          expect(relErr(got, f32)).toBeLessThan(1e-4);
          auto.model.reset();
          wide.model.reset();
          const g = await collect(generate(auto.model, tokens, { maxTokens: 8 }));
          expect(g).toEqual(await collect(node.generate(cpu, tokens, { maxTokens: 8 })));
          expect(g).toEqual(await collect(generate(wide.model, tokens, { maxTokens: 8 })));
        } finally {
          auto.model.dispose();
          wide.model.dispose();
        }
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("perplexity's default window is runtime-node's (128 tokens, fewer when contextLength is smaller): with default options both score the same tokens to the same perplexity", async () => {
    // the tiny model (one CALDERA layer) with 160 positions: a default of contextLength would be 160-token windows
    const tiny = await tinyModelSource();
    const parts = { ...tiny, config: { ...tiny.config, max_position_embeddings: 160 } };
    const dir = await mkdtemp(join(tmpdir(), 'caldera-webgpu-ppl-'));
    try {
      await writeFile(join(dir, 'model.safetensors'), parts.weights);
      await writeFile(join(dir, 'config.json'), JSON.stringify(parts.config));
      await writeFile(join(dir, 'caldera.json'), JSON.stringify(parts.calderaMeta));
      const cpu = (await node.loadModel(dir)).model;
      // 150 tokens: windows [0, 128) and [128, 150) by default, the first token of each unscored
      const text = Array.from({ length: 150 }, (_, i) => (i * 7 + 3) % 30);
      const pc = await node.perplexity(cpu, text);
      expect(pc.tokens).toBe(148);
      const model = (await loadModelFromBuffer(d, parts)).model; // contextLength: max_position_embeddings, 160
      try {
        expect(model.contextLength).toBe(160);
        const pg = await perplexity(model, text);
        expect(pg.tokens).toBe(pc.tokens);
        // f32 on both sides, as the logits above
        expect(Math.abs(pg.ppl - pc.ppl) / pc.ppl).toBeLessThan(1e-4);
        // not the whole text as one window (which fits the cache): that scores 149 tokens, to another perplexity
        const whole = await perplexity(model, text, { context: 150 });
        expect(whole.tokens).toBe(149);
        expect(Math.abs(whole.ppl - pg.ppl) / pg.ppl).toBeGreaterThan(1e-4);
      } finally {
        model.dispose();
      }
      // a KV cache shorter than 128 caps the default window (runtime-node, without that cap, given the same 64)
      const small = (await loadModelFromBuffer(d, parts, { contextLength: 64 })).model;
      try {
        const ps = await perplexity(small, text);
        const pc64 = await node.perplexity(cpu, text, { context: 64 });
        expect(ps.tokens).toBe(147);
        expect(pc64.tokens).toBe(147);
        expect(Math.abs(ps.ppl - pc64.ppl) / pc64.ppl).toBeLessThan(1e-4);
      } finally {
        small.dispose();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('batched prefill: logits equal token-by-token steps, across batch boundaries and after a cached prefix', async () => {
    // 1 lane per row (32 lanes and the global-memory rotation: the Qwen2-style test above; too slow on SwiftShader here)
    const opts = { lanes: 1 as const };
    // the compressed reference: dense blocks, CALDERA blocks and a fine-tuned CALDERA block
    const batched = await loadModel(d, cdir(), { contextLength: 32, prefillChunk: 4, ...opts });
    const single = await loadModel(d, cdir(), { contextLength: 32, prefillChunk: 1, ...opts });
    const m = batched.model;
    const tokens = [...PROMPT, 1500, 3, 3, 77, 2047, 640]; // 11 tokens: batches of 4, 4, 3
    const V = 2048;
    try {
      expect(m.prefillChunk).toBe(4);
      const want = new Float32Array(tokens.length * V);
      for (let t = 0; t < tokens.length; t++) want.set(await single.model.step(tokens[t]!, 'logits'), t * V);
      // every row runs the same kernel code in the same order as a one-token pass (rows only offset the
      // buffers; attention reads the cache rows written earlier in the same pass), so the bits are identical
      expect(await m.forward(tokens)).toEqual(want);
      expect(m.length).toBe(tokens.length);
      // continuing a cached sequence: 6 tokens prefilled (batches of 4 + 2), then the rest as one forward
      m.reset();
      await m.prefill(tokens.slice(0, 6));
      expect(m.length).toBe(6);
      expect(await m.forward(tokens.slice(6))).toEqual(want.subarray(6 * V));
      // a batch's last-token outputs
      m.reset();
      await m.prefill(tokens.slice(0, 7));
      expect(await m.stepBatch(tokens.slice(7), 'logits')).toEqual(want.subarray(10 * V));
      m.reset();
      const greedy = await m.stepBatch(tokens.slice(0, 3), 'argmax');
      const row2 = want.subarray(2 * V, 3 * V);
      expect(greedy).toBe(row2.indexOf(Math.max(...row2)));
      await expect(m.stepBatch(tokens.slice(0, 5), 'none')).rejects.toMatchObject({ code: 'E_VALUE' });
      // and the batched model still matches runtime-node (f32 both sides, different summation order: see above)
      const cpu = (await node.loadModel(cdir())).model;
      expect(relErr(await (m.reset(), m.forward(tokens)), cpu.forward(tokens))).toBeLessThan(1e-4);
    } finally {
      m.dispose();
      single.model.dispose();
    }
  });

  it('output rotations finished in the next launch (residual branches and gate/up in the next input step, q/k/v in attention): the same logits, to the bit, as their own launches (devices with 8, 9 and 11 storage buffers), with 9 launches per CALDERA block instead of 13; likewise with one-workgroup kernels of 64 invocations (1 and 32 lanes), whose logits are within f32 rounding of 256', async () => {
    // every linear CALDERA (random weights, RVQ4 R̂), so q/k/v's input step with RoPE finishes down_proj's rotation too
    const dir = await mkdtemp(join(tmpdir(), 'caldera-webgpu-res-'));
    const shape = { hidden: 128, intermediate: 256, layers: 3, heads: 4, kvHeads: 2, vocab: 64 };
    await writeRandomCalderaModel(dir, shape, 8, { distinct: true });
    const tokens = [1, 17, 5, 63, 2, 40];
    // storage buffers per shader stage → launches per block: the residual step binds 12 (with this RVQ4 R̂), the gate
    // step 9, q/k/v's rotation with attention 9
    const perBlock = (storage: number) => 13 - (storage >= 9 ? 2 : 0) - (storage >= 12 ? 2 : 0);
    const variants = [8, 9, 11, d.maxStorageBuffers].map((s) => [s, perBlock(s)] as const);
    const models = [];
    let first: Float32Array[] | undefined;
    try {
      for (const [lanes, vectorWorkgroup] of [
        [1, 256],
        [1, 64],
        [32, 64],
      ] as const) {
        const opts = { contextLength: 16, lanes, vectorWorkgroup };
        const at = models.length;
        // other sizes: every launch apart (8 storage buffers) against every fusion (the device's), to keep it short
        const these = vectorWorkgroup === 256 ? variants : [variants[0]!, variants[3]!];
        for (const [storage] of these)
          models.push((await loadModel({ ...d, maxStorageBuffers: storage }, dir, opts)).model);
        // embedding, head, argmax; the final norm runs in the last down_proj's output rotation, which is counted in
        // perBlock without the residual step and a launch of its own with it
        for (const [i, [storage, blockLaunches]] of these.entries())
          expect(models[at + i]!.dispatchesPerToken, `${storage} storage buffers`).toBe(
            3 + blockLaunches * shape.layers + (storage >= 12 ? 1 : 0),
          );
        const want: Float32Array[] = [];
        for (const t of tokens) want.push(await models[at]!.step(t, 'logits'));
        for (const [m, model] of models.slice(at + 1).entries())
          for (const [i, t] of tokens.entries())
            expect(
              await model.step(t, 'logits'),
              `${lanes} lanes, ${vectorWorkgroup} invocations, model ${m + 1}, token ${i}`,
            ).toEqual(want[i]);
        // other workgroup sizes add the norms' sums of squares and the softmax in another order: f32 rounding of
        // sums of ≤ 256 terms, ~1e-6 of the logits' scale through 3 blocks; 1e-4 leaves margin, and a wrong row, value
        // or block in a kernel moves logits by O(1)
        first ??= want;
        for (const [i, w] of want.entries()) expect(relErr(w, first[i]!), `token ${i}`).toBeLessThan(1e-4);
      }
    } finally {
      for (const model of models) model.dispose();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("the H_K mix written out or read from the table (writtenMix): the same logits to the bit, in decode and prefill; the table's launches say so in their labels; the two-launch gate step falls back to one launch without the written-out mix", async () => {
    const dir = await mlpK12Model('caldera-webgpu-mix-');
    const tokens = [1, 17, 5];
    try {
      const runs = [];
      for (const [writtenMix, gateStep] of [
        [true, 'fused'],
        [false, 'fused'],
        [false, 'split'],
      ] as const) {
        const { model } = await loadModel(d, dir, { contextLength: 16, writtenMix, gateStep });
        try {
          expect(model.kernelChoice.writtenMix).toBe(writtenMix);
          const labels = model.launchLabels;
          // the rotations of the MLP width (K = 12): gate and up's output rotation, finished by down's input step
          const table = labels.filter((l) => l.endsWith(' table mix'));
          expect(table.length > 0).toBe(!writtenMix);
          expect(table.every((l) => l.includes('K=12'))).toBe(true);
          expect(labels.some((l) => l.startsWith('gate slices'))).toBe(false);
          runs.push(await prefillAndStepLogits(model, tokens));
        } finally {
          model.dispose();
        }
      }
      // the same sums in the same order: ±1 products from the table are exact
      expect(runs[1]).toEqual(runs[0]);
      expect(runs[2]).toEqual(runs[0]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("the gate step in two launches (gateStep 'split' and 'chunked': the H_K mix of the MLP width spread over its chunks): the same logits as in one launch, to the bit with 'split', within f32 rounding with 'chunked', in decode and prefill; 64 and 256 invocations (blocks of P = 128 above and below them)", async () => {
    const dir = await mlpK12Model('caldera-webgpu-gate2-');
    const tokens = [1, 17, 5];
    try {
      for (const [lanes, vectorWorkgroup] of [
        [1, 64],
        [1, 256],
      ] as const) {
        const what = `${lanes} lanes, ${vectorWorkgroup} invocations`;
        const logits = [];
        for (const gateStep of ['fused', 'split', 'chunked'] as const) {
          // the two-launch forms need the mix written out (on CPU adapters the default is the table)
          const opts = { contextLength: 16, lanes, vectorWorkgroup, gateStep, writtenMix: true };
          const { model } = await loadModel(d, dir, opts);
          try {
            const split = model.launchLabels.filter((l) => l.startsWith('gate slices'));
            expect(split, what).toEqual(gateStep === 'fused' ? [] : ['gate slices n=1536 K=12']);
            // 9 launches per block, one more with the gate step in two; embedding, head, argmax and the final norm
            expect(model.dispatchesPerToken, what).toBe(gateStep === 'fused' ? 13 : 14);
            logits.push(await prefillAndStepLogits(model, tokens));
          } finally {
            model.dispose();
          }
        }
        for (const [i, l] of logits[0]!.entries()) {
          expect(logits[1]![i], `${what}, split, logits ${i}`).toEqual(l);
          // chunked: z summed over 1536/8 code groups in other groupings, f32 rounding (~1e-7 relative) through one
          // block; 1e-5 leaves margin, and a wrong chunk or partial moves logits by O(1)
          expect(relErr(logits[2]![i]!, l), `${what}, chunked, logits ${i}`).toBeLessThan(1e-5);
        }
      }
      // blocks narrower than a code group (48 = 12 × 4: P = 4): 'chunked' located its chunk's codes by P/8 groups per
      // block, 0, so its decode logits were off by O(1) (a review measured 0.81 of their scale)
      const narrow = await mlpK12Model('caldera-webgpu-gate2-narrow-', 48);
      try {
        const logits = [];
        for (const gateStep of ['fused', 'chunked'] as const) {
          const opts = {
            contextLength: 16,
            lanes: 1 as const,
            vectorWorkgroup: 64,
            gateStep,
            writtenMix: true,
          };
          const { model } = await loadModel(d, narrow, opts);
          try {
            expect(model.launchLabels.filter((l) => l.startsWith('gate slices'))).toEqual(
              gateStep === 'fused' ? [] : ['gate slices n=48 K=12'],
            );
            logits.push(await prefillAndStepLogits(model, tokens));
          } finally {
            model.dispose();
          }
        }
        for (const [i, l] of logits[0]!.entries())
          expect(relErr(logits[1]![i]!, l), `P = 4, chunked, logits ${i}`).toBeLessThan(1e-5);
      } finally {
        await rm(narrow, { recursive: true, force: true });
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a model that does not fit the device fails with CalderaError E_DEVICE', async () => {
    const small = { ...d, maxStorageBinding: 256 * 1024 };
    const err = await loadModel(small, REF).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CalderaError);
    expect((err as CalderaError).code).toBe('E_DEVICE');
    expect((err as CalderaError).message).toMatch(
      /model\.embed_tokens\.weight needs a \d+-byte storage buffer/,
    );
  });
});

/**
 * A random Qwen3 checkpoint (2 blocks) in `dir`: each head's query and key RMS-normed before RoPE (`q_norm`, `k_norm`,
 * 1 ± 0.3), head_dim `hd` (not hidden / heads = 16), 4 query heads on 2 KV heads, the LM head tied to the embedding;
 * block 0 dense, block 1's q/k/v (one CALDERA group: the rotation with RoPE, and with attention in decode) and
 * down_proj compressed. `o.biased`: `attention_bias` (q/k/v/o biases of std 0.5 beside projections of RMS about 1.2,
 * 0.15·√64, so a norm that missed them shows) and `rms_norm_eps` 1e-2 (under 1% of a head's mean square, yet another
 * epsilon moves the logits well past 1e-4, which Qwen3's own 1e-6 would not: the first test's numbers). `o.edit`
 * changes the tensors before they are written, `o.config` adds fields to the config. Returns the config written.
 */
async function writeQwen3(
  dir: string,
  hd: number,
  o: { biased?: boolean; edit?: (t: Record<string, Tensor>) => void; config?: Record<string, unknown> } = {},
): Promise<Record<string, unknown>> {
  const rng = new Rng(5);
  const t = randomLlamaTensors(rng, {
    hidden: 64,
    kvDim: 2 * hd,
    qDim: 4 * hd,
    intermediate: 96,
    vocab: 50,
    std: 0.15,
    qkNormDim: hd,
    ...(o.biased ? { biasStd: 0.5 } : {}),
  });
  if (o.biased)
    for (const b of [0, 1])
      t[`model.layers.${b}.self_attn.o_proj.bias`] = tensor(
        'f32',
        [64],
        rng.fillNormal(new Float32Array(64), 0, 0.5),
      );
  const layers = compressLayers(
    t,
    ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'mlp.down_proj'].map(
      (p) => `model.layers.1.${p}`,
    ),
  );
  o.edit?.(t);
  const config = {
    architectures: ['Qwen3ForCausalLM'],
    hidden_size: 64,
    intermediate_size: 96,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: hd,
    vocab_size: 50,
    tie_word_embeddings: true,
    rope_theta: 1000,
    rms_norm_eps: o.biased ? 1e-2 : 1e-6,
    ...(o.biased ? { attention_bias: true } : {}),
    ...o.config,
  };
  await writeSafetensors(join(dir, 'model.safetensors'), t);
  await writeFile(join(dir, 'caldera.json'), JSON.stringify(calderaCheckpointMeta(layers)));
  await writeFile(join(dir, 'config.json'), JSON.stringify(config));
  return config;
}

describe.skipIf(!dev)(gpuTitle('SmolLM3 on WebGPU (blocks without RoPE)', reason), () => {
  it("gives runtime-node's logits with either block left unrotated (block 0's dense q/k/v in the RoPE/KV launch, block 1's CALDERA q/k/v in their output rotation), in decode and prefill", async () => {
    const d = dev!;
    const tokens = [3, 29, 0, 7, 7, 21, 13];
    const t = randomLlamaTensors(new Rng(6), {
      hidden: 32,
      kvDim: 16,
      intermediate: 48,
      vocab: 30,
      std: 0.2,
    });
    const layers = compressLayers(
      t,
      ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'].map((p) => `model.layers.1.${p}`),
    );
    const weights = await serializeSafetensors(t);
    const base = {
      architectures: ['SmolLM3ForCausalLM'],
      hidden_size: 32,
      intermediate_size: 48,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      vocab_size: 30,
      tie_word_embeddings: true,
      rope_theta: 1000,
    };
    const calderaMeta = calderaCheckpointMeta(layers);
    const logitsOf = async (noRope: number[]) => {
      const config = { ...base, no_rope_layers: noRope };
      const { model } = await loadModelFromBuffer(
        d,
        { config, calderaMeta, weights },
        { contextLength: 16, prefillChunk: 3 },
      );
      try {
        const store = await openSafetensors(weights, 'model.safetensors');
        const cpu = (await node.loadModelFromStore({ config, calderaMeta, store })).model;
        await store.close();
        const want = cpu.forward(tokens);
        const prefilled = await model.forward(tokens);
        model.reset();
        const steps = new Float32Array(tokens.length * 30);
        for (const [i, tok] of tokens.entries()) steps.set(await model.step(tok, 'logits'), i * 30);
        // f32 on both sides in different summation orders, 1e-4 as the other comparisons with runtime-node
        expect(relErr(prefilled, want)).toBeLessThan(1e-4);
        expect(relErr(steps, want)).toBeLessThan(1e-4);
        return want;
      } finally {
        model.dispose();
      }
    };
    const [none0, none1, all] = [await logitsOf([0, 1]), await logitsOf([1, 0]), await logitsOf([1, 1])];
    // leaving a block unrotated moves the logits far more than the tolerance
    expect(relErr(none0, all)).toBeGreaterThan(1e-2);
    expect(relErr(none1, all)).toBeGreaterThan(1e-2);
  });
});

describe.skipIf(!dev)(
  gpuTitle('Qwen3 on WebGPU (per-head query and key RMSNorm before RoPE)', reason),
  () => {
    const d = dev!;
    const tokens = [3, 49, 0, 7, 7, 21, 33];
    const V = 50;
    let dir = '';
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'caldera-webgpu-qwen3-'));
      await writeQwen3(dir, 48, { biased: true });
    });
    afterAll(async () => {
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    /** Each token's logits stepped one at a time from an empty cache. */
    async function stepped(model: WebGpuModel): Promise<Float32Array> {
      model.reset();
      const out = new Float32Array(tokens.length * V);
      for (const [i, t] of tokens.entries()) out.set(await model.step(t, 'logits'), i * V);
      return out;
    }

    it("gives runtime-node's logits decoding step by step and in prefill (dense and CALDERA blocks, GQA, head_dim 48 ≠ hidden/heads, tied head, q/k/v/o biases, rms_norm_eps 1e-2), its greedy tokens, and the same from a directory and from bytes", async () => {
      let plan: MemoryPlan | undefined;
      const { model } = await loadModel(d, dir, {
        contextLength: 16,
        prefillChunk: 3,
        onPlan: (p) => (plan = p),
      });
      const cpu = (await node.loadModel(dir)).model;
      try {
        // the plan counts the q/k norms (2 × 48 f32 per block) as the model holds them
        expect(plan!.weightBytes).toBe(model.weightBytes);
        // the norms run where RoPE does: block 0 (dense q/k/v) in the RoPE/KV launch, block 1 (CALDERA q/k/v) in its
        // output rotation with attention; no launch more than Qwen2's layout would take
        expect(model.launchLabels.filter((l) => l.includes('rope'))).toEqual([
          'qknorm+rope+kv',
          expect.stringMatching(/^hadamard n=\d+ T ×3 \+qknorm\+rope\+kv\+attention/),
        ]);
        const want = cpu.forward(tokens);
        // f32 on both sides in different summation orders (products over ≤ 192 terms, the heads' sums of 48 squares, 2
        // blocks): ~1e-6 of the logits' scale (4.0e-7 observed); 1e-4 as the other comparisons with runtime-node. A head
        // left unnormed, or normed with the other weight or over another span, moves the logits by O(1); with these
        // biases and epsilon, the fused kernels summing the squares before the bias moved them by 5.0e-2, and every
        // form taking Qwen3's usual epsilon 1e-6 instead of the config's by 2.8e-3 (both tried, 2026-12-07)
        const prefilled = await model.forward(tokens);
        expect(relErr(prefilled, want)).toBeLessThan(1e-4);
        // decode (the norm in the rotation-with-attention launch) against prefill batches of 3, 3 and 1 (the norm in
        // the rotation-with-RoPE launch): the same operations in the same order, the same bits
        const steps = await stepped(model);
        expect(steps).toEqual(prefilled);
        // greedy tokens; keys are cached normed and rotated, so a cached prefix gives the same tokens
        model.reset();
        const g = await collect(generate(model, tokens, { maxTokens: 8 }));
        expect(g).toEqual(await collect(node.generate(cpu, tokens, { maxTokens: 8 })));
        // from bytes (loadModelFromBuffer's in-memory store): the same weights, the same bits
        const bytes = await readFile(join(dir, 'model.safetensors'));
        const fromBytes = await loadModelFromBuffer(
          d,
          {
            config: JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as unknown,
            calderaMeta: JSON.parse(await readFile(join(dir, 'caldera.json'), 'utf8')) as unknown,
            weights: bytes,
          },
          { contextLength: 16, prefillChunk: 3 },
        );
        try {
          expect(await fromBytes.model.forward(tokens)).toEqual(prefilled);
        } finally {
          fromBytes.model.dispose();
        }
      } finally {
        model.dispose();
      }
    });

    it("with YaRN (Qwen3's long-context setting): the table's scaled frequencies and attention factor give runtime-node's logits, in decode and prefill", async () => {
      const yarn = await mkdtemp(join(tmpdir(), 'caldera-webgpu-qwen3-yarn-'));
      try {
        // original context 8 with head_dim 48 and θ 1000: pairs kept, blended and divided; attention factor 1.139
        await writeQwen3(yarn, 48, {
          config: { rope_scaling: { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 8 } },
        });
        const { model } = await loadModel(d, yarn, { contextLength: 16, prefillChunk: 3 });
        const cpu = (await node.loadModel(yarn)).model;
        try {
          const want = cpu.forward(tokens);
          // as the first test: f32 on both sides in different summation orders, 1e-4
          const prefilled = await model.forward(tokens);
          expect(relErr(prefilled, want)).toBeLessThan(1e-4);
          expect(relErr(await stepped(model), want)).toBeLessThan(1e-4);
          // YaRN moves them far more than that
          const plain = new node.LlamaModel({ ...cpu.config, ropeScaling: null }, cpu.weights);
          expect(relErr(plain.forward(tokens), want)).toBeGreaterThan(1e-2);
        } finally {
          model.dispose();
        }
      } finally {
        await rm(yarn, { recursive: true, force: true });
      }
    });

    it('every form of the norm gives the same bits: in the RoPE/KV launch (8 storage buffers), in the rotation with RoPE (10), with attention (the device’s), after the global-memory rotation; 32 lanes and head_dim 80 (beyond 64 invocations) within f32 rounding of runtime-node', async () => {
      const cpu = (await node.loadModel(dir)).model;
      const want = cpu.forward(tokens);
      const models: WebGpuModel[] = [];
      const wide = await mkdtemp(join(tmpdir(), 'caldera-webgpu-qwen3-80-'));
      try {
        const load = async (device: CalderaDevice, from: string, opts: Parameters<typeof loadModel>[2]) => {
          const m = (await loadModel(device, from, { contextLength: 16, ...opts })).model;
          models.push(m);
          return m;
        };
        const apart = await load({ ...d, maxStorageBuffers: 8 }, dir, {});
        const rope = await load({ ...d, maxStorageBuffers: 10 }, dir, {});
        const fused = await load(d, dir, {});
        const global = await load(d, dir, { maxLocalHadamard: 16 });
        const ropeLabels = (m: WebGpuModel) => m.launchLabels.filter((l) => l.includes('rope'));
        expect(ropeLabels(apart)).toEqual(['qknorm+rope+kv', 'qknorm+rope+kv']);
        expect(ropeLabels(rope)).toEqual([
          'qknorm+rope+kv',
          expect.stringMatching(/^hadamard n=\d+ T ×3 \+qknorm\+rope\+kv table mix$/),
        ]);
        expect(ropeLabels(fused)[1]).toMatch(/\+qknorm\+rope\+kv\+attention/);
        expect(ropeLabels(global)).toEqual(['qknorm+rope+kv', 'qknorm+rope+kv']);
        // launches: the rotation apart adds one (rope) or two (rope, attention) to the fused form, as without norms
        expect(rope.dispatchesPerToken).toBe(fused.dispatchesPerToken + 1);
        expect(apart.dispatchesPerToken).toBe(fused.dispatchesPerToken + 2);
        const base = await stepped(apart);
        expect(relErr(base, want)).toBeLessThan(1e-4); // as in the test above (biases and epsilon too)
        for (const m of [rope, fused, global]) expect(await stepped(m)).toEqual(base);
        // 32 lanes per row sum the products in another order: f32 rounding, as above
        expect(relErr(await stepped(await load(d, dir, { lanes: 32 })), want)).toBeLessThan(1e-4);
        // head_dim 80: the RoPE/KV launch's workgroup of 64 loads its head in two passes; with 64 invocations the head
        // does not fit the attention launch (the rotation with RoPE runs), with 256 it does. Qwen3's own layout: no
        // biases, epsilon 1e-6
        await writeQwen3(wide, 80);
        const cpu80 = (await node.loadModel(wide)).model.forward(tokens);
        const narrow80 = await load(d, wide, { vectorWorkgroup: 64 });
        const wide80 = await load(d, wide, { vectorWorkgroup: 256 });
        expect(ropeLabels(narrow80)[1]).toMatch(/\+qknorm\+rope\+kv table mix$/);
        expect(ropeLabels(wide80)[1]).toMatch(/\+qknorm\+rope\+kv\+attention/);
        for (const m of [narrow80, wide80]) {
          const s = await stepped(m);
          expect(relErr(s, cpu80)).toBeLessThan(1e-4);
          m.reset();
          expect(await m.forward(tokens)).toEqual(s);
        }
      } finally {
        for (const m of models) m.dispose();
        await rm(wide, { recursive: true, force: true });
      }
    });

    it('a checkpoint without a q_norm or with a short k_norm fails naming the tensor; hand-built weights without the norms, with norms of another size, or norms on a Llama are refused; dispose() destroys the norms', async () => {
      const bad = await mkdtemp(join(tmpdir(), 'caldera-webgpu-qwen3-bad-'));
      try {
        await writeQwen3(bad, 48, { edit: (t) => delete t['model.layers.1.self_attn.q_norm.weight'] });
        await expect(loadModel(d, bad, { contextLength: 16 })).rejects.toThrow(
          /^E_MISSING: .*tensor 'model\.layers\.1\.self_attn\.q_norm\.weight' is missing/,
        );
        await writeQwen3(bad, 48, {
          edit: (t) => {
            t['model.layers.0.self_attn.k_norm.weight'] = tensor('f32', [8], new Float32Array(8).fill(1));
          },
        });
        await expect(loadModel(d, bad, { contextLength: 16 })).rejects.toThrow(
          /^E_SHAPE: .*tensor 'model\.layers\.0\.self_attn\.k_norm\.weight' has shape \[8\], expected \[48\]/,
        );
      } finally {
        await rm(bad, { recursive: true, force: true });
      }
      const counting = countingDevice(d);
      const { model } = await loadModel(counting.dev, dir, { contextLength: 16 });
      const w = model.weights;
      const cfg = model.config;
      const { kNorm: _k, ...noK } = w.blocks[0]!;
      expect(() => new WebGpuModel(d, cfg, { ...w, blocks: [noK, w.blocks[1]!] })).toThrow(
        "E_MISSING: WebGpuModel: block 0 lacks kNorm: Qwen3ForCausalLM normalizes each head's query and key (self_attn.q_norm, self_attn.k_norm)",
      );
      const short = { ...w, blocks: [w.blocks[0]!, { ...w.blocks[1]!, qNorm: w.blocks[0]!.inputNorm }] };
      expect(() => new WebGpuModel(d, cfg, short)).toThrow(
        'E_SHAPE: WebGpuModel: block 1: qNorm must be a buffer of head_dim (48) f32 values, 192 bytes, got 256 bytes',
      );
      const llama = { ...cfg, architecture: 'LlamaForCausalLM' as const };
      expect(() => new WebGpuModel(d, llama, w)).toThrow(
        'E_VALUE: WebGpuModel: block 0 has query/key norm weights (qNorm, kNorm), which LlamaForCausalLM does not apply',
      );
      // the model still runs, and dispose() destroys every buffer the loader and the model made, the norms included
      expect(
        relErr(await model.forward(tokens), (await node.loadModel(dir)).model.forward(tokens)),
      ).toBeLessThan(1e-4);
      model.dispose();
      const labels = counting.created.map((b) => b.label);
      expect(labels).toEqual(expect.arrayContaining(['q_norm0', 'k_norm0', 'q_norm1', 'k_norm1']));
      expect(counting.created.filter((b) => !counting.destroyed.has(b)).map((b) => b.label)).toEqual([]);
    });
  },
);

// lavapipe compiles each kernel with LLVM when first used: with an empty shader cache (Mesa's, under ~/.cache) the
// two tests below took 116 and 34 s on the 2-core development machine, with a warm one 8–20 s (2026-12-05)
const LAVAPIPE_MODEL_TIMEOUT = 400_000;

describe.skipIf(!f16dev)(gpuTitle('WebGpuModel with packed-f16 Q̂ products', f16reason), () => {
  const fdir = compressedReferenceDir('caldera-webgpu-f16-');

  it(
    "the compressed reference model with f16 Q̂ products in decode: logits within 2e-3 of runtime-node's, its greedy tokens and perplexity; f16: false gives f32 logits; 4 rows per lane the same logits in either form",
    async () => {
      const d = f16dev!;
      const cpu = (await node.loadModel(fdir())).model;
      const want = cpu.forward(PROMPT);
      const c = await collect(node.generate(cpu, PROMPT, { maxTokens: 12 }));
      for (const f16 of [true, false]) {
        // prefillChunk 1: every prompt token runs the decode program, where the f16 kernel is used
        const { model } = await loadModel(d, fdir(), { contextLength: 64, lanes: 32, prefillChunk: 1, f16 });
        try {
          const q = model.launchLabels.filter((l) => l.startsWith('e8p ') && l.includes(' k='));
          // Q̂ of q/k/v, o, gate/up and down in blocks 0 and 3
          expect(q).toHaveLength(8);
          expect(q.every((l) => l.endsWith(' f16'))).toBe(f16);
          expect(model.f16Products).toBe(f16);
          const got = await model.forward(PROMPT);
          const err = relErr(got, want);
          if (f16) {
            // f16 products round each code's sum to ~2⁻¹¹ of its terms (the kernel test bounds it); through two
            // CALDERA blocks that moved the logits by 3.4e-4 of their scale on lavapipe (perplexity by 2.7e-4), far
            // above f32's 6e-7; the tolerances leave 6× margin for another rounding of the same products
            expect(err).toBeLessThan(2e-3);
            expect(err).toBeGreaterThan(1e-6);
          } else expect(err).toBeLessThan(1e-4);
          {
            // 4 rows per lane where the segments allow (forced: these layers are too small for the f16 form's
            // default, and the f32 form's is one) change which lane computes a row, not its sums: the same logits to
            // the bit, in either form
            const { model: rows4 } = await loadModel(d, fdir(), {
              contextLength: 64,
              lanes: 32,
              prefillChunk: 1,
              rowsPerLane: 4,
              f16,
            });
            try {
              expect(
                rows4.launchLabels.some((l) => l.endsWith(f16 ? ' 4 rows/lane f16' : ' 4 rows/lane')),
              ).toBe(true);
              expect(await rows4.forward(PROMPT)).toEqual(got);
            } finally {
              rows4.dispose();
            }
          }
          model.reset();
          expect(await collect(generate(model, PROMPT, { maxTokens: 12 }))).toEqual(c);
          const text = [...PROMPT, ...c];
          const pg = await perplexity(model, text);
          const pc = await node.perplexity(cpu, text, { context: 64 });
          expect(Math.abs(pg.ppl - pc.ppl) / pc.ppl).toBeLessThan(f16 ? 2e-3 : 1e-4);
        } finally {
          model.dispose();
        }
      }
    },
    LAVAPIPE_MODEL_TIMEOUT,
  );

  it(
    "one-workgroup kernels of 1024 invocations (lavapipe allows them, SwiftShader 256): logits within f32 rounding of runtime-node's",
    async () => {
      const want = (await node.loadModel(fdir())).model.forward(PROMPT);
      const { model: wide } = await loadModel(f16dev!, fdir(), {
        contextLength: 64,
        lanes: 32,
        prefillChunk: 1,
        f16: false,
        vectorWorkgroup: 1024,
      });
      try {
        // the reductions add in another order than with the default size: f32 rounding (~1e-6 of the logits' scale,
        // as the f32 form above); a wrong row or value moves them by O(1)
        expect(relErr(await wide.forward(PROMPT), want)).toBeLessThan(1e-4);
      } finally {
        wide.dispose();
      }
    },
    LAVAPIPE_MODEL_TIMEOUT,
  );
});

/**
 * `dev` with a `device` that records every buffer created through it and which of them were destroyed (each buffer's
 * `destroy` wrapped as it is created).
 */
function countingDevice(dev: CalderaDevice): {
  dev: CalderaDevice;
  created: GPUBuffer[];
  destroyed: Set<GPUBuffer>;
} {
  const created: GPUBuffer[] = [];
  const destroyed = new Set<GPUBuffer>();
  const device = new Proxy(dev.device, {
    get(target, key) {
      if (key === 'createBuffer')
        return (descriptor: GPUBufferDescriptor) => {
          const b = target.createBuffer(descriptor);
          created.push(b);
          const destroy = b.destroy.bind(b);
          Object.defineProperty(b, 'destroy', {
            value: () => {
              destroyed.add(b);
              destroy();
            },
          });
          return b;
        };
      const v = Reflect.get(target, key, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { dev: { ...dev, device }, created, destroyed };
}

describe.skipIf(!dev)(gpuTitle('WebGpuModel lifecycle', reason), () => {
  it('a constructor that fails part way (weights that do not match the config; a buffer too large for the device) destroys every buffer it allocated and leaves the weights working', async () => {
    const parts = await tinyModelSource();
    const { model, config: cfg } = await loadModelFromBuffer(dev!, parts, { contextLength: 16 });
    try {
      const before = await model.forward([1, 29, 3]);
      model.reset();
      // E_SHAPE when recording the program (gate_proj is 48×32, the config says 96×32): after the activations, the
      // KV cache, the linear context and the kernels' uniforms were allocated
      const shape = countingDevice(dev!);
      const wrong = { ...cfg, intermediateSize: 2 * cfg.intermediateSize };
      expect(() => new WebGpuModel(shape.dev, wrong, model.weights, { contextLength: 16 })).toThrow(
        /E_SHAPE: model\.layers\.0\.mlp\.gate_proj: layer is 48×32, the config needs 96×32/,
      );
      expect(shape.created.length).toBeGreaterThan(30);
      expect(shape.created.filter((b) => !shape.destroyed.has(b)).map((b) => b.label)).toEqual([]);
      // weights of another vocabulary (it read zeros past the embedding's rows and answered token 3000 silently), and a
      // config or weights that are not what they say (TypeErrors before): before anything is allocated
      const vocab = countingDevice(dev!);
      expect(() => new WebGpuModel(vocab.dev, { ...cfg, vocabSize: 4096 }, model.weights)).toThrow(
        'E_SHAPE: WebGpuModel: the embedding is 30×32, the config needs 4096×32 (vocabSize × hiddenSize)',
      );
      expect(() => new WebGpuModel(vocab.dev, {} as never, model.weights)).toThrow(
        /^E_VALUE: WebGpuModel: config must be a ModelConfig \(parseModelConfig of config\.json\): its numLayers/,
      );
      expect(() => new WebGpuModel(vocab.dev, cfg, {} as never)).toThrow(
        'E_VALUE: WebGpuModel: weights must be ModelWeights (blocks, embed, head, norm), got blocks undefined',
      );
      expect(vocab.created).toEqual([]);
      // E_DEVICE part way through the activations: a device that binds the 16×32 rows of x but not gate's 16×48
      const small = countingDevice({ ...dev!, maxStorageBinding: 16 * 32 * 4 });
      expect(() => new WebGpuModel(small.dev, cfg, model.weights, { contextLength: 16 })).toThrow(
        /E_DEVICE: gate needs a 3072-byte storage buffer/,
      );
      expect(small.created.map((b) => b.label)).toEqual(['x', 'x2', 'h', 'q', 'k', 'v', 'att']);
      expect(small.created.filter((b) => !small.destroyed.has(b))).toEqual([]);
      // the weights were left alone: the model gives the same logits
      expect(await model.forward([1, 29, 3])).toEqual(before);
    } finally {
      model.dispose();
    }
    // the linear context alone: the buffers made before the one the device cannot hold are destroyed
    const ctx = countingDevice({ ...dev!, maxStorageBinding: 64 });
    expect(() =>
      createLinearContext(ctx.dev, new Kernels(ctx.dev), { rotIn: 8, rotOut: 8, z: 1000, ones: 8 }),
    ).toThrow(/E_DEVICE: z needs a 4000-byte storage buffer/);
    expect(ctx.created.map((b) => b.label)).toEqual(['rotIn', 'rotOut', 'rotTmp']);
    expect(ctx.created.filter((b) => !ctx.destroyed.has(b))).toEqual([]);
  });

  it('dispose() during a step fails that step with E_VALUE; on a destroyed device generate, perplexity and loading fail with E_DEVICE', async () => {
    const parts = await tinyModelSource();
    const prompt = [1, 29, 3];
    // the model's own device: a read-back cut short by dispose() says so, and the device is not harmed
    const { model } = await loadModelFromBuffer(dev!, parts, { contextLength: 16 });
    const step = model.step(5, 'logits');
    model.dispose();
    await expect(step).rejects.toMatchObject({
      code: 'E_VALUE',
      message: /disposed while a step was running/,
    });
    await expect(model.step(5, 'argmax')).rejects.toMatchObject({
      code: 'E_VALUE',
      message: /after dispose/,
    });
    expect(() => model.reset()).toThrow(/after dispose/);
    // also where nothing would run (these returned without a word), and a claim
    expect(() => model.claim('x')).toThrow(/after dispose/);
    await expect(model.prefill([])).rejects.toThrow(/after dispose/);
    await expect(collect(generate(model, prompt, { maxTokens: 0 }))).rejects.toThrow(/after dispose/);
    const own = await ownTestDevice();
    const { model: m } = await loadModelFromBuffer(own!, parts, { contextLength: 16 });
    const want = await collect(generate(m, prompt, { maxTokens: 3 }));
    expect(want).toHaveLength(3);
    own!.dispose();
    await new Promise((r) => setTimeout(r, 50));
    for (const run of [
      () => collect(generate(m, prompt, { maxTokens: 3 })),
      () => perplexity(m, [1, 2, 3, 4]),
      () => m.forward([1, 2]),
      () => loadModelFromBuffer(own!, parts, { contextLength: 16 }),
    ])
      await expect(run()).rejects.toMatchObject({ code: 'E_DEVICE', message: /device was lost \(destroyed/ });
    m.dispose();
  });
});
