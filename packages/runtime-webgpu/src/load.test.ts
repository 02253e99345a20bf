import { describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  serializeSafetensors,
  tensor,
  writeSafetensors,
  type CalderaLayerMeta,
  type Tensor,
} from '@caldera/core';
import { calderaCheckpointMeta } from '@caldera/lowrank';
import * as node from '@caldera/runtime-node';
import type { CalderaDevice } from './device.js';
import { loadModel, loadModelFromBuffer, loadModelFromStore, loadModelFromUrl } from './load.js';
import { WebGpuModel } from './model.js';
import { gpuTitle, testDevice } from './testing/gpu.js';
import { tinyModel } from './testing/tiny-model.js';

const { device: dev, reason } = await testDevice();

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

  it('a weight file cut off mid-download or an abort while it downloads is E_IO / E_ABORTED naming its URL, not a TypeError or DOMException', async () => {
    const { config, tensors, layers } = tinyModel();
    const weights = await serializeSafetensors(tensors);
    const meta = JSON.stringify(calderaCheckpointMeta(layers));
    const controller = new AbortController();
    // config.json and caldera.json whole; model.safetensors: a third of it, then `end` (a network error or an abort)
    const fetchWith = (end: (c: ReadableStreamDefaultController<Uint8Array>) => void) =>
      (async (url: string) => {
        const file = String(url).replace('http://models.test/m/', '');
        if (file !== 'model.safetensors')
          return new Response(file === 'config.json' ? JSON.stringify(config) : meta);
        let sent = false;
        const body = new ReadableStream<Uint8Array>({
          pull(c) {
            if (sent) return end(c);
            sent = true;
            c.enqueue(weights.subarray(0, weights.byteLength / 3));
          },
        });
        return new Response(body, { headers: { 'content-length': String(weights.byteLength) } });
      }) as typeof fetch;
    const dropped = await loadModelFromUrl(d, 'http://models.test/m', {
      fetch: fetchWith((c) => c.error(new TypeError('terminated'))),
      onDownload: () => {},
    }).catch((e: unknown) => e);
    expect(dropped).toMatchObject({
      code: 'E_IO',
      message: 'E_IO: cannot fetch http://models.test/m/model.safetensors: terminated',
    });
    const aborted = await loadModelFromUrl(d, 'http://models.test/m', {
      fetch: fetchWith((c) => {
        controller.abort();
        c.error(new DOMException('This operation was aborted', 'AbortError'));
      }),
      signal: controller.signal,
    }).catch((e: unknown) => e);
    expect(aborted).toMatchObject({
      code: 'E_ABORTED',
      message: /loading was aborted \(fetching http:\/\/models\.test\/m\/model\.safetensors\)/,
    });
  });

  it("a compressed checkpoint served without caldera.json is E_FORMAT naming that URL; a gzip-encoded weight file's progress has no total (its Content-Length counts the encoded bytes)", async () => {
    const { config, tensors, layers } = tinyModel();
    const files: Record<string, Uint8Array | string> = {
      'config.json': JSON.stringify(config),
      'caldera.json': JSON.stringify(calderaCheckpointMeta(layers)),
      'model.safetensors': await serializeSafetensors(tensors),
    };
    const serve = (omit: string, headers: Record<string, string>) =>
      (async (url: string) => {
        const file = String(url).replace('http://models.test/m/', '');
        const body = files[file];
        return body === undefined || file === omit
          ? new Response('not found', { status: 404 })
          : new Response(body as BodyInit, { headers: file.endsWith('.safetensors') ? headers : {} });
      }) as typeof fetch;
    await expect(
      loadModelFromUrl(d, 'http://models.test/m', { fetch: serve('caldera.json', {}) }),
    ).rejects.toMatchObject({
      code: 'E_FORMAT',
      message:
        /CALDERA tensors of 1 compressed layer \(e\.g\. 'model\.layers\.0\.mlp\.up_proj\.caldera\.[A-Za-z_]+'\) but no http:\/\/models\.test\/m\/caldera\.json/,
    });
    // the Response does not decode here: only the header tells the loader that the length is not the body's
    const progress: { bytes: number; total: number | null }[] = [];
    const encodedLength = String(Math.round((files['model.safetensors'] as Uint8Array).byteLength / 3));
    const { model } = await loadModelFromUrl(d, 'http://models.test/m', {
      fetch: serve('', { 'content-encoding': 'gzip', 'content-length': encodedLength }),
      contextLength: 8,
      onDownload: (e) => progress.push(e),
    });
    model.dispose();
    expect(progress.length).toBeGreaterThan(1);
    expect(progress.every((e) => e.total === null)).toBe(true);
    expect(progress.at(-1)!.bytes).toBe((files['model.safetensors'] as Uint8Array).byteLength);
  });

  it("a compressed layer's mistyped or non-finite part is E_FORMAT / E_VALUE naming it, as in runtime-node", async () => {
    const { config, tensors, layers } = tinyModel();
    const p = 'model.layers.0.mlp.up_proj.caldera.';
    const load = async (patch: Record<string, Tensor>) =>
      loadModelFromBuffer(d, {
        config,
        calderaMeta: calderaCheckpointMeta(layers),
        weights: await serializeSafetensors({ ...tensors, ...patch }),
      });
    const su = tensors[`${p}SU`]!;
    const suBytes = new Uint8Array(su.data.buffer, su.data.byteOffset, su.data.byteLength);
    await expect(load({ [`${p}SU`]: tensor('u8', [suBytes.length], suBytes) })).rejects.toThrow(
      /E_FORMAT.*up_proj\.caldera\.SU' is u8 \[64\], expected f16 \[32\]/,
    );
    await expect(load({ [`${p}L_scale`]: tensor('f32', [1], [NaN]) })).rejects.toThrow(
      /E_VALUE.*up_proj\.caldera\.L_scale' has a non-finite value/,
    );
  });

  it("a contextLength past the config's max_position_embeddings is E_VALUE, before anything is uploaded", async () => {
    const { config, tensors, layers } = tinyModel();
    const dir = await mkdtemp(join(tmpdir(), 'caldera-ctx-'));
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...config, max_position_embeddings: 16 }));
    await writeFile(join(dir, 'caldera.json'), JSON.stringify(calderaCheckpointMeta(layers)));
    await writeSafetensors(join(dir, 'model.safetensors'), tensors);
    await expect(
      loadModelFromUrl(d, 'http://models.test/m', { fetch: dirFetch(dir, []), contextLength: 17 }),
    ).rejects.toMatchObject({
      code: 'E_VALUE',
      message: /contextLength 17 exceeds the model's max positions \(16: max_position_embeddings/,
    });
    const { model } = await loadModelFromUrl(d, 'http://models.test/m', { fetch: dirFetch(dir, []) });
    expect(model.contextLength).toBe(16); // the default: min(max_position_embeddings, 2048)
    model.dispose();
    await rm(dir, { recursive: true });
  });
});

