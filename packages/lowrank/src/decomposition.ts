import {
  assertFunction,
  assertObject,
  assertFinite,
  CalderaError,
  contiguous,
  describeValue,
  expectedCalderaTensors,
  isFloatDType,
  f32ArrayToF16,
  f16ArrayToF32,
  NO_Q_CODEC,
  tensor,
  type CalderaCheckpointMeta,
  type CalderaLayerMeta,
  type Tensor,
} from '@caldera/core';
import { hadamardRowsInPlace } from '@caldera/linalg';
import {
  codecBits,
  codecName,
  latticeDecode,
  qCodecBits,
  type FactorBits,
  type LatticeCodes,
} from './codec.js';
import { unrotateWeight } from './rotate.js';
import { transposed } from './transpose.js';

/** A factor stored as lattice codes or, at 16 bits, as half-precision values (held here as f32 of f16 values). */
export type StoredFactor = { kind: 'lattice'; codes: LatticeCodes } | { kind: 'dense'; values: Float32Array };

/**
 * One decomposed weight `W ≈ g·diag(SV)·M_m·(Q̂ + L̂·R̂)·M_nᵀ·diag(SU)` (docs/architecture.md). Q̂ is `mp × np`, L̂ is
 * `mp × k` and R̂ is `k × np` in the rotated, globally scaled domain; L is stored transposed (`k × mp`) so that its
 * lattice groups run along m. Plain data: serialisable, no methods.
 */
export interface Decomposition {
  /** Original shape [m, n]. */
  shape: [number, number];
  /** Working (padded) shape [mp, np]. */
  padded: [number, number];
  rank: number;
  /** Global scale g = RMS(W); with an f16 factor, the power of two nearest to it (folded exactly into f16 values). */
  scale: number;
  hadamard: boolean;
  /** Sign vectors (length np and mp), ±1; null without the Hadamard transform. */
  su: Float32Array | null;
  sv: Float32Array | null;
  /** Q̂'s codes; null in a low-rank-only layer (`qBits: 0`, codec `'none'` in a checkpoint), which has rank ≥ 1. */
  q: LatticeCodes | null;
  /** Lᵀ (k × mp). */
  l: StoredFactor;
  /** R (k × np). */
  r: StoredFactor;
  /**
   * Trainable low-rank part kept in full precision (LoRA fine-tuning, docs/architecture.md): `l` is L_ft
   * `[mp, rank]`, `r` is R_ft `[rank, np]`, added as `(x'·R_ftᵀ)·L_ftᵀ` in the rotated domain (scaled by `scale`
   * like the rest). Absent or null when the layer has none. {@link withTrainableFactors} creates it.
   */
  ft?: TrainableFactors | null;
  /** Exact storage cost in bits per original weight (codes, scales, sign vectors). */
  bitsPerWeight: number;
  /** The paper's accounting: B_Q + k(B_L·m + B_R·n)/(m·n). */
  paperBitsPerWeight: number;
  /**
   * Activation-aware relative error ‖(Ŵ − W)H^½‖_F / ‖W H^½‖_F of the kept iterate (NaN for a decomposition read from
   * a checkpoint that does not record it).
   */
  error: number;
  /** Error after every sub-step, per kind. */
  errors: { LR: number[]; Q: number[] };
  seed: number;
}

/** The full-precision LoRA pair of a {@link Decomposition}: L_ft `[mp, rank]` and R_ft `[rank, np]`, row-major. */
export interface TrainableFactors {
  rank: number;
  l: Float32Array;
  r: Float32Array;
}

function factorValues(f: StoredFactor): Float32Array {
  return f.kind === 'dense' ? f.values : latticeDecode(f.codes);
}

/**
 * `E_VALUE` naming `label` when `d` has no term at all — no Q and no low-rank component (rank 0, no trainable part) —
 * which only a hand-made decomposition can be (`caldera()` refuses `qBits: 0` at rank 0, and a checkpoint may not hold
 * one): Ŵ would be all zeros, which no writer or runtime represents.
 */
export function checkDecompositionTerms(d: Decomposition, label: string): void {
  if (!d.q && d.rank + (d.ft?.rank ?? 0) === 0)
    throw new CalderaError(
      'E_VALUE',
      `${label}: no Q and no low-rank factors (rank 0): the layer would be all zeros`,
    );
}

