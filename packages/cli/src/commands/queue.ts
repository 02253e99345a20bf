import { createHash } from 'node:crypto';
import { Worker as Thread } from 'node:worker_threads';
import { Queue, Worker, type Job } from 'bullmq';
import { CalderaError } from '@caldera/core';
import { flagNumber, flagString, POSITIVE_INT, THREADS, type Args } from '../args.js';
import { checkRedisReachable, queueNameOf, RedisWatch, redisConnection, shownRedisUrl } from './redis.js';
import { hasTaskOutput, type QueueTask } from './task.js';
import { errorFrom } from './common.js';

export type { QueueTask } from './task.js';
export { redisConnection } from './redis.js';

function jobIdOf(t: QueueTask): string {
  // a Hessian chunk by its plan's key too: an earlier plan's job for the same index (a killed run with other windows)
  // shared its id, and its completion counted as this plan's chunk
  const key =
    t.kind === 'hessian' ? `${t.work}\0hessian\0${t.index}\0${t.key ?? ''}` : `${t.work}\0matrix\0${t.id}`;
  return `${t.kind}-${createHash('sha256').update(key).digest('hex').slice(0, 32)}`;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

/**
 * `p`, or (resolving to undefined) the abort of `signal`, whichever comes first: a Redis command waits for as long as
 * Redis is away, and an interrupted run must not wait with it. A rejection of `p` after the abort is dropped.
 */
function untilAborted<T>(p: Promise<T>, signal?: AbortSignal): Promise<T | undefined> {
  if (!signal) return p;
  p.catch(() => undefined);
  return new Promise<T | undefined>((resolve, reject) => {
    const onAbort = () => resolve(undefined);
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}

/** The jobs of `ids` that are in the queue and in one of `states` (each looked up, then its state read). */
async function jobsIn(queue: Queue, ids: Iterable<string>, states: readonly string[]): Promise<Job[]> {
  const found: Job[] = [];
  for (const id of ids) {
    const j = await queue.getJob(id);
    if (j && states.includes(await j.getState())) found.push(j);
  }
  return found;
}

/**
 * Wait for `closing` (a queue's or worker's `close()`) at most `ms`, then for `disconnect()` at most 2 s: with Redis
 * away, neither may ever settle, and the command must end all the same.
 */
async function closeWithin(
  closing: Promise<void>,
  disconnect: () => Promise<void>,
  ms: number,
): Promise<void> {
  await within(closing, ms, () => 'closing').catch(() =>
    within(disconnect(), 2000, () => 'disconnecting').catch(() => undefined),
  );
}

/**
 * Workers listening on `queue` in the Redis database of `url` (BullMQ's count takes the workers of the queue's name in
 * every database: a worker on db 0 hid that none listened on the coordinator's db 1).
 */
async function workersOnDb(queue: Queue, url: string): Promise<number> {
  const db = (redisConnection(url) as { db?: number }).db ?? 0;
  // (CLIENT LIST's fields are strings: db=1)
  return (await queue.getWorkers()).filter((w) => Number(w.db ?? 0) === db).length;
}

/** How long the coordinator waits for a Redis command before it says Redis is silent. */
const SILENT_REDIS_MS = 30_000;

/** How often a job that vanished from the queue (a Redis restart without its data, a flush) is put back. */
const REQUEUES = 3;

/** `p`, or `E_IO` with the message `what()` (read then: it may name the last error seen) once `ms` have passed. */
async function within<T>(p: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new CalderaError('E_IO', what())), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Coordinator side: enqueue `tasks` (job ids derived from the work directory and the task, so re-running enqueues the
 * same ids), follow them until each has completed or finally failed, report progress, and clean up. Tasks that fail
 * after all attempts are reported together in one CalderaError; the outputs of the others stay in the work directory,
 * so a later run only enqueues what is missing. On abort, jobs not yet started are withdrawn.
 */
export async function runOnQueue(
  url: string,
  a: Args,
  tasks: readonly QueueTask[],
  opts: {
    signal?: AbortSignal;
    onProgress?: (done: number, total: number) => void;
    log?: (o: Record<string, unknown>) => void;
    /**
     * The phase's tasks whose outputs are on disk already (an interrupted run's, resumed): their completed jobs are
     * removed from the queue with this run's (they stayed in Redis for ever).
     */
    finished?: readonly QueueTask[];
    /** How long a Redis command may go unanswered before the run says so on stderr (default 30 s). */
    silentMs?: number;
  },
): Promise<void> {
  if (tasks.length === 0 && !opts.finished?.length) return;
  const name = queueNameOf(a);
  const attempts = flagNumber(a, 'attempts', 3, POSITIVE_INT);
  const queue = new Queue(name, { connection: redisConnection(url) });
  const jobOptions = {
    attempts,
    backoff: { type: 'fixed' as const, delay: 500 },
    removeOnComplete: false,
    removeOnFail: false,
  };
  let lastError = '';
  queue.on('error', (e) => {
    lastError = e.message;
  });
  const ids = tasks.map(jobIdOf);
  const pending = new Map(ids.map((id, i) => [id, tasks[i]!]));
  // With Redis away every command waits (for ever: maxRetriesPerRequest is null), so each one is raced with the abort:
  // an interrupted run stops at once, whichever command it was in. `unanswered` counts the commands Redis has not
  // answered yet; `stopped` tells the abort's own error from any other (a job failure, say) seen after an abort.
  let unanswered = 0;
  let stopped = false;
  const interrupted = () => {
    stopped = true;
    return new CalderaError('E_ABORTED', 'interrupted');
  };
  // Redis silent for a while (down, unreachable): said once on stderr, and again once it has answered and gone silent
  // again, so that a run does not wait without a word (it waits on, for Redis to come back, or for Ctrl-C)
  let silentSaid = false;
  const silentMs = opts.silentMs ?? SILENT_REDIS_MS;
  const ask = async <T>(p: Promise<T>): Promise<T> => {
    unanswered++;
    const warn = setTimeout(() => {
      if (silentSaid) return;
      silentSaid = true;
      console.error(
        `caldera compress: Redis at ${shownRedisUrl(url)} has not answered for ${silentMs / 1000} s` +
          `${lastError ? ` (${lastError})` : ''}; waiting for it (Ctrl-C stops the run, keeping the finished jobs)`,
      );
    }, silentMs);
    const v = await untilAborted(
      p.finally(() => {
        unanswered--;
        silentSaid = false;
      }),
      opts.signal,
    ).finally(() => clearTimeout(warn)); // answered, or the run aborted
    if (opts.signal?.aborted) throw interrupted();
    return v as T;
  };
  let answering = true;
  let enqueuing = false;
  try {
    await ask(
      within(
        queue.client.then((c) => c.ping()),
        10_000,
        () => `cannot reach Redis at ${shownRedisUrl(url)}${lastError ? ` (${lastError})` : ''}`,
      ),
    );
    for (const old of await ask(jobsIn(queue, ids, ['completed', 'failed']))) await ask(old.remove());
    enqueuing = true;
    if (tasks.length > 0)
      await ask(
        queue.addBulk(
          tasks.map((t, i) => ({ name: t.kind, data: t, opts: { ...jobOptions, jobId: ids[i]! } })),
        ),
      );
    opts.log?.({ event: 'enqueued', queue: name, jobs: tasks.length });
    // a coordinator with no worker on its queue (none started yet, or another --queue-name) waits for ever: say so
    if (tasks.length > 0 && (await ask(workersOnDb(queue, url).catch(() => 1))) === 0)
      console.error(
        `caldera compress: no worker is listening on queue '${name}' yet; start one with ` +
          `caldera worker --queue ${shownRedisUrl(url)}${name === 'caldera' ? '' : ` --queue-name ${name}`}`,
      );
    const failed: { task: QueueTask; reason: string }[] = [];
    const requeued = new Map<string, number>();
    const poll = async () => {
      for (const [id, task] of [...pending]) {
        // the state first, then (failed) the job: a job read before its state could fail in between, and its
        // failedReason, read with it, was then missing ("m1: undefined", seen on a loaded machine)
        const state = await ask(queue.getJobState(id));
        if (state === 'completed') pending.delete(id);
        else if (state === 'failed') {
          pending.delete(id);
          const reason = (await ask(queue.getJob(id)))?.failedReason ?? 'failed (no reason recorded)';
          failed.push({ task, reason });
          opts.log?.({ event: 'job-failed', label: task.label, reason });
        } else if (state === 'unknown' && !(await ask(queue.getJob(id)))) {
          // gone from the queue (Redis restarted without its data, a flush, another coordinator's cleanup): done if
          // its output is on disk, else put back
          if (await hasTaskOutput(task)) pending.delete(id);
          else if ((requeued.get(id) ?? 0) >= REQUEUES) {
            pending.delete(id);
            const reason = `the job vanished from the queue ${REQUEUES + 1} times (is Redis losing its data?)`;
            failed.push({ task, reason });
            opts.log?.({ event: 'job-failed', label: task.label, reason });
          } else {
            requeued.set(id, (requeued.get(id) ?? 0) + 1);
            await ask(queue.add(task.kind, task, { ...jobOptions, jobId: id }));
            opts.log?.({ event: 'job-requeued', label: task.label });
          }
        }
      }
    };
    for (;;) {
      await poll();
      opts.onProgress?.(tasks.length - pending.size, tasks.length);
      if (pending.size === 0) break; // every job has ended: an abort from here on changes nothing of the outcome
      await sleep(250, opts.signal);
      if (opts.signal?.aborted) throw interrupted();
    }
    const cleanup = async () => {
      const done = [...ids, ...(opts.finished ?? []).map(jobIdOf)];
      for (const j of await jobsIn(queue, done, ['completed'])) await j.remove().catch(() => undefined);
    };
    // every job has ended: an abort now cuts the cleanup short, and the outcome (success or the failures) stands
    await within(untilAborted(cleanup(), opts.signal), 5000, () => 'removing the completed jobs').catch(
      () => undefined,
    );
    if (failed.length > 0) {
      const first = errorFrom(failed[0]!.reason, 'E_DEVICE');
      throw new CalderaError(
        first.code,
        `${failed.length} of ${tasks.length} jobs failed after ${attempts} attempts; the other jobs' outputs are ` +
          `kept in ${tasks[0]!.work} and a re-run only enqueues what is missing: ` +
          failed.map((f) => `${f.task.label}: ${f.reason}`).join('; '),
        { details: { failed: failed.map((f) => f.task.label) } },
      );
    }
  } catch (e) {
    if (!stopped) throw e;
    // withdraw the jobs no worker has started (this run's, or an earlier interrupted run's with the same ids), as far
    // as Redis answers within 5 s. Stopped before the jobs were sent, with a command Redis had not answered, Redis is
    // silent: no withdrawal, which would only wait out its 5 s.
    const withdraw = async () => {
      for (const j of await jobsIn(queue, pending.keys(), ['waiting', 'delayed', 'prioritized']))
        await j.remove().catch(() => undefined);
    };
    answering =
      enqueuing || unanswered === 0
        ? await within(withdraw(), 5000, () => 'withdrawing the jobs').then(
            () => true,
            () => false,
          )
        : false;
    throw new CalderaError('E_ABORTED', `queue run was aborted (${pending.size} jobs unfinished)`);
  } finally {
    // a Redis that did not answer the withdrawal will not answer a graceful close either
    if (answering) await closeWithin(queue.close(), () => queue.disconnect(), 5000);
    else await within(queue.disconnect(), 2000, () => 'disconnecting').catch(() => undefined);
  }
}

/**
 * A thread that runs tasks one at a time (see job-thread.ts). Aborting a task terminates the thread; the next task
 * starts a fresh one.
 */
class TaskThread {
  private thread: Thread | null = null;
  private seq = 0;

  constructor(private readonly threads: number) {}

  run(task: QueueTask, signal: AbortSignal): Promise<string> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) {
        reject(new CalderaError('E_ABORTED', `${task.label} was cancelled`));
        return;
      }
      const t = (this.thread ??= new Thread(new URL('./job-thread.js', import.meta.url), {
        workerData: { threads: this.threads },
      }));
      const seq = ++this.seq;
      let settled = false;
      const settle = (f: () => void) => {
        if (settled) return;
        settled = true;
        signal.removeEventListener('abort', onAbort);
        t.off('message', onMessage);
        t.off('error', onError);
        t.off('exit', onExit);
        f();
      };
      const drop = () => {
        if (this.thread === t) this.thread = null;
        void t.terminate();
      };
      const onAbort = () => {
        settle(() => reject(new CalderaError('E_ABORTED', `${task.label} was cancelled`)));
        drop();
      };
      const onMessage = (m: {
        seq: number;
        ok: boolean;
        result?: string;
        code?: string;
        message?: string;
      }) => {
        if (m.seq !== seq) return;
        settle(() => (m.ok ? resolve(m.result!) : reject(errorFrom(m.message ?? '', 'E_DEVICE', m.code))));
      };
      const onError = (e: Error) => {
        settle(() => reject(new CalderaError('E_DEVICE', `${task.label}: job thread failed: ${e.message}`)));
        drop();
      };
      const onExit = (code: number) => {
        if (this.thread === t) this.thread = null;
        settle(() =>
          reject(new CalderaError('E_DEVICE', `${task.label}: job thread exited with code ${code}`)),
        );
      };
      signal.addEventListener('abort', onAbort, { once: true });
      t.on('message', onMessage);
      t.on('error', onError);
      t.on('exit', onExit);
      t.postMessage({ seq, task });
    });
  }

  async dispose(): Promise<void> {
    const t = this.thread;
    this.thread = null;
    if (t) await t.terminate();
  }
}

