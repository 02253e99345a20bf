import { qkNormNames, type ModelConfig } from '@caldera/core';
import { DenseF16Linear, DenseLinear } from './linear.js';
import { KernelArenas, type ArenaRequest } from './kernels/kernel-arenas.js';

/**
 * The memory a loaded model's weights hold resident, computed from the headers (`config.json`, `caldera.json`, the
 * safetensors headers, or a llama2.c header) before any weight is read: what {@link LoadOptions.onPlan} receives and
 * `ModelLayout.memory` holds. Its `weightBytes` is what runtime-webgpu's `MemoryPlan.weightBytes` is on the GPU: the
 * bytes of weight storage once the model is loaded. Bytes are exact: every typed array and WebAssembly memory the
 * loaded layers keep (the model's kernel arenas counted whole, in 64 KiB pages: each layer's regions in its bytes, the
 * rest in `parts.arenas`; the head's memory whole in its part). Not counted: JavaScript object headers, the
 * compiled kernel modules and lookup tables shared by all layers, the KV cache of each sequence
 * (`2 · layers · kvHeads · headDim · 4` bytes a position) and scratch buffers that forward passes allocate.
 */
export interface MemoryPlan {
  /** Total bytes of the weights as the loaded model holds them: the sum of `parts`. */
  weightBytes: number;
  parts: {
    /** The embedding table; 0 when tied to the LM head (the embedding is then a view of the head's table). */
    embedding: number;
    /** The LM head layer (see {@link DenseLinear.memoryBytes}, {@link DenseF16Linear.memoryBytes}). */
    lmHead: number;
    /** RMSNorm weights (two per block, Qwen3's query and key norms, and the final one), f32. */
    norms: number;
    /** The linear layers of every block, biases included: the sum of `layers`' bytes. */
    linears: number;
    /**
     * The model's {@link KernelArenas} beyond the layers' regions in them: each memory's fixed region (the kernel's
     * static data page, the E8P tables) and its rounding to whole 64 KiB pages. 0 when loaded with `kernelArenas`
     * false: each layer's memories are then counted whole in its bytes.
     */
    arenas: number;
  };
  /** Each linear layer, block after block in `blockLinearNames` order, with its storage as held and its bytes. */
  layers: { name: string; kind: 'caldera' | 'f32' | 'f16' | 'bf16'; bytes: number }[];
}

/** How the loaders hold a dense tensor stored as `stored` under `dtype` ({@link LoadOptions.dtype}). */
export function heldDType(
  stored: 'f64' | 'f32' | 'f16' | 'bf16',
  dtype: 'auto' | 'f32' | 'f16',
): 'f32' | 'f16' | 'bf16' {
  if (dtype === 'f32') return 'f32';
  if (dtype === 'f16') return 'f16';
  return stored === 'f16' || stored === 'bf16' ? stored : 'f32';
}

/** What {@link planMemory} needs: the config, the held dtypes of the embedding and head, and the linear layers. */
export interface MemoryPlanInput {
  config: ModelConfig;
  /** How the embedding table is held ({@link heldDType}). */
  embed: 'f32' | 'f16' | 'bf16';
  /** How the LM head is held, and whether it is the embedding's own table (tied). */
  head: { dtype: 'f32' | 'f16' | 'bf16'; tied: boolean };
  layers: MemoryPlan['layers'];
  /** The regions the linear layers place in the model's kernel arenas, in the order the loader places them. */
  regions: readonly ArenaRequest[];
}

/**
 * The memory plan of a model: an f32 head a {@link DenseLinear}, a 16-bit one a {@link DenseF16Linear} (as
 * `embeddingAndHead` builds them), the embedding held apart unless tied, norms f32, the linear layers' bytes, and the
 * kernel arenas' memories beyond the layers' regions.
 */
export function planMemory(input: MemoryPlanInput): MemoryPlan {
  const { vocabSize: V, hiddenSize: d, numLayers } = input.config;
  const lmHead =
    input.head.dtype === 'f32'
      ? DenseLinear.memoryBytes(V, d, false)
      : DenseF16Linear.memoryBytes(V, d, false);
  const embedding = input.head.tied ? 0 : V * d * (input.embed === 'f32' ? 4 : 2);
  // Qwen3 adds a query and a key norm of head_dim values per block
  const norms =
    ((2 * numLayers + 1) * d + qkNormNames(input.config, 0).length * numLayers * input.config.headDim) * 4;
  const linears = input.layers.reduce((s, l) => s + l.bytes, 0);
  const regions = input.regions.reduce((s, r) => s + r.bytes, 0);
  const arenas = KernelArenas.bytes(input.regions) - regions;
  return {
    weightBytes: embedding + lmHead + norms + linears + arenas,
    parts: { embedding, lmHead, norms, linears, arenas },
    layers: input.layers,
  };
}
