import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { referenceTextPath } from '@caldera/reference-model';
import { bin } from './test-cli.js';
import { hasRedis, startRedis } from './test-redis.js';

const dir = mkdtempSync(join(tmpdir(), 'caldera-scaleout-'));
const single = join(dir, 'single');
// The first ~200 kB of the reference calibration text: plenty for 8 windows, and quick to tokenize.
const data = join(dir, 'calib.txt');
writeFileSync(data, readFileSync(referenceTextPath('train'), 'utf8').slice(0, 200_000));
// Small settings: a whole 'original'-propagation run of the reference model (28 matrix jobs) in seconds.
const SMALL = [
  '--windows',
  '8',
  '--length',
  '64',
  '--rank',
  '8',
  '--outer-iters',
  '1',
  '--lplr-iters',
  '1',
  '--eval-tokens',
  '256',
  '--propagate',
  'original',
  '--json',
  '--data',
  data,
];

interface Done {
  status: number | null;
  stdout: string;
  stderr: string;
}

function start(args: string[]): { p: ChildProcess; done: Promise<Done>; out: () => string } {
  const p = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  p.stdout!.on('data', (d) => (stdout += d));
  p.stderr!.on('data', (d) => (stderr += d));
  const done = new Promise<Done>((resolve) => p.on('close', (status) => resolve({ status, stdout, stderr })));
  return { p, done, out: () => stdout };
}

const cli = (args: string[]) => start(args).done;

function same(a: string, b: string) {
  for (const f of ['model.safetensors', 'caldera.json'])
    expect(readFileSync(join(a, f)).equals(readFileSync(join(b, f))), `${f} of ${a} and ${b}`).toBe(true);
}

const events = (stdout: string) =>
  stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

