import { connect } from 'node:net';
import type { ConnectionOptions } from 'bullmq';
import { CalderaError } from '@caldera/core';

/** Connection options of a redis:// URL (no extra dependency: BullMQ passes them to its Redis client). */
export function redisConnection(url: string): ConnectionOptions {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new CalderaError('E_VALUE', `--queue must be a redis://host:port URL, got '${url}'`);
  }
  if (u.protocol !== 'redis:')
    throw new CalderaError('E_VALUE', `--queue must be a redis://host:port URL, got '${url}'`);
  const db = u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0;
  return {
    host: u.hostname || '127.0.0.1',
    port: u.port ? Number(u.port) : 6379,
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    ...(Number.isInteger(db) ? { db } : {}),
    maxRetriesPerRequest: null,
  };
}

/**
 * Check that a Redis server answers at `url`: one `PING` over TCP, within `timeoutMs`. Any reply counts (a server that
 * wants a password answers `-NOAUTH`, which BullMQ's own connection then reports). Otherwise `E_IO` naming the URL and
 * the cause, at once: BullMQ's client would retry an unreachable server for ever, so a coordinator checks first,
 * before any work.
 */
export function checkRedisReachable(url: string, timeoutMs = 5000): Promise<void> {
  const { host, port } = redisConnection(url) as { host: string; port: number };
  return new Promise<void>((resolve, reject) => {
    const socket = connect({ host, port });
    const fail = (why: string) => {
      socket.destroy();
      reject(new CalderaError('E_IO', `cannot reach Redis at ${url} (${why})`));
    };
    socket.setTimeout(timeoutMs, () => fail(`no answer within ${timeoutMs / 1000} s`));
    socket.once('error', (e: NodeJS.ErrnoException) => fail(e.code ?? e.message));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.once('data', (d: Buffer) => {
      socket.destroy();
      if (d[0] === 0x2b || d[0] === 0x2d)
        resolve(); // '+' (PONG) or '-' (an error reply): a Redis server answered
      else fail('the server there is not Redis');
    });
  });
}
