import { describe, expect, it, vi } from 'vitest';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  cast,
  CalderaError,
  openSafetensors,
  Rng,
  serializeSafetensors,
  tensor,
  type CalderaLayerMeta,
  type Tensor,
  type TensorStore,
} from '@caldera/core';
import {
  caldera,
  calderaCheckpointMeta,
  randomDecomposition,
  toCheckpointTensors,
  withTrainableFactors,
  type CalderaOptions,
} from '@caldera/lowrank';
import { blockLinearNames, parseModelConfig } from './config.js';
import { CalderaLinear } from './linear.js';
import { createDecodePool, type DecodeExecutor } from './kernels/decode-pool.js';
import { KVCache } from './model.js';
import { readModelLayout } from './layout.js';
import { loadModel, loadModelFromStore, loadModelFromUrl, type LoadedModel } from './load.js';
import type { MemoryPlan } from './memory-plan.js';
import {
  arenaRegions,
  heldBytes,
  heldBytesExcept,
  sharedBuffersExcept,
  wasmMemories,
} from './testing/held-bytes.js';
import { randomModel } from './testing/random-model.js';

// Qwen2: q/k/v biases; an intermediate size of 40 (not a power of two: Hadamard K = 40 and padding of the rows)
const hf = {
  architectures: ['Qwen2ForCausalLM'],
  hidden_size: 32,
  intermediate_size: 40,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 30,
  tie_word_embeddings: false,
};
const cfg = parseModelConfig(hf);
const { raw } = randomModel(cfg, 3);
for (let b = 0; b < 2; b++)
  for (const [p, m] of [
    ['q', 32],
    ['k', 16],
    ['v', 16],
  ] as const)
    raw[`model.layers.${b}.self_attn.${p}_proj.bias`] = tensor(
      'f32',
      [m],
      new Rng(10 + b).fillNormal(new Float32Array(m), 0, 0.5),
    );
raw['lm_head.weight'] = randomModel(cfg, 4).raw['model.embed_tokens.weight']!;

const fast = { outerIters: 1, lplrIters: 1 };
/**
 * Every kind of compressed layer the loaders build: fused (2-bit Q; with 4-bit, f16 or no low-rank factors; with and
 * without the rotation) and unfused (3- and 4-bit Q, a LoRA pair).
 */
const KINDS: Record<string, CalderaOptions & { ftRank?: number }> = {
  'model.layers.0.self_attn.q_proj': { rank: 4 },
  'model.layers.0.self_attn.k_proj': { rank: 0 },
  'model.layers.0.self_attn.v_proj': { rank: 4, lBits: 16, rBits: 16 },
  'model.layers.0.self_attn.o_proj': { rank: 4, qBits: 4 },
  'model.layers.0.mlp.gate_proj': { rank: 4, qBits: 3, lBits: 3, rBits: 3 },
  'model.layers.0.mlp.up_proj': { rank: 4, ftRank: 2 },
  'model.layers.0.mlp.down_proj': { rank: 4, hadamard: false },
  'model.layers.1.mlp.down_proj': { rank: 8, lBits: 2, rBits: 16 },
};
const FUSED = ['q_proj', 'k_proj', 'v_proj', 'layers.0.mlp.down_proj', 'layers.1.mlp.down_proj'];

/** A compressed checkpoint with a layer of each kind of {@link KINDS}, the rest dense f32: the safetensors files. */
async function checkpointFiles(): Promise<Record<string, Uint8Array>> {
  const tensors: Record<string, Tensor> = { ...raw };
  const layers: Record<string, CalderaLayerMeta> = {};
  for (const [name, { ftRank, ...options }] of Object.entries(KINDS)) {
    let d = caldera(raw[`${name}.weight`]!, null, { ...fast, ...options });
    if (ftRank) d = withTrainableFactors(d, ftRank);
    const { tensors: ct, meta } = toCheckpointTensors(name, d);
    delete tensors[`${name}.weight`];
    Object.assign(tensors, ct);
    layers[name] = meta;
  }
  const text = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));
  return {
    'config.json': text(hf),
    'caldera.json': text(calderaCheckpointMeta(layers)),
    'model.safetensors': await serializeSafetensors(tensors),
  };
}

