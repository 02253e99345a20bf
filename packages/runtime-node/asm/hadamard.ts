// AssemblyScript: the orthogonal Hadamard transform of one f32 vector in place (WebAssembly SIMD), as
// @caldera/linalg's hadamardRowsInPlace computes it: n = K·P with P = 2^p; a fast Walsh–Hadamard transform of each of
// the K blocks of P values, then the K blocks mixed by a K×K ±1 matrix, then the scale 1/√n. Imported by asm/caldera.ts.

// Unnormalised in-place fast Walsh–Hadamard transform of len = 2^p f32 values at v (butterflies with h = 1, 2, 4, …).
function fwht(v: usize, len: i32): void {
  if (len < 4) {
    if (len == 2) {
      const a = load<f32>(v);
      const b = load<f32>(v, 4);
      store<f32>(v, a + b);
      store<f32>(v, a - b, 4);
    }
    return;
  }
  // h = 1 and h = 2 inside each 4-lane vector
  const neg13 = i32x4(0, 0x80000000, 0, 0x80000000);
  const neg23 = i32x4(0, 0, 0x80000000, 0x80000000);
  for (let j: i32 = 0; j < len; j += 4) {
    const p = v + ((<usize>j) << 2);
    const a = v128.load(p);
    const b = f32x4.add(
      v128.shuffle<f32>(a, a, 0, 0, 2, 2),
      v128.xor(v128.shuffle<f32>(a, a, 1, 1, 3, 3), neg13),
    );
    v128.store(
      p,
      f32x4.add(v128.shuffle<f32>(b, b, 0, 1, 0, 1), v128.xor(v128.shuffle<f32>(b, b, 2, 3, 2, 3), neg23)),
    );
  }
  for (let h: i32 = 4; h < len; h <<= 1) {
    for (let i: i32 = 0; i < len; i += h << 1) {
      for (let j: i32 = i; j < i + h; j += 4) {
        const p = v + ((<usize>j) << 2);
        const q = p + ((<usize>h) << 2);
        const a = v128.load(p);
        const b = v128.load(q);
        v128.store(p, f32x4.add(a, b));
        v128.store(q, f32x4.sub(a, b));
      }
    }
  }
}

/**
 * v[0..n) ← M·v / √n in place, n = K·P: each block of P values transformed by fwht, then block a2 of the result is
 * Σ_a mix[a2·K + a]·block a (mix: the K×K ±1 matrix, f32; K = 1 skips the mix). tmp: n f32 of scratch.
 */
export function hadamardInPlace(v: usize, n: i32, K: i32, mix: usize, tmp: usize): void {
  const P = n / K;
  for (let a: i32 = 0; a < K; a++) fwht(v + ((<usize>(a * P)) << 2), P);
  const scale = f32x4.splat(<f32>(1 / Math.sqrt(<f64>n)));
  if (K == 1) {
    let j: i32 = 0;
    for (; j + 4 <= n; j += 4) {
      const p = v + ((<usize>j) << 2);
      v128.store(p, f32x4.mul(v128.load(p), scale));
    }
    for (; j < n; j++)
      store<f32>(v + ((<usize>j) << 2), load<f32>(v + ((<usize>j) << 2)) * f32x4.extract_lane(scale, 0));
    return;
  }
  const P4 = P & ~3;
  for (let a2: i32 = 0; a2 < K; a2++) {
    const row = mix + ((<usize>(a2 * K)) << 2);
    const out = tmp + ((<usize>(a2 * P)) << 2);
    for (let b: i32 = 0; b < P4; b += 4) {
      let acc = f32x4.splat(0);
      for (let a: i32 = 0; a < K; a++)
        acc = f32x4.add(
          acc,
          f32x4.mul(
            f32x4.splat(load<f32>(row + ((<usize>a) << 2))),
            v128.load(v + ((<usize>(a * P + b)) << 2)),
          ),
        );
      v128.store(out + ((<usize>b) << 2), f32x4.mul(acc, scale));
    }
    for (let b: i32 = P4; b < P; b++) {
      let acc: f32 = 0;
      for (let a: i32 = 0; a < K; a++)
        acc += load<f32>(row + ((<usize>a) << 2)) * load<f32>(v + ((<usize>(a * P + b)) << 2));
      store<f32>(out + ((<usize>b) << 2), acc * f32x4.extract_lane(scale, 0));
    }
  }
  memory.copy(v, tmp, (<usize>n) << 2);
}
