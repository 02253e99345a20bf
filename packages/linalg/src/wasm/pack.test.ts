import { describe, expect, it } from 'vitest';
import { Rng } from '@caldera/core';
import { createEngine } from './engine.js';
import { packPanels, stageLines, type StridedSrc } from './pack.js';

describe('packPanels through the SIMD kernels (packLines32, packRows32)', () => {
  it('writes exactly what the TypeScript loops write (lines along k or across it, strided, w = 4 and 8, partial panels)', () => {
    const engine = createEngine(false)!;
    expect(engine).not.toBeNull(); // WebAssembly SIMD runs on Node 20
    const rng = new Rng(4);
    let checked = 0;
    // k: the shortest staged length, odd tails (scalar columns), a long line; lines: one partial panel, more lines
    // than one staging batch holds (256 at these k), a limit that cuts the last full panels (zero-filled lines)
    for (const k of [16, 17, 64, 301]) {
      for (const w of [4, 8]) {
        for (const [start, count, limit, pad] of [
          [0, 3, 3, 0],
          [0, 8, 8, 0],
          [2, 70, 72, 0],
          [5, 133, 100, 3], // strided (a block of a wider matrix), limit inside the range
          [0, 600, 600, 9],
        ] as const) {
          // 'lines': line i holds k contiguous values (A row-major, B transposed); 'rows': the lines are adjacent,
          // k rows apart (A transposed, B row-major)
          for (const layout of ['lines', 'rows'] as const) {
            const ld = layout === 'lines' ? k + pad : start + count + pad;
            const data = rng.fillNormal(
              new Float32Array(7 + (layout === 'lines' ? start + count : k) * ld + ld),
            );
            const src: StridedSrc =
              layout === 'lines'
                ? { data, offset: 7, sShort: ld, sK: 1 }
                : { data, offset: 7, sShort: 1, sK: ld };
            const panels = Math.ceil(count / w);
            const len = panels * k * w;
            // the TypeScript packing into a plain array, the staged packing into the engine's memory
            const want = new Float32Array(len);
            packPanels(want, 0, src, start, count, limit, k, w);
            const stagingBytes = stageLines(k) * k * 4;
            const dstOff = 65536;
            const staging = dstOff + len * 4;
            const need = staging + stagingBytes;
            const have = engine.memory.buffer.byteLength;
            if (need > have) engine.memory.grow(Math.ceil((need - have) / 65536));
            const view = new Float32Array(engine.memory.buffer);
            view.fill(NaN, dstOff / 4, dstOff / 4 + len); // every element must be written
            packPanels(view, dstOff / 4, src, start, count, limit, k, w, {
              exports: engine.exports,
              staging,
              stagingBytes,
            });
            const got = view.subarray(dstOff / 4, dstOff / 4 + len);
            expect(got.findIndex((v, i) => !Object.is(v, want[i]))).toBe(-1);
            checked++;
          }
        }
      }
    }
    expect(checked).toBe(80);
  });
});
