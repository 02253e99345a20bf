import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { f16ArrayToF32, Rng } from '@caldera/core';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../load.js';
import { lossAndGrad, type TrainParams } from './model.js';

const dir = fileURLToPath(new URL('../../../reference-model/model/', import.meta.url));

/** Minimal independent safetensors reader (f16 only) so the check does not share the runtime's loader. */
function readF16Params(path: string): TrainParams {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<
    string,
    { dtype: string; data_offsets: [number, number] }
  >;
  const out: TrainParams = {};
  for (const [name, h] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    expect(h.dtype).toBe('F16');
    const [a, b] = h.data_offsets;
    const bytes = buf.subarray(8 + n + a, 8 + n + b);
    const u16 = new Uint16Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    out[name] = f16ArrayToF32(u16);
  }
  return out;
}

describe('training forward vs inference forward', () => {
  it('gives the same cross-entropy as the runtime logits on the reference model', async () => {
    const { model, config } = await loadModel(dir);
    const params = readF16Params(`${dir}model.safetensors`);
    const rng = new Rng(3);
    const seq = Array.from({ length: 33 }, () => rng.int(config.vocabSize));
    const tokens = seq.slice(0, -1);
    const targets = seq.slice(1);
    const logits = model.forward(tokens);
    let ref = 0;
    for (let t = 0; t < tokens.length; t++) {
      const o = t * config.vocabSize;
      let mx = -Infinity;
      for (let j = 0; j < config.vocabSize; j++) mx = Math.max(mx, logits[o + j]!);
      let s = 0;
      for (let j = 0; j < config.vocabSize; j++) s += Math.exp(logits[o + j]! - mx);
      ref += mx + Math.log(s) - logits[o + targets[t]!]!;
    }
    ref /= tokens.length;
    const ours = lossAndGrad(params, config, tokens, targets, false).loss;
    // Both compute in f32 from the same f16 weights with different summation orders; over 4 layers the
    // logits agree to ~1e-5 relative, so the mean NLL (≈ 5–9 nats) must agree to well within 1e-3.
    expect(Math.abs(ours - ref)).toBeLessThan(1e-3);
    expect(ref).toBeGreaterThan(1);
  });
});
