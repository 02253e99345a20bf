/**
 * WGSL sources of the runtime's kernels. Every kernel computes in f32; f16 and bf16 weights are stored two per `u32`
 * and read with `unpack2x16float` (f16, core WGSL) or a shift and a mask (bf16, {@link unpackBf16Wgsl}), so no
 * `shader-f16` feature is needed for either. Workgroups are 256 invocations (the
 * WebGPU default limit; the kernels in which one workgroup computes a whole vector take their count as `wg`). Matrix–vector kernels give each output row 32 lanes that stride over the row and reduce
 * in workgroup memory, 8 rows per workgroup.
 *
 * Batches: every kernel except argmax processes row `r = workgroup_id.y` of a batch of activation vectors stored
 * back to back (row r of an `n`-vector at offset `r·n`, or at a row stride and offset the kernel takes, where
 * several layers' vectors share a row), so a launch recorded once runs for 1 token (decode) or T
 * prompt tokens (prefill) by dispatching T workgroups along y. Token r sits at position `step.pos + r`;
 * `step.len = step.pos + T`.
 */
import { CalderaError, shownValue } from '@caldera/core';
import { hadamardBase } from '@caldera/linalg';

/**
 * Invocations per workgroup of every kernel, by default also of those in which one workgroup computes a whole vector
 * (see `Kernels.vectorWorkgroup`).
 */
export const WG = 256;
/** Output rows per workgroup of the matrix–vector kernels (32 lanes each). */
export const ROWS_PER_WG = 8;

/**
 * `body(c)` for c = 0 … count − 1, one after another: a loop over an invocation's `count` values written out, so that
 * a GPU compiler issues their memory reads together (a loop that waits for each read left one-workgroup kernels
 * latency-bound on an H200, measured 2026-12-04).
 */
function unrolled(count: number, body: (c: number) => string, sep = '\n    '): string {
  return Array.from({ length: count }, (_, c) => body(c)).join(sep);
}

const STEP = /* wgsl */ `
struct Step { pos: u32, len: u32, token: u32, pad: u32 }
@group(0) @binding(0) var<uniform> step: Step;`;

/**
 * RoPE (Hugging Face rotate-half) of one pair `(x1, x2) = (x_i, x_{i + hd/2})` of a head at position `pos`, for kernels
 * that bind the cos/sin table as `cs` (`[positions, hd/2, 2]`): `(x1·cos − x2·sin, x2·cos + x1·sin)`.
 */
const ROPE_PAIR_WGSL = /* wgsl */ `
fn ropePair(x1: f32, x2: f32, pos: u32, half: u32, i: u32) -> vec2<f32> {
  let c = cs[(pos * half + i) * 2u];
  let s = cs[(pos * half + i) * 2u + 1u];
  return vec2<f32>(x1 * c - x2 * s, x2 * c + x1 * s);
}`;

/** How a dense weight matrix is stored on the GPU: f32 values, or f16 / bf16 bits packed two per u32 (low half first). */
export type DenseDtype = 'f32' | 'f16' | 'bf16';

/**
 * WGSL of `unpackBf16(w)`: the two bfloat16 values packed in `w` (low half `.x`, high half `.y`) as f32, exactly: a
 * bf16 is the upper 16 bits of the f32 of the same value, so the bits shifted (or masked) into place are that f32 —
 * subnormals, ±0 and negative values included (tested bit for bit). Infinities and NaNs bitcast to values WGSL leaves
 * indeterminate; checkpoints' weights are finite.
 */
export const unpackBf16Wgsl = /* wgsl */ `
fn unpackBf16(w: u32) -> vec2<f32> { return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u)); }`;

/** The WGSL function that unpacks a word of two 16-bit weights of `dtype` to a `vec2<f32>`. */
function unpackFn(dtype: 'f16' | 'bf16'): string {
  return dtype === 'f16' ? 'unpack2x16float' : 'unpackBf16';
}

/** Gather row `tokens[r]` of an embedding table (f32 rows, or f16 / bf16 rows packed two per u32) into row r. */
export function embedWgsl(dtype: DenseDtype): string {
  const half = dtype !== 'f32';
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> tokens: array<u32>;
struct P { d: u32, rowWords: u32, a: u32, b: u32 }
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(2) var<storage, read> table: array<${half ? 'u32' : 'f32'}>;
@group(0) @binding(3) var<storage, read_write> outv: array<f32>;${dtype === 'bf16' ? unpackBf16Wgsl : ''}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let j = gid.x;
  if (j >= p.d) { return; }
  let token = tokens[gid.y];
  let o = gid.y * p.d + j;
  ${
    dtype !== 'f32'
      ? `let w = ${unpackFn(dtype)}(table[token * p.rowWords + j / 2u]);
  outv[o] = select(w.x, w.y, (j & 1u) == 1u);`
      : `outv[o] = table[token * p.rowWords + j];`
  }
}`;
}

/**
 * A reduction over a workgroup's `wg` invocations through `arr` (an f32 array of at least `wg` values in workgroup
 * memory): each stores `value`, then a tree (halves of wg/2, wg/4, …, 1) combines `arr[lid]` with `arr[lid + k]` by
 * `combine`, and `result` is declared as the total, read by every invocation. Call it in uniform control flow; reusing
 * `arr` after it needs a barrier first (every invocation must have read the total). The attention softmax's maximum
 * and sum and the NLL kernel's reduce this way (RMSNorm by {@link normScaleWgsl}, which also carries exponents).
 */
function workgroupReduceWgsl(
  arr: string,
  value: string,
  combine: (a: string, b: string) => string,
  result: string,
  wg: number,
): string {
  return `${arr}[lid] = ${value};
  workgroupBarrier();
  for (var k = ${wg / 2}u; k > 0u; k >>= 1u) {
    if (lid < k) { ${arr}[lid] = ${combine(`${arr}[lid]`, `${arr}[lid + k]`)}; }
    workgroupBarrier();
  }
  let ${result} = ${arr}[0];`;
}

/** The sum of two f32 values, for {@link workgroupReduceWgsl}. */
const add = (a: string, b: string) => `${a} + ${b}`;
/** The larger of two f32 values, for {@link workgroupReduceWgsl}. */
const larger = (a: string, b: string) => `max(${a}, ${b})`;

/** `sqAcc` of {@link normScaleWgsl}: one invocation's overflow-safe sum of squares, `acc = (s, e)` for `s·4^e`. */
const SQ_ACC_WGSL = /* wgsl */ `
fn sqAcc(acc: vec2<f32>, v: f32) -> vec2<f32> {
  let a = abs(v);
  if (acc.y == 0.0 && a < 1099511627776.0) { return vec2<f32>(acc.x + v * v, 0.0); }
  let e = max(acc.y, f32(frexp(a).exp));
  let h = i32(e) / 2;
  let t = ldexp(ldexp(v, -h), h - i32(e));
  return vec2<f32>(ldexp(acc.x, 2 * i32(acc.y - e)) + t * t, e);
}`;

/**
 * WGSL of the per-head query and key RMSNorm (Qwen3's `q_norm`/`k_norm`, before RoPE): `sqAcc` and
 * `normFactor(acc, n, eps)`, {@link normScaleWgsl}'s factor pair for a sum `acc` that one invocation accumulated over
 * all `n` values (no reduction: the same last step). Each kernel that applies it has one invocation per head sum the
 * head's `hd` values in order (j = 0 … hd − 1, {@link headNormWgsl}) and leave the pair in workgroup memory, then
 * multiplies each value as the RMSNorm kernels do, `x · s.x · s.y · w`: the same operations in the same order in
 * every form (one launch with RoPE, with the rotation, with attention), so their outputs agree to the bit as the
 * forms without the norm do. Overflow-safe as every RMSNorm here (values up to f32's largest).
 */
const HEAD_NORM_WGSL = /* wgsl */ `${SQ_ACC_WGSL}
fn normFactor(acc: vec2<f32>, n: u32, eps: f32) -> vec2<f32> {
  let e = i32(acc.y);
  let r = 1.0 / sqrt(acc.x / f32(n) + ldexp(eps, -2 * e));
  return vec2<f32>(ldexp(r, -(e / 2)), ldexp(1.0, e / 2 - e));
}`;

/**
 * WGSL statements declaring `name`, the {@link HEAD_NORM_WGSL} factor pair of the `hd` values `value(j)`,
 * j = 0 … hd − 1, summed in that order by the one invocation that runs them (any invocation computes the same bits).
 */
function headNormWgsl(name: string, value: (j: string) => string, hd: string, eps: string): string {
  return `var ${name}Sum = vec2<f32>();
    for (var j = 0u; j < ${hd}; j++) { ${name}Sum = sqAcc(${name}Sum, ${value('j')}); }
    let ${name} = normFactor(${name}Sum, ${hd}, ${eps});`;
}

/** Workgroup-array values {@link normScaleWgsl}'s reduction uses: two per invocation (sums and their exponents). */
export const normScaleWords = (wg: number): number => 2 * wg;

/**
 * WGSL of `sqAcc(acc, v)` and `normScale(acc, n, lid)`, RMSNorm's `1/√(Σx²/n + eps)`. Each invocation accumulates its
 * values' squares with `sumSq = sqAcc(sumSq, v)` from `vec2<f32>()`; `acc = (s, e)` stands for the sum `s·4^e`. `e` stays
 * 0, and the sums are the plain `s + v·v`, until a value reaches 2^40: then the values are scaled by a power of two
 * (exact) so that their squares stay below 1, since f32 squares summed past ≈ 3.4e38 are infinite (an RMS of
 * ≈ 1.8e19/√n) and WGSL leaves what infinity does undefined (the norm came out 0 on SwiftShader). `normScale` reduces
 * the pairs by a tree over the workgroup array `arr` (at least {@link normScaleWords}(wg) values; call it in uniform
 * control flow; it ends with a barrier, so `arr` is free again); `eps` names the epsilon. It returns the factor as two,
 * `x · s.x · s.y` the normed value: `2^-e·r` alone is subnormal (flushed to 0) for values from 2^126 up, so its power
 * of two is split between them (and no value that matters goes through an `ldexp` by 2^-127 or less, which WGSL lets
 * be 0: only terms negligible beside the largest do). Where every exponent is 0 the sums, their order and the result
 * are those of a plain f32 tree reduction, and `s.y` is 1 (the same bits as `x · s.x`). Every RMSNorm of the kernels
 * reduces this way.
 */
function normScaleWgsl(arr: string, eps: string, wg: number): string {
  return /* wgsl */ `${SQ_ACC_WGSL}
fn normScale(acc: vec2<f32>, n: u32, lid: u32) -> vec2<f32> {
  ${arr}[lid] = acc.x;
  ${arr}[lid + ${wg}u] = acc.y;
  workgroupBarrier();
  for (var k = ${wg / 2}u; k > 0u; k >>= 1u) {
    if (lid < k) {
      let e1 = ${arr}[lid + ${wg}u];
      let e2 = ${arr}[lid + k + ${wg}u];
      if (e1 == e2) {
        ${arr}[lid] = ${arr}[lid] + ${arr}[lid + k];
      } else {
        let e = max(e1, e2);
        ${arr}[lid] = ldexp(${arr}[lid], 2 * i32(e1 - e)) + ldexp(${arr}[lid + k], 2 * i32(e2 - e));
        ${arr}[lid + ${wg}u] = e;
      }
    }
    workgroupBarrier();
  }
  let e = i32(${arr}[${wg}u]);
  let r = 1.0 / sqrt(${arr}[0] / f32(n) + ldexp(${eps}, -2 * e));
  workgroupBarrier();
  return vec2<f32>(ldexp(r, -(e / 2)), ldexp(1.0, e / 2 - e));
}`;
}

/** RMSNorm of one vector: `out = x / sqrt(mean(x²) + eps) ⊙ w` (one workgroup of `wg` invocations). */
export function rmsNormWgsl(wg = WG): string {
  return /* wgsl */ `
struct P { n: u32, eps: f32, a: u32, b: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> outv: array<f32>;
var<workgroup> red: array<f32, ${normScaleWords(wg)}>;
${normScaleWgsl('red', 'p.eps', wg)}
@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let o = wid.y * p.n;
  var sumSq = vec2<f32>();
  for (var j = lid; j < p.n; j += ${wg}u) { sumSq = sqAcc(sumSq, x[o + j]); }
  let inv = normScale(sumSq, p.n, lid);
  for (var j = lid; j < p.n; j += ${wg}u) { outv[o + j] = x[o + j] * inv.x * inv.y * w[j]; }
}`;
}

/**
 * Threads per output row of the matrix–vector kernels: 32 (a row's lanes stride over it and reduce in workgroup
 * memory, 8 rows per workgroup; for GPUs) or 1 (one invocation per row, 64 rows per workgroup, no barriers; far
 * faster on CPU implementations such as SwiftShader, where barriers are expensive).
 */
export type Lanes = 1 | 32;

/** Output rows per workgroup of a matrix–vector kernel. */
export function rowsPerWorkgroup(lanes: Lanes): number {
  return lanes === 1 ? 64 : ROWS_PER_WG;
}

/**
 * The tree reduction of a row's 32 lanes in workgroup memory, after every lane has stored its partial sums: `add`
 * adds the value at `lid + s` into the one at `lid` for each array of the row (lanes below `s` run it, for s = 16, 8,
 * 4, 2, 1). Call it in uniform control flow; it starts with the barrier that publishes the partial sums and ends with
 * one, so lane 0 then reads the row's totals. Every 32-lane matrix–vector kernel reduces this way.
 */
function laneSumWgsl(add: string): string {
  return `workgroupBarrier();
  for (var s = 16u; s > 0u; s >>= 1u) {
    if (lane < s) { ${add} }
    workgroupBarrier();
  }`;
}

/**
 * The end of the E8P kernels whose lanes compute `rows` rows each (rows `row0 + k` of the output, accumulators
 * `acc0 …`): the partial sums stored at `arr[k·WG + lid]` (a workgroup array of at least `rows·WG` values, free),
 * summed over each row's 32 lanes ({@link laneSumWgsl}), and lane 0 writing the totals of activation row r.
 */
function rowTotalsWgsl(arr: string, rows: number): string {
  const ks = Array.from({ length: rows }, (_, k) => k);
  return `${ks.map((k) => `${arr}[${k * WG}u + lid] = acc${k};`).join('\n  ')}
  ${laneSumWgsl(ks.map((k) => `${arr}[${k * WG}u + lid] += ${arr}[${k * WG}u + lid + s];`).join(' '))}
  if (lane == 0u && row0 < p.mp) {
    ${ks.map((k) => `outv[r * p.mp + row0 + ${k}u] = ${arr}[${k * WG}u + lid];`).join('\n    ')}
  }`;
}

/**
 * The matrix–vector kernel template. With `tile` > 1 every invocation computes its output row for `tile` consecutive
 * activation rows (`r0 = workgroup_id.y · tile`, accumulators `acc[k]`), so each weight (or decoded E8P group) read
 * from memory is used `tile` times: the prefill form. Per activation row the operations are those of `tile` = 1 in
 * the same order. Rows past the batch are computed from whatever the scratch rows hold and never read.
 */
function matvecKernel(
  lanes: Lanes,
  decls: string,
  prologue: string,
  body: string,
  epilogue: string,
  tile = 1,
): string {
  if (tile > 1 && lanes === 1)
    return `${decls}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let row = gid.x;
  if (row >= p.${'${M}'}) { return; }
  let r0 = gid.y * ${tile}u;
  let lane = 0u;
  let stride = 1u;
  var acc: array<f32, ${tile}>;
  ${body}
  for (var k = 0u; k < ${tile}u; k++) {
    let r = r0 + k;
    let total = acc[k];
    ${epilogue}
  }
}`;
  if (tile > 1)
    return `${decls}
var<workgroup> part: array<f32, ${WG * tile}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  ${prologue}
  let row = wid.x * ${ROWS_PER_WG}u + lid / 32u;
  let r0 = wid.y * ${tile}u;
  let lane = lid % 32u;
  let stride = 32u;
  var acc: array<f32, ${tile}>;
  if (row < p.${'${M}'}) {
    ${body}
  }
  for (var k = 0u; k < ${tile}u; k++) { part[k * ${WG}u + lid] = acc[k]; }
  ${laneSumWgsl(`for (var k = 0u; k < ${tile}u; k++) { part[k * ${WG}u + lid] += part[k * ${WG}u + lid + s]; }`)}
  if (lane == 0u && row < p.${'${M}'}) {
    for (var k = 0u; k < ${tile}u; k++) {
      let r = r0 + k;
      let total = part[k * ${WG}u + lid];
      ${epilogue}
    }
  }
}`;
  if (lanes === 1)
    return `${decls}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let row = gid.x;
  let r = gid.y;
  if (row >= p.${'${M}'}) { return; }
  let lane = 0u;
  let stride = 1u;
  var acc = 0.0;
  ${body}
  let total = acc;
  ${epilogue}
}`;
  return `${decls}
