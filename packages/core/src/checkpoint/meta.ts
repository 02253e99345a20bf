import { CalderaError } from '../errors.js';

/**
 * Codec names used in `caldera.json` (`codecs.Q/L/R`). The type admits other strings (a later format version may add
 * codecs), but {@link parseCalderaMeta} refuses any this reader cannot decode.
 */
export type CalderaCodecName = 'e8p12' | 'e8p12-rvq3' | 'e8p12-rvq4' | 'f16' | 'none' | (string & {});

/** The lattice codecs format version 1 defines (E8P, plus an RVQ residual stage for 3 and 4 bits). */
const LATTICE_CODECS: readonly string[] = ['e8p12', 'e8p12-rvq3', 'e8p12-rvq4'];
/**
 * The codec of Q in a low-rank-only layer (`caldera compress --method lplr`): the layer stores no Q tensors and is
 * L̂·R̂ alone (its rank, with the trainable part, is at least 1).
 */
export const NO_Q_CODEC = 'none';
/** The codecs of Q: lattice codes, or none. */
const Q_CODECS: readonly string[] = [...LATTICE_CODECS, NO_Q_CODEC];
/** The codecs of L and R: lattice codes, or `f16` (a dense factor). */
const LR_CODECS: readonly string[] = [...LATTICE_CODECS, 'f16'];

/** Per-linear-layer entry of `caldera.json` (`layers["<prefix>"]`). */
export interface CalderaLayerMeta {
  /** Source weight shape `[m, n]` (out, in). */
  shape: [number, number];
  /** Padded shape `[mp, np]` used in the rotated domain (multiples of 8, ≥ shape). */
  padded: [number, number];
  /** Total rank k of L·R (k' = rank − ftRank are quantized). */
  rank: number;
  /** Rank of the trainable LoRA part `L_ft`, `R_ft` (0 = none). */
  ftRank: number;
  /** Whether randomized Hadamard incoherence was applied (then `SU`, `SV` are stored). */
  hadamard: boolean;
  /**
   * Codec of each part. `'f16'` for L or R means the factor is stored dense (`L_dense`/`R_dense`); a codec
   * containing `rvq` has a residual stage (`L_resid`/`R_resid`); `'none'` ({@link NO_Q_CODEC}) for Q means the layer
   * has no Q (low-rank only, rank ≥ 1).
   */
  codecs: { Q: CalderaCodecName; L: CalderaCodecName; R: CalderaCodecName };
  /** Bits per weight of this layer: every stored bit (codes, scales, sign vectors) over the m·n source weights. */
  bitsPerWeight: number;
  /**
   * Bits per weight in the paper's accounting, `B_Q + (k'·(B_L·m + B_R·n) + 32·ftRank·(m + n)) / (m·n)` (k' = rank −
   * ftRank quantized components, 16 bits for a dense factor): what `caldera compress` reports. Written by the
   * compressor; optional for other writers (readers then compute it from the fields above).
   */
  paperBitsPerWeight?: number;
  /** Relative reconstruction error reported by the compressor (optional diagnostics). */
  error?: number;
}

/** The `caldera.json` of a compressed checkpoint (format version 1, see docs/architecture.md). */
export interface CalderaCheckpointMeta {
  format: 'caldera';
  version: 1;
  /** Compression method, e.g. `'caldera'`. */
  method: string;
  /** The options the compressor ran with (free-form, serialisable). */
  options: Record<string, unknown>;
  /** The seed of the run. */
  seed: number;
  /** Average bits per weight over the compressed layers. */
  bitsPerWeight: number;
  /** Compressed linear layers by Hugging Face prefix (e.g. `model.layers.0.self_attn.q_proj`). */
  layers: Record<string, CalderaLayerMeta>;
}

/** The file name of the metadata inside a checkpoint directory. */
export const CALDERA_META_FILE = 'caldera.json';

/**
 * The fields of a layer entry in format version 1. A reader refuses others: a field it does not know might change how
 * the layer's tensors decode, and a tool that rewrites `caldera.json` (`caldera finetune`) would drop it unsaid.
 */
const LAYER_FIELDS: readonly string[] = [
  'shape',
  'padded',
  'rank',
  'ftRank',
  'hadamard',
  'codecs',
  'bitsPerWeight',
  'paperBitsPerWeight',
  'error',
];

/** The parts of a layer's `codecs`. */
const CODEC_PARTS: readonly string[] = ['Q', 'L', 'R'];

/** The keys of `o` that are not in `known`, JSON-quoted (for a message). */
const unknownKeys = (o: object, known: readonly string[]): string[] =>
  Object.keys(o)
    .filter((k) => !known.includes(k))
    .map((k) => JSON.stringify(k));

const isInt = (x: unknown, min = 0): x is number =>
  typeof x === 'number' && Number.isSafeInteger(x) && x >= min;
const isPair = (x: unknown, min: number): x is [number, number] =>
  Array.isArray(x) && x.length === 2 && isInt(x[0], min) && isInt(x[1], min);

/**
 * Check that a parsed `caldera.json` has the version-1 structure; returns it typed. Throws
 * `E_FORMAT` listing every problem (with `details.problems`), `file` naming the source.
 */
