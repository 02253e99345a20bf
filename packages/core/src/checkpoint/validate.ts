import type { DType } from '../dtype.js';
import { CalderaError, describeValue, shownValue } from '../errors.js';
import { blockLinearNames } from '../model-config.js';
import { NO_Q_CODEC, type CalderaCheckpointMeta, type CalderaLayerMeta } from './meta.js';
import {
  CALDERA_TENSOR_PARTS,
  calderaTensorName,
  parseCalderaTensorName,
  type CalderaTensorPart,
} from './names.js';

/** A tensor's dtype (tensor or safetensors spelling, e.g. `'u16'` or `'U16'`) and shape. */
export interface TensorSignature {
  readonly dtype: string;
  readonly shape: readonly number[];
}

/** One tensor a compressed layer must (or may) have. */
export interface ExpectedTensor {
  readonly name: string;
  readonly part: CalderaTensorPart;
  readonly dtype: DType;
  readonly shape: readonly number[];
}

const hasResidual = (codec: string) => codec.includes('rvq');
/** The residual plane of an RVQ codec: 4-bit codes are u16 (E8P12), 3-bit codes u8 (E81B). */
const residualDType = (codec: string): DType => (codec.includes('rvq3') ? 'u8' : 'u16');

/**
 * The tensors the checkpoint format (version 1) requires for one compressed layer. `E_VALUE` when `layer` is not
 * an object (an entry of a parsed `caldera.json`'s `layers`).
 */
export function expectedCalderaTensors(prefix: string, layer: CalderaLayerMeta): ExpectedTensor[] {
  if (layer === null || typeof layer !== 'object')
    throw new CalderaError(
      'E_VALUE',
      `expectedCalderaTensors: the layer of '${prefix}' must be its caldera.json entry, got ${describeValue(layer)}`,
    );
  const [mp, np] = layer.padded;
  const kq = layer.rank - layer.ftRank;
  const out: ExpectedTensor[] = [];
  const add = (part: CalderaTensorPart, dtype: DType, shape: number[]) =>
    out.push({ name: calderaTensorName(prefix, part), part, dtype, shape });
  if (layer.codecs.Q !== NO_Q_CODEC) {
    add('Q', 'u16', [mp, np / 8]);
    if (hasResidual(layer.codecs.Q)) add('Q_resid', residualDType(layer.codecs.Q), [mp, np / 8]);
    add('Q_scale', 'f32', [1]);
  }
  // rank 0 (LDLQ-only layers) has no low-rank factors at all
  for (const [f, dim] of kq > 0
    ? ([
        ['L', mp],
        ['R', np],
      ] as const)
    : []) {
    const codec = layer.codecs[f];
    if (codec === 'f16') {
      add(`${f}_dense`, 'f16', f === 'L' ? [mp, kq] : [kq, np]);
    } else {
      add(f, 'u16', [kq, dim / 8]);
      add(`${f}_scale`, 'f32', [1]);
      if (hasResidual(codec)) add(`${f}_resid`, residualDType(codec), [kq, dim / 8]);
    }
  }
  if (layer.ftRank > 0) {
    add('L_ft', 'f32', [mp, layer.ftRank]);
    add('R_ft', 'f32', [layer.ftRank, np]);
  }
  if (layer.hadamard) {
    add('SU', 'f16', [np]);
    add('SV', 'f16', [mp]);
  }
  return out;
}

/**
 * The signature of tensor `name` in `tensors`, `undefined` when it has none. `E_VALUE` when its entry is not a dtype
 * (a string) and a shape (an array), e.g. `{ dtype: undefined }` (a TypeError from `dtype.toLowerCase()` before).
 */
function signatureAt(
  tensors: ReadonlyMap<string, TensorSignature>,
  name: string,
): TensorSignature | undefined {
  const t = tensors.get(name) as unknown;
  if (t === undefined) return undefined;
  const { dtype, shape } = (t ?? {}) as { dtype?: unknown; shape?: unknown };
  if (t === null || typeof t !== 'object' || typeof dtype !== 'string' || !Array.isArray(shape))
    throw new CalderaError(
      'E_VALUE',
      `validateCalderaCheckpoint: tensors['${name}'] must be a dtype (a string) and a shape (an array), got ${
        t === null || typeof t !== 'object'
          ? describeValue(t)
          : typeof dtype !== 'string'
            ? `dtype ${shownValue(dtype)}`
            : `shape ${shownValue(shape)}`
      }`,
    );
  return t as TensorSignature;
}

