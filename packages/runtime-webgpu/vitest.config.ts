import { existsSync } from 'node:fs';
import { defineConfig } from 'vitest/config';

// WebGPU in Node (the `webgpu` package, Dawn) needs a Vulkan loader and driver. Debian's chromium package ships both
// (its own libvulkan.so.1 and SwiftShader) under /usr/lib/chromium: use them when the system has no loader. Set here,
// in the main process, so that the test worker processes start with them (the loader path is read at startup).
const CHROMIUM_LIB = '/usr/lib/chromium';
if (existsSync(`${CHROMIUM_LIB}/vk_swiftshader_icd.json`)) {
  process.env.VK_ICD_FILENAMES ??= `${CHROMIUM_LIB}/vk_swiftshader_icd.json`;
  const systemLoader = [
    '/usr/lib/x86_64-linux-gnu/libvulkan.so.1',
    '/usr/lib/aarch64-linux-gnu/libvulkan.so.1',
  ];
  if (!systemLoader.some((p) => existsSync(p)) && existsSync(`${CHROMIUM_LIB}/libvulkan.so.1`))
    process.env.LD_LIBRARY_PATH = [CHROMIUM_LIB, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':');
}

// A second driver for the packed-f16 kernels' tests (src/testing/gpu.ts: testF16Device): Mesa 25's lavapipe, which
// `npm test` unpacks here (scripts/fetch-lavapipe.sh). Listed after SwiftShader, which stays the default adapter;
// CALDERA_NO_LAVAPIPE leaves it out.
const LAVAPIPE = new URL('../../node_modules/.cache/caldera-lavapipe/lvp.json', import.meta.url).pathname;
if (
  process.env.VK_ICD_FILENAMES &&
  !process.env.CALDERA_NO_LAVAPIPE &&
  existsSync(LAVAPIPE) &&
  !process.env.VK_ICD_FILENAMES.includes(LAVAPIPE)
)
  process.env.VK_ICD_FILENAMES += `:${LAVAPIPE}`;

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    globalSetup: ['../../scripts/vitest-temp-root.mjs'],
    // SwiftShader runs the GPU tests on the CPU: the longest take 45–95 s alone and over 120 s beside CI's other tasks
    // on 2 cores (the 65 536-code E8P test timed out once at 120 s); a hang is still caught
    testTimeout: 300_000,
    hookTimeout: 300_000,
    // each test file in its own process (one Dawn instance each), two at a time: the GPU tests are mostly WGSL
    // compiles on the CPU, one core each
    maxWorkers: 2,
  },
});
