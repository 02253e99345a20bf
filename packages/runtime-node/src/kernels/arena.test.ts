import { afterAll, describe, expect, it } from 'vitest';
import { f32ArrayToF16, Rng, tensor } from '@caldera/core';
import { randomDecomposition, toCheckpointTensors, withTrainableFactors } from '@caldera/lowrank';
import { CalderaLinear, DenseF16Linear, DenseLinear, footprintBytes, type Linear } from '../linear.js';
import { arenaRegions, heldBytes, heldBytesExcept, wasmMemories } from '../testing/held-bytes.js';
import { withFailingMemory } from '../testing/failing-memory.js';
import { ARENA_UNPLANNED_BYTES, arenaBytes, KernelArena, type ArenaRegion, type ArenaSpec } from './arena.js';
import { createDecodePool, type DecodePool } from './decode-pool.js';
import { KernelArenas } from './kernel-arenas.js';
import { CALDERA_ARENA, CalderaKernel } from './caldera-kernel.js';
import { KERNEL_BASE } from './wasm-module.js';

const PAGE = 65536;

const pools: DecodePool[] = [];
afterAll(() => pools.forEach((p) => p.dispose()));

/** An arena of memories of at most 4 pages (regions after a 1-page fixed region), so that tests see several. */
const small: ArenaSpec = {
  what: 'test',
  module: null,
  shared: false,
  fixedEnd: KERNEL_BASE,
  maxBytes: 4 * PAGE,
};