export function parseCalderaMeta(json: unknown, file = CALDERA_META_FILE): CalderaCheckpointMeta {
  const problems: string[] = [];
  const o = json as Partial<CalderaCheckpointMeta> | null;
  if (typeof o !== 'object' || o === null || Array.isArray(o)) {
    throw new CalderaError('E_FORMAT', `${file}: not a JSON object`);
  }
  // another format or version is said alone: the version-1 checks of each layer that followed it were kilobytes of
  // problems that only restated it
  if (o.format !== 'caldera')
    throw new CalderaError('E_FORMAT', `${file}: format is ${JSON.stringify(o.format)}, expected "caldera"`, {
      details: { problems: [`format is ${JSON.stringify(o.format)}`] },
    });
  if (o.version !== 1) {
    const newer = typeof o.version === 'number' && Number.isInteger(o.version) && o.version > 1;
    const problem = `version is ${JSON.stringify(o.version)}, expected 1 (this reader's format)`;
    throw new CalderaError(
      'E_FORMAT',
      `${file}: ${problem}` +
        (newer
          ? ': the checkpoint was written by a newer Caldera; read it with a version that knows its format'
          : ''),
      { details: { problems: [problem] } },
    );
  }
  if (typeof o.method !== 'string') problems.push('method is not a string');
  if (typeof o.options !== 'object' || o.options === null) problems.push('options is not an object');
  if (typeof o.seed !== 'number') problems.push('seed is not a number');
  if (typeof o.bitsPerWeight !== 'number') problems.push('bitsPerWeight is not a number');
  if (typeof o.layers !== 'object' || o.layers === null || Array.isArray(o.layers)) {
    problems.push('layers is not an object');
  } else {
    for (const [p, l] of Object.entries(o.layers as Record<string, Partial<CalderaLayerMeta>>)) {
      const at = `layers["${p}"]`;
      if (typeof l !== 'object' || l === null) {
        problems.push(`${at} is not an object`);
        continue;
      }
      for (const key of unknownKeys(l, LAYER_FIELDS))
        problems.push(`${at} has unknown field ${key} (format version 1 defines ${LAYER_FIELDS.join(', ')})`);
      if (!isPair(l.shape, 1)) problems.push(`${at}.shape ${JSON.stringify(l.shape)} is not [m, n]`);
      if (!isPair(l.padded, 8) || l.padded[0] % 8 !== 0 || l.padded[1] % 8 !== 0) {
        problems.push(`${at}.padded ${JSON.stringify(l.padded)} is not [mp, np] in multiples of 8`);
      } else if (isPair(l.shape, 1) && (l.padded[0] < l.shape[0] || l.padded[1] < l.shape[1])) {
        problems.push(`${at}.padded [${l.padded.join(', ')}] is smaller than shape [${l.shape.join(', ')}]`);
      }
      if (!isInt(l.rank)) problems.push(`${at}.rank is not a non-negative integer`);
      if (!isInt(l.ftRank) || (isInt(l.rank) && l.ftRank > l.rank))
        problems.push(`${at}.ftRank must be in [0, rank]`);
      if (typeof l.hadamard !== 'boolean') problems.push(`${at}.hadamard is not a boolean`);
      const c = l.codecs as Record<string, unknown> | undefined;
      const extraParts = typeof c === 'object' && c !== null ? unknownKeys(c, CODEC_PARTS) : [];
      if (typeof c !== 'object' || c === null || !CODEC_PARTS.every((k) => typeof c[k] === 'string')) {
        problems.push(`${at}.codecs is not { Q, L, R } codec names`);
      } else if (extraParts.length > 0)
        problems.push(
          `${at}.codecs has unknown parts ${extraParts.join(', ')} (format version 1 defines Q, L, R)`,
        );
      else if (c.Q === 'f16') problems.push(`${at}.codecs.Q cannot be dense`);
      else
        for (const k of ['Q', 'L', 'R'] as const) {
          const known = k === 'Q' ? Q_CODECS : LR_CODECS;
          if (!known.includes(c[k] as string))
            problems.push(
              `${at}.codecs.${k} is unknown codec '${c[k] as string}' (known: ${known.join(', ')})`,
            );
        }
      if (c?.Q === NO_Q_CODEC && isInt(l.rank) && l.rank === 0)
        problems.push(`${at} has no Q (codecs.Q '${NO_Q_CODEC}') and rank 0: it would be all zeros`);
      if (typeof l.bitsPerWeight !== 'number') problems.push(`${at}.bitsPerWeight is not a number`);
      if (l.paperBitsPerWeight !== undefined && typeof l.paperBitsPerWeight !== 'number')
        problems.push(`${at}.paperBitsPerWeight is not a number`);
      if (l.error !== undefined && typeof l.error !== 'number') problems.push(`${at}.error is not a number`);
    }
  }
  if (problems.length > 0) {
    throw new CalderaError('E_FORMAT', `${file}: ${problems.join('; ')}`, { details: { file, problems } });
  }
  return o as CalderaCheckpointMeta;
}
