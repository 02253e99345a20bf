// AssemblyScript source of the E8P table-driven inner loop (compiled by scripts/build-wasm.mjs).
// y[i] += l1a[e0 & 0xffff] + l2a[e0 >>> 16] + l1b[e1 & 0xffff] + l2b[e1 >>> 16], e = comb[code]
export function pair(
  c0: usize,
  c1: usize,
  comb: usize,
  l1: usize,
  l2: usize,
  n1: i32,
  n2: i32,
  mp: i32,
  y: usize,
): void {
  const l1b = l1 + ((<usize>n1) << 2);
  const l2b = l2 + ((<usize>n2) << 2);
  for (let i: i32 = 0; i < mp; i++) {
    const o = <usize>i;
    const e0 = load<u32>(comb + ((<usize>load<u16>(c0 + (o << 1))) << 2));
    const e1 = load<u32>(comb + ((<usize>load<u16>(c1 + (o << 1))) << 2));
    const s =
      load<f32>(l1 + ((<usize>(e0 & 0xffff)) << 2)) +
      load<f32>(l2 + ((<usize>(e0 >>> 16)) << 2)) +
      load<f32>(l1b + ((<usize>(e1 & 0xffff)) << 2)) +
      load<f32>(l2b + ((<usize>(e1 >>> 16)) << 2));
    store<f32>(y + (o << 2), load<f32>(y + (o << 2)) + s);
  }
}

// Fill the signed half dot products of `np` magnitude patterns (4 f32 each at p) with x[0..4) at lut
// (16 entries per pattern, or 32 with the ±shift variants when withShift). Entry 4q + i of a pattern is
// (±v0 ± v1)[i] + (±v2 ± v3)[q] with v = pattern ⊙ x, the sign choices i, q ∈ 0..3 as bits (first, second negated).
function fillHalf(p: usize, np: i32, x: usize, lut: usize, withShift: bool, shift: f32): void {
  const xv = v128.load(x);
  const oddLanes = i32x4(0, 0x80000000, 0, 0x80000000); // negate lanes 1, 3: −v0 where bit 0 is set
  const highLanes = i32x4(0, 0, 0x80000000, 0x80000000); // negate lanes 2, 3: −v1 where bit 1 is set
  const s = f32x4.splat(withShift ? shift : 0);
  const stride: usize = withShift ? 128 : 64;
  for (let k: i32 = 0; k < np; k++) {
    const v = f32x4.mul(v128.load(p + ((<usize>k) << 4)), xv);
    const a = f32x4.add(
      v128.xor(f32x4.splat(f32x4.extract_lane(v, 0)), oddLanes),
      v128.xor(f32x4.splat(f32x4.extract_lane(v, 1)), highLanes),
    );
    const b = f32x4.add(
      v128.xor(f32x4.splat(f32x4.extract_lane(v, 2)), oddLanes),
      v128.xor(f32x4.splat(f32x4.extract_lane(v, 3)), highLanes),
    );
    const o = lut + <usize>k * stride;
    const r0 = f32x4.add(a, f32x4.splat(f32x4.extract_lane(b, 0)));
    const r1 = f32x4.add(a, f32x4.splat(f32x4.extract_lane(b, 1)));
    const r2 = f32x4.add(a, f32x4.splat(f32x4.extract_lane(b, 2)));
    const r3 = f32x4.add(a, f32x4.splat(f32x4.extract_lane(b, 3)));
    v128.store(o, f32x4.add(r0, s));
    v128.store(o, f32x4.add(r1, s), 16);
    v128.store(o, f32x4.add(r2, s), 32);
    v128.store(o, f32x4.add(r3, s), 48);
    if (withShift) {
      // parity 1: the shift enters with the opposite sign
      v128.store(o, f32x4.sub(r0, s), 64);
      v128.store(o, f32x4.sub(r1, s), 80);
      v128.store(o, f32x4.sub(r2, s), 96);
      v128.store(o, f32x4.sub(r3, s), 112);
    }
  }
}

// One input row: y[0..mp) = Σ over group pairs (tables built here); `groups` even. p1/p2: patterns (np1/np2 of
// them), n1 = np1·32, n2 = np2·16 table entries; l1/l2: scratch for two groups' tables.
export function row(
  codes: usize,
  comb: usize,
  p1: usize,
  np1: i32,
  p2: usize,
  np2: i32,
  l1: usize,
  l2: usize,
  x: usize,
  groups: i32,
  mp: i32,
  y: usize,
): void {
  const n1 = np1 * 32;
  const n2 = np2 * 16;
  memory.fill(y, 0, (<usize>mp) << 2);
  for (let g: i32 = 0; g + 1 < groups; g += 2) {
    for (let h: i32 = 0; h < 2; h++) {
      const xo = x + ((<usize>(g + h)) << 5);
      const sh: f32 =
        0.25 *
        (load<f32>(xo) +
          load<f32>(xo, 4) +
          load<f32>(xo, 8) +
          load<f32>(xo, 12) +
          load<f32>(xo, 16) +
          load<f32>(xo, 20) +
          load<f32>(xo, 24) +
          load<f32>(xo, 28));
      fillHalf(p1, np1, xo, l1 + ((<usize>(h * n1)) << 2), true, sh);
      fillHalf(p2, np2, xo + 16, l2 + ((<usize>(h * n2)) << 2), false, 0);
    }
    pair(
      codes + ((<usize>g * <usize>mp) << 1),
      codes + ((<usize>(g + 1) * <usize>mp) << 1),
      comb,
      l1,
      l2,
      n1,
      n2,
      mp,
      y,
    );
  }
}
