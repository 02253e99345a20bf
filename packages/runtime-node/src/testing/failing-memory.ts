/**
 * While `run` runs, `new WebAssembly.Memory(desc)` throws as a browser out of address space does whenever
 * `fails(desc)` (a test helper; the constructor is restored after, also when `run` throws).
 */
export function withFailingMemory<T>(
  fails: (desc: WebAssembly.MemoryDescriptor) => boolean,
  run: () => T,
): T {
  const Memory = WebAssembly.Memory;
  WebAssembly.Memory = function (this: unknown, desc: WebAssembly.MemoryDescriptor) {
    if (fails(desc)) throw new RangeError('WebAssembly.Memory(): could not allocate memory');
    return new Memory(desc);
  } as unknown as typeof WebAssembly.Memory;
  try {
    return run();
  } finally {
    WebAssembly.Memory = Memory;
  }
}
