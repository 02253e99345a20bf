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

/** A lock file as read: its text and the owner it names (null when the text is not a lock). */
interface ReadLock {
  text: string;
  owner: LockOwner | null;
}

/** `lock` as it is now: 'missing' when there is no such file; an unreadable file counts as text that is no lock. */
async function readLock(lock: string): Promise<ReadLock | 'missing'> {
  let text: string;
  try {
    text = await readFile(lock, 'utf8');
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : { text: '', owner: null };
  }
  try {
    const o = JSON.parse(text) as Partial<LockOwner>;
    return { text, owner: typeof o.pid === 'number' && typeof o.host === 'string' ? (o as LockOwner) : null };
  } catch {
    return { text, owner: null };
  }
}

/** Who holds a lock, for an error message. */
function holder(owner: LockOwner | null, me: LockOwner): string {
  return owner
    ? `${owner.command} (pid ${owner.pid} on ${owner.host === me.host ? 'this host' : owner.host}, since ${owner.started})`
    : 'another process';
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

/** How long a process waits for another's takeover of a stale lock to end before it gives up. */
const TAKEOVER_WAIT_MS = 5000;

/**
 * Take `<out>.lock` for `command` (e.g. `caldera compress`), so that a second process writing the same output fails at
 * once with `E_IO` naming the one that writes it, instead of racing it (the first to finish removes the work files the
 * other still reads). The lock file appears whole or not at all (written aside, then hard-linked into place, which
 * fails when it exists; where there are no hard links, created exclusively in place).
 *
 * A lock whose process is gone is taken over: on this host, its pid no longer runs or is this process's own (left by
 * an earlier process with the same pid, a restarted container's, or by an earlier run in this one); or the file is no
 * lock. One held on another host (a shared file system) cannot be checked and is refused, naming the file to remove. So
 * two runs on the same `out` in one process at once are not told apart (one command per process, as the CLI runs them).
 * A takeover happens under `<out>.lock.takeover`, taken like the lock: of several processes that find the same stale
 * lock at once, one replaces it and the others then find its live lock and are refused. The stale lock is removed only
 * if it still holds the text that was judged stale. A takeover file left by a process that died within its takeover (a
 * window of milliseconds) is not judged: after {@link TAKEOVER_WAIT_MS} the error names it, to remove by hand.
 * Returns the release, which removes the lock if it is still this process's.
 */
export async function lockOutput(out: string, command: string): Promise<() => Promise<void>> {
  const lock = `${out}.lock`;
  const guard = `${lock}.takeover`;
  const me: LockOwner = { command, pid: process.pid, host: hostname(), started: new Date().toISOString() };
  const text = JSON.stringify(me) + '\n';
  const aside = `${lock}.${process.pid}-${Date.now()}`;
  try {
    await mkdir(dirname(lock), { recursive: true });
    await writeFile(aside, text);
    for (let takeovers = 0; ;) {
      if (await place(aside, lock, text)) break;
      const seen = await readLock(lock);
      if (seen === 'missing') continue; // released meanwhile: try again
      const { owner } = seen;
      // gone: no lock, or of this host and not running. Its pid being this process's own means it was left by an
      // earlier process that had the same pid (a restarted container's) or by an earlier run in this process.
      const gone =
        owner === null || (owner.host === me.host && (owner.pid === process.pid || !isRunning(owner.pid)));
      if (!gone || takeovers > 0)
        throw new CalderaError(
          'E_IO',
          `${out} is being written by ${holder(owner, me)}; wait for it to finish or stop it` +
            (owner && owner.host !== me.host ? `, then remove ${lock} if it is still there` : ''),
        );
      takeovers++;
      if (!(await place(aside, guard, text))) {
        // another process is taking it over: once it is done, the lock is its (refused above) or free again
        await waitUntilGone(guard, out);
        takeovers--;
        continue;
      }
      try {
        // still the stale lock (not one placed since by a process that found it released): removed
        const now = await readLock(lock);
        if (now !== 'missing' && now.text === seen.text) await unlink(lock).catch(() => undefined);
      } finally {
        await unlink(guard).catch(() => undefined);
      }
    }
  } catch (e) {
    if (e instanceof CalderaError) throw e;
    throw new CalderaError('E_IO', `cannot create ${lock} (${(e as Error).message})`, { cause: e });
  } finally {
    await unlink(aside).catch(() => undefined);
  }
  return async () => {
    const held = await readLock(lock);
    if (held !== 'missing' && held.owner?.pid === me.pid && held.owner.started === me.started)
      await unlink(lock).catch(() => undefined);
  };
}

/** Wait until another process's takeover file `guard` is gone; `E_IO` naming it after {@link TAKEOVER_WAIT_MS}. */
async function waitUntilGone(guard: string, out: string): Promise<void> {
  const deadline = Date.now() + TAKEOVER_WAIT_MS;
  while ((await readLock(guard)) !== 'missing') {
    if (Date.now() > deadline)
      throw new CalderaError(
        'E_IO',
        `${guard} has stood for ${TAKEOVER_WAIT_MS / 1000} s: a process taking over the stale lock of ${out} ` +
          'stopped midway; remove that file if no caldera process writes there',
      );
    await new Promise((r) => setTimeout(r, 20));
  }
}
