/**
 * Floors of E8P decoding in WebAssembly SIMD128 on one core (JSON Lines), next to the shipped kernel: ns per 16-bit
 * code of one matrix–vector product at the benchmark model's layer shapes, for
 * - `e8p_ns_per_code_shipped`: asm/e8p.ts's e8pRow (two map reads + two table reads per code);
 * - `e8p_ns_per_code_offsets`: each code's table offsets precomputed (u32 per code: only the two table reads);
 * - `e8p_ns_per_code_int8`: the int8 route of native IQ2 kernels (int8 codewords from a 512 KiB grid, int8
 *   activations, SIMD128 widening multiplies), before any cost of quantizing the activations.
 * Outputs are checked: the offsets variant equals e8pRow exactly, the int8 sums equal exact integer dot products.
 * asm-bench/e8p-floors.ts is compiled here with the AssemblyScript compiler (a development dependency).
 */
import type { BenchLine, BenchRefs } from '../../../scripts/bench-line.js';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { e8pGrid } from '@caldera/quant';
import { byteOffsets, E8P_FIXED_END } from '../src/kernels/caldera-kernel.js';
import { e8pLutTables } from '../src/kernels/e8p-lut.js';
import { KERNEL_BASE } from '../src/kernels/wasm-module.js';

interface FloorExports {
  e8pRow(codes: number, p1: number, p2: number, x: number, groups: number, mp: number, y: number): void;
  e8pRowOffsets(ent: number, p1: number, p2: number, x: number, groups: number, mp: number, y: number): void;
  e8pRowInt8(codes: number, mp: number, groups: number, xq: number, grid8: number, y: number): void;
}

async function compile(): Promise<WebAssembly.Module> {
  const { default: asc } = await import('assemblyscript/asc');
  const dir = mkdtempSync(join(tmpdir(), 'caldera-floors-'));
  try {
    const out = join(dir, 'floors.wasm');
    const src = fileURLToPath(new URL('../asm-bench/e8p-floors.ts', import.meta.url));
    const flags = ['-O3', '--noAssert', '--runtime', 'stub', '--importMemory', '--maximumMemory', '65536'];
    const { error, stderr } = await asc.main([src, '--outFile', out, ...flags, '--enable', 'simd']);
    if (error) throw new Error(`floors: ${stderr.toString()}`);
    return new WebAssembly.Module(readFileSync(out));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Best of 8 × 100 calls, in milliseconds per call (after 50 warm-up calls). */
function best(f: () => void): number {
  for (let r = 0; r < 50; r++) f();
  let t = Infinity;
  for (let rep = 0; rep < 8; rep++) {
    const t0 = performance.now();
    for (let r = 0; r < 100; r++) f();
    t = Math.min(t, (performance.now() - t0) / 100);
  }
  return t;
}

export async function floors(
  emit: (c: string, v: number, unit: string, refs: BenchRefs, info: BenchLine['info']) => void,
): Promise<void> {
  const mod = await compile();
  const { ta, ts, p1, p2 } = e8pLutTables();
  const grid = e8pGrid();
  const grid8 = Int8Array.from(grid, (v) => Math.round(4 * v)); // 4·w: odd integers, |4·w| ≤ 15
  const totals = { shipped: 0, offsets: 0, int8: 0, codes: 0 };
  for (const [mp, n] of [
    [2816, 1024],
    [1024, 2816],
    [1024, 1024],
  ] as const) {
    const groups = n / 8;
    const count = mp * groups;
    let top = E8P_FIXED_END; // the maps and the two groups' tables of asm/e8p.ts
    const alloc = (bytes: number) => {
      const at = top;
      top += Math.ceil(bytes / 16) * 16;
      return at;
    };
    const at = {
      p1: alloc(512),
      p2: alloc(512),
      codesT: alloc(count * 2),
      codes: alloc(count * 2),
      ent: alloc(count * 4),
      grid8: alloc(grid8.length),
      x: alloc(n * 4),
      xq: alloc(n),
      y: alloc(mp * 4),
      y2: alloc(mp * 4),
      yi: alloc(mp * 4),
    };
    const pages = Math.ceil(top / 65536);
    const memory = new WebAssembly.Memory({ initial: pages, maximum: pages });
    const ex = new WebAssembly.Instance(mod, { env: { memory, abort: () => undefined } })
      .exports as unknown as FloorExports;
    const buf = memory.buffer;
    new Uint32Array(buf, KERNEL_BASE, 256).set(ta.map(byteOffsets));
    new Uint32Array(buf, KERNEL_BASE + 1024, 256).set(ts.map(byteOffsets));
    new Float32Array(buf, at.p1, 128).set(p1);
    new Float32Array(buf, at.p2, 128).set(p2);
    new Int8Array(buf, at.grid8, grid8.length).set(grid8);
    const codes = new Uint16Array(buf, at.codes, count); // row-major [mp, groups]
    const codesT = new Uint16Array(buf, at.codesT, count); // group-major
    const ent = new Uint32Array(buf, at.ent, count);
    let s = 12345;
    for (let i = 0; i < mp; i++)
      for (let g = 0; g < groups; g++) {
        s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
        const c = s >>> 16;
        codes[i * groups + g] = c;
        codesT[g * mp + i] = c;
        ent[g * mp + i] = byteOffsets(ta[c >>> 8]! + ts[c & 0xff]!);
      }
    const x = new Float32Array(buf, at.x, n);
    const xq = new Int8Array(buf, at.xq, n);
    for (let j = 0; j < n; j++) {
      x[j] = Math.sin(1.3 * j);
      xq[j] = Math.round(127 * x[j]!);
    }
    const shipped = best(() => ex.e8pRow(at.codesT, at.p1, at.p2, at.x, groups, mp, at.y));
    const offsets = best(() => ex.e8pRowOffsets(at.ent, at.p1, at.p2, at.x, groups, mp, at.y2));
    const int8 = best(() => ex.e8pRowInt8(at.codes, mp, groups, at.xq, at.grid8, at.yi));
    const y = new Float32Array(buf, at.y, mp);
    const y2 = new Float32Array(buf, at.y2, mp);
    const yi = new Int32Array(buf, at.yi, mp);
    if (y.some((v, i) => v !== y2[i])) throw new Error('floors: the offsets variant differs from e8pRow');
    for (let i = 0; i < mp; i += 37) {
      let e = 0;
      for (let g = 0; g < groups; g++)
        for (let j = 0; j < 8; j++) e += grid8[codes[i * groups + g]! * 8 + j]! * xq[g * 8 + j]!;
      if (e !== yi[i]) throw new Error(`floors: int8 row ${i} is ${yi[i]}, expected ${e}`);
    }
    totals.shipped += shipped;
    totals.offsets += offsets;
    totals.int8 += int8;
    totals.codes += count;
  }
  const ns = (ms: number) => (ms * 1e6) / totals.codes;
  const info = { shapes: '2816x1024, 1024x2816, 1024x1024', codes: totals.codes };
  emit('e8p_ns_per_code_shipped', ns(totals.shipped), 'ns/code', {}, info);
  emit('e8p_ns_per_code_offsets', ns(totals.offsets), 'ns/code', { shipped: ns(totals.shipped) }, info);
  emit('e8p_ns_per_code_int8', ns(totals.int8), 'ns/code', { shipped: ns(totals.shipped) }, info);
}
