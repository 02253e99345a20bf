/**
 * Memory-bandwidth roofline of the compressed matrix–vector product, at two levels:
 * - the kernel: the fused E8P kernel (Q̂·x' + L̂·z in one launch, the "compressed matvec") on layers large enough
 *   that a launch's fixed cost is small next to its memory time (16384 × 8192: 32 MiB of Q codes each), in the form
 *   the device gets by default (packed f16 with `shader-f16`, then also the f32 form, and one row per lane where the
 *   default computes more), next to the dense f16 matvec
 *   kernel (8192 × 8192) and a plain streaming read, the roofline anchor measured in the same run;
 * - a decode step's layers: whole CALDERA layers of 4096 × 4096 (rotations, R̂·x', the fused kernel; as in a
 *   7B-class model) against dense f16 layers of the same shape, as weights per second.
 * Every variant runs over distinct buffers totalling `targetBytes` (more than a GPU's last-level cache) back to back,
 * so its bytes come from memory. On a CPU adapter the shapes are smaller (the numbers are only a record there).
 */
import { Rng } from '@caldera/core';
import { randomDecomposition } from '@caldera/lowrank';
import {
  BufferUsage,
  createLinearContext,
  e8pSourcePairs,
  GpuCalderaLinear,
  gpuCodecOf,
  KernelPipeline,
  Kernels,
  packCodePlanes,
  storageBuffer,
  uploadMatrix,
  WG,
  type Dispatch,
  type Lanes,
} from '../src/kernels.js';
import type { CalderaDevice } from '../src/index.js';
import { submitSeconds } from '../src/tune.js';
import { warmUp } from './timing.js';

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

/**
 * Seconds per pass of `list`: one warm-up pass, then the best of 3 timings of enough passes for ~0.1 s each (one
 * timing of 2 passes on a CPU adapter).
 */
async function secondsPerPass(dev: CalderaDevice, list: Dispatch[]): Promise<number> {
  const run = (passes: number) => submitSeconds(dev, list, passes);
  await run(1);
  if (dev.fallbackAdapter) return (await run(2)) / 2;
  const passes = Math.min(500, Math.max(3, Math.ceil(0.1 / (await run(1)))));
  let best = Infinity;
  for (let i = 0; i < 3; i++) best = Math.min(best, (await run(passes)) / passes);
  return best;
}

export interface RooflineOptions {
  /** Weight bytes each variant streams per pass (default 512 MiB on a GPU, 16 MiB on a CPU adapter). */
  targetBytes?: number;
  /** Rank of L·R (default 64). */
  rank?: number;
  /** Lanes per row of the default form (default: the adapter's, see `Kernels.lanes`). */
  lanes?: Lanes;
}

/** The measurement: fields in GB/s (1e9 bytes per second) or ratios. */
export interface Roofline {
  /** The fused kernel on the large layers, with the adapter's default lanes per row (see `Kernels.lanes`). */
  kernelGbs: number;
  lanes: number;
  /** The same kernel with the other lane count (1 or 32), in its f32 form. */
  otherLanes: { lanes: number; kernelGbs: number };
  /** Whether Q̂'s products ran in packed f16 (the launch's label), and then the f32 form's rate on the same buffers. */
  f16: boolean;
  f32FormGbs: number | null;
  /** The f32 form with 4 rows per lane on the same buffers (on a GPU with 32 lanes per row; its default is one). */
  f32FourRowsGbs: number | null;
  /** The packed-f16 form's rows per lane, and with more than one, its rate with one row per lane. */
  rowsPerLane: number | null;
  oneRowPerLaneGbs: number | null;
  streamGbs: number;
  denseF16KernelGbs: number;
  /** Whole 4096 × 4096 CALDERA layers and dense f16 layers, every launch. */
  layerGbs: number;
  layerF16Gbs: number;
  /** Weights per second of the CALDERA layers over the f16 layers. */
  layerWeightsVsF16: number;
  layerBitsPerWeight: number;
  shapes: { kernel: string; denseKernel: string; layer: string };
}