async function writeDir(files: Record<string, Uint8Array>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'caldera-plan-'));
  for (const [f, bytes] of Object.entries(files)) await writeFile(join(dir, f), bytes);
  return dir;
}

/**
 * Check that `plan` states what `loaded` holds, measured by `heldBytes` on the loaded objects (not entering
 * `notOwned`: the caller's decode pool): the whole model's weights (the kernel arenas' memories counted whole), each
 * linear layer (its own arrays, and its regions in the arenas), the arenas beyond the regions, the embedding, the head
 * and the norms — exact to the byte (the loader reads a directory tensor by tensor, each into its own buffer, so no
 * view keeps a larger buffer alive). The linear layers' kernels are in at most `memories` WebAssembly memories.
 */
function expectPlanHeld(
  plan: MemoryPlan,
  { model, config }: LoadedModel,
  what: string,
  notOwned: readonly object[] = [],
  memories = 2,
): void {
  const held = (...roots: unknown[]) => heldBytesExcept(notOwned, ...roots);
  const w = model.weights;
  expect(held(w), `${what}: whole model`).toBe(plan.weightBytes);
  const names = Array.from({ length: config.numLayers }, (_, b) =>
    blockLinearNames(b).map((l) => l.name),
  ).flat();
  expect(plan.layers.map((l) => l.name)).toEqual(names);
  const linears = names.map((n) => model.linear(n));
  const arenas = arenaRegions(notOwned, ...linears);
  expect(arenas.memories.length, `${what}: the linears' memories`).toBeLessThanOrEqual(memories);
  expect(wasmMemories(notOwned, ...linears), `${what}: the linears' memories`).toBe(arenas.memories.length);
  const shared = [...notOwned, ...arenas.memories, ...arenas.buffers];
  for (const l of plan.layers) {
    const layer = model.linear(l.name);
    const regions = arenaRegions(notOwned, layer).regions.reduce((s, r) => s + r.bytes, 0);
    expect(heldBytesExcept(shared, layer) + regions, `${what}: ${l.name}`).toBe(l.bytes);
  }
  const regions = arenas.regions.reduce((s, r) => s + r.bytes, 0);
  expect(held(...arenas.memories) - regions, `${what}: arenas`).toBe(plan.parts.arenas);
  expect(held(w.head), `${what}: head`).toBe(plan.parts.lmHead);
  // tied: the embedding is a view of the head's table, which the head's part counts
  expect(held(w.embed), `${what}: embedding`).toBe(plan.parts.embedding || plan.parts.lmHead);
  expect(held(w.norm, ...w.blocks.map((b) => [b.inputNorm, b.postAttnNorm])), `${what}: norms`).toBe(
    plan.parts.norms,
  );
}

