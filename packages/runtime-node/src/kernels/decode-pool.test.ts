import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { runInNewContext } from 'node:vm';
import { CalderaError, f32ArrayToBf16, f32ArrayToF16, Rng, tensor } from '@caldera/core';
import { randomDecomposition, type Decomposition } from '@caldera/lowrank';
import { CalderaLinear, DenseF16Linear, DenseLinear, type Linear } from '../linear.js';
import { heldBytes, sharedBuffersExcept } from '../testing/held-bytes.js';
import { withFailingMemory } from '../testing/failing-memory.js';
import { CalderaKernel, splitRanges } from './caldera-kernel.js';
import { SPLIT_MIN_WEIGHTS } from './row-split.js';
import { createDecodePool, decodeExecutor, exposeGcWhileStarting, type DecodePool } from './decode-pool.js';
import { denseRanges } from './matvec.js';

/** This thread's own collector (test only), taken as the pool's workers take theirs. */
function collector(): () => void {
  const flag = exposeGcWhileStarting();
  try {
    return runInNewContext('gc') as () => void;
  } finally {
    flag.done();
  }
}

const pools: DecodePool[] = [];
const pool = async (threads: number): Promise<DecodePool> => {
  const p = await createDecodePool({ threads });
  pools.push(p);
  return p;
};
afterAll(() => pools.forEach((p) => p.dispose()));

/**
 * Layers around the split threshold and the row-rounding cases: 2816 rows (Hadamard K = 11 on the rows), a rank-0
 * layer, 1000 rows (padded), a layer of exactly SPLIT_MIN_WEIGHTS weights, one without rotations, and one just below
 * the threshold (not split).
 */
function layers(): { name: string; d: Decomposition; split: boolean }[] {
  const rng = new Rng(11);
  const noRotation = randomDecomposition(520, 512, 8, rng);
  return [
    { name: '2816x1024 rank 64', d: randomDecomposition(2816, 1024, 64, rng), split: true },
    { name: '1024x2816 rank 0', d: randomDecomposition(1024, 2816, 0, rng), split: true },
    { name: '1000x640 rank 16', d: randomDecomposition(1000, 640, 16, rng), split: true },
    { name: '256x1024 (the threshold)', d: randomDecomposition(256, 1024, 8, rng), split: true },
    {
      name: '520x512 without rotations',
      d: { ...noRotation, hadamard: false, su: null, sv: null },
      split: true,
    },
    { name: '128x1024 (below the threshold)', d: randomDecomposition(128, 1024, 8, rng), split: false },
  ];
}

