import { mkdtemp, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { writeCheckpointDir } from './checkpoint/dir.js';
import { checkPerplexityArgs } from './perplexity.js';
import { serializeSafetensors, writeSafetensors } from './safetensors/writer.js';
import { GenerationRules } from './sampling.js';
import { tensor } from './tensor.js';

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
    expect(() => checkPerplexityArgs([1, 2, 3], signal as never, { max: 8 })).toThrow(
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