/** Dense Q̂ + L̂R̂ in the rotated domain (mp × np), without the global scale. */
export function rotatedEstimate(d: Decomposition): Float32Array {
  assertObject(d, 'rotatedEstimate', 'd', 'a Decomposition');
  const [mp, np] = d.padded;
  const k = d.rank;
  const out = d.q ? latticeDecode(d.q) : new Float32Array(mp * np);
  if (k > 0) {
    const lt = factorValues(d.l); // k × mp
    const r = factorValues(d.r); // k × np
    for (let i = 0; i < mp; i++)
      for (let t = 0; t < k; t++) {
        const li = lt[t * mp + i]!;
        if (li === 0) continue;
        for (let j = 0; j < np; j++) out[i * np + j]! += li * r[t * np + j]!;
      }
  }
  const ft = d.ft;
  if (ft && ft.rank > 0)
    for (let i = 0; i < mp; i++)
      for (let t = 0; t < ft.rank; t++) {
        const li = ft.l[i * ft.rank + t]!;
        for (let j = 0; j < np; j++) out[i * np + j]! += li * ft.r[t * np + j]!;
      }
  return out;
}

/** The dense estimate Ŵ (m × n, f32). For tests and export; runtimes use {@link applyDecomposition}. */
export function reconstruct(d: Decomposition): Tensor<'f32'> {
  assertObject(d, 'reconstruct', 'd', 'a Decomposition');
  if (!Array.isArray(d.shape) || !Array.isArray(d.padded))
    throw new CalderaError(
      'E_VALUE',
      'reconstruct: d must be a Decomposition (from caldera() or fromCheckpointTensors), got an object without shape',
    );
  const [m, n] = d.shape;
  const [mp, np] = d.padded;
  const w = unrotateWeight(rotatedEstimate(d), mp, np, m, n, d.su, d.sv);
  for (let i = 0; i < w.length; i++) w[i]! *= d.scale;
  return tensor('f32', [m, n], w);
}

/**
 * `y = x·Ŵᵀ` for `rows` input rows (x: a `Float32Array` of rows × n values, row-major; for a core tensor pass its
 * `data`) without forming Ŵ: rotate the input, multiply by Q̂ (decoded) and by the low-rank pair, rotate the output
 * back. The reference the runtimes' fused kernels match. `E_VALUE` when `x` is not a Float32Array or `rows` not a
 * positive integer, `E_SHAPE` when `x` does not hold rows × n values.
 */
export function applyDecomposition(d: Decomposition, x: Float32Array, rows: number): Float32Array {
  assertObject(d, 'applyDecomposition', 'd', 'a Decomposition');
  if (!((x as unknown) instanceof Float32Array)) {
    const v = x as unknown;
    const given =
      typeof v === 'object' && v !== null && 'data' in v && 'shape' in v
        ? 'a tensor (pass its data)'
        : ArrayBuffer.isView(v)
          ? `a ${v.constructor.name}`
          : describeValue(v);
    throw new CalderaError(
      'E_VALUE',
      `applyDecomposition: x must be a Float32Array of rows × n values, got ${given}`,
    );
  }
  if (!Number.isInteger(rows) || rows < 1)
    throw new CalderaError('E_VALUE', `applyDecomposition: rows must be a positive integer, got ${rows}`);
  const [m, n] = d.shape;
  const [mp, np] = d.padded;
  if (x.length !== rows * n)
    throw new CalderaError('E_SHAPE', `apply: input has ${x.length} values, expected ${rows}·${n}`);
  const xr = new Float32Array(rows * np);
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < n; j++) xr[r * np + j] = d.su ? x[r * n + j]! * d.su[j]! : x[r * n + j]!;
  if (d.hadamard) hadamardRowsInPlace(xr, rows, np, { transpose: false });
  const yr = new Float32Array(rows * mp);
  if (d.q) {
    const q = latticeDecode(d.q);
    for (let r = 0; r < rows; r++)
      for (let i = 0; i < mp; i++) {
        let s = 0;
        for (let j = 0; j < np; j++) s += xr[r * np + j]! * q[i * np + j]!;
        yr[r * mp + i] = s;
      }
  }
  const k = d.rank;
  if (k > 0) {
    const lt = factorValues(d.l);
    const rf = factorValues(d.r);
    const z = new Float32Array(k);
    for (let r = 0; r < rows; r++) {
      for (let t = 0; t < k; t++) {
        let s = 0;
        for (let j = 0; j < np; j++) s += xr[r * np + j]! * rf[t * np + j]!;
        z[t] = s;
      }
      for (let i = 0; i < mp; i++) {
        let s = 0;
        for (let t = 0; t < k; t++) s += z[t]! * lt[t * mp + i]!;
        yr[r * mp + i]! += s;
      }
    }
  }
  const ft = d.ft;
  if (ft && ft.rank > 0) {
    const kf = ft.rank;
    const z = new Float32Array(kf);
    for (let r = 0; r < rows; r++) {
      for (let t = 0; t < kf; t++) {
        let s = 0;
        for (let j = 0; j < np; j++) s += xr[r * np + j]! * ft.r[t * np + j]!;
        z[t] = s;
      }
      for (let i = 0; i < mp; i++) {
        let s = 0;
        for (let t = 0; t < kf; t++) s += z[t]! * ft.l[i * kf + t]!;
        yr[r * mp + i]! += s;
      }
    }
  }
  if (d.hadamard) hadamardRowsInPlace(yr, rows, mp, { transpose: true });
  const y = new Float32Array(rows * m);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < m; i++)
      y[r * m + i] = d.scale * (d.sv ? yr[r * mp + i]! * d.sv[i]! : yr[r * mp + i]!);
  return y;
}

