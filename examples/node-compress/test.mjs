// `npm test` of this example, in Node rather than a shell pipeline (npm runs scripts with cmd.exe on Windows, which
// has no /dev/null): --help writes nothing, then a quick compress into caldera-out/test-run (not over the checkpoint
// `npm start` writes).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

const node = (...args) => spawnSync(process.execPath, ['index.mjs', ...args], { encoding: 'utf8' });
const fail = (what, r) => {
  console.error(`example test failed: ${what} (exit ${r.status})\n${r.stdout}${r.stderr}`);
  process.exit(1);
};
const help = node('--help', '--out', 'caldera-out/no-run');
if (help.status !== 0 || !/^caldera compress/m.test(help.stdout) || existsSync('caldera-out/no-run'))
  fail('--help prints the usage and writes nothing', help);
const quickRun = ['--windows', '4', '--length', '64', '--eval-tokens', '1024', '--outer-iters', '1'];
const quick = spawnSync(
  process.execPath,
  ['index.mjs', ...quickRun, '--lplr-iters', '1', '--out', 'caldera-out/test-run'],
  { stdio: 'inherit' },
);
if (quick.status !== 0) fail('a quick compress', { ...quick, stdout: '', stderr: '' });
console.log('example test: ok');
