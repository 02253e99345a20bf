import { perplexityWindows, tokenNll } from '@caldera/core';
import { describe, expect, it } from 'vitest';
import { parseModelConfig } from './config.js';
import { perplexity } from './eval.js';
import { randomModel } from './testing/random-model.js';
import { addWindowNll, type ScoreScratch } from './score.js';

const cfg = parseModelConfig({
  architectures: ['LlamaForCausalLM'],
  hidden_size: 16,
  intermediate_size: 24,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 12,
  max_position_embeddings: 256,
  tie_word_embeddings: true,
});
const { model } = randomModel(cfg, 5);
const V = cfg.vocabSize;
// batches for this 12-word vocabulary: 12·16·24 multiply-adds and more per batch keep gemm on its WebAssembly path
// (4096 and more), which the whole windows take too
const BATCH = { rows: 40, min: 24, wholeFloats: 0 };

/** The NLL sum and count of the scored tokens as the windows' whole logits give them, added in the same order. */
function wholeWindows(ids: number[], context: number, stride: number): { nll: number; count: number } {
  let nll = 0;
  let count = 0;
  for (const { start, end, from } of perplexityWindows(ids.length, context, stride)) {
    const logits = model.forward(ids.slice(start, end));
    for (let p = from; p < end; p++) {
      nll += tokenNll(logits, (p - start - 1) * V, V, ids[p]!);
      count++;
    }
  }
  return { nll, count };
}

describe('scoring a window in batches of rows', () => {
  const ids = Array.from({ length: 220 }, (_, i) => (i * 7 + (i >> 3)) % V);

  it('a window whose hidden states hold a NaN (a layer that overflowed) is E_VALUE naming its tokens, whole or in batches', () => {
    const window = { start: 0, end: 100, from: 1 };
    const x = model.hidden(ids.slice(0, 100));
    x[50 * cfg.hiddenSize + 3] = NaN; // row 50: predicts token 51
    for (const batch of [BATCH, { rows: 40, min: 24, wholeFloats: 1e9 }])
      expect(() => addWindowNll(0, model, x, ids, window, undefined, batch)).toThrow(
        /^E_VALUE: perplexity: the model's logits for tokens 1–99 are NaN/,
      );
  });

  it('gives the NLL of the whole-window logits bit for bit: merged tails, widened batches, overlapping windows', () => {
    // context 200, stride 150: window [0, 200) scored from 1 (rows 0…198: four batches of 40 and one of 39) and
    // [150, 220) scored from 200 (rows 49…68: 20 rows, widened to 24 within the window); 64/64 and 64/23: a first
    // window of 63 rows whose 23-row tail joins the batch before it
    for (const [context, stride] of [
      [200, 150],
      [64, 64],
      [64, 23],
      [37, 5],
    ] as const) {
      let nll = 0;
      let reused = 0;
      const scratch: ScoreScratch = {};
      for (const window of perplexityWindows(ids.length, context, stride)) {
        const x = model.hidden(ids.slice(window.start, window.end));
        const held = scratch.logits;
        nll = addWindowNll(nll, model, x, ids, window, scratch, BATCH);
        if (held && scratch.logits === held) reused++;
      }
      expect(nll).toBe(wholeWindows(ids, context, stride).nll);
      // one array held every window's logits after the first (it is sized for the largest batch at once)
      expect(reused).toBe([...perplexityWindows(ids.length, context, stride)].length - 1);
    }
  });

  it('perplexity (small logits: windows scored whole) equals the whole-window NLL', async () => {
    const r = await perplexity(model, ids, { context: 200, stride: 150 });
    const want = wholeWindows(ids, 200, 150);
    expect(r.tokens).toBe(want.count);
    expect(r.nll).toBe(want.nll / want.count);
  });
});
