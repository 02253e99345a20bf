import { hostname } from 'node:os';
import { dirname } from 'node:path';
import { link, mkdir, readFile, unlink, writeFile } from 'node:fs/promises';
import { CalderaError } from '@caldera/core';

/** What `<out>.lock` holds: the process writing `<out>`. */
interface LockOwner {
  command: string;
  pid: number;
  host: string;
  started: string;
}

/** Whether process `pid` of this host runs (a process of another user counts: EPERM). */
function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The owner `<out>.lock` names: null when the file is not a readable lock, 'missing' when there is no such file. */
async function readOwner(lock: string): Promise<LockOwner | null | 'missing'> {
  let text: string;
  try {
    text = await readFile(lock, 'utf8');
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : null;
  }
  try {
    const o = JSON.parse(text) as Partial<LockOwner>;
    return typeof o.pid === 'number' && typeof o.host === 'string' ? (o as LockOwner) : null;
  } catch {
    return null;
  }
}

/** Error codes of a file system without hard links (some FUSE and SMB mounts). */
const NO_LINKS = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS']);

/**
 * Put the lock in place: hard-link `aside` (already written) to `lock`, so it appears whole; on a file system without
 * hard links, create `lock` exclusively and write it (a reader may then catch it half-written, for an instant, and take
 * it for stale). False when `lock` exists.
 */
async function place(aside: string, lock: string, text: string): Promise<boolean> {
  try {
    await link(aside, lock);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? '';
    if (code === 'EEXIST') return false;
    if (!NO_LINKS.has(code)) throw e;
  }
  try {
    await writeFile(lock, text, { flag: 'wx' });
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
}

/**
 * Take `<out>.lock` for `command` (e.g. `caldera compress`), so that a second process writing the same output fails at
 * once with `E_IO` naming the one that writes it, instead of racing it (the first to finish removes the work files the
 * other still reads). The lock file appears whole or not at all (written aside, then hard-linked into place, which
 * fails when it exists; where there are no hard links, created exclusively in place). A lock whose process is gone (on this host: its pid no longer runs, or is this process's own,
 * left by an earlier process with the same pid or an earlier run in this one; or unreadable) is taken over; one held
 * on another host (a shared file system) cannot be checked and is refused, naming the file to remove. So two runs on
 * the same `out` in one process at once are not told apart (one command per process, as the CLI runs them).
 * Returns the release, which removes the lock if it is still this process's.
 */
export async function lockOutput(out: string, command: string): Promise<() => Promise<void>> {
  const lock = `${out}.lock`;
  const me: LockOwner = { command, pid: process.pid, host: hostname(), started: new Date().toISOString() };
  const text = JSON.stringify(me) + '\n';
  const aside = `${lock}.${process.pid}-${Date.now()}`;
  try {
    await mkdir(dirname(lock), { recursive: true });
    await writeFile(aside, text);
    for (let takeovers = 0; ;) {
      if (await place(aside, lock, text)) break;
      const owner = await readOwner(lock);
      if (owner === 'missing') continue; // released meanwhile: try again
      // gone: unreadable, or of this host and not running. Its pid being this process's own means it was left by an
      // earlier process that had the same pid (a restarted container's) or by an earlier run in this process.
      const gone =
        owner === null || (owner.host === me.host && (owner.pid === process.pid || !isRunning(owner.pid)));
      if (!gone || takeovers > 0) {
        const who = owner
          ? `${owner.command} (pid ${owner.pid} on ${owner.host === me.host ? 'this host' : owner.host}, since ${owner.started})`
          : 'another process';
        throw new CalderaError(
          'E_IO',
          `${out} is being written by ${who}; wait for it to finish or stop it` +
            (owner && owner.host !== me.host ? `, then remove ${lock} if it is still there` : ''),
        );
      }
      // left by a process that is gone: taken over. (Two processes that find the same stale lock at the same moment
      // can both take it over: a narrow race, and only after a crash.)
      takeovers++;
      await unlink(lock).catch(() => undefined);
    }
  } catch (e) {
    if (e instanceof CalderaError) throw e;
    throw new CalderaError('E_IO', `cannot create ${lock} (${(e as Error).message})`, { cause: e });
  } finally {
    await unlink(aside).catch(() => undefined);
  }
  return async () => {
    const owner = await readOwner(lock);
    if (owner !== null && owner !== 'missing' && owner.pid === me.pid && owner.started === me.started)
      await unlink(lock).catch(() => undefined);
  };
}
