import { rename, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  CalderaError,
  f32ArrayToBf16,
  f32ArrayToF16,
  openSafetensorsDir,
  parseCalderaTensorName,
  parseModelConfig,
  readCheckpointMeta,
  tempSuffix,
  throwIfAborted,
  toCalderaError,
  validateCalderaCheckpoint,
  writeSafetensors,
  type CalderaCheckpointMeta,
  type SafetensorsTensorInfo,
  type Tensor,
  type TensorStore,
  type WritableTensor,
} from '@caldera/core';
import { fromCheckpointTensors, reconstruct } from '@caldera/lowrank';
import { readJsonFile, readModelLayout } from '@caldera/runtime-node';
import { flagString, type Args } from '../args.js';
import { withOutputLock } from './out-lock.js';
import {
  checkOutDir,
  configJsonWithDtype,
  copyModelSideFiles,
  exists,
  makeDir,
  onStopSignals,
  outPath,
  progressFor,
} from './common.js';

export const exportHelp = `caldera export [checkpoint] [--out DIR] [--dtype f16|bf16|f32] [--json]
Dense export of a Caldera checkpoint, for tools that read Hugging Face models: the weight of each compressed layer
rebuilt whole (Q̂ + L̂·R̂ with its fine-tuned factors, rotations and scales: the matrix the runtimes apply) and
written as <layer>.weight in --dtype; every other tensor (embeddings, norms, biases) copied as stored; config.json
with torch_dtype set to --dtype, and the tokenizer and generation files. No caldera.json: the result is a plain model
directory (at f16, about the size of an f16 original). Written one layer at a time (memory: about one layer) into a
temporary directory renamed to --out when complete; an error, Ctrl-C or SIGTERM leaves nothing behind.
Without checkpoint, exports ./caldera-out/model-caldera (what 'caldera compress' writes by default).
  --out DIR      output directory, missing or empty (default: <checkpoint>-dense)
  --dtype DTYPE  f16 (default), bf16 or f32: the weights rounded to nearest (ties to even); f16 refuses a weight
                 beyond its range (±65504)
  --json         one JSON line with the result on stdout instead of a message`;

/** The dtypes `export` writes, with their safetensors and `torch_dtype` names. */
const EXPORT_DTYPES = {
  f16: { safetensors: 'F16', torch: 'float16' },
  bf16: { safetensors: 'BF16', torch: 'bfloat16' },
  f32: { safetensors: 'F32', torch: 'float32' },
} as const;
type ExportDType = keyof typeof EXPORT_DTYPES;

/**
 * The bytes of a dense weight `w` in `dtype`; `E_VALUE` naming the layer when a value is not finite (the checkpoint's
 * scales or factors overflow f32 when rebuilt: no dtype helps) or, in f16, beyond its range.
 */
function denseBytes(w: Float32Array, dtype: ExportDType, layer: string): Uint8Array {
  for (let i = 0; i < w.length; i++)
    if (!Number.isFinite(w[i]!))
      throw new CalderaError(
        'E_VALUE',
        `layer '${layer}': rebuilt weight ${w[i]} at index ${i} is not finite (its scales or factors overflow f32)`,
      );
  if (dtype === 'f32') return new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
  const bits = dtype === 'f16' ? f32ArrayToF16(w) : f32ArrayToBf16(w);
  if (dtype === 'f16')
    for (let i = 0; i < bits.length; i++)
      if ((bits[i]! & 0x7c00) === 0x7c00)
        throw new CalderaError(
          'E_VALUE',
          `layer '${layer}': weight ${w[i]} at index ${i} is beyond the range of f16 (±65504); export with --dtype bf16 or f32`,
        );
  return new Uint8Array(bits.buffer, bits.byteOffset, bits.byteLength);
}

/**
 * The tensors of the export, lazily (each is read, or rebuilt, when the writer reaches it): in the checkpoint's order,
 * a compressed layer's `P.weight` where its first `P.caldera.*` tensor was, every other tensor as stored.
 */
function exportTensors(
  store: TensorStore,
  infos: ReadonlyMap<string, SafetensorsTensorInfo>,
  meta: CalderaCheckpointMeta,
  dtype: ExportDType,
  signal: AbortSignal,
): Record<string, WritableTensor> {
  const parts = new Map<string, string[]>();
  for (const name of infos.keys()) {
    const p = parseCalderaTensorName(name);
    if (p) parts.set(p.prefix, [...(parts.get(p.prefix) ?? []), name]);
  }
  const out: Record<string, WritableTensor> = {};
  for (const [name, info] of infos) {
    const p = parseCalderaTensorName(name);
    if (!p) {
      out[name] = { dtype: info.dtype, shape: info.shape, data: () => store.readRaw(name) };
      continue;
    }
    const prefix = p.prefix;
    if (Object.prototype.hasOwnProperty.call(out, `${prefix}.weight`)) continue;
    const layer = meta.layers[prefix]!;
    out[`${prefix}.weight`] = {
      dtype: EXPORT_DTYPES[dtype].safetensors,
      shape: layer.shape,
      data: async () => {
        throwIfAborted(signal, 'export');
        const tensors: Record<string, Tensor> = {};
        for (const t of parts.get(prefix)!) tensors[t] = await store.readTensor(t);
        const w = reconstruct(fromCheckpointTensors(prefix, (n) => tensors[n], layer)).data;
        return denseBytes(w, dtype, prefix);
      },
    };
  }
  return out;
}

