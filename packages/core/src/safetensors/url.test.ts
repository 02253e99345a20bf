import { describe, expect, it } from 'vitest';
import { CalderaError } from '../errors.js';
import { tensor } from '../tensor.js';
import { openModelUrl } from './url.js';
import { serializeSafetensors } from './writer.js';

const text = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));
/** Random-ish f32 data of `n` values (so the files pass 64 KiB: the header request does not bring them whole). */
const values = (n: number, k: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + k));

/**
 * A fetch over `files` at http://h/m/: Range requests answered with 206 and Content-Range unless `ranges` is false
 * (then 200 and the whole file, as a server without Range support), 404 for a missing file. `log` gets each request.
 * `contentRange` false leaves the header out of the 206s (what a cross-origin page sees when it is not exposed).
 */
function serve(
  files: Record<string, Uint8Array>,
  log: string[],
  ranges = true,
  contentRange = true,
): typeof fetch {
  return (input, init) => {
    const name = String(input).replace('http://h/m/', '');
    const range = new Headers(init?.headers).get('range');
    log.push(range ? `${name} ${range}` : name);
    const body = files[name];
    if (!body) return Promise.resolve(new Response('missing', { status: 404 }));
    const m = ranges && range ? /^bytes=(\d+)-(\d+)$/.exec(range) : null;
    if (!m) return Promise.resolve(new Response(body.slice()));
    const first = Number(m[1]);
    const last = Math.min(Number(m[2]), body.length - 1);
    return Promise.resolve(
      new Response(body.slice(first, last + 1), {
        status: 206,
        headers: contentRange ? { 'content-range': `bytes ${first}-${last}/${body.length}` } : {},
      }),
    );
  };
}

async function sharded(): Promise<Record<string, Uint8Array>> {
  const a = await serializeSafetensors({ x: tensor('f32', [100, 200], values(20000, 1)) });
  const b = await serializeSafetensors({
    y: tensor('f32', [200, 100], values(20000, 2)),
    z: tensor('f32', [3], [1, 2, 3]),
  });
  return {
    'config.json': text({ hidden_size: 8 }),
    'model.safetensors.index.json': text({
      metadata: { total_size: 160012 },
      weight_map: { x: 'a.safetensors', y: 'b.safetensors', z: 'b.safetensors' },
    }),
    'a.safetensors': a,
    'b.safetensors': b,
  };
}

