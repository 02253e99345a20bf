import { describe, expect, it } from 'vitest';
import {
  blockLinearNames,
  assertDeclaredBias,
  declaredBias,
  hasQkNorm,
  linearShape,
  qkNormNames,
  parseModelConfig,
  stopTokenIdsOf,
  appliesRope,
  ropeAttentionFactor,
  ropeInvFreq,
  type ModelConfig,
} from './model-config.js';

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
    // Llama 3 chat models list several end-of-sequence ids; generation stops at any of them (eosTokenId, deprecated,
    // is still their first)
    expect(parseModelConfig({ ...base, model_type: 'llama', eos_token_id: [7, 8, 7] })).toMatchObject({
      eosTokenId: 7,
      eosTokenIds: [7, 8],
    });
    expect(parseModelConfig({ ...base, model_type: 'llama', eos_token_id: 2 })).toMatchObject({
      eosTokenId: 2,
      eosTokenIds: [2],
    });
    expect(parseModelConfig({ ...base, model_type: 'llama', eos_token_id: null })).toMatchObject({
      eosTokenId: null,
      eosTokenIds: [],
    });
    expect(() =>
      parseModelConfig({ ...base, model_type: 'llama', eos_token_id: ['</s>'] }, 'm/config.json'),
    ).toThrow(/m\/config\.json: eos_token_id \["<\/s>"\] is not a token id or a list of token ids/);
  });

  it("reads Qwen3: head_dim 128 by default, Llama's attention_bias, per-head q/k norms, Qwen2's sliding window", () => {
    // Qwen3-0.6B's config.json (transformers 4.51), fields as published: head_dim 128 is not hidden_size / heads (64)
    const qwen3 = {
      architectures: ['Qwen3ForCausalLM'],
      attention_bias: false,
      attention_dropout: 0.0,
      bos_token_id: 151643,
      eos_token_id: 151645,
      head_dim: 128,
      hidden_act: 'silu',
      hidden_size: 1024,
      initializer_range: 0.02,
      intermediate_size: 3072,
      max_position_embeddings: 40960,
      max_window_layers: 28,
      model_type: 'qwen3',
      num_attention_heads: 16,
      num_hidden_layers: 28,
      num_key_value_heads: 8,
      rms_norm_eps: 1e-6,
      rope_scaling: null,
      rope_theta: 1000000,
      sliding_window: null,
      tie_word_embeddings: true,
      torch_dtype: 'bfloat16',
      transformers_version: '4.51.0',
      use_cache: true,
      use_sliding_window: false,
      vocab_size: 151936,
    };
    const cfg = parseModelConfig(qwen3);
    expect(cfg).toMatchObject({
      architecture: 'Qwen3ForCausalLM',
      headDim: 128,
      numHeads: 16,
      numKvHeads: 8,
      attentionBias: false,
      mlpBias: false,
      tieWordEmbeddings: true,
      slidingWindow: null,
      maxPositions: 40960,
      ropeTheta: 1e6,
    });
    expect(linearShape(cfg, 'q_proj')).toEqual([2048, 1024]);
    expect(linearShape(cfg, 'o_proj')).toEqual([1024, 2048]);
    expect(hasQkNorm(cfg)).toBe(true);
    expect(qkNormNames(cfg, 3)).toEqual([
      'model.layers.3.self_attn.q_norm.weight',
      'model.layers.3.self_attn.k_norm.weight',
    ]);
    for (const arch of ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM'])
      expect(qkNormNames(parseModelConfig({ ...base, architectures: [arch] }), 3)).toEqual([]);
    // Qwen3Config's head_dim default is 128, whatever hidden_size / num_attention_heads is; model_type alone names it
    expect(parseModelConfig({ ...base, model_type: 'qwen3' })).toMatchObject({
      architecture: 'Qwen3ForCausalLM',
      headDim: 128,
    });
    expect(parseModelConfig({ ...base, model_type: 'qwen3', head_dim: 16 }).headDim).toBe(16);
    // its attention is Llama's: attention_bias gives q/k/v/o biases; no MLP biases (mlp_bias is not read)
    const kinds = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
    const biased = parseModelConfig({ ...qwen3, attention_bias: true, mlp_bias: true });
    expect(kinds.filter((k) => declaredBias(biased, k) !== null)).toEqual(kinds.slice(0, 4));
    expect(declaredBias(biased, 'o_proj')).toBe('attention_bias');
    expect(kinds.filter((k) => declaredBias(cfg, k) !== null)).toEqual([]);
    // as Qwen2: a window only with use_sliding_window and a layer at or past max_window_layers
    expect(parseModelConfig({ ...qwen3, sliding_window: 4096 }).slidingWindow).toBe(null);
    expect(parseModelConfig({ ...qwen3, sliding_window: 4096, use_sliding_window: true }).slidingWindow).toBe(
      null,
    );
    expect(
      parseModelConfig({ ...qwen3, sliding_window: 4096, use_sliding_window: true, max_window_layers: 27 }),
    ).toMatchObject({ slidingWindow: 4096, maxPositions: 4096 });
    expect(() => parseModelConfig({ ...base, model_type: 'qwen3_moe' })).toThrow(
      /^E_UNSUPPORTED: config\.json: architecture 'qwen3_moe' is not supported \(supported: .*Qwen3ForCausalLM.*\)$/,
    );
  });

  it('stops at a sliding window (Mistral; Qwen2 only with use_sliding_window; never Llama), where full attention is still exact', () => {
    const mistral = { ...base, architectures: ['MistralForCausalLM'], max_position_embeddings: 32768 };
    expect(parseModelConfig({ ...mistral, sliding_window: 4096 })).toMatchObject({
      maxPositions: 4096,
      slidingWindow: 4096,
    });
    expect(parseModelConfig({ ...mistral, sliding_window: null })).toMatchObject({
      maxPositions: 32768,
      slidingWindow: null,
    });
    expect(parseModelConfig({ ...mistral, sliding_window: 65536 }).maxPositions).toBe(32768);
    const qwen = {
      ...base,
      architectures: ['Qwen2ForCausalLM'],
      max_position_embeddings: 32768,
      sliding_window: 4096,
    };
    expect(parseModelConfig({ ...qwen, use_sliding_window: false })).toMatchObject({
      maxPositions: 32768,
      slidingWindow: null,
    });
    // Qwen2 slides from layer max_window_layers on (default 28): with no layer past it (2 layers here), none does
    expect(parseModelConfig({ ...qwen, use_sliding_window: true, max_window_layers: 1 })).toMatchObject({
      maxPositions: 4096,
      slidingWindow: 4096,
    });
    expect(parseModelConfig({ ...qwen, use_sliding_window: true })).toMatchObject({
      maxPositions: 32768,
      slidingWindow: null,
    });
    expect(parseModelConfig({ ...qwen, use_sliding_window: true, max_window_layers: 2 }).slidingWindow).toBe(
      null,
    );
    // with use_sliding_window and no sliding_window field, transformers' Qwen2Config/Qwen3Config slide 4096 positions
    // (their default); a window left out was no window here: full attention past 4096, other logits than transformers'
    for (const arch of ['Qwen2ForCausalLM', 'Qwen3ForCausalLM']) {
      const { sliding_window: _, ...noField } = { ...qwen, architectures: [arch] };
      expect(parseModelConfig({ ...noField, use_sliding_window: true, max_window_layers: 1 })).toMatchObject({
        maxPositions: 4096,
        slidingWindow: 4096,
      });
      expect(parseModelConfig({ ...noField, use_sliding_window: true }).slidingWindow).toBe(null);
      expect(
        parseModelConfig({ ...noField, use_sliding_window: false, max_window_layers: 1 }).slidingWindow,
      ).toBe(null);
      // an explicit null is no window, in transformers too
      expect(
        parseModelConfig({ ...noField, sliding_window: null, use_sliding_window: true, max_window_layers: 1 })
          .slidingWindow,
      ).toBe(null);
    }
    expect(() =>
      parseModelConfig({ ...qwen, use_sliding_window: true, max_window_layers: '1' }, 'm/config.json'),
    ).toThrow(/^E_FORMAT: m\/config\.json: missing or non-numeric fields: max_window_layers \("1"\)$/);
    // transformers' Llama ignores the field (configs converted from Mistral or Phi-3 carry it): it capped the context
    const llama = {
      ...base,
      architectures: ['LlamaForCausalLM'],
      max_position_embeddings: 4096,
      sliding_window: 8,
    };
    expect(parseModelConfig(llama)).toMatchObject({ maxPositions: 4096, slidingWindow: null });
    expect(() => parseModelConfig({ ...mistral, sliding_window: 0 }, 'm/config.json')).toThrow(
      /m\/config\.json: sliding_window 0 is not a positive integer/,
    );
  });

  it('a quantized checkpoint (quantization_config) is E_UNSUPPORTED naming its method (it failed later as a broken file)', () => {
    for (const [q, shown] of [
      [{ quant_method: 'gptq', bits: 4 }, 'gptq'],
      [{ quant_method: 'fp8' }, 'fp8'],
      [{ load_in_4bit: true }, 'an object'],
    ] as const)
      expect(() =>
        parseModelConfig(
          { ...base, architectures: ['LlamaForCausalLM'], quantization_config: q },
          'm/config.json',
        ),
      ).toThrow(
        `E_UNSUPPORTED: m/config.json: quantization_config (${shown}): a quantized checkpoint is not read; give the unquantized model`,
      );
    expect(
      parseModelConfig({ ...base, architectures: ['LlamaForCausalLM'], quantization_config: null }),
    ).toBeTruthy();
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
    // dynamic NTK's frequencies change with the sequence's length (not read); LongRoPE is Phi-3's
    expect(() =>
      parseModelConfig({ ...base, model_type: 'llama', rope_scaling: { rope_type: 'dynamic', factor: 2 } }),
    ).toThrow(/E_UNSUPPORTED.*dynamic/);
    expect(() => parseModelConfig({ ...base, model_type: 'llama', num_key_value_heads: 3 })).toThrow(
      /E_FORMAT/,
    );
    expect(() => parseModelConfig(null)).toThrow(/E_FORMAT/);
  });

  it('rejects values that would load but give non-finite or meaningless logits, listing each', () => {
    const llama = { ...base, architectures: ['LlamaForCausalLM'] };
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ rms_norm_eps: -1 }, /rms_norm_eps -1 is negative/],
      [{ rope_theta: 0 }, /rope_theta 0 is not positive/],
      [{ max_position_embeddings: 0 }, /max_position_embeddings 0 is not a positive integer/],
      [{ num_hidden_layers: 2.5 }, /num_hidden_layers 2\.5 is not a positive integer/],
      [{ vocab_size: -4 }, /vocab_size -4 is not a positive integer/],
      [{ head_dim: 7 }, /head_dim 7 .*not an even positive integer/],
      [{ hidden_size: 60 }, /head_dim 7\.5 .*not an even positive integer/], // 60 / 8 heads, no head_dim
    ];
    for (const [patch, msg] of bad) {
      expect(() => parseModelConfig({ ...llama, ...patch }, 'm/config.json'), JSON.stringify(patch)).toThrow(
        new RegExp(`E_FORMAT: m/config\\.json: invalid fields: .*${msg.source}`),
      );
    }
    expect(() => parseModelConfig({ ...llama, rope_theta: 0, rms_norm_eps: -1 })).toThrow(
      /rms_norm_eps.*; rope_theta/,
    );
    expect(() => parseModelConfig({ ...llama, hidden_act: 'gelu' })).toThrow(
      /E_UNSUPPORTED.*hidden_act "gelu"/,
    );
    for (const hidden_act of ['silu', 'swish', undefined])
      expect(parseModelConfig({ ...llama, hidden_act }).hiddenSize).toBe(64);
    expect(parseModelConfig({ ...llama, rms_norm_eps: 0 }).rmsNormEps).toBe(0);
  });

  it('a number given as a string, or not finite, is non-numeric, not its default; null is the default', () => {
    // "500000" for rope_theta was read as 10000, "8192" positions as 2048, "2" kv heads as all heads: wrong logits
    const llama = { ...base, architectures: ['LlamaForCausalLM'] };
    expect(() =>
      parseModelConfig(
        {
          ...llama,
          rope_theta: '500000',
          max_position_embeddings: '8192',
          num_key_value_heads: '2',
          head_dim: [8],
        },
        'm/config.json',
      ),
    ).toThrow(
      /^E_FORMAT: m\/config\.json: missing or non-numeric fields: num_key_value_heads \("2"\), head_dim \(\[8\]\), rope_theta \("500000"\), max_position_embeddings \("8192"\)$/,
    );
    // JSON's 1e999 is Infinity
    expect(() =>
      parseModelConfig(JSON.parse(JSON.stringify(llama).replace('{', '{"rms_norm_eps":1e999,'))),
    ).toThrow(/non-numeric fields: rms_norm_eps \(null\)$/);
    expect(() => parseModelConfig({ ...llama, hidden_size: null })).toThrow(
      /non-numeric fields: hidden_size \(null\)/,
    );
    expect(
      parseModelConfig({ ...llama, rope_theta: null, num_key_value_heads: null, head_dim: null }),
    ).toMatchObject({ ropeTheta: 10000, numKvHeads: 8, headDim: 8 });
  });

  it("biases: Llama's q/k/v/o with attention_bias and gate/up/down with mlp_bias, Qwen2's q/k/v, none in Mistral", () => {
    const kinds = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
    const of = (c: Record<string, unknown>) => {
      const cfg = parseModelConfig({ ...base, ...c });
      return kinds.filter((k) => declaredBias(cfg, k) !== null);
    };
    expect(of({ model_type: 'llama' })).toEqual([]);
    expect(of({ model_type: 'llama', attention_bias: true })).toEqual(kinds.slice(0, 4));
    expect(of({ model_type: 'llama', mlp_bias: true })).toEqual(kinds.slice(4));
    expect(of({ model_type: 'qwen2' })).toEqual(kinds.slice(0, 3));
    // transformers' Mistral and Qwen2 read neither field (their layers have no such biases)
    expect(of({ model_type: 'mistral', attention_bias: true, mlp_bias: true })).toEqual([]);
    expect(of({ model_type: 'qwen2', attention_bias: true, mlp_bias: true })).toEqual(kinds.slice(0, 3));
    expect(declaredBias(parseModelConfig({ ...base, model_type: 'qwen2' }), 'k_proj')).toBe(
      "Qwen2's q/k/v biases",
    );
    // the loaders' check: a declared bias must be among the tensors
    const llama = parseModelConfig({ ...base, model_type: 'llama', mlp_bias: true });
    const name = 'model.layers.1.mlp.down_proj';
    expect(() => assertDeclaredBias(llama, name, () => false, 'm: ')).toThrow(
      `E_MISSING: m: tensor '${name}.bias' is missing (config.json: mlp_bias)`,
    );
    expect(() => assertDeclaredBias(llama, name, (t) => t === `${name}.bias`)).not.toThrow();
    expect(() => assertDeclaredBias(llama, 'model.layers.1.self_attn.q_proj', () => false)).not.toThrow();
  });

  it('reads Llama-3 rope_scaling, whose four fields must all be there and positive (transformers requires them)', () => {
    const llama3 = {
      rope_type: 'llama3',
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 4096,
    };
    const cfg = parseModelConfig({ ...base, model_type: 'llama', rope_scaling: llama3 });
    expect(cfg.ropeScaling).toEqual({
      type: 'llama3',
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositions: 4096,
    });
    // a missing factor gave NaN frequencies (every logit NaN), factor 0 infinite ones, equal factors a division by 0
    const bad: [Record<string, unknown>, string][] = [
      [{ factor: undefined }, 'factor missing is not a positive number'],
      [{ factor: 0 }, 'factor 0 is not a positive number'],
      [{ factor: '8' }, 'factor "8" is not a positive number'],
      [
        { low_freq_factor: undefined, high_freq_factor: -4 },
        'low_freq_factor missing is not a positive number; high_freq_factor -4 is not a positive number',
      ],
      [
        { original_max_position_embeddings: 8192.5 },
        'original_max_position_embeddings 8192.5 is not a positive integer',
      ],
      [{ high_freq_factor: 1 }, 'high_freq_factor 1 is not above low_freq_factor 1'],
    ];
    for (const [patch, msg] of bad)
      expect(() =>
        parseModelConfig(
          { ...base, model_type: 'llama', rope_scaling: { ...llama3, ...patch } },
          'm/config.json',
        ),
      ).toThrow(`E_FORMAT: m/config.json: invalid fields: rope_scaling (llama3): ${msg}`);
    expect(
      parseModelConfig({ ...base, model_type: 'llama', rope_scaling: { type: 'default' } }).ropeScaling,
    ).toBe(null);
  });
});

