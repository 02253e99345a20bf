// Compile asm/*.ts (AssemblyScript) to WebAssembly embedded in src/generated/*-wasm.ts (the repository's
// scripts/build-asm.mjs); `npm run build` runs it. `--if-stale`: only modules older than any asm/ source (the modules
// import each other's files) or this script (vitest's global setup uses this).
/* global process */
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildAsmModules } from '../../../scripts/build-asm.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const sources = readdirSync(join(root, 'asm')).map((f) => join(root, 'asm', f));

await buildAsmModules(
  root,
  [
    {
      src: 'caldera',
      name: 'CALDERA_WASM_BASE64',
      doc: "A CALDERA layer's forward: rotations, E8P table-driven product, low-rank term (WebAssembly SIMD, imported memory)",
    },
    {
      src: 'caldera',
      shared: true,
      name: 'CALDERA_SHARED_WASM_BASE64',
      doc: "The same module over a shared memory: decode-pool workers run their rows of a layer's Q̂ in it",
    },
    {
      src: 'attention',
      name: 'ATTENTION_WASM_BASE64',
      doc: 'Causal grouped-query attention over a KV cache (WebAssembly SIMD, imported memory)',
    },
    {
      src: 'batch',
      name: 'BATCH_WASM_BASE64',
      doc: "Layers' batch-path helpers: CALDERA rotations and E8P decode, f16 conversion (WebAssembly SIMD, imported memory)",
    },
    {
      src: 'matvec',
      name: 'MATVEC_WASM_BASE64',
      doc: 'Dense f32/f16 matrix–vector kernels (WebAssembly SIMD, imported memory)',
    },
    {
      src: 'matvec',
      shared: true,
      name: 'MATVEC_SHARED_WASM_BASE64',
      doc: "The same kernels over a shared memory: a dense layer's memory when decode-pool workers compute its rows",
    },
  ],
  { ifStale: process.argv.includes('--if-stale'), extraInputs: [fileURLToPath(import.meta.url), ...sources] },
);
