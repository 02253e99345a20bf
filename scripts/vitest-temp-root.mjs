// Vitest global setup shared by every package: the test run's temporary files go under one fresh directory
// (TMPDIR, which os.tmpdir() reads at each call and which the worker processes, the CLI processes the tests spawn
// and Chromium inherit), removed when the run ends, so that `npm test` leaves nothing in the system's temporary
// directory, whether or not each test removes what it made. (A test killed with its run leaves it behind, as any
// process killed with SIGKILL would.)
/* global process */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export default function setup() {
  const saved = process.env.TMPDIR;
  const root = mkdtempSync(join(tmpdir(), 'caldera-test-'));
  process.env.TMPDIR = root;
  return () => {
    if (saved === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = saved;
    rmSync(root, { recursive: true, force: true });
  };
}
