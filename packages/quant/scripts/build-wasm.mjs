// Compile asm/e8p-encode.ts (AssemblyScript) to WebAssembly embedded in src/generated/e8p-encode-wasm.ts (the
// repository's scripts/build-asm.mjs); `npm run build` runs it. `--if-stale`: do nothing when the generated file is
// newer than the source (vitest's global setup uses this so tests also run on a fresh clone without a build).
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildAsmModules } from '../../../scripts/build-asm.mjs';

await buildAsmModules(
  join(dirname(fileURLToPath(import.meta.url)), '..'),
  [
    {
      src: 'e8p-encode',
      name: 'E8P_ENCODE_WASM_BASE64',
      doc: 'The exact E8P12 nearest-codeword encoder (WebAssembly SIMD, imported memory)',
    },
  ],
  { ifStale: process.argv.includes('--if-stale'), extraInputs: [fileURLToPath(import.meta.url)] },
);
