import { describe, expect, it } from 'vitest';
import { Rng } from '@caldera/core';
import { createEngine } from './engine.js';
import { packPanels, STAGE_LINES, type StridedSrc } from './pack.js';

describe('packPanels through the SIMD kernel (packLines32)', () => {
  it('writes exactly what the TypeScript loops write (contiguous and strided lines, w = 4 and 8, partial panels)', () => {
    const engine = createEngine(false)!;
    expect(engine).not.toBeNull(); // WebAssembly SIMD runs on Node 20
    const rng = new Rng(4);
    let checked = 0;
    // k: the shortest staged length, odd tails (scalar columns), a long line; lines: one partial panel, more lines
    // than one staging batch holds (64), a limit that cuts the last full panels (zero-filled lines)
    for (const k of [16, 17, 64, 301]) {
      for (const w of [4, 8]) {
        for (const [start, count, limit, ld] of [
          [0, 3, 3, k],
          [0, 8, 8, k],
          [2, 70, 72, k],
          [5, 133, 100, k + 3], // strided lines (a block of a wider matrix), limit inside the range
          [0, 200, 200, 2 * k + 1],
        ] as const) {
          const data = rng.fillNormal(new Float32Array(7 + (start + count) * ld + k));
          const src: StridedSrc = { data, offset: 7, sShort: ld, sK: 1 };
          const panels = Math.ceil(count / w);
          const len = panels * k * w;
          // the TypeScript packing into a plain array, the staged packing into the engine's memory
          const want = new Float32Array(len);
          packPanels(want, 0, src, start, count, limit, k, w);
          const stagingBytes = STAGE_LINES * k * 4;
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
    expect(checked).toBe(40);
  });
});