export async function exportCommand(a: Args): Promise<number> {
  const json = a.flags.has('json');
  const dtype = flagString(a, 'dtype', 'f16')!;
  if (!Object.prototype.hasOwnProperty.call(EXPORT_DTYPES, dtype))
    throw new CalderaError('E_VALUE', `--dtype must be f16, bf16 or f32, got '${dtype}'`);
  const dt = dtype as ExportDType;
  const src = a.positionals[0] ?? join('caldera-out', 'model-caldera');
  if (!(await exists(join(src, 'caldera.json'))))
    throw new CalderaError(
      'E_IO',
      `${src} is not a CALDERA checkpoint (no caldera.json)${a.positionals[0] ? '' : "; run 'caldera compress' first"}`,
    );
  const out = outPath(flagString(a, 'out')) ?? `${outPath(src)}-dense`;
  // before any work: writing to --out loses nothing (a dense model has no marker of its own: missing or empty only)
  await checkOutDir(out, [src], { marker: null, kind: 'a dense export' });
  // one writer of --out at a time; what a killed export left beside it (<out>.tmp-…, a model's size) is removed
  return withOutputLock(out, 'caldera export', () => writeExport(src, out, dt, json));
}

/** Write the dense export of the checkpoint `src` to `out` (missing or empty), with `<out>.lock` held. */
async function writeExport(src: string, out: string, dt: ExportDType, json: boolean): Promise<number> {
  const meta = await readCheckpointMeta(src);
  const configFile = join(src, 'config.json');
  const config = (await readJsonFile(configFile)) as Record<string, unknown>;
  parseModelConfig(config, configFile); // a config the runtimes take
  // the checkpoint's structure as the loaders check it (headers only): caldera.json and the tensors against config.json
  // (a config of fewer layers was exported with the rest silently dropped)
  await readModelLayout(src);
  const store = await openSafetensorsDir(src);
  // Ctrl-C or SIGTERM stops the write at its next tensor and removes the temporary directory
  const stop = onStopSignals();
  const bar = progressFor('export', json);
  const tmp = `${out}.tmp-${tempSuffix()}`;
  try {
    const infos = new Map<string, SafetensorsTensorInfo>();
    for (const name of store.names()) infos.set(name, await store.tensorInfo(name));
    // the tensors against caldera.json (headers only) before anything is written
    validateCalderaCheckpoint(meta, infos, src);
    const tensors = exportTensors(store, infos, meta, dt, stop.signal);
    const names = Object.keys(tensors);
    await makeDir(tmp);
    await writeFile(join(tmp, 'config.json'), configJsonWithDtype(config, EXPORT_DTYPES[dt].torch));
    await copyModelSideFiles(src, tmp); // tokenizer, chat template, generation settings (those it has)
    const t0 = performance.now();
    let done = 0;
    await writeSafetensors(join(tmp, 'model.safetensors'), tensors, {
      metadata: { format: 'pt' }, // what transformers requires of a PyTorch checkpoint
      signal: stop.signal,
      onProgress: (e) => {
        done++;
        const el = (performance.now() - t0) / 1000;
        const eta = e.bytesWritten > 0 ? (el / e.bytesWritten) * (e.totalBytes - e.bytesWritten) : undefined;
        bar.update(done, names.length, eta, e.tensor);
      },
    });
    stop.signal.throwIfAborted();
    // --out is missing or an empty directory (checked above): the complete export takes its place
    if (await exists(out)) await rmdir(out);
    await rename(tmp, out);
    bar.done();
    const bytes = (await stat(join(out, 'model.safetensors'))).size;
    const layers = Object.keys(meta.layers).length;
    if (json)
      console.log(JSON.stringify({ source: src, out, dtype: dt, layers, tensors: names.length, bytes }));
    else
      console.log(
        `wrote ${out}: ${layers} compressed layers of ${src} as dense ${dt} weights, ${names.length} tensors, ${(bytes / 1e6).toFixed(2)} MB`,
      );
    return 0;
  } catch (e) {
    bar.done();
    await rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    if (stop.signal.aborted) {
      console.error('caldera export: interrupted; nothing written');
      return stop.exitCode();
    }
    throw toCalderaError(e, `exporting ${src} to ${out}`);
  } finally {
    stop.dispose();
    await store.close();
  }
}
