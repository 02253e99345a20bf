/**
 * Running the built `caldera` command in the CLI tests (not part of the build): synchronously, or in the background
 * until a file appears and then with a signal (an interruption at a known point of a run).
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, vi } from 'vitest';
import { referenceTextPath } from '@caldera/reference-model';
import { main } from './cli.js';

/** The built command (`npm run build` first). */
export const bin = fileURLToPath(new URL('../dist/bin.js', import.meta.url));

/** Run `caldera args…` to completion (`timeoutMs` at most, default 2 minutes): status, stdout, stderr. */
export const runCli = (args: string[], timeoutMs = 120_000) =>
  spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: timeoutMs });

/**
 * Start `caldera args…`, send `signal` `delayMs` (default 0) after `file` exists (polled every `pollMs`), and resolve
 * with the exit code (null when killed by the signal).
 */
export function runUntil(
  args: string[],
  file: string,
  signal: NodeJS.Signals,
  pollMs = 10,
  delayMs = 0,
): Promise<number | null> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [bin, ...args], { stdio: 'ignore' });
    const timer = setInterval(() => {
      if (existsSync(file)) {
        setTimeout(() => p.kill(signal), delayMs);
        clearInterval(timer);
      }
    }, pollMs);
    p.on('exit', (code) => {
      clearInterval(timer);
      resolve(code);
    });
  });
}

/**
 * Emit SIGINT in this process (an in-process `main` run) as soon as an entry of `dir` starts with `prefix`, such as
 * the temporary directory of a write; returns the function that stops watching.
 */
export function sigintWhenEntry(dir: string, prefix: string): () => void {
  return sigintWhen(() => readdirSync(dir).some((f) => f.startsWith(prefix)));
}

/**
 * Emit SIGINT in this process (an in-process `main` run) once `ready()` holds, looked at between the run's awaits;
 * returns the function that stops watching.
 */
export function sigintWhen(ready: () => boolean): () => void {
  const timer = setInterval(() => {
    if (ready()) {
      clearInterval(timer);
      process.emit('SIGINT');
    }
  }, 0);
  return () => clearInterval(timer);
}

/**
 * A temporary directory with short calibration and held-out texts from the reference corpus, and the compress
 * options of a fast run on them (a tiny model's whole compress takes about 2 s), and of an rtn run.
 */
export function fastCompressSetup(prefix: string): {
  tmp: string;
  data: string;
  heldOut: string;
  fast: string[];
  /** The options of an rtn run: `--method rtn` and the held-out text (rtn refuses calibration options). */
  rtn: string[];
} {
  const tmp = mkdtempSync(join(tmpdir(), prefix));
  const data = join(tmp, 'calib.txt');
  writeFileSync(data, readFileSync(referenceTextPath('train'), 'utf8').slice(0, 50_000));
  const heldOut = join(tmp, 'eval.txt');
  writeFileSync(heldOut, readFileSync(referenceTextPath('test'), 'utf8').slice(0, 20_000));
  const fast = [
    ...[
      '--windows',
      '4',
      '--length',
      '32',
      '--outer-iters',
      '1',
      '--lplr-iters',
      '1',
      '--eval-tokens',
      '128',
    ],
    ...['--data', data, '--eval', heldOut],
  ];
  // rtn takes no calibration options (it refuses them): the held-out text alone
  const rtn = ['--method', 'rtn', '--eval', heldOut, '--eval-tokens', '128'];
  return { tmp, data, heldOut, fast, rtn };
}

/**
 * `caldera` in-process, for a `describe` block: the returned `run(...argv)` calls `main` and resolves to its exit code
 * and what it printed (console.error as `stderr`, console.log as `stdout`, captured before each test and restored
 * after it).
 */
export function inProcessCli(): (
  ...argv: string[]
) => Promise<{ code: number; stderr: string; stdout: string }> {
  const err: string[] = [];
  const out: string[] = [];
  beforeEach(() => {
    vi.spyOn(console, 'error').mockImplementation((...x: unknown[]) => void err.push(x.join(' ')));
    vi.spyOn(console, 'log').mockImplementation((...x: unknown[]) => void out.push(x.join(' ')));
  });
  afterEach(() => vi.restoreAllMocks());
  return async (...argv) => {
    err.length = 0;
    out.length = 0;
    const code = await main(argv);
    return { code, stderr: err.join('\n'), stdout: out.join('\n') };
  };
}
