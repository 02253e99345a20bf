import { describe, expect, it } from 'vitest';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cast, isCalderaError, Rng, tensor, writeSafetensors, type Tensor } from '@caldera/core';
import { caldera, toCheckpointTensors } from '@caldera/lowrank';
import { BlockLazyRunner } from './block-runner.js';
import { blockLinearNames, parseModelConfig } from './config.js';
import { perplexity } from './eval.js';
import { loadModel } from './load.js';
import { ModelRunnerAdapter } from './runner.js';
import { randomModel } from './testing/random-model.js';

const hf = {
  architectures: ['LlamaForCausalLM'],
  hidden_size: 32,
  intermediate_size: 40,
  num_hidden_layers: 3,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 30,
  max_position_embeddings: 16,
  tie_word_embeddings: false,
};
const cfg = parseModelConfig(hf);
const { raw } = randomModel(cfg, 11);
// every block its own weights, so that a block read from the wrong index gives other numbers
const ids = Array.from({ length: 37 }, (_, i) => (i * 7 + 3) % 30);

/** A model directory of `raw` in `dtype`, tied (no lm_head.weight) or not, optionally with Qwen2 q/k/v biases. */
async function writeModel(dtype: 'f32' | 'f16' | 'bf16', tied: boolean, biases = false): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'caldera-lazy-'));
  const config = {
    ...hf,
    tie_word_embeddings: tied,
    ...(biases ? { architectures: ['Qwen2ForCausalLM'] } : {}),
  };
  await writeFile(join(dir, 'config.json'), JSON.stringify(config));
  const rng = new Rng(5);
  const t: Record<string, Tensor> = {};
  for (const [k, v] of Object.entries(raw)) t[k] = dtype === 'f32' ? v : cast(v, dtype);
  if (!tied) {
    const head = tensor('f32', [30, 32], rng.fillNormal(new Float32Array(30 * 32), 0, 0.3));
    t['lm_head.weight'] = dtype === 'f32' ? head : cast(head, dtype);
  }
  if (biases)
    for (let b = 0; b < cfg.numLayers; b++)
      for (const [p, m] of [
        ['q', 32],
        ['k', 16],
        ['v', 16],
      ] as const)
        t[`model.layers.${b}.self_attn.${p}_proj.bias`] = tensor(
          'f32',
          [m],
          rng.fillNormal(new Float32Array(m), 0, 0.2),
        );
  await writeSafetensors(join(dir, 'model.safetensors'), t);
  return dir;
}

const windowsOf = (lengths: number[]) =>
  lengths.map((n, w) => Int32Array.from({ length: n }, (_, i) => (i * 5 + w * 3 + 1) % 30));

