import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import { Queue, Worker } from 'bullmq';
import { isCalderaError } from '@caldera/core';
import type { Args } from './args.js';
import { runOnQueue, type QueueTask } from './commands/queue.js';
import { redisConnection } from './commands/redis.js';
import { hasRedis, scriptedServer, startRedis } from './test-redis.js';

/** `caldera compress`'s queue options as parsed: `--queue-name name --attempts 1`. */
const args = (name: string): Args => ({
  positionals: [],
  flags: new Map([
    ['queue-name', name],
    ['attempts', '1'],
  ]),
});

/** Matrix tasks of a work directory that does not exist: their jobs only need ids here. */
const tasks = (n: number): QueueTask[] =>
  Array.from({ length: n }, (_, i) => ({
    kind: 'matrix',
    work: '/nonexistent.work',
    id: `j${i}`,
    label: `m${i}`,
  }));

describe('runOnQueue: interruption', () => {
  it('stopped before anything was enqueued, with Redis silent: E_ABORTED at once, no withdrawal, no graceful close', async () => {
    // a server that accepts connections and never answers: a hung Redis host
    const silent = await scriptedServer(null);
    const stop = new AbortController();
    setTimeout(() => stop.abort(), 300);
    const t0 = performance.now();
    const e = await runOnQueue(silent.url, args('silent'), tasks(2), { signal: stop.signal }).catch(
      (x: unknown) => x,
    );
    const seconds = (performance.now() - t0) / 1000;
    await silent.close();
    expect(isCalderaError(e) && e.code, String(e)).toBe('E_ABORTED');
    // before: 5 s trying to withdraw jobs never sent, then 2 s for the disconnect (7.3 s measured); now the 0.3 s before
    // the abort and the disconnect's 2 s at most (2.3 s measured)
    expect(seconds).toBeLessThan(4.5);
  }, 30_000);

  it('says on stderr when Redis goes silent, and waits on (it waited without a word until a signal)', async () => {
    const silent = await scriptedServer(null);
    const said: string[] = [];
    const spy = vi.spyOn(console, 'error').mockImplementation((m: unknown) => void said.push(String(m)));
    const stop = new AbortController();
    setTimeout(() => stop.abort(), 800);
    try {
      const e = await runOnQueue(silent.url, args('silent'), tasks(1), {
        signal: stop.signal,
        silentMs: 200,
      }).catch((x: unknown) => x);
      expect(isCalderaError(e) && e.code, String(e)).toBe('E_ABORTED');
    } finally {
      spy.mockRestore();
      await silent.close();
    }
    expect(
      said.filter((m) => /Redis at redis:\/\/127\.0\.0\.1:\d+ has not answered for 0\.2 s/.test(m)),
    ).toHaveLength(1);
  }, 30_000);

  describe.skipIf(!hasRedis)('on a real redis-server (skipped without redis-server)', () => {
    let redis: ChildProcess | undefined;
    let url = '';
    beforeAll(async () => {
      ({ server: redis, url } = await startRedis());
    }, 30_000);
    afterAll(() => {
      redis?.kill('SIGKILL');
    });

    it('an abort after every job has ended leaves the outcome alone: the failed job is reported, not "aborted"', async () => {
      // a BullMQ worker that completes every job but m1's, which fails
      const worker = new Worker<QueueTask>(
        'ended',
        async (job) => {
          if (job.data.label === 'm1') throw new Error('E_FORMAT: m1 is broken');
          return 'computed';
        },
        { connection: redisConnection(url) },
      );
      const stop = new AbortController();
      const e = await runOnQueue(url, args('ended'), tasks(3), {
        signal: stop.signal,
        // Ctrl-C the moment the last job is seen ended (before the completed jobs are cleaned up)
        onProgress: (done, total) => {
          if (done === total) stop.abort();
        },
      }).catch((x: unknown) => x);
      await worker.close();
      expect(stop.signal.aborted).toBe(true);
      // before: E_ABORTED 'queue run was aborted (0 jobs unfinished)', and the failure was lost. And on a loaded
      // machine (2 of 6 runs with two busy loops beside it) 'E_DEVICE: … m1: undefined': the poll read the job, then
      // its state, and the job failed in between (now the state is read first)
      expect(isCalderaError(e) && e.code, String(e)).toBe('E_FORMAT');
      expect(String(e)).toMatch(/1 of 3 jobs failed after 1 attempts.*m1: E_FORMAT: m1 is broken/);
    }, 30_000);

    it('a resumed run removes the completed jobs of the tasks finished before it, not only its own (they stayed for ever)', async () => {
      const worker = new Worker<QueueTask>('resumed', async () => 'computed', {
        connection: redisConnection(url),
      });
      const done = tasks(3);
      // the first run is stopped once its jobs have ended, before its cleanup: their completed jobs stay in Redis
      const stop = new AbortController();
      await runOnQueue(url, args('resumed'), done, {
        signal: stop.signal,
        onProgress: (d, total) => d === total && stop.abort(),
      });
      const queue = new Queue('resumed', { connection: redisConnection(url) });
      expect(await queue.getJobCountByTypes('completed')).toBe(3);
      // the rerun finds every output on disk: nothing to enqueue, the earlier jobs named as finished
      await runOnQueue(url, args('resumed'), [], { finished: done });
      expect(await queue.getJobCountByTypes('completed')).toBe(0);
      await queue.close();
      await worker.close();
    }, 30_000);

    it('says no worker listens when the only workers are on another database of the same Redis (BullMQ counted them)', async () => {
      const worker = new Worker<QueueTask>('db-test', async () => 'computed', {
        connection: redisConnection(`${url}/0`),
      });
      const said: string[] = [];
      const spy = vi.spyOn(console, 'error').mockImplementation((m: unknown) => void said.push(String(m)));
      try {
        for (const db of [1, 0]) {
          said.length = 0;
          const stop = new AbortController();
          await runOnQueue(`${url}/${db}`, args('db-test'), tasks(1), {
            signal: stop.signal,
            // stopped at its first poll: the warning, if any, came before it
            onProgress: () => stop.abort(),
          }).catch(() => undefined);
          expect(
            said.some((m) => /no worker is listening on queue 'db-test'/.test(m)),
            `db ${db}`,
          ).toBe(db === 1);
        }
      } finally {
        spy.mockRestore();
        await worker.close();
      }
    }, 30_000);
  });
});
