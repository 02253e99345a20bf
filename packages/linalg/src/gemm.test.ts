import { CalderaError, slice, tensor, type Matrix } from '@caldera/core';
import { afterAll, describe, expect, it } from 'vitest';
import { gemm, gemmInto } from './gemm.js';
import { createPool, poolExecutor } from './pool/pool.js';
import { defaultExecutor } from './pool/default.js';
import { at, naiveGemm, randn, stridedRandn, tview, worstErrorRatio } from './test-util.js';
import { panelGemmInto } from './wasm/panel-gemm.js';
import { kernelsModule, relaxedSimdAllowed } from './wasm/module.js';
import { KERNELS_LOCAL_RELAXED_WASM_BASE64 } from './generated/kernels.js';

const pool = createPool({ threads: 2 });
afterAll(() => pool.dispose());

function codeOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    if (e instanceof CalderaError) return e.code;
    throw e;
  }
  return undefined;
}

// [m, n, k]: empty, 1×1, sizes that are not multiples of MR = 4, NR = 8/4 or kc = 256/128, and k > kc.
const SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [1, 1, 5000],
  [5, 7, 129],
  [13, 9, 37],
  [33, 17, 65],
  [4, 8, 300],
  [70, 45, 261],
];

describe('gemm matches a brute-force product within the k·u rounding bound', () => {
  for (const dtype of ['f32', 'f64'] as const) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        it(`${dtype} transA=${transA} transB=${transB}`, () => {
          let seed = 1;
          for (const [m, n, k] of SHAPES) {
            const a = transA ? randn(dtype, k, m, seed++) : randn(dtype, m, k, seed++);
            const b = transB ? randn(dtype, n, k, seed++) : randn(dtype, k, n, seed++);
            const c = randn(dtype, m, n, seed++);
            for (const [alpha, beta] of [
              [1, 0],
              [-0.75, 1.5],
              [0.1, -0.3],
            ] as const) {
              const want = naiveGemm(a, b, transA, transB, alpha, beta, c);
              const got = gemm(a, b, { transA, transB, alpha, beta, c });
              expect(got.dtype).toBe(dtype);
              expect(got.shape).toEqual([m, n]);
              expect(worstErrorRatio(got, want)).toBeLessThanOrEqual(1);
              const pooled = gemm(a, b, { transA, transB, alpha, beta, c, pool });
              // Each element is computed by one kernel call in the same order: bitwise equal.
              expect(pooled.data).toEqual(got.data);
              const ref = gemm(a, b, { transA, transB, alpha, beta, c, reference: true });
              expect(worstErrorRatio(ref, want)).toBeLessThanOrEqual(1);
            }
          }
        });
      }
    }
  }
});

