// What a fresh large array costs on this machine: allocates 40 Float32Arrays of 48 MB one after another (each
// dropped before the next), writing one value per 4 KiB page, and prints the wall time per array and the minor page
// faults of the process (/proc/self/stat), once with the default allocator settings and once with glibc's mmap
// threshold raised (GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967295), so that freed arrays are reused instead of
// returned to the kernel and faulted in again. JSON lines on stdout.
//   node docs/scripts/measure-page-faults.mjs
/* global process, console, performance */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const ARRAYS = 40;
const LENGTH = 12 * 2 ** 20; // 48 MiB of f32

const minorFaults = () => Number(readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ')[7]);

if (process.argv[2] === '--child') {
  const f0 = minorFaults();
  const t0 = performance.now();
  let keep = 0;
  for (let i = 0; i < ARRAYS; i++) {
    const a = new Float32Array(LENGTH);
    for (let j = 0; j < a.length; j += 1024) a[j] = j;
    keep += a[LENGTH - 1024];
  }
  const ms = (performance.now() - t0) / ARRAYS;
  const faults = (minorFaults() - f0) / ARRAYS;
  process.stdout.write(
    JSON.stringify({ msPerArray: Number(ms.toFixed(1)), faultsPerArray: Math.round(faults), keep: keep > 0 }),
  );
} else {
  const script = fileURLToPath(import.meta.url);
  for (const tunables of [undefined, 'glibc.malloc.mmap_threshold=4294967295']) {
    const env = { ...process.env };
    delete env.GLIBC_TUNABLES;
    if (tunables) env.GLIBC_TUNABLES = tunables;
    const r = spawnSync(process.execPath, [script, '--child'], { env, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(r.stderr);
    console.log(
      JSON.stringify({
        case: tunables ? 'fresh_48mib_array_mmap_threshold_raised' : 'fresh_48mib_array_default',
        arrayMiB: (LENGTH * 4) / 2 ** 20,
        ...JSON.parse(r.stdout),
        GLIBC_TUNABLES: tunables ?? null,
      }),
    );
  }
}
