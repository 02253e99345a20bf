import { CalderaError, tensor, toF64, type Matrix } from '@caldera/core';
import { afterAll, describe, expect, it } from 'vitest';
import { defaultExecutor } from './pool/default.js';
import { createPool } from './pool/pool.js';
import { panelGemmInto } from './wasm/panel-gemm.js';
import { syrk, syrkInto } from './syrk.js';
import { mirrorUpper } from './symmetric.js';
import { at, naiveGemm, randn, stridedRandn, tview, worstErrorRatio } from './test-util.js';

const pool = createPool({ threads: 2 });
afterAll(() => pool.dispose());

describe('syrk', () => {
  it('equals a brute-force XᵀX within the k·u bound and is exactly symmetric (odd sizes, both dtypes)', () => {
    let seed = 1;
    for (const dtype of ['f32', 'f64'] as const) {
      for (const [m, n] of [
        [1, 1],
        [3, 70],
        [129, 33],
        [260, 45],
      ] as const) {
        for (const x of [randn(dtype, m, n, seed++), stridedRandn(dtype, m, n, seed++)]) {
          const want = naiveGemm(x, x, true, false, 1, 0);
          const h = syrk(x, { pool });
          expect(h.dtype).toBe(dtype);
          expect(worstErrorRatio(h, want)).toBeLessThanOrEqual(1);
          for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) expect(at(h, i, j)).toBe(at(h, j, i));
          expect(syrk(x).data).toEqual(h.data); // same arithmetic with or without workers
        }
      }
    }
  });

  it('accumulates f32 activations in f64 with the f64 rounding bound', () => {
    const x = randn('f32', 300, 37, 5);
    const h = syrk(x, { accumulate: 'f64' });
    expect(h.dtype).toBe('f64');
    // products of f32 numbers are exact in f64, so the f64 bound applies to the f32 data
    expect(worstErrorRatio(h, naiveGemm(x, x, true, false, 1, 0))).toBeLessThanOrEqual(1);
    // an accumulator that is neither: named (it was refused as "c has dtype 'f16'", a c never given)
    expect(() => syrk(x, { accumulate: 'f16' as never })).toThrow(
      "E_VALUE: syrk: accumulate must be 'f32' or 'f64', got 'f16'",
    );
    // an f32 accumulator of f64 data: said in syrk's terms (it named syrkInto's c)
    expect(() => syrk(toF64(x), { accumulate: 'f32' })).toThrow(
      "E_DTYPE: syrk: accumulate 'f32' needs an f32 x, got 'f64' (accumulate in 'f64', or cast x to f32 first)",
    );
  });

  it("triangle 'upper' writes the upper triangle bit for bit as 'full' and leaves the lower one as it was", () => {
    for (const [rows, n, reference] of [
      [128, 96, false], // the WebAssembly kernels
      [5, 12, false], // under the kernels' size threshold: the TypeScript path
      [40, 24, true],
    ] as const) {
      const x = randn('f32', rows, n, rows + n);
      const start = randn('f64', n, n, 3);
      const full = tensor('f64', [n, n], Float64Array.from(start.data as Float64Array)) as Matrix;
      const upper = tensor('f64', [n, n], Float64Array.from(start.data as Float64Array)) as Matrix;
      syrkInto(full, x, { beta: 0.5, pool, reference });
      syrkInto(upper, x, { beta: 0.5, pool, reference, triangle: 'upper' });
      for (let i = 0; i < n; i++)
        for (let j = 0; j < n; j++) expect(at(upper, i, j)).toBe(j >= i ? at(full, i, j) : at(start, i, j));
    }
    expect(() =>
      syrkInto(tensor('f64', [3, 3]), randn('f32', 2, 3, 1), { triangle: 'lower' as never }),
    ).toThrow("E_VALUE: syrkInto: triangle must be 'full' or 'upper', got 'lower'");
    expect(() => syrk(randn('f32', 2, 3, 1), { triangle: 'upper' } as never)).toThrow(
      "E_VALUE: syrk: triangle 'upper' is for syrkInto; syrk returns the whole XᵀX",
    );
  });

  it('mirrorUpper copies the upper triangle onto the lower one, contiguous or strided, across the 64-wide tiles', () => {
    for (const n of [1, 63, 64, 65, 130]) {
      for (const strided of [false, true]) {
        // strided: the transpose view of a larger buffer (strides [1, n + 3], offset 2)
        const ld = n + 3;
        const buf = Float64Array.from({ length: 2 + ld * n }, (_, i) => i + 0.5);
        const before = Float64Array.from(buf);
        const c: Matrix = strided
          ? { dtype: 'f64', shape: [n, n], strides: [1, ld], offset: 2, data: buf }
          : (tensor('f64', [n, n], buf.subarray(0, n * n)) as Matrix);
        const old = Float64Array.from(buf);
        mirrorUpper(c);
        for (let i = 0; i < n; i++)
          for (let j = 0; j < n; j++)
            expect(at(c, i, j)).toBe(
              j >= i ? old[c.offset + i * c.strides[0]! + j * c.strides[1]!] : at(c, j, i),
            );
        // nothing outside the view is touched
        if (strided) for (let i = 0; i < 2; i++) expect(buf[i]).toBe(before[i]);
      }
    }
    expect(() => mirrorUpper(tensor('f64', [2, 3]) as Matrix)).toThrow(
      /^E_SHAPE: mirrorUpper: c must be square/,
    );
  });

  it('syrkInto adds batches: H := XᵀX + YᵀY equals the Gram matrix of the stacked rows', () => {
    const x = randn('f32', 150, 40, 8);
    const y = randn('f32', 90, 40, 9);
    const h = tensor('f64', [40, 40]) as Matrix;
    syrkInto(h, x, { pool });
    syrkInto(h, y, { beta: 1, pool });
    const stacked = tensor('f32', [240, 40]);
    stacked.data.set(x.data as Float32Array);
    stacked.data.set(y.data as Float32Array, 150 * 40);
    expect(worstErrorRatio(h, naiveGemm(stacked, stacked, true, false, 1, 0))).toBeLessThanOrEqual(1);
  });

  it('writes a strided output and handles empty inputs', () => {
    const x = randn('f64', 40, 30, 3);
    const c = stridedRandn('f64', 30, 30, 4);
    syrkInto(c, x, { alpha: 2 });
    expect(worstErrorRatio(c, naiveGemm(tview(tview(x)), x, true, false, 2, 0))).toBeLessThanOrEqual(1);
    expect(syrk(tensor('f32', [0, 3])).data).toEqual(new Float32Array(9));
    expect(syrk(tensor('f32', [4, 0])).shape).toEqual([0, 0]);
  });

  it('computes only one triangle in chunks when scratch memory is limited', () => {
    for (const dtype of ['f32', 'f64'] as const) {
      for (const triangle of ['upper', 'lower'] as const) {
        const x = randn(dtype, 50, 61, 12);
        const full = naiveGemm(x, x, true, false, 1, 0);
        const c = tensor(dtype, [61, 61]) as Matrix;
        c.data.fill(-5);
        const exec = defaultExecutor()!;
        const args = {
          c,
          a: x,
          b: x,
          transA: true,
          transB: false,
          alpha: 1,
          beta: 0,
          triangle,
          maxBytes: 9000,
        };
        panelGemmInto(exec, args, 't');
        const inTri = (i: number, j: number): boolean => (triangle === 'upper' ? j >= i : j <= i);
        const filled = c.data.map((v, q) => (inTri(Math.floor(q / 61), q % 61) ? v : full.value[q]!));
        expect(worstErrorRatio({ ...c, data: filled } as Matrix, full)).toBeLessThanOrEqual(1);
        for (let i = 0; i < 61; i++)
          for (let j = 0; j < 61; j++) if (!inTri(i, j)) expect(at(c, i, j)).toBe(-5);
      }
    }
  });

  it('rejects bad shapes, dtypes and non-finite input', () => {
    const code = (f: () => unknown): string | undefined => {
      try {
        f();
      } catch (e) {
        return (e as CalderaError).code;
      }
      return undefined;
    };
    expect(code(() => syrkInto(tensor('f64', [3, 3]), randn('f64', 5, 4, 1)))).toBe('E_SHAPE');
    expect(code(() => syrkInto(tensor('f32', [4, 4]), randn('f64', 5, 4, 1)))).toBe('E_DTYPE');
    const bad = randn('f32', 5, 4, 1);
    bad.data[7] = Number.NaN;
    expect(code(() => syrk(bad))).toBe('E_VALUE');
    const big = randn('f64', 64, 48, 2);
    big.data[100] = Number.POSITIVE_INFINITY;
    expect(() => syrk(big, { pool })).toThrow(/syrk: x has a non-finite value \(Infinity\) at \[2, 4\]/);
  });

  it('with beta ≠ 0 reads only the upper triangle of c, of a transposed c too, on the reference and wasm paths', () => {
    // [x, path]: 5 × 6 is under the wasm threshold (m·n² < 8192), so the reference kernel; 40 × 30 the wasm one
    const cases: [Matrix, string][] = [
      [randn('f64', 5, 6, 21), 'reference'],
      [randn('f32', 5, 6, 22), 'reference, f32 x into f64 c'],
      [randn('f32', 40, 30, 23), 'wasm, f32 x into f64 c'],
      [randn('f64', 40, 30, 24), 'wasm'],
    ];
    for (const [x, path] of cases) {
      const n = x.shape[1]!;
      for (const transposed of [false, true]) {
        // c's upper triangle (in its own indices) holds the matrix; its lower one garbage a result must not show
        const stored = randn('f64', n, n, 25);
        const c = transposed ? tview(stored) : stored;
        for (let i = 0; i < n; i++)
          for (let j = 0; j < i; j++) c.data[i * c.strides[0]! + j * c.strides[1]!] = 1e6 + i;
        const sym = tensor('f64', [n, n]) as Matrix;
        for (let i = 0; i < n; i++)
          for (let j = 0; j < n; j++) sym.data[i * n + j] = at(c, Math.min(i, j), Math.max(i, j));
        syrkInto(c, x, { alpha: 2, beta: 0.5 });
        // the brute-force 2·XᵀX + 0.5·sym(c) within the k·u bound (f64 accumulation: x's f32 products are exact)
        expect(
          worstErrorRatio(c, naiveGemm(x, x, true, false, 2, 0.5, sym)),
          `${path}, transposed ${transposed}`,
        ).toBeLessThanOrEqual(1);
        for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) expect(at(c, i, j)).toBe(at(c, j, i));
      }
    }
  });

  it('with m = 0 or alpha = 0, c := beta·c from its upper triangle, mirrored, like every other path', () => {
    // lower triangle holds stale values; the result must be symmetric, as syrkInto documents
    for (const x of [tensor('f64', [0, 3]), randn('f64', 4, 3, 5)]) {
      const c = tensor('f64', [3, 3], [1, 2, 3, 9, 4, 5, 9, 9, 6]);
      syrkInto(c, x, { beta: 2, alpha: x.shape[0] === 0 ? 1 : 0 });
      expect(Array.from(c.data)).toEqual([2, 4, 6, 4, 8, 10, 6, 10, 12]);
    }
    const big = randn('f32', 200, 100, 4);
    big.data[1234] = Number.NaN;
    expect(() => syrk(big, { alpha: 0 })).toThrow(/E_VALUE: syrk: x has a non-finite value/);
  });
});
