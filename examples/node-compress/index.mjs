// Compress the embedded reference model (no arguments) through the same entry point as `caldera compress`,
// then print the report it wrote. Pass a Hugging Face model directory as the first argument to compress your own.
import { statSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { main } from '@caldera/cli';

const args = process.argv.slice(2);
/** The last `--out DIR` / `--out=DIR` before `--` (as the CLI reads it), or undefined. */
function givenOut(argv) {
  let dir;
  for (let i = 0; i < argv.length && argv[i] !== '--'; i++) {
    if (argv[i].startsWith('--out=')) dir = argv[i].slice('--out='.length);
    else if (argv[i] === '--out' && i + 1 < argv.length && !argv[i + 1].startsWith('--')) dir = argv[++i];
  }
  return dir;
}
const userOut = givenOut(args);
const out = resolve(userOut ?? join('caldera-out', 'example-node-compress'));
const reportFile = join(out, 'report.json');
// the report's identity before the run: --help, --plan-only, --shard … return 0 without writing one, and a report
// left by an earlier run must not be printed as this run's
const stamp = () => {
  const s = statSync(reportFile, { throwIfNoEntry: false });
  return s ? `${s.ino}:${s.mtimeMs}:${s.ctimeMs}:${s.size}` : null;
};
const before = stamp();
const code = await main(['compress', ...args, ...(userOut === undefined ? ['--out', out] : [])]);
if (code !== 0) process.exit(code);
const after = stamp();
if (after === null || after === before) process.exit(0); // no checkpoint written by this run: nothing to report
// with --json compress printed the report as JSON lines: no plain line after them
if ((args.includes('--') ? args.slice(0, args.indexOf('--')) : args).includes('--json')) process.exit(0);
const report = JSON.parse(readFileSync(reportFile, 'utf8'));
console.log(
  `\n${report.method}: ${report.bitsPerWeight.toFixed(3)} bits/weight, perplexity ${report.perplexity.original.toFixed(2)} → ${report.perplexity.compressed.toFixed(2)}, ${report.seconds.toFixed(0)} s`,
);
