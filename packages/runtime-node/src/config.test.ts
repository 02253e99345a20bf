import { describe, expect, it } from 'vitest';
import { blockLinearNames, parseModelConfig } from './config.js';
import { ropeInvFreq } from './model.js';

const base = {
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 8,
  vocab_size: 100,
};

describe('parseModelConfig', () => {
  it('reads Llama, Mistral and Qwen2 configs with GQA, head_dim, biases and tied embeddings', () => {
    const llama = parseModelConfig({ ...base, architectures: ['LlamaForCausalLM'], num_key_value_heads: 2 });
    expect(llama).toMatchObject({
      numKvHeads: 2,
      headDim: 8,
      attentionBias: false,
      tieWordEmbeddings: false,
    });
    const mistral = parseModelConfig({ ...base, model_type: 'mistral', head_dim: 16, rope_theta: 1e6 });
    expect(mistral).toMatchObject({
      architecture: 'MistralForCausalLM',
      headDim: 16,
      ropeTheta: 1e6,
      numKvHeads: 8,
    });
    const qwen = parseModelConfig({
      ...base,
      architectures: ['Qwen2ForCausalLM'],
      tie_word_embeddings: true,
    });
    expect(qwen).toMatchObject({ attentionBias: true, tieWordEmbeddings: true });
    expect(parseModelConfig({ ...base, model_type: 'llama', eos_token_id: [7, 8] }).eosTokenId).toBe(7);
  });

  it('lists every missing field and rejects unsupported architectures, rope types and head counts', () => {
    let msg = '';
    try {
      parseModelConfig({ architectures: ['LlamaForCausalLM'], hidden_size: 8 }, 'x/config.json');
    } catch (e) {
      msg = String(e);
    }
    expect(msg).toMatch(/E_FORMAT.*x\/config\.json/);
    for (const f of ['intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'vocab_size'])
      expect(msg).toContain(f);
    expect(() => parseModelConfig({ ...base, architectures: ['GPT2LMHeadModel'] })).toThrow(
      /E_UNSUPPORTED.*GPT2/,
    );
    expect(() =>
      parseModelConfig({ ...base, model_type: 'llama', rope_scaling: { rope_type: 'yarn' } }),
    ).toThrow(/E_UNSUPPORTED.*yarn/);
    expect(() => parseModelConfig({ ...base, model_type: 'llama', num_key_value_heads: 3 })).toThrow(
      /E_FORMAT/,
    );
    expect(() => parseModelConfig(null)).toThrow(/E_FORMAT/);
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
