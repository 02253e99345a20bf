import { connect } from 'node:net';
import { flagString, type Args } from '../args.js';
import type { ConnectionOptions } from 'bullmq';
import { CalderaError } from '@caldera/core';

/** A redis:// URL as messages show it: its password, if any, replaced by `***` (messages end up in logs). */
export function shownRedisUrl(url: string): string {
  try {
    const u = new URL(url);
    if (!u.password) return url;
    u.password = '***';
    return u.toString();
  } catch {
    return url.replace(/\/\/([^/@]*):[^/@]*@/, '//$1:***@');
  }
}

/**
 * Connection options of a redis:// URL (no extra dependency: BullMQ passes them to its Redis client). The path, when
 * given, is the database number: an integer in [0, 15] (Redis' default count of databases), else `E_VALUE`.
 */
export function redisConnection(url: string): ConnectionOptions {
  let u: URL;
  const bad = () =>
    new CalderaError('E_VALUE', `--queue must be a redis://host:port URL, got '${shownRedisUrl(url)}'`);
  try {
    u = new URL(url);
  } catch {
    throw bad();
  }
  if (u.protocol !== 'redis:') throw bad();
  const path = u.pathname.replace(/^\//, '');
  const db = path === '' ? 0 : Number(path);
  if (!/^\d+$/.test(path || '0') || !(db <= 15))
    throw new CalderaError(
      'E_VALUE',
      `--queue ${shownRedisUrl(url)}: the database number after the port must be an integer in [0, 15], got '${path}'`,
    );
  return {
    host: u.hostname || '127.0.0.1',
    port: u.port ? Number(u.port) : 6379,
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    db,
    maxRetriesPerRequest: null,
  };
}

/** A RESP array command (binary-safe for any password). */
function respCommand(...args: string[]): string {
  return `*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('');
}

/**
 * Check that a Redis server answers at `url` and takes its credentials: `AUTH` (when the URL has a password), else
 * `PING`, over TCP, within `timeoutMs`. Otherwise `E_IO` naming the URL (its password masked) and the cause, at once:
 * BullMQ's client would retry an unreachable server, or one that refuses it, for ever, so a coordinator checks first,
 * before any work. A server that wants a password the URL lacks (`-NOAUTH`) or refuses the URL's (`-WRONGPASS`) fails
 * here; another error reply (e.g. `-LOADING`) is a Redis server that answered, which BullMQ then waits for.
 */
export function checkRedisReachable(url: string, timeoutMs = 5000): Promise<void> {
  const c = redisConnection(url) as { host: string; port: number; username?: string; password?: string };
  return new Promise<void>((resolve, reject) => {
    const socket = connect({ host: c.host, port: c.port });
    const fail = (why: string) => {
      socket.destroy();
      reject(new CalderaError('E_IO', `cannot reach Redis at ${shownRedisUrl(url)} (${why})`));
    };
    socket.setTimeout(timeoutMs, () => fail(`no answer within ${timeoutMs / 1000} s`));
    socket.once('error', (e: NodeJS.ErrnoException) => fail(e.code ?? e.message));
    socket.once('connect', () =>
      socket.write(
        c.password === undefined
          ? respCommand('PING')
          : respCommand('AUTH', ...(c.username ? [c.username] : []), c.password),
      ),
    );
    socket.once('data', (d: Buffer) => {
      socket.destroy();
      const reply = d.toString('latin1').split('\r\n')[0]!;
      if (/^-NOAUTH/.test(reply))
        fail(
          'it wants a password: give it in the URL, redis://:PASSWORD@host:port or redis://USER:PASSWORD@…',
        );
      else if (/^-(WRONGPASS|ERR)/.test(reply) && c.password !== undefined)
        fail(`it refused the URL's credentials: ${reply.slice(1)}`);
      else if (d[0] === 0x2b || d[0] === 0x2d)
        resolve(); // '+' (PONG, OK) or another error reply: Redis answered
      else fail('the server there is not Redis');
    });
  });
}

/**
 * The `--queue-name` of a command (default `caldera`), `E_VALUE` unless BullMQ takes it: not empty and without `:`
 * (its key separator). Checked before any work: BullMQ threw from inside the run (exit 70, after the hashing).
 */
export function queueNameOf(a: Args): string {
  const name = flagString(a, 'queue-name', 'caldera')!;
  if (name === '' || name.includes(':'))
    throw new CalderaError(
      'E_VALUE',
      `--queue-name must be a non-empty name without ':' (Redis key separator), got ${JSON.stringify(name)}`,
    );
  return name;
}

/**
 * When a worker's Redis is lost and when it is back, from its connection's events: lost at the first error after the
 * connection closed, once the worker had been ready (BullMQ retries every second, each retry an error: one loss is
 * said once), back when the connection is ready again after a loss. Errors on a live connection (a job's lost lock)
 * and errors before the worker was first ready (the start's own timeout says those) are no loss of Redis.
 */
export class RedisWatch {
  private wasReady = false;
  private closed = false; // the connection closed and has not been ready since
  private lost = false;

  /** The worker is ready (Redis answered its first ping). */
  ready(): void {
    this.wasReady = true;
  }

  /** The connection closed. */
  close(): void {
    this.closed = true;
  }

  /** An error: true when it is the one that says Redis is lost. */
  error(): boolean {
    if (!this.wasReady || !this.closed || this.lost) return false;
    this.lost = true;
    return true;
  }

  /** The connection is ready again: true when that ends a loss. */
  reconnected(): boolean {
    this.closed = false;
    if (!this.lost) return false;
    this.lost = false;
    return true;
  }
}
