import { CalderaError } from '@caldera/core';
import type { Vec } from './types.js';

/** AdamW hyper-parameters. */
export interface AdamWOptions {
  /** Learning rate of this step. */
  lr: number;
  /** First-moment decay (default 0.9). */
  beta1?: number;
  /** Second-moment decay (default 0.95). */
  beta2?: number;
  /** Added to sqrt of the bias-corrected second moment (default 1e-8). */
  eps?: number;
  /** Decoupled weight decay, applied as `p -= lr·wd·p` before the Adam update (default 0). */
  weightDecay?: number;
}

/** Per-parameter AdamW state: first and second moments, same length as the parameter. */
export interface AdamWState {
  m: Vec;
  v: Vec;
}

/** Zero AdamW moments for a parameter of length `n`. */
export function adamWState(n: number): AdamWState {
  return { m: new Float32Array(n), v: new Float32Array(n) };
}

/**
 * One AdamW step (Loshchilov & Hutter), in place on `param` and `state`, for optimizer step number `step`
 * (1-based, used for the bias corrections `1 − β^step`):
 * `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`, `p ← p − lr·wd·p − lr·m̂ / (sqrt(v̂) + eps)`.
 */
export function adamWStep(
  param: Vec,
  grad: Vec,
  state: AdamWState,
  step: number,
  options: AdamWOptions,
): void {
  const n = param.length;
  if (grad.length !== n || state.m.length !== n || state.v.length !== n)
    throw new CalderaError(
      'E_SHAPE',
      `adamWStep: param ${n}, grad ${grad.length}, moments ${state.m.length}/${state.v.length} differ`,
    );
  if (!Number.isInteger(step) || step < 1)
    throw new CalderaError('E_VALUE', `adamWStep: step ${step} must be ≥ 1`);
  const { lr, beta1: b1 = 0.9, beta2: b2 = 0.95, eps = 1e-8, weightDecay: wd = 0 } = options;
  const c1 = 1 - b1 ** step;
  const c2 = 1 - b2 ** step;
  const { m, v } = state;
  if (
    param instanceof Float32Array &&
    grad instanceof Float32Array &&
    m instanceof Float32Array &&
    v instanceof Float32Array
  )
    adamWLoopF32(param, grad, m, v, b1, b2, c1, c2, lr, wd, eps);
  else adamWLoop(param, grad, m, v, b1, b2, c1, c2, lr, wd, eps);
}

// The update loop, once for f32 arrays (the training engine's case) and once generic: each copy only ever sees one
// kind of array, so the JIT keeps it monomorphic (a shared loop was measured 4–20× slower after it had seen both).
function adamWLoopF32(
  param: Float32Array,
  grad: Float32Array,
  m: Float32Array,
  v: Float32Array,
  b1: number,
  b2: number,
  c1: number,
  c2: number,
  lr: number,
  wd: number,
  eps: number,
): void {
  for (let i = 0; i < param.length; i++) {
    const g = grad[i]!;
    const mi = b1 * m[i]! + (1 - b1) * g;
    const vi = b2 * v[i]! + (1 - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = param[i]! * (1 - lr * wd) - (lr * (mi / c1)) / (Math.sqrt(vi / c2) + eps);
  }
}

function adamWLoop(
  param: Vec,
  grad: Vec,
  m: Vec,
  v: Vec,
  b1: number,
  b2: number,
  c1: number,
  c2: number,
  lr: number,
  wd: number,
  eps: number,
): void {
  for (let i = 0; i < param.length; i++) {
    const g = grad[i]!;
    const mi = b1 * m[i]! + (1 - b1) * g;
    const vi = b2 * v[i]! + (1 - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = param[i]! * (1 - lr * wd) - (lr * (mi / c1)) / (Math.sqrt(vi / c2) + eps);
  }
}

/**
 * Scales all gradients in place so that their global L2 norm is at most `maxNorm`; returns the norm before
 * clipping. `maxNorm = Infinity` only measures.
 */
export function clipGradNorm(grads: readonly Vec[], maxNorm: number): number {
  let ss = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) ss += g[i]! * g[i]!;
  const norm = Math.sqrt(ss);
  if (norm > maxNorm && norm > 0) {
    const s = maxNorm / norm;
    for (const g of grads) for (let i = 0; i < g.length; i++) g[i] = g[i]! * s;
  }
  return norm;
}

/** Options of {@link cosineLr}. */
export interface CosineScheduleOptions {
  /** Peak learning rate, reached at the end of warmup. */
  peak: number;
  /** Linear warmup steps (default 0). */
  warmup?: number;
  /** Total steps; after it the rate stays at the minimum. */
  total: number;
  /** Final rate as a fraction of the peak (default 0.1). */
  minRatio?: number;
}

/**
 * Learning rate at 0-based `step`: linear warmup `peak·(step+1)/warmup`, then cosine decay from `peak` to
 * `minRatio·peak` at `total`.
 */
export function cosineLr(step: number, options: CosineScheduleOptions): number {
  const { peak, warmup = 0, total, minRatio = 0.1 } = options;
  if (step < warmup) return (peak * (step + 1)) / warmup;
  const span = Math.max(1, total - warmup);
  const t = Math.min(1, (step - warmup) / span);
  return peak * (minRatio + (1 - minRatio) * 0.5 * (1 + Math.cos(Math.PI * t)));
}
