import { CalderaError } from '@caldera/core';
import { arenaBytes, KernelArena, type ArenaSpec } from './arena.js';
import { align16 } from './wasm-module.js';
import { CALDERA_ARENA, CALDERA_PART_ARENA, type CalderaArenas } from './caldera-kernel.js';
import { DENSE_ARENA, DENSE_SHARED_ARENA } from './matvec.js';

/**
 * Which of a model's arenas a region is in: the calling thread's CALDERA layers (`'caldera'`), the dense matrices
 * (`'dense'`), or decode worker t's rows of split CALDERA layers (t, from 0).
 */
export type ArenaName = 'caldera' | 'dense' | number;

/** A region a layer places in one of {@link KernelArenas}: `bytes` (a multiple of 16) in `arena`. */
export interface ArenaRequest {
  arena: ArenaName;
  bytes: number;
}

/** Options of {@link KernelArenas}. */
export interface KernelArenasOptions {
  /**
   * Threads of the decode pool the layers are built with (default 1, none): one arena per worker for its rows of split
   * CALDERA layers, and the dense arena shared (split dense layers are read by every thread).
   */
  threads?: number;
  /**
   * The regions the layers will ask for ({@link LinearFootprint}s' `regions` for `threads`, in the order the layers are
   * built): each arena's memories are then sized for exactly these, and hold {@link KernelArenas.bytes} of them.
   * Default: none (64 MiB memories, opened as they fill).
   */
  planned?: readonly ArenaRequest[];
}

/** The spec of the arena `name` names (a dense one's bytes are the same shared or not). */
const specOf = (name: ArenaName, threads = 1): ArenaSpec =>
  name === 'caldera'
    ? CALDERA_ARENA
    : name === 'dense'
      ? threads > 1
        ? DENSE_SHARED_ARENA
        : DENSE_ARENA
      : CALDERA_PART_ARENA;

/**
 * The kernel memories of one model's layers (see {@link KernelArena}): layers built with the same `KernelArenas`
 * (`arenas` of {@link CalderaLinearOptions} and {@link DenseLinearOptions}) place their kernels' buffers in a few
 * WebAssembly memories that they all use, instead of one (or, split over a decode pool, one per thread) each. The
 * loaders build one per model, planned from its memory plan, so that a model of any number of layers runs fused in a
 * browser, which holds only about 120 WebAssembly memories per process. The memories live as long as any layer in them
 * (and the `KernelArenas`, which holds the current one of each arena); a layer dropped before the others frees
 * nothing. Its `threads` must be those of the decode pool the layers are built with, and a plan's regions must come
 * from footprints for that many threads (`readModelLayout(dir, { decodeThreads })`), or the worker arenas open
 * memories the plan does not count.
 */
export class KernelArenas implements CalderaArenas {
  readonly caldera: KernelArena;
  readonly dense: KernelArena;
  readonly parts: readonly KernelArena[];
  readonly threads: number;

  constructor(options: KernelArenasOptions = {}) {
    const threads = options.threads ?? 1;
    if (!Number.isInteger(threads) || threads < 1 || threads > 256)
      throw new CalderaError(
        'E_VALUE',
        `KernelArenas: threads must be an integer in [1, 256] (a decode pool's threads), got ${String(threads)}`,
      );
    this.threads = threads;
    const planned = options.planned;
    const total = (name: ArenaName) =>
      planned ? planned.reduce((s, r) => (r.arena === name ? s + align16(r.bytes) : s), 0) : null;
    this.caldera = new KernelArena(CALDERA_ARENA, total('caldera'));
    this.dense = new KernelArena(specOf('dense', threads), total('dense'));
    this.parts = Array.from({ length: threads - 1 }, (_, t) => new KernelArena(CALDERA_PART_ARENA, total(t)));
  }

  /**
   * Bytes of the WebAssembly memories that {@link KernelArenas} planned with `requests` hold once the layers have
   * placed them, in that order (whole 64 KiB pages, each memory's fixed region included): computed without allocating.
   */
  static bytes(requests: readonly ArenaRequest[]): number {
    const byArena = new Map<ArenaName, number[]>();
    for (const r of requests) {
      const sizes = byArena.get(r.arena) ?? [];
      sizes.push(r.bytes);
      byArena.set(r.arena, sizes);
    }
    let bytes = 0;
    for (const [name, sizes] of byArena) bytes += arenaBytes(specOf(name), sizes);
    return bytes;
  }
}

/**
 * Bytes of the memory a region holds when it is placed alone, in a memory of its own (a layer built without arenas):
 * the arena's fixed region and the region, in whole 64 KiB pages.
 */
export function aloneBytes(r: ArenaRequest): number {
  return arenaBytes(specOf(r.arena), [r.bytes]);
}
