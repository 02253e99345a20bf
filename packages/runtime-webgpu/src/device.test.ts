import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';
import { describe, expect, it, vi } from 'vitest';
import { CalderaError } from '@caldera/core';
import { e8pDecode } from '@caldera/quant';
import { createDevice } from './device.js';
import { e8pSourcePairs } from './linear.js';

describe('without a GPU', () => {
  it('createDevice reports a missing WebGPU or adapter as CalderaError E_DEVICE', async () => {
    const noNavigator = await createDevice().catch((e: unknown) => e);
    expect(noNavigator).toBeInstanceOf(CalderaError);
    expect((noNavigator as CalderaError).code).toBe('E_DEVICE');
    const gpu = { requestAdapter: async () => null } as unknown as GPU;
    await expect(createDevice({ gpu })).rejects.toMatchObject({ code: 'E_DEVICE' });
  });

  it('createDevice checks its options: a gpu without requestAdapter, an adapter without requestDevice, an unknown powerPreference, an asyncCompile that is not a boolean or options that are not an object are E_VALUE naming them; null options are none', async () => {
    const value = (p: Promise<unknown>, message: string) =>
      expect(p).rejects.toThrow(expect.objectContaining({ code: 'E_VALUE', message: `E_VALUE: ${message}` }));
    const gpu = { requestAdapter: async () => null } as unknown as GPU;
    await value(
      createDevice({ gpu: {} as GPU }),
      'createDevice: gpu must be a WebGPU entry point (navigator.gpu, or create([]) of the webgpu package), got an object without requestAdapter()',
    );
    await value(
      createDevice({ adapter: {} as GPUAdapter }),
      'createDevice: adapter must be a GPUAdapter (from requestAdapter()), got an object without requestDevice()',
    );
    await value(
      createDevice({ gpu, powerPreference: 'bogus' as GPUPowerPreference }),
      "createDevice: powerPreference must be 'high-performance' or 'low-power', got 'bogus'",
    );
    await value(
      createDevice({ gpu, asyncCompile: 'yes' as never }),
      "createDevice: asyncCompile must be true or false, got 'yes'",
    );
    await value(createDevice('x' as never), 'createDevice: options must be an object, got a string');
    // null options, gpu or adapter: the defaults (here: no navigator.gpu)
    for (const o of [null, { gpu: null }, { adapter: null }])
      await expect(createDevice(o as never)).rejects.toMatchObject({ code: 'E_DEVICE' });
  });

  it('in Node, a missing adapter says how to get one (a Vulkan ICD such as SwiftShader); in a browser it does not', async () => {
    // before: "E_DEVICE: WebGPU: requestAdapter() returned no adapter", with no hint
    const gpu = { requestAdapter: async () => null } as unknown as GPU;
    const inNode = (await createDevice({ gpu }).catch((e: unknown) => e)) as CalderaError;
    expect(inNode.code).toBe('E_DEVICE');
    expect(inNode.message).toBe(
      "E_DEVICE: WebGPU: requestAdapter() returned no adapter; Dawn in Node needs a Vulkan loader (libvulkan.so.1) and a driver: without a GPU, set VK_ICD_FILENAMES to a Vulkan ICD such as Chromium's SwiftShader (/usr/lib/chromium/vk_swiftshader_icd.json) before starting Node, and where the system has no libvulkan.so.1 also LD_LIBRARY_PATH=/usr/lib/chromium (Chromium ships one)",
    );
    // a browser has no process.versions.node
    vi.stubGlobal('process', { ...process, versions: {} });
    let inBrowser: CalderaError;
    try {
      inBrowser = (await createDevice({ gpu }).catch((e: unknown) => e)) as CalderaError;
    } finally {
      vi.unstubAllGlobals();
    }
    expect(inBrowser.message).toBe('E_DEVICE: WebGPU: requestAdapter() returned no adapter');
  });

  it("createDevice requests the adapter's limits (storage buffers up to 16) and reports what the device got; how it compiles pipelines (asyncCompile: in a browser in the background, in Node one after another, unless asked)", async () => {
    let asked: GPUDeviceDescriptor | undefined;
    const limits = {
      maxStorageBufferBindingSize: 1 << 30,
      maxBufferSize: 1 << 31,
      maxComputeWorkgroupStorageSize: 32768,
      maxComputeInvocationsPerWorkgroup: 2048,
      maxComputeWorkgroupSizeX: 512,
    };
    const adapterWith = (storage: number) =>
      ({
        features: new Set<string>(),
        limits: { ...limits, maxStorageBuffersPerShaderStage: storage },
        info: { vendor: 'test', architecture: '', device: '', description: '' },
        requestDevice: async (desc: GPUDeviceDescriptor) => {
          asked = desc;
          const got = desc.requiredLimits as Record<string, number>;
          return { limits: { ...limits, ...got }, destroy: () => {} } as unknown as GPUDevice;
        },
      }) as unknown as GPUAdapter;
    for (const [storage, want] of [
      [8, 8],
      [12, 12],
      [30, 16],
    ] as const) {
      const dev = await createDevice({ adapter: adapterWith(storage) });
      expect(asked!.requiredLimits!.maxStorageBuffersPerShaderStage).toBe(want);
      expect(dev.maxStorageBuffers).toBe(want);
      expect(dev.shaderF16).toBe(false);
      // invocations per workgroup at the adapter's maximum up to 1024; usable: the smaller of total and x size
      expect(asked!.requiredLimits!.maxComputeInvocationsPerWorkgroup).toBe(1024);
      expect(asked!.requiredLimits!.maxComputeWorkgroupSizeX).toBe(512);
      expect(dev.maxWorkgroupInvocations).toBe(512);
    }
    // pipelines compile one after another in Node (Dawn polls for background compiles), in the background in a
    // browser (no process.versions.node), or as asked
    expect((await createDevice({ adapter: adapterWith(8) })).asyncCompile).toBe(false);
    expect((await createDevice({ adapter: adapterWith(8), asyncCompile: true })).asyncCompile).toBe(true);
    vi.stubGlobal('process', { ...process, versions: {} });
    try {
      expect((await createDevice({ adapter: adapterWith(8) })).asyncCompile).toBe(true);
      expect((await createDevice({ adapter: adapterWith(8), asyncCompile: false })).asyncCompile).toBe(false);
    } finally {
      vi.unstubAllGlobals();
    }
  });

  it('the GPU source table reproduces every E8P12 codeword with the kernel’s decoding rule', () => {
    // the same bit arithmetic as decodeCode() and elem() in the WGSL, in TypeScript, against @caldera/quant's decoder:
    // both the vector rule (signs spread onto the bf16 sign bits of the four pair words) and the one-coordinate rule
    const pairs = e8pSourcePairs();
    const bits = new Uint32Array(1);
    const asFloat = new Float32Array(bits.buffer);
    const f32 = (u: number) => ((bits[0] = u >>> 0), asFloat[0]!);
    const codes = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const want = e8pDecode(codes);
    let bad = 0;
    for (let c = 0; c < 65536; c++) {
      const sigma = c & 255;
      let pc = 0;
      for (let b = 0; b < 8; b++) pc += (sigma >> b) & 1;
      const par = pc & 1;
      const s2 = sigma ^ par;
      const shift = par ? -0.25 : 0.25;
      const spread = s2 | ((s2 & 0xf0) << 12);
      for (let j = 0; j < 4; j++) {
        const w = pairs[(c >> 8) * 4 + j]! ^ ((spread << (15 - j)) & 0x80008000);
        if (f32(w << 16) + shift !== want[c * 8 + 2 * j]) bad++;
        if (f32(w & 0xffff0000) + shift !== want[c * 8 + 2 * j + 1]) bad++;
      }
      for (let i = 0; i < 8; i++) {
        const w = pairs[(c >> 8) * 4 + (i >> 1)]!;
        const bit = (i >> 1) | ((i & 1) << 2);
        const neg = (s2 << (31 - bit)) & 0x80000000;
        if (f32(((i & 1 ? w & 0xffff0000 : w << 16) ^ neg) >>> 0) + shift !== want[c * 8 + i]) bad++;
      }
    }
    expect(bad).toBe(0);
  });

  it('bundles for the browser without Node built-ins', async () => {
    const out = await build({
      entryPoints: [fileURLToPath(new URL('./index.ts', import.meta.url))],
      bundle: true,
      platform: 'browser',
      format: 'esm',
      write: false,
      logLevel: 'silent',
    });
    const code = out.outputFiles[0]!.text;
    expect(code).not.toMatch(/require\(["'](node:)?(fs|path|worker_threads)/);
    expect(code).not.toMatch(/from ["']node:/);
    expect(code).toContain('unpack2x16float');
  });
});
