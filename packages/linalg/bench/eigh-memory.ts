/**
 * Peak memory of one `eigh` call (values and vectors), in units of n² doubles:
 * `npx tsx bench/eigh-memory.ts [--n 2048] [--threads 2]` (`--threads 0`: no pool, the default executor).
 * Linux only. After a small warm-up call (so that compiled code and the wasm tiers do not count) the
 * process's peak resident set is reset (`/proc/self/clear_refs` ← 5) with the input already built; the
 * printed `peak` is then VmHWM minus the resident set just before the call, i.e. everything the call made
 * resident — the output, its scratch and the WebAssembly memory it grew (kept by the pool or the default
 * executor), workers included. The budget is `2·output + input` = 3 n².
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { createPool, eigh, type Pool } from '../src/index.js';
import { spd } from './cases/factor.js';

function argValue(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

function status(field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync('/proc/self/status', 'utf8'));
  if (!m) throw new Error(`no ${field} in /proc/self/status`);
  return Number(m[1]) * 1024;
}

const n = Number(argValue('--n') ?? 2048);
const threads = Number(argValue('--threads') ?? 2);
const pool: Pool | undefined = threads > 0 ? createPool({ threads }) : undefined;
try {
  eigh(spd(200, 1), pool ? { pool } : {}); // warm-up
  const a = spd(n, 3);
  (globalThis as { gc?: () => void }).gc?.();
  const before = status('VmRSS');
  writeFileSync('/proc/self/clear_refs', '5');
  const t0 = performance.now();
  const { vectors } = eigh(a, pool ? { pool } : {});
  const seconds = (performance.now() - t0) / 1000;
  const peak = status('VmHWM') - before;
  const after = status('VmRSS') - before;
  const unit = 8 * n * n;
  process.stdout.write(
    JSON.stringify({
      n,
      threads,
      peak: Number((peak / unit).toFixed(3)),
      residentAfter: Number((after / unit).toFixed(3)),
      unit: 'n² doubles',
      seconds: Number(seconds.toFixed(2)),
      check: vectors.data.length === n * n,
    }) + '\n',
  );
} finally {
  pool?.dispose();
}
