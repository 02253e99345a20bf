import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // one Dawn instance per process: run the GPU test files one after another in a single fork
    fileParallelism: false,
  },
});
