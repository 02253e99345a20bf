// `npm test` of this example, in Node rather than a shell pipeline (npm runs scripts with cmd.exe on Windows, which
// has no grep, /dev/null or `test`): a 256 × 256 run, --help prints the usage, and invalid sizes exit 2.
import { spawnSync } from 'node:child_process';

const node = (...args) => spawnSync(process.execPath, ['index.mjs', ...args], { encoding: 'utf8' });
const fail = (what, r) => {
  console.error(`example test failed: ${what} (exit ${r.status})\n${r.stdout}${r.stderr}`);
  process.exit(1);
};
const run = node('--m', '256', '--n', '256');
if (run.status !== 0) fail('a 256 × 256 run', run);
process.stdout.write(run.stdout);
const help = node('--help');
if (help.status !== 0 || !/^usage: /m.test(help.stdout)) fail('--help prints the usage', help);
for (const bad of [['--m=-5'], ['--m', '63']]) {
  const r = node(...bad);
  if (r.status !== 2) fail(`${bad.join(' ')} exits 2`, r);
}
console.log('example test: ok');