describe('kernel arenas: many kernels in a few WebAssembly memories', () => {
  it('a planned arena lays regions out in order, in as few memories as its largest allows, arenaBytes of them', () => {
    const rng = new Rng(5);
    const sizes = Array.from({ length: 40 }, () => 1 + Math.floor(rng.uniform() * 80_000));
    const arena = new KernelArena(
      small,
      sizes.reduce((s, b) => s + Math.ceil(b / 16) * 16, 0),
    );
    const regions = sizes.map((b) => arena.place(b)!);
    const memories = [...new Set(regions.map((r) => r.memory))];
    expect(memories.length).toBeGreaterThan(1);
    expect(memories.reduce((s, m) => s + m.buffer.byteLength, 0)).toBe(arenaBytes(small, sizes));
    for (const [i, r] of regions.entries()) {
      // each region 16-aligned, whole, after the fixed region, right after the one before in the same memory
      expect(r.bytes).toBe(Math.ceil(sizes[i]! / 16) * 16);
      expect(r.at % 16).toBe(0);
      expect(r.at + r.bytes).toBeLessThanOrEqual(r.memory.buffer.byteLength);
      const before = regions[i - 1];
      expect(r.at).toBe(before?.memory === r.memory ? before.at + before.bytes : KERNEL_BASE);
      // a new memory only where the region did not fit the last one
      if (before && before.memory !== r.memory)
        expect(before.at + before.bytes + r.bytes).toBeGreaterThan(before.memory.buffer.byteLength);
      new Uint8Array(r.memory.buffer, r.at, r.bytes).fill(i + 1);
    }
    // what each region holds is still there once all are placed: no two overlap
    for (const [i, r] of regions.entries())
      expect(new Uint8Array(r.memory.buffer, r.at, r.bytes).every((v) => v === i + 1)).toBe(true);
    // a region that no memory of the arena holds is refused (the caller keeps its own memory)
    expect(arena.place(4 * PAGE)).toBeNull();
    // planned within one memory: exactly the fixed region and the regions, in whole pages
    const one = new KernelArena({ ...small, maxBytes: undefined }, 3 * 40_000);
    const three = [40_000, 40_000, 40_000].map((b) => one.place(b)!);
    expect(new Set(three.map((r) => r.memory)).size).toBe(1);
    expect(three[0]!.memory.buffer.byteLength).toBe(Math.ceil((KERNEL_BASE + 120_000) / PAGE) * PAGE);
  });

  it('without a plan (or past it) it opens 64 MiB memories', () => {
    const arena = new KernelArena(small);
    const [a, b] = [arena.place(1000)!, arena.place(1000)!];
    expect(a.memory).toBe(b.memory);
    expect(a.memory.buffer.byteLength).toBe(4 * PAGE); // the spec's largest
    const big = new KernelArena({ ...small, maxBytes: undefined }, 112);
    expect(big.place(100)!.memory.buffer.byteLength).toBe(2 * PAGE); // planned: 112 bytes (16-aligned)
    // past the plan (and past its page)
    expect(big.place(70_000)!.memory.buffer.byteLength).toBe(KERNEL_BASE + ARENA_UNPLANNED_BYTES);
  });

  it('where the planned memory cannot be reserved, smaller ones hold the regions; an unaligned plan is aligned', () => {
    // 40 regions of 20 000 bytes planned in one memory (14 pages with the fixed one); memories over 4 pages fail
    let tries = 0;
    const sizes: number[] = [];
    const arena = new KernelArena({ ...small, maxBytes: undefined }, 40 * 20_000);
    const regions = withFailingMemory(
      (desc) => {
        tries++;
        sizes.push(desc.initial);
        return desc.initial > 4;
      },
      () => Array.from({ length: 40 }, () => arena.place(20_000)!),
    );
    // 14 pages, then 7, then 4 (halving): 9 regions per 4-page memory, and no more failed tries after the first open
    expect(sizes.slice(0, 3)).toEqual([14, 7, 4]);
    expect(tries).toBe(2 + Math.ceil(40 / 9));
    expect(new Set(regions.map((r) => r.memory)).size).toBe(Math.ceil(40 / 9));
    for (const r of regions) expect(r.at + r.bytes).toBeLessThanOrEqual(r.memory.buffer.byteLength);
    // a memory of the region's own size fails too (after the planned one): refused, and later regions that need as
    // much at once
    const none = new KernelArena(small, 100_000);
    let attempts = 0;
    withFailingMemory(
      () => ++attempts > 0,
      () => expect([none.place(1000), none.place(16)]).toEqual([null, null]),
    );
    expect(attempts).toBe(2);
    // a large region that no memory can take does not stop smaller ones: they still share memories of 8 pages
    const mixed = new KernelArena({ ...small, maxBytes: undefined }, 2 ** 20 + 40 * 20_000);
    const placed = withFailingMemory(
      (desc) => desc.initial > 8,
      () => [mixed.place(2 ** 20), ...Array.from({ length: 40 }, () => mixed.place(20_000))],
    );
    expect(placed[0]).toBeNull();
    expect(placed.slice(1).every((r) => r !== null)).toBe(true);
    const perMemory = Math.floor((8 * PAGE - KERNEL_BASE) / 20_000);
    expect(new Set(placed.slice(1).map((r) => r!.memory)).size).toBe(Math.ceil(40 / perMemory));
    // planned bytes that are not multiples of 16 are counted as the regions will be (aligned), not as unplanned
    // (an 80-byte region planned as 65 bytes: unaligned, less than the region, so once opened as past the plan)
    const arenas = new KernelArenas({ planned: [{ arena: 'dense', bytes: 65 }] });
    const w = tensor('f32', [2, 2], new Float32Array(4));
    const layer = new DenseLinear(w, null, { arenas });
    const { memories } = arenaRegions([], layer);
    expect(memories.map((m) => m.buffer.byteLength)).toEqual([
      KernelArenas.bytes(DenseLinear.footprint(2, 2, false).regions),
    ]);
  });

  it('layers in one KernelArenas compute what they compute alone, to the bit, with and without a decode pool', async () => {
    const rng = new Rng(7);
    const decomposed = [
      randomDecomposition(1024, 512, 16, rng), // split at 2 threads
      randomDecomposition(96, 80, 8, rng), // padded, Hadamard K > 1
      withTrainableFactors(randomDecomposition(64, 64, 8, rng), 2), // unfused: L̂ and R̂ in the dense arena
      randomDecomposition(520, 512, 0, rng), // split at 2 threads too
    ];
    const dense = [
      { m: 600, n: 512, w: rng.fillNormal(new Float32Array(600 * 512), 0, 0.05) }, // split at 2 threads
      { m: 40, n: 24, w: rng.fillNormal(new Float32Array(40 * 24), 0, 0.05) },
    ];
    const build = (options: { decodePool?: DecodePool; arenas?: KernelArenas }): Linear[] => [
      ...decomposed.map((d) => new CalderaLinear(d, null, options)),
      ...dense.map(({ m, n, w }) => new DenseLinear(tensor('f32', [m, n], w), null, options)),
      ...dense.map(({ m, n, w }) => new DenseF16Linear(f32ArrayToF16(w), m, n, null, 'f16', options)),
    ];
    const pool = await createDecodePool({ threads: 2 });
    pools.push(pool);
    const alone = build({});
    for (const threads of [1, 2]) {
      const decodePool = threads > 1 ? pool : undefined;
      const arenas = new KernelArenas({ threads });
      const layers = build({ arenas, ...(decodePool ? { decodePool } : {}) });
      expect(
        layers.slice(0, 4).map((l) => (l as CalderaLinear).fused),
        `${threads} threads`,
      ).toEqual([true, true, false, true]);
      // the calling thread's CALDERA arena and the dense one (and the worker's with 2 threads); alone, one per fused
      // layer and dense matrix, two for the unfused layer's L̂ and R̂ (and with 2 threads one for each split CALDERA
      // layer's worker part: 1024×512 and 520×512)
      expect(wasmMemories([pool], ...layers), `${threads} threads`).toBe(threads + 1);
      expect(wasmMemories([pool], ...build(decodePool ? { decodePool } : {})), `${threads} threads`).toBe(
        threads === 1 ? 9 : 11,
      );
      for (const rows of [1, 3, 24])
        for (const [i, layer] of layers.entries()) {
          const x = rng.fillNormal(new Float32Array(rows * layer.inFeatures));
          const want = alone[i]!.forward(x, rows);
          const got = layer.forward(x, rows);
          expect(
            got.findIndex((v, j) => !Object.is(v, want[j])),
            `${threads} threads, layer ${i}, ${rows} rows`,
          ).toBe(-1);
        }
    }
  });

  it("a layer's regions are its footprint's, and an arena that cannot open its planned memory takes a smaller one", () => {
    const rng = new Rng(9);
    const d = randomDecomposition(256, 128, 8, rng);
    const { meta } = toCheckpointTensors('layer', d);
    const arenas = new KernelArenas();
    const layer = new CalderaLinear(d, null, { arenas });
    const { regions, memories, buffers } = arenaRegions([], layer);
    const footprint = CalderaLinear.footprint(meta, false);
    expect(regions.map((r: ArenaRegion) => r.bytes)).toEqual(footprint.regions.map((r) => r.bytes));
    // its own arrays beside the regions, as the footprint counts them (L and R as codes, the signs in f32)
    expect(heldBytesExcept([...memories, ...buffers], layer) + regions[0]!.bytes).toBe(
      footprintBytes(footprint, true),
    );
    // alone: the same layer in a memory of its own, as memoryBytes counts it
    expect(heldBytes(new CalderaLinear(d))).toBe(CalderaLinear.memoryBytes(meta, false));
    // the arena's planned 1 GiB memory cannot be reserved, nor half of it: it takes a quarter
    const failing = new KernelArenas({ planned: [{ arena: 'caldera', bytes: 2 ** 30 }] });
    const fallback = withFailingMemory(
      (desc) => desc.initial * PAGE > 2 ** 29,
      () => new CalderaLinear(d, null, { arenas: failing }),
    );
    expect(fallback.fused).toBe(true);
    expect(arenaRegions([], fallback).memories.map((m) => m.buffer.byteLength)).toEqual([2 ** 28 + PAGE]);
    const x = rng.fillNormal(new Float32Array(128));
    expect(fallback.forward(x, 1)).toEqual(layer.forward(x, 1));
  });

  it("a split layer in arenas whose own region cannot be placed takes the TypeScript path (its workers' stay placed)", async () => {
    const pool = await createDecodePool({ threads: 3 });
    pools.push(pool);
    const rng = new Rng(13);
    const d = randomDecomposition(1024, 1024, 8, rng);
    const shape = { shape: d.shape, padded: d.padded, rank: 8, hadamard: true, qBits: 2, ftRank: 0 };
    const pages = (threads: number) =>
      arenaBytes(CALDERA_ARENA, [CalderaKernel.regionBytes(shape, 16, threads)!.own]) / PAGE;
    const [split, whole] = [pages(3), pages(1)];
    expect(whole).toBeGreaterThan(split);
    // planned for the layer (so its arena tries the split size only)
    const { meta } = toCheckpointTensors('layer', d);
    const arenas = new KernelArenas({ threads: 3, planned: CalderaLinear.footprint(meta, false, 3).regions });
    // the calling thread's memories fail unless of the whole layer's size: without arenas the layer is rebuilt whole in
    // a memory of its own; in arenas its workers' regions stay (the arenas hold them), and it is not
    const layer = withFailingMemory(
      (desc) => !desc.shared && desc.initial !== whole,
      () => new CalderaLinear(d, null, { decodePool: pool, arenas }),
    );
    expect(layer.fused).toBe(false);
    const alone = withFailingMemory(
      (desc) => !desc.shared && desc.initial !== whole,
      () => new CalderaLinear(d, null, { decodePool: pool }),
    );
    expect(alone.fused).toBe(true);
    // the TypeScript path computes the same layer (other summation order: within 1e-4 of the largest output)
    const x = rng.fillNormal(new Float32Array(1024));
    const [a, b] = [layer.forward(x, 1), alone.forward(x, 1)];
    const max = b.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    expect(a.every((v, i) => Math.abs(v - b[i]!) <= 1e-4 * max)).toBe(true);
  });

  it('arenas for another number of threads than the pool are E_VALUE', async () => {
    const pool = await createDecodePool({ threads: 2 });
    pools.push(pool);
    const w = tensor('f32', [8, 8], new Float32Array(64));
    expect(() => new DenseLinear(w, null, { arenas: new KernelArenas({ threads: 2 }) })).toThrow(
      /E_VALUE: linear: arenas made for 2 decode threads, the layer is built with 1/,
    );
    expect(
      () =>
        new CalderaLinear(randomDecomposition(16, 16, 2, new Rng(1)), null, {
          decodePool: pool,
          arenas: new KernelArenas(),
        }),
    ).toThrow(/arenas made for 1 decode threads, the layer is built with 2/);
    expect(() => new KernelArenas({ threads: 0 })).toThrow(
      /E_VALUE: KernelArenas: threads must be an integer/,
    );
  });
});
