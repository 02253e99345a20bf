import { assertObject, CalderaError, describeValue, shownValue } from '@caldera/core';

/** Buffer usage flags (the values of `GPUBufferUsage`, which Node has only after installing a WebGPU binding's globals). */
export const BufferUsage = {
  MAP_READ: 0x0001,
  COPY_SRC: 0x0004,
  COPY_DST: 0x0008,
  UNIFORM: 0x0040,
  STORAGE: 0x0080,
} as const;

/** `GPUMapMode.READ`. */
export const MAP_READ_MODE = 0x0001;

/** `GPUShaderStage.COMPUTE`. */
export const COMPUTE_STAGE = 0x0004;

/** Options of {@link createDevice}. */
export interface CreateDeviceOptions {
  /** An adapter to use; default: requested from `gpu`. */
  adapter?: GPUAdapter;
  /**
   * The WebGPU entry point; default `navigator.gpu`. In Node pass the object returned by `create([])` of the
   * `webgpu` package, and keep a strong reference to it for as long as the device is used.
   */
  gpu?: GPU;
  /** Passed to `requestAdapter`. Default `'high-performance'`. */
  powerPreference?: GPUPowerPreference;
  /**
   * How the kernels' pipelines are compiled ahead of use (`Kernels.compile`, which the loaders and `tuneKernels`
   * call): true, all at once in the background with `createComputePipelineAsync` (the default in a browser, where
   * Chromium compiles them in parallel off the page's thread); false, one after another with `createComputePipeline`
   * (the default in Node, where Dawn's bindings poll for the results while they compile: measured on SwiftShader, 70 %
   * more CPU time in the background and no less wall time, up to 28 % more).
   */
  asyncCompile?: boolean;
}

/** A WebGPU device with what the runtime needs to know about it. An explicit handle: call `dispose()`. */
export interface CalderaDevice {
  readonly device: GPUDevice;
  readonly adapter: GPUAdapter;
  /**
   * True when the `shader-f16` feature was available and enabled. The kernels compute in f32 either way and read
   * f16 weights through `unpack2x16float`, so f16 storage works on every device.
   */
  readonly shaderF16: boolean;
  /** Largest storage buffer binding in bytes (requested at the adapter's maximum). */
  readonly maxStorageBinding: number;
  /** Largest buffer in bytes. */
  readonly maxBufferSize: number;
  /** Workgroup memory in bytes (bounds the Hadamard size run in one workgroup: `n ≤ bytes / 4`). */
  readonly maxWorkgroupStorage: number;
  /**
   * Storage buffers a kernel may bind (requested at the adapter's maximum, up to 16): a step that finishes the layer
   * before it (see `Kernels.finishesPending`) needs up to 12, else it takes an extra launch.
   */
  readonly maxStorageBuffers: number;
  /**
   * Invocations one workgroup may have (requested at the adapter's maximum, up to 1024; the smaller of the total and
   * the x size limit): bounds `Kernels.vectorWorkgroup`.
   */
  readonly maxWorkgroupInvocations: number;
  /**
   * True for a CPU implementation (SwiftShader, the fallback adapter): the matrix–vector kernels then use one
   * invocation per row (see `Lanes`).
   */
  readonly fallbackAdapter: boolean;
  /** A short description of the adapter (vendor, architecture, device). */
  readonly description: string;
  /** How `Kernels.compile` compiles pipelines: see {@link CreateDeviceOptions.asyncCompile}. */
  readonly asyncCompile: boolean;
  dispose(): void;
}

