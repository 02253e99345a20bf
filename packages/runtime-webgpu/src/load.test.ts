import { describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Rng, tensor, writeSafetensors, type CalderaLayerMeta, type Tensor } from '@caldera/core';
import { caldera, calderaCheckpointMeta, toCheckpointTensors } from '@caldera/lowrank';
import * as node from '@caldera/runtime-node';
import { loadModelFromUrl } from './load.js';
import { gpuTitle, testDevice } from './testing/gpu.js';

const { device: dev, reason } = await testDevice();

/** A random tiny Llama (tied head) with block 0's up_proj compressed, as tensors and caldera.json layers. */
function tinyModel(): {
  config: object;
  tensors: Record<string, Tensor>;
  layers: Record<string, CalderaLayerMeta>;
} {
  const rng = new Rng(31);
  const t: Record<string, Tensor> = {};
  const r = (name: string, shape: number[], std: number, mean = 0) =>
    (t[name] = tensor(
      'f32',
      shape,
      rng.fillNormal(new Float32Array(shape.reduce((a, b) => a * b, 1)), mean, std),
    ));
  r('model.embed_tokens.weight', [30, 32], 1);
  r('model.norm.weight', [32], 0.1, 1);
  for (let b = 0; b < 2; b++) {
    const p = `model.layers.${b}`;
    r(`${p}.input_layernorm.weight`, [32], 0.1, 1);
    r(`${p}.post_attention_layernorm.weight`, [32], 0.1, 1);
    for (const [n, shape] of [
      ['self_attn.q_proj', [32, 32]],
      ['self_attn.k_proj', [16, 32]],
      ['self_attn.v_proj', [16, 32]],
      ['self_attn.o_proj', [32, 32]],
      ['mlp.gate_proj', [48, 32]],
      ['mlp.up_proj', [48, 32]],
      ['mlp.down_proj', [32, 48]],
    ] as const)
      r(`${p}.${n}.weight`, [...shape], 0.2);
  }
  const name = 'model.layers.0.mlp.up_proj';
  const ck = toCheckpointTensors(
    name,
    caldera(t[`${name}.weight`]!, null, { rank: 4, outerIters: 1, lplrIters: 1 }),
  );
  delete t[`${name}.weight`];
  Object.assign(t, ck.tensors);
  const config = {
    architectures: ['LlamaForCausalLM'],
    hidden_size: 32,
    intermediate_size: 48,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 30,
    tie_word_embeddings: true,
  };
  return { config, tensors: t, layers: { [name]: ck.meta } };
}

/** A fetch over a directory (404 for missing files), counting requests. */
function dirFetch(dir: string, seen: string[]): typeof fetch {
  return (async (url: string) => {
    const file = String(url).replace('http://models.test/m/', '');
    seen.push(file);
    try {
      const body = await readFile(join(dir, file));
      // streamed in 4 KiB chunks, as a network delivers it
      let at = 0;
      const stream = new ReadableStream<Uint8Array>({
        pull(controller) {
          if (at >= body.byteLength) controller.close();
          else controller.enqueue(new Uint8Array(body.subarray(at, (at += 4096))));
        },
      });
      return new Response(stream, { headers: { 'content-length': String(body.byteLength) } });
    } catch {
      return new Response('not found', { status: 404 });
    }
  }) as typeof fetch;
}

