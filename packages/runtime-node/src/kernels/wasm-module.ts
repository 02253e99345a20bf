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
