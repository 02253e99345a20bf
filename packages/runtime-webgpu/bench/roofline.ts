/**
 * Memory-bandwidth roofline of the compressed matrix–vector product: effective bandwidth (weight bytes read per
 * second) of CALDERA layers and of their fused E8P kernel alone, next to a dense f16 matvec of the same shape and a
 * plain streaming read (the roofline anchor, measured in the same run). The layers are distinct buffers totalling
 * more than a GPU's last-level cache, run back to back as in a decode step, so every byte comes from memory.
 */
import { Rng } from '@caldera/core';
import { randomDecomposition } from '@caldera/lowrank';
import {
  createLinearContext,
  e8pSourceTable,
  GpuCalderaLinear,
  gpuCodecOf,
  packCodePlanes,
  storageBuffer,
  uploadMatrix,
  WG,
  BufferUsage,
  encodeDispatches,
  Kernels,
  type CalderaDevice,
  type Dispatch,
} from '../src/index.js';

/** Reads every 16-byte word of `a` once (grid-stride); the guarded write keeps the loads alive. */
const STREAM_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let n = arrayLength(&a);
  var acc = vec4<u32>(0u);
  for (var i = gid.x; i < n; i += nw.x * ${WG}u) { acc ^= a[i]; }
  if (acc.x == 0x9e3779b9u && acc.y == 0x7f4a7c15u) { out[0] = acc.z ^ acc.w; }
}`;

/** Seconds per pass of `list`: one warm-up pass, then enough passes for ~0.3 s (2 on a CPU adapter). */
async function secondsPerPass(dev: CalderaDevice, list: Dispatch[]): Promise<number> {
  const run = async (passes: number) => {
    const enc = dev.device.createCommandEncoder();
    for (let i = 0; i < passes; i++) encodeDispatches(enc, list);
    const t = performance.now();
    dev.device.queue.submit([enc.finish()]);
    await dev.device.queue.onSubmittedWorkDone();
    return (performance.now() - t) / 1000;
  };
  await run(1);
  const one = await run(1);
  const passes = dev.fallbackAdapter ? 2 : Math.min(500, Math.max(5, Math.ceil(0.3 / one)));
  return (await run(passes)) / passes;
}

export interface RooflineOptions {
  /** Square layer size (default 4096). */
  size?: number;
  /** Rank of L·R (default 64). */
  rank?: number;
  /** Weight bytes each variant streams per pass (default 512 MiB on a GPU, 16 MiB on a CPU adapter). */
  targetBytes?: number;
}

/** Measure and return the roofline case (bytes/s in GB/s, 1e9). */
export async function rooflineCase(
  dev: CalderaDevice,
  options: RooflineOptions = {},
): Promise<{ value: number; refs: Record<string, unknown> }> {
  const size = options.size ?? 4096;
  const rank = options.rank ?? 64;
  const target = options.targetBytes ?? (dev.fallbackAdapter ? 16 : 512) * 2 ** 20;
  const kernels = new Kernels(dev);
  const d = randomDecomposition(size, size, rank, new Rng(11));
  const owned: { destroy(): void }[] = [];
  const buf = (data: ArrayBufferView, label: string) => {
    const b = storageBuffer(dev, data, label);
    owned.push(b);
    return b;
  };
  // CALDERA layers (every dispatch of the layer: rotations, R̂·x', the fused Q̂ + L̂·z kernel)
  const first = new GpuCalderaLinear(dev, d, null, 'layer 0');
  const count = Math.max(2, Math.ceil(target / first.gpuBytes));
  const layers = [first];
  for (let i = 1; i < count; i++) layers.push(new GpuCalderaLinear(dev, d, null, `layer ${i}`));
  const ctx = createLinearContext(dev, kernels, first.needs);
  const x = buf(new Rng(12).fillNormal(new Float32Array(size)), 'x');
  const out = buf(new Float32Array(size), 'out');
  const layerList = layers.flatMap((l) => l.bind(ctx, x, out, false));
  const layerBytes = count * first.gpuBytes;
  // the fused kernel alone, on buffers of its own: Q̂'s codes and L̂'s packed codes
  const q = gpuCodecOf(d.q);
  if (d.l.kind !== 'lattice') throw new Error('randomDecomposition gives lattice factors');
  const lc = gpuCodecOf(d.l.codes);
  const lp = packCodePlanes(d.l.codes);
  const sources = buf(e8pSourceTable(), 'sources');
  const z = buf(new Rng(13).fillNormal(new Float32Array(rank)), 'z');
  const fusedList: Dispatch[] = [];
  let fusedBytes = 0;
  for (let i = 0; i < count; i++) {
    const codes = buf(d.q.planes[0]!, `Q ${i}`);
    const l = buf(lp.bytes, `L ${i}`);
    fusedBytes += codes.size + l.size;
    fusedList.push(
      kernels.e8pMatvec({
        codes,
        codes2: null,
        codec: q.codec,
        e81b: null,
        sources,
        x: ctx.rotIn,
        out: ctx.rotOut,
        mp: size,
        np: size,
        qscale: d.q.scale,
        resScale: q.resScale,
        lowRank: {
          codec: lc.codec,
          codes: l,
          plane2Word: lp.plane2Word,
          k: rank,
          scale: d.l.codes.scale,
          resScale: lc.resScale,
          z,
        },
      }),
    );
  }
  // dense f16 layers of the same shape
  const f16 = new Uint16Array(size * size);
  for (let i = 0; i < f16.length; i++) f16[i] = 0x2000 | (i & 0x83ff);
  const denseCount = Math.max(2, Math.ceil(target / f16.byteLength));
  const denseList: Dispatch[] = [];
  for (let i = 0; i < denseCount; i++) {
    const w = uploadMatrix(dev, f16, size, size, `f16 ${i}`);
    owned.push(w.buffer);
    denseList.push(kernels.matvec(w, x, out, { bias: null, accumulate: false, dummy: ctx.dummy }));
  }
  const denseBytes = denseCount * size * size * 2;
  // streaming read of buffers of the same total size
  const chunk = Math.min(dev.maxStorageBinding, 128 * 2 ** 20);
  const streamCount = Math.max(1, Math.ceil(target / chunk));
  const module = dev.device.createShaderModule({ code: STREAM_WGSL });
  const pipeline = dev.device.createComputePipeline({
    layout: 'auto',
    compute: { module, entryPoint: 'main' },
  });
  const sink = buf(new Uint32Array(4), 'sink');
  const streamList: Dispatch[] = [];
  for (let i = 0; i < streamCount; i++) {
    const a = dev.device.createBuffer({ size: chunk, usage: BufferUsage.STORAGE });
    owned.push(a);
    const bindGroup = dev.device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: a } },
        { binding: 1, resource: { buffer: sink } },
      ],
    });
    const groups = Math.min(65535, Math.ceil(chunk / 16 / WG / 4));
    streamList.push({ label: 'stream', pipeline, bindGroup, workgroups: groups, batched: false, rowTile: 1 });
  }
  const streamBytes = streamCount * chunk;

  const gbs = (bytes: number, s: number) => bytes / s / 1e9;
  const value = gbs(layerBytes, await secondsPerPass(dev, layerList));
  const fused = gbs(fusedBytes, await secondsPerPass(dev, fusedList));
  const dense = gbs(denseBytes, await secondsPerPass(dev, denseList));
  const stream = gbs(streamBytes, await secondsPerPass(dev, streamList));
  const r = (v: number) => Number(v.toPrecision(4));
  // weights per second relative to the f16 kernel: the speed of a decode step's linears, CALDERA vs f16
  const weightsRatio = value / (first.gpuBytes / (size * size)) / (dense / 2);
  for (const l of layers) l.dispose();
  ctx.dispose();
  kernels.dispose();
  for (const b of owned) b.destroy();
  return {
    value,
    refs: {
      stream_read_gbs: r(stream),
      roofline_share: r(value / stream),
      fused_kernel_gbs: r(fused),
      fused_roofline_share: r(fused / stream),
      dense_f16_gbs: r(dense),
      dense_f16_roofline_share: r(dense / stream),
      weights_per_s_vs_f16: r(weightsRatio),
      layer: `${size}x${size} rank ${rank}`,
      layer_bits_per_weight: r((8 * first.gpuBytes) / (size * size)),
      layers: count,
      bytes_per_pass: layerBytes,
      adapter: dev.description,
    },
  };
}