describe.skipIf(!dev)(gpuTitle('loadModelFromUrl', reason), () => {
  const d = dev!;
  it('a single file and a two-shard checkpoint give the same logits as runtime-node', async () => {
    const { config, tensors, layers } = tinyModel();
    const one = await mkdtemp(join(tmpdir(), 'caldera-url1-'));
    const two = await mkdtemp(join(tmpdir(), 'caldera-url2-'));
    try {
      await writeSafetensors(join(one, 'model.safetensors'), tensors);
      const names = Object.keys(tensors);
      const half = Math.ceil(names.length / 2);
      const weightMap: Record<string, string> = {};
      for (const [i, part] of [names.slice(0, half), names.slice(half)].entries()) {
        const file = `model-0000${i + 1}-of-00002.safetensors`;
        await writeSafetensors(join(two, file), Object.fromEntries(part.map((n) => [n, tensors[n]!])));
        for (const n of part) weightMap[n] = file;
      }
      await writeFile(
        join(two, 'model.safetensors.index.json'),
        JSON.stringify({ metadata: {}, weight_map: weightMap }),
      );
      for (const dir of [one, two]) {
        await writeFile(join(dir, 'config.json'), JSON.stringify(config));
        await writeFile(join(dir, 'caldera.json'), JSON.stringify(calderaCheckpointMeta(layers)));
      }
      const cpu = (await node.loadModel(one)).model;
      const tokens = [1, 29, 3, 3, 17];
      const want = cpu.forward(tokens);
      for (const [dir, files] of [
        [one, ['config.json', 'caldera.json', 'model.safetensors']],
        [two, ['config.json', 'caldera.json', 'model.safetensors', 'model.safetensors.index.json']],
      ] as const) {
        const seen: string[] = [];
        const progress: { file: string; bytes: number; total: number | null }[] = [];
        const { model, calderaMeta } = await loadModelFromUrl(d, 'http://models.test/m', {
          fetch: dirFetch(dir, seen),
          contextLength: 8,
          onDownload: (e) => progress.push(e),
        });
        // download progress of every weight file: from 0, never backwards, ending at its Content-Length
        const weightFiles =
          dir === one
            ? ['model.safetensors']
            : ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
        expect([...new Set(progress.map((e) => e.file))]).toEqual(weightFiles);
        for (const f of weightFiles) {
          const events = progress.filter((e) => e.file === f);
          const size = (await readFile(join(dir, f))).byteLength;
          expect(events[0]!.bytes).toBe(0);
          expect(
            events.every((e, i) => e.total === size && (i === 0 || e.bytes >= events[i - 1]!.bytes)),
          ).toBe(true);
          expect(events.at(-1)!.bytes).toBe(size);
          expect(events.length).toBe(Math.ceil(size / 4096) + 1);
        }
        expect(Object.keys(calderaMeta!.layers)).toEqual(['model.layers.0.mlp.up_proj']);
        expect(seen.slice(0, files.length)).toEqual(files);
        if (dir === two) expect(seen.filter((s) => s.endsWith('-of-00002.safetensors'))).toHaveLength(2);
        const got = await model.forward(tokens);
        let err = 0;
        for (let i = 0; i < got.length; i++) err = Math.max(err, Math.abs(got[i]! - want[i]!));
        // same weights, f32 on both sides: 1e-4 absolute on logits of size ~1–10
        expect(err).toBeLessThan(1e-4);
        model.dispose();
      }
      // the memory plan counts every buffer exactly as uploaded
      let planned = 0;
      const loaded = await loadModelFromUrl(d, 'http://models.test/m', {
        fetch: dirFetch(one, []),
        contextLength: 8,
        onPlan: (p) => (planned = p.weightBytes),
      });
      expect(planned).toBe(loaded.model.weightBytes);
      loaded.model.dispose();
      // a caldera.json that breaks the format (here a layer without ftRank) is an E_FORMAT naming the URL and the
      // entry, before any weight is fetched; one that is not JSON names the URL too
      const noFt = JSON.parse(JSON.stringify(layers)) as Record<string, Partial<CalderaLayerMeta>>;
      delete noFt['model.layers.0.mlp.up_proj']!.ftRank;
      await writeFile(
        join(one, 'caldera.json'),
        JSON.stringify({ ...calderaCheckpointMeta(layers), layers: noFt }),
      );
      const fetched: string[] = [];
      await expect(
        loadModelFromUrl(d, 'http://models.test/m', { fetch: dirFetch(one, fetched) }),
      ).rejects.toThrow(
        /E_FORMAT.*http:\/\/models\.test\/m\/caldera\.json: layers\["model\.layers\.0\.mlp\.up_proj"\]\.ftRank/,
      );
      expect(fetched.some((f) => f.endsWith('.safetensors'))).toBe(false);
      await writeFile(join(one, 'caldera.json'), '{"format": "caldera",');
      await expect(loadModelFromUrl(d, 'http://models.test/m', { fetch: dirFetch(one, []) })).rejects.toThrow(
        /E_FORMAT.*http:\/\/models\.test\/m\/caldera\.json: not valid JSON/,
      );
      // a missing config is an E_IO naming the URL
      await expect(
        loadModelFromUrl(d, 'http://models.test/m/', { fetch: dirFetch(join(one, 'nope'), []) }),
      ).rejects.toMatchObject({ code: 'E_IO' });
    } finally {
      await rm(one, { recursive: true, force: true });
      await rm(two, { recursive: true, force: true });
    }
  });
});
