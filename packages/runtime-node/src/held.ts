/**
 * Reading float tensors as the loaders hold them (internal: shared by `loadModel`'s builder and `BlockLazyRunner`, so
 * that both hold every weight the same way).
 */
import { assertFinite, cast, f32ArrayToF16, tensor, type Tensor, type TensorStore } from '@caldera/core';
import { DenseF16Linear, DenseLinear, type Linear } from './linear.js';
import type { DecodePool } from './kernels/decode-pool.js';

/** A float tensor as the model holds it: f32, or 16-bit bits. */
export type HeldFloat = Tensor<'f32'> | Tensor<'f16'> | Tensor<'bf16'>;

/**
 * Read a float tensor whose header {@link readModelLayout} checked, as f32, and check that every value is finite (after
 * narrowing: an f64 value beyond f32's range is an error, not infinity).
 */
export async function readFloat(store: TensorStore, name: string): Promise<Tensor<'f32'>> {
  const source = await store.readTensor(name);
  const out = source.dtype === 'f32' ? (source as Tensor<'f32'>) : cast(source, 'f32');
  assertFinite(out, `tensor '${name}'`);
  return out;
}

/**
 * Read a float tensor as the model holds it under `dtype` ({@link LoadOptions.dtype}): f16 and bf16 bits kept as they
 * are ('auto'; checked on the bits, never widened), rounded to f16 ('f16'; a value beyond f16's range is an error),
 * else f32. Every value is checked finite.
 */
export async function readHeld(
  store: TensorStore,
  name: string,
  dtype: 'auto' | 'f32' | 'f16',
): Promise<HeldFloat> {
  const source = await store.readTensor(name);
  if ((dtype === 'auto' && source.dtype === 'bf16') || (dtype !== 'f32' && source.dtype === 'f16')) {
    assertFinite(source, `tensor '${name}'`);
    return source as HeldFloat;
  }
  const f32 = source.dtype === 'f32' ? (source as Tensor<'f32'>) : cast(source, 'f32');
  assertFinite(f32, `tensor '${name}'`);
  if (dtype !== 'f16') return f32;
  const half = tensor('f16', f32.shape, f32ArrayToF16(f32.data));
  assertFinite(half, `tensor '${name}' rounded to f16`);
  return half;
}

/**
 * The embedding and LM head layer of a model whose held embedding is `embed` and held head weight `head` (the same
 * object when tied), as the loaders build them: an f32 head a dense f32 layer, a 16-bit one a `DenseF16Linear` (no
 * f32 copy). Tied, the embedding is the head's own table (an f32 layer's weight, or a view of the 16-bit bits: the
 * kernel's copy where there is one), so the table is held once. `decodePool`: the head's single-row products on its
 * threads.
 */
export function embeddingAndHead(
  embed: HeldFloat,
  head: HeldFloat,
  vocab: number,
  hidden: number,
  decodePool?: DecodePool,
): { embed: HeldFloat; head: Linear } {
  const tied = head === embed;
  const options = decodePool ? { decodePool } : {};
  if (head.dtype === 'f32') {
    const layer = new DenseLinear(head, null, options);
    return { embed: tied ? layer.weight : embed, head: layer };
  }
  const layer = new DenseF16Linear(head.data, vocab, hidden, null, head.dtype, options);
  return {
    embed: tied ? (tensor(layer.format, [vocab, hidden], layer.bits) as HeldFloat) : embed,
    head: layer,
  };
}