/**
 * Check a checkpoint's tensors against its `caldera.json`: every required part present with the right
 * dtype and shape, no `P.weight` left beside a compressed layer, `P.bias` of shape `[m]` if present, and
 * no `.caldera.` tensor of a layer the metadata does not list. Throws `E_FORMAT` listing every problem
 * (`details.problems`). `tensors` maps names to dtype/shape (a safetensors header's entries, or tensors). `E_VALUE`
 * when `meta` is not a parsed `caldera.json` (an object with `layers`; see `parseCalderaMeta`), `tensors` is
 * not an object (null, undefined), or an entry it is checked by is not a dtype (a string) and a shape (an array).
 */
export function validateCalderaCheckpoint(
  meta: CalderaCheckpointMeta,
  tensors: ReadonlyMap<string, TensorSignature> | Readonly<Record<string, TensorSignature>>,
  file = 'model.safetensors',
): void {
  if (meta === null || typeof meta !== 'object' || meta.layers === null || typeof meta.layers !== 'object')
    throw new CalderaError(
      'E_VALUE',
      `validateCalderaCheckpoint: meta must be a parsed caldera.json with its layers (see parseCalderaMeta), got ${
        meta === null || typeof meta !== 'object'
          ? describeValue(meta)
          : `layers ${describeValue(meta.layers)}`
      }`,
    );
  if (tensors === null || typeof tensors !== 'object')
    throw new CalderaError(
      'E_VALUE',
      `validateCalderaCheckpoint: tensors must be a Map or a record of tensor names to dtype and shape, got ${describeValue(tensors)}`,
    );
  const map: ReadonlyMap<string, TensorSignature> =
    tensors instanceof Map ? tensors : new Map(Object.entries(tensors as Record<string, TensorSignature>));
  const problems: string[] = [];
  const fmt = (s: readonly number[]) => `[${s.join(', ')}]`;
  for (const [prefix, layer] of Object.entries(meta.layers)) {
    for (const e of expectedCalderaTensors(prefix, layer)) {
      const t = signatureAt(map, e.name);
      if (!t) problems.push(`missing ${e.name} (${e.dtype} ${fmt(e.shape)})`);
      else {
        if (t.dtype.toLowerCase() !== e.dtype) problems.push(`${e.name} is ${t.dtype}, expected ${e.dtype}`);
        if (fmt(t.shape) !== fmt(e.shape))
          problems.push(`${e.name} has shape ${fmt(t.shape)}, expected ${fmt(e.shape)}`);
      }
    }
    const bias = signatureAt(map, `${prefix}.bias`);
    if (bias && fmt(bias.shape) !== fmt([layer.shape[0]])) {
      problems.push(`${prefix}.bias has shape ${fmt(bias.shape)}, expected [${layer.shape[0]}]`);
    }
  }
  problems.push(...strayCalderaTensors(meta, map.keys()));
  if (problems.length > 0) {
    throw new CalderaError('E_FORMAT', `${file} does not match caldera.json: ${problems.join('; ')}`, {
      details: { file, problems },
    });
  }
}

/**
 * The tensors among `names` that `caldera.json` (`meta`) does not account for, each as a problem: a `.caldera.` tensor
 * of a layer it does not list, or one that its entry has no part for (L and R of a layer of rank 0, SU and SV without
 * `hadamard`, a residual plane its codec lacks), and a dense `P.weight` beside compressed layer P. Each means that the
 * metadata and the tensors disagree (an edited caldera.json, files of two checkpoints mixed): a loader that ignored
 * them would compute with other weights than the file holds.
 */
