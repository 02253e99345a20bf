import { ArenaRegion } from '../kernels/arena.js';

/**
 * Bytes of memory that objects hold, measured independently of the memory plan (a test helper): the distinct
 * `ArrayBuffer`s (and WebAssembly memories' buffers) reachable from `roots` through their own enumerable properties
 * (TypeScript's `private` fields are such properties; functions, closures included, are not entered), each counted
 * whole — a typed array that is a view into a larger buffer counts that buffer, a kernel's view into its WebAssembly
 * memory counts the whole memory.
 */
export function heldBytes(...roots: unknown[]): number {
  return heldBytesExcept([], ...roots);
}

/**
 * {@link heldBytes} without entering the objects of `exclude` (what the roots reference but do not own, e.g. a decode
 * pool that several models share and the caller disposes of).
 */
export function heldBytesExcept(exclude: readonly object[], ...roots: unknown[]): number {
  let bytes = 0;
  for (const b of reachableBuffers(exclude, roots)) bytes += b.byteLength;
  return bytes;
}

/**
 * How many distinct shared buffers (`SharedArrayBuffer`s: shared WebAssembly memories) are reachable from `roots`, as
 * {@link heldBytesExcept} finds them: a dense layer split over a decode pool holds its weights in one, a split CALDERA
 * layer one per worker thread.
 */
export function sharedBuffersExcept(exclude: readonly object[], ...roots: unknown[]): number {
  let n = 0;
  for (const b of reachableBuffers(exclude, roots)) if (b instanceof SharedArrayBuffer) n++;
  return n;
}

/**
 * The distinct kernel arena regions (`ArenaRegion`s) reachable from `roots` without entering `exclude`, and the
 * WebAssembly memories they are in: what a layer holds of its model's arenas is its regions' bytes, measured apart
 * from its own arrays with `heldBytesExcept([...memories, ...buffers], layer)`.
 */
export function arenaRegions(
  exclude: readonly object[],
  ...roots: unknown[]
): { regions: ArenaRegion[]; memories: WebAssembly.Memory[]; buffers: ArrayBufferLike[] } {
  const regions = new Set<ArenaRegion>();
  walk(exclude, roots, (v) => {
    if (v instanceof ArenaRegion) regions.add(v);
  });
  const memories = [...new Set([...regions].map((r) => r.memory))];
  return { regions: [...regions], memories, buffers: memories.map((m) => m.buffer) };
}

/** How many distinct WebAssembly memories are reachable from `roots` without entering `exclude`. */
export function wasmMemories(exclude: readonly object[], ...roots: unknown[]): number {
  let n = 0;
  walk(exclude, roots, (v) => {
    if (v instanceof WebAssembly.Memory) n++;
  });
  return n;
}

/** Visit every object reachable from `roots` through own enumerable properties once, without entering `exclude`. */
function walk(exclude: readonly object[], roots: readonly unknown[], visitor: (v: object) => void): void {
  const seen = new Set<object>(exclude);
  const visit = (v: unknown): void => {
    if (v === null || typeof v !== 'object' || seen.has(v)) return;
    seen.add(v);
    visitor(v);
    if (!ArrayBuffer.isView(v) && !(v instanceof ArrayBuffer) && !(v instanceof WebAssembly.Memory))
      for (const x of Object.values(v)) visit(x);
  };
  for (const r of roots) visit(r);
}

/**
 * The distinct buffers reachable from `roots` without entering `exclude` (see {@link heldBytes}); a view into a buffer
 * of `exclude` is not counted either.
 */
function reachableBuffers(exclude: readonly object[], roots: readonly unknown[]): Set<ArrayBufferLike> {
  const excluded = new Set<object>(exclude);
  const buffers = new Set<ArrayBufferLike>();
  walk(exclude, roots, (v) => {
    if (ArrayBuffer.isView(v)) {
      if (!excluded.has(v.buffer)) buffers.add(v.buffer);
    } else if (v instanceof ArrayBuffer) buffers.add(v);
    else if (v instanceof WebAssembly.Memory) buffers.add(v.buffer);
  });
  return buffers;
}
