import { describe, expect, it } from 'vitest';
import { isCalderaError, Rng, tensor, type Tensor } from '@caldera/core';
import { compressModel, type BlockStore, type CompressLayerFn, type LayerResult } from './driver.js';
import type { LinearInfo, LinearReplacement, ModelRunner } from './runner.js';

/**
 * A small real residual network implementing ModelRunner: block b computes h + W_down·relu(W_up·h). Enough structure
 * to exercise capture, replacement and propagation in the driver without a transformer runtime.
 */
class ToyRunner implements ModelRunner {
  readonly numBlocks = 3;
  readonly hiddenSize = 8;
  readonly weights = new Map<string, Tensor<'f32'>>();
  replaced: string[] = [];
  constructor(seed: number) {
    const rng = new Rng(seed);
    for (let b = 0; b < this.numBlocks; b++) {
      this.weights.set(`b${b}.up`, tensor('f32', [16, 8], rng.fillNormal(new Float32Array(128), 0, 0.3)));
      this.weights.set(`b${b}.down`, tensor('f32', [8, 16], rng.fillNormal(new Float32Array(128), 0, 0.3)));
    }
  }
  linears(block: number): LinearInfo[] {
    return [
      { name: `b${block}.up`, block, input: 'in', outFeatures: 16, inFeatures: 8 },
      { name: `b${block}.down`, block, input: 'mid', outFeatures: 8, inFeatures: 16 },
    ];
  }
  weight(name: string): Tensor<'f32'> {
    return this.weights.get(name)!;
  }
  embed(tokens: Int32Array): Float32Array {
    const h = new Float32Array(tokens.length * 8);
    tokens.forEach((t, i) => {
      for (let j = 0; j < 8; j++) h[i * 8 + j] = Math.sin(t * (j + 1));
    });
    return h;
  }
  private matmul(x: Float32Array, rows: number, w: Tensor<'f32'>): Float32Array {
    const [m, n] = w.shape as [number, number];
    const y = new Float32Array(rows * m);
    for (let r = 0; r < rows; r++)
      for (let i = 0; i < m; i++) {
        let s = 0;
        for (let j = 0; j < n; j++) s += x[r * n + j]! * w.data[i * n + j]!;
        y[r * m + i] = s;
      }
    return y;
  }
  runBlock(
    block: number,
    hidden: Float32Array,
    tokens: number,
    capture?: (k: string, x: Float32Array, rows: number) => void,
  ) {
    capture?.('in', hidden, tokens);
    const mid = this.matmul(hidden, tokens, this.weight(`b${block}.up`)).map((v) => Math.max(v, 0));
    capture?.('mid', mid, tokens);
    const out = this.matmul(mid, tokens, this.weight(`b${block}.down`));
    return hidden.map((v, i) => v + out[i]!);
  }
  replaceLinear(name: string, r: LinearReplacement): void {
    this.replaced.push(name);
    this.weights.set(name, r.tensors.weight as Tensor<'f32'>);
  }
}

/** Round to a grid of 1/4 (a real, deterministic compressor), reporting the H-weighted error. */
const roundQuarter: CompressLayerFn = (w, h) => {
  const q = tensor(
    'f32',
    w.shape,
    w.data.map((v) => Math.round(v * 4) / 4),
  );
  const [m, n] = w.shape as [number, number];
  let num = 0;
  let den = 0;
  for (let i = 0; i < m; i++)
    for (let a = 0; a < n; a++)
      for (let c = 0; c < n; c++) {
        const hac = h!.data[a * n + c]!;
        num += (q.data[i * n + a]! - w.data[i * n + a]!) * hac * (q.data[i * n + c]! - w.data[i * n + c]!);
        den += w.data[i * n + a]! * hac * w.data[i * n + c]!;
      }
  return {
    replacement: { tensors: { weight: q }, meta: {} },
    error: Math.sqrt(num / den),
    bitsPerWeight: 16,
    rank: 0,
  };
};

const windows = [Int32Array.from([1, 2, 3, 4, 5]), Int32Array.from([9, 8, 7, 6, 5, 4])];

class MemoryStore implements BlockStore {
  blocks = new Map<number, LayerResult[]>();
  async load(b: number) {
    return this.blocks.get(b) ?? null;
  }
  async save(b: number, r: LayerResult[]) {
    this.blocks.set(b, r);
  }
}

const strip = (rs: LayerResult[]) => rs.map(({ seconds: _s, ...r }) => r);

describe('compressModel', () => {
  it('compresses every layer in block order with errors in (0, 1) and reports progress', async () => {
    const runner = new ToyRunner(1);
    const phases: string[] = [];
    const res = await compressModel(runner, windows, {
      compressLayer: roundQuarter,
      onProgress: (p) => phases.push(`${p.phase}:${p.block}`),
    });
    expect(res.map((r) => r.name)).toEqual(['b0.up', 'b0.down', 'b1.up', 'b1.down', 'b2.up', 'b2.down']);
    for (const r of res) {
      expect(r.error).toBeGreaterThan(0);
      expect(r.error).toBeLessThan(1);
    }
    expect(phases[0]).toBe('capture:0');
    expect(runner.replaced).toHaveLength(6);
  });

  it('a run resumed from committed blocks gives identical results', async () => {
    const store = new MemoryStore();
    const full = await compressModel(new ToyRunner(2), windows, { compressLayer: roundQuarter, store });
    // simulate a crash after block 0: keep only block 0 in the store and start a fresh process (new runner)
    const partial = new MemoryStore();
    partial.blocks.set(0, store.blocks.get(0)!);
    const resumed = await compressModel(new ToyRunner(2), windows, {
      compressLayer: roundQuarter,
      store: partial,
    });
    expect(strip(resumed)).toEqual(strip(full));
  });

  it("'original' propagation never modifies the runner and calibrates later blocks on original inputs", async () => {
    const a = new ToyRunner(3);
    const orig = await compressModel(a, windows, { compressLayer: roundQuarter, propagate: 'original' });
    expect(a.replaced).toHaveLength(0);
    const comp = await compressModel(new ToyRunner(3), windows, { compressLayer: roundQuarter });
    expect(orig[0]!.error).toBe(comp[0]!.error); // block 0 sees the same inputs either way
    expect(orig[4]!.error).not.toBe(comp[4]!.error); // block 2 does not
  });

  it('stops with E_ABORTED when the signal fires', async () => {
    const ctl = new AbortController();
    const p = compressModel(new ToyRunner(4), windows, {
      compressLayer: (w, h, info) => {
        if (info.block === 1) ctl.abort();
        return roundQuarter(w, h, info);
      },
      signal: ctl.signal,
    });
    await expect(p).rejects.toSatisfy((e: unknown) => isCalderaError(e, 'E_ABORTED'));
  });
});
