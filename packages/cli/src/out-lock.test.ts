import { describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
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
});
