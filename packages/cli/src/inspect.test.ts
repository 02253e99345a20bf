import { describe, expect, it } from 'vitest';
import {
  closeSync,
  cpSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { blockLinearNames, loadModel } from '@caldera/runtime-node';
import { openSafetensors } from '@caldera/core';
import { fastCompressSetup, runCli } from './test-cli.js';
import { writeTinyModel } from './test-models.js';

const { tmp, fast: FAST } = fastCompressSetup('caldera-inspect-');
const run = (args: string[]) => runCli(args, 120_000);

/** `caldera inspect dir --json`, parsed. */
function inspectJson(dir: string) {
  const r = run(['inspect', dir, '--json']);
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Record<string, unknown> & { layers: Record<string, unknown>[] };
}

/**
 * Bytes of the distinct `ArrayBuffer`s (WebAssembly memories' included) reachable from `roots` through own properties:
 * what loaded objects hold, measured independently of the memory plan (as runtime-node's `testing/held-bytes.ts`).
 */
function heldBytes(...roots: unknown[]): number {
  const seen = new Set<object>();
  const buffers = new Set<ArrayBufferLike>();
  const visit = (v: unknown): void => {
    if (v === null || typeof v !== 'object' || seen.has(v)) return;
    seen.add(v);
    if (ArrayBuffer.isView(v)) buffers.add(v.buffer);
    else if (v instanceof ArrayBuffer) buffers.add(v);
    else if (v instanceof WebAssembly.Memory) buffers.add(v.buffer);
    else for (const x of Object.values(v)) visit(x);
  };
  for (const r of roots) visit(r);
  return [...buffers].reduce((s, b) => s + b.byteLength, 0);
}

/**
 * What `inspect` reported when it loaded the model (runtime-node's `loadModel`): the layers' storage as the loaded
 * layers count it (a dense layer in the file: its stored dtype's bytes), the config as the loader parsed it, and the
 * memory the loaded weights hold, measured on them (every layer's arrays and kernel memory, exact to the byte).
 */
async function loadedReport(dir: string, stored: 'f32' | 'f16' | 'bf16') {
  const { model, config, calderaMeta } = await loadModel(dir);
  const names = Array.from({ length: config.numLayers }, (_, b) =>
    blockLinearNames(b).map((l) => l.name),
  ).flat();
  const size = { f32: 4, f16: 2, bf16: 2 }[stored];
  let linearBytes = 0;
  const layers = Array.from({ length: config.numLayers }, (_, b) =>
    blockLinearNames(b).map(({ name }) => {
      const l = model.linear(name);
      const meta = calderaMeta?.layers[name];
      const bytes = meta ? l.weightBytes : l.inFeatures * l.outFeatures * size;
      linearBytes += bytes;
      return {
        name,
        shape: `${l.outFeatures}x${l.inFeatures}`,
        kind: meta ? 'caldera' : stored,
        rank: meta?.rank ?? null,
        bitsPerWeight: Number(((bytes * 8) / (l.inFeatures * l.outFeatures)).toFixed(4)),
        // the paper's accounting from the shapes, ranks and widths: 2 + k·(4m + 4n)/(m·n) for Q 2-bit, L and R 4-bit
        paperBitsPerWeight: meta
          ? Number(
              (
                2 +
                (meta.rank * (4 * l.outFeatures + 4 * l.inFeatures)) / (l.outFeatures * l.inFeatures)
              ).toFixed(4),
            )
          : null,
        error: meta?.error ?? null,
      };
    }),
  ).flat();
  return {
    format: calderaMeta ? 'caldera' : 'huggingface',
    paperBitsPerWeight: calderaMeta?.bitsPerWeight ?? null,
    config: JSON.parse(JSON.stringify(config)),
    linearBytes,
    // the layers together: their arrays, and the kernel arenas they share counted once
    linearMemoryBytes: heldBytes(...names.map((name) => model.linear(name))),
    memoryBytes: heldBytes(model.weights),
    layers,
  };
}

/** Overwrite the tensor data of every safetensors file in `dir` (not the headers) with 0xff bytes: NaN as floats. */
function corruptTensorData(dir: string): void {
  for (const f of readdirSync(dir).filter((f) => f.endsWith('.safetensors'))) {
    const fd = openSync(join(dir, f), 'r+');
    try {
      const len = Buffer.alloc(8);
      readSync(fd, len, 0, 8, 0);
      const start = 8 + Number(len.readBigUInt64LE());
      const size = statSync(join(dir, f)).size;
      writeSync(fd, Buffer.alloc(size - start, 0xff), 0, size - start, start);
    } finally {
      closeSync(fd);
    }
  }
}

/** The tensor entries of every safetensors file of `dir` (their headers). */
async function safetensorsHeaders(dir: string) {
  const entries = [];
  for (const f of readdirSync(dir).filter((f) => f.endsWith('.safetensors'))) {
    const r = await openSafetensors(join(dir, f));
    entries.push(...r.header.tensors);
    await r.close();
  }
  return entries;
}

describe('caldera inspect reads no tensor data', () => {
  it('reports what it reported from the loaded model, for dense f32/f16/bf16, sharded, Qwen2 and compressed models', async () => {
    const models: [string, 'f32' | 'f16' | 'bf16'][] = [
      [(await writeTinyModel(join(tmp, 'f32'), { seed: 1 })).dir, 'f32'],
      [(await writeTinyModel(join(tmp, 'f16'), { dtype: 'f16', tied: true, seed: 2 })).dir, 'f16'],
      [(await writeTinyModel(join(tmp, 'bf16'), { dtype: 'bf16', shards: 2, seed: 3 })).dir, 'bf16'],
      [(await writeTinyModel(join(tmp, 'qwen2'), { qwen2BiasStd: 0.5, seed: 4 })).dir, 'f32'],
    ];
    const ckpt = join(tmp, 'qwen2-caldera');
    const c = run(['compress', models[3]![0], '--out', ckpt, ...FAST, '--json']);
    expect(c.status, c.stderr).toBe(0);
    models.push([ckpt, 'f32']);
    for (const [dir, stored] of models) {
      const info = inspectJson(dir);
      expect(info, dir).toMatchObject(await loadedReport(dir, stored));
      // every parameter of the source model (the Qwen2 models' q/k/v biases were left out), and a checkpoint's linear
      // layers as their tensors' bytes in the file
      const headers = await safetensorsHeaders(dir);
      const elements = (t: { shape: readonly number[] }) => t.shape.reduce((p, d) => p * d, 1);
      if (!dir.endsWith('-caldera'))
        expect(info.parameters, dir).toBe(headers.reduce((s, t) => s + elements(t), 0));
      else
        expect(info.linearBytes, dir).toBe(
          headers
            .filter((t) => t.name.includes('.caldera.') || /_proj\.weight$/.test(t.name))
            .reduce((s, t) => s + t.dataOffsets[1] - t.dataOffsets[0], 0),
        );
      expect(info.fileBytes).toBe(
        readdirSync(dir)
          .filter((f) => f.endsWith('.safetensors'))
          .reduce((s, f) => s + statSync(join(dir, f)).size, 0),
      );
    }
    // a caldera.json without the per-layer paperBitsPerWeight (optional: readers compute it): the same figures (null)
    const bare = join(tmp, 'qwen2-caldera-nopaper');
    cpSync(ckpt, bare, { recursive: true });
    const meta = JSON.parse(readFileSync(join(bare, 'caldera.json'), 'utf8'));
    for (const l of Object.values(meta.layers) as Record<string, unknown>[]) delete l.paperBitsPerWeight;
    writeFileSync(join(bare, 'caldera.json'), JSON.stringify(meta));
    expect(inspectJson(bare).layers).toEqual(inspectJson(ckpt).layers);
  }, 120_000);

  it('inspects a model whose tensor data is garbage (NaN) after intact headers, which the loader refuses', async () => {
    for (const [name, options] of [
      ['dense', { dtype: 'bf16', shards: 2, seed: 5 }],
      ['to-compress', { seed: 6 }],
    ] as const) {
      let dir = (await writeTinyModel(join(tmp, name), options)).dir;
      if (name === 'to-compress') {
        const c = run(['compress', dir, '--out', `${dir}-caldera`, ...FAST, '--json']);
        expect(c.status, c.stderr).toBe(0);
        dir = `${dir}-caldera`;
      }
      const bad = `${dir}-bad`;
      cpSync(dir, bad, { recursive: true });
      corruptTensorData(bad);
      await expect(loadModel(bad), bad).rejects.toThrow(/E_VALUE: .*(not finite|non-finite)/);
      const { path, ...want } = inspectJson(dir);
      expect(path).toBe(dir);
      expect(inspectJson(bad)).toEqual({ path: bad, ...want });
      const text = run(['inspect', bad]);
      expect(text.status, text.stderr).toBe(0);
      expect(text.stdout.replace(bad, dir)).toBe(run(['inspect', dir]).stdout);
    }
  }, 120_000);
});
