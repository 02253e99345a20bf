import { mkdtemp, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { writeCheckpointDir } from './checkpoint/dir.js';
import { checkPerplexityArgs } from './perplexity.js';
import { assertBooleanOptions, assertCallbacks } from './errors.js';
import { definedOptions } from './options.js';
import { serializeSafetensors, writeSafetensors } from './safetensors/writer.js';
import { GenerationRules, sampleToken } from './sampling.js';
import { Rng } from './rng.js';
import { tensor } from './tensor.js';
import { f16ArrayToF32, f32ArrayToF16 } from './half.js';

/** `E_VALUE: fn: options must be an object such as { signal }, got an AbortSignal`. */
const positional = (fn: string) =>
  expect.objectContaining({
    code: 'E_VALUE',
    message: `E_VALUE: ${fn}: options must be an object such as { signal }, got an AbortSignal`,
  });

describe('an AbortSignal passed where the options go is refused, not ignored (it would not abort anything)', () => {
  it('generate and perplexity (both runtimes check through these), safetensors and checkpoint writers', async () => {
    const signal = AbortSignal.abort();
    expect(() => new GenerationRules([1, 2], signal as never)).toThrow(positional('generate'));
    expect(() => checkPerplexityArgs([1, 2, 3], signal as never, { max: 8, what: 'test' })).toThrow(
      positional('perplexity'),
    );
    const dir = await mkdtemp(join(tmpdir(), 'caldera-positional-'));
    const tensors = { a: tensor('f32', [1], [1]) };
    await expect(serializeSafetensors(tensors, signal as never)).rejects.toThrow(
      positional('serializeSafetensors'),
    );
    await expect(writeSafetensors(join(dir, 'a.safetensors'), tensors, signal as never)).rejects.toThrow(
      positional('writeSafetensors'),
    );
    await expect(writeCheckpointDir(join(dir, 'ckpt'), {} as never, signal as never)).rejects.toThrow(
      positional('writeCheckpointDir'),
    );
    // nothing written (the file used to be)
    expect(await readdir(dir)).toEqual([]);
  });
});

describe('writer and sampler arguments that are not what they say: E_VALUE / E_DTYPE naming them, not a TypeError', () => {
  it('serializeSafetensors: null tensors or entries, raw bytes under a tensor dtype; sampleToken: null logits', async () => {
    await expect(serializeSafetensors(null as never)).rejects.toThrow(
      'E_VALUE: safetensors: tensors must be an object of names to tensors, got null',
    );
    await expect(serializeSafetensors({ a: null } as never)).rejects.toThrow(
      /^E_VALUE: tensor 'a' must be a tensor \(dtype, shape, data\) or raw bytes .*got null$/,
    );
    await expect(
      serializeSafetensors({ a: { dtype: 'f32', shape: [2], data: new Uint8Array(8) } } as never),
    ).rejects.toThrow(
      "E_DTYPE: tensor 'a': dtype 'f32' with Uint8Array data (raw bytes take a safetensors dtype: 'F32')",
    );
    // the raw form and a tensor of the same values write the same bytes
    const raw = await serializeSafetensors({
      a: { dtype: 'F32', shape: [2], data: new Uint8Array(Float32Array.of(1, 2).buffer) },
    });
    expect(raw).toEqual(await serializeSafetensors({ a: tensor('f32', [2], [1, 2]) }));
    expect(() => sampleToken(null as never, {}, new Rng(1))).toThrow(
      'E_VALUE: sampleToken: logits must be an array of numbers, got null',
    );
  });
});

describe('typed arrays of another realm (a VM context, a frame) pass the checks as their own would', () => {
  it('a tensor whose data comes from a VM context serializes; a conversion writes into such an out', async () => {
    const foreign = runInNewContext('new Float32Array([1, 2, 3])') as Float32Array;
    expect(foreign instanceof Float32Array).toBe(false); // what instanceof would have refused
    // (tensor() itself wants this realm's arrays, and says so)
    expect(() => tensor('f32', [3], foreign)).toThrow(
      'E_DTYPE: tensor: data is a Float32Array of another realm (a VM context or a frame); copy it into a Float32Array of this one',
    );
    const t = { dtype: 'f32', shape: [3], data: foreign, strides: [1], offset: 0 } as never;
    expect(await serializeSafetensors({ a: t })).toEqual(
      await serializeSafetensors({ a: tensor('f32', [3], [1, 2, 3]) }),
    );
    const out = runInNewContext('new Float32Array(3)') as Float32Array;
    expect(Array.from(f16ArrayToF32(f32ArrayToF16(foreign), out))).toEqual([1, 2, 3]);
  });
});

describe('callbacks and undefined options', () => {
  it('assertCallbacks: undefined or a function passes; anything else is E_VALUE naming the function and option', () => {
    expect(() =>
      assertCallbacks({ onProgress: undefined, onPlan: () => {} }, 'f', ['onProgress', 'onPlan']),
    ).not.toThrow();
    expect(() => assertCallbacks(null, 'f', ['onProgress'])).not.toThrow();
    for (const bad of [3, 'x', null, {}])
      expect(() => assertCallbacks({ onPlan: bad }, 'loadModel', ['onProgress', 'onPlan'])).toThrow(
        /^E_VALUE: loadModel: onPlan must be a function, got /,
      );
  });

  it('assertBooleanOptions: undefined or a boolean passes; anything else is E_VALUE (a string was taken as true)', () => {
    expect(() =>
      assertBooleanOptions({ a: true, b: false, c: undefined }, 'f', ['a', 'b', 'c']),
    ).not.toThrow();
    expect(() => assertBooleanOptions({ proxyLoss: 'no' }, 'ldlq', ['proxyLoss'])).toThrow(
      "E_VALUE: ldlq: proxyLoss must be true or false, got 'no'",
    );
    expect(() => assertBooleanOptions({ x: 0 }, 'f', ['x'])).toThrow(
      'E_VALUE: f: x must be true or false, got 0',
    );
  });

  it('definedOptions drops undefined entries only (null, 0, false and empty strings stay)', () => {
    const o = { a: undefined, b: null, c: 0, d: false, e: '' };
    expect(definedOptions(o)).toEqual({ b: null, c: 0, d: false, e: '' });
    expect(Object.keys(definedOptions(o))).not.toContain('a');
    expect(definedOptions(null)).toEqual({});
    expect({ lr: 3, ...definedOptions({ lr: undefined }) }).toEqual({ lr: 3 });
  });

  it("writeSafetensors: an onProgress that is not a function is E_VALUE before any file; one that throws rethrows its own error (was E_IO 'writing … failed'), nothing left behind", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'caldera-callback-'));
    const tensors = { a: tensor('f32', [2], [1, 2]), b: tensor('f32', [1], [3]) };
    await expect(
      writeSafetensors(join(dir, 'x.safetensors'), tensors, { onProgress: 3 as never }),
    ).rejects.toThrow(/^E_VALUE: writeSafetensors: onProgress must be a function, got a number$/);
    await expect(serializeSafetensors(tensors, { onProgress: 'no' as never })).rejects.toThrow(
      /^E_VALUE: serializeSafetensors: onProgress must be a function/,
    );
    const mine = new RangeError('stop here');
    await expect(
      writeSafetensors(join(dir, 'y.safetensors'), tensors, {
        onProgress: () => {
          throw mine;
        },
      }),
    ).rejects.toBe(mine);
    expect(await readdir(dir)).toEqual([]);
  });
});