/**
 * The paper's bits per weight of a compressed layer from its `caldera.json` entry (see
 * {@link CalderaLayerMeta.paperBitsPerWeight}): what {@link fromCheckpointTensors} reports for a checkpoint that does
 * not record it: Q at its codec's bits (0 for a layer without Q), the quantized factors at theirs, the trainable pair at
 * 32.
 */
export function paperBitsFromMeta(
  meta: Pick<CalderaLayerMeta, 'shape' | 'rank' | 'ftRank' | 'codecs'>,
): number {
  assertObject(meta, 'paperBitsFromMeta', 'meta', "a layer's caldera.json entry");
  const [m, n] = meta.shape;
  const ft = meta.ftRank ?? 0;
  const k = meta.rank - ft;
  const b = (c: string) => (k > 0 ? codecBits(c) : 0);
  return (
    qCodecBits(meta.codecs.Q) +
    (k * (b(meta.codecs.L) * m + b(meta.codecs.R) * n) + 32 * ft * (m + n)) / (m * n)
  );
}

/** `[a, b]` with `a·b = s`, two powers of two as near each other as can be (`[s, 1]` when `s` is not a power of two). */
function splitPowerOfTwo(s: number): [number, number] {
  const e = Math.log2(s);
  if (!Number.isInteger(e)) return [s, 1];
  const a = Math.ceil(e / 2);
  return [2 ** a, 2 ** (e - a)];
}

function planeTensor(p: Uint8Array | Uint16Array, rows: number): Tensor {
  const cols = p.length / rows;
  return p instanceof Uint8Array ? tensor('u8', [rows, cols], p) : tensor('u16', [rows, cols], p);
}

/**
 * The checkpoint tensors (named `<prefix>.caldera.*`) and metadata of a decomposition; g is folded into Q's scale and
 * into the factors where it stays exact: a coded L's scale, else a coded R's, else split between the two f16 factors.
 */
