// AssemblyScript: causal grouped-query attention of a few query rows over a KV cache (WebAssembly SIMD). Compiled by
// scripts/build-wasm.mjs; src/kernels/attention-kernel.ts lays out the memory.

// Σ_i a[i]·b[i] over n f32 values.
function dot(a: usize, b: usize, n: i32): f32 {
  let acc = f32x4.splat(0);
  let i: i32 = 0;
  for (; i + 4 <= n; i += 4) {
    const o = (<usize>i) << 2;
    acc = f32x4.add(acc, f32x4.mul(v128.load(a + o), v128.load(b + o)));
  }
  let s =
    f32x4.extract_lane(acc, 0) +
    f32x4.extract_lane(acc, 1) +
    f32x4.extract_lane(acc, 2) +
    f32x4.extract_lane(acc, 3);
  for (; i < n; i++) s += load<f32>(a + ((<usize>i) << 2)) * load<f32>(b + ((<usize>i) << 2));
  return s;
}

// y[0..n) += p·x[0..n).
function axpy(y: usize, x: usize, p: f32, n: i32): void {
  const pv = f32x4.splat(p);
  let i: i32 = 0;
  for (; i + 4 <= n; i += 4) {
    const o = (<usize>i) << 2;
    v128.store(y + o, f32x4.add(v128.load(y + o), f32x4.mul(pv, v128.load(x + o))));
  }
  for (; i < n; i++)
    store<f32>(
      y + ((<usize>i) << 2),
      load<f32>(y + ((<usize>i) << 2)) + p * load<f32>(x + ((<usize>i) << 2)),
    );
}

// Positions whose weights and weighted values are summed apart before they join the totals (see attend): up to BLOCK
// positions the sums are bit for bit one running sum's.
const BLOCK: i32 = 256;

/**
 * out[r, h, :] = Σ_{t ≤ pos0 + r} softmax_t(scale·⟨q[r, h], K[t, h / group]⟩)·V[t, h / group] for `rows` query rows
 * (q and out `[rows, H·hd]`) at positions pos0 + r; K and V `[positions, KV·hd]`; scores: pos0 + rows + hd f32 of
 * scratch.
 */
export function attend(
  q: usize,
  K: usize,
  V: usize,
  out: usize,
  scores: usize,
  rows: i32,
  pos0: i32,
  H: i32,
  KV: i32,
  hd: i32,
  scale: f32,
): void {
  const kw = KV * hd;
  const group = H / KV;
  memory.fill(out, 0, (<usize>(rows * H * hd)) << 2);
  for (let r: i32 = 0; r < rows; r++) {
    const len = pos0 + r + 1;
    for (let h: i32 = 0; h < H; h++) {
      const kvo = (h / group) * hd;
      const qo = q + ((<usize>((r * H + h) * hd)) << 2);
      let mx: f32 = -Infinity;
      for (let t: i32 = 0; t < len; t++) {
        const s = dot(qo, K + ((<usize>(t * kw + kvo)) << 2), hd) * scale;
        store<f32>(scores + ((<usize>t) << 2), s);
        if (s > mx) mx = s;
      }
      // the normaliser summed block by block too: one f32 running sum of 131 040 equal terms was 1.1e-3 off
      let sum: f32 = 0;
      for (let t0: i32 = 0; t0 < len; t0 += BLOCK) {
        const t1 = min(t0 + BLOCK, len);
        let block: f32 = 0;
        for (let t: i32 = t0; t < t1; t++) {
          const e = Mathf.exp(load<f32>(scores + ((<usize>t) << 2)) - mx);
          store<f32>(scores + ((<usize>t) << 2), e);
          block += e;
        }
        sum += block;
      }
      const inv: f32 = 1 / sum;
      const oo = out + ((<usize>((r * H + h) * hd)) << 2);
      // Σ_t p_t·V_t block by block into `part` (hd f32 of scratch after the scores), each block then added to the row:
      // one f32 running sum over 131 040 positions drifted by ~1e-3 where V has a mean; up to BLOCK positions the
      // result is bit for bit the plain running sum's
      const part = scores + ((<usize>len) << 2);
      for (let t0: i32 = 0; t0 < len; t0 += BLOCK) {
        const t1 = min(t0 + BLOCK, len);
        memory.fill(part, 0, (<usize>hd) << 2);
        for (let t: i32 = t0; t < t1; t++)
          axpy(part, V + ((<usize>(t * kw + kvo)) << 2), load<f32>(scores + ((<usize>t) << 2)) * inv, hd);
        axpy(oo, part, 1, hd);
      }
    }
  }
}

/** End of this module's static data (Mathf.exp's tables); the host's buffers start at 65 536 above it (checked). */
export function heapBase(): usize {
  return __heap_base;
}