/** Measure the roofline on `dev`. */
export async function measureRoofline(dev: CalderaDevice, options: RooflineOptions = {}): Promise<Roofline> {
  const cpu = dev.fallbackAdapter;
  const target = options.targetBytes ?? (cpu ? 16 : 512) * 2 ** 20;
  const rank = options.rank ?? 64;
  const [km, kn] = cpu ? [4096, 2048] : [16384, 8192];
  const dn = cpu ? 2048 : 8192;
  const ln = cpu ? 1024 : 4096;
  const kernels = new Kernels(dev, options.lanes ? { lanes: options.lanes } : {});
  const rng = new Rng(11);
  const owned: { destroy(): void }[] = [];
  const buf = (data: ArrayBufferView, label: string) => {
    const b = storageBuffer(dev, data, label);
    owned.push(b);
    return b;
  };
  const sources = buf(e8pSourcePairs(), 'sources');
  const copies = (bytesEach: number) => Math.max(2, Math.ceil(target / bytesEach));

  // the fused kernel alone, on buffers of its own: Q̂'s codes and L̂'s packed codes; with the default lanes per row
  // and with the other choice (1 or 32), over the same buffers
  const big = randomDecomposition(km, kn, rank, rng);
  if (big.l.kind !== 'lattice' || !big.q) throw new Error('randomDecomposition gives Q and lattice factors');
  const bigQ = big.q;
  const bigL = packCodePlanes(big.l.codes);
  const upload = () => ({ codes: buf(bigQ.planes[0]!, 'Q'), l: buf(bigL.bytes, 'L') });
  const q = gpuCodecOf(bigQ);
  const lc = gpuCodecOf(big.l.codes);
  const lScale = big.l.codes.scale;
  const [mp, np] = big.padded;
  const fusedLaunch = (
    k: Kernels,
    { codes, l }: ReturnType<typeof upload>,
    x: GPUBuffer,
    out: GPUBuffer,
    z: GPUBuffer,
  ) => ({
    launch: k.e8pMatvec({
      codes,
      codes2: null,
      codec: q.codec,
      e81b: null,
      sources,
      x,
      out,
      np,
      resScale: q.resScale,
      segments: [
        {
          rows: mp,
          qscale: bigQ.scale,
          lowRank: { k: rank, scale: lScale, codeByte: 0, code2Byte: bigL.plane2Word * 4 },
        },
      ],
      lowRank: { codec: lc.codec, codes: l, resScale: lc.resScale, z },
    }),
    bytes: codes.size + l.size,
  });
  const kx = buf(rng.fillNormal(new Float32Array(kn)), 'x');
  const kout = buf(new Float32Array(km), 'out');
  const kz = buf(rng.fillNormal(new Float32Array(rank)), 'z');
  const uploads = Array.from({ length: copies((km * kn) / 4) }, upload);
  const fused = uploads.map((u) => fusedLaunch(kernels, u, kx, kout, kz));
  const kernelBytes = fused.reduce((s, f) => s + f.bytes, 0);
  const otherLanes = kernels.lanes === 1 ? 32 : 1;
  const otherKernels = new Kernels(dev, { lanes: otherLanes, f16: false });
  const fusedOther = uploads.map((u) => fusedLaunch(otherKernels, u, kx, kout, kz));
  // the f32 form beside the default one when that runs f16 products
  const f16Ran = fused[0]!.launch.f16Products === true;
  const f32Kernels = f16Ran ? new Kernels(dev, { lanes: kernels.lanes, f16: false }) : null;
  const fusedF32 = f32Kernels ? uploads.map((u) => fusedLaunch(f32Kernels, u, kx, kout, kz)) : null;
  // the f32 form with 4 rows per lane (its default is one) on a GPU, where the default form has 32 lanes per row
  const f32RowsKernels =
    !cpu && kernels.lanes === 32 ? new Kernels(dev, { lanes: 32, f16: false, rowsPerLane: 4 }) : null;
  const fusedF32Rows = f32RowsKernels
    ? uploads.map((u) => fusedLaunch(f32RowsKernels, u, kx, kout, kz))
    : null;
  // and the f16 form with one row per lane when it computes more
  const rowsPerLane = f16Ran ? (fused[0]!.launch.rowsPerLane ?? null) : null;
  const oneRowKernels =
    rowsPerLane !== null && rowsPerLane > 1
      ? new Kernels(dev, { lanes: kernels.lanes, rowsPerLane: 1 })
      : null;
  const fusedOneRow = oneRowKernels ? uploads.map((u) => fusedLaunch(oneRowKernels, u, kx, kout, kz)) : null;

  // the dense f16 kernel
  const f16 = new Uint16Array(dn * dn);
  for (let i = 0; i < f16.length; i++) f16[i] = 0x2000 | (i & 0x83ff);
  const dx = buf(rng.fillNormal(new Float32Array(dn)), 'x16');
  const dout = buf(new Float32Array(dn), 'out16');
  const dummy = buf(new Float32Array(4), 'dummy');
  const dense = (n: number, data: Uint16Array, x: GPUBuffer, out: GPUBuffer) => {
    const w = uploadMatrix(dev, data, n, n, 'f16');
    owned.push(w.buffer);
    return kernels.matvec(w, x, out, { bias: null, accumulate: false, dummy });
  };
  const denseList = Array.from({ length: copies(f16.byteLength) }, () => dense(dn, f16, dx, dout));
  const denseBytes = denseList.length * f16.byteLength;

  // whole layers of a decode step
  const small = randomDecomposition(ln, ln, rank, rng);
  const first = new GpuCalderaLinear(dev, small, null, 'layer');
  const layers = [first];
  for (let i = copies(first.gpuBytes); i > 1; i--)
    layers.push(new GpuCalderaLinear(dev, small, null, 'layer'));
  const ctx = createLinearContext(dev, kernels, first.needs);
  const lx = buf(rng.fillNormal(new Float32Array(ln)), 'lx');
  const lout = buf(new Float32Array(ln), 'lout');
  const layerList = layers.flatMap((l) => l.bind(ctx, lx, lout, false));
  const layerBytes = layers.length * first.gpuBytes;
  const lf16 = f16.subarray(0, ln * ln);
  const layerF16List = Array.from({ length: copies(lf16.byteLength) }, () => dense(ln, lf16, lx, lout));
  const layerF16Bytes = layerF16List.length * lf16.byteLength;

  // streaming read of buffers of the same total size (at most the target: on a CPU adapter, whose binding limit is
  // large, one 128 MiB chunk was streamed against kernels reading 4–16 MiB that stay in cache: "roofline" shares > 1)
  const chunk = Math.min(dev.maxStorageBinding, 128 * 2 ** 20, Math.max(16, target - (target % 16)));
  const stream = new KernelPipeline(dev.device, 'stream', STREAM_WGSL);
  const sink = buf(new Uint32Array(4), 'sink');
  const streamList: Dispatch[] = [];
  for (let i = Math.max(1, Math.ceil(target / chunk)); i > 0; i--) {
    const a = dev.device.createBuffer({ size: chunk, usage: BufferUsage.STORAGE });
    owned.push(a);
    const bindGroup = dev.device.createBindGroup({
      layout: stream.layout,
      entries: [
        { binding: 0, resource: { buffer: a } },
        { binding: 1, resource: { buffer: sink } },
      ],
    });
    const groups = Math.min(65535, Math.ceil(chunk / 16 / WG / 4));
    streamList.push({
      label: 'stream',
      kernel: stream,
      bindGroup,
      workgroups: groups,
      batched: false,
      rowTile: 1,
    });
  }
  const streamBytes = streamList.length * chunk;

  const gbs = async (bytes: number, list: Dispatch[]) => bytes / (await secondsPerPass(dev, list)) / 1e9;
  if (!cpu) await warmUp(dev, streamList, 1000);
  const kernelGbs = await gbs(
    kernelBytes,
    fused.map((f) => f.launch),
  );
  const otherLanesGbs = await gbs(
    kernelBytes,
    fusedOther.map((f) => f.launch),
  );
  const f32FormGbs = fusedF32
    ? await gbs(
        kernelBytes,
        fusedF32.map((f) => f.launch),
      )
    : null;
  const f32FourRowsGbs = fusedF32Rows
    ? await gbs(
        kernelBytes,
        fusedF32Rows.map((f) => f.launch),
      )
    : null;
  const oneRowPerLaneGbs = fusedOneRow
    ? await gbs(
        kernelBytes,
        fusedOneRow.map((f) => f.launch),
      )
    : null;
  const denseF16KernelGbs = await gbs(denseBytes, denseList);
  const layerGbs = await gbs(layerBytes, layerList);
  const layerF16Gbs = await gbs(layerF16Bytes, layerF16List);
  const streamGbs = await gbs(streamBytes, streamList);
  const layerBits = (8 * first.gpuBytes) / (ln * ln);
  for (const l of layers) l.dispose();
  ctx.dispose();
  kernels.dispose();
  otherKernels.dispose();
  f32Kernels?.dispose();
  f32RowsKernels?.dispose();
  oneRowKernels?.dispose();
  for (const b of owned) b.destroy();
  return {
    kernelGbs,
    lanes: kernels.lanes,
    otherLanes: { lanes: otherLanes, kernelGbs: otherLanesGbs },
    f16: f16Ran,
    f32FormGbs,
    f32FourRowsGbs,
    rowsPerLane,
    oneRowPerLaneGbs,
    streamGbs,
    denseF16KernelGbs,
    layerGbs,
    layerF16Gbs,
    layerWeightsVsF16: layerGbs / layerBits / (layerF16Gbs / 16),
    layerBitsPerWeight: layerBits,
    shapes: {
      kernel: `${km}x${kn} rank ${rank}`,
      denseKernel: `${dn}x${dn}`,
      layer: `${ln}x${ln} rank ${rank}`,
    },
  };
}
