import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { lockOutput } from './commands/out-lock.js';

const tmp = mkdtempSync(join(tmpdir(), 'caldera-out-lock-'));

describe('lockOutput', () => {
  it("takes over a lock in this process's own pid (a restarted container's), and releases only its own", async () => {
    const out = join(tmp, 'own');
    const lock = `${out}.lock`;
    // what a process killed earlier leaves when the new one gets the same pid (pid 1 in a container, say)
    writeFileSync(
      lock,
      JSON.stringify({ command: 'caldera compress', pid: process.pid, host: hostname(), started: 'then' }),
    );
    const release = await lockOutput(out, 'caldera merge');
    const held = JSON.parse(readFileSync(lock, 'utf8')) as { command: string; started: string };
    expect(held.command).toBe('caldera merge');
    expect(held.started).not.toBe('then');
    // a process on another host took it since (by hand, say): the release leaves that lock alone
    const theirs = JSON.stringify({ command: 'caldera compress', pid: 1, host: 'elsewhere', started: 'now' });
    writeFileSync(lock, theirs);
    await release();
    expect(readFileSync(lock, 'utf8')).toBe(theirs);
    await expect(lockOutput(out, 'caldera compress')).rejects.toThrow(
      `E_IO: ${out} is being written by caldera compress (pid 1 on elsewhere, since now); wait for it to finish or stop it, then remove ${lock} if it is still there`,
    );
    // nothing left beside it: the file written aside is gone on both paths
    expect(readdirSync(tmp).filter((f) => f.startsWith('own.lock.'))).toEqual([]);
  });

  it('a lock that is not one (unreadable) is taken over; an --out whose folder cannot be made is E_IO', async () => {
    const out = join(tmp, 'junk');
    writeFileSync(`${out}.lock`, 'not json');
    const release = await lockOutput(out, 'caldera compress');
    await release();
    expect(existsSync(`${out}.lock`)).toBe(false);
    writeFileSync(join(tmp, 'a-file'), '');
    await expect(lockOutput(join(tmp, 'a-file', 'out'), 'caldera compress')).rejects.toThrow(
      /^E_IO: cannot create .*a-file\/out\.lock \(/,
    );
  });

  it('a takeover file that stands (its process died midway) is E_IO after 5 s, naming it; the stale lock stays', async () => {
    const out = join(tmp, 'stuck');
    const stale = JSON.stringify({
      command: 'caldera compress',
      pid: deadPid(),
      host: hostname(),
      started: 'then',
    });
    writeFileSync(`${out}.lock`, stale);
    writeFileSync(`${out}.lock.takeover`, stale);
    const t0 = Date.now();
    await expect(lockOutput(out, 'caldera compress')).rejects.toThrow(
      `E_IO: ${out}.lock.takeover has stood for 5 s: a process taking over the stale lock of ${out} stopped midway; remove that file if no caldera process writes there`,
    );
    expect(Date.now() - t0).toBeGreaterThanOrEqual(5000);
    expect(readFileSync(`${out}.lock`, 'utf8')).toBe(stale);
    // removed by hand, as the message says: the stale lock is taken over
    unlinkSync(`${out}.lock.takeover`);
    await (
      await lockOutput(out, 'caldera compress')
    )();
    expect(readdirSync(tmp).filter((f) => f.startsWith('stuck.'))).toEqual([]);
  }, 20_000);

  it('of processes that find the same stale lock at once, exactly one takes it over; the others are refused', async () => {
    // 6 processes race for each of 3 outputs whose lock names a pid that does not run; each racer starts all of them
    // at the same instants. Before the takeover file, one racer's unlink of the stale lock could remove another's
    // fresh lock: 5 of 10 such trials measured 2 to 5 holders at once.
    const racers = 6;
    const outs = [0, 1, 2].map((i) => join(tmp, `race-${i}`));
    for (const out of outs)
      writeFileSync(
        `${out}.lock`,
        JSON.stringify({ command: 'caldera compress', pid: deadPid(), host: hostname(), started: 'then' }),
      );
    // far enough ahead for 6 node processes to load tsx on a busy 2-core machine; a late racer still races the rest
    const at = Date.now() + 5000;
    const racer = join(dirname(fileURLToPath(import.meta.url)), 'out-lock-racer.ts');
    const lines = await Promise.all(
      Array.from(
        { length: racers },
        () =>
          new Promise<string[]>((resolve, reject) => {
            const child = spawn(process.execPath, ['--import', 'tsx', racer, String(at), ...outs]);
            let stdout = '';
            let stderr = '';
            child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
            child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
            child.on('error', reject);
            child.on('close', (code) =>
              code === 0
                ? resolve(stdout.trim().split('\n'))
                : reject(new Error(`racer exit ${code}: ${stderr}`)),
            );
          }),
      ),
    );
    for (const [i, out] of outs.entries()) {
      const results = lines.map((l) => l[i]!);
      expect(
        results.filter((r) => r === 'held'),
        `${out}: ${results.join(' | ')}`,
      ).toHaveLength(1);
      // the others were refused because the winner holds it (not for the stale lock, nor a stuck takeover)
      for (const r of results.filter((r) => r !== 'held'))
        expect(r).toMatch(
          /^refused E_IO: .* is being written by caldera compress \(pid \d+ on this host, since 20/,
        );
      expect(existsSync(`${out}.lock`)).toBe(false);
      expect(existsSync(`${out}.lock.takeover`)).toBe(false);
    }
  }, 60_000);
});

/** A pid that no running process has (checked). */
function deadPid(): number {
  for (let pid = 4_000_000; ; pid--) {
    try {
      process.kill(pid, 0);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ESRCH') return pid;
    }
  }
}