describe('arguments that are not objects', () => {
  it('parseModelConfig and stopTokenIdsOf: null or undefined is a CalderaError naming it, not a TypeError', () => {
    for (const [json, got] of [
      [null, 'null'],
      [undefined, 'undefined'],
      [3, 'a number'],
      [[], 'an array'], // was "architecture '' is not supported"
    ] as const)
      expect(() => parseModelConfig(json, 'm/config.json')).toThrow(
        expect.objectContaining({
          code: 'E_FORMAT',
          message: `E_FORMAT: m/config.json: not a JSON object (got ${got})`,
        }),
      );
    for (const [config, got] of [
      [null, 'null'],
      [undefined, 'undefined'],
      [{}, 'an object without eosTokenIds'],
    ] as const)
      expect(() => stopTokenIdsOf(config as unknown as ModelConfig, null)).toThrow(
        expect.objectContaining({
          code: 'E_VALUE',
          message: `E_VALUE: stopTokenIdsOf: config must be a parsed config.json (parseModelConfig), got ${got}`,
        }),
      );
    const cfg = parseModelConfig({ ...base, model_type: 'llama', eos_token_id: [7, 8] });
    expect(stopTokenIdsOf(cfg, null)).toEqual([7, 8]);
    expect(stopTokenIdsOf(cfg, { eos_token_id: 9 })).toEqual([7, 8, 9]);
    // a generation_config.json that holds no object was read as one without stop ids
    for (const [bad, what] of [
      [[1, 2], 'an array'],
      ['x', 'a string'],
      [3, 'a number'],
    ] as const)
      expect(() => stopTokenIdsOf(cfg, bad)).toThrow(
        `E_FORMAT: generation_config.json is ${what}, not a JSON object`,
      );
  });
});