describe('scale-out: manifest, shards and merge', () => {
  let singleStdout = '';
  beforeAll(async () => {
    const r = await cli(['compress', '--out', single, ...SMALL]);
    expect(r.status, r.stderr).toBe(0);
    singleStdout = r.stdout;
  }, 120_000);

  it('one process runs its Hessian chunks together (progress by block) and each matrix job (by CALDERA sub-step)', () => {
    const progress = events(singleStdout).filter((e) => e.event === 'progress');
    // default --hessian-chunks 4, run in one pass over the reference model's blocks (the source read once): the
    // chunks' share after each block, up to 1
    const within = progress.filter((e) => e.phase === 'hessian' && e.chunks !== undefined);
    expect(new Set(within.map((e) => e.chunks))).toEqual(new Set(['0,1,2,3']));
    const f = within.map((e) => e.chunkFraction as number);
    expect(f.at(-1)).toBe(1);
    f.forEach((x, i) => expect(x).toBeCloseTo((i + 1) / f.length, 12));
    within.forEach((e) => expect(e).toMatchObject({ done: 0, total: 4 }));
    const ev = events(singleStdout).filter((e) => e.event === 'hessian-chunk');
    expect(ev.map((e) => [e.chunk, e.result])).toEqual([0, 1, 2, 3].map((c) => [c, 'computed']));
    // --outer-iters 1: LR then Q, for each of the 28 jobs, while `done` counts the jobs finished before it
    const jobs = progress.filter((e) => e.phase === 'matrix' && e.layer !== undefined);
    expect(jobs.map((e) => e.layerFraction)).toEqual(Array(28).fill([0.5, 1]).flat());
    jobs.forEach((e, i) => expect(e).toMatchObject({ done: Math.floor(i / 2), total: 28 }));
    expect(new Set(jobs.map((e) => e.layer)).size).toBe(28);
  });

  it('2 concurrent shards + merge give the single-process checkpoint bytes; merge refuses an incomplete run', async () => {
    const out = join(dir, 'sharded');
    const s0 = await cli(['compress', '--out', out, ...SMALL, '--shard', '0/2', '--threads', '1']);
    expect(s0.status, s0.stderr).toBe(0);
    const early = await cli(['merge', out]);
    expect(early.status).toBe(1);
    expect(early.stderr).toMatch(/E_MISSING: 14 of 28 jobs have no output/);
    // the second shard finds the manifest and the Hessian chunks and runs only its 14 jobs
    const s1 = await cli(['compress', '--out', out, ...SMALL, '--shard', '1/2', '--threads', '1']);
    expect(s1.status, s1.stderr).toBe(0);
    const ev = events(s1.stdout);
    expect(ev.filter((e) => e.event === 'job' && e.result === 'computed')).toHaveLength(14);
    expect(ev.filter((e) => e.event === 'hessian-chunk')).toHaveLength(2); // its own chunks: already there
    expect(ev.filter((e) => e.event === 'hessian-chunk' && e.result === 'computed')).toHaveLength(0);
    // the model at another path on this machine than the one the last shard recorded (shards on machines with copies
    // of their own): merge names the recorded path and takes the model's path here (it failed with ENOENT only)
    const manifestFile = join(`${out}.work`, 'manifest.json');
    const recorded = readFileSync(manifestFile, 'utf8');
    const model = (JSON.parse(recorded) as { model: string }).model;
    writeFileSync(
      manifestFile,
      JSON.stringify({ ...JSON.parse(recorded), model: join(dir, 'elsewhere', 'model') }),
    );
    const lost = await cli(['merge', out]);
    expect(lost.status).toBe(1);
    expect(lost.stderr).toMatch(
      /E_MISSING: the model this run compressed, .*elsewhere\/model \(as .*manifest\.json records it\), is not there: give its path on this machine \(caldera merge .* <model>\)/,
    );
    const m = await cli(['merge', out, model, '--json']);
    expect(m.status, m.stderr).toBe(0);
    same(out, single);
    expect(existsSync(`${out}.work`)).toBe(false);
    const a = JSON.parse(readFileSync(join(single, 'report.json'), 'utf8'));
    const b = JSON.parse(readFileSync(join(out, 'report.json'), 'utf8'));
    const untimed = (r: { seconds: number; out: string; layers: { seconds: number }[] }) => ({
      ...r,
      seconds: 0,
      out: '',
      layers: r.layers.map((l) => ({ ...l, seconds: 0 })),
    });
    expect(untimed(b)).toEqual(untimed(a));
  }, 120_000);

  it('3 shards running at once agree too', async () => {
    const out = join(dir, 'three');
    const rs = await Promise.all(
      [0, 1, 2].map((i) => cli(['compress', '--out', out, ...SMALL, '--shard', `${i}/3`, '--threads', '1'])),
    );
    for (const r of rs) expect(r.status, r.stderr).toBe(0);
    // a file put into --out after the shards started is not lost: merge refuses, and succeeds once it is gone
    mkdirSync(out);
    writeFileSync(join(out, 'notes.txt'), 'mine');
    const refused = await cli(['merge', out]);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/is a non-empty directory that is not a Caldera checkpoint/);
    expect(readFileSync(join(out, 'notes.txt'), 'utf8')).toBe('mine');
    rmSync(out, { recursive: true });
    expect((await cli(['merge', out])).status).toBe(0);
    same(out, single);
  }, 120_000);

  it('rejects --shard without --propagate original and a malformed shard', async () => {
    const r = await cli(['compress', '--out', join(dir, 'x'), '--shard', '0/2']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/need --propagate original/);
    const r2 = await cli(['compress', '--out', join(dir, 'x'), ...SMALL, '--shard', '2/2']);
    expect(r2.stderr).toMatch(/--shard must be I\/N/);
  });
});

if (!hasRedis) console.warn('redis-server is not installed: the BullMQ queue-mode tests are skipped');

/**
 * A TCP proxy to 127.0.0.1:`port` that forwards both ways until a client sends bytes for which `freezeOn(text, n)`
 * holds (`n`: the index of that client's connection, from 0): from then on it forwards nothing, either way, and keeps
 * every socket open, as a Redis that has gone silent (a hung host, a network partition), not away. `frozen` resolves
 * then.
 */
