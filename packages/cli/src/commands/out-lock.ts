import { hostname } from 'node:os';
import { dirname } from 'node:path';
import { link, mkdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { CalderaError } from '@caldera/core';

/** What `<out>.lock` (and `<out>.lock.takeover`) holds: the process writing `<out>` (taking the lock over). */
interface LockOwner {
  command: string;
  pid: number;
  host: string;
  started: string;
}

/**
 * How long a file that is no lock (empty or unparseable: one being written where there are no hard links) is given
 * before it counts as left behind, and how long a process waits for another's takeover of a stale lock to end.
 */
const SETTLE_MS = 5000;

/** Whether process `pid` of this host runs (a process of another user counts: EPERM). */
function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A lock file as read: its text, the owner it names (null when the text is no lock) and its age. */
interface ReadLock {
  text: string;
  owner: LockOwner | null;
  ageMs: number;
}

/** `file` as it is now: 'missing' when there is no such file; an unreadable one counts as an old file that is no lock. */
async function readLock(file: string): Promise<ReadLock | 'missing'> {
  let text: string;
  let ageMs: number;
  try {
    text = await readFile(file, 'utf8');
    ageMs = Date.now() - (await stat(file)).mtimeMs;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT'
      ? 'missing'
      : { text: '', owner: null, ageMs: Infinity };
  }
  try {
    const o = JSON.parse(text) as Partial<LockOwner>;
    const owner = typeof o.pid === 'number' && typeof o.host === 'string' ? (o as LockOwner) : null;
    return { text, owner, ageMs };
  } catch {
    return { text, owner: null, ageMs };
  }
}

/**
 * Whether the process a lock file names is gone: of this host and not running, or this process's own pid (left by an
 * earlier process that had the same pid, a restarted container's, or by an earlier run in this process); or the file
 * is no lock and older than {@link SETTLE_MS}. A young file that is no lock is being written: not judged yet (null).
 */
function isGone(read: ReadLock, me: LockOwner): boolean | null {
  const { owner } = read;
  if (owner === null) return read.ageMs > SETTLE_MS ? true : null;
  return owner.host === me.host && (owner.pid === process.pid || !isRunning(owner.pid));
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
 * Put a lock file in place: hard-link `aside` (already written) to `file`, so it appears whole; on a file system
 * without hard links, create `file` exclusively and write it (a reader may then catch it empty, for an instant: such a
 * file is given {@link SETTLE_MS}). False when `file` exists.
 */
async function place(aside: string, file: string, text: string): Promise<boolean> {
  try {
    await link(aside, file);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? '';
    if (code === 'EEXIST') return false;
    if (!NO_LINKS.has(code)) throw e;
  }
  try {
    await writeFile(file, text, { flag: 'wx' });
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
}

/**
 * Remove `file` if it still holds `text`: moved aside under a name of this process (atomic, so two removers never
 * both take it), then read; one that is not what was judged (replaced meanwhile) is put back, unless another file was
 * placed there since.
 */
async function removeIfStill(file: string, text: string): Promise<void> {
  const moved = `${file}.${process.pid}-${Date.now()}-removed`;
  try {
    await rename(file, moved);
  } catch {
    return; // gone already
  }
  try {
    if ((await readFile(moved, 'utf8').catch(() => null)) === text) return;
    try {
      await link(moved, file);
    } catch (e) {
      if (NO_LINKS.has((e as NodeJS.ErrnoException).code ?? '')) await rename(moved, file);
    }
  } finally {
    await unlink(moved).catch(() => undefined);
  }
}

/**
 * Take the takeover file `guard` for this process (text `text`, written at `aside`). True when taken; false once
 * another process's takeover has ended (the lock is then that process's, or free again) or a takeover file left by a
 * process that is gone (died within its takeover) was removed; `E_IO` naming the file when another process's stands
 * for more than {@link SETTLE_MS} (a takeover takes milliseconds: a host that cannot be checked, or a hung process).
 */
async function takeGuard(
  aside: string,
  guard: string,
  text: string,
  me: LockOwner,
  out: string,
): Promise<boolean> {
  if (await place(aside, guard, text)) return true;
  const deadline = Date.now() + SETTLE_MS;
  for (;;) {
    const g = await readLock(guard);
    if (g === 'missing') return false;
    if (isGone(g, me) === true) {
      await removeIfStill(guard, g.text);
      return false;
    }
    if (Date.now() > deadline)
      throw new CalderaError(
        'E_IO',
        `${guard} has stood for ${SETTLE_MS / 1000} s (${holder(g.owner, me)} is taking over the stale lock of ` +
          `${out}); remove that file if no caldera process writes there`,
      );
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Take `<out>.lock` for `command` (e.g. `caldera compress`), so that a second process writing the same output fails at
 * once with `E_IO` naming the one that writes it, instead of racing it (the first to finish removes the work files the
 * other still reads). The lock file appears whole or not at all (written aside, then hard-linked into place, which
 * fails when it exists; where there are no hard links, created exclusively in place, and a reader that finds it empty
 * or half-written reads it again for up to {@link SETTLE_MS}).
 *
 * A lock whose process is gone ({@link isGone}) is taken over. One held on another host (a shared file system) cannot
 * be checked and is refused, naming the file to remove. So two runs on the same `out` in one process at once are not
 * told apart (one command per process, as the CLI runs them). A takeover happens under `<out>.lock.takeover`, taken
 * like the lock: of several processes that find the same stale lock at once, one replaces it and the others then find
 * its live lock and are refused. The stale lock is removed only if it still holds the text that was judged stale. A
 * takeover file whose process died midway is removed the same way by the next process that needs it.
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
      const gone = isGone(seen, me);
      if (gone === null) {
        await new Promise((r) => setTimeout(r, 20)); // being written: read it again
        continue;
      }
      if (!gone || takeovers > 0)
        throw new CalderaError(
          'E_IO',
          `${out} is being written by ${holder(seen.owner, me)}; wait for it to finish or stop it` +
            (seen.owner && seen.owner.host !== me.host ? `, then remove ${lock} if it is still there` : ''),
        );
      if (!(await takeGuard(aside, guard, text, me, out))) continue; // another took it over: read the lock again
      takeovers++;
      try {
        // still the stale lock (not one placed since by a process that found it released): removed
        const now = await readLock(lock);
        if (now !== 'missing' && now.text === seen.text) await unlink(lock).catch(() => undefined);
      } finally {
        await removeIfStill(guard, text);
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
