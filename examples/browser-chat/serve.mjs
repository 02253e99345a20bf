// A tiny static server for dist/ (the built site) on 127.0.0.1 (WebGPU needs a secure context: localhost counts as one),
// cross-origin isolated.
import { realpathSync } from 'node:fs';
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
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
    try {
      path = normalize(decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)).replace(
        /^(\.\.[/\\])+/,
        '',
      );
    } catch {
      // a malformed escape (`/%`): the request's fault, not the server's
      res.writeHead(400);
      res.end('bad request');
      return;
    }
    const file = join(root, path.endsWith('/') ? `${path}index.html` : path);
    try {
      const body = await readFile(file);
      res.writeHead(200, {
        'content-type': types[extname(file)] ?? 'application/octet-stream',
        'content-length': body.length, // the loader's download progress shows a total and a percentage
        ...ISOLATION,
      });
      res.end(body);
    } catch {
      res.writeHead(404);
      res.end('not found');
    }
  });
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
