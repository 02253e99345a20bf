import { defineConfig } from 'tsup';

export default defineConfig({
  // the root (loading, the model, generation) and the kernels subpath (`@caldera/runtime-webgpu/kernels`)
  entry: { index: 'src/index.ts', kernels: 'src/kernels.ts' },
  format: ['esm', 'cjs'],
  // one copy of the shared code for CommonJS too (a chunk both entries require), so that classes such as
  // GpuCalderaLinear are the same objects whichever entry a caller reaches them through (tsup splits ESM by default)
  splitting: true,
  dts: true,
  sourcemap: true,
  clean: true,
  target: 'es2022',
});
