import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cast, Rng, tensor, writeSafetensors, type CalderaLayerMeta, type Tensor } from '@caldera/core';
import { applyDecomposition, caldera, calderaCheckpointMeta, toCheckpointTensors } from '@caldera/lowrank';
import { blockLinearNames, parseModelConfig } from './config.js';
import { CalderaLinear, DenseF16Linear, DenseLinear, footprintBytes, type Linear } from './linear.js';
import { readModelLayout } from './layout.js';
import { loadModel, loadModelFromStore, loadModelFromUrl } from './load.js';
import { BlockLazyRunner } from './block-runner.js';
import { loadLlama2c } from './llama2c.js';
import { KVCache } from './model.js';
import { ModelRunnerAdapter } from './runner.js';
import { loadTokenizer } from './tokenizer.js';
import { randomModel } from './testing/random-model.js';

const hf = {
  architectures: ['LlamaForCausalLM'],
  hidden_size: 32,
  intermediate_size: 40,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 30,
  tie_word_embeddings: false,
};
const cfg = parseModelConfig(hf);

describe('loadModel', () => {
  const { raw } = randomModel(cfg, 8);
  raw['lm_head.weight'] = raw['model.embed_tokens.weight']!; // untied head (same values, separate tensor)
  const tokens = [2, 9, 29, 4, 4, 17];
  const rng = (n: number, seed: number) => new Rng(100 + seed).fillNormal(new Float32Array(n), 0, 0.5);

  it('f16 and bf16 checkpoints: layers stay 16-bit (auto); logits match the f32 model', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-load-'));
    await writeFile(join(dir, 'config.json'), JSON.stringify(hf));
    const f32Dir = await mkdtemp(join(tmpdir(), 'caldera-load32-'));
    await writeFile(join(f32Dir, 'config.json'), JSON.stringify(hf));
    for (const dtype of ['f16', 'bf16'] as const) {
      const t: Record<string, Tensor> = {};
      const rounded: Record<string, Tensor> = {};
      for (const [k, v] of Object.entries(raw)) {
        t[k] = cast(v, dtype);
        rounded[k] = cast(t[k]!, 'f32');
      }
      await writeSafetensors(join(dir, 'model.safetensors'), t);
      await writeSafetensors(join(f32Dir, 'model.safetensors'), rounded);
      const { model } = await loadModel(dir);
      const ref = (await loadModel(f32Dir)).model;
      const q = model.linear('model.layers.1.self_attn.q_proj');
      expect(q).toBeInstanceOf(DenseF16Linear);
      expect((q as DenseF16Linear).format).toBe(dtype);
      const a = model.forward(tokens);
      const b = ref.forward(tokens);
      // identical weights, different summation order in f32: 1e-4 absolute on logits of size ~10
      for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(1e-4);
      const forced = (await loadModel(dir, { dtype: 'f32' })).model.linear('model.layers.0.mlp.up_proj');
      expect(forced).toBeInstanceOf(DenseLinear);
    }
  });

  it('a bf16 checkpoint is held as bf16 bits (auto) with logits and weight() bit for bit those of dtype f32', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-bf16-'));
    // Qwen2-style q/k/v biases too, so the 16-bit layers' bias path is covered
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...hf, architectures: ['Qwen2ForCausalLM'] }));
    const t: Record<string, Tensor> = {};
    for (const [k, v] of Object.entries(raw)) t[k] = cast(v, 'bf16');
    for (let b = 0; b < 2; b++)
      for (const [p, m] of [
        ['q', 32],
        ['k', 16],
        ['v', 16],
      ] as const)
        t[`model.layers.${b}.self_attn.${p}_proj.bias`] = cast(tensor('f32', [m], rng(m, b)), 'bf16');
    await writeSafetensors(join(dir, 'model.safetensors'), t);
    const half = await loadModel(dir);
    const wide = await loadModel(dir, { dtype: 'f32' });
    const names = [0, 1].flatMap((b) => blockLinearNames(b).map((l) => l.name));
    const runner = new ModelRunnerAdapter(half.model);
    const wideRunner = new ModelRunnerAdapter(wide.model);
    for (const name of names) {
      const l = half.model.linear(name) as DenseF16Linear;
      expect(l).toBeInstanceOf(DenseF16Linear);
      expect(l.format).toBe('bf16');
      expect(l.bits).toBeInstanceOf(Uint16Array); // held as 16 bits, not widened
      expect(Array.from(l.bits)).toEqual(Array.from(t[`${name}.weight`]!.data));
      expect(l.weightBytes).toBe(l.bits.length * 2);
      expect(wide.model.linear(name)).toBeInstanceOf(DenseLinear);
      // calibration reads W through weight(): exactly the f32 widening of the stored bits
      expect(runner.weight(name)).toEqual(wideRunner.weight(name));
      expect(runner.weight(name).data).toEqual(cast(t[`${name}.weight`]!, 'f32').data);
    }
    const head = half.model.weights.head as DenseF16Linear;
    expect(head).toBeInstanceOf(DenseF16Linear);
    expect(head.format).toBe('bf16');
    expect(half.model.linearBytes() * 2).toBe(wide.model.linearBytes());
    // same f32 weight values through the same kernels and summation orders: identical bits, for decode (≤ 4 rows:
    // matrix–vector kernels), prompts (gemm) and cached decode steps
    const prompt = Array.from({ length: 24 }, (_, i) => (i * 7 + 3) % 30);
    for (const n of [1, 4, 6, 24])
      expect(half.model.forward(prompt.slice(0, n))).toEqual(wide.model.forward(prompt.slice(0, n)));
    const [ca, cb] = [new KVCache(half.config, 32), new KVCache(wide.config, 32)];
    expect(half.model.forward(prompt, ca)).toEqual(wide.model.forward(prompt, cb));
    for (const id of [5, 17, 29]) expect(half.model.forward([id], ca)).toEqual(wide.model.forward([id], cb));
    // calibration's block runs see the same activations
    const h = half.model.embed(prompt);
    expect(half.model.runBlock(1, h, prompt.length)).toEqual(wide.model.runBlock(1, h, prompt.length));
  });

  it('the embedding and LM head stay 16-bit (no f32 copy); a tied 16-bit pair is one table; f16 overflow is E_VALUE', async () => {
    const prompt = [3, 0, 29, 11, 7];
    for (const [dtype, tied] of [
      ['bf16', false],
      ['f16', true],
      ['bf16', true],
    ] as const) {
      const dir = await mkdtemp(join(tmpdir(), 'caldera-head-'));
      await writeFile(join(dir, 'config.json'), JSON.stringify({ ...hf, tie_word_embeddings: tied }));
      const t: Record<string, Tensor> = {};
      for (const [k, v] of Object.entries(raw)) if (!(tied && k === 'lm_head.weight')) t[k] = cast(v, dtype);
      await writeSafetensors(join(dir, 'model.safetensors'), t);
      const half = (await loadModel(dir)).model;
      const wide = (await loadModel(dir, { dtype: 'f32' })).model;
      const w = half.weights;
      expect(w.embed.dtype).toBe(dtype);
      expect(w.lmHead).toBeUndefined(); // no f32 copy of the head beside its 16-bit layer
      const head = w.head as DenseF16Linear;
      expect(head.format).toBe(dtype);
      if (tied)
        expect(w.embed.data).toBe(head.bits); // one table for lookup and logits
      else expect(w.embed.data).not.toBe(head.bits);
      // lookups widen each row exactly
      expect(half.embed(prompt)).toEqual(wide.embed(prompt));
      // as in the tests above: bf16 runs the f32 kernels' order (identical), f16 its own (1e-4 on logits of ~10)
      const [a, b] = [half.forward(prompt), wide.forward(prompt)];
      if (dtype === 'bf16') expect(a).toEqual(b);
      else for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(1e-4);
    }
    // dtype 'f16' rounds an f32 checkpoint: a value beyond f16's range fails naming the tensor, not as infinity
    const dir = await mkdtemp(join(tmpdir(), 'caldera-f16-overflow-'));
    await writeFile(join(dir, 'config.json'), JSON.stringify(hf));
    const big = tensor('f32', [30, 32], raw['model.embed_tokens.weight']!.data.slice());
    big.data[5] = 70000;
    await writeSafetensors(join(dir, 'model.safetensors'), { ...raw, 'model.embed_tokens.weight': big });
    await expect(loadModel(dir, { dtype: 'f16' })).rejects.toThrow(
      /tensor 'model.embed_tokens.weight' rounded to f16 has a non-finite value \(Infinity\) at flat index 5/,
    );
    expect((await loadModel(dir)).model.weights.embed.data[5]).toBe(70000);
  });

  it('onProgress reports each block (1…blocks, as runtime-webgpu); signal aborts between tensors with E_ABORTED', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-progress-'));
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...hf, num_hidden_layers: 3 }));
    const t: Record<string, Tensor> = { ...raw };
    for (const [k, v] of Object.entries(raw))
      if (k.startsWith('model.layers.1.')) t[k.replace('layers.1.', 'layers.2.')] = v;
    await writeSafetensors(join(dir, 'model.safetensors'), t);
    const seen: { block: number; blocks: number }[] = [];
    await loadModel(dir, { onProgress: (e) => seen.push({ ...e }) });
    expect(seen).toEqual([1, 2, 3].map((block) => ({ block, blocks: 3 })));
    // aborted before the call: nothing is read
    const reason = new Error('stop');
    await expect(loadModel(dir, { signal: AbortSignal.abort(reason) })).rejects.toMatchObject({
      code: 'E_ABORTED',
      cause: reason,
    });
    // aborted from a progress callback: the next tensor read stops the load
    const ac = new AbortController();
    const progress: number[] = [];
    const load = loadModel(dir, {
      signal: ac.signal,
      onProgress: ({ block }) => {
        progress.push(block);
        if (block === 1) ac.abort();
      },
    });
    await expect(load).rejects.toThrow(/E_ABORTED: loading was aborted/);
    expect(progress).toEqual([1]);
    // inside a block: a signal that turns aborted at its 6th check (before block 0's second weight) stops the load there
    let checks = 0;
    const late = {
      get aborted() {
        return ++checks >= 6;
      },
      reason: 'late',
    } as unknown as AbortSignal;
    const early: number[] = [];
    await expect(
      loadModel(dir, { signal: late, onProgress: ({ block }) => early.push(block) }),
    ).rejects.toMatchObject({
      code: 'E_ABORTED',
    });
    expect(checks).toBe(6);
    expect(early).toEqual([]);
  });

  it('a Caldera checkpoint: compressed layers run fused and equal Decomposition.apply inside the model', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-ckpt-'));
    await writeFile(join(dir, 'config.json'), JSON.stringify(hf));
    const tensors: Record<string, Tensor> = {};
    for (const [k, v] of Object.entries(raw)) tensors[k] = cast(v, 'f16');
    const layers: Record<string, CalderaLayerMeta> = {};
    const decomps = new Map<string, ReturnType<typeof caldera>>();
    for (const name of ['model.layers.0.self_attn.q_proj', 'model.layers.1.mlp.down_proj']) {
      const d = caldera(raw[`${name}.weight`]!, null, { rank: 4, outerIters: 1, lplrIters: 1 });
      const { tensors: ct, meta } = toCheckpointTensors(name, d);
      delete tensors[`${name}.weight`];
      Object.assign(tensors, ct);
      layers[name] = meta;
      decomps.set(name, d);
    }
    await writeSafetensors(join(dir, 'model.safetensors'), tensors);
    const meta = calderaCheckpointMeta(layers);
    await writeFile(join(dir, 'caldera.json'), JSON.stringify(meta));
    const { model, calderaMeta } = await loadModel(dir);
    expect(Object.keys(calderaMeta!.layers)).toHaveLength(2);
    // reference: the same model with those layers evaluated by Decomposition.apply
    const ref = (await loadModel(dir)).model;
    for (const [name, d] of decomps) {
      expect(model.linear(name)).toBeInstanceOf(CalderaLinear);
      const apply: Linear = {
        inFeatures: d.shape[1],
        outFeatures: d.shape[0],
        weightBytes: 0,
        forward: (x, rows) => applyDecomposition(d, x, rows),
      };
      ref.setLinear(name, apply);
    }
    for (const n of [1, tokens.length]) {
      const a = model.forward(tokens.slice(0, n));
      const b = ref.forward(tokens.slice(0, n));
      // checkpoint codes fold g into the scales (f32 products in another order): 1e-3 absolute on logits ~10
      for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(1e-3);
    }
    // a malformed caldera.json is an E_FORMAT error naming the file and the entry, before any tensor is read
    const broken = JSON.parse(JSON.stringify(meta)) as typeof meta;
    delete (broken.layers['model.layers.1.mlp.down_proj'] as { padded?: unknown }).padded;
    await writeFile(join(dir, 'caldera.json'), JSON.stringify(broken));
    await expect(loadModel(dir)).rejects.toThrow(
      /E_FORMAT.*caldera\.json: layers\["model\.layers\.1\.mlp\.down_proj"\]\.padded/,
    );
    await writeFile(join(dir, 'caldera.json'), JSON.stringify(meta));
    delete tensors['model.layers.1.mlp.down_proj.caldera.Q'];
    await writeSafetensors(join(dir, 'model.safetensors'), tensors);
    await expect(loadModel(dir)).rejects.toThrow(/E_MISSING.*down_proj\.caldera\.Q/);
  });

  it("a compressed layer's mistyped, misshaped or non-finite tensor fails naming it, as does an integer dense weight", async () => {
    const name = 'model.layers.0.self_attn.q_proj';
    const d = caldera(raw[`${name}.weight`]!, null, { rank: 4, outerIters: 1, lplrIters: 1 });
    const { tensors: ct, meta: layer } = toCheckpointTensors(name, d);
    const base: Record<string, Tensor> = { ...raw, ...ct };
    delete base[`${name}.weight`];
    const write = async (patch: Record<string, Tensor>, layerPatch: Partial<CalderaLayerMeta> = {}) => {
      const dir = await mkdtemp(join(tmpdir(), 'caldera-badpart-'));
      await writeFile(join(dir, 'config.json'), JSON.stringify(hf));
      await writeSafetensors(join(dir, 'model.safetensors'), { ...base, ...patch });
      const meta = calderaCheckpointMeta({ [name]: { ...layer, ...layerPatch } });
      await writeFile(join(dir, 'caldera.json'), JSON.stringify(meta));
      return dir;
    };
    const p = `${name}.caldera.`;
    expect((await loadModel(await write({}))).model.linear(name)).toBeInstanceOf(CalderaLinear);
    // the sign vector's bytes as u8: a RangeError before
    const su = ct[`${p}SU`]!;
    const suBytes = new Uint8Array(su.data.buffer, su.data.byteOffset, su.data.byteLength).slice();
    await expect(
      loadModel(await write({ [`${p}SU`]: tensor('u8', [suBytes.length], suBytes) })),
    ).rejects.toThrow(/E_FORMAT.*q_proj\.caldera\.SU' is u8 \[64\], expected f16 \[32\]/);
    // a scale of another dtype or a NaN scale: loaded as garbage before
    const scaleU8 = tensor('u8', [4], new Uint8Array(new Float32Array([0.5]).buffer));
    const u8Scale = await write({ [`${p}Q_scale`]: scaleU8 });
    await expect(loadModel(u8Scale)).rejects.toThrow(
      `E_FORMAT: ${u8Scale}: tensor '${p}Q_scale' is u8 [4], expected f32 [1]`,
    );
    await expect(loadModel(await write({ [`${p}L_scale`]: tensor('f32', [1], [NaN]) }))).rejects.toThrow(
      /E_VALUE.*q_proj\.caldera\.L_scale' has a non-finite value/,
    );
    // caldera.json's shape must be the one config.json gives the layer
    // (naming the model's folder, as the loader's other errors do)
    const misshapen = await write({}, { shape: [16, 32] });
    await expect(loadModel(misshapen)).rejects.toThrow(
      `E_SHAPE: ${misshapen}: caldera.json gives layer 'model.layers.0.self_attn.q_proj' shape [16, 32], config.json implies [32, 32]`,
    );
    // a dense weight stored as integers (here the f16 bits read as i16) was cast to f32 code by code
    const dense = cast(raw['model.layers.1.mlp.up_proj.weight']!, 'f16');
    const asI16 = tensor('i16', dense.shape, new Int16Array(dense.data.buffer));
    await expect(loadModel(await write({ 'model.layers.1.mlp.up_proj.weight': asI16 }))).rejects.toThrow(
      /E_DTYPE.*layers\.1\.mlp\.up_proj\.weight' is i16, expected a float dtype/,
    );
  });

  it("caldera.json's layer entries: one that names no linear layer of the model, or an unknown codec, is E_FORMAT naming it", async () => {
    const name = 'model.layers.0.self_attn.q_proj';
    const d = caldera(raw[`${name}.weight`]!, null, { rank: 4, outerIters: 1, lplrIters: 1 });
    const { tensors: ct, meta: layer } = toCheckpointTensors(name, d);
    const t: Record<string, Tensor> = { ...raw, ...ct };
    delete t[`${name}.weight`];
    const dir = await mkdtemp(join(tmpdir(), 'caldera-stray-'));
    await writeFile(join(dir, 'config.json'), JSON.stringify(hf));
    await writeSafetensors(join(dir, 'model.safetensors'), t);
    const withLayers = (layers: Record<string, CalderaLayerMeta>) =>
      writeFile(join(dir, 'caldera.json'), JSON.stringify(calderaCheckpointMeta(layers)));
    await withLayers({ [name]: layer });
    expect((await readModelLayout(dir)).calderaMeta!.layers[name]).toBeDefined();
    // a block past num_hidden_layers (2) and a misspelt projection: ignored before, the model loaded as if absent
    await withLayers({ [name]: layer, 'model.layers.7.self_attn.q_proj': layer });
    await expect(readModelLayout(dir)).rejects.toThrow(
      /^E_FORMAT: .*caldera\.json lists layer 'model\.layers\.7\.self_attn\.q_proj', which is not a linear layer of the model/,
    );
    await withLayers({ [name]: layer, 'model.layers.0.mlp.upproj': layer });
    await expect(loadModel(dir)).rejects.toThrow(
      /layer 'model\.layers\.0\.mlp\.upproj', which is not a linear layer/,
    );
    // an unknown codec: "unknown codec 'e8p99'" from the decoder before, naming neither the file nor the layer
    await withLayers({ [name]: { ...layer, codecs: { ...layer.codecs, Q: 'e8p99' } } });
    await expect(readModelLayout(dir)).rejects.toThrow(
      /^E_FORMAT: .*caldera\.json: layers\["model\.layers\.0\.self_attn\.q_proj"\]\.codecs\.Q is unknown codec 'e8p99'/,
    );
    // a rank or hadamard flag edited while the tensors stay: they were ignored (other weights, other tokens)
    for (const edit of [{ rank: 0 }, { hadamard: false }]) {
      await withLayers({ [name]: { ...layer, ...edit } });
      await expect(loadModel(dir), JSON.stringify(edit)).rejects.toThrow(
        new RegExp(
          `^E_FORMAT: .*caldera-stray-\\w+: the tensors do not match caldera\\.json: ${name.replaceAll('.', '\\.')}\\.caldera\\.${
            'rank' in edit ? 'L' : 'SU'
          } is not part of layer '.*' as caldera\\.json describes it \\(rank ${edit.rank ?? layer.rank}, `,
        ),
      );
    }
  });

  it('CALDERA tensors without caldera.json are an E_FORMAT error saying so', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-nometa-'));
    await writeFile(join(dir, 'config.json'), JSON.stringify(hf));
    const t: Record<string, Tensor> = { ...raw };
    delete t['model.layers.0.self_attn.q_proj.weight'];
    t['model.layers.0.self_attn.q_proj.caldera.Q'] = tensor('u8', [4], new Uint8Array(4));
    await writeSafetensors(join(dir, 'model.safetensors'), t);
    await expect(loadModel(dir)).rejects.toThrow(
      /E_FORMAT.*caldera-nometa-.*CALDERA tensors of 1 compressed layer .*q_proj\.caldera\.Q.*no caldera\.json/,
    );
  });

  it('a directory that is not a string (null, undefined) is E_VALUE, not a TypeError; null options are none', async () => {
    for (const [dir, got] of [
      [null, 'null'],
      [undefined, 'undefined'],
      [{}, 'an object'],
      ['', 'an empty string'],
    ] as const) {
      await expect(loadModel(dir as unknown as string)).rejects.toThrow(
        expect.objectContaining({
          code: 'E_VALUE',
          message: `E_VALUE: loadModel: the model directory must be a path (a non-empty string), got ${got}`,
        }),
      );
      await expect(loadTokenizer(dir as unknown as string)).rejects.toMatchObject({ code: 'E_VALUE' });
    }
    const dir = await mkdtemp(join(tmpdir(), 'caldera-nullopts-'));
    await writeFile(join(dir, 'config.json'), JSON.stringify(hf));
    await writeSafetensors(join(dir, 'model.safetensors'), raw);
    const { model } = await loadModel(dir, null as unknown as object);
    expect(model.forward(tokens).every(Number.isFinite)).toBe(true);
    // a callback that is not a function: E_VALUE before anything is read (a TypeError after block 0 before)
    for (const key of ['onProgress', 'onPlan'])
      await expect(loadModel(dir, { [key]: 3 })).rejects.toThrow(
        `E_VALUE: loadModel: ${key} must be a function, got a number`,
      );
    await expect(loadModel(dir, { kernelArenas: 'no' as never })).rejects.toThrow(
      "E_VALUE: loadModel: kernelArenas must be true or false, got 'no'",
    );
    // loadModel(dir, signal): the signal would abort nothing
    await expect(loadModel(dir, AbortSignal.abort() as never)).rejects.toThrow(
      'E_VALUE: loadModel: options must be an object such as { signal }, got an AbortSignal',
    );
    // a file where the directory belongs (a weights file, a llama2.c .bin): said so, not Node's ENOTDIR alone
    const file = join(dir, 'model.safetensors');
    for (const load of [loadModel, loadTokenizer])
      await expect(load(file)).rejects.toThrow(
        expect.objectContaining({
          code: 'E_IO',
          message: expect.stringMatching(
            /^E_IO: cannot read .*model\.safetensors\/\w+\.json: .*model\.safetensors is a file, not a model directory$/,
          ),
        }),
      );
  });

  it("a dtype other than 'auto', 'f32' or 'f16' is E_VALUE listing them, in every loader, before any file is read", async () => {
    // before: loadModel(dir, { dtype: 'f8' }) loaded silently as 'auto'
    const msg = (fn: string, got: string) =>
      `E_VALUE: ${fn}: dtype must be 'auto', 'f32' or 'f16', got ${got}`;
    const nowhere = '/nonexistent/caldera-model'; // the check comes before any read: no E_IO
    const bad = { dtype: 'f8' as never };
    await expect(loadModel(nowhere, bad)).rejects.toThrow(msg('loadModel', "'f8'"));
    await expect(loadModel(nowhere, { dtype: 16 as never })).rejects.toThrow(msg('loadModel', '16'));
    await expect(readModelLayout(nowhere, bad)).rejects.toThrow(msg('readModelLayout', "'f8'"));
    await expect(BlockLazyRunner.open(nowhere, bad)).rejects.toThrow(msg('BlockLazyRunner.open', "'f8'"));
    await expect(loadLlama2c(nowhere, { dtype: 'bf16' as never })).rejects.toThrow(
      msg('loadLlama2c', "'bf16'"),
    );
    const fetch = () => Promise.reject(new Error('no fetch expected'));
    await expect(loadModelFromUrl('http://host/m/', { ...bad, fetch })).rejects.toThrow(
      msg('loadModelFromUrl', "'f8'"),
    );
    // a store whose every method fails: nothing is read before the dtype is refused
    const unread = () => {
      throw new Error('nothing should be read');
    };
    const store = { names: unread, has: unread, tensorInfo: unread, readTensor: unread } as never;
    await expect(loadModelFromStore({ config: hf, calderaMeta: null, store }, bad)).rejects.toThrow(
      msg('loadModelFromStore', "'f8'"),
    );
    // undefined is the default
    const dir = await mkdtemp(join(tmpdir(), 'caldera-dtype-'));
    await writeFile(join(dir, 'config.json'), JSON.stringify(hf));
    await writeSafetensors(join(dir, 'model.safetensors'), raw);
    expect((await loadModel(dir, { dtype: undefined })).config.numLayers).toBe(2);
  });

  it('readModelLayout: the structure from the headers alone, checked as loadModel checks it, which it runs first', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-layout-'));
    await writeFile(join(dir, 'config.json'), JSON.stringify(hf));
    const name = 'model.layers.0.self_attn.q_proj';
    const d = caldera(raw[`${name}.weight`]!, null, { rank: 4, outerIters: 1, lplrIters: 1 });
    const { tensors: ct, meta: layer } = toCheckpointTensors(name, d);
    const t: Record<string, Tensor> = { ...raw, ...ct };
    delete t[`${name}.weight`];
    t['model.layers.1.mlp.up_proj.weight'] = cast(raw['model.layers.1.mlp.up_proj.weight']!, 'bf16');
    // a NaN weight: the layout does not read values, the loader does
    t['model.layers.1.mlp.gate_proj.weight'] = tensor('f32', [40, 32], new Float32Array(40 * 32).fill(NaN));
    await writeSafetensors(join(dir, 'model.safetensors'), t);
    await writeFile(join(dir, 'caldera.json'), JSON.stringify(calderaCheckpointMeta({ [name]: layer })));
    const layout = await readModelLayout(dir);
    expect(layout.config).toEqual(cfg);
    expect(Object.keys(layout.calderaMeta!.layers)).toEqual([name]);
    expect(layout.embed).toEqual({
      name: 'model.embed_tokens.weight',
      dtype: 'f32',
      shape: [30, 32],
      bytes: 30 * 32 * 4,
    });
    expect(layout.lmHead.name).toBe('lm_head.weight');
    expect(layout.norm.name).toBe('model.norm.weight');
    expect(layout.linears.map((l) => l.name)).toEqual(
      [0, 1].flatMap((b) => blockLinearNames(b).map((x) => x.name)),
    );
    const q = layout.linears[0]!;
    expect(q).toMatchObject({
      name,
      outFeatures: 32,
      inFeatures: 32,
      weight: null,
      caldera: layer,
      bias: null,
    });
    expect(q.bytes).toBe(Math.round((layer.bitsPerWeight * 32 * 32) / 8));
    const up = layout.linears.find((l) => l.name === 'model.layers.1.mlp.up_proj')!;
    expect(up).toMatchObject({
      caldera: null,
      weight: { dtype: 'bf16', shape: [40, 32] },
      bytes: 40 * 32 * 2,
    });
    // as held: the 16-bit (or f32) matrix–vector kernel's region in the model's arena (memory-plan.test.ts measures it)
    expect(up.footprint).toEqual(DenseF16Linear.footprint(40, 32, false));
    expect(up.memoryBytes).toBe(footprintBytes(up.footprint, true));
    const wide = (await readModelLayout(dir, { dtype: 'f32' })).linears.find((l) => l.name === up.name)!;
    expect(wide.footprint).toEqual(DenseLinear.footprint(40, 32, false));
    expect(wide.memoryBytes).toBe(footprintBytes(wide.footprint, true));
    expect(q.footprint).toEqual(CalderaLinear.footprint(layer, false));
    expect(q.memoryBytes).toBe(footprintBytes(q.footprint, true));
    await expect(loadModel(dir)).rejects.toThrow(/E_VALUE.*layers\.1\.mlp\.gate_proj\.weight/);
    // a structural fault in the last block fails before any tensor is read: the signal is checked once, at the start
    t['model.layers.1.mlp.gate_proj.weight'] = raw['model.layers.1.mlp.gate_proj.weight']!;
    t['model.layers.1.mlp.down_proj.weight'] = raw['model.layers.1.mlp.up_proj.weight']!;
    await writeSafetensors(join(dir, 'model.safetensors'), t);
    const message = /E_SHAPE.*layers\.1\.mlp\.down_proj\.weight' has shape \[40, 32\], expected \[32, 40\]/;
    await expect(readModelLayout(dir)).rejects.toThrow(message);
    let checks = 0;
    const counting = {
      get aborted() {
        checks++;
        return false;
      },
    } as unknown as AbortSignal;
    await expect(loadModel(dir, { signal: counting })).rejects.toThrow(message);
    expect(checks).toBe(1);
    await expect(readModelLayout(null as unknown as string)).rejects.toThrow(
      'E_VALUE: readModelLayout: the model directory must be a path (a non-empty string), got null',
    );
  });

  it('a tensor of the wrong shape is an E_SHAPE error naming it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-shape-'));
    await writeFile(join(dir, 'config.json'), JSON.stringify(hf));
    const bad = {
      ...raw,
      'model.layers.1.self_attn.k_proj.weight': raw['model.layers.1.self_attn.q_proj.weight']!,
    };
    await writeSafetensors(join(dir, 'model.safetensors'), bad);
    await expect(loadModel(dir)).rejects.toThrow(
      /E_SHAPE.*layers\.1\.self_attn\.k_proj.*\[32, 32\].*\[16, 32\]/,
    );
  });

  it('a config.json that is a FIFO (named pipe) is E_IO saying so, not a read that waits for a writer for ever', async (ctx) => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-fifo-'));
    try {
      execFileSync('mkfifo', [join(dir, 'config.json')]);
    } catch (e) {
      if ((e as { code?: string }).code === 'ENOENT') ctx.skip('mkfifo is not available on this system');
      throw e;
    }
    await expect(loadModel(dir)).rejects.toThrow(
      `E_IO: ${join(dir, 'config.json')} is a FIFO (named pipe), not a JSON file`,
    );
  });

  it('Qwen2: q/k/v biases are loaded and added; a missing bias is E_MISSING', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-qwen-'));
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...hf, architectures: ['Qwen2ForCausalLM'] }));
    await writeSafetensors(join(dir, 'model.safetensors'), raw);
    await expect(loadModel(dir)).rejects.toThrow(/E_MISSING.*layers\.0\.self_attn\.q_proj\.bias/);
    const withBias: Record<string, Tensor> = { ...raw };
    for (let b = 0; b < 2; b++)
      for (const [p, m] of [
        ['q', 32],
        ['k', 16],
        ['v', 16],
      ] as const)
        withBias[`model.layers.${b}.self_attn.${p}_proj.bias`] = tensor(
          'f32',
          [m],
          new Float32Array(m).fill(0.5),
        );
    await writeSafetensors(join(dir, 'model.safetensors'), withBias);
    const { model } = await loadModel(dir);
    const y = model.linear('model.layers.1.self_attn.k_proj').forward(new Float32Array(32), 1);
    expect(Array.from(y)).toEqual(new Array(16).fill(0.5));
    // Llama's attention_bias gives o_proj one too, and mlp_bias gate/up/down: missing, they were left out silently
    for (const [patch, missing, why] of [
      [{ attention_bias: true }, 'model.layers.0.self_attn.o_proj.bias', 'attention_bias'],
      [{ mlp_bias: true }, 'model.layers.0.mlp.gate_proj.bias', 'mlp_bias'],
    ] as const) {
      await writeFile(join(dir, 'config.json'), JSON.stringify({ ...hf, ...patch }));
      await expect(loadModel(dir)).rejects.toThrow(
        `E_MISSING: ${dir}: tensor '${missing}' is missing (config.json: ${why})`,
      );
    }
  });

  it('says why the weights are not found: a PyTorch .bin only, names without (or with twice) the model. prefix, integer weights', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-names-'));
    await writeFile(join(dir, 'config.json'), JSON.stringify(hf));
    await writeFile(join(dir, 'pytorch_model.bin'), 'not read');
    await expect(loadModel(dir)).rejects.toThrow(
      `E_UNSUPPORTED: ${dir}: has pytorch_model.bin but no model.safetensors: PyTorch checkpoints are not read`,
    );
    for (const rename of [(n: string) => n.replace(/^model\./, ''), (n: string) => `model.${n}`]) {
      const renamed = Object.fromEntries(Object.entries(raw).map(([n, t]) => [rename(n), t]));
      await writeSafetensors(join(dir, 'model.safetensors'), renamed);
      await expect(loadModel(dir)).rejects.toThrow(
        /its tensor names need the prefix 'model\.' exactly once\)$/,
      );
    }
    const q = 'model.layers.0.self_attn.q_proj.weight';
    const int8 = tensor('i8', raw[q]!.shape, new Int8Array(raw[q]!.data.length));
    await writeSafetensors(join(dir, 'model.safetensors'), { ...raw, [q]: int8 });
    await expect(loadModel(dir)).rejects.toThrow(
      `E_DTYPE: ${dir}: tensor '${q}' is i8, expected a float dtype (f64, f32, f16, bf16) (a quantized checkpoint?`,
    );
  });

  it('as transformers builds it: a bias the config does not declare is not applied; no lm_head without a tied config is E_MISSING', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-stray-'));
    await writeFile(join(dir, 'config.json'), JSON.stringify(hf));
    await writeSafetensors(join(dir, 'model.safetensors'), raw);
    const plain = (await loadModel(dir)).model.forward(tokens);
    // o_proj (Llama without attention_bias, and Qwen2, which has q/k/v biases only) and gate_proj (no mlp_bias):
    // transformers builds these layers without a bias and ignores the tensors; they were added (logits off by ~3)
    const stray: Record<string, Tensor> = { ...raw };
    for (let b = 0; b < 2; b++) {
      stray[`model.layers.${b}.self_attn.o_proj.bias`] = tensor('f32', [32], rng(32, b));
      stray[`model.layers.${b}.mlp.gate_proj.bias`] = tensor('f32', [40], rng(40, 10 + b));
    }
    await writeSafetensors(join(dir, 'model.safetensors'), stray);
    expect((await loadModel(dir)).model.forward(tokens)).toEqual(plain);
    // untied (tie_word_embeddings false or absent: transformers' default) without lm_head: transformers gives such a
    // model a random head; the embedding was used without a word
    const { 'lm_head.weight': _, ...headless } = raw;
    await writeSafetensors(join(dir, 'model.safetensors'), headless);
    for (const config of [hf, { ...hf, tie_word_embeddings: undefined }]) {
      await writeFile(join(dir, 'config.json'), JSON.stringify(config));
      await expect(loadModel(dir)).rejects.toThrow(
        `E_MISSING: ${dir}: missing tensor lm_head.weight, and config.json does not tie the head to the embedding`,
      );
    }
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...hf, tie_word_embeddings: true }));
    expect((await loadModel(dir)).model.forward(tokens)).toEqual(plain); // the head had the embedding's values
  });
});