async function freezingProxy(
  port: number,
  freezeOn: (text: string, connection: number) => boolean,
): Promise<{ url: string; frozen: Promise<void>; close: () => void }> {
  let freeze!: () => void;
  const frozen = new Promise<void>((resolve) => (freeze = resolve));
  let isFrozen = false;
  let connections = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const n = connections++;
    const upstream = connect({ host: '127.0.0.1', port });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
    }
    client.on('data', (d: Buffer) => {
      if (!isFrozen && freezeOn(d.toString('latin1'), n)) {
        isFrozen = true;
        freeze();
      }
      if (!isFrozen) upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => {
      if (!isFrozen) client.write(d);
    });
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `redis://127.0.0.1:${(server.address() as { port: number }).port}`,
    frozen,
    close() {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

/** `r`'s end, or SIGKILL after `ms` (its status then null): a hang fails an assertion on the status, with its output. */
async function endOf(r: ReturnType<typeof start>, ms: number): Promise<Done & { seconds: number }> {
  const t0 = performance.now();
  const t = setTimeout(() => r.p.kill('SIGKILL'), ms);
  const d = await r.done;
  clearTimeout(t);
  return { ...d, seconds: (performance.now() - t0) / 1000 };
}

describe.skipIf(!hasRedis)(
  'scale-out: BullMQ queue on a real redis-server (skipped without redis-server)',
  () => {
    let redis: ChildProcess | undefined;
    let url = '';
    const workers: ReturnType<typeof start>[] = [];
    const worker = (extra: string[] = []) => {
      const w = start(['worker', '--queue', url, '--json', '--lock-seconds', '2', ...extra]);
      workers.push(w);
      return w;
    };
    const stopWorkers = async () => {
      const ws = workers.splice(0);
      for (const w of ws) if (w.p.exitCode === null && w.p.signalCode === null) w.p.kill('SIGINT');
      return Promise.all(ws.map((w) => w.done));
    };

    beforeAll(async () => {
      ({ server: redis, url } = await startRedis());
      if (!existsSync(join(single, 'model.safetensors'))) {
        const r = await cli(['compress', '--out', single, ...SMALL]);
        expect(r.status, r.stderr).toBe(0);
      }
    }, 120_000);

    afterAll(async () => {
      await stopWorkers();
      redis?.kill('SIGKILL');
    });

    it('coordinator + 2 workers produce the single-process checkpoint bytes; workers stop cleanly on SIGINT', async () => {
      const w1 = worker();
      const w2 = worker();
      const out = join(dir, 'queue');
      const c = await cli(['compress', '--out', out, ...SMALL, '--queue', url]);
      expect(c.status, c.stderr).toBe(0);
      same(out, single);
      const progress = events(c.stdout).filter((e) => e.event === 'progress' && e.phase === 'matrix');
      expect(progress.at(-1)).toMatchObject({ done: 28, total: 28 });
      const [d1, d2] = await stopWorkers();
      for (const d of [d1!, d2!]) {
        expect(d.status, d.stderr).toBe(0);
        expect(events(d.stdout).at(-1)).toEqual({ event: 'stopped' });
      }
      const count = (s: string) => events(s).filter((e) => e.event === 'job-done').length;
      // both workers took part: 4 Hessian chunks + 28 matrix jobs between them
      expect(count(w1.out()) + count(w2.out())).toBe(32);
      expect(count(w1.out())).toBeGreaterThan(0);
      expect(count(w2.out())).toBeGreaterThan(0);
    }, 120_000);

    it('a worker SIGKILLed mid-job and one SIGINTed mid-job: their jobs are taken over and the bytes are unchanged', async () => {
      const victim = worker();
      const out = join(dir, 'killed');
      const coord = start(['compress', '--out', out, ...SMALL, '--queue', url]);
      // kill the victim as soon as it has started a matrix job (before any other worker exists)
      const killed = await new Promise<string>((resolve) => {
        const t = setInterval(() => {
          const s = events(victim.out()).find((e) => e.event === 'job-start' && e.kind === 'matrix');
          if (s) {
            victim.p.kill('SIGKILL');
            clearInterval(t);
            resolve(String(s.id));
          }
        }, 10);
      });
      await victim.done;
      expect(events(victim.out()).some((e) => e.event === 'job-done' && e.id === killed)).toBe(false);
      // a second worker is interrupted (SIGINT) in the middle of its first job: it hands the job back and exits cleanly
      const quitter = worker();
      const handed = await new Promise<string>((resolve) => {
        const t = setInterval(() => {
          const s = events(quitter.out()).find((e) => e.event === 'job-start');
          if (s) {
            quitter.p.kill('SIGINT');
            clearInterval(t);
            resolve(String(s.id));
          }
        }, 10);
      });
      const q = await quitter.done;
      expect(q.status, q.stderr).toBe(0);
      expect(events(q.stdout).filter((e) => e.event !== 'ready')).toEqual([
        expect.objectContaining({ event: 'job-start', id: handed }),
        expect.objectContaining({ event: 'job-returned', id: handed }),
        { event: 'stopped' },
      ]);
      const rescuer = worker();
      const c = await coord.done;
      expect(c.status, c.stderr).toBe(0);
      same(out, single);
      expect(events(rescuer.out()).some((e) => e.event === 'job-done' && e.id === killed)).toBe(true);
      await stopWorkers();
    }, 120_000);

    it('SIGINT to the coordinator withdraws the jobs no worker has started and exits 130, keeping <out>.work', async () => {
      const out = join(dir, 'cancelled');
      const coord = start([
        'compress',
        '--out',
        out,
        ...SMALL,
        '--queue',
        url,
        '--queue-name',
        'cancel-test',
      ]);
      while (!events(coord.out()).some((e) => e.event === 'enqueued'))
        await new Promise((r) => setTimeout(r, 20));
      const port = new URL(url).port;
      const waiting = () =>
        Number(
          spawnSync('redis-cli', ['-p', port, 'llen', 'bull:cancel-test:wait'], { encoding: 'utf8' }).stdout,
        );
      expect(waiting()).toBe(4); // the Hessian chunks, with no worker to take them
      coord.p.kill('SIGINT');
      const c = await coord.done;
      // as any interrupted compress: exit 130, the finished work kept for a rerun
      expect(c.status).toBe(130);
      expect(c.stderr).toMatch(
        /caldera compress: interrupted; the finished work is kept in .*\.work — rerun the same command to resume/,
      );
      expect(waiting()).toBe(0);
      expect(existsSync(out)).toBe(false);
      // with no worker on its queue, the coordinator said so (it waits for one)
      expect(c.stderr).toMatch(
        /no worker is listening on queue 'cancel-test' yet; start one with caldera worker --queue redis:\/\/127\.0\.0\.1:\d+ --queue-name cancel-test/,
      );
    });

    it('Redis losing its data mid-run (a flush): vanished jobs are put back, and the run gives the same bytes', async () => {
      const out = join(dir, 'flushed');
      const coord = start(['compress', '--out', out, ...SMALL, '--queue', url, '--queue-name', 'flush-test']);
      while (!events(coord.out()).some((e) => e.event === 'enqueued'))
        await new Promise((r) => setTimeout(r, 20));
      const port = new URL(url).port;
      expect(spawnSync('redis-cli', ['-p', port, 'flushdb'], { encoding: 'utf8' }).stdout.trim()).toBe('OK');
      worker(['--queue-name', 'flush-test']);
      const c = await coord.done;
      // before: "E_DEVICE: 4 of 4 jobs failed after 3 attempts; … the job vanished from the queue"
      expect(c.status, c.stderr).toBe(0);
      expect(events(c.stdout).filter((e) => e.event === 'job-requeued').length).toBe(4);
      same(out, single);
      await stopWorkers();
    }, 120_000);

    it('with Redis gone, SIGINT still stops a coordinator (130) and a worker (0) within seconds', async () => {
      const gone = await startRedis();
      const coord = start(['compress', '--out', join(dir, 'gone'), ...SMALL, '--queue', gone.url]);
      const w = start(['worker', '--queue', gone.url, '--json', '--queue-name', 'nobody']);
      while (
        !events(coord.out()).some((e) => e.event === 'enqueued') ||
        !events(w.out()).some((e) => e.event === 'ready')
      ) {
        for (const r of [coord, w])
          if (r.p.exitCode !== null)
            throw new Error(`exited early (${r.p.exitCode}): ${(await r.done).stderr}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      gone.server.kill('SIGKILL');
      await new Promise((r) => setTimeout(r, 1500)); // the coordinator polls, the worker waits for jobs: both stuck
      coord.p.kill('SIGINT');
      w.p.kill('SIGINT');
      // before: both waited for Redis to come back (minutes, or for ever)
      const [c, d] = await Promise.all([endOf(coord, 30_000), endOf(w, 30_000)]);
      expect(c.status, c.stderr).toBe(130);
      expect(c.stderr).toMatch(/caldera compress: interrupted/);
      expect(d.status, d.stderr).toBe(0);
      // a worker with no job in hand waits at most 2 s for the close and 2 s to disconnect (was 10 s + 2 s)
      expect(d.seconds).toBeLessThan(10);
    }, 120_000);

    it('a worker says once when Redis is lost (not at each retry) and once when it is back, and stops cleanly', async () => {
      const first = await startRedis();
      const w = start(['worker', '--queue', first.url, '--json']);
      const said = (event: string) => events(w.out()).filter((e) => e.event === event).length;
      const until = async (ok: () => boolean, what: string) => {
        const t0 = performance.now();
        while (!ok()) {
          if (w.p.exitCode !== null)
            throw new Error(`exited early (${w.p.exitCode}): ${(await w.done).stderr}`);
          if (performance.now() - t0 > 20_000) throw new Error(`no ${what}: ${w.out()}`);
          await new Promise((r) => setTimeout(r, 20));
        }
      };
      await until(() => said('ready') === 1, 'ready');
      first.server.kill('SIGKILL');
      await until(() => said('redis-lost') === 1, 'redis-lost'); // before: nothing, a dead Redis looked idle
      await new Promise((r) => setTimeout(r, 2500)); // BullMQ retries (and errs) every second meanwhile
      expect(said('redis-lost')).toBe(1);
      const lost = events(w.out()).find((e) => e.event === 'redis-lost')!;
      expect(lost.reason).toMatch(
        /^Redis at redis:\/\/127\.0\.0\.1:\d+ \(.*ECONNREFUSED.*\); waiting for it/,
      );
      const again = await startRedis(Number(new URL(first.url).port));
      try {
        await until(() => said('redis-back') === 1, 'redis-back');
        w.p.kill('SIGINT');
        const d = await endOf(w, 30_000);
        expect(d.status, d.stderr).toBe(0);
        expect(events(d.stdout).map((e) => e.event)).toEqual([
          'ready',
          'redis-lost',
          'redis-back',
          'stopped',
        ]);
      } finally {
        again.server.kill('SIGKILL');
      }
    }, 120_000);

    it('with Redis silent in the middle of a command, SIGINT stops a coordinator (130) and a worker (0) within seconds', async () => {
      const port = Number(new URL(url).port);
      // the coordinator: silent while it asks whether any worker listens (it had enqueued its jobs), which the
      // command before it waited out for ever (a CI run hung there once, with Redis killed at that moment)
      const p1 = await freezingProxy(port, (text) => /client\r\n\$4\r\nlist/i.test(text));
      const coord = start([
        'compress',
        '--out',
        join(dir, 'silent'),
        ...SMALL,
        '--queue',
        p1.url,
        '--queue-name',
        'silent',
      ]);
      // the worker: silent from its first command after the reachability check (connection 0) on
      const p2 = await freezingProxy(port, (_, n) => n > 0);
      const w = start(['worker', '--queue', p2.url, '--json', '--queue-name', 'silent']);
      await Promise.all([p1.frozen, p2.frozen]);
      coord.p.kill('SIGINT');
      w.p.kill('SIGINT');
      const [c, d] = await Promise.all([endOf(coord, 30_000), endOf(w, 30_000)]);
      p1.close();
      p2.close();
      expect(c.status, c.stderr).toBe(130);
      expect(c.stderr).toMatch(/caldera compress: interrupted/);
      // before: the worker waited 10 s for Redis, then failed (1) with 'cannot reach Redis'
      expect(d.status, d.stderr).toBe(0);
      expect(events(d.stdout)).toEqual([{ event: 'stopped' }]);
      // the coordinator spends at most 5 s trying to withdraw its jobs and 2 s disconnecting; the worker 2 s
      expect(c.seconds).toBeLessThan(20);
      expect(d.seconds).toBeLessThan(8);
    }, 120_000);

    it('a poisoned job fails with a clear CalderaError in the coordinator; the other results are kept and reused', async () => {
      const out = join(dir, 'poisoned');
      const plan = await cli(['compress', '--out', out, ...SMALL, '--plan-only']);
      expect(plan.status, plan.stderr).toBe(0);
      const manifest = JSON.parse(readFileSync(join(`${out}.work`, 'manifest.json'), 'utf8'));
      const victim = manifest.jobs.find((j: { name: string }) => j.name === 'model.layers.2.mlp.down_proj');
      const hFile = join(`${out}.work`, victim.hessian.file);
      const backup = join(dir, 'h.bak');
      copyFileSync(hFile, backup);
      const bytes = readFileSync(hFile);
      bytes[12345] ^= 0x40;
      writeFileSync(hFile, bytes);
      worker();
      const c = await cli(['compress', '--out', out, ...SMALL, '--queue', url, '--attempts', '2']);
      expect(c.status).toBe(1);
      expect(c.stderr).toMatch(
        /E_FORMAT: 1 of 28 jobs failed after 2 attempts.*model\.layers\.2\.mlp\.down_proj: .*Hessian .* is corrupted/,
      );
      expect(readdirSync(join(`${out}.work`, 'results'))).toHaveLength(27);
      expect(existsSync(out)).toBe(false);
      // repair the input: the re-run enqueues only the failed job and gives the single-process bytes
      copyFileSync(backup, hFile);
      const again = await cli(['compress', '--out', out, ...SMALL, '--queue', url]);
      expect(again.status, again.stderr).toBe(0);
      expect(events(again.stdout).find((e) => e.event === 'queue')).toMatchObject({
        enqueued: 1,
        cached: 27,
      });
      same(out, single);
      await stopWorkers();
    }, 120_000);

    it('a Ctrl-C after the last job has ended leaves the failure report standing (exit 1, not 130)', async () => {
      const out = join(dir, 'failed-then-sigint');
      expect((await cli(['compress', '--out', out, ...SMALL, '--plan-only'])).status).toBe(0);
      const manifest = JSON.parse(readFileSync(join(`${out}.work`, 'manifest.json'), 'utf8'));
      const victim = manifest.jobs.find((j: { name: string }) => j.name === 'model.layers.1.mlp.up_proj');
      const hFile = join(`${out}.work`, victim.hessian.file);
      const bytes = readFileSync(hFile);
      bytes[777] ^= 0x40;
      writeFileSync(hFile, bytes);
      worker();
      // the jobs that read this Hessian (up_proj's and gate_proj's: the same input) fail
      const first = await cli(['compress', '--out', out, ...SMALL, '--queue', url, '--attempts', '1']);
      expect(first.status, first.stderr).toBe(1);
      // The rerun enqueues those jobs again. It reads each (HGETALL) to remove the earlier run's failed job, then for
      // its failed reason, then in the cleanup once every job has ended: Redis goes silent at the first job read a
      // third time, and the coordinator gets its SIGINT there.
      const port = Number(new URL(url).port);
      const reads = new Map<string, number>();
      const proxy = await freezingProxy(port, (text) => {
        let third = false;
        for (const [, key] of text.matchAll(/hgetall\r\n\$\d+\r\n(bull:[^\r]*:matrix-[0-9a-f]+)\r\n/gi)) {
          reads.set(key!, (reads.get(key!) ?? 0) + 1);
          third ||= reads.get(key!) === 3;
        }
        return third;
      });
      const c = start(['compress', '--out', out, ...SMALL, '--queue', proxy.url, '--attempts', '1']);
      await proxy.frozen;
      c.p.kill('SIGINT');
      const d = await endOf(c, 30_000);
      proxy.close();
      await stopWorkers();
      // before: 'caldera compress: interrupted; …' and exit 130, the failure lost
      expect(d.status, d.stderr).toBe(1);
      expect(d.stderr).toMatch(
        /E_FORMAT: (\d+) of \1 jobs failed after 1 attempts.*model\.layers\.1\.mlp\.up_proj: /,
      );
      expect(d.stderr).not.toMatch(/interrupted/);
    }, 120_000);
  },
);
