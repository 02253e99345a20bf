import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseModelConfig } from '@caldera/core';
import { stopTokenIds, unreachableStopWarning } from './commands/common.js';

const config = (eos: unknown) =>
  parseModelConfig({
    architectures: ['LlamaForCausalLM'],
    hidden_size: 8,
    intermediate_size: 16,
    num_hidden_layers: 1,
    num_attention_heads: 2,
    vocab_size: 32,
    eos_token_id: eos,
  });

describe('stopTokenIds: where generation stops', () => {
  it("joins config.json's end-of-sequence ids with generation_config.json's (Llama 3 lists <|eot_id|> only there)", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'caldera-stop-'));
    expect(await stopTokenIds(dir, config(2))).toEqual([2]); // no generation_config.json
    writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: [2, 9, 11] }));
    expect(await stopTokenIds(dir, config(2))).toEqual([2, 9, 11]);
    expect(await stopTokenIds(dir, config([3, 2]))).toEqual([3, 2, 9, 11]);
    writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ do_sample: true }));
    expect(await stopTokenIds(dir, config(null))).toEqual([]);
  });

  it('names generation_config.json when it is not JSON or its eos_token_id is not token ids', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'caldera-stop-'));
    writeFileSync(join(dir, 'generation_config.json'), '{ not json');
    await expect(stopTokenIds(dir, config(2))).rejects.toMatchObject({
      code: 'E_FORMAT',
      message: expect.stringMatching(/generation_config\.json is not valid JSON/),
    });
    writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: ['</s>'] }));
    await expect(stopTokenIds(dir, config(2))).rejects.toThrow(/eos_token_id is not a token id or a list/);
  });

  it('warns when no end-of-sequence id is below the vocabulary size (generation ran to its limit unsaid)', () => {
    expect(unreachableStopWarning([40, 41], 32)).toBe(
      'warning: the end-of-sequence ids (40, 41) are not below the vocabulary size 32: no generated token can end the text, so it runs to --max-tokens (or --stop)',
    );
    expect(unreachableStopWarning([40, 2], 32)).toBeNull(); // 2 can still end it
    expect(unreachableStopWarning([], 32)).toBeNull(); // none given: a base model without EOS
  });
});