describe('blockLinearNames', () => {
  it('lists the seven linears of a block in q, k, v, o, gate, up, down order with their input keys', () => {
    const l = blockLinearNames(3);
    expect(l.map((x) => x.name)).toEqual([
      'model.layers.3.self_attn.q_proj',
      'model.layers.3.self_attn.k_proj',
      'model.layers.3.self_attn.v_proj',
      'model.layers.3.self_attn.o_proj',
      'model.layers.3.mlp.gate_proj',
      'model.layers.3.mlp.up_proj',
      'model.layers.3.mlp.down_proj',
    ]);
    expect(l.map((x) => x.input)).toEqual(['attn', 'attn', 'attn', 'o', 'mlp', 'mlp', 'down']);
  });
});

describe('linearShape', () => {
  it('gives [out, in] of every block linear for a GQA config with an explicit head_dim', () => {
    const c = parseModelConfig({
      architectures: ['LlamaForCausalLM'],
      hidden_size: 96,
      intermediate_size: 200,
      num_hidden_layers: 1,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      head_dim: 32,
      vocab_size: 50,
    });
    const shapes = blockLinearNames(0).map(({ name }) =>
      linearShape(c, name.slice(name.lastIndexOf('.') + 1)),
    );
    expect(shapes).toEqual([
      [128, 96],
      [64, 96],
      [64, 96],
      [96, 128],
      [200, 96],
      [200, 96],
      [96, 200],
    ]);
    expect(() => linearShape(c, 'lm_head')).toThrow(/unknown linear layer kind 'lm_head'/);
  });
});

