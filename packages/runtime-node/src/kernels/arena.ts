import { align16, checkHeapBase, embeddedModule } from './wasm-module.js';

/**
 * The largest memory an arena opens: 4 GiB, all that a 32-bit WebAssembly memory addresses (the kernels read their
 * records' addresses as unsigned). A model whose regions need more gets several memories.
 */
export const ARENA_MAX_BYTES = 2 ** 32;

/**
 * What an arena opens without a plan, or past it: memories of 64 MiB after their fixed region, so that a few layers
 * still share each.
 */
export const ARENA_UNPLANNED_BYTES = 64 * 2 ** 20;

const PAGE = 65536;

/** What kind of memory an arena holds, and what every one of its memories starts with. */
export interface ArenaSpec {
  /** Names the kernel in messages. */
  readonly what: string;
  /**
   * The kernel module (embedded base64) instantiated once per memory on the calling thread, whose entry points take
   * the regions' addresses; null for memories where only a decode pool's workers run code.
   */
  readonly module: string | null;
  /** A shared memory (a decode pool's workers read it or compute in it). */
  readonly shared: boolean;
  /** End of the fixed region each memory starts with (the module's static data, tables); regions follow it. */
  readonly fixedEnd: number;
  /** Writes the fixed region of a new memory (tables at fixed addresses). */
  readonly init?: (buffer: ArrayBufferLike) => void;
  /**
   * The largest memory to open, in bytes, a multiple of 64 KiB (default {@link ARENA_MAX_BYTES}; tests lower it to see
   * several memories).
   */
  readonly maxBytes?: number;
}

/**
 * A region's `WebAssembly.Memory`: the type's two members, named structurally so that the package's declarations need
 * no `WebAssembly` namespace, which only TypeScript's DOM library declares (a Node project's type check, without it,
 * failed on them).
 */
export interface WasmMemoryLike {
  readonly buffer: ArrayBuffer;
  grow(delta: number): number;
}

/** One kernel's buffers: `bytes` (a multiple of 16) from address `at` of `memory`. */
export class ArenaRegion {
  constructor(
    readonly memory: WasmMemoryLike,
    /** The spec's module instantiated on `memory` (its `WebAssembly.Exports`, shared by every region of it), or null without a module. */
    readonly exports: Readonly<Record<string, unknown>> | null,
    readonly at: number,
    readonly bytes: number,
  ) {}
}

/**
 * Bytes of the memory an arena opens for a region of `bytes` (16-aligned) when `pending` bytes of its plan are still
 * to be placed (null: no plan): room for the plan's rest (at least this region), or {@link ARENA_UNPLANNED_BYTES}
 * without a plan or past it, in whole 64 KiB pages, at most the spec's largest memory (whole pages too); null when the
 * region alone does not fit a memory.
 */
function openBytes(spec: ArenaSpec, bytes: number, pending: number | null): number | null {
  const max = spec.maxBytes ?? ARENA_MAX_BYTES;
  if (spec.fixedEnd + bytes > max) return null;
  const rest = pending !== null && pending >= bytes ? pending : Math.max(bytes, ARENA_UNPLANNED_BYTES);
  return Math.min(max, Math.ceil((spec.fixedEnd + rest) / PAGE) * PAGE);
}

/**
 * WebAssembly memories that many kernels share, each laying out its buffers in a region of one (bump-allocated,
 * never freed: the memories live as long as any kernel in them, and the arena holds its current one). A browser holds
 * only about 120 WebAssembly memories per process (each reserves its guard regions in V8's sandbox), so a model with a
 * memory per layer cannot have all its layers fused there; in arenas it needs a few. Memories never grow, so views
 * into them stay valid. With `planned` bytes (the sum of the 16-aligned regions it will be asked for, as the memory
 * plan computes them) its first memory is sized for all of them (up to the spec's largest memory; then as many as
 * needed), and what it holds is exactly {@link arenaBytes} of those regions. Where a memory of that size cannot be
 * reserved it takes smaller ones (halving, down to the region's own size; a size that failed, or a larger one, is not
 * tried again: each failure costs V8 a collection), so the layers still share a few; the plan then no longer matches.
 */