export function strayCalderaTensors(meta: CalderaCheckpointMeta, names: Iterable<string>): string[] {
  const problems: string[] = [];
  const listed = (prefix: string) =>
    Object.prototype.hasOwnProperty.call(meta.layers, prefix) ? meta.layers[prefix] : undefined;
  for (const name of names) {
    if (name.endsWith('.weight') && listed(name.slice(0, -'.weight'.length)))
      problems.push(`${name} is present although the layer is compressed`);
    const p = parseCalderaTensorName(name);
    if (!p) {
      // `<prefix>.caldera.<part>` of a part this reader does not know (a newer format's, a typo): taken for a plain
      // tensor, it was ignored by the loaders and copied by export into a "dense" model nothing could load
      const at = name.lastIndexOf('.caldera.');
      if (at > 0)
        problems.push(
          `${name} is a part '${name.slice(at + '.caldera.'.length)}' this reader does not know (it reads ` +
            `${CALDERA_TENSOR_PARTS.join(', ')})`,
        );
      continue;
    }
    const layer = listed(p.prefix);
    if (!layer) problems.push(`${name} belongs to layer '${p.prefix}', which caldera.json does not list`);
    else if (!expectedCalderaTensors(p.prefix, layer).some((e) => e.name === name))
      problems.push(
        `${name} is not part of layer '${p.prefix}' as caldera.json describes it (rank ${layer.rank}, ftRank ` +
          `${layer.ftRank}, hadamard ${layer.hadamard}, codecs ${JSON.stringify(layer.codecs)})`,
      );
  }
  return problems;
}

/**
 * For loaders: `E_FORMAT` listing every tensor of {@link strayCalderaTensors} (`details.problems`), naming `where`
 * (the checkpoint) and `metaFile` (its caldera.json).
 */
export function assertNoStrayCalderaTensors(
  meta: CalderaCheckpointMeta,
  names: Iterable<string>,
  where: string,
  metaFile = 'caldera.json',
): void {
  const problems = strayCalderaTensors(meta, names);
  if (problems.length > 0)
    throw new CalderaError(
      'E_FORMAT',
      `${where}: the tensors do not match ${metaFile}: ${problems.join('; ')}`,
      { details: { problems } },
    );
}

/**
 * For loaders: `E_SHAPE` when `caldera.json` gives compressed layer `name` (`layer`) another shape than the config's
 * `[m, n]`, checked before its tensors are read against it. `prefix` leads the message (e.g. the model's folder and
 * ': ').
 */
export function assertCalderaLayerShape(
  name: string,
  layer: Pick<CalderaLayerMeta, 'shape'>,
  [m, n]: readonly [number, number],
  prefix = '',
): void {
  if (layer.shape[0] !== m || layer.shape[1] !== n)
    throw new CalderaError(
      'E_SHAPE',
      `${prefix}caldera.json gives layer '${name}' shape [${layer.shape.join(', ')}], config.json implies [${m}, ${n}]`,
    );
}

/**
 * For loaders: `E_FORMAT` when `caldera.json` (`meta`) lists a layer that is not a linear layer of a model of
 * `numLayers` blocks (a typo, a block past the config's `num_hidden_layers`): such an entry would otherwise be ignored
 * and the layer it meant loaded dense or reported missing. `where` names the checkpoint, `metaFile` its caldera.json.
 */
export function assertCalderaLayersExist(
  meta: CalderaCheckpointMeta,
  numLayers: number,
  where: string,
  metaFile = 'caldera.json',
): void {
  const linear = new Set(
    Array.from({ length: numLayers }, (_, b) => blockLinearNames(b).map((l) => l.name)).flat(),
  );
  const stray = Object.keys(meta.layers).filter((name) => !linear.has(name));
  if (stray.length > 0)
    throw new CalderaError(
      'E_FORMAT',
      `${where}: ${metaFile} lists ${stray.map((n) => `layer '${n}'`).join(', ')}, which ${
        stray.length === 1 ? 'is' : 'are'
      } not a linear layer of the model (${numLayers} blocks; e.g. 'model.layers.0.self_attn.q_proj')`,
      { details: { layers: stray } },
    );
}
