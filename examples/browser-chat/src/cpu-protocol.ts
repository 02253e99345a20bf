// Messages between the page (main.ts) and the CPU worker (cpu-worker.ts), the fallback when there is no WebGPU.
import type { GenerateOptions, ModelConfig } from '@caldera/core';

/** Page → worker. */
export type ToWorker =
  { type: 'load'; url: string } | { type: 'generate'; ids: number[]; options: GenerateOptions };

/** Worker → page. */
export type FromWorker =
  | { type: 'download'; file: string; bytes: number; total: number | null }
  | { type: 'block'; block: number; blocks: number }
  | {
      type: 'loaded';
      config: ModelConfig;
      calderaLayers: number;
      /** Stored bits per weight of the linear layers (their packed codes and factors). */
      linearBitsPerWeight: number;
      /** Bytes the linear layers hold in memory as loaded (the load's memory plan: unpacked where a kernel needs it). */
      linearMemoryBytes: number;
      /** Whether the WebAssembly SIMD kernels compiled here (else runtime-node's TypeScript paths run). */
      simd: boolean;
      /** Threads of the decode pool: 1 unless the page is cross-origin isolated and the machine has several cores. */
      threads: number;
    }
  | { type: 'token'; id: number }
  | { type: 'done' }
  | { type: 'error'; message: string };
