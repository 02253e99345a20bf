import { build } from 'esbuild';
import { runInNewContext } from 'node:vm';
import { fileURLToPath } from 'node:url';
import { Rng, serializeSafetensors, openSafetensors, tensor, type Tensor } from '@caldera/core';
import { describe, expect, it } from 'vitest';
import { AttentionKernel } from './kernels/attention-kernel.js';
import { generate } from './generate.js';
import { loadModelFromStore } from './load.js';

const srcDir = fileURLToPath(new URL('.', import.meta.url));

/** A small Llama config (HF `config.json`), wide enough that the WebAssembly kernels run. */
const CONFIG = {
  architectures: ['LlamaForCausalLM'],
  hidden_size: 64,
  intermediate_size: 160,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  num_hidden_layers: 2,
  vocab_size: 96,
  max_position_embeddings: 64,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: false,
};

/** The model's tensors, random (seeded), f32 and f16 (`f16`: the linears, held as 16-bit bits by `dtype` 'auto'). */
function randomTensors(seed: number): Record<string, Tensor> {
  const rng = new Rng(seed);
  const { hidden_size: d, intermediate_size: I, vocab_size: V, num_attention_heads: H } = CONFIG;
  const kv = CONFIG.num_key_value_heads * (d / H);
  const rand = (shape: number[], std: number, mean = 0): Tensor<'f32'> =>
    tensor('f32', shape, rng.fillNormal(new Float32Array(shape.reduce((a, b) => a * b, 1)), mean, std));
  const t: Record<string, Tensor> = {
    'model.embed_tokens.weight': rand([V, d], 1),
    'lm_head.weight': rand([V, d], 0.2),
    'model.norm.weight': rand([d], 0.1, 1),
  };
  for (let b = 0; b < CONFIG.num_hidden_layers; b++) {
    const p = `model.layers.${b}`;
    t[`${p}.input_layernorm.weight`] = rand([d], 0.1, 1);
    t[`${p}.post_attention_layernorm.weight`] = rand([d], 0.1, 1);
    const shapes: Record<string, number[]> = {
      'self_attn.q_proj': [d, d],
      'self_attn.k_proj': [kv, d],
      'self_attn.v_proj': [kv, d],
      'self_attn.o_proj': [d, d],
      'mlp.gate_proj': [I, d],
      'mlp.up_proj': [I, d],
      'mlp.down_proj': [d, I],
    };
    for (const [n, shape] of Object.entries(shapes)) t[`${p}.${n}.weight`] = rand(shape, 0.2);
  }
  return t;
}

const TOKENS = [1, 17, 42, 5, 88, 3, 60];

/** Logits of every position of TOKENS, and runtime-node's greedy `generate` of 8 tokens after them. */
async function run(
  rt: Pick<typeof import('./index.js'), 'loadModelFromStore' | 'generate'>,
  openSafetensorsFn: typeof openSafetensors,
  bytes: Uint8Array,
): Promise<{ logits: number[]; greedy: number[]; dir: string }> {
  const store = await openSafetensorsFn(bytes, 'model.safetensors');
  const { model, dir } = await rt.loadModelFromStore(
    { config: CONFIG, calderaMeta: null, store, label: 'memory' },
    {},
  );
  const logits = Array.from(model.forward(TOKENS));
  const greedy: number[] = [];
  for await (const t of rt.generate(model, TOKENS, { maxTokens: 8, temperature: 0 })) greedy.push(t);
  return { logits, greedy, dir };
}

describe('browser build', () => {
  it('bundles for the browser without Node built-ins, and loads and runs a model from a store in a context without Node globals, as in Node', async () => {
    const out = await build({
      stdin: {
        contents:
          "export * from './index.ts';\nexport { openSafetensors, serializeSafetensors } from '@caldera/core';\n",
        resolveDir: srcDir,
        loader: 'ts',
        sourcefile: 'browser-entry.ts',
      },
      bundle: true,
      platform: 'browser',
      format: 'iife',
      globalName: 'rt',
      write: false,
      logLevel: 'silent',
    });
    const code = out.outputFiles[0]!.text;
    // No Node built-in imported: a static `import … from 'node:…'` fails the build above (esbuild cannot resolve it
    // for the browser), one marked external or required would stay as `__require`/`require("…")`, and a dynamic
    // import with a literal specifier would be resolved by a page's bundler. (The lazy loaders build `node:${name}` at
    // run time, in the Node-only paths; linalg's worker source, a string, requires worker_threads only where
    // `require` exists, and asks `process.getBuiltinModule` only where `process` does.)
    expect(code.match(/__require\(\s*["'][^"']*["']\s*\)/)).toBeNull();
    expect(code.match(/[^"'`\w]require\(\s*["'](node:)?(fs|path|crypto|os|url|stream)\b[^)]*\)/)).toBeNull();
    expect(code.match(/\bimport\(\s*["'](node:)?[a-z_/]+["']\s*\)/)).toBeNull();

    // the same checkpoint bytes for both runs
    const bytes = await serializeSafetensors(randomTensors(7));

    // a browser-like global scope: web APIs only, no process, require, Buffer or setImmediate (generate then yields
    // through a MessageChannel, as in a page)
    const ctx: Record<string, unknown> = { TextEncoder, TextDecoder, Blob, atob, console, MessageChannel };
    runInNewContext(`${code}\nglobalThis.rt = rt;`, ctx);
    expect(ctx.process).toBeUndefined();
    expect(ctx.require).toBeUndefined();
    expect(ctx.Buffer).toBeUndefined();
    expect(ctx.setImmediate).toBeUndefined();
    const rt = ctx.rt as typeof import('./index.js') & {
      openSafetensors: typeof openSafetensors;
      serializeSafetensors: typeof serializeSafetensors;
    };
    // no worker threads in a page's context: a decode pool has none, and nothing is compiled or allocated for it
    const decodePool = await rt.createDecodePool({ threads: 4 });
    expect(decodePool.threads).toBe(1);
    decodePool.dispose();
    // the page's build compiles the same WebAssembly SIMD kernels as Node does here
    expect(rt.AttentionKernel.available()).toBe(true);
    expect(AttentionKernel.available()).toBe(true);
    // bytes made inside the context are the same
    expect(Array.from(await rt.serializeSafetensors(randomTensors(7)))).toEqual(Array.from(bytes));

    const inPage = await run(rt, rt.openSafetensors, bytes);
    const inNode = await run({ loadModelFromStore, generate }, openSafetensors, bytes);
    expect(inPage.dir).toBe('memory');
    expect(inPage.logits.length).toBe(TOKENS.length * CONFIG.vocab_size);
    expect(inPage.logits.every(Number.isFinite)).toBe(true);
    // the same code and kernels on the same bytes: the same floats, bit for bit
    expect(inPage.logits).toEqual(inNode.logits);
    expect(inPage.greedy).toHaveLength(8);
    expect(inPage.greedy).toEqual(inNode.greedy);
  });
});
