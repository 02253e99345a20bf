// A tiny static server for dist/ (the built site) on 127.0.0.1 (WebGPU needs a secure context: localhost counts as one),
// cross-origin isolated.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';

const root = new URL('./dist/', import.meta.url).pathname;
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
    const path = normalize(decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)).replace(
      /^(\.\.[/\\])+/,
      '',
    );
    const file = join(root, path.endsWith('/') ? `${path}index.html` : path);
    try {
      const body = await readFile(file);
      res.writeHead(200, {
        'content-type': types[extname(file)] ?? 'application/octet-stream',
        ...ISOLATION,
      });
      res.end(body);
    } catch {
      res.writeHead(404);
      res.end('not found');
    }
  });
}

if (process.argv[1] === new URL(import.meta.url).pathname) {
  const port = Number(process.env.PORT ?? 5173);
  staticServer().listen(port, '127.0.0.1', () => console.log(`browser-chat: http://127.0.0.1:${port}/`));
}
