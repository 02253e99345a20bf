import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  cast,
  openSafetensors,
  parseModelConfig,
  serializeSafetensors,
  tensor,
  writeSafetensors,
  type CalderaLayerMeta,
  type Tensor,
} from '@caldera/core';
import { calderaCheckpointMeta } from '@caldera/lowrank';
import * as node from '@caldera/runtime-node';
import type { CalderaDevice } from './device.js';
import { Kernels } from './kernels/index.js';
import { loadModel, loadModelFromBuffer, loadModelFromStore, loadModelFromUrl, planMemory } from './load.js';
import { WebGpuModel } from './model.js';
import { gpuTitle, ownTestDevice, spyOnCompiles, testDevice } from './testing/gpu.js';
import { tinyModel, tinyModelSource } from './testing/tiny-model.js';

const { device: dev, reason } = await testDevice();

/** One response of {@link dirFetch}: the file, the Range asked for (null: none, or ignored), the body bytes read. */
interface Served {
  file: string;
  range: string | null;
  bytes: number;
}

/**
 * A fetch over a directory (404 for missing files), counting requests in `seen`. With `ranges` it answers a
 * `Range: bytes=a-b` header with a 206 and the `Content-Range` (unless `hideContentRange`: a cross-origin response that
 * does not expose it), else with the whole file; `log` gets each response and the body bytes the client read.
 */
function dirFetch(
  dir: string,
  seen: string[],
  opts: { ranges?: boolean; hideContentRange?: boolean; log?: Served[] } = {},
): typeof fetch {
  return (async (url: string, init?: RequestInit) => {
    const file = String(url).replace('http://models.test/m/', '');
    seen.push(file);
    if (init?.signal?.aborted) throw new DOMException('This operation was aborted', 'AbortError');
    let body: Uint8Array;
    try {
      body = await readFile(join(dir, file));
    } catch {
      return new Response('not found', { status: 404 });
    }
    const asked = new Headers(init?.headers).get('range');
    const m = opts.ranges && asked ? /^bytes=(\d+)-(\d+)$/.exec(asked) : null;
    const headers: Record<string, string> = {};
    let status = 200;
    if (m) {
      const [a, b] = [Number(m[1]), Math.min(Number(m[2]), body.byteLength - 1)];
      if (!opts.hideContentRange) headers['content-range'] = `bytes ${a}-${b}/${body.byteLength}`;
      body = body.subarray(a, b + 1);
      status = 206;
    }
    headers['content-length'] = String(body.byteLength);
    const served: Served = { file, range: m ? asked : null, bytes: 0 };
    opts.log?.push(served);
    // streamed in 4 KiB chunks, as a network delivers it
    let at = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (at >= body.byteLength) return controller.close();
        const chunk = new Uint8Array(body.subarray(at, (at += 4096)));
        served.bytes += chunk.byteLength;
        controller.enqueue(chunk);
      },
    });
    return new Response(stream, { status, headers });
  }) as typeof fetch;
}

/**
 * {@link tinyModel} written to `one` (a single file, with a `__metadata__` that makes its header longer than the
 * loader's first 64 KiB request) and `two` (two shards), each weight file padded past 64 KiB with an unused tensor so
 * that its header is a small part of it; config.json and caldera.json in both.
 */
async function writeUrlModel(one: string, two: string) {
  const { config, tensors, layers } = tinyModel();
  const padded = (i: number) => ({
    [`padding.${i}`]: tensor('u8', [100_000], new Uint8Array(100_000).fill(i)),
  });
  await writeSafetensors(
    join(one, 'model.safetensors'),
    { ...tensors, ...padded(0) },
    {
      metadata: { note: 'x'.repeat(70_000) },
    },
  );
  const names = Object.keys(tensors);
  const half = Math.ceil(names.length / 2);
  const weightMap: Record<string, string> = {};
  for (const [i, part] of [names.slice(0, half), names.slice(half)].entries()) {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    await writeSafetensors(join(two, file), {
      ...Object.fromEntries(part.map((n) => [n, tensors[n]!])),
      ...padded(i + 1),
    });
    for (const n of [...part, `padding.${i + 1}`]) weightMap[n] = file;
  }
  await writeFile(
    join(two, 'model.safetensors.index.json'),
    JSON.stringify({ metadata: {}, weight_map: weightMap }),
  );
  for (const dir of [one, two]) {
    await writeFile(join(dir, 'config.json'), JSON.stringify(config));
    await writeFile(join(dir, 'caldera.json'), JSON.stringify(calderaCheckpointMeta(layers)));
  }
  return { layers };
}

