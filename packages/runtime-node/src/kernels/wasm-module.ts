/** Compiled modules by their base64 source (each embedded module is compiled once per process). */
const compiled = new Map<string, WebAssembly.Module | null>();

/**
 * The module embedded as base64 by scripts/build-wasm.mjs, compiled on first use; null where it cannot be compiled
 * (no WebAssembly SIMD), and callers keep their TypeScript paths.
 */
export function embeddedModule(base64: string): WebAssembly.Module | null {
  let mod = compiled.get(base64);
  if (mod === undefined) {
    try {
      mod = new WebAssembly.Module(Uint8Array.from(atob(base64), (c) => c.charCodeAt(0)));
    } catch {
      mod = null;
    }
    compiled.set(base64, mod);
  }
  return mod;
}

/**
 * First address of the buffers the hosts lay out in a kernel's memory: the page below holds the module's static data
 * (checked against its exported `heapBase()`); asm/e8p.ts's fixed tables start here too.
 */
export const KERNEL_BASE = 65536;

/** Throw when a module's static data reaches {@link KERNEL_BASE} (a build-time property, caught by the tests). */
export function checkHeapBase(exports: WebAssembly.Exports, what: string): void {
  const end = (exports.heapBase as () => number)();
  if (end > KERNEL_BASE)
    throw new Error(`${what}: static data up to ${end} overlaps the buffers at ${KERNEL_BASE}`);
}

/** `bytes` rounded up to 16, the alignment the kernels' SIMD loads expect of every buffer. */
export function align16(bytes: number): number {
  return Math.ceil(bytes / 16) * 16;
}

/**
 * Lays buffers out one after another from `start`: `alloc(bytes)` returns the next address, each buffer 16-byte
 * aligned ({@link align16}); `end()` is the first address past them all.
 */
export function bumpAllocator(start: number): { alloc(bytes: number): number; end(): number } {
  let top = start;
  return {
    alloc(bytes) {
      const at = top;
      top += align16(bytes);
      return at;
    },
    end: () => top,
  };
}
