import { afterEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isCalderaError } from '@caldera/core';
import { checkRedisReachable, RedisWatch, redisConnection, shownRedisUrl } from './commands/redis.js';
import { runCli } from './test-cli.js';
import { scriptedServer as server } from './test-redis.js';

describe('redisConnection and shownRedisUrl', () => {
  it('takes the database number from the path, an integer in [0, 15], and refuses any other (db 0 was used)', () => {
    expect(redisConnection('redis://h:1')).toMatchObject({ host: 'h', port: 1, db: 0 });
    expect(redisConnection('redis://h:1/')).toMatchObject({ db: 0 });
    expect(redisConnection('redis://h:1/15')).toMatchObject({ db: 15 });
    for (const path of ['abc', '99', '1.5', '-1'])
      expect(() => redisConnection(`redis://:pw@h:1/${path}`)).toThrow(
        `E_VALUE: --queue redis://:***@h:1/${path}: the database number after the port must be an integer in [0, 15], got '${path}'`,
      );
  });

  it('shows a URL with its password masked, in every message that names it', async () => {
    expect(shownRedisUrl('redis://user:secret@h:1/2')).toBe('redis://user:***@h:1/2');
    expect(shownRedisUrl('redis://:secret@h:1')).toBe('redis://:***@h:1');
    expect(shownRedisUrl('redis://h:1')).toBe('redis://h:1');
    expect(() => redisConnection('http://:secret@h:1')).toThrow("got 'http://:***@h:1/'");
    const e = await checkRedisReachable('redis://:secret@127.0.0.1:1').catch((x: unknown) => x);
    expect((e as Error).message).toMatch(
      /cannot reach Redis at redis:\/\/:\*\*\*@127\.0\.0\.1:1 \(ECONNREFUSED\)/,
    );
    expect((e as Error).message).not.toContain('secret');
  });
});

describe('RedisWatch', () => {
  it('says a loss once, at the first error after the connection closed, and its end; other errors are no loss', () => {
    const w = new RedisWatch();
    // before the worker was first ready: the start's own timeout names those errors
    w.close();
    expect(w.error()).toBe(false);
    expect(w.reconnected()).toBe(false);
    w.ready();
    // an error on a live connection (a job's lost lock) is no loss of Redis
    expect(w.error()).toBe(false);
    w.close();
    // BullMQ retries every second, each retry an error: the first says the loss, the rest nothing
    expect([w.error(), w.error(), w.error()]).toEqual([true, false, false]);
    w.close();
    expect(w.error()).toBe(false);
    expect(w.reconnected()).toBe(true);
    expect(w.reconnected()).toBe(false);
    expect(w.error()).toBe(false); // live again
    // a second loss is said again
    w.close();
    expect(w.error()).toBe(true);
    expect(w.reconnected()).toBe(true);
    // a reconnect with no error between (a blip BullMQ reported nothing about) is neither lost nor back
    w.close();
    expect(w.reconnected()).toBe(false);
    expect(w.error()).toBe(false);
  });
});

describe('checkRedisReachable', () => {
  const open: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const close of open.splice(0)) await close();
  });

  it('accepts a Redis reply (PONG, or an error such as LOADING) and refuses what is not Redis', async () => {
    for (const reply of ['+PONG\r\n', '-LOADING Redis is loading the dataset in memory\r\n']) {
      const s = await server(reply);
      open.push(s.close);
      await expect(checkRedisReachable(s.url)).resolves.toBeUndefined();
    }
    const http = await server('HTTP/1.1 400 Bad Request\r\n\r\n');
    open.push(http.close);
    await expect(checkRedisReachable(http.url)).rejects.toSatisfy(
      (e: unknown) => isCalderaError(e, 'E_IO') && /not Redis/.test((e as Error).message),
    );
  });

  it("refuses at once a server that wants a password the URL lacks, or refuses the URL's (was: 10 s later)", async () => {
    const noauth = await server('-NOAUTH Authentication required.\r\n');
    open.push(noauth.close);
    await expect(checkRedisReachable(noauth.url)).rejects.toThrow(
      /cannot reach Redis at redis:\/\/127\.0\.0\.1:\d+ \(it wants a password: give it in the URL/,
    );
    const wrong = await server('-WRONGPASS invalid username-password pair or user is disabled.\r\n');
    open.push(wrong.close);
    const withPassword = wrong.url.replace('//', '//:secret@');
    const e = await checkRedisReachable(withPassword).catch((x: unknown) => x);
    expect((e as Error).message).toMatch(
      /at redis:\/\/:\*\*\*@127\.0\.0\.1:\d+ \(it refused the URL's credentials: WRONGPASS invalid/,
    );
    const ok = await server('+OK\r\n');
    open.push(ok.close);
    await expect(checkRedisReachable(ok.url.replace('//', '//user:secret@'))).resolves.toBeUndefined();
    expect(ok.received()).toBe('*3\r\n$4\r\nAUTH\r\n$4\r\nuser\r\n$6\r\nsecret\r\n');
  });

  it('names the cause: a refused connection, a server that never answers', async () => {
    await expect(checkRedisReachable('redis://127.0.0.1:1')).rejects.toSatisfy(
      (e: unknown) =>
        isCalderaError(e, 'E_IO') &&
        (e as Error).message.endsWith('cannot reach Redis at redis://127.0.0.1:1 (ECONNREFUSED)'),
    );
    const silent = await server(null);
    open.push(silent.close);
    await expect(checkRedisReachable(silent.url, 200)).rejects.toThrow(/no answer within 0\.2 s/);
  });

  it('caldera compress --queue with no Redis there fails at once: before the baseline, nothing left behind', () => {
    const out = join(mkdtempSync(join(tmpdir(), 'caldera-redis-')), 'q');
    const t0 = performance.now();
    const r = runCli(['compress', '--propagate', 'original', '--queue', 'redis://127.0.0.1:1', '--out', out]);
    const seconds = (performance.now() - t0) / 1000;
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toBe(
      'caldera compress: E_IO: cannot reach Redis at redis://127.0.0.1:1 (ECONNREFUSED)',
    );
    // before: the error came after the baseline perplexity and the hashing of the source (16 s on the reference
    // model), and left <out>.work behind; now it comes before any work (the process start dominates)
    expect(seconds).toBeLessThan(10);
    for (const p of [out, `${out}.work`, `${out}.partial`]) expect(existsSync(p), p).toBe(false);
  }, 60_000);
});
