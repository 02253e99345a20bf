import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    // src/generated/e8p-encode-wasm.ts is a build output: compile it first when it is missing (a fresh clone) or
    // older than asm/e8p-encode.ts
    globalSetup: ['../../scripts/vitest-wasm-setup.mjs', '../../scripts/vitest-temp-root.mjs'],
    testTimeout: 60_000,
  },
});