describe('the memory plan (onPlan, readModelLayout().memory) is what the loaded model holds', () => {
  it('a CALDERA checkpoint with every kind of compressed layer, fused and unfused: exact bytes, per layer too', async () => {
    const dir = await writeDir(await checkpointFiles());
    const plans: MemoryPlan[] = [];
    const loaded = await loadModel(dir, { onPlan: (p) => plans.push(p) });
    expect(plans).toHaveLength(1);
    const plan = plans[0]!;
    for (const [name] of Object.entries(KINDS)) {
      const l = loaded.model.linear(name);
      expect(l, name).toBeInstanceOf(CalderaLinear);
      expect((l as CalderaLinear).fused, name).toBe(FUSED.some((f) => name.includes(f)));
    }
    expectPlanHeld(plan, loaded, 'caldera');
    expect((await readModelLayout(dir)).memory).toEqual(plan);
    // a fused layer holds far more than its codes: L̂, R̂ in f32 and the kernel's 64 KiB pages (the old figure)
    const q = plan.layers[0]!;
    expect(q.kind).toBe('caldera');
    expect(q.bytes).toBeGreaterThan(8 * loaded.model.linear(q.name).weightBytes);
    console.log(
      JSON.stringify({
        caldera: { planned: plan.weightBytes, held: heldBytes(loaded.model.weights), parts: plan.parts },
      }),
    );
  });

  it('kernelArenas false: each layer in memories of its own, as the plan counts them, the same logits', async () => {
    const dir = await writeDir(await checkpointFiles());
    const inArenas = await loadModel(dir);
    let plan: MemoryPlan | undefined;
    const loaded = await loadModel(dir, { kernelArenas: false, onPlan: (p) => (plan = p) });
    expect(plan!.parts.arenas).toBe(0);
    expect(heldBytes(loaded.model.weights)).toBe(plan!.weightBytes);
    for (const l of plan!.layers) expect(heldBytes(loaded.model.linear(l.name)), l.name).toBe(l.bytes);
    expect((await readModelLayout(dir, { kernelArenas: false })).memory).toEqual(plan);
    // one memory per fused layer and per dense kernel (an unfused layer's L̂ and R̂ two), against 2 in arenas
    const linears = (m: LoadedModel) => plan!.layers.map((l) => m.model.linear(l.name));
    expect(wasmMemories([], ...linears(loaded))).toBeGreaterThan(10);
    expect(wasmMemories([], ...linears(inArenas))).toBe(2);
    const tokens = [3, 1, 4, 1, 5, 9, 2, 6];
    expect(loaded.model.forward(tokens)).toEqual(inArenas.model.forward(tokens));
  });

  it("a decode pool splits the LM head only when the blocks' MLP layers are split too (headSplits)", async () => {
    // a 4096 × 64 head (2¹⁸ weights, the threshold) with an MLP of 128 (below it) or 4096 (at it) per block
    const decodePool = await createDecodePool({ threads: 2 });
    try {
      for (const intermediate of [128, 4096]) {
        const config = {
          architectures: ['LlamaForCausalLM'],
          hidden_size: 64,
          intermediate_size: intermediate,
          num_hidden_layers: 1,
          num_attention_heads: 4,
          num_key_value_heads: 2,
          vocab_size: 4096,
          tie_word_embeddings: true,
        };
        const store = await openSafetensors(
          await serializeSafetensors(randomModel(parseModelConfig(config), 6).raw),
          'model.safetensors',
        );
        const register = vi.spyOn(decodePool as DecodeExecutor, 'register');
        const { model } = await loadModelFromStore({ config, calderaMeta: null, store }, { decodePool });
        // a split dense layer built without arenas (the head) keeps its weights in a shared memory of its own
        const shared = (root: unknown) => sharedBuffersExcept([decodePool], root);
        const head = (model as unknown as { head: unknown }).head;
        expect(shared(head), `intermediate ${intermediate}`).toBe(intermediate === 4096 ? 1 : 0);
        // split layers register with the pool: gate, up, down and the head (q, k, v, o: 64 × 64), or none
        expect(register, `intermediate ${intermediate}`).toHaveBeenCalledTimes(intermediate === 4096 ? 4 : 0);
        register.mockRestore();
      }
    } finally {
      decodePool.dispose();
    }
  });

  it("with a decode pool: the workers' memories are counted exactly, and the logits are the same to the bit", async () => {
    // layers at and above the split threshold (2¹⁸ weights: q, o 512 × 512; gate, up, down 1024 × 512; the 512 × 512
    // head), k and v below it (128 × 512)
    const big = {
      architectures: ['LlamaForCausalLM'],
      hidden_size: 512,
      intermediate_size: 1024,
      num_hidden_layers: 1,
      num_attention_heads: 8,
      num_key_value_heads: 2,
      vocab_size: 512,
      tie_word_embeddings: true,
    };
    const bigCfg = parseModelConfig(big);
    const raw = randomModel(bigCfg, 5).raw;
    const text = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));
    // compressed (every linear CALDERA, f32 head), dense f16 with the head tied, dense f32 with an untied head
    const tensors: Record<string, Tensor> = { ...raw };
    const layers: Record<string, CalderaLayerMeta> = {};
    const rng = new Rng(6);
    for (const { name } of blockLinearNames(0)) {
      const [m, n] = tensors[`${name}.weight`]!.shape as [number, number];
      const { tensors: ct, meta } = toCheckpointTensors(name, randomDecomposition(m, n, 16, rng));
      delete tensors[`${name}.weight`];
      Object.assign(tensors, ct);
      layers[name] = meta;
    }
    const half: Record<string, Tensor> = {};
    for (const [k, v] of Object.entries(raw)) half[k] = cast(v, 'f16');
    const dirs = {
      caldera: await writeDir({
        'config.json': text(big),
        'caldera.json': text(calderaCheckpointMeta(layers)),
        'model.safetensors': await serializeSafetensors(tensors),
      }),
      'dense f16, tied': await writeDir({
        'config.json': text(big),
        'model.safetensors': await serializeSafetensors(half),
      }),
      'dense f32, untied': await writeDir({
        'config.json': text({ ...big, tie_word_embeddings: false }),
        'model.safetensors': await serializeSafetensors({
          ...raw,
          'lm_head.weight': randomModel(bigCfg, 8).raw['model.embed_tokens.weight']!,
        }),
      }),
    };
    const decodePool = await createDecodePool({ threads: 3 });
    try {
      for (const [what, dir] of Object.entries(dirs)) {
        const alone = await loadModel(dir);
        let plan: MemoryPlan | undefined;
        const pooled = await loadModel(dir, { decodePool, onPlan: (p) => (plan = p) });
        // the calling thread's CALDERA arena, each worker's and the dense one
        expectPlanHeld(plan!, pooled, `${what}, 3 decode threads`, [decodePool], 4);
        expect((await readModelLayout(dir, { decodeThreads: 3 })).memory).toEqual(plan);
        for (const decodeThreads of [0, 1.5, 257, Number.NaN])
          await expect(readModelLayout(dir, { decodeThreads }), String(decodeThreads)).rejects.toThrow(
            /E_VALUE: decodeThreads must be an integer in \[1, 256\]/,
          );
        // split CALDERA layers hold more (each worker's pages), a dense layer's memory is only shared
        const planAlone = (await readModelLayout(dir)).memory;
        for (const [i, l] of plan!.layers.entries())
          expect(l.bytes > planAlone.layers[i]!.bytes, l.name).toBe(
            what === 'caldera' && !/[kv]_proj/.test(l.name),
          );
        if (what !== 'caldera') expect(plan).toEqual(planAlone);
        // a prompt (the batch paths) then single tokens (split rows), as generate() runs them
        const prompt = [3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 3, 2, 38, 46, 26, 43, 38, 32, 7, 9];
        const run = (model: LoadedModel['model']) => {
          const cache = new KVCache(bigCfg, 32);
          return [
            model.forward(prompt, cache, { last: true }),
            ...[5, 9, 2].map((t) => model.forward([t], cache)),
          ];
        };
        const want = run(alone.model);
        const got = run(pooled.model);
        for (const [i, w] of want.entries()) {
          expect(w.every(Number.isFinite)).toBe(true);
          expect(
            got[i]!.findIndex((v, j) => !Object.is(v, w[j])),
            `${what}, step ${i}`,
          ).toBe(-1);
        }
      }
    } finally {
      decodePool.dispose();
    }
  });

  it('dense f32, f16 (tied) and bf16 models under each dtype: exact bytes', async () => {
    for (const stored of ['f32', 'f16', 'bf16'] as const) {
      const t: Record<string, Tensor> = {};
      for (const [k, v] of Object.entries(raw))
        if (stored !== 'f16' || k !== 'lm_head.weight') t[k] = cast(v, stored);
      const config = stored === 'f16' ? { ...hf, tie_word_embeddings: true } : hf;
      const dir = await writeDir({
        'config.json': new TextEncoder().encode(JSON.stringify(config)),
        'model.safetensors': await serializeSafetensors(t),
      });
      for (const dtype of ['auto', 'f32', 'f16'] as const) {
        let plan: MemoryPlan | undefined;
        const loaded = await loadModel(dir, { dtype, onPlan: (p) => (plan = p) });
        expectPlanHeld(plan!, loaded, `${stored} as ${dtype}`);
        const half = dtype === 'f16' || (dtype === 'auto' && stored !== 'f32');
        expect(
          plan!.layers.every((l) => l.kind === (half ? (dtype === 'f16' ? 'f16' : stored) : 'f32')),
        ).toBe(true);
        expect(plan!.parts.embedding === 0).toBe(stored === 'f16');
        expect((await readModelLayout(dir, { dtype })).memory).toEqual(plan);
        if (dtype === 'auto')
          console.log(
            JSON.stringify({
              [stored]: { planned: plan!.weightBytes, held: heldBytes(loaded.model.weights) },
            }),
          );
      }
    }
  });
});

