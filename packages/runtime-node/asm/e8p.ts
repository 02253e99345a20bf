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
// (16 entries per pattern, or 32 with the ±shift variants when withShift).
function fillHalf(p: usize, np: i32, x: usize, lut: usize, withShift: bool, shift: f32): void {
  const x0 = load<f32>(x);
  const x1 = load<f32>(x, 4);
  const x2 = load<f32>(x, 8);
  const x3 = load<f32>(x, 12);
  const stride: usize = withShift ? 128 : 64;
  for (let k: i32 = 0; k < np; k++) {
    const pk = p + ((<usize>k) << 4);
    const v0 = load<f32>(pk) * x0;
    const v1 = load<f32>(pk, 4) * x1;
    const v2 = load<f32>(pk, 8) * x2;
    const v3 = load<f32>(pk, 12) * x3;
    const a0 = v0 + v1;
    const a1 = -v0 + v1;
    const a2 = v0 - v1;
    const a3 = -v0 - v1;
    const b0 = v2 + v3;
    const b1 = -v2 + v3;
    const b2 = v2 - v3;
    const b3 = -v2 - v3;
    const o = lut + <usize>k * stride;
    const s: f32 = withShift ? shift : 0;
    store<f32>(o, a0 + b0 + s);
    store<f32>(o, a1 + b0 + s, 4);
    store<f32>(o, a2 + b0 + s, 8);
    store<f32>(o, a3 + b0 + s, 12);
    store<f32>(o, a0 + b1 + s, 16);
    store<f32>(o, a1 + b1 + s, 20);
    store<f32>(o, a2 + b1 + s, 24);
    store<f32>(o, a3 + b1 + s, 28);
    store<f32>(o, a0 + b2 + s, 32);
    store<f32>(o, a1 + b2 + s, 36);
    store<f32>(o, a2 + b2 + s, 40);
    store<f32>(o, a3 + b2 + s, 44);
    store<f32>(o, a0 + b3 + s, 48);
    store<f32>(o, a1 + b3 + s, 52);
    store<f32>(o, a2 + b3 + s, 56);
    store<f32>(o, a3 + b3 + s, 60);
    if (withShift) {
      const t = shift + shift;
      for (let j: usize = 0; j < 16; j++) store<f32>(o + 64 + (j << 2), load<f32>(o + (j << 2)) - t);
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
