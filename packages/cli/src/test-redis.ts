// Test helpers for the Redis and queue-mode tests (redis, scaleout, queue): a throwaway redis-server on a free port, and
// a TCP server that answers as scripted (or never: a hung Redis host).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';

/** Whether Debian's redis-server is installed (`.ci/run` installs it; the tests that need it are skipped without). */
export const hasRedis = spawnSync('redis-server', ['--version']).status === 0;

/** A loopback port that was free a moment ago (redis-server refuses port 0). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** A redis-server on `port` (default a free loopback port), without persistence, once it accepts connections. */
export async function startRedis(port?: number): Promise<{ server: ChildProcess; url: string }> {
  port ??= await freePort();
  const server = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((resolve, reject) => {
    let text = '';
    server.stdout!.on('data', (d) => {
      text += d;
      if (text.includes('Ready to accept connections')) resolve();
    });
    server.once('exit', (c) => reject(new Error(`redis-server exited with ${c}: ${text}`)));
  });
  return { server, url: `redis://127.0.0.1:${port}` };
}

/**
 * A TCP server on a free port of 127.0.0.1 that answers the first bytes of every connection (kept: `received`) with
 * `reply` (or never, for null).
 */
export async function scriptedServer(
  reply: string | null,
): Promise<{ url: string; close: () => Promise<void>; received: () => string }> {
  const sockets = new Set<Socket>();
  let received = '';
  const s: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    if (reply !== null)
      socket.once('data', (d) => {
        received += d.toString('latin1');
        socket.end(reply);
      });
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as { port: number };
  return {
    received: () => received,
    url: `redis://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((r) => {
        for (const socket of sockets) socket.destroy();
        s.close(() => r());
      }),
  };
}