export async function workerCommand(a: Args): Promise<number> {
  const url = flagString(a, 'queue');
  if (!url) throw new CalderaError('E_VALUE', 'caldera worker needs --queue redis://host:port');
  const name = queueNameOf(a);
  const threads = flagNumber(a, 'threads', 1, THREADS);
  // at most 256 jobs at once (as --threads); a lock of at most 2³¹ − 1 ms, the longest timer Node keeps (a longer one
  // fired every millisecond: BullMQ's lock renewal spun, with a TimeoutOverflowWarning each time)
  const concurrency = flagNumber(a, 'concurrency', 1, { integer: true, min: 1, max: 256 });
  const lockMs = flagNumber(a, 'lock-seconds', 30, { min: 1, max: 2_147_483 }) * 1000;
  await checkRedisReachable(url); // at once, where BullMQ's client would retry for 10 s (or for ever)
  const json = a.flags.has('json');
  const log = (o: Record<string, unknown>) =>
    json
      ? console.log(JSON.stringify(o))
      : console.error(`caldera worker: ${o.event} ${o.label ?? o.reason ?? ''}`.trimEnd());
  const stop = new AbortController();
  let lastError = '';
  const idle: TaskThread[] = [];
  const all: TaskThread[] = [];
  const worker = new Worker<QueueTask>(
    name,
    async (job, _token, jobSignal) => {
      // the job's own signal, aborted by the worker's stop or by BullMQ's (a plain controller and two listeners removed
      // when the job ends: Node 20 kept every AbortSignal.any joined to the long-lived stop signal, ~1.2 KB a job)
      const jobStop = new AbortController();
      const onStop = () => jobStop.abort(stop.signal.reason);
      const onJobSignal = () => jobStop.abort(jobSignal?.reason);
      if (stop.signal.aborted) onStop();
      else stop.signal.addEventListener('abort', onStop, { once: true });
      if (jobSignal?.aborted) onJobSignal();
      else jobSignal?.addEventListener('abort', onJobSignal, { once: true });
      const signal = jobStop.signal;
      const t0 = performance.now();
      log({
        event: 'job-start',
        id: job.id,
        kind: job.data.kind,
        label: job.data.label,
        attempt: job.attemptsMade + 1,
      });
      try {
        let thread = idle.pop();
        if (!thread) all.push((thread = new TaskThread(threads)));
        const result = await thread.run(job.data, signal).finally(() => idle.push(thread));
        log({
          event: 'job-done',
          id: job.id,
          label: job.data.label,
          result,
          seconds: (performance.now() - t0) / 1000,
        });
        return result;
      } catch (e) {
        if (stop.signal.aborted) {
          // cancelled by this worker's shutdown: hand the job back to the wait list without spending an attempt.
          // (BullMQ's "manual rate limit" error does exactly that and, unlike WaitingError, fetches no next job.)
          log({ event: 'job-returned', id: job.id, label: job.data.label });
          throw Worker.RateLimitError();
        }
        log({ event: 'job-failed', id: job.id, label: job.data.label, reason: (e as Error).message });
        throw e;
      } finally {
        stop.signal.removeEventListener('abort', onStop);
        jobSignal?.removeEventListener('abort', onJobSignal);
      }
    },
    {
      connection: redisConnection(url),
      concurrency,
      lockDuration: lockMs,
      stalledInterval: lockMs,
      // a job whose worker died is taken over this many times (the default --attempts) before it fails
      maxStalledCount: 3,
    },
  );
  // Redis lost after the worker was ready (down, restarted, unreachable): said once, at the first error after its
  // connection closed (BullMQ retries every second, each retry an error), and once more when it answers again; the
  // worker waits on for it meanwhile, as the coordinator does. (It waited without a word: a dead Redis looked like an
  // idle queue.) Other errors BullMQ reports on a live connection (a job's lost lock) are no loss of Redis.
  const watch = new RedisWatch();
  let ready: string | undefined; // Redis' answer to the first ping
  worker.on('error', (e) => {
    lastError = e.message;
    if (watch.error() && !stop.signal.aborted)
      log({
        event: 'redis-lost',
        reason: `Redis at ${shownRedisUrl(url)} (${e.message}); waiting for it to come back (Ctrl-C stops)`,
      });
  });
  // Shutdown: first stop fetching (close() sets the closing flag at once, then waits for the jobs in hand), then cancel
  // the jobs in hand, which hand themselves back to the queue.
  let closing: Promise<void> | undefined;
  // whether a job was in hand when the stop came (read then: the cancelled job frees its thread soon after)
  let inHand: boolean | undefined;
  const shutdown = () => {
    inHand ??= all.length > idle.length;
    closing ??= worker.close();
    stop.abort();
  };
  process.once('SIGINT', shutdown);
  process.once('SIGTERM', shutdown);
  try {
    // (a stop while Redis is silent ends the wait at once)
    ready = await untilAborted(
      within(
        worker.waitUntilReady().then((c) => c.ping()),
        10_000,
        () => `cannot reach Redis at ${shownRedisUrl(url)}${lastError ? ` (${lastError})` : ''}`,
      ),
      stop.signal,
    );
    if (!stop.signal.aborted) {
      const client = await worker.client;
      watch.ready();
      client.on('close', () => watch.close());
      client.on('ready', () => {
        if (watch.reconnected() && !stop.signal.aborted)
          log({ event: 'redis-back', reason: `Redis at ${shownRedisUrl(url)} answers again` });
      });
      log({ event: 'ready', queue: name, threads, concurrency });
      await new Promise((r) => stop.signal.addEventListener('abort', r, { once: true }));
    }
  } finally {
    process.off('SIGINT', shutdown);
    process.off('SIGTERM', shutdown);
    shutdown();
    // a job in hand is handed back by the close (10 s at most). With none, the close waits only for Redis (which may
    // be gone): 2 s; and stopped before Redis ever answered, a graceful close would wait for it in vain.
    if (ready === undefined && !inHand)
      await within(worker.disconnect(), 2000, () => 'disconnecting').catch(() => undefined);
    else await closeWithin(closing!, () => worker.disconnect(), inHand ? 10_000 : 2000);
    await Promise.all(all.map((t) => t.dispose()));
  }
  log({ event: 'stopped' }); // only a clean stop: an error (Redis unreachable) is the one thing printed
  return 0;
}