var<workgroup> part: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  ${prologue}
  let row = wid.x * ${ROWS_PER_WG}u + lid / 32u;
  let r = wid.y;
  let lane = lid % 32u;
  let stride = 32u;
  var acc = 0.0;
  if (row < p.${'${M}'}) {
    ${body}
  }
  part[lid] = acc;
  ${laneSumWgsl('part[lid] += part[lid + s];')}
  let total = part[lid];
  if (lane == 0u && row < p.${'${M}'}) {
    ${epilogue}
  }
}`;
}

/**
 * Dense `out[i] (+)= Σ_j W[w0 + i, j]·x[j] (+ bias[w0 + i])` for `m` rows from row `w0` of W (row-major f32, or f16
 * or bf16 packed two per u32 with `rowWords` words per row, odd rows padded with a zero half). Activation row r reads `x`
 * from `r·xRow + xOff` and writes `out` from `r·outRow + outOff`. With `outputs` 2 or 3 the rows are split over that
 * many output buffers at rows `s1` and `s2` (`s2 = m` for 2), each a whole row of its buffer per activation row: the
 * stacked q/k/v or gate/up of a group of dense layers in one launch.
 */
export function matvecWgsl(dtype: DenseDtype, lanes: Lanes = 32, tile = 1, outputs = 1): string {
  const half = dtype !== 'f32';
  const unpack = half ? unpackFn(dtype) : '';
  const tiled = half
    ? `for (var w = lane; w < p.rowWords; w += stride) {
      let v = ${unpack}(W[(p.w0 + row) * p.rowWords + w]);
      let j = 2u * w;
      for (var k = 0u; k < ${tile}u; k++) {
        let xo = (r0 + k) * p.xRow + p.xOff + j;
        acc[k] += v.x * x[xo];
        if (j + 1u < p.n) { acc[k] += v.y * x[xo + 1u]; }
      }
    }`
    : `for (var j = lane; j < p.n; j += stride) {
      let wv = W[(p.w0 + row) * p.rowWords + j];
      for (var k = 0u; k < ${tile}u; k++) { acc[k] += wv * x[(r0 + k) * p.xRow + p.xOff + j]; }
    }`;
  const body = half
    ? `for (var w = lane; w < p.rowWords; w += stride) {
      let v = ${unpack}(W[(p.w0 + row) * p.rowWords + w]);
      let j = 2u * w;
      let xo = r * p.xRow + p.xOff + j;
      acc += v.x * x[xo];
      if (j + 1u < p.n) { acc += v.y * x[xo + 1u]; }
    }`
    : `for (var j = lane; j < p.n; j += stride) { acc += W[(p.w0 + row) * p.rowWords + j] * x[r * p.xRow + p.xOff + j]; }`;
  const decls = /* wgsl */ `
