/**
 * Helpers for testing the `signal` option of long operations (not exported from the package).
 */
import { expect } from 'vitest';
import { isCalderaError } from '@caldera/core';

/**
 * A stand-in `AbortSignal` that counts reads of `aborted` (one per check of the callee) and reads as aborted from
 * read number `abortOnRead` on (never by default).
 */
export function countingSignal(abortOnRead = Infinity): {
  signal: AbortSignal;
  reads: () => number;
  reason: Error;
} {
  let reads = 0;
  const reason = new Error('test abort');
  const signal = {
    get aborted(): boolean {
      reads++;
      return reads >= abortOnRead;
    },
    reason,
    onabort: null,
    throwIfAborted(): void {
      if (reads >= abortOnRead) throw reason;
    },
    addEventListener(): void {},
    removeEventListener(): void {},
    dispatchEvent: (): boolean => true,
  } as unknown as AbortSignal;
  return { signal, reads: () => reads, reason };
}

/** Fail unless `a` and `b` are the same bit for bit: typed arrays element by element with `Object.is` (±0 differ). */
export function expectSameBits(a: unknown, b: unknown, path = 'result'): void {
  if (ArrayBuffer.isView(a) && ArrayBuffer.isView(b)) {
    const x = a as unknown as ArrayLike<number>;
    const y = b as unknown as ArrayLike<number>;
    expect(y.length, `${path}.length`).toBe(x.length);
    for (let i = 0; i < x.length; i++) if (!Object.is(x[i], y[i])) expect(y[i], `${path}[${i}]`).toBe(x[i]);
    return;
  }
  if (a !== null && b !== null && typeof a === 'object' && typeof b === 'object') {
    const ka = Object.keys(a).sort();
    expect(Object.keys(b).sort(), `${path} keys`).toEqual(ka);
    for (const k of ka)
      expectSameBits((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], `${path}.${k}`);
    return;
  }
  expect(Object.is(a, b), `${path}: ${String(a)} vs ${String(b)}`).toBe(true);
}

function thrown(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  return expect.unreachable('expected an abort');
}

function expectAborted(e: unknown, what: string, reason: unknown): void {
  expect(isCalderaError(e, 'E_ABORTED'), String(e)).toBe(true);
  expect((e as Error).message).toBe(`E_ABORTED: ${what} was aborted`);
  expect((e as Error).cause).toBe(reason);
}

/**
 * The abort checks of the long operation `run(signal)` (deterministic): (c) with a signal that never fires the
 * result is bit-identical to the one without a signal, and the signal is checked at least `minChecks` times;
 * (a) an already-aborted signal throws `E_ABORTED` naming `what`, the reason as cause; (b) a signal that fires at
 * the check half-way through throws right there — the checks run during the work, not only at entry.
 * Returns the number of checks of a full run.
 */
export function expectAbortable(what: string, run: (signal?: AbortSignal) => unknown, minChecks = 3): number {
  const plain = run();
  const never = countingSignal();
  expectSameBits(plain, run(never.signal));
  const total = never.reads();
  expect(total).toBeGreaterThanOrEqual(minChecks);

  const ac = new AbortController();
  const reason = new Error('stop');
  ac.abort(reason);
  expectAborted(
    thrown(() => run(ac.signal)),
    what,
    reason,
  );

  const mid = Math.ceil(total / 2);
  expect(mid).toBeGreaterThan(1);
  const half = countingSignal(mid);
  expectAborted(
    thrown(() => run(half.signal)),
    what,
    half.reason,
  );
  expect(half.reads()).toBe(mid);
  return total;
}
