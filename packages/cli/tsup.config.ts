import { defineConfig } from 'tsup';

export default defineConfig({
  entry: ['src/index.ts', 'src/bin.ts', 'src/job-thread.ts', 'src/tokenize-thread.ts'],
  format: ['esm', 'cjs'],
  dts: { entry: 'src/index.ts' },
  sourcemap: true,
  clean: true,
  target: 'es2022',
  // import.meta.url in the CommonJS build (the threads' entries, dist/job-thread.js and dist/tokenize-thread.js, are
  // found beside the module that starts them)
  shims: true,
});