describe('gemmInto', () => {
  it('writes into a strided view of a larger matrix and nothing else (both dtypes, transposed views)', () => {
    for (const dtype of ['f32', 'f64'] as const) {
      const a = stridedRandn(dtype, 41, 67, 11); // used as Aᵀ view → op(A) is 67 × 41... see below
      const b = stridedRandn(dtype, 29, 67, 12);
      const c = stridedRandn(dtype, 41, 29, 13, -777);
      const before = Array.from(c.data);
      const want = naiveGemm(a, tview(b), false, false, 2, -1, c);
      gemmInto(c, a, tview(b), { alpha: 2, beta: -1, pool });
      expect(worstErrorRatio(c, want)).toBeLessThanOrEqual(1);
      // every element outside the view keeps its sentinel
      const inView = new Set<number>();
      for (let i = 0; i < 41; i++)
        for (let j = 0; j < 29; j++) inView.add(c.offset + i * c.strides[0]! + j * 2);
      for (let q = 0; q < c.data.length; q++) if (!inView.has(q)) expect(c.data[q]).toBe(before[q]);
    }
  });

  it('writes and reads a C whose rows are strided (a transposed view) across several copy bands', () => {
    // C [150, 29] seen through its transpose (row stride 2, column stride 2·150 + 3): 150 rows span three of the
    // 64-row bands in which such a C is copied in and out, the last one partial
    for (const dtype of ['f32', 'f64'] as const) {
      const a = stridedRandn(dtype, 150, 40, 21);
      const b = stridedRandn(dtype, 40, 29, 22);
      const c = tview(stridedRandn(dtype, 29, 150, 23, -777));
      const before = Array.from(c.data);
      const want = naiveGemm(a, b, false, false, 1.5, 0.5, c);
      gemmInto(c, a, b, { alpha: 1.5, beta: 0.5, pool });
      expect(worstErrorRatio(c, want)).toBeLessThanOrEqual(1);
      const inView = new Set<number>();
      for (let i = 0; i < 150; i++)
        for (let j = 0; j < 29; j++) inView.add(c.offset + i * c.strides[0]! + j * c.strides[1]!);
      for (let q = 0; q < c.data.length; q++) if (!inView.has(q)) expect(c.data[q]).toBe(before[q]);
    }
  });

  it('updates only the requested triangle, on both paths, leaving the other untouched', () => {
    for (const dtype of ['f32', 'f64'] as const) {
      for (const triangle of ['upper', 'lower'] as const) {
        for (const [n, k] of [
          [5, 3],
          [61, 70],
        ] as const) {
          const l = randn(dtype, n, k, 7);
          const r = randn(dtype, k, n, 8);
          const c = stridedRandn(dtype, n, n, 9);
          const before = tensor(dtype, [n, n]) as Matrix;
          for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) before.data[i * n + j] = at(c, i, j);
          const want = naiveGemm(l, tview(r), false, true, -1, 1, c);
          gemmInto(c, l, tview(r), { transB: true, alpha: -1, beta: 1, triangle, pool });
          const inTri = (i: number, j: number): boolean => (triangle === 'upper' ? j >= i : j <= i);
          let worst = 0;
          for (let i = 0; i < n; i++) {
            for (let j = 0; j < n; j++) {
              if (!inTri(i, j)) {
                expect(at(c, i, j)).toBe(before.data[i * n + j]);
                continue;
              }
              const q = i * n + j;
              const bound = (k + 4) * (dtype === 'f32' ? 2 ** -24 : 2 ** -53) * want.magnitude[q]!;
              worst = Math.max(worst, Math.abs(at(c, i, j) - want.value[q]!) / bound);
            }
          }
          expect(worst).toBeLessThanOrEqual(1);
        }
      }
    }
    expect(
      codeOf(() =>
        gemmInto(randn('f32', 3, 4, 1), randn('f32', 3, 2, 1), randn('f32', 2, 4, 1), { triangle: 'upper' }),
      ),
    ).toBe('E_SHAPE');
  });

  it('reports progress in waves up to the total and stops when aborted', () => {
    const exec = defaultExecutor()!;
    for (const triangle of [undefined, 'upper', 'lower'] as const) {
      const a = randn('f64', 96, 40, 1);
      const c = tensor('f64', [96, 96]) as Matrix;
      const events: { done: number; total: number }[] = [];
      const args = {
        c,
        a,
        b: tview(a),
        transA: false,
        transB: false,
        alpha: 1,
        beta: 0,
        triangle,
        waveMadds: 5000,
      };
      panelGemmInto(exec, { ...args, onProgress: (p) => events.push(p) }, 't');
      const total = triangle ? ((96 * 97) / 2) * 40 : 96 * 96 * 40;
      expect(events.length).toBeGreaterThan(3);
      expect(events.at(-1)).toEqual({ done: total, total });
      for (let i = 1; i < events.length; i++) expect(events[i]!.done).toBeGreaterThan(events[i - 1]!.done);
      const ac = new AbortController();
      let calls = 0;
      const onProgress = (): void => {
        if (++calls === 2) ac.abort();
      };
      expect(codeOf(() => panelGemmInto(exec, { ...args, signal: ac.signal, onProgress }, 't'))).toBe(
        'E_ABORTED',
      );
      expect(calls).toBe(2);
    }
    const ac = new AbortController();
    ac.abort();
    expect(codeOf(() => gemm(randn('f32', 80, 80, 1), randn('f32', 80, 80, 2), { signal: ac.signal }))).toBe(
      'E_ABORTED',
    );
    const seen: number[] = [];
    gemm(randn('f32', 80, 70, 1), randn('f32', 70, 60, 2), {
      pool,
      onProgress: (p) => seen.push(p.done / p.total),
    });
    expect(seen.at(-1)).toBe(1);
  });

  it('allows a nested product from a progress callback without disturbing the outer one', () => {
    const a = randn('f64', 64, 64, 21);
    const b = randn('f64', 64, 64, 22);
    const alone = gemm(a, b, { pool });
    let inner: Matrix | undefined;
    const outer = gemm(a, b, {
      pool,
      onProgress: () => {
        inner ??= gemm(b, a, { pool });
      },
    });
    expect(outer.data).toEqual(alone.data);
    expect(worstErrorRatio(inner!, naiveGemm(b, a, false, false, 1, 0))).toBeLessThanOrEqual(1);
  });

  it('handles empty operands and k = 0 (C := beta·C)', () => {
    const c = randn('f64', 3, 4, 1);
    const c0 = Array.from(c.data as Float64Array);
    gemmInto(c, tensor('f64', [3, 0]), tensor('f64', [0, 4]), { beta: 2 });
    expect(Array.from(c.data)).toEqual(c0.map((v) => 2 * v));
    gemmInto(c, tensor('f64', [3, 0]), tensor('f64', [0, 4]));
    expect(Array.from(c.data)).toEqual(new Array(12).fill(0));
    expect(gemm(tensor('f32', [0, 5]), tensor('f32', [5, 3])).shape).toEqual([0, 3]);
    expect(gemm(tensor('f32', [2, 5]), tensor('f32', [5, 0])).shape).toEqual([2, 0]);
  });

  it('with beta = 0 ignores NaN already in C', () => {
    const c = tensor('f32', [8, 8]);
    c.data.fill(Number.NaN);
    gemmInto(c, randn('f32', 8, 80, 1), randn('f32', 80, 8, 2));
    expect(c.data.every(Number.isFinite)).toBe(true);
  });

  it('chunks problems larger than the scratch budget without changing the result', () => {
    const exec = defaultExecutor()!;
    for (const dtype of ['f32', 'f64'] as const) {
      const a = randn(dtype, 45, 70, 3);
      const b = randn(dtype, 70, 38, 4);
      const whole = gemm(a, b);
      const chunked = tensor(dtype, [45, 38]) as Matrix;
      panelGemmInto(
        exec,
        { c: chunked, a, b, transA: false, transB: false, alpha: 1, beta: 0, maxBytes: 20_000 },
        't',
      );
      expect(chunked.data).toEqual(whole.data);
    }
  });

  it('chunks into a C with strided rows (a transposed view) with beta: every chunk copied in and out at its offset', () => {
    const exec = defaultExecutor()!;
    for (const dtype of ['f32', 'f64'] as const) {
      const a = randn(dtype, 150, 70, 5);
      const b = randn(dtype, 70, 38, 6);
      const c = tview(stridedRandn(dtype, 38, 150, 7, -777)); // [150, 38], strides [2, 303]
      const before = Array.from(c.data);
      const want = naiveGemm(a, b, false, false, 1, -0.5, c);
      panelGemmInto(
        exec,
        { c, a, b, transA: false, transB: false, alpha: 1, beta: -0.5, maxBytes: 20_000 },
        't',
      );
      expect(worstErrorRatio(c, want)).toBeLessThanOrEqual(1);
      const inView = new Set<number>();
      for (let i = 0; i < 150; i++)
        for (let j = 0; j < 38; j++) inView.add(c.offset + i * c.strides[0]! + j * c.strides[1]!);
      for (let q = 0; q < c.data.length; q++) if (!inView.has(q)) expect(c.data[q]).toBe(before[q]);
    }
  });
});

