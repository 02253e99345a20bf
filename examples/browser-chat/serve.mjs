// A tiny static server for dist/ (the built site) on 127.0.0.1 (WebGPU needs a secure context: localhost counts as one),
// cross-origin isolated.
import { createReadStream, realpathSync } from 'node:fs';
import { createServer } from 'node:http';
import { pipeline } from 'node:stream';
import { stat } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('./dist/', import.meta.url));
const types = {
  '.html': 'text/html',
  '.js': 'text/javascript',
  '.json': 'application/json',
  '.map': 'application/json',
};
/**
 * Headers that make the page cross-origin isolated, which shared memory needs: with them the CPU fallback decodes on
 * every core (a decode pool of Web Workers). Everything the page loads is same-origin, so nothing else changes.
 */
const ISOLATION = {
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-embedder-policy': 'require-corp',
};
/** A server for dist/ (not yet listening). */
export function staticServer() {
  return createServer(async (req, res) => {
    let path;
    let dirUrl; // a URL ending in '/' (its index.html); normalize() gives '\\' for '/' on Windows
    try {
      const pathname = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
      dirUrl = pathname.endsWith('/');
      path = normalize(pathname).replace(/^(\.\.[/\\])+/, '');
    } catch {
      // a malformed escape (`/%`): the request's fault, not the server's
      res.writeHead(400);
      res.end('bad request');
      return;
    }
    const file = join(root, dirUrl ? join(path, 'index.html') : path);
    let size;
    try {
      const st = await stat(file);
      if (!st.isFile()) throw Object.assign(new Error('not a file'), { code: 'EISDIR' });
      size = st.size;
    } catch (e) {
      const missing = ['ENOENT', 'ENOTDIR', 'EISDIR'].includes(e.code);
      res.writeHead(missing ? 404 : 500);
      res.end(missing ? 'not found' : `cannot read ${path}: ${e.message}`);
      return;
    }
    // one byte range (the model loader reads each weight file's header so), else the whole file; streamed, so files
    // of 2 GiB and more (a checkpoint of a 7B model, a dense 1B one) are served too: readFile refuses them
    const range = byteRange(req.headers.range, size);
    if (range === 'unsatisfiable') {
      res.writeHead(416, { 'content-range': `bytes */${size}`, ...ISOLATION });
      res.end();
      return;
    }
    const [start, end] = range ?? [0, size - 1];
    res.writeHead(range ? 206 : 200, {
      'content-type': types[extname(file)] ?? 'application/octet-stream',
      'content-length': end - start + 1, // the loader's download progress shows a total and a percentage
      'accept-ranges': 'bytes',
      ...(range ? { 'content-range': `bytes ${start}-${end}/${size}` } : {}),
      ...ISOLATION,
    });
    if (req.method === 'HEAD' || end < start) {
      res.end();
      return;
    }
    // pipeline: a client that goes away mid-download closes the file too (pipe() left it open: one descriptor per
    // aborted download)
    pipeline(createReadStream(file, { start, end }), res, () => undefined);
  });
}

/**
 * The [first, last] bytes of a `Range: bytes=a-b` header (`a-`, `-n` suffix forms too) for a file of `size` bytes;
 * null for no header or one this server does not serve (several ranges: the whole file is the answer);
 * 'unsatisfiable' for a range past the end.
 */
function byteRange(header, size) {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header ?? '');
  if (!m || (m[1] === '' && m[2] === '')) return null;
  let start;
  let end;
  if (m[1] === '') {
    start = Math.max(0, size - Number(m[2]));
    end = size - 1;
  } else {
    start = Number(m[1]);
    if (m[2] !== '' && Number(m[2]) < start) return null; // `bytes=5-3`, no valid range: ignored (RFC 9110)
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  return start >= size ? 'unsatisfiable' : [start, end];
}

/** Whether this module is the script node runs (`node serve.mjs`, from any path), not an import. */
function isMain() {
  try {
    return realpathSync(process.argv[1]) === fileURLToPath(import.meta.url);
  } catch {
    return false;
  }
}

if (isMain()) {
  const fail = (message) => {
    console.error(`browser-chat: ${message}`);
    process.exit(1);
  };
  const given = process.env.PORT ?? '5173';
  const port = Number(given);
  if (!/^\d+$/.test(given) || port > 65535) fail(`PORT must be an integer in [0, 65535], got '${given}'`);
  staticServer()
    .on('error', (e) =>
      fail(
        e.code === 'EADDRINUSE'
          ? `port ${port} of 127.0.0.1 is in use (stop what uses it, or set PORT to another)`
          : `cannot serve on 127.0.0.1:${port}: ${e.message}`,
      ),
    )
    .listen(port, '127.0.0.1', function () {
      console.log(`browser-chat: http://127.0.0.1:${this.address().port}/`);
    });
}