struct P { m: u32, n: u32, rowWords: u32, accumulate: u32, hasBias: u32, xRow: u32, xOff: u32, outRow: u32,
  outOff: u32, w0: u32, s1: u32, s2: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> W: array<${half ? 'u32' : 'f32'}>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
${Array.from({ length: outputs }, (_, k) => `@group(0) @binding(${4 + k}) var<storage, read_write> out${k}: array<f32>;`).join('\n')}${dtype === 'bf16' ? unpackBf16Wgsl : ''}`;
  // output k's rows: [start, end) of the computed rows, a whole row of out k per activation row
  const bounds = ['0u', 'p.s1', 'p.s2', 'p.m'];
  const store = (k: number, oi: string) => `if (p.accumulate == 1u) { y += out${k}[${oi}]; }
      out${k}[${oi}] = y;`;
  const epilogue =
    outputs === 1
      ? `var y = total;
    let oi = r * p.outRow + p.outOff + row;
    if (p.hasBias == 1u) { y += bias[p.w0 + row]; }
    ${store(0, 'oi')}`
      : `var y = total;
    if (p.hasBias == 1u) { y += bias[p.w0 + row]; }
    ${Array.from({ length: outputs }, (_, k) => {
      const [lo, hi] = [bounds[k]!, k === outputs - 1 ? 'p.m' : bounds[k + 1]!];
      return `${k === outputs - 1 ? '' : `if (row < ${hi}) `}{
      let oi = r * (${hi} - ${lo}) + row - ${lo};
      ${store(k, 'oi')}
    }`;
    }).join(' else ')}`;
  return matvecKernel(lanes, decls, '', tile > 1 ? tiled : body, epilogue, tile).replaceAll('${M}', 'm');
}

/**
 * What a rotation computes from its input rows as it loads them (`x` below is the input row, `aux` the extra
 * binding): `'none'` takes `x` as it is; `'rmsNorm'` the RMSNorm `x / sqrt(mean(x²) + eps) ⊙ aux` over the `nIn`
 * values of the row (`aux` the norm weight; the same reduction, in the same order, as {@link rmsNormWgsl}:
 * bit-identical on SwiftShader, tested); `'swiglu'` `silu(x) ⊙ aux` (`aux` the up projection, at the same offsets as
 * `x`; the same expression as {@link SWIGLU_WGSL}). So a layer's input rotation takes the place of the launch before it.
 */
export type RotationInputKind = 'none' | 'rmsNorm' | 'swiglu';

/** Largest output count of a rotation launch with an input computation (its `aux` binding takes a storage slot). */
export const ROTATION_MAX_OUTPUTS_WITH_INPUT = 2;

/**
 * WGSL declaring `inputScale(xo, nIn, lid)` (call it in uniform control flow, every invocation of the workgroup; it
 * uses `v[0 … normScaleWords(wg))` and leaves `v` free again) and `inputAt(xo, j, scale)`, the input value j of the row at `xo`.
 * `eps` names the uniform's RMSNorm epsilon; `auxBinding` the binding of `aux`.
 */
function rotationInputWgsl(kind: RotationInputKind, eps: string, auxBinding: number, wg: number): string {
  const aux = `@group(0) @binding(${auxBinding}) var<storage, read> aux: array<f32>;`;
  if (kind === 'rmsNorm')
    return /* wgsl */ `${aux}
fn inputScale(xo: u32, nIn: u32, lid: u32) -> vec2<f32> {
  var sumSq = vec2<f32>();
  for (var j = lid; j < nIn; j += ${wg}u) { sumSq = sqAcc(sumSq, x[xo + j]); }
  return normScale(sumSq, nIn, lid);
}
${normScaleWgsl('v', eps, wg)}
fn inputAt(xo: u32, j: u32, scale: vec2<f32>) -> f32 { return x[xo + j] * scale.x * scale.y * aux[j]; }`;
  const head = /* wgsl */ `
fn inputScale(xo: u32, nIn: u32, lid: u32) -> vec2<f32> { return vec2<f32>(1.0, 1.0); }`;
  if (kind === 'swiglu')
    return /* wgsl */ `${aux}${head}
fn inputAt(xo: u32, j: u32, scale: vec2<f32>) -> f32 { let g = x[xo + j]; return g / (1.0 + exp(-g)) * aux[xo + j]; }`;
  return /* wgsl */ `${head}
fn inputAt(xo: u32, j: u32, scale: vec2<f32>) -> f32 { return x[xo + j]; }`;
}

/** Most layers (workgroups along x, output buffers) of one {@link hadamardWgsl} launch. */
export const ROTATION_MAX_MEMBERS = 3;

/**
 * The uniform of the rotation kernels ({@link hadamardWgsl}, {@link HADAMARD_MIX_WGSL}): flags, the row stride of
 * `x`, the RMSNorm epsilon of an input computation, and per member (layer) its sizes, scale and offsets.
 */
const ROTATION_PARAMS = /* wgsl */ `
struct M { n: u32, nIn: u32, outLen: u32, K: u32, P: u32, invSqrtN: f32, gscale: f32, xOff: u32, preOff: u32,
  postOff: u32, biasOff: u32, hasBias: u32, hkOff: u32, outOff: u32, outStride: u32, slot: u32 }
struct U { xStride: u32, transform: u32, transposeH: u32, accumulate: u32, eps: f32, a: u32, b: u32, c: u32,
  m: array<M, ${ROTATION_MAX_MEMBERS}> }
@group(0) @binding(0) var<uniform> u: U;`;

/** The bindings after the uniform of the rotation kernels that load raw rows: rows `x`, multipliers `pre` and `post`, H_K. */
const ROTATION_BINDINGS = /* wgsl */ `
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> pre: array<f32>;
@group(0) @binding(3) var<storage, read> post: array<f32>;
@group(0) @binding(4) var<storage, read> hkb: array<f32>;`;

/**
 * WGSL statements declaring `var y`, output value `i` of member `mb` after its rotation (see {@link rotationStepsWgsl};
 * its `transform` flag from the uniform `params`, the mix transposed where `transpose`): `gscale·(rotated·post)
 * (+ bias)`, with `post` and `bias` the WGSL expressions of value i's multiplier and bias (default: read from the
 * kernel's `post` and `bias` arrays at the member's offsets).
 */
function outputValueWgsl(
  mb: string,
  params: string,
  transpose: boolean,
  post = `post[${mb}.postOff + i]`,
  bias = `bias[${mb}.biasOff + i]`,
): string {
  return `var y = ${mb}.gscale * (rotatedAt${mixSuffix(transpose)}(${mb}, i, ${params}.transform) * ${post});
      if (${mb}.hasBias == 1u) { y += ${bias}; }`;
}

/**
 * WGSL statements storing an invocation's `C` values of member `mb`'s input vector into `v` (see {@link unrolled}):
 * value `lid + c·wg` (`wg` the workgroup's invocations) below `mb.n` is `value(c)` (a WGSL expression) below `mb.nIn`, zero past it (the padding).
 */
function vectorIntoWgsl(
  C: number,
  mb: string,
  value: (c: number) => string,
  wg: number,
  sep = '\n    ',
): string {
  return unrolled(
    C,
    (c) =>
      `if (lid + ${c * wg}u < ${mb}.n) { v[lid + ${c * wg}u] = select(0.0, ${value(c)}, lid + ${c * wg}u < ${mb}.nIn); }`,
    sep,
  );
}

/** Largest `H_K` order whose mix the rotation kernels write out with its signs in the shader (2·K² terms of code). */
export const UNROLLED_MIX_MAX_K = 64;

/** The orders of {@link rotationStepsWgsl}'s written-out mixes among `ks`: each K in (1, {@link UNROLLED_MIX_MAX_K}] once, sorted. */
export function unrolledMixKs(ks: readonly number[]): number[] {
  return [...new Set(ks)].filter((k) => k > 1 && k <= UNROLLED_MIX_MAX_K).sort((a, b) => a - b);
}

/** Outputs of a written-out `H_K` mix summed side by side (independent sums, so that a GPU need not wait on each add). */
export const MIX_CHUNK = 8;

/**
 * What the names of a shader's rotation functions end with for the mix `H_K` ('N') or its transpose ('T'): the
 * direction is the pipeline's, so that a shader holds only the written-out mixes it runs (each is ~2K² terms of code,
 * the largest part of a rotation kernel, and compile time grows faster than the code).
 */
export function mixSuffix(transpose: boolean): 'T' | 'N' {
  return transpose ? 'T' : 'N';
}

/**
 * The signs of the written-out `H_K` mix of order K ({@link hadamardBase} of @caldera/linalg): `chunkOuts(q)`, the
 * outputs of chunk q ({@link MIX_CHUNK} at a time), and `sign(t, a2, a)`, '+' or '-' as term a enters output a2
 * (`H[a2][a]` when `t`, the transposed mix, else `H[a][a2]`).
 */
function mixSigns(K: number): {
  chunkOuts: (q: number) => number[];
  sign: (t: boolean, a2: number, a: number) => string;
} {
  const H = hadamardBase(K);
  return {
    chunkOuts: (q) =>
      Array.from({ length: Math.min(MIX_CHUNK, K - q * MIX_CHUNK) }, (_, j) => q * MIX_CHUNK + j),
    sign: (t, a2, a) => ((t ? H[a2 * K + a]! : H[a * K + a2]!) > 0 ? '+' : '-'),
  };
}

/**
 * WGSL statements declaring `r0 … r7` (f32, zero) and summing into them the outputs of chunk `q` (a WGSL u32
 * expression; see {@link mixSigns}) of the order-K mix, transposed where `transpose`, reading term a as `col(a)`
 * once, in order a = 0 … K − 1: `r_j = r_j ± c_a`, the operations of the column form of {@link unrolledMixWgsl}, so
 * the same sums to the bit. A `switch` over the chunk (its signs are in the code).
 */
function chunkSumsWgsl(K: number, q: string, transpose: boolean, col: (a: number) => string): string {
  const { chunkOuts, sign } = mixSigns(K);
  const cases = (t: boolean) =>
    Array.from({ length: Math.ceil(K / MIX_CHUNK) }, (_, c) => {
      const outs = chunkOuts(c);
      return `case ${c}u: {
          ${Array.from(
            { length: K },
            (_, a) =>
              `{ let c = ${col(a)}; ${outs.map((a2, j) => `r${j} = r${j} ${sign(t, a2, a)} c;`).join(' ')} }`,
          ).join('\n          ')}
        }`;
    }).join('\n        ');
  return `${Array.from({ length: MIX_CHUNK }, (_, j) => `var r${j} = 0.0;`).join(' ')}
    switch ${q} {
      ${cases(transpose)}
      default: {}
    }`;
}

/**
 * WGSL of the `H_K` mix in place, written out for order K: each column `b` (stride P) of `v` goes into registers, then
 * each output `Σ_a h·c_a` with the signs of `H_K` (`h = H[a2][a]` when `transpose`, `H[a][a2]` otherwise) as additions
 * and subtractions in order a = 0 … K − 1 from 0, times `1/√n`: the same operations, in the same order, as the loop
 * over `hkb` in `rotatedAtN`/`T` (a ±1 product is exact), without a table read or a multiply per term, and K
 * workgroup-memory reads per column instead of K per value. The outputs go in chunks of {@link MIX_CHUNK}; where a
 * block holds fewer values than a workgroup has invocations (P < wg), the T = wg/P invocations of a column share its
 * chunks (after a barrier: all of them read the column first). Where T is at least the number of chunks, each
 * invocation takes at most one chunk and sums it while reading the column, holding its {@link MIX_CHUNK} sums (not the
 * column's K values and them) until the barrier, then writes them: the same operations on each output, so the same
 * values to the bit, in fewer registers (NVIDIA allows 64 per invocation in workgroups of 1024, where the K = 44 column
 * alone would take 44).
 */
function unrolledMixWgsl(K: number, wg: number, transpose: boolean): string {
  const nChunks = Math.ceil(K / MIX_CHUNK);
  const { chunkOuts, sign } = mixSigns(K);
  const loads = Array.from({ length: K }, (_, a) => `let c${a} = v[${a}u * mb.P + b];`).join(' ');
  const chunks = (t: boolean) =>
    Array.from({ length: nChunks }, (_, q) => {
      const outs = chunkOuts(q);
      return `if (${q}u % T == part) {
        ${outs.map((a2) => `var o${a2} = 0.0;`).join(' ')}
        ${Array.from({ length: K }, (_, a) => outs.map((a2) => `o${a2} = o${a2} ${sign(t, a2, a)} c${a};`).join(' ')).join('\n        ')}
        ${outs.map((a2) => `v[${a2}u * mb.P + b] = o${a2} * mb.invSqrtN;`).join(' ')}
      }`;
    }).join('\n      ');
  const rs = Array.from({ length: MIX_CHUNK }, (_, j) => j);
  // (with one chunk per invocation: chunk `part` summed into r0 … r7 as the column is read)
  return `fn mixK${K}${mixSuffix(transpose)}(lid: u32, mb: M) {
  let lp = firstTrailingBit(mb.P);
  let T = max(1u, ${wg}u >> lp);
  let part = lid >> lp;
  if (mb.P <= ${wg}u && T >= ${nChunks}u) {
    let b = lid & (mb.P - 1u);
    ${chunkSumsWgsl(K, 'part', transpose, (a) => `v[${a}u * mb.P + b]`)}
    workgroupBarrier();
    if (part < ${nChunks}u) {
      let a0 = part * ${MIX_CHUNK}u;
      ${rs.map((j) => `if (a0 + ${j}u < ${K}u) { v[(a0 + ${j}u) * mb.P + b] = r${j} * mb.invSqrtN; }`).join('\n      ')}
    }
    return;
  }
  for (var b0 = 0u; b0 < mb.P; b0 += ${wg}u) {
    let b = b0 + (lid & (mb.P - 1u));
    ${loads}
    workgroupBarrier();
    ${chunks(transpose)}
  }
}`;
}

/**
 * WGSL of `butterflyPass${R}(lid, mb, lp, lh)` (R = 2, 4 or 8): log2 R stages of the fast Walsh–Hadamard transform
 * over each block of `P = 2^lp` values of `v`, strides `h = 2^lh` … `2^lh·R/2`, each invocation taking groups of R
 * values `base + j·h` (the group's bits lh … lh + log2 R − 1 zero in `base`) into registers. The same butterflies
 * (`s + t`, `s − t`) on the same values as one stage at a time, so the same results to the bit.
 */
function butterflyPassWgsl(R: number, wg: number): string {
  const r = Math.log2(R);
  const js = Array.from({ length: R }, (_, j) => j);
  const stages = Array.from({ length: r }, (_, st) =>
    js
      .filter((j) => (j & (1 << st)) === 0)
      .map(
        (j) =>
          `let s${st}_${j} = e${j}; e${j} = s${st}_${j} + e${j + (1 << st)}; e${j + (1 << st)} = s${st}_${j} - e${j + (1 << st)};`,
      )
      .join(' '),
  ).join('\n      ');
  return `fn butterflyPass${R}(lid: u32, mb: M, lp: u32, lh: u32) {
  let h = 1u << lh;
  for (var g = lid; g < (mb.n >> ${r}u); g += ${wg}u) {
    let gb = g & ((mb.P >> ${r}u) - 1u);
    let base = ((g >> (lp - ${r}u)) << lp) + ((gb >> lh) << (lh + ${r}u)) + (gb & (h - 1u));
    ${js.map((j) => `var e${j} = v[base + ${j}u * h];`).join(' ')}
    ${stages}
    ${js.map((j) => `v[base + ${j}u * h] = e${j};`).join(' ')}
  }
}`;
}

/**
 * WGSL of `butterflies(lid, mb)`: the fast Walsh–Hadamard transform over each block of `P` values of the workgroup
 * array `v` (the first `mb.n`; parameters `M` of {@link ROTATION_PARAMS}), in passes of {@link butterflyPassWgsl},
 * each followed by a barrier (call it in uniform control flow).
 */
function butterfliesWgsl(wg: number): string {
  return /* wgsl */ `
${[8, 4, 2].map((R) => butterflyPassWgsl(R, wg)).join('\n')}
fn butterflies(lid: u32, mb: M) {
  // P = 2^lp: passes of three stages (strides 2^lh, 2^(lh+1), 2^(lh+2)) on 8 values per invocation, then one of
  // two stages or one: a barrier per pass, not per stage
  let lp = firstTrailingBit(mb.P);
  var lh = 0u;
  for (; lh + 3u <= lp; lh += 3u) {
    butterflyPass8(lid, mb, lp, lh);
    workgroupBarrier();
  }
  if (lh + 2u == lp) {
    butterflyPass4(lid, mb, lp, lh);
    workgroupBarrier();
  } else if (lh + 1u == lp) {
    butterflyPass2(lid, mb, lp, lh);
    workgroupBarrier();
  }
}`;
}

/**
 * The steps of the one-workgroup rotation kernels, over the workgroup array `v` (parameters `M` of
 * {@link ROTATION_PARAMS}) and the ±1 `H_K` table `hkb`, for each direction in `transposes` (the function names end
 * with its {@link mixSuffix}: `rotateInPlaceT` mixes with `H_Kᵀ`, `rotateInPlaceN` with `H_K`): `rotateInPlaceX(lid,
 * mb)`, the fast Walsh–Hadamard transform over each block of `P` ({@link butterfliesWgsl}) and, for K = 1 and the
 * orders `mixKs` (see {@link unrolledMixKs}), the `H_K` mix across blocks times `1/√n`, in `v` (it has barriers: call
 * it in uniform control flow; `mixInPlaceX` is its mix alone, for blocks already transformed); and `rotatedAtX(mb, i,
 * transform)`, value i after the rotation: v_i when the mix ran in place or without the transform (`transform` 0,
 * the kernel's uniform flag), else the mix of value i from `hkb` (orders above {@link UNROLLED_MIX_MAX_K}). The
 * direction is the pipeline's (the uniform's `transposeH` is read only by the global-memory rotation's kernels). The
 * written-out mixes use `hadamardBase(K)` of @caldera/linalg, the matrix `hkb` holds; the same values either way, to
 * the bit.
 */
function rotationStepsWgsl(mixKs: readonly number[], wg: number, transposes: readonly boolean[]): string {
  const inPlace = ['1u', ...mixKs.map((k) => `${k}u`)].map((k) => `K == ${k}`).join(' || ');
  const direction = (t: boolean) => {
    const x = mixSuffix(t);
    return `${mixKs.map((K) => unrolledMixWgsl(K, wg, t)).join('\n')}
fn mixInPlace${x}(lid: u32, mb: M) {
  if (mb.K == 1u) { mixK1(lid, mb); }${mixKs.map((k) => ` else if (mb.K == ${k}u) { mixK${k}${x}(lid, mb); }`).join('')}
  workgroupBarrier();
}
fn rotateInPlace${x}(lid: u32, mb: M) {
  butterflies(lid, mb);
  mixInPlace${x}(lid, mb);
}
fn hkAt${x}(mb: M, a2: u32, a: u32) -> f32 {
  return hkb[mb.hkOff + ${t ? 'a2 * mb.K + a' : 'a * mb.K + a2'}];
}
fn rotatedAt${x}(mb: M, i: u32, transform: u32) -> f32 {
  if (transform != 1u || mixesInPlace(mb.K)) { return v[i]; }
  let lp = firstTrailingBit(mb.P);
  let a2 = i >> lp;
  let b = i & (mb.P - 1u);
  var acc = 0.0;
  var a = 0u;
  // 8 terms at a time, their loads first (a serial loop waited for each H_K read), added in order
  for (; a + 8u <= mb.K; a += 8u) {
    ${Array.from({ length: 8 }, (_, t) => `let h${t} = hkAt${x}(mb, a2, a + ${t}u);`).join(' ')}
    ${Array.from({ length: 8 }, (_, t) => `let v${t} = v[(a + ${t}u) * mb.P + b];`).join(' ')}
    ${Array.from({ length: 8 }, (_, t) => `acc += h${t} * v${t};`).join(' ')}
  }
  for (; a < mb.K; a++) { acc += hkAt${x}(mb, a2, a) * v[a * mb.P + b]; }
  return acc * mb.invSqrtN;
}`;
  };
  return /* wgsl */ `
${butterfliesWgsl(wg)}
fn mixesInPlace(K: u32) -> bool { return ${inPlace}; }
fn mixK1(lid: u32, mb: M) {
  for (var b = lid; b < mb.P; b += ${wg}u) { v[b] = (0.0 + v[b]) * mb.invSqrtN; }
}
${[...new Set(transposes)].map(direction).join('\n')}`;
}

/**
 * The rotation steps of CALDERA layers on one vector each, one workgroup per layer ("member" w = workgroup_id.x,
 * parameters `u.m[w]`): load `v_j = x_j·pre_j` (zero past `nIn`, the padding), then when `transform` is set the
 * orthogonal Hadamard `v·M_n` (or `v·M_nᵀ`) with `M_n = (H_K ⊗ H_{2^p})/√n`: a fast Walsh–Hadamard transform over
 * each block of `P = 2^p`, then the dense ±1 `H_K` mix across blocks (flat index `a·P + b`, as in @caldera/linalg);
 * finally `out_i (+)= gscale·v_i·post_i (+ bias_i)` for `i < outLen`. Activation row r reads `x` from
 * `r·xStride + xOff` and writes output buffer `slot` (one of `outputs` bindings) from `r·outStride + outOff`; `pre`,
 * `post`, `bias` and `H_K` are read from the member's offsets. So one launch rotates one input for several layers
 * (q, k and v: `pre` their signs SU back to back, one output) or several layers' outputs (`post` their SV, an output
 * buffer each). `input` is what the load computes from `x` (see {@link RotationInputKind}; `aux` is bound after
 * `bias`). `maxN` sizes the workgroup array (4 bytes each; at least `wg` values with RMSNorm). `mixKs`: the
 * orders whose `H_K` mix is written into the shader (see {@link unrolledMixKs}); other orders read it from `hkb`.
 * `wg`: the workgroup's invocations (see `Kernels.vectorWorkgroup`; every one-workgroup kernel takes it).
 * `transpose`: the mix is `H_Kᵀ` (`M_nᵀ`), the pipeline's direction (see {@link rotationStepsWgsl}; `Kernels` keys
 * its pipelines by it and writes the same flag into the uniform).
 */
export function hadamardWgsl(
  maxN: number,
  outputs = 1,
  input: RotationInputKind = 'none',
  mixKs: readonly number[] = [],
  wg = WG,
  transpose = false,
): string {
  const outs = Array.from(
    { length: outputs },
    (_, k) => `@group(0) @binding(${5 + k}) var<storage, read_write> out${k}: array<f32>;`,
  ).join('\n');
  const store = Array.from(
    { length: outputs },
    (_, k) => `if (mb.slot == ${k}u) {
      if (u.accumulate == 1u) { y += out${k}[o]; }
      out${k}[o] = y;
    }`,
  ).join(' else ');
  return /* wgsl */ `
${ROTATION_PARAMS}
${ROTATION_BINDINGS}
${outs}
@group(0) @binding(${5 + outputs}) var<storage, read> bias: array<f32>;
var<workgroup> v: array<f32, ${input === 'rmsNorm' ? Math.max(maxN, normScaleWords(wg)) : maxN}>;
${rotationInputWgsl(input, 'u.eps', 6 + outputs, wg)}
${rotationStepsWgsl(mixKs, wg, [transpose])}
@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let mb = u.m[wid.x];
  let xo = wid.y * u.xStride + mb.xOff;
  let oo = wid.y * mb.outStride + mb.outOff;
  let scale = inputScale(xo, mb.nIn, lid);
  for (var j = lid; j < mb.n; j += ${wg}u) {
    if (j < mb.nIn) { v[j] = inputAt(xo, j, scale) * pre[mb.preOff + j]; } else { v[j] = 0.0; }
  }
  workgroupBarrier();
  if (u.transform == 1u) { rotateInPlace${mixSuffix(transpose)}(lid, mb); }
  for (var i = lid; i < mb.outLen; i += ${wg}u) {
    ${outputValueWgsl('mb', 'u', transpose)}
    let o = oo + i;
    ${store}
  }
}`;
}

/**
 * A residual branch's last output rotation (member 0 of {@link hadamardWgsl}'s parameters, accumulating into the
 * residual stream `res`; no input computation) followed by the RMSNorm of the updated row ({@link rmsNormWgsl}, weight
 * `nw`, `u.eps`) into `normOut` (rows of `outLen`), in one launch of one workgroup per row: each invocation keeps its
 * values of `h' = h + rotation` in registers, so the norm reads no memory. The same operations in the same order as
 * the rotation and the RMSNorm launch (bit-identical on SwiftShader, tested). `maxN` sizes the workgroup array;
 * `mixKs` and `transpose` (an output rotation's: true) as in {@link hadamardWgsl}.
 */
export function rotationNormWgsl(
  maxN: number,
  mixKs: readonly number[] = [],
  wg = WG,
  transpose = true,
): string {
  const C = Math.ceil(maxN / wg);
  return /* wgsl */ `
${ROTATION_PARAMS}
${ROTATION_BINDINGS}
@group(0) @binding(5) var<storage, read_write> res: array<f32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read> nw: array<f32>;
@group(0) @binding(8) var<storage, read_write> normOut: array<f32>;
var<workgroup> v: array<f32, ${Math.max(maxN, normScaleWords(wg))}>;
${rotationStepsWgsl(mixKs, wg, [transpose])}
${normScaleWgsl('v', 'u.eps', wg)}
@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let mb = u.m[0];
  let r = wid.y;
  let xo = r * u.xStride + mb.xOff;
  let oo = r * mb.outStride + mb.outOff;
  for (var j = lid; j < mb.n; j += ${wg}u) {
    if (j < mb.nIn) { v[j] = x[xo + j] * pre[mb.preOff + j]; } else { v[j] = 0.0; }
  }
  workgroupBarrier();
  if (u.transform == 1u) { rotateInPlace${mixSuffix(transpose)}(lid, mb); }
  var hn: array<f32, ${C}>;
  var sumSq = vec2<f32>();
  for (var c = 0u; c < ${C}u; c++) {
    let i = lid + c * ${wg}u;
    if (i < mb.outLen) {
      ${outputValueWgsl('mb', 'u', transpose)}
      y += res[oo + i];
      res[oo + i] = y;
      hn[c] = y;
      sumSq = sqAcc(sumSq, y);
    }
  }
  // v is read by rotatedAtT/N above; then it holds the partial sums
  workgroupBarrier();
  let inv = normScale(sumSq, mb.outLen, lid);
  for (var c = 0u; c < ${C}u; c++) {
    let i = lid + c * ${wg}u;
    if (i < mb.outLen) { normOut[r * mb.outLen + i] = hn[c] * inv.x * inv.y * nw[i]; }
  }
}`;
}

/**
 * The bindings 3–7 of the q/k/v output rotations with RoPE ({@link rotationRopeKvWgsl}, {@link rotationAttentionWgsl}):
 * raw rows `x`, SV `post`, H_K, biases and the cos/sin table (`Kernels.rotateRopeKv` binds them from one list).
 */
const ROPE_ROTATION_BINDINGS = /* wgsl */ `@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> post: array<f32>;
@group(0) @binding(5) var<storage, read> hkb: array<f32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read> cs: array<f32>;`;

/** The per-head query and key norm weights (`qn`, `kn`: `hd` values each) at bindings `at` and `at + 1`. */
function qkNormBindings(at: number): string {
  return /* wgsl */ `@group(0) @binding(${at}) var<storage, read> qn: array<f32>;
@group(0) @binding(${at + 1}) var<storage, read> kn: array<f32>;`;
}

/**
 * The output rotations of a group's q, k and v (members 0, 1, 2 of {@link hadamardWgsl}'s parameters; one workgroup
 * each; no accumulation, multipliers `pre` of 1) followed by what {@link ROPE_KV_WGSL} does with their outputs, in one
 * launch: each workgroup keeps its layer's output in workgroup memory, then RoPE at `step.pos + r` writes q (row r of
 * `q`) and k (the KV cache `ck` at that position), and v goes to `cv` unrotated. The same operations in the same
 * order as the rotation and the RoPE/KV launch (bit-identical on SwiftShader to both rotation paths, tested). `maxN`
 * sizes the workgroup array; `mixKs` and `transpose` (an output rotation's: true) as in {@link hadamardWgsl}. With
 * `qkNormHd`, the head size (0: none), each head of q and k is RMS-normed before RoPE (Qwen3; {@link HEAD_NORM_WGSL}:
 * invocation h sums head h from workgroup memory into `hs`, of ⌊maxN / qkNormHd⌋ factor pairs, then the pairs are
 * rotated; weights `qn`, `kn` at bindings 11 and 12, epsilon in `rp`): 10 storage buffers.
 */
export function rotationRopeKvWgsl(
  maxN: number,
  mixKs: readonly number[] = [],
  wg = WG,
  transpose = true,
  qkNormHd = 0,
): string {
  const C = Math.ceil(maxN / wg);
  const qkNorm = qkNormHd > 0;
  return /* wgsl */ `
${ROTATION_PARAMS}
struct Step { pos: u32, len: u32, token: u32, pad: u32 }
@group(0) @binding(1) var<uniform> step: Step;
struct RP { heads: u32, kvHeads: u32, hd: u32, ${qkNorm ? 'eps: f32' : 'a: u32'} }
@group(0) @binding(2) var<uniform> rp: RP;
${ROPE_ROTATION_BINDINGS}
@group(0) @binding(8) var<storage, read_write> q: array<f32>;
@group(0) @binding(9) var<storage, read_write> ck: array<f32>;
@group(0) @binding(10) var<storage, read_write> cv: array<f32>;
${qkNorm ? qkNormBindings(11) : ''}
var<workgroup> v: array<f32, ${maxN}>;${qkNorm ? `\nvar<workgroup> hs: array<vec2<f32>, ${Math.floor(maxN / qkNormHd)}>;` : ''}
${rotationStepsWgsl(mixKs, wg, [transpose])}
${ROPE_PAIR_WGSL}${qkNorm ? HEAD_NORM_WGSL : ''}
@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let w = wid.x;
  let mb = u.m[w];
  let r = wid.y;
  let xo = r * u.xStride + mb.xOff;
  for (var j = lid; j < mb.n; j += ${wg}u) {
    if (j < mb.nIn) { v[j] = x[xo + j]; } else { v[j] = 0.0; }
  }
  workgroupBarrier();
  if (u.transform == 1u) { rotateInPlace${mixSuffix(transpose)}(lid, mb); }
  var ys: array<f32, ${C}>;
  for (var c = 0u; c < ${C}u; c++) {
    let i = lid + c * ${wg}u;
    if (i < mb.outLen) {
      ${outputValueWgsl('mb', 'u', transpose)}
      ys[c] = y;
    }
  }
  let pos = step.pos + r;
  let kw = rp.kvHeads * rp.hd;
  workgroupBarrier();
  for (var c = 0u; c < ${C}u; c++) {
    let i = lid + c * ${wg}u;
    if (i < mb.outLen) {
      if (w == 2u) { cv[pos * kw + i] = ys[c]; } else { v[i] = ys[c]; }
    }
  }
  workgroupBarrier();
  if (w == 2u) { return; }
  let heads = select(rp.kvHeads, rp.heads, w == 0u);
  let half = rp.hd / 2u;${
    qkNorm
      ? `
  // each head's norm factors, one invocation per head
  for (var h = lid; h < heads; h += ${wg}u) {
    ${headNormWgsl('s', (j) => `v[h * rp.hd + ${j}]`, 'rp.hd', 'rp.eps')}
    hs[h] = s;
  }
  workgroupBarrier();`
      : ''
  }
  for (var idx = lid; idx < heads * half; idx += ${wg}u) {
    let h = idx / half;
    let i = idx % half;
    ${
      qkNorm
        ? `let s = hs[h];
    var w1 = kn[i];
    var w2 = kn[i + half];
    if (w == 0u) {
      w1 = qn[i];
      w2 = qn[i + half];
    }
    let y = ropePair(v[h * rp.hd + i] * s.x * s.y * w1, v[h * rp.hd + i + half] * s.x * s.y * w2, pos, half, i);`
        : 'let y = ropePair(v[h * rp.hd + i], v[h * rp.hd + i + half], pos, half, i);'
    }
    if (w == 0u) {
      let o = r * rp.heads * rp.hd + h * rp.hd;
      q[o + i] = y.x;
      q[o + i + half] = y.y;
    } else {
      let o = pos * kw + h * rp.hd;
      ck[o + i] = y.x;
      ck[o + i + half] = y.y;
    }
  }
}`;
}

/** The attention kernels' uniform `p` at `binding`: head counts (`group` query heads per KV head), sizes, scale. */
function attentionParamsWgsl(binding: number, eps = false): string {
  return `struct AP { heads: u32, group: u32, hd: u32, kw: u32, cap: u32, scale: f32, ${eps ? 'eps: f32' : 'a: u32'}, b: u32 }
@group(0) @binding(${binding}) var<uniform> p: AP;`;
}

/**
 * The scores and softmax of the attention kernels, over `len` positions from `base` in `scores`: `dot` accumulates
 * position t's `q·k` into `s` (then scaled by `p.scale`); then the workgroup maximum, the exponentials in place and
 * their sum `total` (reductions in `red`), the scores visible to the whole workgroup afterwards.
 */
function scoresSoftmaxWgsl(dot: string, wg: number): string {
  return `var mx = -3.0e38;
  for (var t = lid; t < len; t += ${wg}u) {
    var s = 0.0;
    ${dot}
    s *= p.scale;
    scores[base + t] = s;
    mx = max(mx, s);
  }
  ${workgroupReduceWgsl('red', 'mx', larger, 'm', wg)}
  workgroupBarrier();
  var sum = 0.0;
  for (var t = lid; t < len; t += ${wg}u) {
    let e = exp(scores[base + t] - m);
    scores[base + t] = e;
    sum += e;
  }
  ${workgroupReduceWgsl('red', 'sum', add, 'total', wg)}
  storageBarrier();
  workgroupBarrier();
`;
}

/**
 * The output rotations of a group's q, k and v (members 0, 1, 2 of {@link hadamardWgsl}'s parameters, no
 * accumulation, multipliers `pre` of 1), RoPE, the KV store at `step.pos` and attention, in one launch of one
 * workgroup per query head (as {@link attentionWgsl}), for a single activation row. Each workgroup rotates all three
 * vectors in workgroup memory and keeps its head's slice of q and its KV head's slices of k and v (RoPE applied to q
 * and k); the first query head of each KV group stores k and v in the cache, and every head uses its own copies for
 * the current position, so no workgroup reads what another writes. The same operations in the same order as
 * {@link rotationRopeKvWgsl} and then {@link attentionWgsl} (bit-identical on SwiftShader, tested); q is not
 * written. `maxN` sizes the workgroup array, `hd` the head size; `mixKs` and `transpose` (an output rotation's:
 * true) as in {@link hadamardWgsl}. With `qkNorm` the head's q and k slices are RMS-normed before RoPE (Qwen3;
 * {@link HEAD_NORM_WGSL}: invocation 0 sums q's slice from workgroup memory and invocation wg/2 k's, their factor
 * pairs shared through `qkf`; weights `qn`, `kn` at bindings 12 and 13, epsilon in `p`): 11 storage buffers.
 */
export function rotationAttentionWgsl(
  maxN: number,
  hd: number,
  mixKs: readonly number[] = [],
  wg = WG,
  transpose = true,
  qkNorm = false,
): string {
  const C = Math.ceil(maxN / wg);
  // the vector's loads written out, issued together (see unrolled)
  const slice = (k: number, lo: string, dst: string) => `{
    let mb = u.m[${k}u];
    let lastIn = mb.nIn - 1u;
    ${unrolled(C, (c) => `let s${c} = x[mb.xOff + min(lid + ${c * wg}u, lastIn)];`)}
    ${vectorIntoWgsl(C, 'mb', (c) => `s${c}`, wg)}
    workgroupBarrier();
    if (u.transform == 1u) { rotateInPlace${mixSuffix(transpose)}(lid, mb); }
    if (lid < ${hd}u) {
      let i = ${lo} + lid;
      ${outputValueWgsl('mb', 'u', transpose)}
      ${dst}[lid] = y;
    }
    workgroupBarrier();
  }`;
  return /* wgsl */ `
${ROTATION_PARAMS}
struct Step { pos: u32, len: u32, token: u32, pad: u32 }
@group(0) @binding(1) var<uniform> step: Step;
${attentionParamsWgsl(2, qkNorm)}
${ROPE_ROTATION_BINDINGS}
@group(0) @binding(8) var<storage, read_write> ck: array<f32>;
@group(0) @binding(9) var<storage, read_write> cv: array<f32>;
@group(0) @binding(10) var<storage, read_write> scores: array<f32>;
@group(0) @binding(11) var<storage, read_write> outv: array<f32>;
${qkNorm ? qkNormBindings(12) : ''}
var<workgroup> v: array<f32, ${maxN}>;
var<workgroup> qh: array<f32, ${hd}>;
var<workgroup> kh: array<f32, ${hd}>;
var<workgroup> vh: array<f32, ${hd}>;
var<workgroup> red: array<f32, ${wg}>;${qkNorm ? '\nvar<workgroup> qkf: array<vec2<f32>, 2>;' : ''}
${rotationStepsWgsl(mixKs, wg, [transpose])}
${ROPE_PAIR_WGSL}${qkNorm ? HEAD_NORM_WGSL : ''}
@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let hh = wid.x;
  let g = hh / p.group;
  let ko = g * p.hd;
  let pos = step.pos;
  ${slice(0, 'hh * p.hd', 'qh')}
  ${slice(1, 'ko', 'kh')}
  ${slice(2, 'ko', 'vh')}
  let half = p.hd / 2u;
  ${
    qkNorm
      ? `// the two slices' norm factors, summed at once by invocations 0 and ${wg >> 1} (apart in SIMD groups of up to ${wg >> 1})
  if (lid == 0u) {
    ${headNormWgsl('s', (j) => `qh[${j}]`, 'p.hd', 'p.eps')}
    qkf[0] = s;
  }
  if (lid == ${wg >> 1}u) {
    ${headNormWgsl('s', (j) => `kh[${j}]`, 'p.hd', 'p.eps')}
    qkf[1] = s;
  }
  workgroupBarrier();
  let sq = qkf[0];
  let sk = qkf[1];
  if (lid < half) {
    let yq = ropePair(qh[lid] * sq.x * sq.y * qn[lid], qh[lid + half] * sq.x * sq.y * qn[lid + half], pos, half, lid);
    qh[lid] = yq.x;
    qh[lid + half] = yq.y;
    let yk = ropePair(kh[lid] * sk.x * sk.y * kn[lid], kh[lid + half] * sk.x * sk.y * kn[lid + half], pos, half, lid);`
      : `if (lid < half) {
    let yq = ropePair(qh[lid], qh[lid + half], pos, half, lid);
    qh[lid] = yq.x;
    qh[lid + half] = yq.y;
    let yk = ropePair(kh[lid], kh[lid + half], pos, half, lid);`
  }
    kh[lid] = yk.x;
    kh[lid + half] = yk.y;
  }
  workgroupBarrier();
  if (hh % p.group == 0u && lid < p.hd) {
    ck[pos * p.kw + ko + lid] = kh[lid];
    cv[pos * p.kw + ko + lid] = vh[lid];
  }
  let base = hh * p.cap;
  let len = pos + 1u;
  ${scoresSoftmaxWgsl(
    `if (t == pos) {
      for (var i = 0u; i < p.hd; i++) { s += qh[i] * kh[i]; }
    } else {
      for (var i = 0u; i < p.hd; i++) { s += qh[i] * ck[t * p.kw + ko + i]; }
    }`,
    wg,
  )}
  for (var i = lid; i < p.hd; i += ${wg}u) {
    var acc = 0.0;
    for (var t = 0u; t < pos; t++) { acc += scores[base + t] / total * cv[t * p.kw + ko + i]; }
    acc += scores[base + pos] / total * vh[i];
    outv[hh * p.hd + i] = acc;
  }
}`;
}

/**
 * First launch of the global-memory rotation (see {@link HADAMARD_MIX_WGSL}): workgroup `c` loads the chunk
 * `[c·B, c·B + B)` of `x ⊙ pre` (zero past `nIn`; `x` computed per `input`, see {@link RotationInputKind}, an
 * RMSNorm reducing the whole row in every workgroup) into workgroup memory, applies the Walsh–Hadamard butterflies
 * of strides 1 … B/2 when `transform` is set, and stores it to `tmp`. `B` (a power of two dividing `P`) is at most
 * `maxB`, the workgroup array's length.
 */
export function hadamardChunkWgsl(maxB: number, input: RotationInputKind = 'none', wg = WG): string {
  return /* wgsl */ `
struct C { n: u32, nIn: u32, B: u32, transform: u32, xStride: u32, xOff: u32, preOff: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: C;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> pre: array<f32>;
@group(0) @binding(3) var<storage, read_write> tmp: array<f32>;
var<workgroup> v: array<f32, ${input === 'rmsNorm' ? Math.max(maxB, normScaleWords(wg)) : maxB}>;
${rotationInputWgsl(input, 'p.eps', 4, wg)}
@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let base = wid.x * p.B;
  let xo = wid.y * p.xStride + p.xOff;
  let to = wid.y * p.n + base;
  let scale = inputScale(xo, p.nIn, lid);
  for (var j = lid; j < p.B; j += ${wg}u) {
    let g = base + j;
    if (g < p.nIn) { v[j] = inputAt(xo, g, scale) * pre[p.preOff + g]; } else { v[j] = 0.0; }
  }
  workgroupBarrier();
  if (p.transform == 1u) {
    for (var h = 1u; h < p.B; h <<= 1u) {
      for (var q = lid; q < p.B / 2u; q += ${wg}u) {
        let i = (q / h) * (2u * h) + (q % h);
        let s = v[i];
        let t = v[i + h];
        v[i] = s + t;
        v[i + h] = s - t;
      }
      workgroupBarrier();
    }
  }
  for (var j = lid; j < p.B; j += ${wg}u) { tmp[to + j] = v[j]; }
}`;
}

/**
 * Second launch of the global-memory rotation when a block is longer than a chunk (`P = S·B`, S > 1): the remaining
 * butterflies of strides B … P/2 of each block, which pair elements `S` chunks apart. Workgroup `w` takes block
 * `a = w / (B/C)` and the `C` consecutive offsets `c₀ = (w mod (B/C))·C …` within a chunk, gathering the `S·C` values
 * `tmp[a·P + s·B + c₀ + c]` (C contiguous values per s) into workgroup memory (`maxL ≥ S·C`), transforming along s.
 */
export function hadamardStrideWgsl(maxL: number): string {
  return /* wgsl */ `
struct S { n: u32, P: u32, B: u32, S: u32, C: u32, a: u32, b: u32, c: u32 }
@group(0) @binding(0) var<uniform> p: S;
@group(0) @binding(1) var<storage, read_write> tmp: array<f32>;
var<workgroup> v: array<f32, ${maxL}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let groups = p.B / p.C;
  let base = wid.y * p.n + (wid.x / groups) * p.P + (wid.x % groups) * p.C;
  let L = p.S * p.C;
  for (var l = lid; l < L; l += ${WG}u) { v[l] = tmp[base + (l / p.C) * p.B + l % p.C]; }
  workgroupBarrier();
  for (var h = 1u; h < p.S; h <<= 1u) {
    for (var q = lid; q < L / 2u; q += ${WG}u) {
      let qq = q / p.C;
      let i = ((qq / h) * (2u * h) + (qq % h)) * p.C + q % p.C;
      let j = i + h * p.C;
      let s = v[i];
      let t = v[j];
      v[i] = s + t;
      v[j] = s - t;
    }
    workgroupBarrier();
  }
  for (var l = lid; l < L; l += ${WG}u) { tmp[base + (l / p.C) * p.B + l % p.C] = v[l]; }
}`;
}

/**
 * Last launch of the global-memory rotation, for vectors larger than workgroup memory (`n = K·P`, P = 2^p; the
 * one-workgroup form is {@link hadamardWgsl}): after {@link hadamardChunkWgsl} (`tmp = x ⊙ pre`, zero-padded, with
 * the butterflies inside each chunk of up to a workgroup's worth of values) and, when a block spans several chunks,
 * {@link hadamardStrideWgsl}, the `H_K` mix across blocks with the output epilogue. Two or three launches whatever n.
 */
export const HADAMARD_MIX_WGSL = /* wgsl */ `${ROTATION_PARAMS}
@group(0) @binding(1) var<storage, read> tmp: array<f32>;
@group(0) @binding(2) var<storage, read> post: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> hk: array<f32>;
@group(0) @binding(5) var<storage, read_write> outv: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let mb = u.m[0];
  let i = gid.x;
  if (i >= mb.outLen) { return; }
  let tb = gid.y * mb.n;
  var val: f32;
  if (u.transform == 1u) {
    let a2 = i / mb.P;
    let b = i % mb.P;
    var acc = 0.0;
    for (var a = 0u; a < mb.K; a++) {
      var hv: f32;
      if (u.transposeH == 1u) { hv = hk[mb.hkOff + a2 * mb.K + a]; } else { hv = hk[mb.hkOff + a * mb.K + a2]; }
      acc += hv * tmp[tb + a * mb.P + b];
    }
    val = acc * mb.invSqrtN;
  } else {
    val = tmp[tb + i];
  }
  var y = mb.gscale * (val * post[mb.postOff + i]);
  let o = gid.y * mb.outStride + mb.outOff + i;
  if (mb.hasBias == 1u) { y += bias[mb.biasOff + i]; }
  if (u.accumulate == 1u) { y += outv[o]; }
  outv[o] = y;
}`;

/** A lattice codec of packed codes on the GPU (the checkpoint's `e8p12`, `e8p12-rvq4`, `e8p12-rvq3`). */
export type LatticeCodec = 'e8p12' | 'rvq4' | 'rvq3';

/**
 * The storage bindings of {@link e8pMatvecWgsl} after the uniform (binding 0), in binding order: the kernel's source
 * and the bind group built by `Kernels.e8pMatvec` both follow this list.
 */
export function e8pBindings(codec: LatticeCodec, lowRank: LatticeCodec | null): string[] {
  const names = ['codes', 'src', 'x', 'outv'];
  if (codec !== 'e8p12') names.push('codes2');
  if (lowRank) names.push('z', 'lcodes');
  if (codec === 'rvq3' || lowRank === 'rvq3') names.push('e81b');
  return names;
}

/** Most segments (layers sharing one launch) of {@link e8pMatvecWgsl}. */
export const E8P_MAX_SEGMENTS = 4;

/**
 * Decoding of E8P12 codes (see {@link e8pMatvecWgsl}) for a kernel that declares `pairs(a)`, the four bfloat16 pair
 * words of source a ({@link e8pSourcePairs}): `decodeCode(c)`, code c as its signed magnitudes (coordinates 0, 2, 4, 6
 * in `even`, 1, 3, 5, 7 in `odd`) and the ¼ shift common to its 8 coordinates; `activations(a, b)`, 8 activation
 * values in the same split with their sum; `dotCode(k, xv)`, their dot product
 * `⟨±m, x⟩ + shift·Σx` (= `⟨decode(c), x⟩`); and `elem(c, i)`, coordinate i of code c alone.
 */
const E8P_DECODE_WGSL = /* wgsl */ `
struct Code { even: vec4<f32>, odd: vec4<f32>, shift: f32 }
struct Activations { even: vec4<f32>, odd: vec4<f32>, sum: f32 }
fn decodeCode(c: u32) -> Code {
  let sigma = c & 255u;
  let par = countOneBits(sigma) & 1u;
  let s2 = sigma ^ par;
  // coordinate 2j's sign is bit j of s2 and 2j + 1's bit j + 4: spread to bits j and 16 + j, shifted by 15 − j
  // they land on the bf16 sign bits (15 and 31) of word j
  let spread = s2 | ((s2 & 0xf0u) << 12u);
  let w = pairs(c >> 8u) ^ ((vec4<u32>(spread) << vec4<u32>(15u, 14u, 13u, 12u)) & vec4<u32>(0x80008000u));
  return Code(bitcast<vec4<f32>>(w << vec4<u32>(16u)), bitcast<vec4<f32>>(w & vec4<u32>(0xffff0000u)),
    select(0.25, -0.25, par == 1u));
}
fn activations(a: vec4<f32>, b: vec4<f32>) -> Activations {
  let t = a + b;
  return Activations(vec4<f32>(a.x, a.z, b.x, b.z), vec4<f32>(a.y, a.w, b.y, b.w), (t.x + t.y) + (t.z + t.w));
}
fn dotCode(k: Code, xv: Activations) -> f32 {
  return dot(k.even, xv.even) + dot(k.odd, xv.odd) + k.shift * xv.sum;
}
fn elem(c: u32, i: u32) -> f32 {
  let sigma = c & 255u;
  let par = countOneBits(sigma) & 1u;
  let w = pairs(c >> 8u)[i >> 1u];
  let bit = (i >> 1u) | ((i & 1u) << 2u);
  let neg = ((sigma ^ par) << (31u - bit)) & 0x80000000u;
  return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u) ^ neg) + select(0.25, -0.25, par == 1u);
}`;

/** `dotE81b(c8, xv)`: the dot product of E81B codeword `c8/8` with 8 activations, for a kernel declaring `e81bAt(i)`. */
const E81B_DOT_WGSL = /* wgsl */ `
fn dotE81b(c8: u32, xv: Activations) -> f32 {
  let e = vec4<f32>(e81bAt(c8), e81bAt(c8 + 2u), e81bAt(c8 + 4u), e81bAt(c8 + 6u));
  let o = vec4<f32>(e81bAt(c8 + 1u), e81bAt(c8 + 3u), e81bAt(c8 + 5u), e81bAt(c8 + 7u));
  return dot(e, xv.even) + dot(o, xv.odd);
}`;

/**
 * The declarations {@link e8pMatvecWgsl} and {@link e8pMatvecF16Wgsl} share: the uniform (segments), the storage
 * bindings ({@link e8pBindings}), `pairs(a)` reading the bfloat16 source table from `table` (`'src'`, the storage
 * buffer, or `'tbl'`, its copy in workgroup memory, declared here), the E8P decoding, E81B, `x8` and L̂'s `lval`.
 */
function e8pMatvecDecls(codec: LatticeCodec, lowRank: LatticeCodec | null, table: 'src' | 'tbl'): string {
  const rvq3 = codec === 'rvq3';
  const types: Record<string, string> = {
    codes: 'array<u32>',
    src: 'array<vec4<u32>>',
    x: 'array<vec4<f32>>',
    outv: 'array<f32>',
    codes2: 'array<u32>',
    z: 'array<f32>',
    lcodes: 'array<u32>',
    e81b: 'array<f32>',
  };
  const bindings = e8pBindings(codec, lowRank)
    .map(
      (n, i) =>
        `@group(0) @binding(${i + 1}) var<storage, ${n === 'outv' ? 'read_write' : 'read'}> ${n}: ${types[n]};`,
    )
    .join('\n');
  // the second plane of L̂: an E8P12 code (rvq4) or an E81B code (rvq3), scaled by 1/lres
  const lresid =
    lowRank === 'rvq4'
      ? ' + elem((lcodes[idx2 >> 1u] >> ((idx2 & 1u) * 16u)) & 0xffffu, i) / p.lres'
      : lowRank === 'rvq3'
        ? ' + e81b[((lcodes[idx2 >> 2u] >> ((idx2 & 3u) * 8u)) & 0xffu) * 8u + i] / p.lres'
        : '';
  return /* wgsl */ `
struct Seg { start: u32, xOff: u32, zOff: u32, k: u32, lG: u32, q1: u32, q2: u32, l1: u32, l2: u32, qscale: f32,
  lscale: f32, a: u32 }
struct P { mp: u32, G: u32, xRow: u32, zRow: u32, resScale: f32, lres: f32, nseg: u32, zParts: u32,
  seg: array<Seg, ${E8P_MAX_SEGMENTS}> }
@group(0) @binding(0) var<uniform> p: P;
fn segOf(row: u32) -> Seg {
  var j = 0u;
  for (var t = 1u; t < p.nseg; t++) { if (row >= p.seg[t].start) { j = t; } }
  return p.seg[j];
}
${bindings}
${table === 'tbl' ? 'var<workgroup> tbl: array<vec4<u32>, 256>;' : ''}
fn pairs(a: u32) -> vec4<u32> { return ${table}[a]; }
${E8P_DECODE_WGSL}
${
  rvq3 || lowRank === 'rvq3'
    ? `fn e81bAt(i: u32) -> f32 { return e81b[i]; }
${E81B_DOT_WGSL}`
    : ''
}
// the 8 activation values from xo (a multiple of 4): two 16-byte loads
fn x8(xo: u32) -> Activations { return activations(x[xo >> 2u], x[(xo >> 2u) + 1u]); }
${
  lowRank
    ? `fn lval(sg: Seg, t: u32, lrow: u32) -> f32 {
  let off = t * sg.lG + (lrow >> 3u);
  let idx = sg.l1 + off;
  let idx2 = sg.l2 + off;
  let i = lrow & 7u;
  return sg.lscale * (elem((lcodes[idx >> 1u] >> ((idx & 1u) * 16u)) & 0xffffu, i)${lresid});
}
// z_t at index i: with partial sums (p.zParts > 1, the chunked gate step) the parts, sg.k apart, added in order
fn zAt(sg: Seg, i: u32) -> f32 {
  var s = z[i];
  for (var q = 1u; q < p.zParts; q++) { s += z[i + q * sg.k]; }
  return s;
}`
    : ''
}`;
}

/**
 * Code groups per iteration of a lane's E8P loop, their code loads issued together (see {@link codeGroupsWgsl}): the
 * default of {@link CodeBatch}.
 */
export const E8P_UNROLL = 8;

/**
 * Code groups per iteration of the E8P loops that batch their code loads ({@link codeGroupsWgsl}: the f32 E8P
 * kernel in decode and the input step's R̂ rows): more loads in flight per lane against more registers held. The
 * same groups in the same order whatever the batch: the same outputs to the bit.
 */
export type CodeBatch = 4 | 8 | 16;

/** `E_VALUE` unless `batch` is undefined (the default, {@link E8P_UNROLL}) or a {@link CodeBatch}. */
export function checkCodeBatch(batch: unknown): asserts batch is CodeBatch | undefined {
  if (batch !== undefined && batch !== 4 && batch !== 8 && batch !== 16)
    throw new CalderaError('E_VALUE', `codeBatch must be 4, 8 or 16, got ${shownValue(batch)}`);
}

/** The second plane of an RVQ code (see {@link codeGroupsWgsl}): its codec and each row's first code index. */
interface SecondPlane {
  codec: 'rvq4' | 'rvq3';
  bases: readonly string[];
}

/**
 * The second plane of a `codec` matrix for rows `rows` (WGSL expressions) whose plane-2 codes start at `sg.q2`, `G`
 * codes per row; none for E8P12.
 */
function secondPlane(codec: LatticeCodec, rows: readonly string[], G: string): SecondPlane | undefined {
  return codec === 'e8p12' ? undefined : { codec, bases: rows.map((r) => `sg.q2 + ${r} * ${G}`) };
}

/**
 * WGSL of a second-plane code's product with the activations `xv`: the E8P12 decoding for `rvq4`, the E81B codebook
 * row for `rvq3` (the term summed apart and divided by the residual scale).
 */
function secondPlaneDotWgsl(codec: 'rvq4' | 'rvq3', code2: string): string {
  return codec === 'rvq4' ? `dotCode(decodeCode(${code2}), xv)` : `dotE81b(${code2} * 8u, xv)`;
}

/**
 * The loop over the E8P12 code groups `g = lane, lane + stride, …` (below `G`) of one or more rows, in that order: each
 * iteration first loads the codes of its next `batch` groups ({@link CodeBatch}, default {@link E8P_UNROLL}) of every
 * row (row k's first code at index `bases[k]`, codes packed two per u32; a group past the row loads the row's last code
 * and is skipped), and with `plane2` the same groups' codes of the second plane (`codes2`: u16 E8P12 codes two per u32
 * for `rvq4`, u8 E81B codes four per u32 for `rvq3`, row k's first at `plane2.bases[k]`), then runs
 * `perGroup(codes, g, codes2)` for each group, `codes[k]` and `codes2[k]` naming row k's codes. The same groups in the
 * same order as one group per iteration, but a lane's code loads no longer wait for each other (one at a time left an
 * H200 latency-bound, measured 2026-12-04; the second plane's codes were read where used, inside each group's branch,
 * until 2026-12-05). With `prefetched` (a name prefix) the first batch's codes are not loaded here but were loaded
 * earlier by {@link codeBatchWgsl} with `g0 = lane` under names with that prefix (the input step loads them before its
 * rotation). The E8P kernel with 32 lanes per row and the input step's R̂ rows share it; the row-tiled (prefill) form
 * keeps one group per iteration (the same order): with 8 groups its inner loops over the tile's rows are unrolled 8
 * times, and two of three H200 runs measured prefill at 3.7 and 5.8 K tokens/s with it, against 19–41 K in the three
 * runs without.
 */
function codeGroupsWgsl(
  bases: readonly string[],
  G: string,
  stride: string,
  perGroup: (codes: string[], g: string, codes2: string[]) => string,
  plane2?: SecondPlane,
  prefetched?: string,
  batch: CodeBatch = E8P_UNROLL,
): string {
  const U = Array.from({ length: batch }, (_, u) => u);
  const names = codeNames(bases.length, plane2, batch);
  const groups = U.map(
    (u) => `if (g0 + ${u}u * ${stride} < ${G}) {
        let g = g0 + ${u}u * ${stride};
        ${perGroup(
          bases.map((_, k) => codeName(u, k, bases.length)),
          'g',
          plane2 ? bases.map((_, k) => `${codeName(u, k, bases.length)}p2`) : [],
        )}
      }`,
  ).join('\n      ');
  if (prefetched === undefined)
    return `for (var g0 = lane; g0 < ${G}; g0 += ${stride} * ${batch}u) {
      ${codeBatchWgsl(bases, G, stride, plane2, 'g0', '', batch)}
      ${groups}
    }`;
  // the first batch's codes were loaded before (codeBatchWgsl with g0 = lane and names prefixed `prefetched`)
  return `for (var g0 = lane; g0 < ${G}; g0 += ${stride} * ${batch}u) {
      ${names.map((n) => `var ${n} = ${prefetched}${n};`).join(' ')}
      if (g0 != lane) {
        ${codeBatchWgsl(bases, G, stride, plane2, 'g0', 'next_', batch)}
        ${names.map((n) => `${n} = next_${n};`).join(' ')}
      }
      ${groups}
    }`;
}

/** Name of the code of group u (of a batch) of row k among `rows` rows in {@link codeGroupsWgsl}. */
function codeName(u: number, k: number, rows: number): string {
  return rows === 1 ? `code${u}` : `code${u}_${k}`;
}

/** Every code name of one batch of {@link codeGroupsWgsl} (plane-2 ones suffixed `p2`). */
function codeNames(rows: number, plane2?: SecondPlane, batch: CodeBatch = E8P_UNROLL): string[] {
  return Array.from({ length: batch }, (_, u) =>
    Array.from({ length: rows }, (_, k) => {
      const n = codeName(u, k, rows);
      return plane2 ? [n, `${n}p2`] : [n];
    }).flat(),
  ).flat();
}

/**
 * WGSL `let` statements loading one batch of {@link codeGroupsWgsl}: the codes of groups `g0 + u·stride` (u below
 * `batch`, clamped to the row's last) of every row and plane, named as {@link codeNames} with `prefix`.
 */
function codeBatchWgsl(
  bases: readonly string[],
  G: string,
  stride: string,
  plane2: SecondPlane | undefined,
  g0: string,
  prefix: string,
  batch: CodeBatch = E8P_UNROLL,
): string {
  const U = Array.from({ length: batch }, (_, u) => u);
  const id = (u: number, k: number) => `${prefix}${u}_${k}`;
  // rvq4: u16 codes two per u32; rvq3: u8 codes four per u32
  const [perWord, bits, mask] = plane2?.codec === 'rvq4' ? [1, 16, '0xffffu'] : [2, 8, '0xffu'];
  const load2 = (u: number, k: number, base: string) => `let di${id(u, k)} = ${base} + gi${prefix}${u};
      let ${prefix}${codeName(u, k, bases.length)}p2 = (codes2[di${id(u, k)} >> ${perWord}u] >> ((di${id(u, k)} & ${2 ** perWord - 1}u) * ${bits}u)) & ${mask};`;
  return U.map(
    (u) => `let gi${prefix}${u} = min(${g0} + ${u}u * ${stride}, ${G} - 1u);
      ${bases
        .map(
          (base, k) => `let ci${id(u, k)} = ${base} + gi${prefix}${u};
      let ${prefix}${codeName(u, k, bases.length)} = (codes[ci${id(u, k)} >> 1u] >> ((ci${id(u, k)} & 1u) * 16u)) & 0xffffu;`,
        )
        .join(
          '\n      ',
        )}${plane2 ? `\n      ${plane2.bases.map((base, k) => load2(u, k, base)).join('\n      ')}` : ''}`,
  ).join('\n      ');
}

/**
 * Fused CALDERA matvec in the rotated domain: `out_i = qscale·Σ_g ⟨decode(Q[i, g]), x[8g..8g+8)⟩ + Σ_t L̂[i, t]·z_t`
 * with `z = R̂·x` computed before (this kernel without a low-rank term, on R̂'s codes). Q stays packed: E8P12 u16
 * codes, two per u32, row-major `[mp, np/8]` (the checkpoint layout). `rvq4` adds a second E8P12 plane (value
 * `c1 + c2/resScale`); `rvq3` a plane of u8 E81B codes packed four per u32 (byte `idx mod 4`), decoded through the
 * 256×8 E81B table `e81b`.
 *
 * `lowRank` (the codec of L̂; null: no low-rank term) keeps L̂ packed too: its codes are those of the checkpoint's
 * `L̂ᵀ` (`[k, mp/8]` groups along m), so the element `L̂[i, t] = lscale·(c1 + c2/lres)` is coordinate `i mod 8` of code
 * `t·mp/8 + ⌊i/8⌋`, decoded alone. The 8 rows of a workgroup share those codes, so L̂ costs its packed bytes in
 * memory traffic. A row's lanes split both the code groups of Q and the k terms of L̂, so one reduction sums them.
 *
 * Segments: the output rows are the stacked rows of up to {@link E8P_MAX_SEGMENTS} layers of the same input width and
 * codecs (q, k and v; gate and up), one launch for all. Segment j's rows start at row `start`; its codes at
 * plane-1 code `q1` (plane 2: `q2`, in that plane's elements) and L̂'s at `l1`/`l2`; it reads its own activation
 * vector at `xOff` within an activation row of `xRow` values and its `k` low-rank inputs at `zOff` within a row of
 * `zRow` (the sum of `p.zParts` partial vectors k apart where the input step leaves partial sums: the chunked gate
 * step); outputs are rows of `mp` (all segments' rows).
 *
 * Decoding (see @caldera/quant e8p.ts): code = (a << 8) | σ; with `p = popcount(σ) & 1` and `σ' = σ ^ p`,
 * coordinate i is `±source[a][i] + (p ? −¼ : ¼)`, negated when bit `π(i) = (i >> 1) | ((i & 1) << 2)` of σ' is set.
 * The source table is 256 × 16 bytes ({@link e8pSourcePairs}: the 8 coordinates as bfloat16 pairs, coordinate 7
 * pre-negated for sources of odd coordinate sum), so a code costs one 16-byte table read; with 32 lanes per row every
 * workgroup copies it (4 KiB) into workgroup memory. The signs go onto the bf16 sign bits with one XOR per pair, a
 * pair becomes two floats with a shift and a mask, and the ¼ shift is applied once per code to the sum of its 8
 * activations (`⟨±m + s, x⟩ = ⟨±m, x⟩ + s·Σx`): about 62 instructions per code in all, where decoding each
 * coordinate to a float took about 89 per code. Activation values are read 8 at a time as two 16-byte loads (`x` is bound as
 * `vec4<f32>`; every offset is a multiple of 8).
 */
export function e8pMatvecWgsl(
  codec: LatticeCodec,
  lowRank: LatticeCodec | null,
  lanes: Lanes = 32,
  tile = 1,
  rows: RowsPerLane = 1,
  batch: CodeBatch = E8P_UNROLL,
): string {
  if (![1, 2, 4].includes(rows))
    throw new CalderaError('E_VALUE', `e8pMatvecWgsl: rows per lane ${rows} is not 1, 2 or 4`);
  checkCodeBatch(batch);
  if (rows > 1 && (lanes !== 32 || tile !== 1))
    throw new CalderaError(
      'E_VALUE',
      'e8pMatvecWgsl: more than one row per lane needs 32 lanes and no row tiles',
    );
  const rvq4 = codec === 'rvq4';
  const rvq3 = codec === 'rvq3';
  // with one lane per row the table is read from the storage buffer (no workgroup copy, no barrier)
  const decls = e8pMatvecDecls(codec, lowRank, lanes === 1 ? 'src' : 'tbl');
  const prologue = `for (var i = lid; i < 256u; i += ${WG}u) { tbl[i] = src[i]; }
  workgroupBarrier();`;
  // segment of the row, its row within the segment; plane-1 and plane-2 code indices of group g
  const seg = `let sg = segOf(row);
    let lrow = row - sg.start;`;
  // one row's products with the group's activations xv: its plane-1 code, and its plane-2 code (`code2`)
  const products = (code: string, code2: string | undefined, acc: string) =>
    `${acc} += dotCode(decodeCode(${code}), xv);${
      codec === 'e8p12' ? '' : `\n      ${acc}2 += ${secondPlaneDotWgsl(codec, code2!)};`
    }`;
  // a row's Q̂ sum scaled, then its L̂ term
  const finish = (acc: string, lrow: string) =>
    `${rvq4 || rvq3 ? `${acc} += ${acc}2 / p.resScale;\n    ` : ''}${acc} *= sg.qscale;${
      lowRank
        ? `\n    for (var t = lane; t < sg.k; t += stride) { ${acc} += lval(sg, t, ${lrow}) * zAt(sg, r * p.zRow + sg.zOff + t); }`
        : ''
    }`;
  const body = `${seg}
    var acc2 = 0.0;
    ${codeGroupsWgsl(
      ['sg.q1 + lrow * p.G'],
      'p.G',
      'stride',
      ([code], g, [code2]) => `let xv = x8(r * p.xRow + sg.xOff + 8u * ${g});
      ${products(code!, code2, 'acc')}`,
      secondPlane(codec, ['lrow'], 'p.G'),
      undefined,
      batch,
    )}
    ${finish('acc', 'lrow')}`;
  if (lanes === 32 && tile === 1 && rows > 1) {
    // each lane computes `rows` consecutive rows of one segment with every activation group it loads
    const ks = Array.from({ length: rows }, (_, k) => k);
    const wgRows = ROWS_PER_WG * rows;
    return /* wgsl */ `${decls}
var<workgroup> part: array<f32, ${WG * rows}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  ${prologue}
  let row0 = wid.x * ${wgRows}u + (lid / 32u) * ${rows}u;
  let r = wid.y;
  let lane = lid % 32u;
  let stride = 32u;
  ${ks.map((k) => `var acc${k} = 0.0;`).join(' ')}
  if (row0 < p.mp) {
    let sg = segOf(row0);
    let lrow = row0 - sg.start;
    ${rvq4 || rvq3 ? ks.map((k) => `var acc${k}2 = 0.0;`).join(' ') : ''}
    ${codeGroupsWgsl(
      ks.map((k) => `sg.q1 + (lrow + ${k}u) * p.G`),
      'p.G',
      'stride',
      (codes, g, codes2) => `let xv = x8(r * p.xRow + sg.xOff + 8u * ${g});
      ${ks.map((k) => products(codes[k]!, codes2[k], `acc${k}`)).join('\n      ')}`,
      secondPlane(
        codec,
        ks.map((k) => `(lrow + ${k}u)`),
        'p.G',
      ),
      undefined,
      batch,
    )}
    ${ks.map((k) => finish(`acc${k}`, `lrow + ${k}u`)).join('\n    ')}
  }
  ${rowTotalsWgsl('part', rows)}
}`;
  }
  const tiled = `${seg}
    var acc2: array<f32, ${tile}>;
    for (var g = lane; g < p.G; g += stride) {
      let idx = sg.q1 + lrow * p.G + g;
      let idx2 = sg.q2 + lrow * p.G + g;
      let k1 = decodeCode((codes[idx >> 1u] >> ((idx & 1u) * 16u)) & 0xffffu);
      ${rvq4 ? 'let k2 = decodeCode((codes2[idx2 >> 1u] >> ((idx2 & 1u) * 16u)) & 0xffffu);' : ''}
      ${rvq3 ? 'let c2 = ((codes2[idx2 >> 2u] >> ((idx2 & 3u) * 8u)) & 0xffu) * 8u;' : ''}
      for (var k = 0u; k < ${tile}u; k++) {
        let xv = x8((r0 + k) * p.xRow + sg.xOff + 8u * g);
        acc[k] += dotCode(k1, xv);
        ${rvq4 ? 'acc2[k] += dotCode(k2, xv);' : ''}
        ${rvq3 ? 'acc2[k] += dotE81b(c2, xv);' : ''}
      }
    }
    for (var k = 0u; k < ${tile}u; k++) { acc[k] = sg.qscale * (acc[k]${rvq4 || rvq3 ? ' + acc2[k] / p.resScale' : ''}); }
    ${
      lowRank
        ? `for (var t = lane; t < sg.k; t += stride) {
      let lv = lval(sg, t, lrow);
      for (var k = 0u; k < ${tile}u; k++) { acc[k] += lv * zAt(sg, (r0 + k) * p.zRow + sg.zOff + t); }
    }`
        : ''
    }`;
  const epilogue = 'outv[r * p.mp + row] = total;';
  return matvecKernel(lanes, decls, prologue, tile > 1 ? tiled : body, epilogue, tile).replaceAll(
    '${M}',
    'mp',
  );
}

/**
 * Rows each lane of the E8P kernels with 32 lanes per row computes ({@link e8pMatvecF16Wgsl}, and
 * {@link e8pMatvecWgsl} in decode): a workgroup takes `8·rows` rows.
 */
export type RowsPerLane = 1 | 2 | 4;

/**
 * Workgroup-memory bytes of {@link e8pMatvecF16Wgsl} with activation chunks of `chunk` groups and `rows` rows per
 * lane: the two 256-word decoding tables (2 KiB), 16 bytes of f16 activations and a 4-byte scale per group (at least
 * `rows·`{@link WG} scales: they hold the lanes' partial sums at the end).
 */
export function e8pF16WorkgroupBytes(chunk: number, rows: RowsPerLane = 1): number {
  // each array rounded up to 16 bytes, as WebGPU counts them
  return 2 * 256 * 4 + chunk * 16 + Math.ceil(Math.max(chunk, rows * WG) / 4) * 16;
}

/**
 * Bit positions, within each 16-bit half of a word of the packed-f16 kernel's source table, of the 3-bit fields of
 * f16 pairs 0–3 (coordinates 2k in the low half, 2k + 1 in the high half): pairs 0 and 2 sit where the f16 magic
 * 256 gives them unit weight, pairs 1 and 3 where 32 does; pairs 2 and 3 are pairs 0 and 1 shifted by 8.
 */
const F16_FIELDS = [2, 5, 10, 13] as const;

/**
 * The packed-f16 form of {@link e8pMatvecWgsl} for devices with `shader-f16`: the same output (Q̂ decoded with its
 * low-rank term, segments, E8P12 or RVQ4 planes), 32 lanes per row, one activation row per workgroup along y. What
 * differs is the arithmetic of the code products (Q̂'s, or R̂'s where the input step runs as two launches) and how a
 * code is decoded:
 * - every workgroup builds two 256-word tables in workgroup memory from the bfloat16 source table: `tb[a]`, source
 *   a's 8 coordinates `v` as 3-bit fields `e = v + 3.5` (1 … 6; the magnitudes ±½, ±1½, ±2½), coordinate 2k at bit
 *   `F[k]` and 2k + 1 at `F[k] + 16` with `F = [2, 5, 10, 13]`; and `sg8[σ]`, the sign byte's XOR mask (7 on the field
 *   of every negated coordinate: `7 − e = −v + 3.5`, a ones' complement) with the shift's sign at bits 1 and 17. A code
 *   then costs two 4-byte table reads and one XOR, where the 16-byte table and the sign spread took ~20 instructions;
 * - each f16 pair is its field ORed into an f16 "magic" number (256 for fields at bit 2, 32 at bit 5; the field has
 *   unit weight) plus one constant, `−(259.5 ∓ ¼)` (the shift bit ORed into its bits) or that plus 224: the exact
 *   coordinate `±v + s`, the same f16 value as the table's pair with its sign and shift — so the products, and the output, are
 *   those of the first packed-f16 form to the bit;
 * - the activation vector is converted, in chunks of `chunk` groups of 8, to f16 pairs in workgroup memory: each group
 *   scaled by a power of two `2^(7−e)` that puts its largest magnitude in [64, 128) (exact; `e` clamped to
 *   [−119, 128] so that both the scale and its inverse, kept as an f32, are normal f32 numbers), even groups in the
 *   first half of the chunk and odd ones in the second (so a warp's loads of either are contiguous 16-byte words);
 * - a code's products with its group are 4 packed f16 multiply-adds, two codes per lane iteration (one u32 of codes);
 *   each code's two half sums are added, converted to f32 and scaled back;
 * - each lane computes `rows` rows (1, 2 or 4) with every activation pair it loads, so a workgroup takes `8·rows` rows
 *   and reads its activations, converts them and loads them from workgroup memory `rows` times less per code.
 *
 * Magnitudes stay far from f16 overflow: coordinates are at most 2.75, scaled activations below 128, so a code's sum is
 * below 2 816. Values below about 2⁻¹⁸ of their group's largest become f16 subnormals (within the bound below);
 * non-finite activations give an unspecified result. Per code the f16 rounding (the activations' conversion, 4
 * multiply-adds per half, the halves' sum) is at most about `6·2⁻¹¹·Σ|w_i·x_i|` of that code's terms with
 * round-to-nearest (WGSL also allows the other neighbour and an unfused multiply-add: up to about twice that); the f32
 * accumulation over codes and L̂'s term are as in the f32 form. About 25.5 instructions per code in the loop (the code's
 * load and extraction 1.5, table indices 2, table reads 2, XOR 1, the fields 5 and the shift constants 2, their sums
 * 4, products 4, the code's sum and scale 3, into the row's sum 1) plus 4/rows for the activation and scale loads and
 * the loop and ~4/rows for its share of the activations' conversion: ~28 with 4 rows per lane and ~34 with one,
 * against ~45 for the first packed-f16 form and ~62 for the f32 form; workgroup-memory reads per code: 8 bytes of
 * tables and 20/rows of activations and scale (36 in the first packed-f16 form). Needs (checked by `Kernels.e8pMatvec`, which else uses the f32 form): an even number of groups per
 * row, every segment's rows a multiple of `8·rows` (a workgroup's rows read one activation vector) and its first code
 * at an even index.
 */
export function e8pMatvecF16Wgsl(
  codec: 'e8p12' | 'rvq4',
  lowRank: LatticeCodec | null,
  chunk: number,
  rows: RowsPerLane = 1,
): string {
  if (!Number.isInteger(chunk) || chunk < 2 || chunk % 2 !== 0)
    throw new CalderaError(
      'E_VALUE',
      `e8pMatvecF16Wgsl: chunk ${chunk} is not a positive even number of groups`,
    );
  if (![1, 2, 4].includes(rows))
    throw new CalderaError('E_VALUE', `e8pMatvecF16Wgsl: rows per lane ${rows} is not 1, 2 or 4`);
  const rvq4 = codec === 'rvq4';
  const half = chunk / 2;
  const ks = Array.from({ length: rows }, (_, k) => k);
  // row k's products with the lane's two groups: one u32 of codes per plane
  const products = (k: number) => `{
          let w = codes[w1 + ${k}u * hG + jw];
          acc${k} += codeValue(w & 0xffffu, xa, sa) + codeValue(w >> 16u, xb, sb);${
            rvq4
              ? `
          let v = codes2[w2 + ${k}u * hG + jw];
          acc2${k} += codeValue(v & 0xffffu, xa, sa) + codeValue(v >> 16u, xb, sb);`
              : ''
          }
        }`;
  // the bit of pair k's field in the low half (coordinate 2k) or the high one (2k + 1)
  const field = (k: number, high = false) => `${F16_FIELDS[k]! + (high ? 16 : 0)}u`;
  const wgRows = ROWS_PER_WG * rows;
  return /* wgsl */ `enable f16;
${e8pMatvecDecls(codec, lowRank, 'src')}
var<workgroup> tb: array<u32, 256>;
var<workgroup> sg8: array<u32, 256>;
var<workgroup> xh: array<vec4<u32>, ${chunk}>;
var<workgroup> xs: array<f32, ${Math.max(chunk, rows * WG)}>;
// code c times the 8 activations xw (f16 pairs) of a group with scale sc: the coordinates from the fields of its
// source with the sign mask XORed on, as f16 pairs through the magic numbers 256 (pairs 0, 2) and 32 (pairs 1, 3)
// and the constants that take out the magic, 3.5 and the shift (−259.5 ∓ ¼ from the shift bit, then + 224 for the
// magic 32, exact); 4 packed multiply-adds; the half sums added in f16, then f32 and the scale
fn codeValue(c: u32, xw: vec4<u32>, sc: f32) -> f32 {
  let t = tb[c >> 8u] ^ sg8[c & 255u];
  let u = t >> 8u;
  let o256 = bitcast<vec2<f16>>((t & 0x00020002u) | 0xdc0ddc0du);
  let o32 = o256 + vec2<f16>(224.0h);
  var h = (bitcast<vec2<f16>>((t & 0x001c001cu) | 0x5c005c00u) + o256) * bitcast<vec2<f16>>(xw.x);
  h = fma(bitcast<vec2<f16>>((t & 0x00e000e0u) | 0x50005000u) + o32, bitcast<vec2<f16>>(xw.y), h);
  h = fma(bitcast<vec2<f16>>((u & 0x001c001cu) | 0x5c005c00u) + o256, bitcast<vec2<f16>>(xw.z), h);
  h = fma(bitcast<vec2<f16>>((u & 0x00e000e0u) | 0x50005000u) + o32, bitcast<vec2<f16>>(xw.w), h);
  return f32(h.x + h.y) * sc;
}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  // the tables: source a's coordinates as fields e = v + 3.5; sign byte a's mask (σ' = σ ^ parity: coordinate 2k's
  // sign is bit k, 2k + 1's bit k + 4) with the parity, the shift's sign, at bits 1 and 17
  for (var a = lid; a < 256u; a += ${WG}u) {
    let pair = src[a];
    let par = countOneBits(a) & 1u;
    let s2 = a ^ par;
    var e = 0u;
    var m = par * 0x00020002u;
    ${[0, 1, 2, 3]
      .map(
        (k) => `e |= (u32(bitcast<f32>(pair[${k}] << 16u) + 3.5) << ${field(k)}) |
      (u32(bitcast<f32>(pair[${k}] & 0xffff0000u) + 3.5) << ${field(k, true)});
    m |= ((((s2 >> ${k}u) & 1u) * 7u) << ${field(k)}) | ((((s2 >> ${k + 4}u) & 1u) * 7u) << ${field(k, true)});`,
      )
      .join('\n    ')}
    tb[a] = e;
    sg8[a] = m;
  }
  let row0 = wid.x * ${wgRows}u + (lid / 32u) * ${rows}u;
  let r = wid.y;
  let lane = lid % 32u;
  // the workgroup's rows lie in one segment (every segment's rows are a multiple of ${wgRows}): one activation vector
  let sg = segOf(wid.x * ${wgRows}u);
  let lrow = row0 - sg.start;
  let xo = (r * p.xRow + sg.xOff) >> 2u;
  // the u32 words of the first row's first codes (code indices are even), words per row
  let hG = p.G >> 1u;
  let w1 = (sg.q1 + lrow * p.G) >> 1u;
  let w2 = (sg.q2 + lrow * p.G) >> 1u;
  ${ks.map((k) => `var acc${k} = 0.0;${rvq4 ? ` var acc2${k} = 0.0;` : ''}`).join('\n  ')}
  for (var g0 = 0u; g0 < p.G; g0 += ${chunk}u) {
    let n = min(${chunk}u, p.G - g0);
    // the last chunk's reads are done (and, the first time, the tables are written)
    workgroupBarrier();
    for (var j = lid; j < n; j += ${WG}u) {
      let a = x[xo + 2u * (g0 + j)];
      let b = x[xo + 2u * (g0 + j) + 1u];
      let m = max(abs(a), abs(b));
      let e = clamp(frexp(max(max(m.x, m.y), max(m.z, m.w))).exp, -119, 128);
      let sc = ldexp(1.0, 7 - e);
      // even groups in the first half, odd ones in the second
      let d = (j & 1u) * ${half}u + (j >> 1u);
      xh[d] = vec4<u32>(pack2x16float(a.xy * sc), pack2x16float(a.zw * sc), pack2x16float(b.xy * sc),
        pack2x16float(b.zw * sc));
      xs[d] = ldexp(1.0, e - 7);
    }
    workgroupBarrier();
    if (row0 < p.mp) {
      for (var i = lane; 2u * i < n; i += 32u) {
        let xa = xh[i];
        let xb = xh[${half}u + i];
        let sa = xs[i];
        let sb = xs[${half}u + i];
        let jw = (g0 >> 1u) + i;
        ${ks.map(products).join('\n        ')}
      }
    }
  }
  ${ks.map((k) => `${rvq4 ? `acc${k} += acc2${k} / p.resScale; ` : ''}acc${k} *= sg.qscale;`).join('\n  ')}
  ${
    lowRank
      ? `if (row0 < p.mp) {
    ${ks
      .map(
        (k) =>
          `for (var t = lane; t < sg.k; t += 32u) { acc${k} += lval(sg, t, lrow + ${k}u) * zAt(sg, r * p.zRow + sg.zOff + t); }`,
      )
      .join('\n    ')}
  }`
      : ''
  }
  // the lanes' partial sums of row k at xs[k·${WG} + lid] (free now)
  workgroupBarrier();
  ${rowTotalsWgsl('xs', rows)}
}`;
}

/**
 * What the one-launch input step ({@link inputProjectionWgsl}) finishes of the layers before it: nothing, a residual
 * branch's last layer (its output rotation and residual add, then this step's RMSNorm), or the gate and up layers
 * (their output rotations, then this step's SwiGLU).
 */
export type PreviousStep = 'none' | 'residual' | 'gate';

/**
 * How {@link inputProjectionWgsl} rotates: `whole`, the rotation of its input; `mix`, only the `H_K` mix, of blocks
 * of P already through their Walsh–Hadamard transform; `chunks`, that mix spread over workgroups by chunk of
 * {@link MIX_CHUNK} outputs (8 blocks), each computing its chunk's slice of `x'` and partial sums of `z` over it.
 */
export type InputStepForm = 'whole' | 'mix' | 'chunks';

/**
 * The bindings of {@link inputProjectionWgsl} after its three uniforms (bindings 0–2), in binding order: storage
 * buffers, and when it finishes the layers before a last uniform (`prevParams`).
 */
export function inputProjectionBindings(
  codec: LatticeCodec,
  input: RotationInputKind,
  prev: PreviousStep = 'none',
): string[] {
  const names = ['x', 'pre', 'hkb', 'rot', 'codes', 'z'];
  if (codec !== 'e8p12') names.push('codes2');
  // the gate step computes the SwiGLU's up values itself
  if (input !== 'none' && prev !== 'gate') names.push('aux');
  if (prev === 'residual') names.push('prevOut', 'prevPost', 'prevBias', 'hOut', 'prevParams');
  if (prev === 'gate') names.push('prevPost', 'prevBias', 'prevParams');
  return names;
}

/**
 * Most values per invocation (`C`) for which the one-launch input step reads a vector's multipliers and biases (and
 * the residual stream, RMSNorm weights and signs) with its first reads, before the rotation, rather than when it
 * uses them: every read then waits once, at the cost of registers held through the rotation (C = 8 for 2048 values).
 */
const EARLY_READS_MAX_C = 8;

/**
 * WGSL statements of {@link inputProjectionWgsl} finishing member `k` of the pending output rotation (uniform `pu`)
 * for row `r`: its raw row from `src` rotated in `v`, then for each value `i = lid + c·wg` below its `outLen` the
 * output value `y` (as {@link hadamardWgsl} computes it) handed to `use(c)`, after `preload(c)` (statements that
 * read memory, run for every c at a clamped index); ends with a barrier (`v` is free again). Written out over the
 * `C` values of each invocation, every read first (see {@link unrolled}).
 */
function pendingOutputWgsl(
  k: string,
  src: string,
  C: number,
  wg: number,
  transpose: boolean,
  use: (c: number) => string,
  preload: (c: number) => string = () => '',
): string {
  // with few values per invocation the multipliers, biases and preload are read with the raw row (one wait for all)
  const early = C <= EARLY_READS_MAX_C;
  const reads = unrolled(
    C,
    (c) => `let p${c} = prevPost[mo.postOff + min(lid + ${c * wg}u, lastOut)];
    let b${c} = prevBias[mo.biasOff + min(lid + ${c * wg}u, lastOut)];
    ${preload(c)}`,
  );
  return `{
    let mo = pu.m[${k}];
    let ro = r * pu.xStride + mo.xOff;
    let lastIn = mo.nIn - 1u;
    let lastOut = mo.outLen - 1u;
    ${unrolled(C, (c) => `let s${c} = ${src}[ro + min(lid + ${c * wg}u, lastIn)];`)}
    ${early ? reads : ''}
    ${vectorIntoWgsl(C, 'mo', (c) => `s${c}`, wg)}
    workgroupBarrier();
    if (pu.transform == 1u) { rotateInPlace${mixSuffix(transpose)}(lid, mo); }
    ${early ? '' : reads}
    ${unrolled(
      C,
      (c) => `{
      let i = lid + ${c * wg}u;
      if (i < mo.outLen) {
        ${outputValueWgsl('mo', 'pu', transpose, `p${c}`, `b${c}`)}
        ${use(c)}
      }
    }`,
    )}
    workgroupBarrier();
  }`;
}

/**
 * The input step of CALDERA layers that share an input, in one launch: the input rotation of {@link hadamardWgsl}
 * (`x' = (x ⊙ SU)·M_n` with the input computation `input`, multipliers `post` of 1, no bias) and `z = R̂·x'` of
 * {@link e8pMatvecWgsl} (no low-rank term), with the same operations in the same order as the two launches it
 * replaces (bit-identical on SwiftShader, tested; a GPU compiler could still fuse a multiply-add differently in two
 * shaders). Member w (parameters `u.m[w]` as in the rotation, `pr.seg[w]` for R̂) takes
 * workgroups `seg.wg0 …` along x: each computes the member's whole `x'` in workgroup memory (the H_K mix in place
 * for the orders `mixKs`, written out as in {@link hadamardWgsl}, else through registers, `maxN/wg` values per
 * invocation, `wg` the workgroup's invocations) and then its block of R̂'s rows (`wg/32` with 32 lanes per row, `wg`
 * with one) from there, the first `batch` code groups ({@link CodeBatch}) of each lane's row loaded before the
 * rotation (their memory latency passes during it); the member's first workgroup also writes `x'` to `rot` for the
 * Q̂ kernel. A member without lattice factors (`k` = 0) takes one workgroup. The E8P source table (and the E81B table
 * of an `rvq3` R̂) come from the uniform `tables` (see {@link e8pTablesUniform}), copied into workgroup memory with 32
 * lanes per row (4 KiB, and 8 KiB for E81B). Not batched over row tiles: one activation row per workgroup along y.
 *
 * With `residual` (and `input` 'rmsNorm') the step also finishes the layer before it: `x` holds the residual stream
 * h, `prevOut` that layer's output rows before their output rotation (uniform `pu`, one member, as in
 * {@link hadamardWgsl} with multipliers `pre` of 1, `prevPost` its SV and `prevBias` its bias, H_K from `hkb`), and
 * each workgroup computes `h' = h + rotation(prevOut)` in registers, the RMSNorm of h' and the input rotation from
 * there. Member 0's first workgroup writes h' to `hOut` (another buffer than `x`: the other workgroups still read h).
 * The same operations in the same order as that output rotation accumulating into h, then this step with RMSNorm
 * (bit-identical on SwiftShader, tested). `maxN` covers all vectors.
 *
 * With `prev` 'gate' (and `input` 'swiglu') it finishes the gate and up layers instead: `x` holds their output rows
 * before the output rotation (members 0, gate, and 1, up, of `pu`), and each workgroup rotates both (gate's values
 * kept in registers while up's are rotated), then loads `silu(gate)·up` as the SwiGLU input computation would. The
 * same operations in the same order as their output rotation, then this step with SwiGLU (bit-identical on
 * SwiftShader, tested); the gate and up outputs are not written.
 *
 * In the forms `mix` and `chunks` (see {@link InputStepForm}; no input computation, nothing to finish) `x` holds
 * vectors whose blocks of `P` have been through their Walsh–Hadamard transform already (by {@link gateSliceWgsl}),
 * and the rotation is the `H_K` mix alone; with `chunks` (one layer, `mixKs` its one written-out order K) workgroup
 * `q·sg.a + b` computes chunk q's 8 blocks of `x'` (from `x`, each invocation's column read from memory), writes them
 * to `rot` (b = 0) and sums its block b of R̂'s rows over them into `z` at `q·k` (rows of `pr.zRow`: one partial
 * vector of k per chunk, which the E8P kernel adds).
 *
 * `transpose` and `prevTranspose`: the directions of this step's mix (an input rotation's: false) and of the
 * pending output rotation's (true), as in {@link hadamardWgsl}; the shader holds the written-out mixes of both.
 */
export function inputProjectionWgsl(
  maxN: number,
  codec: LatticeCodec,
  lanes: Lanes,
  input: RotationInputKind,
  prev: PreviousStep = 'none',
  mixKs: readonly number[] = [],
  wg = WG,
  form: InputStepForm = 'whole',
  batch: CodeBatch = E8P_UNROLL,
  transpose = false,
  prevTranspose = true,
): string {
  checkCodeBatch(batch);
  if (form !== 'whole' && (input !== 'none' || prev !== 'none'))
    throw new CalderaError('E_VALUE', 'inputProjectionWgsl: blocks rotated before need no input computation');
  const chunks = form === 'chunks';
  const K = mixKs[0] ?? 1;
  if (chunks && (mixKs.length !== 1 || K <= MIX_CHUNK))
    throw new CalderaError(
      'E_VALUE',
      'inputProjectionWgsl: chunks need one written-out H_K mix of several chunks',
    );
  // R̂'s code rows (from the chunk's first group `gs`, `ng` groups, with chunks), and where a row's z goes (chunk q's
  // partial sums at q·k)
  const rowBase = (r: string) => `sg.q1 + ${r} * pr.G${chunks ? ' + gs' : ''}`;
  const plane2Of = (r: string) => {
    const p2 = secondPlane(codec, [r], 'pr.G');
    return p2 && chunks ? { ...p2, bases: p2.bases.map((b) => `${b} + gs`) } : p2;
  };
  const G = chunks ? 'ng' : 'pr.G';
  const zIndex = `r * pr.zRow + sg.zOff + ${chunks ? 'q * sg.k + ' : ''}row`;
  const residual = prev === 'residual';
  const rvq4 = codec === 'rvq4';
  const rvq3 = codec === 'rvq3';
  const rpw = lanes === 1 ? wg : wg / 32;
  const C = Math.ceil(maxN / wg);
  // with 32 lanes an rvq3 R̂ reads E81B from workgroup memory (code-dependent uniform reads serialize on many GPUs)
  const e81bLocal = rvq3 && lanes === 32;
  const types: Record<string, string> = {
    x: 'array<f32>',
    pre: 'array<f32>',
    hkb: 'array<f32>',
    rot: 'array<f32>',
    codes: 'array<u32>',
    z: 'array<f32>',
    codes2: 'array<u32>',
    prevOut: 'array<f32>',
    prevPost: 'array<f32>',
    prevBias: 'array<f32>',
    hOut: 'array<f32>',
  };
  // the residual step's RMSNorm weights and signs: read before the layer before is finished where few (see
  // EARLY_READS_MAX_C), else when used
  const residualInputReads = `let lastIn = mb.nIn - 1u;
  ${unrolled(
    C,
    (c) => `let a${c} = aux[min(lid + ${c * wg}u, lastIn)];
  let q${c} = pre[mb.preOff + min(lid + ${c * wg}u, lastIn)];`,
    '\n  ',
  )}`;
  const names = inputProjectionBindings(codec, input, prev);
  const written = ['rot', 'z', 'hOut'];
  // aux is declared by rotationInputWgsl
  const bindings = names
    .map((n, i) =>
      n === 'aux'
        ? ''
        : n === 'prevParams'
          ? `@group(0) @binding(${i + 3}) var<uniform> pu: U;`
          : `@group(0) @binding(${i + 3}) var<storage, ${written.includes(n) ? 'read_write' : 'read'}> ${n}: ${types[n]};`,
    )
    .join('\n');
  return /* wgsl */ `
${ROTATION_PARAMS}
struct RSeg { wg0: u32, k: u32, q1: u32, q2: u32, zOff: u32, qscale: f32, a: u32, b: u32 }
struct PR { G: u32, zRow: u32, resScale: f32, nmem: u32, seg: array<RSeg, ${ROTATION_MAX_MEMBERS}> }
@group(0) @binding(1) var<uniform> pr: PR;
struct T { pairs: array<vec4<u32>, 256>, e81b: array<vec4<f32>, 512> }
@group(0) @binding(2) var<uniform> tables: T;
${bindings}
var<workgroup> v: array<f32, ${input === 'rmsNorm' ? Math.max(maxN, normScaleWords(wg)) : maxN}>;
${rotationInputWgsl(prev === 'gate' ? 'none' : input, 'u.eps', 3 + Math.max(0, names.indexOf('aux')), wg)}
${lanes === 1 ? '' : `var<workgroup> tbl: array<vec4<u32>, 256>;\nvar<workgroup> part: array<f32, ${wg}>;`}
${e81bLocal ? 'var<workgroup> e81bw: array<f32, 2048>;' : ''}
fn pairs(a: u32) -> vec4<u32> { return ${lanes === 1 ? 'tables.pairs[a]' : 'tbl[a]'}; }
fn e81bAt(i: u32) -> f32 { return ${e81bLocal ? 'e81bw[i]' : 'tables.e81b[i >> 2u][i & 3u]'}; }
${E8P_DECODE_WGSL}
${rvq3 ? E81B_DOT_WGSL : ''}
${rotationStepsWgsl(mixKs, wg, prev === 'none' ? [transpose] : [transpose, prevTranspose])}
@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  ${lanes === 1 ? '' : `for (var i = lid; i < 256u; i += ${wg}u) { tbl[i] = tables.pairs[i]; }`}
  ${e81bLocal ? `for (var i = lid; i < 2048u; i += ${wg}u) { e81bw[i] = tables.e81b[i >> 2u][i & 3u]; }` : ''}
  var w = 0u;
  for (var t = 1u; t < pr.nmem; t++) { if (wid.x >= pr.seg[t].wg0) { w = t; } }
  let mb = u.m[w];
  let sg = pr.seg[w];
  let blk = wid.x - sg.wg0;
  let r = wid.y;${
    chunks
      ? `
  // chunk q of the H_K mix (blocks a0 … a0 + 7 of P), the workgroups of its sg.a blocks of R̂'s rows
  let q = blk / sg.a;
  let rb = blk % sg.a;
  let a0 = q * ${MIX_CHUNK}u;
  let gs = (a0 * mb.P) >> 3u;
  let ng = (min(${MIX_CHUNK}u, ${K}u - a0) * mb.P) >> 3u;`
      : `
  let rb = blk;`
  }
  let row = rb * ${rpw}u + ${lanes === 1 ? 'lid' : 'lid / 32u'};
  let lane = ${lanes === 1 ? '0u' : 'lid % 32u'};
  // the first codes of R̂'s row (of the last row where past them), loaded now: their memory latency passes during
  // the rotation instead of after it
  let prow = min(row, max(sg.k, 1u) - 1u);
  ${codeBatchWgsl([rowBase('prow')], G, `${lanes}u`, plane2Of('prow'), 'lane', 'first_', batch)}
  let xo = r * u.xStride + mb.xOff;
  ${
    chunks
      ? `// chunk q of the mix of blocks already transformed, each invocation's column read from x: the outputs of
  // the written-out mix (the same sums as mixK${K}), into v from 0 (pre, all ones, and hkb are not read, but stay
  // bound: the automatic layout keeps only the bindings a shader uses)
  _ = pre[0];
  _ = hkb[0];
  for (var b = lid; b < mb.P; b += ${wg}u) {
    ${chunkSumsWgsl(K, 'q', transpose, (a) => `x[xo + ${a}u * mb.P + b]`)}
    ${unrolled(MIX_CHUNK, (j) => `if (a0 + ${j}u < ${K}u) { v[${j}u * mb.P + b] = r${j} * mb.invSqrtN; }`)}
  }
  workgroupBarrier();`
      : `${
          residual
            ? `// the layer before: h' = h + its rotated output (h at xo: its output offsets are this step's input offsets)
  ${C <= EARLY_READS_MAX_C ? residualInputReads : ''}
  var hn: array<f32, ${C}>;
  ${pendingOutputWgsl(
    '0u',
    'prevOut',
    C,
    wg,
    prevTranspose,
    (c) => `y += h${c};\n        hn[${c}] = y;`,
    (c) => `let h${c} = x[xo + min(lid + ${c * wg}u, lastOut)];`,
  )}
  var sumSq = vec2<f32>();
  ${unrolled(
    C,
    (c) => `if (lid + ${c * wg}u < pu.m[0].outLen && wid.x == 0u) { hOut[xo + lid + ${c * wg}u] = hn[${c}]; }
    if (lid + ${c * wg}u < mb.nIn) { sumSq = sqAcc(sumSq, hn[${c}]); }`,
    '\n  ',
  )}
  let scale = normScale(sumSq, mb.nIn, lid);
  ${C <= EARLY_READS_MAX_C ? '' : residualInputReads}
  ${vectorIntoWgsl(C, 'mb', (c) => `hn[${c}] * scale.x * scale.y * a${c} * q${c}`, wg, '\n  ')}`
            : prev === 'gate'
              ? `// the gate and up layers before: their rotated outputs (members 0 and 1 of pu, rows of x), then silu(gate)·up
  var gv: array<f32, ${C}>;
  var uv: array<f32, ${C}>;
  ${pendingOutputWgsl('0u', 'x', C, wg, prevTranspose, (c) => `gv[${c}] = y;`)}
  ${pendingOutputWgsl('1u', 'x', C, wg, prevTranspose, (c) => `uv[${c}] = y;`)}
  let lastIn = mb.nIn - 1u;
  ${unrolled(C, (c) => `let q${c} = pre[mb.preOff + min(lid + ${c * wg}u, lastIn)];`, '\n  ')}
  ${vectorIntoWgsl(C, 'mb', (c) => `gv[${c}] / (1.0 + exp(-gv[${c}])) * uv[${c}] * q${c}`, wg, '\n  ')}`
              : `let scale = inputScale(xo, mb.nIn, lid);
  let lastIn = mb.nIn - 1u;
  ${unrolled(
    C,
    (c) => `let a${c} = inputAt(xo, min(lid + ${c * wg}u, lastIn), scale);
  let q${c} = pre[mb.preOff + min(lid + ${c * wg}u, lastIn)];`,
    '\n  ',
  )}
  ${vectorIntoWgsl(C, 'mb', (c) => `a${c} * q${c}`, wg, '\n  ')}`
        }
  workgroupBarrier();
  if (u.transform == 1u) {
    ${form === 'mix' ? 'mixInPlace' : 'rotateInPlace'}${mixSuffix(transpose)}(lid, mb);
    // an order without a written-out mix: each value's mix from hkb into registers, then back into v
    if (!mixesInPlace(mb.K)) {
      var mixed: array<f32, ${C}>;
      for (var c = 0u; c < ${C}u; c++) {
        let i = lid + c * ${wg}u;
        if (i < mb.n) { mixed[c] = rotatedAt${mixSuffix(transpose)}(mb, i, u.transform); }
      }
      workgroupBarrier();
      for (var c = 0u; c < ${C}u; c++) {
        let i = lid + c * ${wg}u;
        if (i < mb.n) { v[i] = mixed[c]; }
      }
      workgroupBarrier();
    }
  }`
  }
  // x' (with chunks, the chunk's slice) for the Q̂ kernel, by the first workgroup of R̂'s rows
  if (rb == 0u) {
    let oo = r * mb.outStride + mb.outOff${chunks ? ' + a0 * mb.P' : ''};
    for (var i = lid; i < ${chunks ? 'ng * 8u' : 'mb.n'}; i += ${wg}u) { rot[oo + i] = v[i]; }
  }
  var acc = 0.0;
  if (row < sg.k) {
    var acc2 = 0.0;
    ${codeGroupsWgsl(
      [rowBase('row')],
      G,
      `${lanes}u`,
      ([code], g, [code2]) => `let o = 8u * ${g};
      let xv = activations(vec4<f32>(v[o], v[o + 1u], v[o + 2u], v[o + 3u]),
        vec4<f32>(v[o + 4u], v[o + 5u], v[o + 6u], v[o + 7u]));
      acc += dotCode(decodeCode(${code}), xv);
      ${codec === 'e8p12' ? '' : `acc2 += ${secondPlaneDotWgsl(codec, code2!)};`}`,
      plane2Of('row'),
      'first_',
      batch,
    )}
    ${rvq4 || rvq3 ? 'acc += acc2 / pr.resScale;' : ''}
    acc *= sg.qscale;
  }
  ${
    lanes === 1
      ? `if (row < sg.k) { z[${zIndex}] = acc; }`
      : `part[lid] = acc;
  ${laneSumWgsl('part[lid] += part[lid + s];')}
  if (lane == 0u && row < sg.k) { z[${zIndex}] = part[lid]; }`
  }
}`;
}

/**
 * The first launch of the gate step in two (see `Kernels.gateStep`): the gate and up layers' output rotations
 * (members 0, gate, and 1, up, of the uniform `u`, with `M_n = (H_K ⊗ H_P)/√n` as in {@link hadamardWgsl}), SwiGLU,
 * the down layer's input multipliers (`pre` from `d.preOff`) and the Walsh–Hadamard transform of that layer's
 * input rotation over each block of P, spread over `ceil(K/8)` workgroups along x: workgroup q computes the 8 blocks
 * `8q … 8q + 7` of the result (the outputs of chunk q of the `H_K` mix, {@link MIX_CHUNK}), whose blocks then need
 * no other values, and writes them to `out` (rows of `d.outStride`), from where the down layer's input step
 * ({@link inputProjectionWgsl} in the form `mix` or `chunks`) only mixes. Each workgroup still transforms the whole
 * gate and up vectors (their blocks of P), but mixes only its chunk: the one-launch gate step mixes three whole
 * vectors of K·P values in one workgroup, the serial chain that makes it the decode step's slowest launch. The same operations
 * in the same order as that step (bit-identical on SwiftShader, tested). K (the pending rotation's order, written
 * out: at most {@link UNROLLED_MIX_MAX_K}) and P (`s`, a chunk's values in workgroup memory) are the pipeline's,
 * as is `transpose`, the gate and up rotations' direction (see {@link hadamardWgsl}); `maxN` sizes `v` (the pending
 * vectors' padded width).
 */
export function gateSliceWgsl(maxN: number, K: number, P: number, wg = WG, transpose = true): string {
  if (K < 2 || K > UNROLLED_MIX_MAX_K)
    throw new CalderaError('E_VALUE', `gateSliceWgsl: H_K order ${K} is not written out`);
  const C = Math.ceil(maxN / wg);
  return /* wgsl */ `
${ROTATION_PARAMS}
struct D { nIn: u32, preOff: u32, outStride: u32, a: u32 }
@group(0) @binding(1) var<uniform> d: D;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> post: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read> pre: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
var<workgroup> v: array<f32, ${maxN}>;
var<workgroup> s: array<f32, ${MIX_CHUNK * P}>;
${butterfliesWgsl(wg)}
@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let q = wid.x;
  let r = wid.y;
  let a0 = q * ${MIX_CHUNK}u;
  // gate (k = 0) into s, then up (k = 1) with silu(gate)·up·SU into s
  for (var k = 0u; k < 2u; k++) {
    let mo = u.m[k];
    let ro = r * u.xStride + mo.xOff;
    let lastIn = mo.nIn - 1u;
    ${unrolled(C, (c) => `let s${c} = x[ro + min(lid + ${c * wg}u, lastIn)];`)}
    ${vectorIntoWgsl(C, 'mo', (c) => `s${c}`, wg)}
    workgroupBarrier();
    butterflies(lid, mo);
    for (var b = lid; b < mo.P; b += ${wg}u) {
      ${chunkSumsWgsl(K, 'q', transpose, (a) => `v[${a}u * mo.P + b]`)}
      ${unrolled(
        MIX_CHUNK,
        (j) => `if (a0 + ${j}u < ${K}u) {
        let i = (a0 + ${j}u) * mo.P + b;
        var y = 0.0;
        if (i < mo.outLen) {
          y = mo.gscale * ((r${j} * mo.invSqrtN) * post[mo.postOff + i]);
          if (mo.hasBias == 1u) { y += bias[mo.biasOff + i]; }
        }
        if (k == 0u) {
          s[${j}u * mo.P + b] = y;
        } else {
          let g = s[${j}u * mo.P + b];
          s[${j}u * mo.P + b] = select(0.0, g / (1.0 + exp(-g)) * y * pre[d.preOff + min(i, d.nIn - 1u)], i < d.nIn);
        }
      }`,
        '\n      ',
      )}
    }
    workgroupBarrier();
  }
  // the down layer's Walsh–Hadamard transform over the chunk's blocks (the same butterflies as on the whole vector)
  var ms = u.m[0];
  ms.n = min(${MIX_CHUNK}u, ${K}u - a0) * ms.P;
  for (var i = lid; i < ms.n; i += ${wg}u) { v[i] = s[i]; }
  workgroupBarrier();
  butterflies(lid, ms);
  for (var i = lid; i < ms.n; i += ${wg}u) { out[r * d.outStride + a0 * ms.P + i] = v[i]; }
}`;
}

/**
 * The uniform `tables` of {@link inputProjectionWgsl}: the E8P source table ({@link e8pSourcePairs} layout, 4 KiB)
 * and the 256×8 E81B codebook (f32 bits, 8 KiB).
 */
export function e8pTablesUniform(pairs: Uint32Array, e81b: Float32Array): Uint32Array {
  if (pairs.length !== 1024 || e81b.length !== 2048)
    throw new CalderaError(
      'E_SHAPE',
      `e8pTablesUniform: ${pairs.length} pair words and ${e81b.length} E81B values, need 1024 and 2048`,
    );
  const out = new Uint32Array(1024 + 2048);
  out.set(pairs);
  out.set(new Uint32Array(e81b.buffer, e81b.byteOffset, 2048), 1024);
  return out;
}

/** The buffers of the RoPE/KV launches ({@link ROPE_KV_WGSL}, {@link ropeKvNormWgsl}): cos/sin, q, k, v, the cache. */
const ROPE_KV_BUFFERS = /* wgsl */ `@group(0) @binding(2) var<storage, read> cs: array<f32>;
@group(0) @binding(3) var<storage, read_write> q: array<f32>;
@group(0) @binding(4) var<storage, read> k: array<f32>;
@group(0) @binding(5) var<storage, read> v: array<f32>;
@group(0) @binding(6) var<storage, read_write> ck: array<f32>;
@group(0) @binding(7) var<storage, read_write> cv: array<f32>;`;

/**
 * RoPE (Hugging Face rotate-half) of row r at position `step.pos + r` (`cs` holds cos/sin), in one launch: in place on
 * the `heads` query heads of `q`, and on the `kvHeads` heads of `k`, which are stored with row r of `v` at that
 * position of the KV cache (`ck`, `cv`). Invocation `idx` takes one pair `(i, i + hd/2)` of a query head, then of a
 * key/value head.
 */
export const ROPE_KV_WGSL = /* wgsl */ `${STEP}
struct P { heads: u32, kvHeads: u32, hd: u32, a: u32 }
@group(0) @binding(1) var<uniform> p: P;
${ROPE_KV_BUFFERS}
${ROPE_PAIR_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let half = p.hd / 2u;
  let qPairs = p.heads * half;
  if (gid.x >= qPairs + p.kvHeads * half) { return; }
  let isQ = gid.x < qPairs;
  let idx = select(gid.x - qPairs, gid.x, isQ);
  let h = idx / half;
  let i = idx % half;
  let pos = step.pos + gid.y;
  if (isQ) {
    let o = gid.y * p.heads * p.hd + h * p.hd;
    let y = ropePair(q[o + i], q[o + i + half], pos, half, i);
    q[o + i] = y.x;
    q[o + i + half] = y.y;
    return;
  }
  let o = h * p.hd;
  let base = pos * p.kvHeads * p.hd;
  let ro = gid.y * p.kvHeads * p.hd + o;
  let y = ropePair(k[ro + i], k[ro + i + half], pos, half, i);
  ck[base + o + i] = y.x;
  ck[base + o + i + half] = y.y;
  cv[base + o + i] = v[ro + i];
  cv[base + o + i + half] = v[ro + i + half];
}`;

/** Invocations of {@link ropeKvNormWgsl}'s workgroups (one per head and row). */
export const ROPE_NORM_WG = 64;

/**
 * {@link ROPE_KV_WGSL} with each head of q and k RMS-normed before RoPE (Qwen3's `q_norm`, `k_norm`; `qn`, `kn` of
 * `hd` values, epsilon in `p`): one workgroup of {@link ROPE_NORM_WG} per head (the `heads` query heads, then the
 * `kvHeads` key heads) and row, which loads the head into workgroup memory, sums its squares in order in invocation 0
 * ({@link HEAD_NORM_WGSL}, as the fused forms do) for all, and writes the normed, rotated pairs: q in place, k to the
 * cache with v. `hd` sizes the workgroup array. 8 storage buffers.
 */
export function ropeKvNormWgsl(hd: number): string {
  return /* wgsl */ `${STEP}
struct P { heads: u32, kvHeads: u32, hd: u32, eps: f32 }
@group(0) @binding(1) var<uniform> p: P;
${ROPE_KV_BUFFERS}
${qkNormBindings(8)}
var<workgroup> hv: array<f32, ${hd}>;
var<workgroup> hs: vec2<f32>;
${ROPE_PAIR_WGSL}${HEAD_NORM_WGSL}
@compute @workgroup_size(${ROPE_NORM_WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let isQ = wid.x < p.heads;
  let h = select(wid.x - p.heads, wid.x, isQ);
  let pos = step.pos + wid.y;
  let kw = p.kvHeads * p.hd;
  // the head's values in the row: of q, else of k (and v)
  var o = wid.y * kw + h * p.hd;
  if (isQ) { o = wid.y * p.heads * p.hd + h * p.hd; }
  for (var j = lid; j < p.hd; j += ${ROPE_NORM_WG}u) {
    if (isQ) { hv[j] = q[o + j]; } else { hv[j] = k[o + j]; }
  }
  workgroupBarrier();
  if (lid == 0u) {
    ${headNormWgsl('s', (j) => `hv[${j}]`, 'p.hd', 'p.eps')}
    hs = s;
  }
  workgroupBarrier();
  let s = hs;
  let half = p.hd / 2u;
  for (var i = lid; i < half; i += ${ROPE_NORM_WG}u) {
    if (isQ) {
      let y = ropePair(hv[i] * s.x * s.y * qn[i], hv[i + half] * s.x * s.y * qn[i + half], pos, half, i);
      q[o + i] = y.x;
      q[o + i + half] = y.y;
    } else {
      let y = ropePair(hv[i] * s.x * s.y * kn[i], hv[i + half] * s.x * s.y * kn[i + half], pos, half, i);
      let c = pos * kw + h * p.hd;
      ck[c + i] = y.x;
      ck[c + i + half] = y.y;
      cv[c + i] = v[o + i];
      cv[c + i + half] = v[o + i + half];
    }
  }
}`;
}

/**
 * Causal attention of query row r (position `step.pos + r`) over the first `step.pos + r + 1` cached keys/values,
 * one workgroup per query head and row; grouped-query heads share KV head `h / group`. Scores go through a scratch
 * buffer `[rows, heads, cap]`.
 */
export function attentionWgsl(wg = WG): string {
  return /* wgsl */ `${STEP}
${attentionParamsWgsl(1)}
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> ck: array<f32>;
@group(0) @binding(4) var<storage, read> cv: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> outv: array<f32>;
var<workgroup> red: array<f32, ${wg}>;
@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let hh = wid.x;
  let ko = (hh / p.group) * p.hd;
  let qo = wid.y * p.heads * p.hd + hh * p.hd;
  let base = (wid.y * p.heads + hh) * p.cap;
  let len = step.pos + wid.y + 1u;
  ${scoresSoftmaxWgsl('for (var i = 0u; i < p.hd; i++) { s += q[qo + i] * ck[t * p.kw + ko + i]; }', wg)}
  for (var i = lid; i < p.hd; i += ${wg}u) {
    var acc = 0.0;
    for (var t = 0u; t < len; t++) { acc += scores[base + t] / total * cv[t * p.kw + ko + i]; }
    outv[qo + i] = acc;
  }
}`;
}

/** SwiGLU in place: `g = silu(g)·u`. */
export const SWIGLU_WGSL = /* wgsl */ `
struct P { n: u32, a: u32, b: u32, c: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> g: array<f32>;
@group(0) @binding(2) var<storage, read> u: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  if (gid.x >= p.n) { return; }
  let i = gid.y * p.n + gid.x;
  let gi = g[i];
  g[i] = gi / (1.0 + exp(-gi)) * u[i];
}`;

/**
 * Negative log-likelihood per row: `out[r] = log Σ_j exp(x_rj − m_r) + m_r − x_r,targets[r]` with `m_r` the row's
 * maximum (`x`: logits, rows of `n`; row `r = workgroup_id.y`), in f32 with per-invocation partial sums reduced in
 * workgroup memory: a row's scoring reads back one float instead of `n`.
 */
export const NLL_WGSL = /* wgsl */ `
struct P { n: u32, a: u32, b: u32, c: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> outv: array<f32>;
var<workgroup> red: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
  let r = wg.y;
  let o = r * p.n;
  var m = -3.4e38;
  for (var j = lid; j < p.n; j += ${WG}u) { m = max(m, x[o + j]); }
  ${workgroupReduceWgsl('red', 'm', larger, 'mx', WG)}
  workgroupBarrier();
  var e = 0.0;
  for (var j = lid; j < p.n; j += ${WG}u) { e += exp(x[o + j] - mx); }
  ${workgroupReduceWgsl('red', 'e', add, 'total', WG)}
  if (lid == 0u) { outv[r] = log(total) + mx - x[o + targets[r]]; }
}`;

/** Set in {@link ARGMAX_WGSL}'s result when the row holds a NaN (the index is then meaningless). */
export const ARGMAX_NAN_FLAG = 0x80000000;

/**
 * Index of the largest value (the first one on ties) of the last row of a batch (row `step.len − step.pos − 1`),
 * one workgroup (not batched), with {@link ARGMAX_NAN_FLAG} set when the row holds a NaN (found from its bits: WGSL
 * lets a compiler assume that floats are never NaN, so `v != v` may be folded away).
 */
export const ARGMAX_WGSL = /* wgsl */ `${STEP}
struct P { n: u32, a: u32, b: u32, c: u32 }
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> outv: array<u32>;
var<workgroup> vals: array<f32, ${WG}>;
var<workgroup> idxs: array<u32, ${WG}>;
var<workgroup> nans: atomic<u32>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32) {
  var best = -3.4e38;
  var bi = 0xffffffffu;
  var nan = 0u;
  let o = (step.len - step.pos - 1u) * p.n;
  for (var j = lid; j < p.n; j += ${WG}u) {
    let v = x[o + j];
    if (v > best || bi == 0xffffffffu) { best = v; bi = j; }
    nan |= u32((bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u);
  }
  vals[lid] = best;
  idxs[lid] = bi;
  if (nan != 0u) { atomicOr(&nans, 1u); }
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) {
      let ov = vals[lid + s];
      let oi = idxs[lid + s];
      if (oi != 0xffffffffu && (idxs[lid] == 0xffffffffu || ov > vals[lid] || (ov == vals[lid] && oi < idxs[lid]))) {
        vals[lid] = ov;
        idxs[lid] = oi;
      }
    }
    workgroupBarrier();
  }
  if (lid == 0u) { outv[0] = idxs[0] | select(0u, ${ARGMAX_NAN_FLAG}u, atomicLoad(&nans) != 0u); }
}`;

/** Entries each workgroup of the top-k kernels ({@link topkLevelWgsl}) sorts in workgroup memory (8 KiB). */
export const TOPK_BLOCK = 1024;

/**
 * The largest k of the GPU's top-k ({@link topkLevelWgsl}); at most half of {@link TOPK_BLOCK}, so that every level
 * shrinks its input.
 */
export const TOPK_MAX = 128;

/** The most levels of the top-k reduction (`nIn` of its uniform): enough for vocabularies up to 1024·8⁷ tokens. */
export const TOPK_MAX_LEVELS = 8;

/**
 * Workgroups per level of the top-k reduction over `vocab` logits for a given k (default {@link TOPK_MAX}): level 0
 * takes the logits in blocks of {@link TOPK_BLOCK}, each later level the previous one's k per block, down to one
 * block.
 */
export function topkLevelBlocks(vocab: number, k = TOPK_MAX): number[] {
  const blocks: number[] = [];
  for (let n = vocab; ;) {
    const b = Math.ceil(n / TOPK_BLOCK);
    blocks.push(b);
    if (b <= 1) return blocks;
    n = b * k;
  }
}

/**
 * The per-pass uniform of the top-k kernels (`TP` of {@link topkLevelWgsl}) for a given k: k, the `nSeen` tokens left
 * out and read back, the vocabulary, whether the mask applies, and each level's input count — the logits, then each
 * block's k of the level before — for the levels recorded for {@link TOPK_MAX} (those past one block take its k again).
 */
export function topkParams(vocab: number, k: number, nSeen: number): Uint32Array<ArrayBuffer> {
  const params = new Uint32Array(4 + TOPK_MAX_LEVELS);
  params.set([k, nSeen, vocab, nSeen > 0 ? 1 : 0]);
  const levels = topkLevelBlocks(vocab).length;
  for (let l = 0, n = vocab; l < levels; l++, n = Math.ceil(n / TOPK_BLOCK) * k) params[4 + l] = n;
  return params;
}

/** The uniforms of the top-k kernels: the pass's parameters (written per pass) and each level's number. */
const TOPK_PARAMS = /* wgsl */ `
struct TP { k: u32, nSeen: u32, vocab: u32, useMask: u32, nIn: array<vec4<u32>, ${TOPK_MAX_LEVELS / 4}> }
@group(0) @binding(0) var<uniform> tp: TP;`;

/**
 * One level of the GPU's top-k (`generate()` with `topK`: see `WebGpuModel.stepTopK`): workgroup b sorts entries
 * `[b·B, (b+1)·B)` of its input (B = {@link TOPK_BLOCK}; beyond the level's `nIn`, padding that ranks last) into rank
 * order — higher logit first, equal logits by lower index, as the CPU's sampler ranks them — with a bitonic network
 * in workgroup memory, and writes its first k (key, id) pairs at `b·k`. A key is the logit's bits made to order as
 * unsigned integers (−0 as 0: they are equal logits). Level 0 (`fromLogits`) reads the logits of row 0, leaves out
 * the tokens set in the bit mask `mask` (when `useMask`: their id becomes padding's, 0xffffffff, with key 0, below
 * every logit's) and ORs 1 into `flags[0]` when a logit is NaN (found from its bits, as {@link ARGMAX_WGSL}); later
 * levels read the pairs of the level before. The top k of the whole input are the top k of the blocks' top k.
 */
export function topkLevelWgsl(fromLogits: boolean): string {
  const B = TOPK_BLOCK;
  const per = B / WG;
  return /* wgsl */ `${TOPK_PARAMS}
struct LV { level: u32, a: u32, b: u32, c: u32 }
@group(0) @binding(1) var<uniform> lv: LV;
${
  fromLogits
    ? `@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<u32>;
@group(0) @binding(4) var<storage, read_write> outv: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> flags: array<atomic<u32>>;`
    : `@group(0) @binding(2) var<storage, read> inp: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> outv: array<vec2<u32>>;`
}
var<workgroup> keys: array<u32, ${B}>;
var<workgroup> ids: array<u32, ${B}>;
/** Whether (ka, ia) ranks before (kb, ib). */
fn ranksBefore(ka: u32, ia: u32, kb: u32, ib: u32) -> bool { return ka > kb || (ka == kb && ia < ib); }
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let nIn = tp.nIn[lv.level >> 2u][lv.level & 3u];
  let base = wid.x * ${B}u;
  if (base >= nIn) { return; }
  ${fromLogits ? 'var nan = 0u;' : ''}
  for (var e = 0u; e < ${per}u; e++) {
    let i = base + lid + e * ${WG}u;
    var key = 0u;
    var id = 0xffffffffu;
    if (i < nIn) {${
      fromLogits
        ? `
      let bits = bitcast<u32>(x[i]);
      nan |= u32((bits & 0x7fffffffu) > 0x7f800000u);
      if (tp.useMask == 0u || ((mask[i >> 5u] >> (i & 31u)) & 1u) == 0u) {
        let b = select(bits, 0u, bits == 0x80000000u);
        key = select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
        id = i;
      }`
        : `
      let c = inp[i];
      key = c.x;
      id = c.y;`
    }
    }
    keys[lid + e * ${WG}u] = key;
    ids[lid + e * ${WG}u] = id;
  }
  ${fromLogits ? 'if (nan != 0u) { atomicOr(&flags[0], 1u); }' : ''}
  workgroupBarrier();
  // bitonic sort: in blocks of \`size\` the first half into rank order, the second into the reverse (the last: all)
  for (var size = 2u; size <= ${B}u; size <<= 1u) {
    for (var stride = size >> 1u; stride > 0u; stride >>= 1u) {
      for (var e = 0u; e < ${per / 2}u; e++) {
        let p = lid + e * ${WG}u;
        let i = ((p & ~(stride - 1u)) << 1u) | (p & (stride - 1u));
        let j = i + stride;
        let ka = keys[i];
        let ia = ids[i];
        let kb = keys[j];
        let ib = ids[j];
        if (ranksBefore(kb, ib, ka, ia) == ((i & size) == 0u)) {
          keys[i] = kb;
          ids[i] = ib;
          keys[j] = ka;
          ids[j] = ia;
        }
      }
      workgroupBarrier();
    }
  }
  for (var j = lid; j < tp.k; j += ${WG}u) { outv[wid.x * tp.k + j] = vec2<u32>(keys[j], ids[j]); }
}`;
}

/**
 * The result of the GPU's top-k for reading back, one workgroup: `outv[0]` the NaN flag of level 0, then the k ids
 * of the last level's pairs (`fin`, in rank order; 0xffffffff where fewer tokens were left), their logits' bits (0
 * for padding), and the logits' bits of the `nSeen` tokens `seen` (those the mask left out). Logits of row 0.
 */
export const TOPK_GATHER_WGSL = /* wgsl */ `${TOPK_PARAMS}
@group(0) @binding(1) var<storage, read> fin: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> seen: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> flags: array<u32>;
@group(0) @binding(5) var<storage, read_write> outv: array<u32>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32) {
  if (lid == 0u) { outv[0] = flags[0]; }
  for (var j = lid; j < tp.k; j += ${WG}u) {
    let id = fin[j].y;
    outv[1u + j] = id;
    outv[1u + tp.k + j] = select(0u, bitcast<u32>(x[min(id, tp.vocab - 1u)]), id < tp.vocab);
  }
  for (var j = lid; j < tp.nSeen; j += ${WG}u) { outv[1u + 2u * tp.k + j] = bitcast<u32>(x[seen[j]]); }
}`;
