import { describe, expect, it } from 'vitest';
import * as core from '@caldera/core';
import * as api from './index.js';
import { ropeInvFreq } from './model.js';

const base = {
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 8,
  vocab_size: 100,
};
const { blockLinearNames, parseModelConfig } = api;

// The parser itself is tested in @caldera/core (src/model-config.test.ts); here: the public API and RoPE scaling.
describe('model config (from @caldera/core)', () => {
  it("parseModelConfig and blockLinearNames are still exported by @caldera/runtime-node, as core's", () => {
    expect(api.parseModelConfig).toBe(core.parseModelConfig);
    expect(api.blockLinearNames).toBe(core.blockLinearNames);
  });

  it('Llama-3 RoPE scaling: long wavelengths divided by factor, short kept, smooth blend between', () => {
    const scaling = {
      rope_type: 'llama3',
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    };
    const cfg = parseModelConfig({ ...base, model_type: 'llama', rope_theta: 500000, rope_scaling: scaling });
    const plain = ropeInvFreq({ ...cfg, ropeScaling: null });
    const scaled = ropeInvFreq(cfg);
    for (let i = 0; i < plain.length; i++) {
      const wl = (2 * Math.PI) / plain[i]!;
      if (wl < 8192 / 4) expect(scaled[i]).toBe(plain[i]);
      else if (wl > 8192 / 1) expect(scaled[i]).toBeCloseTo(plain[i]! / 8, 15);
      else {
        // transformers' formula: (1 − s)·f/factor + s·f with s = (orig/wl − low)/(high − low)
        const sm = (8192 / wl - 1) / 3;
        expect(scaled[i]).toBeCloseTo((1 - sm) * (plain[i]! / 8) + sm * plain[i]!, 15);
      }
    }
    expect(blockLinearNames(3).map((l) => l.name)[6]).toBe('model.layers.3.mlp.down_proj');
  });
});