describe('loaders given null or undefined for a required argument', () => {
  // the checks run before the device is used: a stand-in device is enough, no adapter needed
  const fake = { device: {} } as unknown as CalderaDevice;
  const store = { names: () => [] } as unknown as Parameters<typeof loadModelFromStore>[1]['store'];
  const fails = async (p: Promise<unknown>, message: string) =>
    expect(p).rejects.toThrow(expect.objectContaining({ code: 'E_VALUE', message: `E_VALUE: ${message}` }));

  it('a dev that is not a CalderaDevice is E_VALUE naming it, not a TypeError', async () => {
    for (const [d, got] of [
      [null, 'null'],
      [undefined, 'undefined'],
      [{}, 'an object without a device'],
    ] as const) {
      const dv = d as unknown as CalderaDevice;
      const must = (fn: string) => `${fn}: dev must be a CalderaDevice (see createDevice), got ${got}`;
      await fails(loadModel(dv, '/m'), must('loadModel'));
      await fails(loadModelFromUrl(dv, 'http://models.test/m/'), must('loadModelFromUrl'));
      await fails(
        loadModelFromBuffer(dv, { config: {}, calderaMeta: null, weights: new Uint8Array(8) }),
        must('loadModelFromBuffer'),
      );
      await fails(
        loadModelFromStore(dv, { config: {}, calderaMeta: null, store }),
        must('loadModelFromStore'),
      );
      expect(() => new WebGpuModel(dv, {} as never, {} as never)).toThrow(must('WebGpuModel'));
    }
  });

  it('a missing directory, URL, source, store, parts, weights or config is E_VALUE naming it', async () => {
    for (const [v, got] of [
      [null, 'null'],
      [undefined, 'undefined'],
    ] as const) {
      await fails(
        loadModel(fake, v as unknown as string),
        `loadModel: the model directory must be a non-empty string, got ${got}`,
      );
      await fails(
        loadModelFromUrl(fake, v as unknown as string),
        `loadModelFromUrl: the base URL must be a non-empty string, got ${got}`,
      );
      await fails(
        loadModelFromStore(fake, v as never),
        `loadModelFromStore: source must be an object, got ${got}`,
      );
      await fails(
        loadModelFromStore(fake, { config: {}, calderaMeta: null, store: v as never }),
        `loadModelFromStore: source.store must be an object, got ${got}`,
      );
      await fails(
        loadModelFromBuffer(fake, v as never),
        `loadModelFromBuffer: parts must be an object, got ${got}`,
      );
      expect(() => new WebGpuModel(fake, v as never, {} as never)).toThrow(
        `E_VALUE: WebGpuModel: config must be an object, got ${got}`,
      );
      expect(() => new WebGpuModel(fake, {} as never, v as never)).toThrow(
        `E_VALUE: WebGpuModel: weights must be an object, got ${got}`,
      );
      await fails(
        loadModelFromBuffer(fake, { config: {}, calderaMeta: null, weights: v as never }),
        'openSafetensors: model.safetensors must be a path, an ArrayBuffer or byte view, a Blob or a ByteSource, ' +
          `got ${got}`,
      );
    }
  });
});