export function toCheckpointTensors(
  prefix: string,
  d: Decomposition,
): { tensors: Record<string, Tensor>; meta: CalderaLayerMeta } {
  assertObject(d, 'toCheckpointTensors', 'd', 'a Decomposition');
  checkDecompositionTerms(d, `toCheckpointTensors: '${prefix}'`);
  const [mp, np] = d.padded;
  const k = d.rank;
  const p = `${prefix}.caldera.`;
  const t: Record<string, Tensor> = {};
  if (d.q) {
    t[`${p}Q`] = planeTensor(d.q.planes[0]!, mp);
    if (d.q.planes[1]) t[`${p}Q_resid`] = planeTensor(d.q.planes[1], mp);
    t[`${p}Q_scale`] = tensor('f32', [1], [d.q.scale * d.scale]);
  }
  const put = (name: 'L' | 'R', f: StoredFactor, cols: number, fold: number) => {
    if (k === 0) return;
    if (f.kind === 'dense') {
      // dense factors are stored as L [mp, k] and R [k, np] (docs/architecture.md); L is held transposed here
      const v = name === 'L' ? transposed(f.values, k, cols) : f.values.slice();
      for (let i = 0; i < v.length; i++) v[i]! *= fold;
      t[`${p}${name}_dense`] = tensor('f16', name === 'L' ? [cols, k] : [k, cols], f32ArrayToF16(v));
    } else {
      t[`${p}${name}`] = planeTensor(f.codes.planes[0]!, k);
      if (f.codes.planes[1]) t[`${p}${name}_resid`] = planeTensor(f.codes.planes[1], k);
      t[`${p}${name}_scale`] = tensor('f32', [1], [f.codes.scale * fold]);
    }
  };
  // g (a power of two with an f16 factor) goes where it is exact: into a lattice factor's f32 scale, else split between
  // two f16 factors (g whole in L made a tiny layer's L f16 subnormal: W of RMS 1e-6 moved by 10 % on the round trip)
  const [foldL, foldR] =
    d.l.kind !== 'dense' ? [d.scale, 1] : d.r.kind !== 'dense' ? [1, d.scale] : splitPowerOfTwo(d.scale);
  put('L', d.l, mp, foldL);
  put('R', d.r, np, foldR);
  const ft = d.ft && d.ft.rank > 0 ? d.ft : null;
  if (ft) {
    t[`${p}L_ft`] = tensor(
      'f32',
      [mp, ft.rank],
      ft.l.map((v) => v * d.scale),
    );
    t[`${p}R_ft`] = tensor('f32', [ft.rank, np], ft.r.slice());
  }
  if (d.su && d.sv) {
    t[`${p}SU`] = tensor('f16', [np], f32ArrayToF16(d.su));
    t[`${p}SV`] = tensor('f16', [mp], f32ArrayToF16(d.sv));
  }
  const bitsOf = (f: StoredFactor): FactorBits => (f.kind === 'dense' ? 16 : f.codes.bits);
  return {
    tensors: t,
    meta: {
      shape: d.shape,
      padded: d.padded,
      rank: k + (ft?.rank ?? 0),
      ftRank: ft?.rank ?? 0,
      hadamard: d.hadamard,
      codecs: {
        Q: d.q ? codecName(d.q.bits) : NO_Q_CODEC,
        L: codecName(bitsOf(d.l)),
        R: codecName(bitsOf(d.r)),
      },
      bitsPerWeight: d.bitsPerWeight,
      paperBitsPerWeight: d.paperBitsPerWeight,
      // NaN (a decomposition read from a checkpoint that records none) is left out: JSON has no NaN
      ...(Number.isNaN(d.error) ? {} : { error: d.error }),
    },
  };
}

/**
 * The `caldera.json` of a checkpoint whose compressed layers are `layers` (entries as {@link toCheckpointTensors}
 * makes them): its headline `bitsPerWeight` is the layers' paper accounting weighted by their m·n weights, the figure
 * `caldera compress` reports and `--bits` targets. `run` records how the layers were made (default: method
 * `'caldera'`, no options, seed 0).
 */
export function calderaCheckpointMeta(
  layers: Record<string, CalderaLayerMeta>,
  run: { method?: string; options?: Record<string, unknown>; seed?: number } = {},
): CalderaCheckpointMeta {
  assertObject(layers, 'calderaCheckpointMeta', 'layers', 'a record of layer entries');
  let bits = 0;
  let weights = 0;
  for (const l of Object.values(layers)) {
    // (bits · m) · n, the order compress and finetune summed in before this helper: the same last bit
    bits += (l.paperBitsPerWeight ?? paperBitsFromMeta(l)) * l.shape[0] * l.shape[1];
    weights += l.shape[0] * l.shape[1];
  }
  return {
    format: 'caldera',
    version: 1,
    method: run.method ?? 'caldera',
    options: run.options ?? {},
    seed: run.seed ?? 0,
    bitsPerWeight: weights > 0 ? bits / weights : 0,
    layers,
  };
}

