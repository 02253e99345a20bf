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
 */
function serve(files: Record<string, Uint8Array>, log: string[], ranges = true): typeof fetch {
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
        headers: { 'content-range': `bytes ${first}-${last}/${body.length}` },
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
});
