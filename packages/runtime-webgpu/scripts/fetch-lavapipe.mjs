// `npm test`'s first step: fetch-lavapipe.sh on Linux, the only system it can do anything on. Elsewhere it says the
// f16 kernel tests will report 'skipped' and succeeds: npm runs scripts with cmd.exe on Windows, which has no `sh`
// (`sh scripts/fetch-lavapipe.sh && vitest run` failed there before any test ran).
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

if (process.platform !== 'linux') {
  console.error(
    `note: no lavapipe with shader-f16 (${process.platform} is not Linux); the f16 kernel tests will report 'skipped'`,
  );
  process.exit(0);
}
const script = fileURLToPath(new URL('./fetch-lavapipe.sh', import.meta.url));
const run = spawnSync('sh', [script, ...process.argv.slice(2)], { stdio: 'inherit' });
process.exit(run.status ?? 1);
