/**
 * The fixed costs a decode step pays whatever its weights: a kernel launch that depends on the one before it (as every
 * launch of a step does), and the round trip of one token (submit a pass, read 4 bytes back). With a step's launch
 * count (`WebGpuModel.dispatchesPerToken`) they bound its speed from below, independently of memory bandwidth.
 */
import type { CalderaDevice } from '../src/index.js';
import {
  BufferUsage,
  encodeDispatches,
  KernelPipeline,
  MAP_READ_MODE,
  WG,
  type Dispatch,
} from '../src/kernels.js';

/** One workgroup adds 1 to every value of a small buffer it reads and writes: each launch depends on the last. */
const STEP_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32) { a[lid] = a[lid] + 1.0; }`;

export interface DispatchCost {
  /** Microseconds per dependent launch, in one pass of many. */
  dependentUs: number;
  /** Microseconds to submit a pass of one launch and read 4 bytes back (a greedy token's round trip). */
  roundTripUs: number;
}

/** Measure {@link DispatchCost} on `dev` (`launches` per pass; fewer passes on a CPU adapter). */
export async function measureDispatchCost(dev: CalderaDevice, launches = 2000): Promise<DispatchCost> {
  const device = dev.device;
  const a = device.createBuffer({
    size: WG * 4,
    usage: BufferUsage.STORAGE | BufferUsage.COPY_SRC,
  });
  const read = device.createBuffer({ size: 16, usage: BufferUsage.MAP_READ | BufferUsage.COPY_DST });
  const kernel = new KernelPipeline(device, 'step', STEP_WGSL);
  const bindGroup = device.createBindGroup({
    layout: kernel.layout,
    entries: [{ binding: 0, resource: { buffer: a } }],
  });
  const one: Dispatch = { label: 'step', kernel, bindGroup, workgroups: 1, batched: false, rowTile: 1 };
  const pass = async (n: number, readBack: boolean) => {
    const enc = device.createCommandEncoder();
    encodeDispatches(
      enc,
      Array.from({ length: n }, () => one),
    );
    if (readBack) enc.copyBufferToBuffer(a, 0, read, 0, 16);
    const t = performance.now();
    device.queue.submit([enc.finish()]);
    if (readBack) {
      await read.mapAsync(MAP_READ_MODE, 0, 16);
      read.unmap();
    } else await device.queue.onSubmittedWorkDone();
    return performance.now() - t;
  };
  await pass(launches, false);
  const reps = dev.fallbackAdapter ? 2 : 5;
  let many = Infinity;
  let few = Infinity;
  for (let i = 0; i < reps; i++) {
    many = Math.min(many, await pass(launches, false));
    few = Math.min(few, await pass(1, true));
  }
  a.destroy();
  read.destroy();
  return { dependentUs: (many * 1000) / launches, roundTripUs: few * 1000 };
}
