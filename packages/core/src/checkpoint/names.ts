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

const PARTS: ReadonlySet<string> = new Set<CalderaTensorPart>([
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
]);

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