describe("transformers 5's rope_parameters and the architecture named", () => {
  const llama3 = {
    rope_type: 'llama3',
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 8192,
  };
  const llama = { ...base, architectures: ['LlamaForCausalLM'], model_type: 'llama' };

  it('reads rope_theta and the Llama 3 scaling from rope_parameters (they were dropped: theta 10000, no scaling)', () => {
    const old = parseModelConfig({ ...llama, rope_theta: 500000, rope_scaling: llama3 });
    const v5 = parseModelConfig({ ...llama, rope_parameters: { ...llama3, rope_theta: 500000 } });
    expect(v5.ropeTheta).toBe(500000);
    expect(v5.ropeScaling).toEqual(old.ropeScaling);
    expect(v5).toEqual(old);
    // the default type, with or without its name; theta at the top level still counts beside it
    for (const rp of [{ rope_type: 'default', rope_theta: 1e6 }, { rope_theta: 1e6 }]) {
      const cfg = parseModelConfig({ ...llama, rope_parameters: rp });
      expect([cfg.ropeTheta, cfg.ropeScaling]).toEqual([1e6, null]);
    }
    expect(
      parseModelConfig({ ...llama, rope_theta: 1e6, rope_parameters: { rope_type: 'default' } }).ropeTheta,
    ).toBe(1e6);
    // the same values in both places agree
    expect(
      parseModelConfig({
        ...llama,
        rope_theta: 5e5,
        rope_scaling: llama3,
        rope_parameters: { ...llama3, rope_theta: 5e5 },
      }),
    ).toEqual(old);
  });

  it('refuses what it cannot run there as it does at the top level, and settings that disagree', () => {
    expect(() =>
      parseModelConfig(
        { ...llama, rope_parameters: { rope_type: 'dynamic', factor: 4, rope_theta: 1e4 } },
        'c.json',
      ),
    ).toThrow("E_UNSUPPORTED: c.json: rope_parameters type 'dynamic' is not supported");
    expect(() => parseModelConfig({ ...llama, rope_parameters: { ...llama3, factor: 0 } }, 'c.json')).toThrow(
      'E_FORMAT: c.json: invalid fields: rope_parameters (llama3): factor 0 is not a positive number',
    );
    expect(() =>
      parseModelConfig(
        {
          ...llama,
          rope_parameters: { full_attention: { rope_theta: 1e6 }, sliding_attention: { rope_theta: 1e4 } },
        },
        'c.json',
      ),
    ).toThrow(
      'E_UNSUPPORTED: c.json: rope_parameters per layer type (full_attention, sliding_attention) is not supported',
    );
    for (const cfg of [
      { ...llama, partial_rotary_factor: 0.5 },
      { ...llama, rope_parameters: { rope_theta: 1e4, partial_rotary_factor: 0.5 } },
    ])
      expect(() => parseModelConfig(cfg)).toThrow(
        /E_UNSUPPORTED: config\.json: .*partial_rotary_factor 0\.5 is not supported/,
      );
    expect(() =>
      parseModelConfig({ ...llama, rope_theta: 1e4, rope_parameters: { rope_theta: 5e5 } }),
    ).toThrow(
      'E_FORMAT: config.json: RoPE settings disagree: rope_theta 10000 and rope_parameters.rope_theta 500000',
    );
    expect(() =>
      parseModelConfig({ ...llama, rope_scaling: llama3, rope_parameters: { rope_theta: 5e5 } }),
    ).toThrow(
      'E_FORMAT: config.json: RoPE settings disagree: rope_scaling type "llama3" and rope_parameters.rope_type "default"',
    );
    // an array field is its type's (longrope's factors), not settings per layer type
    expect(() =>
      parseModelConfig({
        ...llama,
        rope_parameters: { rope_type: 'longrope', short_factor: [1, 2], long_factor: [3, 4] },
      }),
    ).toThrow("E_UNSUPPORTED: config.json: rope_parameters type 'longrope' is not supported");
    expect(() => parseModelConfig({ ...llama, rope_parameters: 'x' })).toThrow(
      /E_FORMAT: .*rope_parameters "x" is not an object/,
    );
    expect(() => parseModelConfig({ ...llama, rope_parameters: { rope_theta: '5e5' } })).toThrow(
      /E_FORMAT: .*rope_parameters\.rope_theta \("5e5"\)/,
    );
  });

  it('takes model_type only where architectures names no class (a Llama classifier loaded as a causal LM)', () => {
    for (const arch of ['LlamaForSequenceClassification', 'GemmaForCausalLM'])
      expect(() => parseModelConfig({ ...base, model_type: 'llama', architectures: [arch] })).toThrow(
        `E_UNSUPPORTED: config.json: architecture '${arch}' is not supported`,
      );
    for (const architectures of [undefined, []])
      expect(parseModelConfig({ ...base, model_type: 'qwen2', architectures }).architecture).toBe(
        'Qwen2ForCausalLM',
      );
    // the first Hugging Face conversions of LLaMA named the class so (they loaded through model_type before)
    expect(
      parseModelConfig({ ...base, model_type: 'llama', architectures: ['LLaMAForCausalLM'] }).architecture,
    ).toBe('LlamaForCausalLM');
    expect(() => parseModelConfig({ ...base, architectures: ['constructor'] })).toThrow(/E_UNSUPPORTED/);
  });
});

