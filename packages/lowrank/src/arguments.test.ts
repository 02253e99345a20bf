import { describe, expect, it } from 'vitest';
import { isCalderaError, Rng, tensor } from '@caldera/core';
import * as lowrank from './index.js';

const w = tensor('f32', [8, 16], new Rng(1).fillNormal(new Float32Array(128)));
const d = lowrank.caldera(w, null, { rank: 2, outerIters: 1, lplrIters: 1 });
const ck = lowrank.toCheckpointTensors('x', d);

/** Every public entry point with a required object argument: valid arguments, and the positions that must be objects. */
const entries: [
  name: string,
  call: (...args: never[]) => unknown,
  args: unknown[],
  required: [index: number, argument: string][],
][] = [
  ['caldera', lowrank.caldera, [w, null, { rank: 2, outerIters: 1, lplrIters: 1 }], [[0, 'W']]],
  ['reconstruct', lowrank.reconstruct, [d], [[0, 'd']]],
  ['rotatedEstimate', lowrank.rotatedEstimate, [d], [[0, 'd']]],
  [
    'applyDecomposition',
    lowrank.applyDecomposition,
    [d, new Float32Array(16), 1],
    [
      [0, 'd'],
      [1, 'x'],
    ],
  ],
  ['toCheckpointTensors', lowrank.toCheckpointTensors, ['x', d], [[1, 'd']]],
  [
    'fromCheckpointTensors',
    lowrank.fromCheckpointTensors,
    ['x', (n: string) => ck.tensors[n], ck.meta],
    [[1, 'get']],
  ],
  ['calderaCheckpointMeta', lowrank.calderaCheckpointMeta, [{ x: ck.meta }], [[0, 'layers']]],
  ['paperBitsFromMeta', lowrank.paperBitsFromMeta, [ck.meta], [[0, 'meta']]],
  ['withTrainableFactors', lowrank.withTrainableFactors, [d, 1], [[0, 'd']]],
  ['latticeRound', lowrank.latticeRound, [new Float32Array(8), 2], [[0, 'x']]],
  ['latticeRoundRaw', lowrank.latticeRoundRaw, [new Float32Array(8), 2], [[0, 'x']]],
  ['latticeDecode', lowrank.latticeDecode, [d.q], [[0, 'c']]],
  ['randomDecomposition', lowrank.randomDecomposition, [8, 16, 2, new Rng(1)], [[3, 'rng']]],
  ['randomSigns', lowrank.randomSigns, [8, new Rng(1)], [[1, 'rng']]],
  ['rotateWeight', lowrank.rotateWeight, [w, 8, 16, null, null], [[0, 'w']]],
  ['unrotateWeight', lowrank.unrotateWeight, [new Float32Array(128), 8, 16, 8, 16, null, null], [[0, 'wr']]],
];

describe('required object arguments', () => {
  for (const [name, call, args, required] of entries)
    it(`${name}: null or undefined for ${required.map(([, a]) => a).join(', ')} is E_VALUE naming it`, () => {
      expect(() => call(...(args as never[]))).not.toThrow();
      for (const [i, argument] of required)
        for (const bad of [null, undefined]) {
          const a = args.slice();
          a[i] = bad;
          let caught: unknown;
          try {
            call(...(a as never[]));
          } catch (e) {
            caught = e;
          }
          expect(isCalderaError(caught, 'E_VALUE'), `${argument} = ${String(bad)}: ${String(caught)}`).toBe(
            true,
          );
          expect((caught as Error).message).toContain(`${name}: ${argument} `);
        }
    });

  it('reconstruct: an object that is no Decomposition is E_VALUE (a TypeError before)', () => {
    expect(() => lowrank.reconstruct({} as never)).toThrow(
      'E_VALUE: reconstruct: d must be a Decomposition (from caldera() or fromCheckpointTensors), got an object without shape',
    );
  });

  it('fromCheckpointTensors: a missing layer entry is E_VALUE (checked by core)', () => {
    for (const bad of [null, undefined])
      expect(() => lowrank.fromCheckpointTensors('x', (n) => ck.tensors[n], bad as never)).toThrow(
        /^E_VALUE: /,
      );
  });

  it('paddedSize: a size that is no positive integer is E_VALUE (Infinity searched forever, -3 and 1.5 gave 8)', () => {
    for (const bad of [undefined, null, NaN, Infinity, -3, 0, 1.5])
      expect(() => lowrank.paddedSize(bad as never, true)).toThrow(
        new RegExp(`^E_VALUE: paddedSize: n must be a positive integer, got ${String(bad)}$`),
      );
    expect(lowrank.paddedSize(130, true)).toBe(144);
    expect(lowrank.paddedSize(130, false)).toBe(136);
  });
});

describe('applyDecomposition', () => {
  it('names a tensor, another typed array or a bad row count instead of a shape error about undefined values', () => {
    const x = tensor('f32', [1, 16], new Float32Array(16));
    expect(() => lowrank.applyDecomposition(d, x as never, 1)).toThrow(
      'E_VALUE: applyDecomposition: x must be a Float32Array of rows × n values, got a tensor (pass its data)',
    );
    expect(() => lowrank.applyDecomposition(d, new Float64Array(16) as never, 1)).toThrow(
      /got a Float64Array$/,
    );
    for (const rows of [0, 1.5, NaN])
      expect(() => lowrank.applyDecomposition(d, new Float32Array(16), rows)).toThrow(
        `E_VALUE: applyDecomposition: rows must be a positive integer, got ${rows}`,
      );
    // the data of the same tensor is accepted
    expect(lowrank.applyDecomposition(d, x.data, 1)).toHaveLength(8);
  });
});

describe('codecBits', () => {
  it('knows the checkpoint codecs by their own names only (an inherited key such as constructor gave Object)', () => {
    expect(['e8p12', 'e8p12-rvq3', 'e8p12-rvq4', 'f16'].map(lowrank.codecBits)).toEqual([2, 3, 4, 16]);
    for (const name of ['constructor', 'toString', 'e8p13'])
      expect(() => lowrank.codecBits(name)).toThrow(`E_FORMAT: unknown codec '${name}'`);
  });
});