export class KernelArena {
  private memory: WebAssembly.Memory | null = null;
  private exports: WebAssembly.Exports | null = null;
  private top = 0;
  private end = 0;
  /** Planned bytes not yet placed (null: no plan). */
  private pending: number | null;
  /**
   * The largest memory worth trying: half the last size that could not be reserved (each failure costs a collection).
   */
  private limit = Infinity;
  /**
   * The smallest memory of a region's own size that could not be reserved: regions that need as much are refused at
   * once, smaller ones still try.
   */
  private failedAt = Infinity;

  constructor(
    readonly spec: ArenaSpec,
    planned: number | null = null,
  ) {
    this.pending = planned;
  }

  /**
   * A region of `bytes` (rounded up to 16) in the current memory, or in a new one where it does not fit; null when
   * no memory can hold it (more than the spec's largest memory after its fixed region, the address space could not be
   * reserved, no WebAssembly SIMD for the module): the caller then keeps a memory of its own, or its TypeScript path.
   */
  place(bytes: number): ArenaRegion | null {
    const size = align16(bytes);
    if (this.memory === null || this.top + size > this.end) {
      if (!this.open(size)) return null;
    }
    const region = new ArenaRegion(this.memory!, this.exports, this.top, size);
    this.top += size;
    if (this.pending !== null) this.pending = Math.max(0, this.pending - size);
    return region;
  }

  /** Open a memory for a region of `size`: the planned size, or smaller ones where that cannot be reserved. */
  private open(size: number): boolean {
    const want = openBytes(this.spec, size, this.pending);
    if (want === null) return false;
    const { spec } = this;
    const mod = spec.module === null ? null : embeddedModule(spec.module);
    if (spec.module !== null && mod === null) return false;
    const need = Math.max(PAGE, Math.ceil((spec.fixedEnd + size) / PAGE) * PAGE);
    if (need >= this.failedAt) return false;
    for (let bytes = Math.max(need, Math.min(want, this.limit)); ;) {
      let memory: WebAssembly.Memory;
      let exports: WebAssembly.Exports | null = null;
      try {
        memory = new WebAssembly.Memory({
          initial: bytes / PAGE,
          maximum: bytes / PAGE,
          shared: spec.shared,
        });
        if (mod) exports = new WebAssembly.Instance(mod, { env: { memory } }).exports;
      } catch {
        // e.g. the address space could not be reserved: try half, down to the region's own size
        if (bytes <= need) {
          this.failedAt = need;
          return false;
        }
        this.limit = Math.ceil(bytes / 2 / PAGE) * PAGE;
        bytes = Math.max(need, this.limit);
        continue;
      }
      if (exports) checkHeapBase(exports, spec.what);
      spec.init?.(memory.buffer);
      this.memory = memory;
      this.exports = exports;
      this.top = spec.fixedEnd;
      this.end = bytes;
      return true;
    }
  }
}

/**
 * A region of `bytes` in `arena`, or, without one or where it cannot hold the region, in a memory of its own (an arena
 * of `spec` planned for it alone); null where no memory can be reserved for it.
 */
export function placeIn(spec: ArenaSpec, arena: KernelArena | undefined, bytes: number): ArenaRegion | null {
  return arena?.place(bytes) ?? new KernelArena(spec, bytes).place(bytes);
}

/**
 * Bytes of the memories a {@link KernelArena} of `spec` opens when it is asked, in order, for regions of `sizes`
 * bytes with all of them planned: what the memory plan counts for an arena, computed without allocating anything.
 * Sizes that no memory holds are skipped (`place` refuses them).
 */
export function arenaBytes(spec: ArenaSpec, sizes: readonly number[]): number {
  let pending = sizes.reduce((s, b) => s + align16(b), 0);
  let total = 0;
  let top = 0;
  let end = 0;
  for (const b of sizes) {
    const size = align16(b);
    if (end === 0 || top + size > end) {
      const bytes = openBytes(spec, size, pending);
      if (bytes === null) continue;
      total += bytes;
      top = spec.fixedEnd;
      end = bytes;
    }
    top += size;
    pending = Math.max(0, pending - size);
  }
  return total;
}