describe('openModelUrl', () => {
  it('a failed download of a weight file is not kept: the next read fetches it again', async () => {
    const files = await sharded();
    const log: string[] = [];
    const ok = serve(files, log);
    let failNext = true;
    const flaky: typeof fetch = (input, init) => {
      const whole = !new Headers(init?.headers).get('range') && String(input).endsWith('a.safetensors');
      if (whole && failNext) {
        failNext = false;
        return Promise.resolve(new Response('busy', { status: 503 }));
      }
      return ok(input, init);
    };
    const opened = await openModelUrl('http://h/m', { fetch: flaky });
    await expect(opened.store.readTensor('x')).rejects.toThrow(/E_IO/);
    expect(Array.from((await opened.store.readTensor('x')).data.slice(0, 3))).toEqual(
      Array.from(values(3, 1)),
    );
    await opened.store.close();
  });

  it('opens a sharded checkpoint from its headers (Range), downloads a shard on its first tensor read, once', async () => {
    const files = await sharded();
    const log: string[] = [];
    const downloads: string[] = [];
    const opened = await openModelUrl('http://h/m', {
      fetch: serve(files, log),
      onDownload: ({ file, bytes, total }) => downloads.push(`${file} ${bytes}/${total}`),
    });
    expect(opened.root).toBe('http://h/m/');
    expect(opened.config).toEqual({ hidden_size: 8 });
    expect(opened.calderaMeta).toBeNull();
    expect(opened.calderaMetaFile).toBe('http://h/m/caldera.json');
    expect(opened.store.names().sort()).toEqual(['x', 'y', 'z']);
    // headers only so far: every shard's first 64 KiB
    expect(log).toEqual([
      'config.json',
      'caldera.json',
      'model.safetensors bytes=0-65535',
      'model.safetensors.index.json',
      'a.safetensors bytes=0-65535',
      'b.safetensors bytes=0-65535',
    ]);
    expect(downloads).toEqual([]);
    expect((await opened.store.tensorInfo('y')).shape).toEqual([200, 100]);
    expect(Array.from((await opened.store.readTensor('z')).data)).toEqual([1, 2, 3]);
    expect(Array.from((await opened.store.readTensor('y')).data)).toEqual(Array.from(values(20000, 2)));
    expect(log.slice(6)).toEqual(['b.safetensors']);
    expect(downloads.at(-1)).toBe(`b.safetensors ${files['b.safetensors']!.length}/null`);
    await opened.store.close();
  });

  it('reads a server without Range support from its whole responses; failures are typed errors naming the URL', async () => {
    const files = await sharded();
    const log: string[] = [];
    const opened = await openModelUrl('http://h/m/', { fetch: serve(files, log, false) });
    expect(Array.from((await opened.store.readTensor('x')).data)).toEqual(Array.from(values(20000, 1)));
    // each shard fetched once, whole, while opening
    expect(log.filter((l) => l.startsWith('a.safetensors'))).toEqual(['a.safetensors bytes=0-65535']);
    await opened.store.close();

    const err = (p: Promise<unknown>) =>
      p.then(
        () => 'resolved',
        (e: unknown) => (e instanceof CalderaError ? e.message : `not a CalderaError: ${String(e)}`),
      );
    expect(await err(openModelUrl('', {}))).toMatch(/^E_VALUE: openModelUrl: the base URL/);
    expect(await err(openModelUrl('http://h/m/', { fetch: serve({}, []) }))).toMatch(
      /^E_IO: cannot fetch http:\/\/h\/m\/config\.json: HTTP 404/,
    );
    // an invalid caldera.json fails before any weight file is requested
    const withMeta = { ...files, 'caldera.json': text({ layers: 3 }) };
    const seen: string[] = [];
    expect(await err(openModelUrl('http://h/m/', { fetch: serve(withMeta, seen) }))).toMatch(
      /^E_FORMAT: .*http:\/\/h\/m\/caldera\.json/,
    );
    expect(seen).toEqual(['config.json', 'caldera.json']);
    // a dropped connection is E_IO, an aborted signal E_ABORTED
    const dropped: typeof fetch = () => Promise.reject(new TypeError('network down'));
    expect(await err(openModelUrl('http://h/m/', { fetch: dropped }))).toMatch(
      /^E_IO: cannot fetch http:\/\/h\/m\/config\.json: network down/,
    );
    const ac = new AbortController();
    ac.abort(new Error('stop'));
    expect(await err(openModelUrl('http://h/m/', { fetch: dropped, signal: ac.signal }))).toMatch(
      /^E_ABORTED: /,
    );
  });

  it('without a readable Content-Range: sizes from the headers, a header over 64 KiB, a shard of under 64 KiB', async () => {
    // model.safetensors: 1500 tensors of long names make a header of ~100 KiB (a second Range request), then 80 KB of
    // data; the shards: one large (data fetched on read), one of a few hundred bytes (the header request brings it all)
    const small: Record<string, ReturnType<typeof tensor>> = {
      big: tensor('f32', [200, 100], values(20000, 3)),
    };
    for (let i = 0; i < 1500; i++)
      small[`model.layers.${i}.some.rather.long.tensor.name`] = tensor('f32', [2], [i, -i]);
    const single = await serializeSafetensors(small);
    const n = Number(new DataView(single.buffer, single.byteOffset).getBigUint64(0, true));
    expect(8 + n).toBeGreaterThan(65536);
    const shards = await sharded();
    const c = await serializeSafetensors({ w: tensor('f16', [3], [1, 2, 3]) });
    const shardFiles = {
      ...shards,
      'model.safetensors.index.json': text({
        metadata: {},
        weight_map: { x: 'a.safetensors', y: 'b.safetensors', z: 'b.safetensors', w: 'c.safetensors' },
      }),
      'c.safetensors': c,
    };
    for (const contentRange of [true, false]) {
      const log: string[] = [];
      const downloads: string[] = [];
      const opened = await openModelUrl('http://h/m', {
        fetch: serve({ 'config.json': text({}), 'model.safetensors': single }, log, true, contentRange),
        onDownload: ({ file, bytes, total }) => downloads.push(`${file} ${bytes}/${total}`),
      });
      // the rest of the header by a second Range request, nothing else before a read
      expect(log).toEqual([
        'config.json',
        'caldera.json',
        'model.safetensors bytes=0-65535',
        `model.safetensors bytes=65536-${8 + n - 1}`,
      ]);
      expect(opened.store.names()).toHaveLength(1501);
      expect(Array.from((await opened.store.readTensor('big')).data)).toEqual(Array.from(values(20000, 3)));
      expect(
        Array.from((await opened.store.readTensor('model.layers.1499.some.rather.long.tensor.name')).data),
      ).toEqual([1499, -1499]);
      expect(log.slice(4)).toEqual(['model.safetensors']); // one download, whose size matched the header's
      expect(downloads.at(-1)).toBe(`model.safetensors ${single.length}/null`);
      await opened.store.close();

      const shardLog: string[] = [];
      const s = await openModelUrl('http://h/m', {
        fetch: serve(shardFiles, shardLog, true, contentRange),
        onDownload: ({ file, bytes, total }) => downloads.push(`${file} ${bytes}/${total}`),
      });
      // the sharded store's wrapper (it also closes the shards) answers names, has and readRaw from the shards
      expect(s.store.names().sort()).toEqual(['w', 'x', 'y', 'z']);
      expect(s.store.has('w')).toBe(true);
      expect(s.store.has('nope')).toBe(false);
      // the small shard came whole with its header request: reported as 0 and all of its bytes, never fetched again
      expect(downloads.slice(-2)).toEqual([
        `c.safetensors 0/${c.length}`,
        `c.safetensors ${c.length}/${c.length}`,
      ]);
      expect(Array.from(await s.store.readRaw('w'))).toEqual(
        Array.from(new Uint8Array(Uint16Array.of(0x3c00, 0x4000, 0x4200).buffer)), // f16 1, 2, 3
      );
      expect(Array.from(await s.store.readRaw('z'))).toEqual(
        Array.from(new Uint8Array(Float32Array.of(1, 2, 3).buffer)),
      );
      expect(Array.from((await s.store.readTensor('x')).data)).toEqual(Array.from(values(20000, 1)));
      expect(shardLog.filter((l) => l.startsWith('c.safetensors'))).toEqual(['c.safetensors bytes=0-65535']);
      expect(shardLog.filter((l) => !l.includes('bytes='))).toEqual([
        'config.json',
        'caldera.json',
        'model.safetensors.index.json',
        'b.safetensors',
        'a.safetensors',
      ]);
      await s.store.close();
    }
  });
});