describe('gemm input errors', () => {
  const a = randn('f32', 3, 4, 1);
  it('rejects mismatched shapes, dtypes and non-finite input with stable codes', () => {
    expect(codeOf(() => gemm(a, randn('f32', 5, 2, 2)))).toBe('E_SHAPE');
    expect(() => gemm(a, randn('f32', 5, 2, 2))).toThrow(/inner dimensions differ/);
    expect(codeOf(() => gemm(a, randn('f64', 4, 2, 2) as never))).toBe('E_DTYPE');
    expect(codeOf(() => gemm(a, randn('f32', 4, 2, 2), { c: randn('f32', 2, 2, 3), beta: 1 }))).toBe(
      'E_SHAPE',
    );
    expect(codeOf(() => gemm(tensor('i32', [2, 2]) as never, a))).toBe('E_DTYPE');
    const bad = randn('f32', 4, 2, 2);
    bad.data[3] = Number.POSITIVE_INFINITY;
    expect(codeOf(() => gemm(a, bad))).toBe('E_VALUE');
    expect(codeOf(() => gemm(a, randn('f32', 4, 2, 2), { alpha: Number.NaN }))).toBe('E_VALUE');
    expect(
      codeOf(() => gemmInto(slice(randn('f32', 4, 4, 1), [[0, 3]]) as Matrix, a, randn('f32', 4, 3, 2))),
    ).toBe('E_SHAPE');
  });

  it('detects non-finite values on the WebAssembly path and names the index', () => {
    for (const dtype of ['f32', 'f64'] as const) {
      for (const [which, value, where] of [
        ['a', Number.NaN, '0, 37'],
        ['b', Number.NEGATIVE_INFINITY, '1, 7'],
      ] as const) {
        const x = randn(dtype, 40, 50, 1);
        const y = randn(dtype, 50, 30, 2);
        (which === 'a' ? x : y).data[37] = value;
        expect(() => gemm(x, y, { pool })).toThrow(
          new RegExp(`gemm: ${which} has a non-finite value .* at \\[${where}\\]`),
        );
        expect(() => gemm(x, y, { checkFinite: false })).not.toThrow();
      }
    }
  });

  it('a host that cannot reserve the wasm memory (a virtual-memory limit: V8 throws RangeError) makes createPool E_DEVICE saying so, not a RangeError', () => {
    // what V8 throws under `ulimit -v 4000000` (checked by hand with a real limit: the same E_DEVICE)
    const Real = WebAssembly.Memory;
    WebAssembly.Memory = function () {
      throw new RangeError('WebAssembly.Memory(): could not allocate memory');
    } as unknown as typeof WebAssembly.Memory;
    try {
      for (const threads of [1, 2])
        expect(() => createPool({ threads })).toThrow(
          expect.objectContaining({
            code: 'E_DEVICE',
            message: expect.stringMatching(
              /^E_DEVICE: cannot reserve WebAssembly memory for the linear-algebra kernels .*`ulimit -v`.*use fewer threads$/,
            ),
            cause: expect.any(RangeError),
          }),
        );
    } finally {
      WebAssembly.Memory = Real;
    }
    const pool = createPool({ threads: 1 });
    pool.dispose();
  });

  it('with a memory the host will not grow (a browser cap): smaller chunks, else the TypeScript kernel', () => {
    const capped = createPool({ threads: 2 });
    try {
      const memory = poolExecutor(capped).engine.memory;
      memory.grow = () => {
        throw new RangeError('WebAssembly.Memory.grow(): maximum memory size exceeded');
      };
      const have = memory.buffer.byteLength; // 2 pages: 64 KiB for operands above HEAP_BASE
      // fits in 8 × 8 chunks over the whole k: the same kernel calls per element, so bitwise equal
      const a = randn('f32', 200, 100, 11);
      const b = randn('f32', 150, 100, 12);
      const want = gemm(a, b, { transB: true });
      expect(gemm(a, b, { transB: true, pool: capped }).data).toEqual(want.data);
      // k = 20 000 needs ≥ 1.3 MB even for the smallest chunks: the TypeScript kernel, within the rounding bound
      const a2 = randn('f32', 9, 20000, 13);
      const b2 = randn('f32', 20000, 7, 14);
      const got = gemm(a2, b2, { pool: capped });
      expect(worstErrorRatio(got, naiveGemm(a2, b2, false, false, 1, 0))).toBeLessThanOrEqual(1);
      expect(memory.buffer.byteLength).toBe(have);
    } finally {
      capped.dispose();
    }
  });

  it('rejects a disposed pool', () => {
    const p = createPool({ threads: 2 });
    p.dispose();
    expect(p.disposed).toBe(true);
    expect(codeOf(() => gemm(a, randn('f32', 4, 2, 2), { pool: p }))).toBe('E_VALUE');
  });

  it('reads strided C for beta and leaves it unmodified in gemm()', () => {
    const c = stridedRandn('f64', 3, 2, 9);
    const copy = Array.from(c.data);
    const r = gemm(randn('f64', 3, 4, 1), randn('f64', 4, 2, 2), { c, beta: 1 });
    expect(Array.from(c.data)).toEqual(copy);
    expect(at(r, 0, 0)).not.toBe(0);
  });

  it('rejects non-finite A or B with alpha = 0 at every size, as it does for small products', () => {
    // 200³ multiply-adds take the WebAssembly path, which used to skip its finite check when alpha = 0
    for (const dtype of ['f32', 'f64'] as const) {
      const big = randn(dtype, 200, 200, 3);
      big.data[777] = Number.POSITIVE_INFINITY;
      expect(() => gemm(big, big, { alpha: 0 })).toThrow(/E_VALUE: gemm: a has a non-finite value/);
      expect(() => gemm(randn(dtype, 2, 2, 1), randn(dtype, 2, 2, 1), { alpha: 0 })).not.toThrow();
    }
  });
});

describe('kernel build in Node', () => {
  it('is plain SIMD128, also where the engine accepts relaxed SIMD (npm run test:relaxed): the same bits on every Node version and CPU', () => {
    // relaxed_madd fuses or not as the engine and the CPU choose: Node 22 (which accepts relaxed SIMD) gave other
    // checkpoint bytes than Node 20, and shards on both a checkpoint that was neither's. Under test:relaxed the engine
    // accepts the relaxed build; the build chosen must not follow it
    const relaxed = Uint8Array.from(atob(KERNELS_LOCAL_RELAXED_WASM_BASE64), (c) => c.charCodeAt(0));
    // (Node 20 accepts it only with the flag, Node 22 without)
    if (process.execArgv.includes('--experimental-wasm-relaxed-simd'))
      expect(WebAssembly.validate(relaxed)).toBe(true);
    expect(relaxedSimdAllowed()).toBe(false);
    expect(kernelsModule(false)?.relaxedSimd).toBe(false);
    const pool = createPool({ threads: 2 });
    try {
      expect(pool.relaxedSimd).toBe(false);
    } finally {
      pool.dispose();
    }
  });
});
