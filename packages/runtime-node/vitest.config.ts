import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    // src/generated/*-wasm.ts are build outputs: compile them first when missing (a fresh clone) or older than asm/
    globalSetup: ['../../scripts/vitest-wasm-setup.mjs', '../../scripts/vitest-temp-root.mjs'],
    testTimeout: 60_000,
  },
});
