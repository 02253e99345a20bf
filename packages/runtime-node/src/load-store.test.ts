import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  cast,
  openSafetensors,
  serializeSafetensors,
  CalderaError,
  type CalderaLayerMeta,
  type Tensor,
} from '@caldera/core';
import { caldera, calderaCheckpointMeta, toCheckpointTensors } from '@caldera/lowrank';
import { describe, expect, it } from 'vitest';
import { parseModelConfig } from './config.js';
import { CalderaLinear } from './linear.js';
import { loadModel, loadModelFromStore, loadModelFromUrl } from './load.js';
import { randomModel } from './testing/random-model.js';

const hf = {
  architectures: ['LlamaForCausalLM'],
  hidden_size: 32,
  intermediate_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 30,
  tie_word_embeddings: false,
};
const tokens = [2, 9, 29, 4, 4, 17];

/** A small compressed checkpoint (two CALDERA layers, the rest f32: past 64 KiB) as files: name → bytes. */
async function checkpoint(): Promise<Record<string, Uint8Array>> {
  const { raw } = randomModel(parseModelConfig(hf), 8);
  raw['lm_head.weight'] = raw['model.embed_tokens.weight']!;
  const tensors: Record<string, Tensor> = {};
  for (const [k, v] of Object.entries(raw)) tensors[k] = cast(v, 'f32');
  const layers: Record<string, CalderaLayerMeta> = {};
  for (const name of ['model.layers.0.self_attn.q_proj', 'model.layers.1.mlp.down_proj']) {
    const d = caldera(raw[`${name}.weight`]!, null, { rank: 4, outerIters: 1, lplrIters: 1 });
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

/** A fetch over `files` at http://host/m/ that answers Range requests (206 with Content-Range), and 404 otherwise. */
function serve(files: Record<string, Uint8Array>, seen: string[] = []): typeof fetch {
  return (input, init) => {
    const url = String(input);
    const name = url.replace('http://host/m/', '');
    const range = new Headers(init?.headers).get('range');
    seen.push(`${name}${range ? ` ${range}` : ''}`);
    const body = files[name];
    if (!url.startsWith('http://host/m/') || !body)
      return Promise.resolve(new Response('no', { status: 404 }));
    const m = range && /^bytes=(\d+)-(\d+)$/.exec(range);
    if (!m) return Promise.resolve(new Response(body.slice()));
    const first = Number(m[1]);
    const last = Math.min(Number(m[2]), body.length - 1);
    return Promise.resolve(
      new Response(body.slice(first, last + 1), {
        status: 206,
        headers: { 'content-range': `bytes ${first}-${last}/${body.length}` },
      }),
    );
  };
}

describe('loadModelFromStore and loadModelFromUrl', () => {
  it('a compressed checkpoint from an in-memory store and over HTTP gives the logits of loadModel, bit for bit', async () => {
    const files = await checkpoint();
    const dir = await mkdtemp(join(tmpdir(), 'caldera-store-'));
    for (const [f, b] of Object.entries(files)) await writeFile(join(dir, f), b);
    const fromDir = await loadModel(dir);
    const want = Array.from(fromDir.model.forward(tokens));

    const store = await openSafetensors(files['model.safetensors']!, 'model.safetensors');
    const meta: unknown = JSON.parse(new TextDecoder().decode(files['caldera.json']));
    const blocks: number[] = [];
    const fromStore = await loadModelFromStore(
      { config: hf, calderaMeta: meta, store, label: 'in memory' },
      { onProgress: ({ block }) => blocks.push(block) },
    );
    await store.close();
    expect(fromStore.dir).toBe('in memory');
    expect(blocks).toEqual([1, 2]);
    expect(fromStore.config).toEqual(fromDir.config);
    expect(fromStore.calderaMeta).toEqual(fromDir.calderaMeta);
    expect(fromStore.model.linear('model.layers.1.mlp.down_proj')).toBeInstanceOf(CalderaLinear);
    expect(Array.from(fromStore.model.forward(tokens))).toEqual(want);

    const seen: string[] = [];
    const downloads: { file: string; bytes: number }[] = [];
    const fromUrl = await loadModelFromUrl('http://host/m', {
      fetch: serve(files, seen),
      onDownload: ({ file, bytes }) => downloads.push({ file, bytes }),
    });
    expect(files['model.safetensors']!.length).toBeGreaterThan(65536);
    expect(fromUrl.dir).toBe('http://host/m/');
    expect(Array.from(fromUrl.model.forward(tokens))).toEqual(want);
    // the header by Range first, then the whole file once
    expect(seen.filter((s) => s.startsWith('model.safetensors'))).toEqual([
      'model.safetensors bytes=0-65535',
      'model.safetensors',
    ]);
    expect(downloads.at(-1)).toEqual({
      file: 'model.safetensors',
      bytes: files['model.safetensors']!.length,
    });
  });

  it('bad sources are typed errors naming what is wrong', async () => {
    const files = await checkpoint();
    const store = await openSafetensors(files['model.safetensors']!, 'model.safetensors');
    const code = (p: Promise<unknown>) =>
      p.then(
        () => 'resolved',
        (e: unknown) => (e instanceof CalderaError ? e.message : `not a CalderaError: ${String(e)}`),
      );
    // from JavaScript: arguments that are not objects or strings
    expect(await code(loadModelFromStore(null as never))).toMatch(/^E_VALUE: loadModelFromStore: source/);
    expect(await code(loadModelFromStore({ config: hf, calderaMeta: null } as never))).toMatch(
      /^E_VALUE: loadModelFromStore: source\.store/,
    );
    expect(
      await code(loadModelFromStore({ config: hf, calderaMeta: null, store, label: 3 } as never)),
    ).toMatch(/^E_VALUE: loadModelFromStore: source\.label/);
    expect(await code(loadModelFromUrl(undefined as never))).toMatch(
      /^E_VALUE: loadModelFromUrl: the base URL/,
    );
    // a config that is not a model's, named beside the label
    expect(
      await code(loadModelFromStore({ config: 'x', calderaMeta: null, store, label: 'https://a/m/' })),
    ).toMatch(/^E_FORMAT: https:\/\/a\/m\/config\.json: not a JSON object/);
    // compressed codes without caldera.json
    expect(await code(loadModelFromStore({ config: hf, calderaMeta: null, store }))).toMatch(
      /^E_FORMAT: .*caldera\.json/,
    );
    // a malformed caldera.json names the file it was given as
    expect(
      await code(
        loadModelFromStore({
          config: hf,
          calderaMeta: { layers: 1 },
          store,
          calderaMetaFile: 'x/caldera.json',
        }),
      ),
    ).toMatch(/^E_FORMAT: x\/caldera\.json/);
    // an aborted signal, before anything is read
    expect(
      await code(
        loadModelFromStore(
          { config: hf, calderaMeta: null, store },
          { signal: AbortSignal.abort(new Error('stop')) },
        ),
      ),
    ).toMatch(/^E_ABORTED: /);
    await store.close();
    // over HTTP: a missing config is E_IO naming its URL; a missing model file and index too
    expect(await code(loadModelFromUrl('http://host/m/', { fetch: serve({}) }))).toMatch(
      /^E_IO: cannot fetch http:\/\/host\/m\/config\.json: HTTP 404/,
    );
    expect(
      await code(
        loadModelFromUrl('http://host/m/', { fetch: serve({ 'config.json': files['config.json']! }) }),
      ),
    ).toMatch(/^E_IO: cannot fetch http:\/\/host\/m\/model\.safetensors\.index\.json: HTTP 404/);
  });
});