describe('YaRN and linear RoPE scaling', () => {
  // Qwen3-8B's config with the YaRN block its model card says to add for 131072 tokens
  const qwen3 = {
    architectures: ['Qwen3ForCausalLM'],
    model_type: 'qwen3',
    hidden_size: 256,
    intermediate_size: 512,
    num_hidden_layers: 2,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    head_dim: 128,
    vocab_size: 100,
    rope_theta: 1000000,
    max_position_embeddings: 40960,
  };
  const card = { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 32768 };
  const plain = (c: Pick<ModelConfig, 'headDim' | 'ropeTheta'>) => ropeInvFreq({ ...c, ropeScaling: null });

  it("reads Qwen's YaRN block (rope_scaling or rope_parameters) with transformers' defaults, and runs the stretched context", () => {
    const cfg = parseModelConfig({ ...qwen3, rope_scaling: card });
    expect(cfg.ropeScaling).toEqual({
      type: 'yarn',
      factor: 4,
      originalMaxPositions: 32768,
      betaFast: 32,
      betaSlow: 1,
      truncate: true,
      attentionFactor: 0.1 * Math.log(4) + 1,
    });
    expect(cfg.maxPositions).toBe(131072);
    expect(ropeAttentionFactor(cfg)).toBe(0.1 * Math.log(4) + 1);
    const v5 = parseModelConfig({
      ...qwen3,
      rope_theta: undefined,
      rope_parameters: { ...card, rope_theta: 1e6 },
    });
    expect(v5).toEqual(cfg);
    // `type` (older configs) names it as well; null/0 betas are transformers' `or` defaults
    expect(
      parseModelConfig({ ...qwen3, rope_scaling: { type: 'yarn', factor: 4, beta_fast: 0, beta_slow: null } })
        .ropeScaling,
    ).toMatchObject({ betaFast: 32, betaSlow: 1, originalMaxPositions: 40960 });
  });

  it("gives transformers 5's inverse frequencies (values from a Python transcription of _compute_yarn_parameters)", () => {
    const cfg = parseModelConfig({ ...qwen3, rope_scaling: card });
    const inv = ropeInvFreq(cfg);
    const base = plain(cfg);
    // Python, f64: the ramp runs over pairs 23 … 40 (floor/ceil of 23.596… and 39.651…); before it every frequency is
    // kept, after it divided by the factor; the values in it are a computation of a few f64 operations (relative
    // error a few ulps, so 1e-14)
    const python: [number, number][] = [
      [0, 1.0],
      [23, 0.006978305848598663],
      [24, 0.005375321490790102],
      [39, 6.490394320837028e-5],
      [40, 4.445698525097307e-5],
      [63, 3.102344401879299e-7],
    ];
    for (const [i, v] of python) expect(Math.abs(inv[i]! - v) / v).toBeLessThan(1e-14);
    for (let i = 0; i <= 23; i++) expect(inv[i]).toBe(base[i]);
    for (let i = 40; i < 64; i++) expect(inv[i]).toBe(base[i]! / 4);
    // in the ramp: between the two, falling towards the divided one
    for (let i = 24; i < 40; i++) {
      expect(inv[i]).toBeLessThan(base[i]!);
      expect(inv[i]).toBeGreaterThan(base[i]! / 4);
    }
    // truncate false (gpt-oss): the ramp's ends stay fractional (8.0927… and 17.398… for these sizes; Python values)
    const untruncated = ropeInvFreq({
      headDim: 64,
      ropeTheta: 150000,
      ropeScaling: {
        type: 'yarn',
        factor: 32,
        originalMaxPositions: 4096,
        betaFast: 32,
        betaSlow: 1,
        truncate: false,
        attentionFactor: 1,
      },
    });
    expect(Math.abs(untruncated[10]! - 0.019335001126540362) / 0.019335001126540362).toBeLessThan(1e-14);
    expect(Math.abs(untruncated[20]! - 1.818833668168956e-5) / 1.818833668168956e-5).toBeLessThan(1e-14);
  });

  it('is plain RoPE at factor 1, and takes the attention factor given, or DeepSeek’s mscale ratio', () => {
    const one = parseModelConfig({ ...qwen3, rope_scaling: { ...card, factor: 1 } });
    // the ramp's blend of v/1 and v: v to an ulp or two (1e-15 relative)
    const base = plain(one);
    ropeInvFreq(one).forEach((v, i) => expect(Math.abs(v - base[i]!) / base[i]!).toBeLessThan(1e-15));
    expect(ropeAttentionFactor(one)).toBe(1);
    expect(one.maxPositions).toBe(40960);
    const af = (rs: Record<string, unknown>) =>
      ropeAttentionFactor(parseModelConfig({ ...qwen3, rope_scaling: { ...card, ...rs } }));
    expect(af({ attention_factor: 1.25 })).toBe(1.25);
    // DeepSeek-V2-Lite: mscale = mscale_all_dim = 0.707, so the ratio is 1
    expect(af({ factor: 40, mscale: 0.707, mscale_all_dim: 0.707 })).toBe(1);
    expect(af({ factor: 40, mscale: 1, mscale_all_dim: 0.707 })).toBeCloseTo(
      (0.1 * Math.log(40) + 1) / (0.0707 * Math.log(40) + 1),
      15,
    );
    // only one of the two: the plain formula
    expect(af({ factor: 40, mscale: 1 })).toBe(0.1 * Math.log(40) + 1);
  });

  it('derives a missing factor from the two lengths, and names every bad field', () => {
    const derived = parseModelConfig({
      ...qwen3,
      max_position_embeddings: 163840,
      rope_scaling: { rope_type: 'yarn', original_max_position_embeddings: 4096 },
    });
    expect(derived.ropeScaling).toMatchObject({ factor: 40, originalMaxPositions: 4096 });
    // a top-level original_max_position_embeddings comes first, as in transformers 5 (it read 40960 here before)
    const top = parseModelConfig({
      ...qwen3,
      original_max_position_embeddings: 8192,
      rope_scaling: { ...card, original_max_position_embeddings: undefined },
    });
    expect(top.ropeScaling).toMatchObject({ factor: 4, originalMaxPositions: 8192 });
    expect(
      parseModelConfig({ ...qwen3, original_max_position_embeddings: 8192, rope_scaling: card }).ropeScaling,
    ).toMatchObject({ originalMaxPositions: 8192 });
    const bad: [Record<string, unknown>, string][] = [
      [
        { factor: undefined, original_max_position_embeddings: undefined },
        'factor missing is not a positive number',
      ],
      [{ factor: 0 }, 'factor 0 is not a positive number'],
      [
        { beta_fast: 'x', truncate: 'yes' },
        'beta_fast "x" is not a positive number; truncate "yes" is not true or false',
      ],
      [
        { original_max_position_embeddings: 1.5 },
        'original_max_position_embeddings 1.5 is not a positive integer',
      ],
      [{ attention_factor: -1 }, 'attention_factor -1 is not a positive number'],
    ];
    for (const [patch, msg] of bad)
      expect(() =>
        parseModelConfig({ ...qwen3, rope_scaling: { ...card, ...patch } }, 'q/config.json'),
      ).toThrow(`E_FORMAT: q/config.json: invalid fields: rope_scaling (yarn): ${msg}`);
  });

  it('reads linear scaling: every frequency divided by the factor, no attention factor', () => {
    const cfg = parseModelConfig({
      ...base,
      model_type: 'llama',
      rope_scaling: { type: 'linear', factor: 2 },
    });
    expect(cfg.ropeScaling).toEqual({ type: 'linear', factor: 2 });
    const inv = ropeInvFreq(cfg);
    plain(cfg).forEach((v, i) => expect(inv[i]).toBe(v / 2));
    expect(ropeAttentionFactor(cfg)).toBe(1);
    expect(() =>
      parseModelConfig({ ...base, model_type: 'llama', rope_scaling: { type: 'linear' } }, 'l.json'),
    ).toThrow(
      'E_FORMAT: l.json: invalid fields: rope_scaling (linear): factor missing is not a positive number',
    );
    // Llama 3 and plain RoPE carry no attention factor either
    expect(ropeAttentionFactor({ ropeScaling: null })).toBe(1);
    // a scaling without a known type (Llama 3's fields alone, the shape before YaRN was read) is refused, not plain RoPE
    const old = { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 } as never;
    expect(() => ropeInvFreq({ headDim: 8, ropeTheta: 1e4, ropeScaling: old })).toThrow(
      /^E_VALUE: ropeInvFreq: ropeScaling .* has no known type/,
    );
    expect(() => ropeAttentionFactor({ ropeScaling: { type: 'dynamic', factor: 2 } as never })).toThrow(
      /E_VALUE/,
    );
  });
});

