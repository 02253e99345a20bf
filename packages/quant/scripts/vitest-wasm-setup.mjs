// Vitest global setup: (re)build src/generated/*-wasm.ts when it is missing (a fresh clone) or older than its
// AssemblyScript source (see build-wasm.mjs --if-stale), so the tests never import a missing or stale module.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export default function setup() {
  execFileSync(process.execPath, [fileURLToPath(new URL('build-wasm.mjs', import.meta.url)), '--if-stale'], {
    stdio: 'inherit',
  });
}
