// Vitest global setup shared by the packages with AssemblyScript kernels: (re)build src/generated/*-wasm.ts when it
// is missing (a fresh clone) or older than its sources (the package's scripts/build-wasm.mjs --if-stale), so the
// tests never import a missing or stale module.
/* global process */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';

/** @param {{ config?: { root?: string } } | undefined} project vitest's project (its root is the package) */
export default function setup(project) {
  const root = project?.config?.root ?? process.cwd();
  execFileSync(process.execPath, [join(root, 'scripts', 'build-wasm.mjs'), '--if-stale'], {
    stdio: 'inherit',
  });
}
