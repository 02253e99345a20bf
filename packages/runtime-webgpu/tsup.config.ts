import { defineConfig } from 'tsup';

export default defineConfig({
  // the root (loading, the model, generation) and the kernels subpath (`@caldera/runtime-webgpu/kernels`)
  entry: { index: 'src/index.ts', kernels: 'src/kernels.ts' },
  format: ['esm', 'cjs'],
  // one copy of the shared code for CommonJS too (a chunk both entries require), so that classes such as
  // GpuCalderaLinear are the same objects whichever entry a caller reaches them through (tsup splits ESM by default)
  splitting: true,
  // the declarations name WebGPU's global types (GPUDevice, GPUBuffer, …): each refers to @webgpu/types (a dependency),
  // so that a consumer's compiler finds them (without, they were `any` under skipLibCheck, and errors without it); the
  // bundler of declarations drops such directives from the sources, so they are put back here
  dts: { banner: '/// <reference types="@webgpu/types" />' },
  sourcemap: true,
  clean: true,
  target: 'es2022',
});
