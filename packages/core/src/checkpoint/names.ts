import { CalderaError } from '../errors.js';

/** The parts a compressed linear layer is stored as (tensor `<prefix>.caldera.<part>`). */
export type CalderaTensorPart =
  | 'Q'
  | 'Q_resid'
  | 'Q_scale'
  | 'L'
  | 'L_resid'
  | 'L_scale'
  | 'R'
  | 'R_resid'
  | 'R_scale'
  | 'L_dense'
  | 'R_dense'
  | 'L_ft'
  | 'R_ft'
  | 'SU'
  | 'SV';

/** Every part a compressed layer may have, as this reader knows them. */
export const CALDERA_TENSOR_PARTS: readonly CalderaTensorPart[] = [
  'Q',
  'Q_resid',
  'Q_scale',
  'L',
  'L_resid',
  'L_scale',
  'R',
  'R_resid',
  'R_scale',
  'L_dense',
  'R_dense',
  'L_ft',
  'R_ft',
  'SU',
  'SV',
];

const PARTS: ReadonlySet<string> = new Set<string>(CALDERA_TENSOR_PARTS);

/** Tensor name of one part of a compressed layer: `calderaTensorName('model.layers.0.mlp.up_proj', 'Q')`. */
export function calderaTensorName(prefix: string, part: CalderaTensorPart): string {
  return `${prefix}.caldera.${part}`;
}

/** Split a tensor name into `{ prefix, part }` when it names a compressed-layer part, else `null`. */
export function parseCalderaTensorName(name: string): { prefix: string; part: CalderaTensorPart } | null {
  const i = name.lastIndexOf('.caldera.');
  if (i <= 0) return null;
  const part = name.slice(i + '.caldera.'.length);
  return PARTS.has(part) ? { prefix: name.slice(0, i), part: part as CalderaTensorPart } : null;
}

/**
 * Throw `E_FORMAT` when `names` hold compressed-layer tensors (`<prefix>.caldera.*`) of a checkpoint read without the
 * `caldera.json` that describes them: "`subject` holds the CALDERA tensors of N compressed layers (e.g. '…') but no
 * `metaFile`, which describes them; `advice`". Said instead of "missing weight" for the first compressed layer.
 */
export function assertNoCalderaTensorsWithoutMeta(
  names: readonly string[],
  subject: string,
  metaFile: string,
  advice: string,
): void {
  const codes = names.filter((n) => n.includes('.caldera.'));
  if (codes.length === 0) return;
  const layers = new Set(codes.map((n) => n.slice(0, n.indexOf('.caldera.'))));
  throw new CalderaError(
    'E_FORMAT',
    `${subject} holds the CALDERA tensors of ${layers.size} compressed layer${layers.size === 1 ? '' : 's'} ` +
      `(e.g. '${codes[0]}') but no ${metaFile}, which describes them; ${advice}`,
    { details: { tensor: codes[0] } },
  );
}
