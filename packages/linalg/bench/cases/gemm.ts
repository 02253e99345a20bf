/** gemm (f32, f64) and syrk cases, with numpy and tfjs-backend-wasm matmul as references. */
import { Rng, slice, tensor, type Matrix } from '@caldera/core';
import { gemm, gemmInto, syrk } from '../../src/index.js';
import { bestSeconds, numpySeconds, PY_BEST, ratios, sig, type BenchCase } from '../harness.js';
import { tfjsWasm } from './tfjs.js';

function randomMatrix(dtype: 'f32' | 'f64', m: number, n: number, seed: number): Matrix {
  const t = tensor(dtype, [m, n]) as Matrix;
  new Rng(seed).fillNormal(t.data);
  return t;
}

function gemmCase(dtype: 'f32' | 'f64', n: number, quick: boolean): BenchCase {
  return {
    name: `gemm_${dtype}_n${n}`,
    quick,
    async run(ctx) {
      const a = randomMatrix(dtype, n, n, 1);
      const b = randomMatrix(dtype, n, n, 2);
      const flops = 2 * n ** 3;
      const reps = ctx.quick || n >= 4096 ? 2 : 3;
      const seconds = await bestSeconds(() => gemm(a, b, { pool: ctx.pool }), reps);
      const npDtype = dtype === 'f32' ? 'np.float32' : 'np.float64';
      const np = numpySeconds(
        `${PY_BEST}a = np.random.default_rng(1).standard_normal((${n}, ${n})).astype(${npDtype})\n` +
          `b = np.random.default_rng(2).standard_normal((${n}, ${n})).astype(${npDtype})\n` +
          `print(best(lambda: a @ b, ${reps}))`,
        ctx.threads,
      );
      const refs: Record<string, number | null> = { numpy: np === null ? null : sig(flops / np / 1e9) };
      let tfThreads: number | null = null;
      let single: number | null = null;
      if (dtype === 'f32') {
        // ours on one thread, for a like-for-like comparison with tfjs-wasm (single-threaded in Node)
        single = sig(flops / (await bestSeconds(() => gemm(a, b), reps)) / 1e9);
        const ref = await tfjsWasm(ctx.threads);
        if (ref) {
          const { tf } = ref;
          tfThreads = ref.threads;
          const ta = tf.tensor2d(a.data as Float32Array, [n, n]);
          const tb = tf.tensor2d(b.data as Float32Array, [n, n]);
          const s = await bestSeconds(async () => {
            const r = tf.matMul(ta, tb);
            await r.data();
            r.dispose();
          }, reps);
          ta.dispose();
          tb.dispose();
          refs['tfjs-wasm'] = sig(flops / s / 1e9);
        } else refs['tfjs-wasm'] = null;
      }
      const value = flops / seconds / 1e9;
      return {
        value: sig(value)!,
        unit: 'GFLOP/s',
        refs,
        ratios: ratios(value, refs, true),
        seconds: sig(seconds),
        threads: ctx.pool.threads,
        ...(tfThreads === null ? {} : { tfjsThreads: tfThreads }),
        ...(single === null ? {} : { value1Thread: single }),
      };
    },
  };
}

function syrkCase(tokens: number, n: number): BenchCase {
  return {
    name: `syrk_f32acc64_m${tokens}_n${n}`,
    async run(ctx) {
      const x = randomMatrix('f32', tokens, n, 3);
      const flops = tokens * n * n; // upper triangle: half of 2·m·n²
      const seconds = await bestSeconds(() => syrk(x, { accumulate: 'f64', pool: ctx.pool }), 2);
      const np = numpySeconds(
        `${PY_BEST}x = np.random.default_rng(3).standard_normal((${tokens}, ${n})).astype(np.float32)\n` +
          `print(best(lambda: x.T.astype(np.float64) @ x.astype(np.float64), 2))`,
        ctx.threads,
      );
      const refs = { numpy: np === null ? null : sig(flops / np / 1e9) };
      const value = flops / seconds / 1e9;
      return {
        value: sig(value)!,
        unit: 'GFLOP/s',
        refs,
        ratios: ratios(value, refs, true),
        seconds: sig(seconds),
      };
    },
  };
}

/**
 * The trailing update of a blocked Cholesky, `C −= L·Lᵀ` on the lower triangle of an (n − k)² block of an
 * n × n f64 matrix, in place; numpy reference: the same product on the full block (`c -= l @ l.T`).
 */
function updateCase(n: number, k: number): BenchCase {
  return {
    name: `gemm_update_f64_lower_n${n}_k${k}`,
    async run(ctx) {
      const big = randomMatrix('f64', n, n, 4);
      const m = n - k;
      const c = slice(big, [
        [k, n],
        [k, n],
      ]) as Matrix;
      const l = slice(big, [
        [k, n],
        [0, k],
      ]) as Matrix;
      const flops = m * (m + 1) * k; // lower triangle: m(m+1)/2 dot products of length k
      const opts = { transB: true, alpha: -1e-9, beta: 1, triangle: 'lower' as const, pool: ctx.pool };
      const seconds = await bestSeconds(() => gemmInto(c, l, l, opts), 3);
      const np = numpySeconds(
        `${PY_BEST}a = np.random.default_rng(4).standard_normal((${n}, ${n}))\n` +
          `c = a[${k}:, ${k}:]; l = a[${k}:, :${k}]\n` +
          `def f():\n    global c\n    c -= 1e-9 * (l @ l.T)\n` +
          `print(best(f, 3))`,
        ctx.threads,
      );
      // seconds on both sides (numpy updates the full block, we only the lower triangle)
      const refs = { numpy: sig(np) };
      return {
        value: sig(seconds)!,
        unit: 's',
        refs,
        ratios: ratios(seconds, refs, false),
        gflops: sig(flops / seconds / 1e9),
      };
    },
  };
}

/** The kernel cases. */
export const gemmCases: BenchCase[] = [
  gemmCase('f32', 1024, false),
  gemmCase('f32', 2048, true),
  gemmCase('f32', 4096, false),
  gemmCase('f64', 1024, true),
  gemmCase('f64', 2048, false),
  syrkCase(4096, 2048),
  updateCase(4096, 128),
];
