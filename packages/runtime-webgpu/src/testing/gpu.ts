/**
 * Test and benchmark helper: a WebGPU device in Node through the Dawn-based `webgpu` package, or null (tests then report
 * "skipped: no adapter"). Uses Chromium's SwiftShader Vulkan driver when VK_ICD_FILENAMES is unset and it is
 * installed. Dawn's instance is kept on `globalThis` for the whole run: if it is collected, mapAsync hangs.
 */
import { existsSync } from 'node:fs';
import { createDevice, type CalderaDevice } from '../device.js';

const SWIFTSHADER = '/usr/lib/chromium/vk_swiftshader_icd.json';

interface GpuGlobal {
  __calderaTestGpu?: { gpu: GPU; device: CalderaDevice | null; reason: string };
}

/**
 * The test device as the f32 tests use it: {@link nodeDevice}'s, reporting no `shader-f16` whatever the adapter has,
 * so that every kernel computes in f32 and those tests mean the same on any adapter (the packed-f16 form has
 * {@link testF16Device}).
 */
export async function testDevice(): Promise<{ device: CalderaDevice | null; reason: string }> {
  const { device, reason } = await nodeDevice();
  return { device: device && { ...device, shaderF16: false }, reason };
}

/**
 * The shared device in Node (the benchmark's, as the adapter gives it), created on first use; `reason` says why there
 * is none. `CALDERA_DAWN_TOGGLES` names Dawn toggles to enable (comma-separated).
 */
export async function nodeDevice(): Promise<{ device: CalderaDevice | null; reason: string }> {
  const g = globalThis as GpuGlobal;
  if (g.__calderaTestGpu) return g.__calderaTestGpu;
  if (!process.env.VK_ICD_FILENAMES && existsSync(SWIFTSHADER)) process.env.VK_ICD_FILENAMES = SWIFTSHADER;
  let gpu: GPU;
  try {
    const mod = (await import('webgpu')) as { create(o: string[]): GPU; globals: Record<string, unknown> };
    Object.assign(globalThis, mod.globals);
    // SwiftShader when it is listed (vitest.config.ts may list lavapipe after it, for testF16Device)
    const swiftShader = process.env.VK_ICD_FILENAMES?.includes('vk_swiftshader_icd.json') ?? false;
    // CALDERA_DAWN_TOGGLES: Dawn toggles to enable, comma-separated (e.g. vulkan_enable_f16_on_nvidia: Dawn leaves
    // shader-f16 off on NVIDIA's Vulkan driver by default, for driver bugs; the benchmark can measure it anyway)
    const toggles = process.env.CALDERA_DAWN_TOGGLES;
    gpu = mod.create([
      ...(swiftShader ? ['adapter=SwiftShader'] : []),
      ...(toggles ? [`enable-dawn-features=${toggles}`] : []),
    ]);
  } catch (e) {
    return {
      device: null,
      reason: `skipped: no adapter (webgpu package failed to load: ${(e as Error).message})`,
    };
  }
  let device: CalderaDevice | null = null;
  let reason = '';
  try {
    device = await createDevice({ gpu });
  } catch (e) {
    reason = `skipped: no adapter (${(e as Error).message})`;
  }
  g.__calderaTestGpu = { gpu, device, reason };
  return g.__calderaTestGpu;
}

interface F16Global {
  __calderaTestF16Gpu?: { gpu: GPU | null; device: CalderaDevice | null; reason: string };
}

/**
 * A device with `shader-f16` for the packed-f16 kernels, or null with the reason: the default adapter when it has the
 * feature, else Mesa's lavapipe (`llvmpipe`) when VK_ICD_FILENAMES lists it (vitest.config.ts adds the one
 * scripts/fetch-lavapipe.sh unpacks). Kept on `globalThis` like {@link testDevice}.
 */
export async function testF16Device(): Promise<{ device: CalderaDevice | null; reason: string }> {
  const g = globalThis as F16Global;
  if (g.__calderaTestF16Gpu) return g.__calderaTestF16Gpu;
  const own = (await nodeDevice()).device;
  if (own?.shaderF16) {
    g.__calderaTestF16Gpu = { gpu: null, device: own, reason: '' };
    return g.__calderaTestF16Gpu;
  }
  let gpu: GPU | null = null;
  let device: CalderaDevice | null = null;
  let reason = 'skipped: no adapter with shader-f16 (SwiftShader has none; see scripts/fetch-lavapipe.sh)';
  try {
    const mod = (await import('webgpu')) as { create(o: string[]): GPU };
    gpu = mod.create(['adapter=llvmpipe']);
    const adapter = await gpu.requestAdapter();
    if (adapter?.features.has('shader-f16') && /llvmpipe/i.test(adapter.info.description ?? '')) {
      device = await createDevice({ gpu, adapter });
      reason = '';
    }
  } catch (e) {
    reason = `${reason}: ${(e as Error).message}`;
  }
  g.__calderaTestF16Gpu = { gpu, device, reason };
  return g.__calderaTestF16Gpu;
}

/** A test title that says why it was skipped when there is no device. */
export function gpuTitle(title: string, reason: string): string {
  return reason ? `${title} — ${reason}` : title;
}

/**
 * A device of its own on the test adapter's instance, for tests that destroy it (reporting no `shader-f16`, as
 * {@link testDevice}'s); null where there is no test device.
 */
export async function ownTestDevice(): Promise<CalderaDevice | null> {
  await nodeDevice();
  const g = (globalThis as GpuGlobal).__calderaTestGpu;
  if (!g?.device) return null;
  const device = await createDevice({ gpu: g.gpu });
  return { ...device, shaderF16: false };
}

/** Counts the pipelines `device` compiles from now on, synchronously and in the background (a test's spy). */
export function spyOnCompiles(device: GPUDevice): { sync: number; async: number } {
  const calls = { sync: 0, async: 0 };
  const sync = device.createComputePipeline.bind(device);
  const async = device.createComputePipelineAsync.bind(device);
  Object.assign(device, {
    createComputePipeline: (desc: GPUComputePipelineDescriptor) => (calls.sync++, sync(desc)),
    createComputePipelineAsync: (desc: GPUComputePipelineDescriptor) => (calls.async++, async(desc)),
  });
  return calls;
}
