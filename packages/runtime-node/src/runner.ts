import { CalderaError, tensor, type CalderaLayerMeta, type Tensor } from '@caldera/core';
import { fromCheckpointTensors } from '@caldera/lowrank';
import { blockLinearNames } from './config.js';
import { CalderaLinear, DenseF16Linear, DenseLinear } from './linear.js';
import type { LlamaModel } from './model.js';

/**
 * Adapter that lets `@caldera/calibrate` drive a {@link LlamaModel} (it implements calibrate's `ModelRunner`
 * structurally; this package does not import calibrate).
 */
export class ModelRunnerAdapter {
  constructor(readonly model: LlamaModel) {}

  get numBlocks(): number {
    return this.model.config.numLayers;
  }

  get hiddenSize(): number {
    return this.model.config.hiddenSize;
  }

  linears(block: number) {
    return blockLinearNames(block).map(({ name, input }) => {
      const l = this.model.linear(name);
      return { name, block, input, outFeatures: l.outFeatures, inFeatures: l.inFeatures };
    });
  }

  /** The f32 weight of a dense layer (an f16 or bf16 layer's values widened exactly); `E_UNSUPPORTED` otherwise. */
  weight(name: string): Tensor<'f32'> {
    const l = this.model.linear(name);
    if (l instanceof DenseLinear) return l.weight;
    if (l instanceof DenseF16Linear) return tensor('f32', [l.outFeatures, l.inFeatures], l.weightF32());
    throw new CalderaError('E_UNSUPPORTED', `layer '${name}' is not dense`);
  }

  embed(tokens: Int32Array): Float32Array {
    return this.model.embed(tokens);
  }

  runBlock(
    block: number,
    hidden: Float32Array,
    tokens: number,
    capture?: (input: string, x: Float32Array, rows: number) => void,
  ): Float32Array {
    return this.model.runBlock(block, hidden, tokens, undefined, capture);
  }

  /** {@link LlamaModel.runWindows}: block `block` on several windows at once, their rows one after another. */
  runWindows(
    block: number,
    hidden: Float32Array,
    lengths: readonly number[],
    capture?: (input: string, x: Float32Array, rows: number) => void,
    options: { output?: boolean } = {},
  ): Float32Array | null {
    return this.model.runWindows(block, hidden, lengths, capture, options);
  }

  replaceLinear(
    name: string,
    replacement: { tensors: Record<string, Tensor>; meta: CalderaLayerMeta },
  ): void {
    const old = this.model.linear(name);
    const bias =
      old instanceof DenseLinear || old instanceof DenseF16Linear || old instanceof CalderaLinear
        ? old.bias
        : null;
    const d = fromCheckpointTensors(name, (n) => replacement.tensors[n], replacement.meta);
    this.model.setLinear(name, new CalderaLinear(d, bias));
  }
}