/** Whether this runs in Node (where WebGPU comes from Dawn's bindings, the `webgpu` package). */
function inNode(): boolean {
  return (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node !== undefined;
}

/**
 * What to try when no adapter is found, in Node only (Dawn there needs a Vulkan driver; a browser has its own reasons,
 * e.g. a blocklisted GPU, that the page cannot fix): empty in a browser.
 */
function noAdapterHint(): string {
  return inNode()
    ? '; Dawn in Node needs a Vulkan loader (libvulkan.so.1) and a driver: without a GPU, set VK_ICD_FILENAMES to a' +
        " Vulkan ICD such as Chromium's SwiftShader (/usr/lib/chromium/vk_swiftshader_icd.json) before starting Node," +
        ' and where the system has no libvulkan.so.1 also LD_LIBRARY_PATH=/usr/lib/chromium (Chromium ships one)'
    : '';
}

/**
 * Acquire a WebGPU device: requests `shader-f16` when the adapter has it and the adapter's maximum storage-buffer,
 * buffer and workgroup-storage limits. Throws `CalderaError('E_DEVICE')` when WebGPU or an adapter is missing.
 */
export async function createDevice(options: CreateDeviceOptions = {}): Promise<CalderaDevice> {
  options ??= {}; // from JavaScript: null options are none
  assertObject(options, 'createDevice', 'options');
  const has = (x: unknown, method: string) =>
    x !== null && typeof x === 'object' && typeof (x as Record<string, unknown>)[method] === 'function';
  const what = (x: unknown, method: string) =>
    x !== null && typeof x === 'object' ? `an object without ${method}()` : describeValue(x);
  // null or undefined: none (the default)
  if (options.adapter != null && !has(options.adapter, 'requestDevice'))
    throw new CalderaError(
      'E_VALUE',
      `createDevice: adapter must be a GPUAdapter (from requestAdapter()), got ${what(options.adapter, 'requestDevice')}`,
    );
  if (options.gpu != null && !has(options.gpu, 'requestAdapter'))
    throw new CalderaError(
      'E_VALUE',
      'createDevice: gpu must be a WebGPU entry point (navigator.gpu, or create([]) of the webgpu package), got ' +
        what(options.gpu, 'requestAdapter'),
    );
  if (options.asyncCompile !== undefined && typeof options.asyncCompile !== 'boolean')
    throw new CalderaError(
      'E_VALUE',
      `createDevice: asyncCompile must be true or false, got ${shownValue(options.asyncCompile)}`,
    );
  const pp = options.powerPreference as unknown;
  if (pp !== undefined && pp !== 'high-performance' && pp !== 'low-power')
    throw new CalderaError(
      'E_VALUE',
      `createDevice: powerPreference must be 'high-performance' or 'low-power', got ${
        typeof pp === 'string' ? `'${pp}'` : describeValue(pp)
      }`,
    );
  let adapter = options.adapter ?? null;
  if (!adapter) {
    const gpu = options.gpu ?? (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
    if (!gpu)
      throw new CalderaError(
        'E_DEVICE',
        'WebGPU is not available: no navigator.gpu (in Node pass { gpu: create([]) } from the webgpu package)',
      );
    adapter = await gpu.requestAdapter({ powerPreference: options.powerPreference ?? 'high-performance' });
    if (!adapter)
      throw new CalderaError('E_DEVICE', `WebGPU: requestAdapter() returned no adapter${noAdapterHint()}`);
  }
  const shaderF16 = adapter.features.has('shader-f16');
  const l = adapter.limits;
  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({
      requiredFeatures: shaderF16 ? ['shader-f16'] : [],
      requiredLimits: {
        maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
        maxBufferSize: l.maxBufferSize,
        maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
        maxStorageBuffersPerShaderStage: Math.min(l.maxStorageBuffersPerShaderStage, 16),
        maxComputeInvocationsPerWorkgroup: Math.min(l.maxComputeInvocationsPerWorkgroup, 1024),
        maxComputeWorkgroupSizeX: Math.min(l.maxComputeWorkgroupSizeX, 1024),
      },
    });
  } catch (e) {
    throw new CalderaError('E_DEVICE', `WebGPU: requestDevice failed: ${(e as Error).message}`, { cause: e });
  }
  const info = (adapter as { info?: GPUAdapterInfo }).info;
  const description =
    [info?.vendor, info?.architecture, info?.device, info?.description].filter((s) => s).join(' ') ||
    'unknown adapter';
  const fallbackAdapter =
    (info as { isFallbackAdapter?: boolean } | undefined)?.isFallbackAdapter === true ||
    (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter === true ||
    /swiftshader/i.test(description);
  watchDeviceLost(device);
  return {
    device,
    adapter,
    shaderF16,
    fallbackAdapter,
    maxStorageBinding: device.limits.maxStorageBufferBindingSize,
    maxBufferSize: device.limits.maxBufferSize,
    maxWorkgroupStorage: device.limits.maxComputeWorkgroupStorageSize,
    maxStorageBuffers: device.limits.maxStorageBuffersPerShaderStage,
    maxWorkgroupInvocations: Math.min(
      device.limits.maxComputeInvocationsPerWorkgroup,
      device.limits.maxComputeWorkgroupSizeX,
    ),
    description,
    asyncCompile: options.asyncCompile ?? !inNode(),
    dispose: () => device.destroy(),
  };
}

/** Devices whose `lost` promise is watched, and what it said once it resolved. */
const watched = new WeakSet<GPUDevice>();
const lostDevices = new WeakMap<GPUDevice, GPUDeviceLostInfo>();

/**
 * Record when `device` is lost (or destroyed), for {@link checkDeviceAlive}; once per device ({@link createDevice} and
 * the model call it). `device.lost` resolves asynchronously, so a loss is known after the next await.
 */
export function watchDeviceLost(device: GPUDevice): void {
  if (watched.has(device)) return;
  watched.add(device);
  (device.lost as Promise<GPUDeviceLostInfo> | undefined)?.then(
    (info) => lostDevices.set(device, info),
    () => {},
  );
}

/** What `device.lost` said, once it has resolved (for a device passed to {@link watchDeviceLost}); else undefined. */
export function deviceLostInfo(device: GPUDevice): GPUDeviceLostInfo | undefined {
  return lostDevices.get(device);
}

/** Throw `E_DEVICE` when the device is known to be lost or destroyed (e.g. `dev.dispose()`). */
export function checkDeviceAlive(dev: CalderaDevice, what: string): void {
  const lost = lostDevices.get(dev.device);
  if (lost)
    throw new CalderaError(
      'E_DEVICE',
      `${what}: the WebGPU device was lost (${lost.reason}: ${lost.message || 'no message'}); create a new device ` +
        'and load the model again',
      { details: { reason: lost.reason } },
    );
}

/** Throw `E_DEVICE` when a buffer of `bytes` cannot be bound as storage on this device. */
export function checkFits(dev: CalderaDevice, bytes: number, what: string): void {
  const cap = Math.min(dev.maxStorageBinding, dev.maxBufferSize);
  if (bytes > cap)
    throw new CalderaError(
      'E_DEVICE',
      `${what} needs a ${bytes}-byte storage buffer; this device binds at most ${cap} bytes`,
      { details: { bytes, limit: cap, what } },
    );
}

/** The size of a buffer holding `bytes`: a multiple of 4, at least 16 (as {@link storageBuffer} allocates). */
export const bufferBytes = (bytes: number) => Math.max(16, Math.ceil(bytes / 4) * 4);

/** A storage buffer holding `data` (padded to a multiple of 4 bytes, at least 16). */
export function storageBuffer(
  dev: CalderaDevice,
  data: ArrayBufferView,
  label: string,
  extraUsage = 0,
): GPUBuffer {
  checkFits(dev, data.byteLength, label);
  const size = bufferBytes(data.byteLength);
  const buf = dev.device.createBuffer({
    label,
    size,
    usage: BufferUsage.STORAGE | BufferUsage.COPY_DST | BufferUsage.COPY_SRC | extraUsage,
    mappedAtCreation: true,
  });
  new Uint8Array(buf.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  buf.unmap();
  return buf;
}

/** An uninitialised (zeroed) storage buffer of `bytes`. */
export function scratchBuffer(dev: CalderaDevice, bytes: number, label: string): GPUBuffer {
  checkFits(dev, bytes, label);
  return dev.device.createBuffer({
    label,
    size: bufferBytes(bytes),
    usage: BufferUsage.STORAGE | BufferUsage.COPY_DST | BufferUsage.COPY_SRC,
  });
}

/** A scalar field of a uniform block: WGSL `u32` or `f32`, 4 bytes each, in declaration order. */
export type UniformField = ['u32' | 'f32', number];

/** A uniform buffer with the given 4-byte fields in order (padded to 16 bytes). */
export function uniformBuffer(dev: CalderaDevice, fields: UniformField[], label: string): GPUBuffer {
  const u = new Uint32Array(fields.length);
  const f = new Float32Array(u.buffer);
  fields.forEach(([t, v], i) => {
    if (t === 'u32') u[i] = v;
    else f[i] = v;
  });
  return uniformWords(dev, u, label);
}

/** A uniform buffer holding `words` (its layout is the caller's), padded to a multiple of 16 bytes. */
export function uniformWords(dev: CalderaDevice, words: Uint32Array, label: string): GPUBuffer {
  const size = Math.max(16, Math.ceil(words.byteLength / 16) * 16);
  const buf = dev.device.createBuffer({
    label,
    size,
    usage: BufferUsage.UNIFORM | BufferUsage.COPY_DST,
    mappedAtCreation: true,
  });
  new Uint32Array(buf.getMappedRange()).set(words);
  buf.unmap();
  return buf;
}

/** Copy `bytes` of `src` to the CPU (a staging buffer, one submit, mapAsync). */
export async function readBuffer(
  dev: CalderaDevice,
  src: GPUBuffer,
  bytes: number,
  offset = 0,
): Promise<ArrayBuffer> {
  const size = Math.ceil(bytes / 4) * 4;
  const staging = dev.device.createBuffer({
    size,
    usage: BufferUsage.MAP_READ | BufferUsage.COPY_DST,
  });
  const enc = dev.device.createCommandEncoder();
  enc.copyBufferToBuffer(src, offset, staging, 0, size);
  dev.device.queue.submit([enc.finish()]);
  await staging.mapAsync(MAP_READ_MODE);
  const out = staging.getMappedRange().slice(0, bytes);
  staging.unmap();
  staging.destroy();
  return out;
}
