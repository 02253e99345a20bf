import { Rng, tensor, type Tensor } from '@caldera/core';
import type { LinearInfo, LinearReplacement, ModelRunner } from '../runner.js';

/**
 * A small real residual network implementing ModelRunner: block b computes h + W_down·relu(W_up·h). Enough structure
 * to exercise capture, replacement and propagation in the driver without a transformer runtime.
 */
export class ToyRunner implements ModelRunner {
  readonly numBlocks = 3;
  readonly hiddenSize = 8;
  readonly weights = new Map<string, Tensor<'f32'>>();
  replaced: string[] = [];
  constructor(seed: number) {
    const rng = new Rng(seed);
    for (let b = 0; b < this.numBlocks; b++) {
      this.weights.set(`b${b}.up`, tensor('f32', [16, 8], rng.fillNormal(new Float32Array(128), 0, 0.3)));
      this.weights.set(`b${b}.down`, tensor('f32', [8, 16], rng.fillNormal(new Float32Array(128), 0, 0.3)));
    }
  }
  linears(block: number): LinearInfo[] {
    return [
      { name: `b${block}.up`, block, input: 'in', outFeatures: 16, inFeatures: 8 },
      { name: `b${block}.down`, block, input: 'mid', outFeatures: 8, inFeatures: 16 },
    ];
  }
  weight(name: string): Tensor<'f32'> {
    return this.weights.get(name)!;
  }
  embed(tokens: Int32Array): Float32Array {
    const h = new Float32Array(tokens.length * 8);
    tokens.forEach((t, i) => {
      for (let j = 0; j < 8; j++) h[i * 8 + j] = Math.sin(t * (j + 1));
    });
    return h;
  }
  private matmul(x: Float32Array, rows: number, w: Tensor<'f32'>): Float32Array {
    const [m, n] = w.shape as [number, number];
    const y = new Float32Array(rows * m);
    for (let r = 0; r < rows; r++)
      for (let i = 0; i < m; i++) {
        let s = 0;
        for (let j = 0; j < n; j++) s += x[r * n + j]! * w.data[i * n + j]!;
        y[r * m + i] = s;
      }
    return y;
  }
  runBlock(
    block: number,
    hidden: Float32Array,
    tokens: number,
    capture?: (k: string, x: Float32Array, rows: number) => void,
  ) {
    capture?.('in', hidden, tokens);
    const mid = this.matmul(hidden, tokens, this.weight(`b${block}.up`)).map((v) => Math.max(v, 0));
    capture?.('mid', mid, tokens);
    const out = this.matmul(mid, tokens, this.weight(`b${block}.down`));
    return hidden.map((v, i) => v + out[i]!);
  }
  replaceLinear(name: string, r: LinearReplacement): void {
    this.replaced.push(name);
    this.weights.set(name, r.tensors.weight as Tensor<'f32'>);
  }
}

/** A ToyRunner that holds one block at a time: using a block it has not entered (or has left) throws. */
export class OneBlockRunner extends ToyRunner {
  events: string[] = [];
  entered: number | null = null;
  private check(name: string | number): void {
    const b = typeof name === 'number' ? name : Number(/^b(\d+)\./.exec(name)![1]);
    if (b !== this.entered) throw new Error(`block ${b} used while block ${this.entered} is entered`);
  }
  async enterBlock(b: number): Promise<void> {
    await Promise.resolve();
    if (this.entered !== null) throw new Error(`block ${b} entered before block ${this.entered} was left`);
    this.entered = b;
    this.events.push(`enter ${b}`);
  }
  leaveBlock(b: number): void {
    if (this.entered === b) this.entered = null;
    this.events.push(`leave ${b}`);
  }
  override weight(name: string) {
    this.check(name);
    return super.weight(name);
  }
  override runBlock(
    block: number,
    hidden: Float32Array,
    tokens: number,
    capture?: (k: string, x: Float32Array, rows: number) => void,
  ) {
    this.check(block);
    return super.runBlock(block, hidden, tokens, capture);
  }
  override replaceLinear(name: string, r: LinearReplacement): void {
    this.check(name);
    super.replaceLinear(name, r);
  }
}
