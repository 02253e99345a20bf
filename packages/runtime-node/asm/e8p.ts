// AssemblyScript source of the E8P table-driven inner loop (compiled by scripts/build-wasm.mjs).
// y[i] += l1a[e0 & 0xffff] + l2a[e0 >>> 16] + l1b[e1 & 0xffff] + l2b[e1 >>> 16], e = comb[code]
export function pair(c0: usize, c1: usize, comb: usize, l1: usize, l2: usize, n1: i32, n2: i32, mp: i32, y: usize): void {
  const l1b = l1 + (<usize>n1 << 2);
  const l2b = l2 + (<usize>n2 << 2);
  for (let i: i32 = 0; i < mp; i++) {
    const o = <usize>i;
    const e0 = load<u32>(comb + (<usize>load<u16>(c0 + (o << 1)) << 2));
    const e1 = load<u32>(comb + (<usize>load<u16>(c1 + (o << 1)) << 2));
    const s =
      load<f32>(l1 + (<usize>(e0 & 0xffff) << 2)) +
      load<f32>(l2 + (<usize>(e0 >>> 16) << 2)) +
      load<f32>(l1b + (<usize>(e1 & 0xffff) << 2)) +
      load<f32>(l2b + (<usize>(e1 >>> 16) << 2));
    store<f32>(y + (o << 2), load<f32>(y + (o << 2)) + s);
  }
}
