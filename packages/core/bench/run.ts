/**
 * @caldera/core benchmarks: half-float conversion, RNG and safetensors I/O throughput, and the shared sampler
 * (milliseconds per draw on Llama-sized vocabularies, next to a full sort of the indices by logit — what the sampler
 * did before — measured in the same run as `refs.sort_ms`).
 * Prints JSON Lines: {"case","value","unit","refs"}. `--quick` runs smaller sizes (well under a minute).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  bf16ArrayToF32,
  f16ArrayToF32,
  f32ArrayToBf16,
  f32ArrayToF16,
  openSafetensors,
  Rng,
  sampleToken,
  serializeSafetensors,
  tensor,
  writeSafetensors,
} from '../src/index.js';
import { checkBenchArgs } from '../../../scripts/bench-args.js';
import { benchLine } from '../../../scripts/bench-line.js';

checkBenchArgs('usage: npm run bench -w @caldera/core [-- --quick]', ['--quick']);
const quick = process.argv.includes('--quick');
const n = quick ? 1 << 20 : 1 << 24;

function emit(name: string, value: number, unit: string, refs: Record<string, number> = {}): void {
  console.log(benchLine({ case: name, value: Number(value.toPrecision(4)), unit, refs }));
}

/** Best of `reps` timings of `fn`, in seconds. */
async function time(fn: () => unknown, reps = 3): Promise<number> {
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const t = performance.now();
    await fn();
    best = Math.min(best, (performance.now() - t) / 1000);
  }
  return best;
}

const rng = new Rng(1);
const x = rng.fillNormal(new Float32Array(n));
const h = new Uint16Array(n);
const back = new Float32Array(n);

emit('f32_to_f16', n / (await time(() => f32ArrayToF16(x, h))) / 1e6, 'Melem/s');
emit('f16_to_f32', n / (await time(() => f16ArrayToF32(h, back))) / 1e6, 'Melem/s');
emit('f32_to_bf16', n / (await time(() => f32ArrayToBf16(x, h))) / 1e6, 'Melem/s');
emit('bf16_to_f32', n / (await time(() => bf16ArrayToF32(h, back))) / 1e6, 'Melem/s');
emit('rng_normal', n / (await time(() => rng.fillNormal(back))) / 1e6, 'Msample/s');

// safetensors: 8 tensors of n/8 f32 each (n·4 bytes in all).
const tensors = Object.fromEntries(
  Array.from({ length: 8 }, (_, i) => [
    `t${i}`,
    tensor('f32', [n / 8], x.subarray((i * n) / 8, ((i + 1) * n) / 8)),
  ]),
);
const mb = (n * 4) / 2 ** 20;
let bytes: Uint8Array = new Uint8Array();
emit(
  'safetensors_serialize',
  mb / (await time(async () => (bytes = await serializeSafetensors(tensors)))),
  'MiB/s',
);
emit(
  'safetensors_read_buffer',
  mb /
    (await time(async () => {
      const r = await openSafetensors(bytes);
      for (const name of r.names()) await r.readTensor(name);
    })),
  'MiB/s',
);
const dir = await mkdtemp(join(tmpdir(), 'caldera-bench-'));
const file = join(dir, 'b.safetensors');
emit('safetensors_write_file', mb / (await time(() => writeSafetensors(file, tensors))), 'MiB/s');
emit(
  'safetensors_read_file',
  mb /
    (await time(async () => {
      const r = await openSafetensors(file);
      for (const name of r.names()) await r.readTensor(name);
      await r.close();
    })),
  'MiB/s',
);
await rm(dir, { recursive: true, force: true });

for (const V of quick ? [32_000] : [32_000, 128_256]) {
  const l = Float64Array.from({ length: V }, () => 3 * rng.normal());
  const sortMs = (await time(() => [...l.keys()].sort((a, b) => l[b]! - l[a]!))) * 1000;
  for (const [name, o] of [
    ['topk40', { temperature: 0.8, topK: 40 }],
    ['topp095', { temperature: 0.8, topP: 0.95 }],
  ] as const)
    emit(`sample_v${V}_${name}_ms`, (await time(() => sampleToken(l, o, rng), 5)) * 1000, 'ms', {
      sort_ms: Number(sortMs.toPrecision(4)),
    });
}