describe('SmolLM3 (every fourth block without RoPE)', () => {
  // HuggingFaceTB/SmolLM3-3B's config.json, less what the loader does not read, at 8 blocks instead of 36
  const smol = {
    architectures: ['SmolLM3ForCausalLM'],
    model_type: 'smollm3',
    hidden_size: 64,
    intermediate_size: 128,
    num_hidden_layers: 8,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 100,
    rope_theta: 5000000,
    max_position_embeddings: 65536,
    use_sliding_window: false,
    sliding_window: null,
    no_rope_layers: [1, 1, 1, 0, 1, 1, 1, 0],
    no_rope_layer_interval: 4,
    tie_word_embeddings: true,
  };

  it('reads its NoPE blocks from no_rope_layers (1 is RoPE, as transformers reads it), else from the interval', () => {
    const cfg = parseModelConfig(smol);
    expect(cfg).toMatchObject({
      architecture: 'SmolLM3ForCausalLM',
      nopeLayers: [3, 7],
      ropeTheta: 5e6,
      slidingWindow: null,
    });
    expect([0, 1, 2, 3, 7].map((b) => appliesRope(cfg, b))).toEqual([true, true, true, false, false]);
    // without the list: every no_rope_layer_interval-th block (default 4); a longer list is allowed, as there
    expect(parseModelConfig({ ...smol, no_rope_layers: undefined }).nopeLayers).toEqual([3, 7]);
    expect(parseModelConfig({ ...smol, no_rope_layers: null, no_rope_layer_interval: 3 }).nopeLayers).toEqual(
      [2, 5],
    );
    expect(parseModelConfig({ ...smol, no_rope_layers: [0, 1, 1, 1, 1, 1, 1, 1, 0] }).nopeLayers).toEqual([
      0,
    ]);
    // model_type alone names it; its config class's rope_theta default is 2e6
    const bare = parseModelConfig({ ...smol, architectures: undefined, rope_theta: undefined });
    expect([bare.architecture, bare.ropeTheta]).toEqual(['SmolLM3ForCausalLM', 2e6]);
    // SmolLM3Config ties the head by default (SmolLM3-3B's config.json has no tie_word_embeddings and no lm_head)
    expect(parseModelConfig({ ...smol, tie_word_embeddings: undefined }).tieWordEmbeddings).toBe(true);
    expect(parseModelConfig({ ...smol, tie_word_embeddings: false }).tieWordEmbeddings).toBe(false);
    expect(
      parseModelConfig({ ...smol, architectures: ['LlamaForCausalLM'], tie_word_embeddings: undefined })
        .tieWordEmbeddings,
    ).toBe(false);
    // other models rotate every block
    const llama = parseModelConfig({ ...smol, architectures: ['LlamaForCausalLM'] });
    expect(llama.nopeLayers).toBe(undefined);
    expect(appliesRope(llama, 3)).toBe(true);
  });

  it("takes Llama's biases, slides its NoPE blocks only with use_sliding_window, and refuses bad lists", () => {
    expect(parseModelConfig({ ...smol, attention_bias: true, mlp_bias: true })).toMatchObject({
      attentionBias: true,
      mlpBias: true,
    });
    expect(declaredBias(parseModelConfig({ ...smol, attention_bias: true }), 'o_proj')).toBe(
      'attention_bias',
    );
    const sliding = parseModelConfig({ ...smol, use_sliding_window: true, sliding_window: 4096 });
    expect([sliding.slidingWindow, sliding.maxPositions]).toEqual([4096, 4096]);
    // layer_types written out say which layers slide; with none sliding there is no window
    const full = parseModelConfig({
      ...smol,
      use_sliding_window: true,
      sliding_window: 4096,
      layer_types: Array(8).fill('full_attention'),
    });
    expect(full.slidingWindow).toBe(null);
    for (const [patch, msg] of [
      [
        { no_rope_layers: [1, 1, 0] },
        /no_rope_layers must list 1 \(RoPE\) or 0 \(no RoPE\) for each of the 8 blocks/,
      ],
      [{ no_rope_layers: [1, 1, 1, 2, 1, 1, 1, 0] }, /no_rope_layers must list/],
      [
        { no_rope_layers: null, no_rope_layer_interval: 0 },
        /no_rope_layer_interval 0 is not a positive integer/,
      ],
      [{ use_sliding_window: true, sliding_window: -1 }, /sliding_window -1 is not a positive integer/],
    ] as const)
      expect(() => parseModelConfig({ ...smol, ...patch }, 's/config.json')).toThrow(
        new RegExp(`^E_FORMAT: s/config\\.json: ${msg.source}`),
      );
  });
});