/** 8 + the header length of a safetensors file. */
const headerEnd = (bytes: Uint8Array) =>
  8 + Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));

describe.skipIf(!dev)(gpuTitle('loadModelFromUrl', reason), () => {
  const d = dev!;
  it('a single file and a two-shard checkpoint give the same logits as runtime-node, with or without Range requests', async () => {
    const one = await mkdtemp(join(tmpdir(), 'caldera-url1-'));
    const two = await mkdtemp(join(tmpdir(), 'caldera-url2-'));
    try {
      const { layers } = await writeUrlModel(one, two);
      const cpu = (await node.loadModel(one)).model;
      const tokens = [1, 29, 3, 3, 17];
      const want = cpu.forward(tokens);
      // a server that ignores Range; one that honours it; one whose Content-Range the client cannot read (CORS)
      for (const serve of [{}, { ranges: true }, { ranges: true, hideContentRange: true }])
        for (const [dir, files] of [
          [one, ['config.json', 'caldera.json', 'model.safetensors']],
          [two, ['config.json', 'caldera.json', 'model.safetensors', 'model.safetensors.index.json']],
        ] as const) {
          const seen: string[] = [];
          const log: Served[] = [];
          const progress: { file: string; bytes: number; total: number | null }[] = [];
          const { model, calderaMeta } = await loadModelFromUrl(d, 'http://models.test/m', {
            fetch: dirFetch(dir, seen, { ...serve, log }),
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
            const bytes = await readFile(join(dir, f));
            const size = bytes.byteLength;
            expect(events[0]!.bytes).toBe(0);
            expect(
              events.every((e, i) => e.total === size && (i === 0 || e.bytes >= events[i - 1]!.bytes)),
            ).toBe(true);
            expect(events.at(-1)!.bytes).toBe(size);
            expect(events.length).toBe(Math.ceil(size / 4096) + 1);
            // the whole file once; with Range, first its header (the first 64 KiB, then the rest of a longer one)
            const end = headerEnd(bytes);
            const served = log.filter((s) => s.file === f);
            expect(served).toEqual(
              !('ranges' in serve)
                ? [{ file: f, range: null, bytes: size }]
                : end > 65536
                  ? [
                      { file: f, range: 'bytes=0-65535', bytes: 65536 },
                      { file: f, range: `bytes=65536-${end - 1}`, bytes: end - 65536 },
                      { file: f, range: null, bytes: size },
                    ]
                  : [
                      { file: f, range: 'bytes=0-65535', bytes: 65536 },
                      { file: f, range: null, bytes: size },
                    ],
            );
          }
          expect(Object.keys(calderaMeta!.layers)).toEqual(['model.layers.0.mlp.up_proj']);
          expect(seen.slice(0, files.length)).toEqual(files);
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

  it("memory is planned from the headers alone: a model the device cannot hold, or one that onPlan refuses, fails having fetched only the weight files' headers", async () => {
    const one = await mkdtemp(join(tmpdir(), 'caldera-plan1-'));
    const two = await mkdtemp(join(tmpdir(), 'caldera-plan2-'));
    try {
      await writeUrlModel(one, two);
      // a device whose storage bindings are smaller than the model's buffers (the embedding: 3840 bytes)
      const small: CalderaDevice = { ...d, maxStorageBinding: 1024 };
      const refused = new Error('more memory than this page allows');
      // too large for the device; refused by onPlan (throws); aborted in onPlan
      const cases: { dev: CalderaDevice; refuse?: true; abortInPlan?: true; error: Error | object }[] = [
        { dev: small, error: { code: 'E_DEVICE', message: /the model does not fit this device/ } },
        { dev: d, refuse: true, error: refused },
        { dev: d, abortInPlan: true, error: { code: 'E_ABORTED', message: /loading was aborted/ } },
      ];
      for (const dir of [one, two])
        for (const ranges of [true, false])
          for (const c of cases) {
            const log: Served[] = [];
            const progress: unknown[] = [];
            const controller = new AbortController();
            let planned = 0;
            const err = await loadModelFromUrl(c.dev, 'http://models.test/m', {
              fetch: dirFetch(dir, [], { ranges, log }),
              contextLength: 8,
              onDownload: (e) => progress.push(e),
              onPlan: (p) => {
                planned++;
                if (c.abortInPlan) controller.abort();
                if (c.refuse && p.weightBytes > 0) throw refused;
              },
              ...(c.abortInPlan ? { signal: controller.signal } : {}),
            }).catch((e: unknown) => e);
            if (c.error instanceof Error) expect(err).toBe(c.error);
            else expect(err).toMatchObject(c.error);
            expect(planned).toBe(1);
            const weightFiles = [
              ...new Set(log.map((s) => s.file).filter((f) => f.endsWith('.safetensors'))),
            ];
            expect(weightFiles).toHaveLength(dir === one ? 1 : 2);
            for (const f of weightFiles) {
              const bytes = await readFile(join(dir, f));
              const served = log.filter((s) => s.file === f);
              if (ranges) {
                // only the header was asked for and read: the first 64 KiB, and the rest of a longer header
                expect(served.every((s) => s.range !== null)).toBe(true);
                const read = served.reduce((n, s) => n + s.bytes, 0);
                expect(read).toBe(Math.max(65536, headerEnd(bytes)));
                expect(read).toBeLessThan(bytes.byteLength);
              } else {
                // a server that ignores Range: each file downloaded once, whole, before the plan
                expect(served).toEqual([{ file: f, range: null, bytes: bytes.byteLength }]);
              }
            }
            expect(progress.length > 0).toBe(!ranges);
          }
    } finally {
      await rm(one, { recursive: true, force: true });
      await rm(two, { recursive: true, force: true });
    }
  });

  it('a weight file cut off mid-download, an abort while it downloads, or a file that changes between its header request and its download is E_IO / E_ABORTED naming its URL, not a TypeError or DOMException', async () => {
    const { config, tensors, layers } = tinyModel();
    // padded past the loader's first 64 KiB request, so that with Range the header comes before the download
    const padding = (fill: number) => ({
      padding: tensor('u8', [100_000], new Uint8Array(100_000).fill(fill)),
    });
    const weights = await serializeSafetensors({ ...tensors, ...padding(0) }, { metadata: { v: '1' } });
    const meta = JSON.stringify(calderaCheckpointMeta(layers));
    // config.json and caldera.json whole; model.safetensors: with `ranges` a Range request gets its bytes (206); a
    // request for all of it gets a third of `whole`, then `end` (a network error or an abort)
    const fetchWith = (
      ranges: boolean,
      end: (c: ReadableStreamDefaultController<Uint8Array>) => void,
      whole = weights,
    ) =>
      (async (url: string, init?: RequestInit) => {
        const file = String(url).replace('http://models.test/m/', '');
        if (file !== 'model.safetensors')
          return new Response(file === 'config.json' ? JSON.stringify(config) : meta);
        const range = /^bytes=(\d+)-(\d+)$/.exec(new Headers(init?.headers).get('range') ?? '');
        if (ranges && range) {
          const [a, b] = [Number(range[1]), Math.min(Number(range[2]), weights.byteLength - 1)];
          return new Response(weights.slice(a, b + 1), {
            status: 206,
            headers: { 'content-range': `bytes ${a}-${b}/${weights.byteLength}` },
          });
        }
        let sent = false;
        const body = new ReadableStream<Uint8Array>({
          pull(c) {
            if (sent) return end(c);
            sent = true;
            c.enqueue(whole.subarray(0, whole.byteLength / 3));
          },
        });
        return new Response(body, { headers: { 'content-length': String(whole.byteLength) } });
      }) as typeof fetch;
    for (const ranges of [false, true]) {
      const dropped = await loadModelFromUrl(d, 'http://models.test/m', {
        fetch: fetchWith(ranges, (c) => c.error(new TypeError('terminated'))),
        onDownload: () => {},
      }).catch((e: unknown) => e);
      expect(dropped).toMatchObject({
        code: 'E_IO',
        message: 'E_IO: cannot fetch http://models.test/m/model.safetensors: terminated',
      });
      const controller = new AbortController();
      const aborted = await loadModelFromUrl(d, 'http://models.test/m', {
        fetch: fetchWith(ranges, (c) => {
          controller.abort();
          c.error(new DOMException('This operation was aborted', 'AbortError'));
        }),
        signal: controller.signal,
      }).catch((e: unknown) => e);
      expect(aborted).toMatchObject({
        code: 'E_ABORTED',
        message: /loading was aborted \(fetching http:\/\/models\.test\/m\/model\.safetensors\)/,
      });
    }
    // replaced on the server after its header was read by a file as long with another header (the same header would
    // go unnoticed), or a file of another length
    const others = [
      await serializeSafetensors({ ...tensors, ...padding(1) }, { metadata: { v: '2' } }),
      await serializeSafetensors({ ...tensors, ...padding(1) }, { metadata: { v: '2'.repeat(100) } }),
    ];
    expect(others.map((o) => o.byteLength === weights.byteLength)).toEqual([true, false]);
    for (const other of others) {
      let rest = true;
      const changed = await loadModelFromUrl(d, 'http://models.test/m', {
        fetch: fetchWith(
          true,
          (c) => {
            if (!rest) return c.close();
            rest = false;
            c.enqueue(other.subarray(other.byteLength / 3));
          },
          other,
        ),
      }).catch((e: unknown) => e);
      expect(changed).toMatchObject({
        code: 'E_IO',
        message:
          other.byteLength === weights.byteLength
            ? `E_IO: cannot fetch http://models.test/m/model.safetensors: the file changed while loading (${weights.byteLength} bytes, its header announced ${weights.byteLength}, another header)`
            : `E_IO: cannot fetch http://models.test/m/model.safetensors: the file changed while loading (${other.byteLength} bytes, its header announced ${weights.byteLength})`,
      });
    }
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

  it("a compressed layer's missing or mistyped tensor is named with the checkpoint's URL or directory, as runtime-node words it", async () => {
    const { config, tensors, layers } = tinyModel();
    const scale = Object.keys(tensors).find((n) => n.endsWith('.caldera.Q_scale'))!;
    const { [scale]: dropped, ...rest } = tensors;
    expect(dropped).toBeDefined();
    const files: Record<string, Uint8Array | string> = {
      'config.json': JSON.stringify(config),
      'caldera.json': JSON.stringify(calderaCheckpointMeta(layers)),
      'model.safetensors': await serializeSafetensors(rest),
    };
    const fetchFiles = (async (url: string) => {
      const body = files[String(url).replace('http://models.test/m/', '')];
      return body === undefined ? new Response('not found', { status: 404 }) : new Response(body as BodyInit);
    }) as typeof fetch;
    // it said only "checkpoint has no tensor '…'": which of the URLs a page loads failed was not told
    await expect(loadModelFromUrl(d, 'http://models.test/m', { fetch: fetchFiles })).rejects.toMatchObject({
      code: 'E_MISSING',
      message: new RegExp(`^E_MISSING: http://models\\.test/m: .*'${scale.replace(/\./g, '\\.')}'`),
    });
    const dir = await mkdtemp(join(tmpdir(), 'caldera-webgpu-label-'));
    for (const [f, body] of Object.entries(files)) await writeFile(join(dir, f), body);
    await expect(loadModel(d, dir)).rejects.toThrow(new RegExp(`^E_MISSING: ${dir}: `));
    await rm(dir, { recursive: true });
  });

  it('as transformers builds it (as runtime-node): an undeclared bias is not applied; no lm_head untied is E_MISSING', async () => {
    const { config, tensors, layers } = tinyModel({ lmHeadStd: 0.3 });
    const calderaMeta = calderaCheckpointMeta(layers);
    const logitsOf = async (t: Record<string, Tensor>) => {
      const { model } = await loadModelFromBuffer(d, {
        config,
        calderaMeta,
        weights: await serializeSafetensors(t),
      });
      try {
        return await model.step(3, 'logits');
      } finally {
        model.dispose();
      }
    };
    const plain = await logitsOf(tensors);
    // o_proj without attention_bias: transformers has no bias there (it was added)
    const o = 'model.layers.1.self_attn.o_proj.bias';
    expect(await logitsOf({ ...tensors, [o]: tensor('f32', [32], new Float32Array(32).fill(3)) })).toEqual(
      plain,
    );
    const { 'lm_head.weight': _, ...headless } = tensors;
    await expect(
      loadModelFromBuffer(d, { config, calderaMeta, weights: await serializeSafetensors(headless) }),
    ).rejects.toThrow(/^E_MISSING: missing tensor lm_head\.weight, and config\.json does not tie the head/);
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
    // a caldera.json whose rank was edited to 0 while L and R stay: they were ignored (other weights)
    const name = 'model.layers.0.mlp.up_proj';
    const edited = calderaCheckpointMeta({ [name]: { ...layers[name]!, rank: 0 } });
    await expect(
      loadModelFromBuffer(d, { config, calderaMeta: edited, weights: await serializeSafetensors(tensors) }),
    ).rejects.toThrow(
      /^E_FORMAT: the checkpoint: the tensors do not match caldera\.json: model\.layers\.0\.mlp\.up_proj\.caldera\.L is not part of layer .* \(rank 0,/,
    );
    // a shape the config does not give the layer: E_SHAPE, as in runtime-node (E_FORMAT from the decoding before)
    const [m, n] = layers[name]!.shape;
    const [pm, pn] = layers[name]!.padded;
    const swapped = calderaCheckpointMeta({ [name]: { ...layers[name]!, shape: [n, m], padded: [pn, pm] } });
    await expect(
      loadModelFromBuffer(d, { config, calderaMeta: swapped, weights: await serializeSafetensors(tensors) }),
    ).rejects.toThrow(
      `E_SHAPE: caldera.json gives layer '${name}' shape [${n}, ${m}], config.json implies [${m}, ${n}]`,
    );
    // a layer the model does not have (a block past num_hidden_layers): dropped silently before, as runtime-node
    // refuses it
    const extra = calderaCheckpointMeta({
      [name]: layers[name]!,
      'model.layers.5.mlp.up_proj': layers[name]!,
    });
    await expect(
      loadModelFromBuffer(d, { config, calderaMeta: extra, weights: await serializeSafetensors(tensors) }),
    ).rejects.toThrow(
      /^E_FORMAT: the checkpoint: caldera\.json lists layer 'model\.layers\.5\.mlp\.up_proj', which is not a linear layer of the model \(2 blocks/,
    );

    // dense weights too (WGSL leaves infinity and NaN undefined): f32, 16-bit bits, and values beyond f16 with 'f16'
    const q = 'model.layers.0.self_attn.q_proj.weight';
    const bad = tensor('f32', tensors[q]!.shape, (tensors[q]!.data as Float32Array).slice());
    bad.data[7] = Infinity;
    await expect(load({ [q]: bad })).rejects.toThrow(
      `E_VALUE: tensor '${q}' has a non-finite value (Infinity) at flat index 7`,
    );
    const embed = cast(tensors['model.embed_tokens.weight']!, 'bf16');
    embed.data[3] = 0x7fc0; // a bf16 NaN
    await expect(load({ 'model.embed_tokens.weight': embed })).rejects.toThrow(
      /tensor 'model.embed_tokens.weight' has a non-finite value \(NaN\) at flat index 3/,
    );
    bad.data[7] = 70000; // finite in f32, beyond f16
    await expect(load({ [q]: bad })).resolves.toBeDefined();
    await expect(
      loadModelFromBuffer(
        d,
        {
          config,
          calderaMeta: calderaCheckpointMeta(layers),
          weights: await serializeSafetensors({ ...tensors, [q]: bad }),
        },
        { dtype: 'f16' },
      ),
    ).rejects.toThrow(`tensor '${q}' rounded to f16 has a non-finite value (Infinity) at flat index 7`);
  });

  it('an integer embedding, norm or dense weight is E_DTYPE naming it, as in runtime-node (not cast to floats code by code); the integer codes of a CALDERA layer load', async () => {
    const { config, tensors, layers } = tinyModel();
    const calderaMeta = calderaCheckpointMeta(layers);
    const ints = (t: Tensor, dtype: 'i32' | 'u8') =>
      tensor(dtype, t.shape, dtype === 'i32' ? new Int32Array(t.data.length) : new Uint8Array(t.data.length));
    for (const [name, dtype] of [
      ['model.embed_tokens.weight', 'i32'],
      ['model.layers.1.input_layernorm.weight', 'i32'],
      ['model.norm.weight', 'i32'],
      ['model.layers.0.self_attn.q_proj.weight', 'u8'],
    ] as const) {
      const weights = await serializeSafetensors({ ...tensors, [name]: ints(tensors[name]!, dtype) });
      await expect(loadModelFromBuffer(d, { config, calderaMeta, weights })).rejects.toThrow(
        expect.objectContaining({
          code: 'E_DTYPE',
          message: `E_DTYPE: tensor '${name}' is ${dtype}, expected a float dtype (f64, f32, f16, bf16) (a quantized checkpoint? give the unquantized model)`,
        }),
      );
    }
    // block 0's up_proj is CALDERA: its codes are integer tensors, and load
    expect(
      Object.keys(tensors).some((n) => n.includes('caldera') && !tensors[n]!.dtype.startsWith('f')),
    ).toBe(true);
    const weights = await serializeSafetensors(tensors);
    (await loadModelFromBuffer(d, { config, calderaMeta, weights }, { contextLength: 8 })).model.dispose();
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

  it("the loaders compile the model's kernels before they resolve, in the background or one after another (the device's asyncCompile): its steps then compile nothing; an abort while they compile is E_ABORTED", async () => {
    const source = await tinyModelSource();
    for (const asyncCompile of [true, false]) {
      const own = await ownTestDevice(); // its own pipelines: none compiled yet
      const d = { ...own!, asyncCompile };
      const calls = spyOnCompiles(d.device);
      try {
        const { model } = await loadModelFromBuffer(d, source, { contextLength: 16 });
        // embedding, norms, rotations, E8P, attention, head, argmax, …
        expect(asyncCompile ? calls.async : calls.sync).toBeGreaterThan(5);
        expect(asyncCompile ? calls.sync : calls.async).toBe(0);
        const compiled = { ...calls };
        await model.stepBatch([3, 1, 4], 'none');
        await model.step(1, 'argmax');
        model.reset();
        expect((await model.scoreBatch([1, 2, 3], [2, 3, 4])).every((nll) => nll > 0)).toBe(true);
        expect(calls).toEqual(compiled);
        model.dispose();
      } finally {
        own!.dispose();
      }
    }
    // the first compile aborts the load
    const own = await ownTestDevice();
    const d = { ...own!, asyncCompile: true };
    const stop = new AbortController();
    const compileAsync = d.device.createComputePipelineAsync.bind(d.device);
    Object.assign(d.device, {
      createComputePipelineAsync: (desc: GPUComputePipelineDescriptor) => (stop.abort(), compileAsync(desc)),
    });
    await expect(
      loadModelFromBuffer(d, source, { contextLength: 16, signal: stop.signal }),
    ).rejects.toMatchObject({ code: 'E_ABORTED' });
    own!.dispose();
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
    const config = parseModelConfig((await tinyModelSource()).config);
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
        `loadModelFromStore: source.store must be a TensorStore (openSafetensors or openSafetensorsDir), got ${got}`,
      );
      await fails(
        loadModelFromBuffer(fake, v as never),
        `loadModelFromBuffer: parts must be an object, got ${got}`,
      );
      expect(() => new WebGpuModel(fake, v as never, {} as never)).toThrow(
        `E_VALUE: WebGpuModel: config must be a ModelConfig (parseModelConfig of config.json), got ${got}`,
      );
      expect(() => new WebGpuModel(fake, config, v as never)).toThrow(
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

describe('option checks before anything is read, uploaded or downloaded', () => {
  // the checks run before the device is used: a stand-in device is enough, no adapter needed
  const fake = { device: {} } as unknown as CalderaDevice;
  const parts = () => tinyModelSource();
  const fails = (p: Promise<unknown>, message: string) =>
    expect(p).rejects.toThrow(expect.objectContaining({ code: 'E_VALUE', message: `E_VALUE: ${message}` }));

  it('loadModel: a config.json or caldera.json that is a FIFO is E_IO saying so (it was read for ever, or taken for a missing caldera.json)', async (ctx) => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-webgpu-fifo-'));
    try {
      try {
        execFileSync('mkfifo', [join(dir, 'caldera.json')]);
      } catch (e) {
        if ((e as { code?: string }).code === 'ENOENT') ctx.skip('mkfifo is not available on this system');
        throw e;
      }
      await writeFile(join(dir, 'config.json'), JSON.stringify((await parts()).config));
      const io = (message: string) => expect.objectContaining({ code: 'E_IO', message: `E_IO: ${message}` });
      await expect(loadModel(fake, dir)).rejects.toThrow(
        io(`${dir}/caldera.json is a FIFO (named pipe), not a JSON file`),
      );
      await rm(join(dir, 'config.json'));
      execFileSync('mkfifo', [join(dir, 'config.json')]);
      await expect(loadModel(fake, dir)).rejects.toThrow(
        io(`${dir}/config.json is a FIFO (named pipe), not a JSON file`),
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('an AbortSignal passed where the options go is E_VALUE in every loader (it would abort nothing)', async () => {
    const p = await parts();
    const signal = AbortSignal.abort() as never;
    const message = (fn: string) => `${fn}: options must be an object such as { signal }, got an AbortSignal`;
    await fails(loadModelFromBuffer(fake, p, signal), message('loadModelFromBuffer'));
    await fails(loadModel(fake, '/nonexistent', signal), message('loadModel'));
    await fails(loadModelFromUrl(fake, 'http://models.test/m', signal), message('loadModelFromUrl'));
  });

  it('lanes other than 1 or 32, maxLocalHadamard other than an integer ≥ 16, rowsPerLane other than 1, 2 or 4, vectorWorkgroup other than a power of two the device allows, gateStep other than fused, split or chunked, codeBatch other than 4, 8 or 16 and writtenMix other than a boolean are E_VALUE naming them (the loaders and Kernels), not wrong tokens, invalid WGSL or the default', async () => {
    const p = await parts();
    for (const lanes of [0, -1, 1.5, NaN, 2, 7, 64, '32', null])
      for (const f of [
        (o: object) => loadModelFromBuffer(fake, p, o),
        (o: object) => loadModel(fake, '/nonexistent', o),
        (o: object) => loadModelFromUrl(fake, 'http://models.test/m', o),
        async (o: object) => new Kernels(fake, o),
      ])
        await fails(
          f({ lanes }),
          `lanes must be 1 or 32, got ${typeof lanes === 'string' ? `'${lanes}'` : String(lanes)}`,
        );
    for (const m of [0, -1, 1.5, NaN, 3, 15, -Infinity, '16', null]) {
      const message = `maxLocalHadamard must be an integer of at least 16 (or Infinity: what workgroup memory holds), got ${
        typeof m === 'string' ? `'${m}'` : String(m)
      }`;
      await fails(loadModelFromBuffer(fake, p, { maxLocalHadamard: m as number }), message);
      expect(() => new Kernels(fake, { maxLocalHadamard: m as number })).toThrow(message);
    }
    expect(() => new Kernels(fake, { f16: 'yes' as unknown as boolean })).toThrow(
      "E_VALUE: f16 must be true or false, got 'yes'",
    );
    // f16 and topKOnGpu by the loaders too, before the download (they were checked only once the model was uploaded)
    for (const f of [
      (o: object) => loadModelFromBuffer(fake, p, o),
      (o: object) => loadModelFromUrl(fake, 'http://models.test/m', o),
    ]) {
      await fails(f({ f16: 'yes' }), "f16 must be true or false, got 'yes'");
      await fails(f({ f16: true }), 'Kernels: f16 needs a device with the shader-f16 feature');
      await fails(f({ topKOnGpu: 'yes' }), "topKOnGpu must be a boolean, got 'yes'");
    }
    await fails(
      loadModelFromBuffer({ ...fake, shaderF16: true } as CalderaDevice, p, { f16: true, lanes: 1 }),
      'Kernels: f16 needs 32 lanes per row',
    );
    // weights given as a path: opened as a file before (and loaded)
    await fails(
      loadModelFromBuffer(fake, { ...p, weights: '/nonexistent/model.safetensors' as never }),
      'loadModelFromBuffer: weights must be the bytes of model.safetensors (an ArrayBuffer, a typed array or a Blob), got a string (to load from a folder, use loadModel)',
    );
    expect(() => new Kernels(fake, { rowsPerLane: 3 as never })).toThrow(
      'E_VALUE: rowsPerLane must be 1, 2 or 4, got 3',
    );
    await fails(
      loadModelFromBuffer(fake, p, { rowsPerLane: 3 as never }),
      'rowsPerLane must be 1, 2 or 4, got 3',
    );
    // a power of two from 64 to the device's invocations per workgroup (at most 1024)
    const fake512 = { ...fake, maxWorkgroupInvocations: 512 } as CalderaDevice;
    for (const n of [32, 96, 1024, 1.5, '128', null]) {
      const message = `vectorWorkgroup must be a power of two from 64 to 512 (the device's invocations per workgroup), got ${
        typeof n === 'string' ? `'${n}'` : String(n)
      }`;
      await fails(loadModelFromBuffer(fake512, p, { vectorWorkgroup: n as number }), message);
      expect(() => new Kernels(fake512, { vectorWorkgroup: n as number })).toThrow(`E_VALUE: ${message}`);
    }
    expect(new Kernels(fake512, { vectorWorkgroup: 64 }).vectorWorkgroup).toBe(64);
    expect(new Kernels(fake512, { vectorWorkgroup: 512 }).vectorWorkgroup).toBe(512);
    expect(new Kernels(fake512).vectorWorkgroup).toBe(256);
    // CPU drivers run a workgroup's invocations on one thread: fewer by default there
    expect(new Kernels({ ...fake512, fallbackAdapter: true }).vectorWorkgroup).toBe(64);
    for (const n of [2, 'Split', '', null]) {
      const message = `gateStep must be 'fused', 'split' or 'chunked', got ${typeof n === 'string' ? `'${n}'` : String(n)}`;
      await fails(loadModelFromBuffer(fake, p, { gateStep: n as 'split' }), message);
      expect(() => new Kernels(fake, { gateStep: n as 'split' })).toThrow(`E_VALUE: ${message}`);
    }
    expect(new Kernels(fake).gateStep).toBe('fused');
    expect(new Kernels(fake, { gateStep: 'chunked' }).gateStep).toBe('chunked');
    for (const n of [2, 12, '8', null]) {
      const message = `codeBatch must be 4, 8 or 16, got ${typeof n === 'string' ? `'${n}'` : String(n)}`;
      await fails(loadModelFromBuffer(fake, p, { codeBatch: n as 8 }), message);
      expect(() => new Kernels(fake, { codeBatch: n as 8 })).toThrow(`E_VALUE: ${message}`);
    }
    expect(new Kernels(fake).codeBatch).toBe(8);
    expect(new Kernels(fake, { codeBatch: 16 }).codeBatch).toBe(16);
    for (const w of [0, 'true', null]) {
      const message = `writtenMix must be true or false, got ${typeof w === 'string' ? `'${w}'` : String(w)}`;
      await fails(loadModelFromBuffer(fake, p, { writtenMix: w as never }), message);
      expect(() => new Kernels(fake, { writtenMix: w as never })).toThrow(`E_VALUE: ${message}`);
    }
    // written out by default, read from the table on CPU adapters (compiles about twice as fast there)
    expect(new Kernels(fake).writtenMix).toBe(true);
    expect(new Kernels({ ...fake, fallbackAdapter: true }).writtenMix).toBe(false);
    expect(new Kernels({ ...fake, fallbackAdapter: true }, { writtenMix: true }).writtenMix).toBe(true);
  });

  it("dtype outside 'auto', 'f32' and 'f16' is E_VALUE with runtime-node's message; callbacks that are not functions and a signal that is not an AbortSignal are E_VALUE naming them", async () => {
    const p = await parts();
    for (const dtype of ['x', 'bf16', null])
      await fails(
        loadModelFromBuffer(fake, p, { dtype: dtype as 'f32' }),
        `loadModelFromBuffer: dtype must be 'auto', 'f32' or 'f16', got ${dtype === null ? 'null' : `'${dtype}'`}`,
      );
    await fails(
      loadModel(fake, '/nonexistent', { dtype: 'x' as 'f32' }),
      "loadModel: dtype must be 'auto', 'f32' or 'f16', got 'x'",
    );
    for (const name of ['onPlan', 'onProgress'])
      await fails(
        loadModelFromBuffer(fake, p, { [name]: 5 }),
        `loadModelFromBuffer: ${name} must be a function, got a number`,
      );
    for (const name of ['onDownload', 'fetch', 'onPlan'])
      await fails(
        loadModelFromUrl(fake, 'http://models.test/m', { [name]: 5 }),
        `loadModelFromUrl: ${name} must be a function, got a number`,
      );
    await fails(
      loadModelFromBuffer(fake, p, { signal: {} as AbortSignal }),
      'loading: signal must be an AbortSignal, got an object',
    );
  });

  it('planMemory checks its arguments: a raw config.json, null, a bad dtype are E_VALUE naming them', async () => {
    const p = await parts();
    const store = await openSafetensors(p.weights, 'model.safetensors');
    const config = parseModelConfig(p.config);
    try {
      const plan = await planMemory(config, p.calderaMeta as never, store, null as never);
      expect(plan.weightBytes).toBeGreaterThan(0);
      await fails(
        planMemory(p.config as never, null, store),
        'planMemory: config must be a ModelConfig (parseModelConfig of config.json): its numLayers must be a positive integer, got undefined',
      );
      await fails(
        planMemory(null as never, null, store),
        'planMemory: config must be a ModelConfig (parseModelConfig of config.json), got null',
      );
      await fails(
        planMemory(config, null, null as never),
        'planMemory: store must be a TensorStore (openSafetensors or openSafetensorsDir), got null',
      );
      // a plain object: "store.names is not a function" before
      await fails(
        loadModelFromStore(fake, { config: {}, calderaMeta: null, store: { names: () => [] } as never }),
        'loadModelFromStore: source.store must be a TensorStore (openSafetensors or openSafetensorsDir), got an object without has, tensorInfo, readTensor',
      );
      await fails(
        planMemory(config, 5 as never, store),
        'planMemory: calderaMeta must be an object or null, got a number',
      );
      await fails(
        planMemory(config, null, store, { dtype: 'x' as 'f32' }),
        "planMemory: dtype must be 'auto', 'f32' or 'f16', got 'x'",
      );
      // a string is shown as one (it read "got 64")
      await fails(
        planMemory(config, p.calderaMeta as never, store, { contextLength: '64' as never }),
        "contextLength must be a positive integer, got '64'",
      );
    } finally {
      await store.close();
    }
  });
});
