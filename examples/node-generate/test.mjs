// `npm test` of this example, in Node rather than a shell pipeline (npm runs scripts with cmd.exe on Windows, which
// has no grep, /dev/null or `test`): a run on the default model, --help prints the usage, and a wrong call exits 2.
import { spawnSync } from 'node:child_process';

const node = (...args) => spawnSync(process.execPath, ['index.mjs', ...args], { encoding: 'utf8' });
const fail = (what, r) => {
  console.error(`example test failed: ${what} (exit ${r.status})\n${r.stdout}${r.stderr}`);
  process.exit(1);
};
const run = node();
if (run.status !== 0) fail('a run on the default model', run);
process.stdout.write(run.stdout);
const help = node('--help');
if (help.status !== 0 || !/^usage: /m.test(help.stdout)) fail('--help prints the usage', help);
const wrong = node('a', 'b', 'c');
if (wrong.status !== 2) fail('three positional arguments exit 2', wrong);
console.log('example test: ok');
