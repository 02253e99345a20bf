import { assertCallbacks, assertNonEmptyString, CalderaError } from '../errors.js';
import { parseCalderaMeta, type CalderaCheckpointMeta } from '../checkpoint/meta.js';
import { parseHeaderLength } from './header.js';
import { openSafetensors, type SafetensorsReader, type TensorStore } from './reader.js';
import { parseSafetensorsIndex, ShardedSafetensorsReader } from './sharded.js';
import { blobPartsSource, blobSource, type ByteSource } from './source.js';

/** Options of {@link openModelUrl}. */
export interface ModelUrlOptions {
  /** The fetch to use (default `globalThis.fetch`). */
  fetch?: typeof fetch;
  /** Aborts the requests and downloads: they then fail with `E_ABORTED` (the signal's reason as its cause). */
  signal?: AbortSignal;
  /**
   * Download progress of the weight files (`model.safetensors` or each shard), called as bytes arrive: bytes so far
   * and the file's `Content-Length` (null when the server sends none, or a `Content-Encoding` such as gzip, whose
   * length counts the encoded bytes). It reports the download of each file's tensor data, on the first read past its
   * header, not the requests for the headers; from a server that ignores `Range` it reports the whole file's download,
   * while the model is opened; a file of at most 64 KiB, which the header request brought whole, is reported then as 0
   * and all of its bytes.
   */
  onDownload?: (e: { file: string; bytes: number; total: number | null }) => void;
}

/** A model served over HTTP, opened by {@link openModelUrl}: its JSON files, and its weights' headers. */
export interface OpenedModelUrl {
  /** The base URL, ending with `/`. */
  root: string;
  /** The parsed JSON of `config.json` (not checked: `parseModelConfig` does). */
  config: unknown;
  /** `caldera.json` validated by `parseCalderaMeta`, or null when the server has none (404: a dense model). */
  calderaMeta: CalderaCheckpointMeta | null;
  /** The URL of `caldera.json`, for messages. */
  calderaMetaFile: string;
  /**
   * The weights: `model.safetensors`, or the shards of `model.safetensors.index.json`. Its headers are read; each
   * file's tensor data is downloaded on the first read past its header. `close()` releases every file.
   */
  store: TensorStore;
}

/** Bytes of a download kept per `Blob`: one Node 20 `Blob` holds at most 4 GiB, and Hugging Face shards reach ~5 GB. */
const PART_BYTES = 1 << 30;

/**
 * The body of `r` as a byte source over `Blob`s of at most {@link PART_BYTES} each, reporting bytes as they arrive
 * (a weight file over 4 GiB was downloaded whole into one `Blob`, which Node refused at the end: "cannot fetch …: The
 * value of "length" is out of range").
 */
async function downloadSource(
  r: Response,
  file: string,
  onDownload: ModelUrlOptions['onDownload'],
): Promise<ByteSource> {
  if (!r.body) return blobSource(await r.blob(), file);
  const length = Number(r.headers.get('content-length'));
  // with a Content-Encoding (gzip, br) the length counts the encoded bytes, the stream gives the decoded ones
  const encoding = r.headers.get('content-encoding');
  const encoded = encoding !== null && encoding.trim().toLowerCase() !== 'identity';
  const total = Number.isFinite(length) && length > 0 && !encoded ? length : null;
  let bytes = 0;
  onDownload?.({ file, bytes, total });
  const parts: Blob[] = [];
  let chunks: Uint8Array<ArrayBuffer>[] = [];
  let partBytes = 0;
  const reader = r.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    partBytes += value.byteLength;
    bytes += value.byteLength;
    onDownload?.({ file, bytes, total });
    if (partBytes >= PART_BYTES) {
      parts.push(new Blob(chunks));
      chunks = [];
      partBytes = 0;
    }
  }
  if (partBytes > 0 || parts.length === 0) parts.push(new Blob(chunks));
  return blobPartsSource(parts, file);
}

