/**
 * Test helper: a WebGPU device in Node through the Dawn-based `webgpu` package, or null (tests then report
 * "skipped: no adapter"). Uses Chromium's SwiftShader Vulkan driver when VK_ICD_FILENAMES is unset and it is
 * installed. Dawn's instance is kept on `globalThis` for the whole run: if it is collected, mapAsync hangs.
 */
import { existsSync } from 'node:fs';
import { createDevice, type CalderaDevice } from '../device.js';

const SWIFTSHADER = '/usr/lib/chromium/vk_swiftshader_icd.json';

interface GpuGlobal {
  __calderaTestGpu?: { gpu: GPU; device: CalderaDevice | null; reason: string };
}

/** The shared test device, created on first use; `reason` says why there is none. */
export async function testDevice(): Promise<{ device: CalderaDevice | null; reason: string }> {
  const g = globalThis as GpuGlobal;
  if (g.__calderaTestGpu) return g.__calderaTestGpu;
  if (!process.env.VK_ICD_FILENAMES && existsSync(SWIFTSHADER)) process.env.VK_ICD_FILENAMES = SWIFTSHADER;
  let gpu: GPU;
  try {
    const mod = (await import('webgpu')) as { create(o: string[]): GPU; globals: Record<string, unknown> };
    Object.assign(globalThis, mod.globals);
    gpu = mod.create([]);
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

/** A test title that says why it was skipped when there is no device. */
export function gpuTitle(title: string, reason: string): string {
  return reason ? `${title} — ${reason}` : title;
}
