/**
 * `npm run bench -w @caldera/linalg [-- --quick] [-- --threads N] [-- --filter substring]`: runs the
 * registered cases and prints one JSON line per case. To add cases, export a `BenchCase[]` from a module
 * in `bench/cases/` and append it to `CASES` below.
 */
import { availableParallelism } from 'node:os';
import { createPool } from '../src/index.js';
import { browserCases } from './cases/browser.js';
import { factorCases } from './cases/factor.js';
import { gemmCases } from './cases/gemm.js';
import type { BenchCase } from './harness.js';
import { checkBenchArgs } from '../../../scripts/bench-args.js';
import { benchLine } from '../../../scripts/bench-line.js';

const CASES: BenchCase[] = [...gemmCases, ...browserCases, ...factorCases];

function argValue(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

async function main(): Promise<void> {
  checkBenchArgs(
    'usage: npm run bench -w @caldera/linalg [-- --quick] [-- --threads N] [-- --filter substring]',
    ['--quick'],
    ['--threads', '--filter'],
  );
  const quick = process.argv.includes('--quick');
  const threads = Number(argValue('--threads') ?? Math.min(availableParallelism(), 16));
  const filter = argValue('--filter');
  const pool = createPool({ threads });
  try {
    for (const c of CASES) {
      if (quick && !c.quick) continue;
      if (filter && !c.name.includes(filter)) continue;
      try {
        const r = await c.run({ quick, threads, pool });
        process.stdout.write(benchLine({ case: c.name, ...r }) + '\n');
      } catch (e) {
        // the case's line says what failed, and the run's exit status that one did (it was 0)
        process.stdout.write(benchLine({ case: c.name, value: null, error: String(e) }) + '\n');
        process.exitCode = 1;
      }
    }
  } finally {
    pool.dispose();
  }
}

await main();
