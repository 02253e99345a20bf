import { describe, expect, it } from 'vitest';
import { isCalderaError, tensor } from '@caldera/core';
import {
  compressModel,
  type BlockStore,
  type CompressLayerFn,
  type CompressProgress,
  type LayerResult,
} from './driver.js';
import { accumulateHessians } from './jobs.js';
import { OneBlockRunner, ToyRunner } from './testing/toy-runner.js';

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
    // the driver passes the metadata through unread: a dense layer's entry, shaped as the checkpoint's
    replacement: {
      tensors: { weight: q },
      meta: {
        shape: [m, n],
        padded: [m, n],
        rank: 0,
        ftRank: 0,
        hadamard: false,
        codecs: { Q: 'f16', L: 'f16', R: 'f16' },
        bitsPerWeight: 16,
      },
    },
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

  it('a data-free method (needsHessian false) needs no windows: no capture, no propagation, the same layers', async () => {
    // round to nearest: the compressor gets no Hessian
    const rtn: CompressLayerFn = (w, h, info, opts) => {
      expect(h).toBeNull();
      return roundQuarter(w, eye(w.shape[1]!), info, opts);
    };
    const eye = (n: number) =>
      tensor(
        'f64',
        [n, n],
        Array.from({ length: n * n }, (_, i) => (i % (n + 1) === 0 ? 1 : 0)),
      );
    const runs: number[] = [];
    const runner = new ToyRunner(4);
    const runBlock = runner.runBlock.bind(runner);
    runner.runBlock = (b, ...rest) => {
      runs.push(b);
      return runBlock(b, ...rest);
    };
    const phases: string[] = [];
    const none = await compressModel(runner, [], {
      compressLayer: rtn,
      needsHessian: false,
      onProgress: (p) => phases.push(p.phase),
    });
    expect(runs).toEqual([]);
    expect(phases).not.toContain('capture');
    expect(phases).not.toContain('propagate');
    // the same results as with windows, which it does not read
    const given = await compressModel(new ToyRunner(4), windows, { compressLayer: rtn, needsHessian: false });
    expect(strip(none)).toEqual(strip(given));
    expect(none).toHaveLength(6);
    // a method that needs Hessians still needs windows
    await expect(compressModel(new ToyRunner(4), [], { compressLayer: roundQuarter })).rejects.toThrow(
      'E_VALUE: compressModel: no calibration windows',
    );
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

  it('enters and leaves each block in order, using only the entered one, with the same results', async () => {
    for (const propagate of ['compressed', 'original'] as const) {
      const runner = new OneBlockRunner(6);
      const res = await compressModel(runner, windows, { compressLayer: roundQuarter, propagate });
      expect(runner.events).toEqual(['enter 0', 'leave 0', 'enter 1', 'leave 1', 'enter 2', 'leave 2']);
      const plain = await compressModel(new ToyRunner(6), windows, {
        compressLayer: roundQuarter,
        propagate,
      });
      expect(strip(res)).toEqual(strip(plain));
    }
    // resumed blocks too, and accumulateHessians
    const store = new MemoryStore();
    await compressModel(new ToyRunner(6), windows, { compressLayer: roundQuarter, store });
    const resumed = new OneBlockRunner(6);
    await compressModel(resumed, windows, { compressLayer: roundQuarter, store });
    expect(resumed.events).toHaveLength(6);
    const acc = new OneBlockRunner(6);
    await accumulateHessians(acc, windows, () => undefined);
    expect(acc.events).toEqual(['enter 0', 'leave 0', 'enter 1', 'leave 1', 'enter 2', 'leave 2']);
  });

  it('runs the windows in groups through runWindows where the runner has it, without outputs where none is needed', async () => {
    /** A toy runner with runWindows (its blocks act row by row: all rows at once), logging its calls. */
    class GroupingRunner extends ToyRunner {
      log: string[] = [];
      runWindows(
        block: number,
        hidden: Float32Array,
        lengths: readonly number[],
        capture?: (k: string, x: Float32Array, rows: number) => void,
        options: { output?: boolean } = {},
      ) {
        const output = options.output ?? true;
        this.log.push(
          `${block}: [${lengths.join(', ')}]${capture ? ' capture' : ''}${output ? ' output' : ''}`,
        );
        const y = this.runBlock(
          block,
          hidden,
          lengths.reduce((a, n) => a + n, 0),
          capture,
        );
        return output ? y : null;
      }
    }
    // 5 windows of 200 rows: groups of at most 512 rows, [200, 200] and [200] twice
    const long = Array.from({ length: 5 }, (_, w) =>
      Int32Array.from({ length: 200 }, (_, i) => (i * 7 + w) % 10),
    );
    for (const propagate of ['compressed', 'original'] as const) {
      const runner = new GroupingRunner(3);
      const res = await compressModel(runner, long, { compressLayer: roundQuarter, propagate });
      const plain = await compressModel(new ToyRunner(3), long, { compressLayer: roundQuarter, propagate });
      expect(strip(res)).toEqual(strip(plain));
      const groups = (b: number, what: string) => [
        `${b}: [200, 200]${what}`,
        `${b}: [200, 200]${what}`,
        `${b}: [200]${what}`,
      ];
      // compressed: each block captured without outputs, then propagated through its compressed form (not the last);
      // original: the capture's outputs feed the next block, except the last block's, which feed nothing
      expect(runner.log).toEqual(
        propagate === 'compressed'
          ? [
              ...groups(0, ' capture'),
              ...groups(0, ' output'),
              ...groups(1, ' capture'),
              ...groups(1, ' output'),
              ...groups(2, ' capture'),
            ]
          : [...groups(0, ' capture output'), ...groups(1, ' capture output'), ...groups(2, ' capture')],
      );
    }
  });

  it('leaves the block it was in when the run fails', async () => {
    const runner = new OneBlockRunner(7);
    const p = compressModel(runner, windows, {
      compressLayer: (w, h, info, o) => {
        if (info.block === 1) throw new Error('boom');
        return roundQuarter(w, h, info, o);
      },
    });
    await expect(p).rejects.toThrow('boom');
    expect(runner.events).toEqual(['enter 0', 'leave 0', 'enter 1', 'leave 1']);
  });

  it('NaN activations fail with E_VALUE naming the block, the input and the layers that read it', async () => {
    class NaNRunner extends ToyRunner {
      override runBlock(
        block: number,
        hidden: Float32Array,
        tokens: number,
        capture?: (k: string, x: Float32Array, rows: number) => void,
      ) {
        const h = block === 1 ? hidden.map((v, i) => (i === 3 ? NaN : v)) : hidden;
        return super.runBlock(block, h, tokens, capture);
      }
    }
    await expect(compressModel(new NaNRunner(7), windows, { compressLayer: roundQuarter })).rejects.toThrow(
      /^E_VALUE: block 1, input 'in' \(b1\.up\): Hessian of size 8 is not finite: the layer's inputs \(11 rows\) held NaN or infinite values$/,
    );
  });

  it('stops with E_ABORTED when the signal fires', async () => {
    const ctl = new AbortController();
    const p = compressModel(new ToyRunner(4), windows, {
      compressLayer: (w, h, info, o) => {
        if (info.block === 1) ctl.abort();
        return roundQuarter(w, h, info, o);
      },
      signal: ctl.signal,
    });
    await expect(p).rejects.toSatisfy((e: unknown) => isCalderaError(e, 'E_ABORTED'));
  });

  it('an abort from a timer stops the run between layers, though the runner and compressor never yield', async () => {
    // everything here is synchronous and there is no store: before, the timer could only fire after the last layer
    const ctl = new AbortController();
    const done: string[] = [];
    const p = compressModel(new ToyRunner(5), windows, {
      compressLayer: (w, h, info, o) => {
        if (done.length === 0) setTimeout(() => ctl.abort(), 0);
        const until = performance.now() + 5; // the 1 ms timer is due by the next check
        while (performance.now() < until);
        done.push(info.name);
        return roundQuarter(w, h, info, o);
      },
      signal: ctl.signal,
    });
    await expect(p).rejects.toSatisfy((e: unknown) => isCalderaError(e, 'E_ABORTED'));
    expect(done.length).toBeLessThan(6);
  });

  it('passes the compressor an options object with the run signal, and an onProgress only when there is one', async () => {
    const ctl = new AbortController();
    const seen: { signal: boolean; onProgress: boolean }[] = [];
    const spy: CompressLayerFn = (w, h, info, o) => {
      seen.push({ signal: o.signal === ctl.signal, onProgress: typeof o.onProgress === 'function' });
      return roundQuarter(w, h, info, o);
    };
    await compressModel(new ToyRunner(8), windows, { compressLayer: spy, signal: ctl.signal });
    await compressModel(new ToyRunner(8), windows, { compressLayer: spy, onProgress: () => undefined });
    expect(seen.slice(0, 6)).toEqual(Array(6).fill({ signal: true, onProgress: false }));
    expect(seen.slice(6)).toEqual(Array(6).fill({ signal: false, onProgress: true }));
  });

  it('lets the last layer that reads an H overwrite it (the same H object as the earlier readers got)', async () => {
    // a gate beside up, both reading 'in' (the gate's output unused: only the H sharing matters here)
    class SharedInput extends ToyRunner {
      constructor(seed: number) {
        super(seed);
        for (let b = 0; b < this.numBlocks; b++) this.weights.set(`b${b}.gate`, this.weight(`b${b}.up`));
      }
      override linears(block: number) {
        const [up, down] = super.linears(block);
        return [up!, { ...up!, name: `b${block}.gate` }, down!];
      }
    }
    const seen: { name: string; last: boolean; h: unknown }[] = [];
    const spy: CompressLayerFn = (w, h, info, o) => {
      seen.push({ name: info.name, last: o.overwriteH, h });
      return roundQuarter(w, h, info, o);
    };
    await compressModel(new SharedInput(3), windows, { compressLayer: spy });
    expect(seen.map((s) => `${s.name} ${s.last}`).slice(0, 3)).toEqual([
      'b0.up false',
      'b0.gate true',
      'b0.down true',
    ]);
    expect(seen[1]!.h).toBe(seen[0]!.h);
    expect(seen.filter((s) => s.last).length).toBe((2 * seen.length) / 3);
    const rtnSeen: boolean[] = [];
    await compressModel(new SharedInput(3), windows, {
      compressLayer: (w, h, info, o) => {
        rtnSeen.push(o.overwriteH);
        const n = w.shape[1]!;
        const eye = tensor(
          'f64',
          [n, n],
          new Float64Array(n * n).map((_, i) => (i % (n + 1) === 0 ? 1 : 0)),
        );
        return roundQuarter(w, eye, info, o);
      },
      needsHessian: false,
    });
    expect(rtnSeen.every((x) => x === false)).toBe(true); // no H at all
  });

  it("forwards the compressor's progress as layerFraction (clamped to [0, 1]) between each layer's start and end", async () => {
    const events: CompressProgress[] = [];
    const res = await compressModel(new ToyRunner(9), windows, {
      compressLayer: (w, h, info, o) => {
        for (const f of [0.25, Number.NaN, 0.5, 1.5]) o.onProgress?.({ fraction: f });
        const until = performance.now() + 1; // a measurable time per layer, for the ETA
        while (performance.now() < until);
        return roundQuarter(w, h, info, o);
      },
      onProgress: (p) => events.push(p),
    });
    const compress = events.filter((e) => e.phase === 'compress');
    // per layer: its start (0), then 0.25, 0.5 and 1.5 clamped to 1 (NaN dropped), all before the layer is counted done
    expect(compress.map((e) => e.layerFraction)).toEqual(Array(6).fill([0, 0.25, 0.5, 1]).flat());
    compress.forEach((e, i) => {
      const layer = Math.floor(i / 4);
      expect(e.layer).toBe(res[layer]!.name);
      expect(e.block).toBe(Math.floor(layer / 2)); // the 0-based index of the block
      expect(e.layersDone).toBe(layer);
    });
    // other phases carry no fraction
    expect(events.filter((e) => e.phase !== 'compress' && e.layerFraction !== undefined)).toEqual([]);
    // the ETA counts the running layer's fraction as done: it falls within a layer
    const second = compress.filter((e) => e.layer === res[1]!.name);
    expect(second[3]!.etaSeconds!).toBeLessThan(second[0]!.etaSeconds!);
    expect(second[3]!.etaSeconds! / second[0]!.etaSeconds!).toBeCloseTo((6 - 1 - 1) / (6 - 1), 9);
  });
});