describe('decode pool: a CALDERA layer whose rows of Q̂ are split over threads', () => {
  it('splitRanges covers the rows in order, in multiples of 8, one part per thread at most, balanced for the caller', () => {
    for (const [mp, np, rank] of [
      [2816, 1024, 64],
      [1024, 2816, 0],
      [1000, 640, 16],
      [8, 32768, 0],
      [4096, 4096, 256],
    ] as const)
      for (const threads of [2, 3, 4, 7, 16]) {
        const parts = splitRanges(mp, np, rank, threads);
        expect(parts.length).toBeLessThanOrEqual(threads);
        let next = 0;
        for (const [i, [row0, rows]] of parts.entries()) {
          expect(row0).toBe(next);
          expect(rows).toBeGreaterThanOrEqual(i === 0 ? 0 : 1);
          if (i < parts.length - 1) expect(rows % 8).toBe(0);
          next += rows;
        }
        expect(next).toBe(mp);
        // the caller also runs the low-rank term: its part is never larger than a worker's (+ 8 rows of rounding)
        if (parts.length > 1) expect(parts[0]![1]).toBeLessThanOrEqual(parts[1]![1] + 8);
      }
    expect(splitRanges(248, 1024, 8, 4)).toEqual([[0, 248]]);
    expect(248 * 1024).toBeLessThan(SPLIT_MIN_WEIGHTS);
    expect(splitRanges(4096, 4096, 64, 1)).toEqual([[0, 4096]]);
  });

  it('gives the same bits as the layer alone: one row, a few rows, the batch path, and the codes it rebuilds', async () => {
    const rng = new Rng(3);
    const pools = await Promise.all([2, 3, 4].map((threads) => pool(threads)));
    for (const { name, d, split } of layers()) {
      const [m, n] = d.shape;
      const alone = new CalderaLinear(d);
      // 24 rows: above CALDERA_BATCH_MIN_ROWS, the batch path, which reads the codes from every part
      const inputs = [1, 3, 24].map((rows) => {
        const x = rng.fillNormal(new Float32Array(rows * n));
        return { rows, x, want: alone.forward(x, rows) };
      });
      for (const p of pools) {
        const pooled = new CalderaLinear(d, null, { decodePool: p });
        expect(pooled.fused).toBe(true);
        // split or not, as the plan says: the workers' memories are counted and held
        const shape = {
          shape: d.shape,
          padded: d.padded,
          rank: d.rank,
          hadamard: d.hadamard,
          qBits: 2,
          ftRank: 0,
        };
        expect(
          CalderaKernel.memoryBytes(shape, 16, p.threads)! > CalderaKernel.memoryBytes(shape, 16)!,
          name,
        ).toBe(split);
        for (const { rows, x, want } of inputs) {
          const y = pooled.forward(x, rows);
          expect(y.length).toBe(rows * m);
          expect(
            y.findIndex((v, i) => !Object.is(v, want[i])),
            `${name}, ${p.threads} threads, ${rows} rows`,
          ).toBe(-1);
        }
        const codes = pooled.d.q!.planes[0]!;
        const original = d.q!.planes[0]!;
        expect(codes.length).toBe(original.length);
        expect(
          codes.findIndex((c, i) => c !== original[i]),
          name,
        ).toBe(-1);
      }
    }
  });

  it("a layer whose workers' memories cannot be reserved runs whole on the calling thread, to the same bits", async () => {
    const rng = new Rng(31);
    const d = randomDecomposition(1024, 1024, 8, rng);
    const p = await pool(3);
    // as in a browser process out of address space for WebAssembly memories: every shared memory fails, or the
    // layer's own memory fails once, after its workers' memories took the last room
    const alone = new CalderaLinear(d);
    for (const fails of ['shared', 'own once']) {
      let ownFailures = fails === 'own once' ? 1 : 0;
      const failing = (desc: WebAssembly.MemoryDescriptor): boolean => {
        if (fails === 'shared' && desc.shared) return true;
        if (!desc.shared && ownFailures > 0) {
          ownFailures--;
          return true;
        }
        return false;
      };
      const layer = withFailingMemory(failing, () => new CalderaLinear(d, null, { decodePool: p }));
      expect(ownFailures, fails).toBe(0);
      expect(layer.fused, fails).toBe(true);
      expect(heldBytes(layer), fails).toBe(heldBytes(alone));
      for (const rows of [1, 3]) {
        const x = rng.fillNormal(new Float32Array(rows * 1024));
        expect(layer.forward(x, rows), fails).toEqual(alone.forward(x, rows));
      }
    }
  });

  it('more threads than parts (8 and 16): the workers without rows of a layer skip it, the output is the same', async () => {
    const rng = new Rng(19);
    const ds = [
      randomDecomposition(256, 1024, 8, rng), // 32 blocks of 8 rows: fewer than 16 threads' shares of the caller's
      randomDecomposition(1000, 640, 16, rng),
      randomDecomposition(8, 32768, 0, rng), // one block: one part in all
    ];
    for (const threads of [8, 16]) {
      const p = await pool(threads);
      for (const d of ds) {
        const [mp, np] = d.padded;
        const parts = splitRanges(mp, np, d.rank, threads);
        expect(parts.length).toBeLessThanOrEqual(threads);
        const alone = new CalderaLinear(d);
        const pooled = new CalderaLinear(d, null, { decodePool: p });
        for (const rows of [1, 3]) {
          const x = rng.fillNormal(new Float32Array(rows * d.shape[1]));
          expect(pooled.forward(x, rows), `${d.shape.join('x')}, ${threads} threads`).toEqual(
            alone.forward(x, rows),
          );
        }
      }
      const w = rng.fillNormal(new Float32Array(300 * 1024));
      const dense = new DenseLinear(tensor('f32', [300, 1024], w), null, { decodePool: p });
      const x = rng.fillNormal(new Float32Array(1024));
      expect(dense.forward(x, 1)).toEqual(new DenseLinear(tensor('f32', [300, 1024], w)).forward(x, 1));
    }
  });

  it('a worker computes its rows: the same layer on two pools, and many layers on one, interleaved', async () => {
    const rng = new Rng(5);
    const p = await pool(2);
    const ds = [0, 1, 2].map(() => randomDecomposition(1024, 512, 16, rng));
    const pooled = ds.map((d) => new CalderaLinear(d, null, { decodePool: p }));
    const p3 = await pool(3);
    const other = new CalderaLinear(ds[0]!, null, { decodePool: p3 });
    const alone = ds.map((d) => new CalderaLinear(d));
    for (let step = 0; step < 20; step++) {
      const i = step % 3;
      const x = rng.fillNormal(new Float32Array(512));
      const want = alone[i]!.forward(x, 1);
      expect(pooled[i]!.forward(x, 1)).toEqual(want);
      if (i === 0) expect(other.forward(x, 1)).toEqual(want);
    }
    // the workers' rows are real: a layer's held memory includes their shared memories
    const shared = (l: CalderaLinear) => sharedBuffersExcept([p, p3], l);
    expect(shared(pooled[0]!)).toBe(1);
    expect(shared(other)).toBe(2);
    expect(shared(alone[0]!)).toBe(0);
    expect(heldBytes(pooled[0]!)).toBeGreaterThan(heldBytes(alone[0]!));
  });

  it('one thread starts no worker and splits nothing; bad threads, a foreign pool and a disposed pool are E_VALUE', async () => {
    const rng = new Rng(9);
    const d = randomDecomposition(1024, 1024, 8, rng);
    const one = await pool(1);
    expect(one.threads).toBe(1);
    expect(heldBytes(new CalderaLinear(d, null, { decodePool: one }))).toBe(heldBytes(new CalderaLinear(d)));
    for (const threads of [0, -1, 1.5, 257, Number.NaN])
      await expect(createDecodePool({ threads }), String(threads)).rejects.toThrow(
        /E_VALUE: createDecodePool: threads/,
      );
    expect(
      () => new CalderaLinear(d, null, { decodePool: { threads: 2, disposed: false, dispose() {} } }),
    ).toThrow(/E_VALUE: decodePool: not a pool from createDecodePool/);
    const p = await createDecodePool({ threads: 2 });
    const layer = new CalderaLinear(d, null, { decodePool: p });
    const x = rng.fillNormal(new Float32Array(1024));
    expect(layer.forward(x, 1)).toEqual(new CalderaLinear(d).forward(x, 1));
    p.dispose();
    expect(p.disposed).toBe(true);
    p.dispose(); // twice is harmless
    const e = (() => {
      try {
        layer.forward(x, 1);
      } catch (err) {
        return err;
      }
    })();
    expect(e).toBeInstanceOf(CalderaError);
    expect((e as CalderaError).code).toBe('E_VALUE');
    expect(String(e)).toMatch(/decode pool: used after dispose/);
    // the batch path needs no worker: a prompt still runs, to the same bits
    const xs = rng.fillNormal(new Float32Array(24 * 1024));
    expect(layer.forward(xs, 24)).toEqual(new CalderaLinear(d).forward(xs, 24));
    expect(() => new CalderaLinear(d, null, { decodePool: p })).toThrow(
      /E_VALUE: decode pool: used after dispose/,
    );
  });

  it("a worker's failure and the caller's are reported after every thread has finished, and the pool goes on", async () => {
    const rng = new Rng(13);
    const d = randomDecomposition(1024, 512, 8, rng);
    const p = await pool(3);
    const layer = new CalderaLinear(d, null, { decodePool: p });
    const alone = new CalderaLinear(d);
    const x = rng.fillNormal(new Float32Array(512));
    const ex = decodeExecutor(p);
    // a job for a layer no worker holds: each reports it, the caller throws E_DEVICE
    expect(() => ex.run(1 << 20, () => {})).toThrow(
      /E_DEVICE: decode pool: a worker never received layer 1048576/,
    );
    expect(layer.forward(x, 1)).toEqual(alone.forward(x, 1));
    // the caller's own part throws: its error, once the workers are done; the next product is right
    expect(() =>
      ex.run(0, () => {
        throw new Error('own part failed');
      }),
    ).toThrow('own part failed');
    expect(layer.forward(x, 1)).toEqual(alone.forward(x, 1));
  });

  it('a dense layer (f32, f16 finite and with infinities, bf16) on a pool gives the same bits and holds the same bytes', async () => {
    const rng = new Rng(17);
    for (const [m, n] of [
      [1000, 520], // uneven parts
      [256, 1024], // the threshold
      [128, 1024], // below it: not split
    ] as const) {
      const w = rng.fillNormal(new Float32Array(m * n), 0, 0.05);
      const f16 = f32ArrayToF16(w);
      const inf = f16.slice();
      inf[7] = 0x7c00; // +∞: the kernel for any halves, not the finite one
      const make = (kind: string, options: { decodePool?: DecodePool }): Linear =>
        kind === 'f32'
          ? new DenseLinear(tensor('f32', [m, n], w), null, options)
          : kind === 'bf16'
            ? new DenseF16Linear(f32ArrayToBf16(w), m, n, null, 'bf16', options)
            : new DenseF16Linear(kind === 'f16' ? f16 : inf, m, n, null, 'f16', options);
      for (const threads of [2, 3]) {
        const p = await pool(threads);
        expect(denseRanges(m, n, threads).length > 1).toBe(m * n >= SPLIT_MIN_WEIGHTS);
        for (const kind of ['f32', 'f16', 'f16 with ∞', 'bf16']) {
          const alone = make(kind, {});
          const pooled = make(kind, { decodePool: p });
          // the same memory, shared: nothing more is held
          expect(heldBytes(pooled), kind).toBe(heldBytes(alone));
          for (const rows of [1, 3, 24]) {
            const x = rng.fillNormal(new Float32Array(rows * n));
            const want = alone.forward(x, rows);
            const y = pooled.forward(x, rows);
            expect(
              y.findIndex((v, i) => !Object.is(v, want[i])),
              `${kind} ${m}x${n}, ${threads} threads, ${rows} rows`,
            ).toBe(-1);
          }
        }
      }
    }
  });

  it('a worker thread that stops makes the pool E_DEVICE instead of leaving the caller waiting', async () => {
    const rng = new Rng(23);
    const d = randomDecomposition(1024, 512, 8, rng);
    const p = await createDecodePool({ threads: 2 });
    try {
      const layer = new CalderaLinear(d, null, { decodePool: p });
      const x = rng.fillNormal(new Float32Array(512));
      expect(layer.forward(x, 1)).toEqual(new CalderaLinear(d).forward(x, 1));
      // a message the worker cannot read, and the job on which it reads it (YIELD): it fails outside any layer
      (p as unknown as { state: { list: { post(v: unknown): void }[] } }).state.list[0]!.post(null);
      expect(() => decodeExecutor(p).run(-1, () => {})).toThrow(
        /E_DEVICE: decode pool: a worker thread stopped; create a new pool/,
      );
      expect(() => layer.forward(x, 1)).toThrow(/E_DEVICE: decode pool: a worker thread stopped/);
    } finally {
      p.dispose();
    }
  });

  it('pools that start at the same time, or one while another starts, all start (and --expose-gc is cleared after)', async () => {
    // 'undefined' unless the test process runs with --expose-gc itself
    const initially = runInNewContext('typeof gc') as string;
    const together = await Promise.all([2, 3].map((threads) => createDecodePool({ threads })));
    const first = createDecodePool({ threads: 2 });
    await sleep(40);
    const staggered = [await first, await createDecodePool({ threads: 2 })];
    for (const p of [...together, ...staggered]) {
      pools.push(p);
      expect(p.threads).toBeGreaterThan(1);
    }
    expect(runInNewContext('typeof gc')).toBe(initially);
    // the flag the workers take their collector with stays set while any pool is starting, whichever finishes first
    const a = exposeGcWhileStarting();
    const b = exposeGcWhileStarting();
    expect(runInNewContext('typeof gc')).toBe('function');
    a.done();
    expect(runInNewContext('typeof gc')).toBe('function');
    b.done();
    expect(runInNewContext('typeof gc')).toBe(initially);
  }, 60_000);

  it('a pool dropped without dispose() stops its workers once it and its layers are collected', async () => {
    // the process's threads where Linux lists them (each worker is one), and in any case the pool's own record of
    // its workers (held here without the pool), which the finalizer marks stopped
    const linux = existsSync('/proc/self/task');
    const threads = () => (linux ? readdirSync('/proc/self/task').length : 0);
    const gc = collector();
    const before = threads();
    const rng = new Rng(37);
    const state = await (async () => {
      const p = await createDecodePool({ threads: 3 });
      const layer = new CalderaLinear(randomDecomposition(1024, 1024, 8, rng), null, { decodePool: p });
      const x = rng.fillNormal(new Float32Array(1024));
      layer.forward(x, 1);
      if (linux) expect(threads()).toBeGreaterThanOrEqual(before + 2);
      return (p as unknown as { state: { disposed: boolean } }).state;
    })();
    expect(state.disposed).toBe(false);
    for (let i = 0; i < 100 && !(state.disposed && threads() <= before); i++) {
      gc();
      await sleep(20);
    }
    expect(state.disposed).toBe(true);
    expect(threads()).toBeLessThanOrEqual(before);
  });

  it("the workers free a dropped layer's memory (a model reloaded on one pool does not grow)", async () => {
    // this thread's own collector, as the workers get theirs (test only)
    const gc = collector();
    // 3 threads: every worker (not only the first) must drop the layers
    const p = await pool(3);
    const rss = () => process.memoryUsage().rss / 2 ** 20;
    gc();
    const before = rss();
    // 24 split dense layers of 8 MiB each, used once (so that the worker holds their memory), then dropped
    (() => {
      const rng = new Rng(29);
      const x = rng.fillNormal(new Float32Array(1024));
      for (let i = 0; i < 24; i++) {
        const layer = new DenseLinear(tensor('f32', [2048, 1024], new Float32Array(2048 * 1024)), null, {
          decodePool: p,
        });
        layer.forward(x, 1);
      }
    })();
    const held = rss() - before;
    expect(held).toBeGreaterThan(150);
    // the layers' finalizers tell the workers, which drop and collect
    let after = rss();
    for (let i = 0; i < 100 && after - before > held / 2; i++) {
      gc();
      await sleep(20);
      after = rss();
    }
    expect(
      after - before,
      `held ${held.toFixed(0)} MiB, then ${(after - before).toFixed(0)} MiB`,
    ).toBeLessThan(held / 2);
  });
});

describe('an undisposed decode pool', () => {
  it('does not keep the process alive (the workers were referenced again by their message listeners)', () => {
    // the built package in a child process: a pool kept referenced and never disposed; the process must end by itself
    const dist = new URL('../../dist/index.js', import.meta.url).href;
    const script = `import { createDecodePool } from ${JSON.stringify(dist)};
globalThis.kept = await createDecodePool({ threads: 2 });
console.log('started', globalThis.kept.threads);`;
    // (a file, not `-e`: the workers inherit --input-type=module, and their source is a script)
    const dir = mkdtempSync(join(tmpdir(), 'caldera-pool-exit-'));
    const file = join(dir, 'keep-pool.mjs');
    writeFileSync(file, script);
    const t0 = Date.now();
    const r = spawnSync(process.execPath, [file], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('started 2');
    expect(r.signal).toBeNull(); // not killed by the timeout: it exited by itself
    expect(r.status).toBe(0);
    expect(Date.now() - t0).toBeLessThan(15_000);
    rmSync(dir, { recursive: true, force: true });
  }, 30_000);
});