/** A tensor store over `bytes` that counts the tensor data it reads. */
async function countingStore(bytes: Uint8Array): Promise<{ store: TensorStore; reads: () => number }> {
  const opened = await openSafetensors(bytes, 'model.safetensors');
  let reads = 0;
  const store: TensorStore = {
    metadata: opened.metadata,
    names: () => opened.names(),
    has: (n) => opened.has(n),
    tensorInfo: (n) => opened.tensorInfo(n),
    readTensor: (n) => (reads++, opened.readTensor(n)),
    readRaw: (n) => (reads++, opened.readRaw(n)),
    close: () => opened.close(),
  };
  return { store, reads: () => reads };
}

describe('onPlan comes before any weight is read, and can stop the load', () => {
  it('loadModelFromStore: called once with no tensor read; throwing or aborting in it stops the load with none read', async () => {
    const files = await checkpointFiles();
    const source = (store: TensorStore) => ({
      config: JSON.parse(new TextDecoder().decode(files['config.json'])) as unknown,
      calderaMeta: JSON.parse(new TextDecoder().decode(files['caldera.json'])) as unknown,
      store,
    });
    const ok = await countingStore(files['model.safetensors']!);
    const readsAtPlan: number[] = [];
    await loadModelFromStore(source(ok.store), { onPlan: () => readsAtPlan.push(ok.reads()) });
    expect(readsAtPlan).toEqual([0]);
    expect(ok.reads()).toBeGreaterThan(0);

    const refused = await countingStore(files['model.safetensors']!);
    const budget = 1000;
    await expect(
      loadModelFromStore(source(refused.store), {
        onPlan: (p) => {
          if (p.weightBytes > budget)
            throw new CalderaError(
              'E_VALUE',
              `the model needs ${p.weightBytes} bytes, the budget is ${budget}`,
            );
        },
      }),
    ).rejects.toThrow(/E_VALUE: the model needs \d+ bytes, the budget is 1000/);
    expect(refused.reads()).toBe(0);

    const aborted = await countingStore(files['model.safetensors']!);
    const controller = new AbortController();
    const e = await loadModelFromStore(source(aborted.store), {
      signal: controller.signal,
      onPlan: () => controller.abort(new Error('too big')),
    }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(CalderaError);
    expect((e as CalderaError).code).toBe('E_ABORTED');
    expect(aborted.reads()).toBe(0);
  });

  it('loadModel and loadModelFromUrl: an onPlan that throws stops the load before any tensor data is read or downloaded', async () => {
    const files = await checkpointFiles();
    const dir = await writeDir(files);
    const refuse = () => {
      throw new CalderaError('E_VALUE', 'no room');
    };
    let progress = 0;
    await expect(loadModel(dir, { onPlan: refuse, onProgress: () => progress++ })).rejects.toThrow(
      'E_VALUE: no room',
    );
    expect(progress).toBe(0);
    // over HTTP: the headers come by Range requests; the weight file's data would come whole on the first tensor read
    const requests: string[] = [];
    const fetchSpy: typeof fetch = (input, init) => {
      const name = String(input).replace('http://host/m/', '');
      const range = new Headers(init?.headers).get('range');
      requests.push(`${name}${range ? ' range' : ''}`);
      const body = files[name];
      if (!body) return Promise.resolve(new Response('no', { status: 404 }));
      const m = range && /^bytes=(\d+)-(\d+)$/.exec(range);
      if (!m) return Promise.resolve(new Response(body.slice()));
      const [first, last] = [Number(m[1]), Math.min(Number(m[2]), body.length - 1)];
      return Promise.resolve(
        new Response(body.slice(first, last + 1), {
          status: 206,
          headers: { 'content-range': `bytes ${first}-${last}/${body.length}` },
        }),
      );
    };
    let plan: MemoryPlan | undefined;
    await expect(
      loadModelFromUrl('http://host/m/', {
        fetch: fetchSpy,
        onPlan: (p) => {
          plan = p;
          refuse();
        },
      }),
    ).rejects.toThrow('E_VALUE: no room');
    expect(requests.filter((r) => r.startsWith('model.safetensors'))).not.toContain('model.safetensors');
    expect(requests.some((r) => r === 'model.safetensors range')).toBe(true);
    expect(plan).toEqual((await readModelLayout(dir)).memory);
  });
});