describe('BlockLazyRunner', () => {
  const cases = [
    ['f32', false, false],
    ['f32', true, true],
    ['f16', false, false],
    ['f16', true, false],
    ['bf16', false, true],
    ['bf16', true, false],
  ] as const;

  it.each(cases)(
    '%s (tied %s, biases %s): weights, blocks and perplexity bit for bit those of loadModel',
    async (dtype, tied, biases) => {
      const dir = await writeModel(dtype, tied, biases);
      const eager = await loadModel(dir);
      const adapter = new ModelRunnerAdapter(eager.model);
      const lazy = await BlockLazyRunner.open(dir);
      try {
        // the perplexity of the source, non-overlapping (last window of 5 tokens) and overlapping windows
        for (const o of [{ context: 16 }, { context: 8, stride: 5 }, { context: 12 }]) {
          const want = await perplexity(eager.model, ids, o);
          expect(await lazy.perplexity(ids, o)).toEqual(want);
        }
        // a 1-token last window (no cache in LlamaModel.forward)
        expect(await lazy.perplexity(ids.slice(0, 17), { context: 8 })).toEqual(
          await perplexity(eager.model, ids.slice(0, 17), { context: 8 }),
        );
        expect(lazy.heldBlock).toBeNull();
        // the driver's walk: weights, captures and outputs of every block the same as the whole model's, with short
        // windows (6 rows: k_proj's products under linalg's 4096 multiply-adds, on the TypeScript kernel) and longer
        // ones (14 × 16 × 32), which runWindows also runs together: its products then reach the WebAssembly kernels
        // for each window alone too, so that running both at once sums as running each alone
        for (const [lengthsOf, together] of [
          [[6, 9], false],
          [[14, 16], true],
        ] as const) {
          const windows = windowsOf([...lengthsOf]);
          let hidden = windows.map((w) => lazy.embed(w));
          let want = windows.map((w) => adapter.embed(w));
          expect(hidden).toEqual(want);
          for (let b = 0; b < cfg.numLayers; b++) {
            expect(lazy.linears(b)).toEqual(adapter.linears(b));
            await lazy.enterBlock(b);
            for (const { name } of blockLinearNames(b))
              expect(lazy.weight(name)).toEqual(adapter.weight(name));
            const got: [string, Float32Array][] = [];
            const exp: [string, Float32Array][] = [];
            const grouped: [string, number[]][] = [];
            const stacked = Float32Array.from(hidden.flatMap((h) => [...h]));
            const outputs = together
              ? lazy.runWindows(b, stacked, [...lengthsOf], (k, x) => grouped.push([k, [...x]]))
              : null;
            hidden = hidden.map((h, w) =>
              lazy.runBlock(b, h, windows[w]!.length, (k, x) => got.push([k, x])),
            );
            want = want.map((h, w) => adapter.runBlock(b, h, windows[w]!.length, (k, x) => exp.push([k, x])));
            expect(got).toEqual(exp);
            expect(hidden).toEqual(want);
            if (together) {
              // both windows at once: the same captures with their rows together, the outputs one after another
              const byKey = (c: [string, ArrayLike<number>][]) =>
                [...new Set(c.map(([k]) => k))].map((k) => [
                  k,
                  c.filter(([j]) => j === k).flatMap(([, x]) => Array.from(x)),
                ]);
              expect(grouped).toEqual(byKey(got));
              expect(outputs).toEqual(Float32Array.from(hidden.flatMap((h) => [...h])));
            }
            lazy.leaveBlock(b);
          }
        }
      } finally {
        await lazy.close();
        await rm(dir, { recursive: true, force: true });
      }
    },
  );

  it("dtype 'f16' and 'f32' (as loadModel's): the same weights and perplexity as the model loaded with it", async () => {
    for (const [stored, dtype] of [
      ['f32', 'f16'],
      ['bf16', 'f16'],
      ['f16', 'f32'],
    ] as const) {
      const dir = await writeModel(stored, stored === 'bf16');
      const eager = await loadModel(dir, { dtype });
      const adapter = new ModelRunnerAdapter(eager.model);
      const lazy = await BlockLazyRunner.open(dir, { dtype });
      try {
        expect(await lazy.perplexity(ids, { context: 16 })).toEqual(
          await perplexity(eager.model, ids, { context: 16 }),
        );
        await lazy.enterBlock(2);
        for (const { name } of blockLinearNames(2)) expect(lazy.weight(name)).toEqual(adapter.weight(name));
      } finally {
        await lazy.close();
        await rm(dir, { recursive: true, force: true });
      }
    }
  });

  it('reads every tensor through wrapStore (the embedding on opening, a block on entering it); a non-function is E_VALUE', async () => {
    const dir = await writeModel('f16', false);
    const read: string[] = [];
    const lazy = await BlockLazyRunner.open(dir, {
      wrapStore: (store) => ({
        ...store,
        metadata: store.metadata,
        names: () => store.names(),
        has: (n) => store.has(n),
        tensorInfo: (n) => store.tensorInfo(n),
        readTensor: (n) => (read.push(n), store.readTensor(n)),
        readRaw: (n) => (read.push(n), store.readRaw(n)),
        close: () => store.close(),
      }),
    });
    try {
      expect(read).toEqual(['model.embed_tokens.weight']);
      await lazy.enterBlock(1);
      const block1 = read.slice(1);
      expect(block1.length).toBeGreaterThanOrEqual(9); // 7 linears and 2 norms
      expect(block1.every((n) => n.startsWith('model.layers.1.'))).toBe(true);
    } finally {
      await lazy.close();
    }
    await expect(BlockLazyRunner.open(dir, { wrapStore: 'no' as never })).rejects.toThrow(
      'E_VALUE: BlockLazyRunner.open: options.wrapStore must be a function, got a string',
    );
    // a view that is not a store: E_VALUE naming it (before, a TypeError from its missing close hid the error)
    await expect(BlockLazyRunner.open(dir, { wrapStore: () => null as never })).rejects.toThrow(
      'E_VALUE: BlockLazyRunner.open: what options.wrapStore returned must be a TensorStore (openSafetensors or openSafetensorsDir), got null',
    );
    await rm(dir, { recursive: true, force: true });
  });

  it('holds at most one block, reads each from its own index, and refuses a block it does not hold', async () => {
    const dir = await writeModel('f16', false);
    const events: string[] = [];
    let held = 0;
    let most = 0;
    const lazy = await BlockLazyRunner.open(dir, {
      onBlock: ({ block, event }) => {
        events.push(`${event} ${block}`);
        held += event === 'load' ? 1 : -1;
        most = Math.max(most, held);
      },
    });
    const eager = new ModelRunnerAdapter((await loadModel(dir)).model);
    try {
      expect(events).toEqual([]); // opening reads no block
      const missing = (f: () => unknown) =>
        expect(f).toThrow(expect.objectContaining({ code: 'E_MISSING' }) as Error);
      missing(() => lazy.weight('model.layers.0.mlp.up_proj'));
      missing(() => lazy.runBlock(0, new Float32Array(32), 1));
      await lazy.enterBlock(1);
      expect(lazy.heldBlock).toBe(1);
      // block 1's weights, not block 0's or 2's
      expect(lazy.weight('model.layers.1.mlp.down_proj')).toEqual(
        eager.weight('model.layers.1.mlp.down_proj'),
      );
      missing(() => lazy.weight('model.layers.0.mlp.down_proj'));
      missing(() => lazy.runBlock(2, new Float32Array(32), 1));
      await lazy.enterBlock(1); // already held: nothing read
      // entering another block releases the one held
      await lazy.enterBlock(2);
      missing(() => lazy.weight('model.layers.1.mlp.down_proj'));
      // a replaced layer is dropped with its block: entering again reads the source
      const name = 'model.layers.2.self_attn.o_proj';
      const d = caldera(lazy.weight(name), null, { rank: 2, outerIters: 1, lplrIters: 1 });
      lazy.replaceLinear(name, toCheckpointTensors(name, d));
      expect(() => lazy.weight(name)).toThrow(expect.objectContaining({ code: 'E_UNSUPPORTED' }) as Error);
      lazy.leaveBlock(2);
      lazy.leaveBlock(2); // not held: nothing
      missing(() => lazy.replaceLinear(name, toCheckpointTensors(name, d)));
      await lazy.enterBlock(2);
      expect(lazy.weight(name)).toEqual(eager.weight(name));
      // the perplexity walks every block, one at a time, releasing the one held before; its progress counts blocks
      const progress: { done: number; total: number }[] = [];
      await lazy.perplexity(ids, { context: 16, onProgress: (e) => progress.push(e) });
      expect(progress).toEqual([1, 2, 3, 4].map((done) => ({ done, total: 4 }))); // 3 blocks, then the scoring
      expect(events).toEqual([
        'load 1',
        'release 1',
        'load 2',
        'release 2',
        'load 2',
        'release 2',
        ...[0, 1, 2].flatMap((b) => [`load ${b}`, `release ${b}`]),
      ]);
      expect(most).toBe(1);
      expect(held).toBe(0);
      await expect(lazy.enterBlock(3)).rejects.toSatisfy((e: unknown) => isCalderaError(e, 'E_VALUE'));
      // concurrent entries of one block read it once; a close during a read leaves nothing held
      events.length = 0;
      await Promise.all([lazy.enterBlock(0), lazy.enterBlock(0)]);
      expect(events).toEqual(['load 0']);
      lazy.leaveBlock(0);
      const reading = expect(lazy.enterBlock(1)).rejects.toThrow(/E_VALUE: BlockLazyRunner: closed/);
      await lazy.close();
      await reading;
      expect(lazy.heldBlock).toBe(null);
    } finally {
      await lazy.close();
      await rm(dir, { recursive: true, force: true });
    }
    expect(() => lazy.embed(Int32Array.of(1))).toThrow(expect.objectContaining({ code: 'E_VALUE' }) as Error);
  });

  it('two perplexity calls at once: the second is E_VALUE saying so, the first is right (it was E_MISSING midway)', async () => {
    const dir = await writeModel('f32', false);
    const lazy = await BlockLazyRunner.open(dir);
    try {
      const alone = await lazy.perplexity(ids, { context: 4 });
      const first = lazy.perplexity(ids, { context: 4 });
      await expect(lazy.perplexity(ids, { context: 4 })).rejects.toThrow(
        'E_VALUE: BlockLazyRunner.perplexity: another perplexity of this runner is under way (one at a time)',
      );
      expect(await first).toEqual(alone);
      expect(await lazy.perplexity(ids, { context: 4 })).toEqual(alone); // free again after it
    } finally {
      await lazy.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('perplexity stops with E_ABORTED on an abort from a timer, releasing its block', async () => {
    const dir = await writeModel('f32', false);
    const lazy = await BlockLazyRunner.open(dir);
    try {
      const ctl = new AbortController();
      const onProgress = ({ done }: { done: number }) => {
        if (done !== 1) return;
        // the timer is due before the next window: only a yield to the event loop lets it fire
        setTimeout(() => ctl.abort(), 1);
        const until = performance.now() + 5;
        while (performance.now() < until);
      };
      await expect(lazy.perplexity(ids, { context: 4, signal: ctl.signal, onProgress })).rejects.toSatisfy(
        (e: unknown) => isCalderaError(e, 'E_ABORTED'),
      );
      expect(lazy.heldBlock).toBeNull();
      const aborted = new AbortController();
      aborted.abort();
      await expect(lazy.enterBlock(0, aborted.signal)).rejects.toSatisfy((e: unknown) =>
        isCalderaError(e, 'E_ABORTED'),
      );
      await expect(BlockLazyRunner.open(dir, { signal: aborted.signal })).rejects.toSatisfy((e: unknown) =>
        isCalderaError(e, 'E_ABORTED'),
      );
    } finally {
      await lazy.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