/**
 * Rebuild a decomposition (with g folded into the scales, so `scale = 1`) from checkpoint tensors and the layer's
 * `caldera.json` entry. Where the entry records no `paperBitsPerWeight` it is computed ({@link paperBitsFromMeta});
 * where it records no `error`, `error` is NaN. Every tensor the format requires is checked first: a missing one is
 * `E_MISSING`, one of another dtype or shape `E_FORMAT` naming it (a mistyped sign vector or scale would otherwise be
 * read as garbage or fail with a RangeError), a float one with a non-finite value `E_VALUE`. A tensor may be any view
 * (an offset into a larger buffer, other strides): each is read as a contiguous copy where it is not one already.
 */
export function fromCheckpointTensors(
  prefix: string,
  get: (name: string) => Tensor | undefined,
  meta: CalderaLayerMeta,
): Decomposition {
  assertFunction(get, 'fromCheckpointTensors', 'get');
  // every tensor read as a contiguous one: a view `get` returns (an offset into a larger buffer, other strides) was
  // read from the start of its data, giving another Ŵ without a word
  const read = (name: string): Tensor | undefined => {
    const t = get(name);
    return t === undefined ? undefined : contiguous(t, `tensor '${name}'`);
  };
  const p = `${prefix}.caldera.`;
  for (const e of expectedCalderaTensors(prefix, meta)) {
    const t = read(e.name);
    if (!t) throw new CalderaError('E_MISSING', `checkpoint has no tensor '${e.name}'`);
    if (t.dtype !== e.dtype || t.shape.join() !== e.shape.join())
      throw new CalderaError(
        'E_FORMAT',
        `tensor '${e.name}' is ${t.dtype} [${t.shape.join(', ')}], expected ${e.dtype} [${e.shape.join(', ')}]`,
      );
    if (isFloatDType(t.dtype)) assertFinite(t, `tensor '${e.name}'`);
  }
  const need = (name: string): Tensor => {
    const t = read(p + name);
    if (!t) throw new CalderaError('E_MISSING', `checkpoint has no tensor '${p}${name}'`);
    return t;
  };
  const [mp, np] = meta.padded;
  const ftRank = meta.ftRank ?? 0;
  const k = meta.rank - ftRank;
  const scalar = (name: string) => Number(need(name).data[0]);
  const planes = (
    name: string,
    rows: number,
    cols: number,
    bits: FactorBits,
  ): (Uint8Array | Uint16Array)[] => {
    const check = (t: Tensor, nm: string) => {
      if (t.shape[0] !== rows || t.shape[1] !== cols / 8) {
        throw new CalderaError(
          'E_SHAPE',
          `'${p}${nm}' has shape [${t.shape.join(', ')}], expected [${rows}, ${cols / 8}]`,
        );
      }
      return t.data as Uint8Array | Uint16Array;
    };
    const out = [check(need(name), name)];
    if (bits !== 2) out.push(check(need(`${name}_resid`), `${name}_resid`));
    return out;
  };
  const qBits = qCodecBits(meta.codecs.Q);
  const factor = (name: 'L' | 'R', cols: number): StoredFactor => {
    const bits = codecBits(meta.codecs[name]);
    if (bits === 16) {
      const v = f16ArrayToF32(need(`${name}_dense`).data as Uint16Array);
      return { kind: 'dense', values: name === 'L' ? transposed(v, cols, k) : v };
    }
    return {
      kind: 'lattice',
      codes: { bits, planes: planes(name, k, cols, bits), scale: scalar(`${name}_scale`) },
    };
  };
  const ftTensor = (name: 'L_ft' | 'R_ft', shape: [number, number]): Float32Array => {
    const t = need(name);
    if (t.dtype !== 'f32' || t.shape[0] !== shape[0] || t.shape[1] !== shape[1])
      throw new CalderaError(
        'E_SHAPE',
        `'${p}${name}' is ${t.dtype} [${t.shape.join(', ')}], expected f32 [${shape.join(', ')}]`,
      );
    return t.data as Float32Array;
  };
  const ft: TrainableFactors | null =
    ftRank > 0
      ? { rank: ftRank, l: ftTensor('L_ft', [mp, ftRank]), r: ftTensor('R_ft', [ftRank, np]) }
      : null;
  const su = meta.hadamard ? f16ArrayToF32(need('SU').data as Uint16Array) : null;
  const sv = meta.hadamard ? f16ArrayToF32(need('SV').data as Uint16Array) : null;
  return {
    shape: meta.shape,
    padded: meta.padded,
    rank: k,
    scale: 1,
    hadamard: meta.hadamard,
    su,
    sv,
    q: qBits === 0 ? null : { bits: qBits, planes: planes('Q', mp, np, qBits), scale: scalar('Q_scale') },
    l: k > 0 ? factor('L', mp) : { kind: 'dense', values: new Float32Array(0) },
    r: k > 0 ? factor('R', np) : { kind: 'dense', values: new Float32Array(0) },
    ft,
    bitsPerWeight: meta.bitsPerWeight,
    paperBitsPerWeight: meta.paperBitsPerWeight ?? paperBitsFromMeta(meta),
    error: meta.error ?? NaN,
    errors: { LR: [], Q: [] },
    seed: 0,
  };
}

