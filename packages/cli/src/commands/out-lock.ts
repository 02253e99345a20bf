import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { link, lstat, mkdir, open, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import { CalderaError, isTempNameOf, recoverReplaceDir } from '@caldera/core';
import { shellWord } from './shell-word.js';

/** What `<out>.lock` (and a takeover file) holds: the process writing `<out>` (taking a stale lock over). */
interface LockOwner {
  command: string;
  pid: number;
  host: string;
  started: string;
}

/**
 * How long a file that is no lock (empty or unparseable: one being written where there are no hard links) must stay
 * unchanged, by this process's clock (a file system's mtimes may come from another host's), before it counts as left
 * behind; a process waits twice that for another's takeover of a stale lock to end.
 */
const SETTLE_MS = 5000;

/** Takeovers of stale locks that found the lock changed (another stale one in its place) before a process gives up. */
const MAX_TAKEOVERS = 3;

/** Takeover files of one stale lock whose processes died before a takeover gives up (they are never removed). */
const MAX_TAKEOVER_FILES = 8;

/** Whether process `pid` of this host runs (a process of another user counts: EPERM). */
function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A lock file as read: its text, the owner it names (null when the text is no lock) and which file it was. */
interface ReadLock {
  text: string;
  owner: LockOwner | null;
  /** inode, size and mtime: the same text in another file (or the same file rewritten) is another lock */
  id: string;
}

/**
 * `file` as it is now, or 'missing'. `E_IO` naming it when it is not a regular file (a folder, a link) or cannot be
 * read: such a file is no lock this code placed, and removing it is left to a person.
 */
async function readLock(file: string): Promise<ReadLock | 'missing'> {
  const refused = (why: string) =>
    new CalderaError('E_IO', `${file} ${why}; remove it if no caldera process writes there`, {
      details: { path: file },
    });
  let text: string;
  let id: string;
  try {
    if (!(await lstat(file)).isFile()) throw refused('is not a regular file');
    // the text and the identity from one open file (a path read twice may name two files)
    const fh = await open(file, 'r');
    try {
      const st = await fh.stat();
      id = `${st.ino}:${st.size}:${st.mtimeMs}`;
      text = await fh.readFile('utf8');
    } finally {
      await fh.close();
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 'missing';
    if (e instanceof CalderaError) throw e;
    throw refused(`cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  try {
    const o = JSON.parse(text) as Partial<LockOwner>;
    const owner = typeof o.pid === 'number' && typeof o.host === 'string' ? (o as LockOwner) : null;
    return { text, owner, id };
  } catch {
    return { text, owner: null, id };
  }
}

/**
 * A watch on one path: `settled(read)` is whether the file read now is the one seen on every call for at least
 * {@link SETTLE_MS} (the same identity and text).
 */
function settleWatch(): { settled(read: ReadLock): boolean } {
  let seen: { key: string; since: number } | undefined;
  return {
    settled(read) {
      const key = `${read.id}\n${read.text}`;
      const now = performance.now();
      if (seen?.key !== key) seen = { key, since: now };
      return now - seen.since >= SETTLE_MS;
    },
  };
}

/**
 * Whether the process a lock file names is gone: of this host and not running, or this process's own pid (left by an
 * earlier process that had the same pid, a restarted container's, or by an earlier run in this process); or the file
 * is no lock and `settled` (unchanged for {@link SETTLE_MS}). One that is no lock and not settled may be one being
 * written: not judged yet (null).
 */
function isGone(read: ReadLock, me: LockOwner, settled: boolean): boolean | null {
  const { owner } = read;
  if (owner === null) return settled ? true : null;
  return owner.host === me.host && (owner.pid === process.pid || !isRunning(owner.pid));
}

/** Who holds a lock, for an error message. */
function holder(owner: LockOwner | null, me: LockOwner): string {
  return owner
    ? `${owner.command} (pid ${owner.pid} on ${owner.host === me.host ? 'this host' : owner.host}, since ${owner.started})`
    : 'another process';
}

/**
 * Put a lock file in place: hard-link `aside` (already written) to `file`, so it appears whole; where the link fails
 * otherwise than because `file` exists — a file system without hard links, which answers EPERM, ENOTSUP, EOPNOTSUPP
 * or ENOSYS (some FUSE and SMB mounts), or EISDIR or UNKNOWN (Windows on FAT32 and exFAT drives: every writing command
 * failed there) — create `file` exclusively and write it; what fails then is the error reported. A reader may catch
 * such a file empty, for an instant: it is judged only once it has stayed unchanged for {@link SETTLE_MS} (a writer
 * stalled that long between the create and the write, a stopped process, can lose its lock). False when `file`
 * exists.
 */
async function place(aside: string, file: string, text: string): Promise<boolean> {
  try {
    await link(aside, file);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
  }
  try {
    await writeFile(file, text, { flag: 'wx' });
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
}

/** Remove `file`; one already gone is fine, any other failure is `E_IO` saying what was being removed. */
async function remove(file: string, what: string): Promise<void> {
  try {
    await unlink(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT')
      throw new CalderaError('E_IO', `cannot remove ${what} ${file} (${code ?? (e as Error).message})`, {
        cause: e,
      });
  }
}

/**
 * Take over the stale lock `seen` of `lock` and put this process's in its place (true), or find that it is no longer
 * there to take (false: another process took it over, or it was released).
 *
 * Takers of the same stale lock go through takeover files named after its text, `<lock>.takeover-<hash>-<n>`, placed
 * like the lock: the one that places file n re-reads the lock, removes it only if it is still the stale one (the same
 * file, still judged gone), and places its own while it holds file n; the others wait for it. A takeover file is
 * removed only by its owner, or once the stale lock is gone (by the process that removed it): one left by a process
 * that died is not removed but passed over, to file n + 1. So no takeover file is ever replaced while a process may
 * hold it, and two processes never take the same stale lock over.
 */
async function takeOver(
  lock: string,
  seen: ReadLock,
  aside: string,
  text: string,
  me: LockOwner,
  out: string,
): Promise<boolean> {
  const base = `${lock}.takeover-${createHash('sha256').update(seen.text).digest('hex').slice(0, 16)}`;
  const removeTakeoverFiles = async () => {
    const prefix = `${basename(base)}-`;
    for (const f of await readdir(dirname(lock)).catch(() => [] as string[]))
      if (f.startsWith(prefix)) await unlink(join(dirname(lock), f)).catch(() => undefined);
  };
  // each takeover file has its own watch and deadline, from when this process first found it taken
  let watch = settleWatch();
  let deadline = Infinity;
  for (let n = 0; n < MAX_TAKEOVER_FILES;) {
    const mine = `${base}-${n}`;
    if (await place(aside, mine, text)) {
      try {
        const now = await readLock(lock);
        if (now !== 'missing') {
          // still the stale lock: the same file, and its process still gone (one that is no lock was judged settled)
          if (now.text !== seen.text || now.id !== seen.id) return false;
          if (now.owner && isGone(now, me, false) !== true) return false;
          await remove(lock, 'the stale lock');
        }
        // the stale lock is gone: its takeover files serve no one any more (a process inside one finds the lock changed)
        const held = await place(aside, lock, text);
        await removeTakeoverFiles();
        return held;
      } finally {
        await unlink(mine).catch(() => undefined);
      }
    }
    const other = await readLock(mine);
    if (other === 'missing') continue; // its takeover ended: try it again (the lock is then the other's, or free)
    if (isGone(other, me, watch.settled(other)) === true) {
      n++; // its process died: passed over
      watch = settleWatch();
      deadline = Infinity;
      continue;
    }
    deadline = Math.min(deadline, performance.now() + 2 * SETTLE_MS);
    if (performance.now() > deadline)
      throw new CalderaError(
        'E_IO',
        `${mine} has stood for ${(2 * SETTLE_MS) / 1000} s (${holder(other.owner, me)} is taking over the stale lock ` +
          `of ${out}); remove that file if no caldera process writes there`,
      );
    await sleep(20);
  }
  throw new CalderaError(
    'E_IO',
    `${MAX_TAKEOVER_FILES} processes died taking over the stale lock of ${out}; remove ${shellWord(lock)} and ${shellWord(base)}-* if no ` +
      'caldera process writes there',
  );
}

/**
 * Remove what writers of `out` killed midway left beside it: `<out>.tmp-<random>`, the temporary directory (or file)
 * a checkpoint, export or training run is written into before it is renamed to `out` (several GB for a large model,
 * never reused); and what a replacement of `out` killed midway left (core's `recoverReplaceDir`: the earlier output,
 * renamed aside, put back or removed). Called with `<out>.lock` held: no other process writes `out`, so none of them
 * is in use.
 */
async function removeStaleTemps(out: string): Promise<void> {
  for (const f of await readdir(dirname(out)).catch(() => [] as string[]))
    if (isTempNameOf(f, basename(out)))
      await rm(join(dirname(out), f), { recursive: true, force: true }).catch(() => undefined);
  await recoverReplaceDir(out);
}

/**
 * Take `<out>.lock` for `command` (e.g. `caldera compress`), so that a second process writing the same output fails at
 * once with `E_IO` naming the one that writes it, instead of racing it (the first to finish removes the work files the
 * other still reads). The lock file appears whole or not at all (written aside, then hard-linked into place, which
 * fails when it exists; where there are no hard links, created exclusively in place, and a reader that finds it empty
 * or half-written reads it again until it has stayed so for {@link SETTLE_MS}).
 *
 * A lock whose process is gone ({@link isGone}) is taken over ({@link takeOver}): of several processes that find it at
 * once, one replaces it and the others then find its live lock and are refused. One held on another host (a shared
 * file system) cannot be checked and is refused, naming the file to remove. So two runs on the same `out` in one
 * process at once are not told apart (one command per process, as the CLI runs them). A `<out>.lock` that is not a
 * regular file, or cannot be read, is `E_IO` naming it. With the lock taken, what killed writers left beside `out`
 * is removed ({@link removeStaleTemps}). Returns the release, which removes the lock if it is still
 * this process's.
 */
export async function lockOutput(out: string, command: string): Promise<() => Promise<void>> {
  const lock = `${out}.lock`;
  const me: LockOwner = { command, pid: process.pid, host: hostname(), started: new Date().toISOString() };
  const text = JSON.stringify(me) + '\n';
  const aside = `${lock}.${process.pid}-${Date.now()}`;
  try {
    await mkdir(dirname(lock), { recursive: true });
    await writeFile(aside, text);
    const watch = settleWatch();
    for (let round = 0, takeovers = 0; ; round++) {
      if (round > 0) await sleep(20); // a lock released, being written, or taken over meanwhile: read it again soon
      if (await place(aside, lock, text)) break;
      const seen = await readLock(lock);
      if (seen === 'missing') continue;
      const gone = isGone(seen, me, watch.settled(seen));
      if (gone === null) continue; // no lock, not yet unchanged for 5 s: maybe one being written
      if (!gone)
        throw new CalderaError(
          'E_IO',
          `${out} is being written by ${holder(seen.owner, me)}; wait for it to finish or stop it` +
            (seen.owner && seen.owner.host !== me.host
              ? `, then remove ${shellWord(lock)} if it is still there`
              : // a caldera killed without its clean-up (a closed console window, taskkill /F) whose pid now runs
                // something else: Windows reuses pids soon
                `; if pid ${seen.owner?.pid ?? '?'} is no caldera process, remove ${shellWord(lock)}`),
        );
      // a takeover fails when the lock changed meanwhile: to a live lock (refused above next round) or, again and
      // again, to another that is gone
      if (takeovers >= MAX_TAKEOVERS)
        throw new CalderaError(
          'E_IO',
          `${lock} changed during each of ${MAX_TAKEOVERS} takeovers and still names a process that is gone ` +
            `(${holder(seen.owner, me)}); remove it if no caldera process writes there`,
        );
      takeovers++;
      if (await takeOver(lock, seen, aside, text, me, out)) break;
    }
  } catch (e) {
    if (e instanceof CalderaError) throw e;
    throw new CalderaError('E_IO', `cannot create ${lock} (${(e as Error).message})`, { cause: e });
  } finally {
    await unlink(aside).catch(() => undefined);
  }
  await removeStaleTemps(out);
  return async () => {
    const held = await readLock(lock).catch(() => 'missing' as const);
    if (held !== 'missing' && held.owner?.pid === me.pid && held.owner.started === me.started)
      await unlink(lock).catch(() => undefined);
  };
}

/**
 * Run `work` with `<out>.lock` held for `command` ({@link lockOutput}: a second writer of `out` fails at once, and what
 * killed writers left beside it is removed first), released however it ends.
 */
export async function withOutputLock<T>(out: string, command: string, work: () => Promise<T>): Promise<T> {
  const unlock = await lockOutput(out, command);
  try {
    return await work();
  } finally {
    await unlock();
  }
}