/** The JSON body of `r`, or `E_FORMAT` naming `url` when it is not valid JSON. */
async function responseJson(r: Response, url: string): Promise<unknown> {
  const text = await r.text();
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new CalderaError('E_FORMAT', `${url}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
}

/** Bytes asked for first of each weight file: the 8-byte length and, for most checkpoints, the whole JSON header. */
const HEAD_BYTES = 64 * 1024;

/**
 * The file size announced by a safetensors header (`json`, after the 8-byte length `n`): where its last tensor's data
 * ends, for a server whose `Content-Range` is not readable (a cross-origin response that does not expose it). A header
 * that does not parse gives `8 + n`; `parseHeader` then reports what is wrong with it.
 */
function sizeFromHeader(json: Uint8Array): number {
  let end = 0;
  try {
    const o = JSON.parse(new TextDecoder().decode(json)) as Record<string, { data_offsets?: unknown }>;
    for (const [name, e] of Object.entries(o)) {
      const off = name === '__metadata__' ? null : e?.data_offsets;
      if (Array.isArray(off) && Number.isSafeInteger(off[1]) && (off[1] as number) > end)
        end = off[1] as number;
    }
  } catch {
    // not JSON: parseHeader says so
  }
  return 8 + json.length + end;
}

/** `store` whose `close()` also closes `files` (shards the store never opened). */
function closingAlso(store: TensorStore, files: readonly SafetensorsReader[]): TensorStore {
  return {
    metadata: store.metadata,
    names: () => store.names(),
    has: (name) => store.has(name),
    tensorInfo: (name) => store.tensorInfo(name),
    readTensor: (name) => store.readTensor(name),
    readRaw: (name) => store.readRaw(name),
    close: async () => {
      await store.close();
      for (const s of files) await s.close();
    },
  };
}

/**
 * Open a model served over HTTP, in a browser or in Node (fetch only, no GPU, no file system): `<base>/config.json`,
 * optional `<base>/caldera.json` (a 404 means dense; validated here, before any weight is downloaded) and
 * `<base>/model.safetensors`, or when that is 404 the shards listed in `<base>/model.safetensors.index.json`. The
 * loaders of both runtimes (`loadModelFromUrl`) build on it.
 *
 * Only headers are fetched here: each weight file's header with an HTTP `Range` request (its first 64 KiB; a second
 * request for the rest of a longer header), so a caller can plan memory from the headers before the bulk is
 * downloaded. Each weight file is then downloaded whole, as `Blob`s of at most 1 GiB (not one `ArrayBuffer`, nor one
 * `Blob`, which Node caps at 4 GiB; the header's bytes come a second time), when its first tensor is read, and read tensor by tensor. A server that ignores
 * `Range` (status 200, the whole file) is read from that response, each file fetched once, but then the files are
 * downloaded here. A failed request or download (HTTP status, dropped connection, a file that changed between its
 * header request and its download) is `E_IO` naming the URL, `E_ABORTED` when `signal` fired. A `base` that is not a
 * non-empty string is `E_VALUE`. The caller closes `store`.
 */
export async function openModelUrl(base: string, options: ModelUrlOptions = {}): Promise<OpenedModelUrl> {
  assertNonEmptyString(base, 'openModelUrl', 'the base URL');
  options ??= {}; // from JavaScript: null options are none
  assertCallbacks(options, 'openModelUrl', ['fetch', 'onDownload']);
  const f = options.fetch ?? globalThis.fetch;
  const root = base.endsWith('/') ? base : `${base}/`;
  // a failed request or body (a dropped connection, the signal): E_ABORTED when the signal fired, else E_IO naming
  // the URL; CalderaErrors (E_FORMAT of a body that is not JSON) pass through
  const failed = (e: unknown, url: string): CalderaError =>
    e instanceof CalderaError
      ? e
      : options.signal?.aborted
        ? new CalderaError('E_ABORTED', `loading was aborted (fetching ${url})`, {
            cause: options.signal.reason,
          })
        : new CalderaError('E_IO', `cannot fetch ${url}: ${(e as Error).message}`, { cause: e });
  // `range`: [first, last] byte (inclusive), sent as a Range header
  const get = async (file: string, optional: boolean, range?: [number, number]): Promise<Response | null> => {
    const init: RequestInit = {};
    if (options.signal) init.signal = options.signal;
    if (range) init.headers = { Range: `bytes=${range[0]}-${range[1]}` };
    let r: Response;
    try {
      r = await f(root + file, init);
    } catch (e) {
      throw failed(e, root + file);
    }
    if (r.status === 404 && optional) return null;
    if (r.status === 416 && range) return r; // an empty file: fetchRange asks for all of it
    if (!r.ok) throw new CalderaError('E_IO', `cannot fetch ${root + file}: HTTP ${r.status}`);
    return r;
  };
  // the body of `file` read by `how`, its failures as in `get`
  const body = async <T>(file: string, r: Response, how: (r: Response) => Promise<T>): Promise<T> => {
    try {
      return await how(r);
    } catch (e) {
      throw failed(e, root + file);
    }
  };
  const json = (file: string, r: Response) => body(file, r, (r) => responseJson(r, root + file));
  const download = async (file: string, r: Response): Promise<ByteSource> =>
    body(file, r, (r) => downloadSource(r, file, options.onDownload));
  /**
   * The bytes [first, last] of `file`: `{ bytes, total }` from a 206 (`total`: the file size of its `Content-Range`,
   * null when that is not readable), or `{ whole }`, a response with the whole file, from a server that ignored the
   * range (or encoded the body, whose range then counts encoded bytes).
   */
  const fetchRange = async (
    file: string,
    optional: boolean,
    first: number,
    last: number,
  ): Promise<{ bytes: Uint8Array; total: number | null } | { whole: Response } | null> => {
    const url = root + file;
    const r = await get(file, optional, [first, last]);
    if (!r) return null;
    if (r.status !== 206 && r.status !== 416) return { whole: r };
    const encoding = r.headers.get('content-encoding');
    if (r.status === 416 || (encoding !== null && encoding.trim().toLowerCase() !== 'identity')) {
      await r.body?.cancel().catch(() => undefined);
      return { whole: (await get(file, false))! };
    }
    const bytes = new Uint8Array(await body(file, r, (r) => r.arrayBuffer()));
    // Content-Range: readable same-origin, and cross-origin when the server exposes it
    const cr = /^\s*bytes\s+(\d+)-(\d+)\/(\d+|\*)\s*$/i.exec(r.headers.get('content-range') ?? '');
    const wrong = (what: string) =>
      new CalderaError('E_IO', `cannot fetch ${url}: asked for bytes ${first}-${last}, ${what}`);
    if (cr && (Number(cr[1]) !== first || Number(cr[2]) - first + 1 !== bytes.length))
      throw wrong(`got Content-Range ${r.headers.get('content-range')} with ${bytes.length} bytes`);
    if (bytes.length > last - first + 1) throw wrong(`got ${bytes.length} bytes`);
    return { bytes, total: cr && cr[3] !== '*' ? Number(cr[3]) : null };
  };
  /**
   * `file` opened from its header alone: its tensor data is downloaded (whole) on the first read past the header. A
   * server that ignores Range gives the whole file at once, read from that response.
   */
  const open = async (file: string, optional: boolean): Promise<SafetensorsReader | null> => {
    const url = root + file;
    const first = await fetchRange(file, optional, 0, HEAD_BYTES - 1);
    if (!first) return null;
    if ('whole' in first) return openSafetensors(await download(file, first.whole), file);
    let head = first.bytes;
    // fewer bytes than asked for: the file ends there
    const ended = head.length < HEAD_BYTES;
    const n = parseHeaderLength(head, first.total ?? (ended ? head.length : Number.MAX_SAFE_INTEGER), file);
    if (8 + n > head.length) {
      const rest = await fetchRange(file, false, head.length, 8 + n - 1);
      if ('whole' in rest!) return openSafetensors(await download(file, rest.whole), file);
      if (rest!.bytes.length !== 8 + n - head.length)
        throw new CalderaError(
          'E_IO',
          `cannot fetch ${url}: asked for bytes ${head.length}-${8 + n - 1}, got ${rest!.bytes.length}`,
        );
      const all = new Uint8Array(8 + n);
      all.set(head);
      all.set(rest!.bytes, head.length);
      head = all;
    }
    const headerEnd = 8 + n;
    const size = first.total ?? (ended ? head.length : sizeFromHeader(head.subarray(8, headerEnd)));
    if (head.length >= size) {
      // a file of at most 64 KiB: that was all of it
      options.onDownload?.({ file, bytes: 0, total: size });
      options.onDownload?.({ file, bytes: size, total: size });
      return openSafetensors(head.subarray(0, size), file);
    }
    let whole: Promise<ByteSource> | null = null;
    const fetchWhole = async (): Promise<ByteSource> => {
      const downloaded = await download(file, (await get(file, false))!);
      // the same length and header as the file the plan was made from (a new version deployed meanwhile is not)
      const same =
        downloaded.size === size && (await downloaded.read(0, headerEnd)).every((x, i) => x === head[i]);
      if (!same)
        throw new CalderaError(
          'E_IO',
          `cannot fetch ${url}: the file changed while loading (${downloaded.size} bytes, its header announced ${size}` +
            `${downloaded.size === size ? ', another header' : ''})`,
        );
      return downloaded;
    };
    const source: ByteSource = {
      name: file,
      size,
      async read(offset, length) {
        if (offset + length <= headerEnd) return head.slice(offset, offset + length);
        // a failed download is not kept: the next read tries again
        whole ??= fetchWhole().catch((e: unknown) => {
          whole = null;
          throw e;
        });
        return (await whole).read(offset, length);
      },
      close: async () => {
        whole = null;
      },
    };
    return openSafetensors(source, file);
  };
  const config = await json('config.json', (await get('config.json', false))!);
  const cr = await get('caldera.json', true);
  const calderaMetaFile = root + 'caldera.json';
  const calderaMeta = cr ? parseCalderaMeta(await json('caldera.json', cr), calderaMetaFile) : null;
  const single = await open('model.safetensors', true);
  if (single) return { root, config, calderaMeta, calderaMetaFile, store: single };
  const indexFile = 'model.safetensors.index.json';
  const index = parseSafetensorsIndex(
    await body(indexFile, (await get(indexFile, false))!, (r) => r.text()),
    root + indexFile,
  );
  // every shard's header now (a caller plans from a few; a broken shard is better found before the download)
  const shards = new Map<string, SafetensorsReader>();
  try {
    for (const file of new Set(Object.values(index.weightMap))) shards.set(file, (await open(file, false))!);
  } catch (e) {
    for (const s of shards.values()) await s.close();
    throw e;
  }
  const sharded = new ShardedSafetensorsReader(index, (file) => Promise.resolve(shards.get(file)!));
  return { root, config, calderaMeta, calderaMetaFile, store: closingAlso(sharded, [...shards.values()]) };
}