function sliceFactorRows(f: StoredFactor, from: number, k: number, cols: number): StoredFactor {
  if (f.kind === 'dense') return { kind: 'dense', values: f.values.slice(from * cols, k * cols) };
  const g = cols / 8;
  return {
    kind: 'lattice',
    codes: { ...f.codes, planes: f.codes.planes.map((p) => p.slice(from * g, k * g)) },
  };
}

/**
 * Prepare a decomposition for LoRA fine-tuning (algorithm brief §7.1): the first rank components of L̂ and R̂ are
 * dequantized into the full-precision trainable pair `ft` until it has `ftRank` components (clamped to the total
 * rank; components already trainable stay), and the quantized factors keep the remaining rows of their codes
 * unchanged. Q̂, the signs and the scale are untouched, and Ŵ is the same up to float rounding. Storage accounting is
 * updated: trainable components cost 32 bits per entry (they are stored as f32).
 */
export function withTrainableFactors(d: Decomposition, ftRank: number): Decomposition {
  assertObject(d, 'withTrainableFactors', 'd', 'a Decomposition');
  if (!Number.isInteger(ftRank) || ftRank < 0)
    throw new CalderaError(
      'E_VALUE',
      `withTrainableFactors: ftRank ${ftRank} must be a non-negative integer`,
    );
  const [m, n] = d.shape;
  const [mp, np] = d.padded;
  const k = d.rank;
  const have = d.ft?.rank ?? 0;
  const move = Math.max(0, Math.min(ftRank, have + k) - have);
  if (move === 0) return d;
  const kf = have + move;
  const lt = factorValues(d.l); // k × mp
  const r = factorValues(d.r); // k × np
  const l = new Float32Array(mp * kf);
  const rf = new Float32Array(kf * np);
  for (let i = 0; i < mp; i++) {
    for (let t = 0; t < have; t++) l[i * kf + t] = d.ft!.l[i * have + t]!;
    for (let t = 0; t < move; t++) l[i * kf + have + t] = lt[t * mp + i]!;
  }
  if (have) rf.set(d.ft!.r.subarray(0, have * np));
  rf.set(r.subarray(0, move * np), have * np);
  const kq = k - move;
  const bitsOf = (f: StoredFactor) => (f.kind === 'dense' ? 16 : f.codes.bits);
  const factorStore = (f: StoredFactor, rows: number, cols: number) =>
    rows === 0 ? 0 : bitsOf(f) * rows * cols + (f.kind === 'dense' ? 0 : 32);
  const bitsPerWeight =
    d.bitsPerWeight +
    (factorStore(d.l, kq, mp) -
      factorStore(d.l, k, mp) +
      factorStore(d.r, kq, np) -
      factorStore(d.r, k, np) +
      32 * move * (mp + np)) /
      (m * n);
  const paperBitsPerWeight =
    d.paperBitsPerWeight + (move * ((32 - bitsOf(d.l)) * m + (32 - bitsOf(d.r)) * n)) / (m * n);
  return {
    ...d,
    rank: kq,
    l: sliceFactorRows(d.l, move, k, mp),
    r: sliceFactorRows(d.r, move, k, np),
    ft: { rank: kf, l, r: rf },
    bitsPerWeight,
    paperBitsPerWeight,
  };
}
