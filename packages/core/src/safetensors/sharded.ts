import { readTextFileOrFail } from '../text-file.js';
import { CalderaError } from '../errors.js';
import type { Tensor } from '../tensor.js';
import type { SafetensorsTensorInfo } from './header.js';
import { openSafetensors, type SafetensorsReader, type TensorStore } from './reader.js';
import { nodeFs, nodePath } from '../node-builtins.js';

/** The parsed `model.safetensors.index.json` of a sharded checkpoint. */
export interface SafetensorsIndex {
  /** Free-form metadata (Hugging Face writes `{ "total_size": N }`). */
  readonly metadata: Readonly<Record<string, unknown>>;
  /** Tensor name → shard file name (relative to the index's directory); an object without a prototype. */
  readonly weightMap: Readonly<Record<string, string>>;
}

/** Validate the JSON of a `model.safetensors.index.json`. `file` names it in errors. */
export function parseSafetensorsIndex(
  json: unknown,
  file = 'model.safetensors.index.json',
): SafetensorsIndex {
  if (typeof json === 'string') {
    try {
      json = JSON.parse(json);
    } catch (e) {
      throw new CalderaError('E_FORMAT', `${file}: not valid JSON (${(e as Error).message})`);
    }
  }
  const o = json as { metadata?: unknown; weight_map?: unknown };
  if (
    typeof o !== 'object' ||
    o === null ||
    typeof o.weight_map !== 'object' ||
    o.weight_map === null ||
    Array.isArray(o.weight_map) // ["x.safetensors"] read as a tensor named '0'
  ) {
    throw new CalderaError('E_FORMAT', `${file}: missing the 'weight_map' object`);
  }
  // without a prototype: a tensor named '__proto__' is an entry like any other (in `{}` it would set the prototype)
  const weightMap = Object.create(null) as Record<string, string>;
  for (const [k, v] of Object.entries(o.weight_map as Record<string, unknown>)) {
    if (
      typeof v !== 'string' ||
      v.length === 0 ||
      v.includes('/') ||
      v.includes('\\') ||
      v.startsWith('..')
    ) {
      throw new CalderaError(
        'E_FORMAT',
        `${file}: weight_map['${k}'] = ${JSON.stringify(v)} is not a shard file name`,
      );
    }
    weightMap[k] = v;
  }
  const md =
    typeof o.metadata === 'object' && o.metadata !== null ? (o.metadata as Record<string, unknown>) : {};
  return { metadata: md, weightMap };
}

/**
 * A sharded checkpoint: one logical tensor store over several safetensors shards. Shards are opened lazily,
 * the first time one of their tensors (or {@link ShardedSafetensorsReader.tensorInfo}) is needed, so opening reads
 * only the index. Create with {@link openShardedSafetensors}.
 */
export class ShardedSafetensorsReader implements TensorStore {
  readonly metadata: Readonly<Record<string, string>>;
  private readonly shards = new Map<string, Promise<SafetensorsReader>>();

  constructor(
    readonly index: SafetensorsIndex,
    private readonly openShard: (file: string) => Promise<SafetensorsReader>,
    private readonly name = 'model.safetensors.index.json',
  ) {
    this.metadata = Object.fromEntries(
      Object.entries(index.metadata).map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify(v)]),
    );
  }

  names(): string[] {
    return Object.keys(this.index.weightMap);
  }

  has(name: string): boolean {
    return Object.prototype.hasOwnProperty.call(this.index.weightMap, name);
  }

  /** Shard file names, each once, in first-use order of the weight map. */
  shardFiles(): string[] {
    return [...new Set(Object.values(this.index.weightMap))];
  }

  /** The opened reader of the shard that holds `name` (checks the shard really has it). */
  async shardFor(name: string): Promise<SafetensorsReader> {
    if (!this.has(name)) {
      throw new CalderaError('E_MISSING', `${this.name}: no tensor '${name}' in weight_map`, {
        details: { tensor: name },
      });
    }
    const file = this.index.weightMap[name]!;
    let p = this.shards.get(file);
    if (!p) {
      p = this.openShard(file);
      this.shards.set(file, p);
    }
    const r = await p;
    if (!r.has(name)) {
      throw new CalderaError(
        'E_FORMAT',
        `${this.name}: weight_map puts '${name}' in ${file}, which has no such tensor`,
        {
          details: { tensor: name, file },
        },
      );
    }
    return r;
  }

  async tensorInfo(name: string): Promise<SafetensorsTensorInfo> {
    return (await this.shardFor(name)).info(name);
  }

  async readTensor(name: string): Promise<Tensor> {
    return (await this.shardFor(name)).readTensor(name);
  }

  async readRaw(name: string): Promise<Uint8Array> {
    return (await this.shardFor(name)).readRaw(name);
  }

  /** Closes every shard opened so far, the others too when one fails to close (the first error is thrown). */
  async close(): Promise<void> {
    const all = [...this.shards.values()];
    this.shards.clear();
    const closed = await Promise.allSettled(all.map(async (p) => (await p.catch(() => null))?.close()));
    const failed = closed.find((c): c is PromiseRejectedResult => c.status === 'rejected');
    if (failed) throw failed.reason;
  }
}

/**
 * Open a sharded checkpoint. In Node pass the path of `model.safetensors.index.json` (shards are opened from
 * its directory). In the browser pass the index JSON (object or text) and `open`, which returns the bytes
 * (`ArrayBuffer`/`Blob`) of a shard by file name.
 */
export async function openShardedSafetensors(
  index: string | { json: unknown; open: (file: string) => Promise<ArrayBuffer | ArrayBufferView | Blob> },
): Promise<ShardedSafetensorsReader> {
  if (typeof index === 'string') {
    const pathMod = await nodePath();
    const text = await readTextFileOrFail(index, 'safetensors index file');
    const dir = pathMod.dirname(index);
    return new ShardedSafetensorsReader(
      parseSafetensorsIndex(text, index),
      (file) => openSafetensors(pathMod.join(dir, file)),
      index,
    );
  }
  const { json, open } = index;
  return new ShardedSafetensorsReader(parseSafetensorsIndex(json), async (file) =>
    openSafetensors(await open(file), file),
  );
}

/**
 * Open the weights of a Hugging Face style model directory (Node): `model.safetensors.index.json` when
 * present (sharded), else `model.safetensors`.
 */
export async function openSafetensorsDir(dir: string): Promise<TensorStore> {
  const fs = await nodeFs();
  const pathMod = await nodePath();
  const idx = pathMod.join(dir, 'model.safetensors.index.json');
  const exists = await fs.stat(idx).then(
    () => true,
    () => false,
  );
  if (exists) return openShardedSafetensors(idx);
  const single = pathMod.join(dir, 'model.safetensors');
  // a PyTorch checkpoint only: said so (it was "model.safetensors: cannot open (ENOENT)")
  const present = async (f: string) =>
    fs.stat(pathMod.join(dir, f)).then(
      () => true,
      () => false,
    );
  if (!(await present('model.safetensors')))
    for (const bin of ['pytorch_model.bin.index.json', 'pytorch_model.bin'])
      if (await present(bin))
        throw new CalderaError(
          'E_UNSUPPORTED',
          `${dir}: has ${bin} but no model.safetensors: PyTorch checkpoints are not read; convert it to safetensors ` +
            '(transformers: model.save_pretrained(out, safe_serialization=True))',
        );
  return openSafetensors(single);
}
