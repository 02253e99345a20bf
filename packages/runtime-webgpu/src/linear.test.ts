import { describe, expect, it } from 'vitest';
import {
  bf16ArrayToF32,
  CalderaError,
  f16ArrayToF32,
  f32ArrayToBf16,
  f32ArrayToF16,
  Rng,
  tensor,
} from '@caldera/core';
import { hadamardFactor } from '@caldera/linalg';
import {
  applyDecomposition,
  caldera,
  fromCheckpointTensors,
  toCheckpointTensors,
  withTrainableFactors,
  type CalderaOptions,
  type Decomposition,
} from '@caldera/lowrank';
import { CalderaLinear } from '@caldera/runtime-node';
import { readBuffer, storageBuffer, uniformWords } from './device.js';
import { encodeDispatches, Kernels, type Dispatch } from './kernels/index.js';
import {
  bindPending,
  bindLayers,
  bindNormed,
  createCalderaLinears,
  createDenseLinears,
  createLinearContext,
  GpuCalderaLinear,
  GpuDenseLinear,
  groupable,
  uploadMatrix,
  type GpuLinear,
} from './linear.js';
import { relErr } from './testing/compare.js';
import { gpuTitle, testDevice } from './testing/gpu.js';

const { device: dev, reason } = await testDevice();

describe.skipIf(!dev)(gpuTitle('GpuCalderaLinear', reason), () => {
  const d = dev!;
  const variants = [
    {
      name: 'Q 2-bit, L/R 4-bit, K=12 rotation (n = 96), padded m (50 → 56)',
      m: 50,
      n: 96,
      padded: [56, 96],
      o: { rank: 6 },
    },
    {
      name: 'Q RVQ4, dense f16 factors, padded n (70 → 72)',
      m: 64,
      n: 70,
      padded: [64, 72],
      o: { rank: 4, qBits: 4, lBits: 16, rBits: 16 },
    },
    {
      name: 'Q RVQ3 (u8 E81B residual), L/R 3-bit',
      m: 48,
      n: 64,
      padded: [48, 64],
      o: { rank: 4, qBits: 3, lBits: 3, rBits: 3 },
    },
    {
      name: 'Q 2-bit, L/R 2-bit (E8P12 factors)',
      m: 64,
      n: 64,
      padded: [64, 64],
      o: { rank: 5, lBits: 2, rBits: 2 },
    },
    {
      name: 'Q RVQ4, L 4-bit, R 3-bit',
      m: 40,
      n: 64,
      padded: [40, 64],
      o: { rank: 3, qBits: 4, lBits: 4, rBits: 3 },
    },
    { name: 'rank 0 (LDLQ only)', m: 40, n: 64, padded: [40, 64], o: { rank: 0 } },
    // no Q (low rank only, `--method lplr`): no fused launch, the dense product writes y'
    {
      name: 'no Q, dense f16 factors, padded m (50 → 56)',
      m: 50,
      n: 96,
      padded: [56, 96],
      o: { rank: 5, qBits: 0, lBits: 16, rBits: 16 },
    },
    {
      name: 'no Q, L/R 4-bit (decoded to f32 on upload)',
      m: 40,
      n: 64,
      padded: [40, 64],
      o: { rank: 4, qBits: 0 },
    },
    { name: 'no Hadamard rotation', m: 32, n: 48, padded: [32, 48], o: { rank: 5, hadamard: false } },
    {
      name: 'no Hadamard rotation, global-memory path (forced; n = 40 is no power of two)',
      m: 24,
      n: 40,
      padded: [24, 40],
      o: { rank: 3, hadamard: false },
      local: 16,
    },
    {
      name: 'global-memory rotation (forced), K=12',
      m: 50,
      n: 96,
      padded: [56, 96],
      o: { rank: 6 },
      local: 16,
    },
  ] as const;
  for (const v of variants)
    it(`${v.name}: equals Decomposition.apply and runtime-node's CalderaLinear`, async () => {
      const rng = new Rng(7);
      const w = tensor('f32', [v.m, v.n], rng.fillNormal(new Float32Array(v.m * v.n), 0, 0.5));
      const dec0 = caldera(w, null, { outerIters: 1, lplrIters: 1, ...v.o });
      // through the checkpoint format (g folded into the scales), as the loader sees it
      const { tensors, meta } = toCheckpointTensors('layer', dec0);
      const dec = fromCheckpointTensors('layer', (nm) => tensors[nm], meta);
      expect(dec.padded).toEqual(v.padded);
      const bias = rng.fillNormal(new Float32Array(v.m), 0, 1);
      const x = rng.fillNormal(new Float32Array(v.n), 0, 1);
      const lin = new GpuCalderaLinear(d, dec, bias, 'layer');
      const kernels = new Kernels(d, 'local' in v ? { maxLocalHadamard: v.local } : {});
      const ctx = createLinearContext(d, kernels, lin.needs);
      const prev = rng.fillNormal(new Float32Array(v.m), 0, 1);
      const out = storageBuffer(d, prev, 'out');
      const enc = d.device.createCommandEncoder();
      encodeDispatches(enc, lin.bind(ctx, storageBuffer(d, x, 'x'), out, true));
      d.device.queue.submit([enc.finish()]);
      const got = new Float32Array(await readBuffer(d, out, v.m * 4));
      const apply = applyDecomposition(dec, x, 1);
      const cpu = new CalderaLinear(dec, bias).forward(x, 1);
      let err = 0;
      let errNode = 0;
      let scale = 1;
      for (let i = 0; i < v.m; i++) {
        err = Math.max(err, Math.abs(got[i]! - (apply[i]! + bias[i]! + prev[i]!)));
        errNode = Math.max(errNode, Math.abs(got[i]! - (cpu[i]! + prev[i]!)));
        scale = Math.max(scale, Math.abs(apply[i]!));
      }
      // f32 throughout, different summation order (rotation, 32-lane reduction): ~1e-6 relative to the output scale
      expect(err / scale).toBeLessThan(2e-5);
      expect(errNode / scale).toBeLessThan(2e-5);
      lin.dispose();
      ctx.dispose();
      kernels.dispose();
    });

  /** Run one layer on the GPU (accumulating onto nothing) and return its first m outputs. */
  async function gpuForward(
    dec: Decomposition,
    x: Float32Array,
    bias: Float32Array | null,
  ): Promise<Float32Array> {
    const lin = new GpuCalderaLinear(d, dec, bias, 'layer');
    const kernels = new Kernels(d);
    const ctx = createLinearContext(d, kernels, lin.needs);
    const out = storageBuffer(d, new Float32Array(dec.shape[0]), 'out');
    const enc = d.device.createCommandEncoder();
    encodeDispatches(enc, lin.bind(ctx, storageBuffer(d, x, 'x'), out, false));
    d.device.queue.submit([enc.finish()]);
    const got = new Float32Array(await readBuffer(d, out, dec.shape[0] * 4));
    lin.dispose();
    ctx.dispose();
    kernels.dispose();
    return got;
  }

  const fineTuned = [
    { name: 'LoRA part of 2 of rank 6 (L_ft, R_ft), 4-bit L/R codes, padded m', m: 50, n: 96, kft: 2, o: {} },
    { name: 'every component trainable (no L/R codes left), RVQ4 Q', m: 32, n: 64, kft: 5, o: { qBits: 4 } },
    { name: 'LoRA part beside dense f16 factors', m: 40, n: 70, kft: 3, o: { lBits: 16, rBits: 16 } },
    { name: 'LoRA part of 2 of rank 6 without Q, 4-bit L/R codes', m: 40, n: 64, kft: 2, o: { qBits: 0 } },
  ] as const;
  for (const v of fineTuned)
    for (const signs of [false, true])
      it(`fine-tuned checkpoint, ${v.name}${signs ? ', continuous SU/SV' : ''}: equals Decomposition.apply and runtime-node`, async () => {
        const rng = new Rng(11);
        const w = tensor('f32', [v.m, v.n], rng.fillNormal(new Float32Array(v.m * v.n), 0, 0.5));
        const rank = v.kft === 5 ? 5 : 6;
        const ft = withTrainableFactors(
          caldera(w, null, { rank, outerIters: 1, lplrIters: 1, ...v.o }),
          v.kft,
        );
        // perturb the trainable part (and the signs) so that a runtime ignoring them differs by O(1), as
        // `caldera finetune` (--signs) would leave them
        for (let i = 0; i < ft.ft!.l.length; i++) ft.ft!.l[i]! += 0.5 * rng.normal();
        if (signs) {
          for (let i = 0; i < ft.su!.length; i++) ft.su![i]! *= 1 + 0.3 * rng.normal();
          for (let i = 0; i < ft.sv!.length; i++) ft.sv![i]! *= 1 + 0.3 * rng.normal();
        }
        const { tensors, meta } = toCheckpointTensors('layer', ft);
        expect(meta.rank).toBe(rank);
        expect(meta.ftRank).toBe(v.kft);
        expect(tensors['layer.caldera.L_ft']?.shape).toEqual([ft.padded[0], v.kft]);
        const dec = fromCheckpointTensors('layer', (nm) => tensors[nm], meta);
        expect(dec.ft?.rank).toBe(v.kft);
        expect(dec.rank).toBe(rank - v.kft);
        const bias = rng.fillNormal(new Float32Array(v.m), 0, 1);
        const x = rng.fillNormal(new Float32Array(v.n), 0, 1);
        const got = await gpuForward(dec, x, bias);
        const apply = applyDecomposition(dec, x, 1);
        const cpu = new CalderaLinear(dec, bias).forward(x, 1);
        // the same layer without the LoRA part: must be far from the result, or the test proves nothing
        const noFt = applyDecomposition({ ...dec, ft: null }, x, 1);
        let err = 0;
        let errNode = 0;
        let gap = 0;
        let scale = 1;
        for (let i = 0; i < v.m; i++) {
          err = Math.max(err, Math.abs(got[i]! - (apply[i]! + bias[i]!)));
          errNode = Math.max(errNode, Math.abs(got[i]! - cpu[i]!));
          gap = Math.max(gap, Math.abs(apply[i]! - noFt[i]!));
          scale = Math.max(scale, Math.abs(apply[i]!));
        }
        expect(gap / scale).toBeGreaterThan(0.05);
        if (signs) {
          // and with the signs rounded back to ±1
          const pm = (a: Float32Array | null) => a && a.map(Math.sign);
          const plain = applyDecomposition({ ...dec, su: pm(dec.su), sv: pm(dec.sv) }, x, 1);
          expect(Math.max(...plain.map((p, i) => Math.abs(p - apply[i]!))) / scale).toBeGreaterThan(0.05);
        }
        // f32 throughout, different summation order (rotation, reduction, ≤ 128 + 6 terms): ~1e-6 of the output scale
        expect(err / scale).toBeLessThan(2e-5);
        expect(errNode / scale).toBeLessThan(2e-5);
      });

  // groups of three (the most one launch serves): GQA-like heights, rank 0 (beside a 3-bit L̂ and 2-bit Q: bound alone
  // it needs no E81B table), a LoRA pair, dense f16 factors, biases
  const groups: { m: number; o: CalderaOptions; bias?: boolean; kft?: number }[][] = [
    [
      { m: 50, o: { rank: 6, lBits: 3 }, bias: true },
      { m: 24, o: { rank: 0 } },
      { m: 40, o: { rank: 4, lBits: 3 }, kft: 1 },
    ],
    [
      { m: 32, o: { rank: 3, lBits: 16, rBits: 16 }, bias: true },
      { m: 56, o: { rank: 5 } },
      { m: 24, o: { rank: 2 }, bias: true },
    ],
    // RVQ3 Q (u8 second plane) with 3-bit L̂/R̂, a rank-0 layer among them; RVQ4 Q with L̂ 4-bit, R̂ 3-bit
    [
      { m: 40, o: { rank: 3, qBits: 3, lBits: 3, rBits: 3 } },
      { m: 16, o: { rank: 0, qBits: 3 }, bias: true },
      { m: 24, o: { rank: 2, qBits: 3, lBits: 3, rBits: 3 } },
    ],
    [
      { m: 24, o: { rank: 2, qBits: 4, lBits: 4, rBits: 3 }, bias: true },
      { m: 48, o: { rank: 3, qBits: 4, lBits: 4, rBits: 3 } },
    ],
    // layers without Q (low rank only): dense and lattice factors (decoded), a LoRA pair, a bias
    [
      { m: 32, o: { rank: 3, qBits: 0, lBits: 16, rBits: 16 }, bias: true },
      { m: 40, o: { rank: 4, qBits: 0 }, kft: 1 },
    ],
  ];
  const paths = [
    { local: undefined, lanes: 1 },
    { local: 16, lanes: 1 },
  ] as const;
  for (const [gi, spec] of groups.entries())
    for (const { local, lanes } of gi === 0 ? [...paths, { local: undefined, lanes: 32 } as const] : paths)
      it(`group ${gi + 1} of layers sharing an input (${local ? 'global-memory' : 'workgroup'} rotations, ${lanes} lane(s) per row) equals each layer alone, to the bit, for 2 activation rows`, async () => {
        const rng = new Rng(12 + gi);
        const n = 96;
        // a seed each: different random signs SU, so a layer reading another's rotated input gives other values
        const layers = spec.map((l, j) => {
          const w = tensor('f32', [l.m, n], rng.fillNormal(new Float32Array(l.m * n), 0, 0.5));
          let x = caldera(w, null, { outerIters: 1, lplrIters: 1, seed: j + 1, ...l.o });
          if (l.kft) {
            x = withTrainableFactors(x, l.kft);
            for (let i = 0; i < x.ft!.l.length; i++) x.ft!.l[i]! += 0.5 * rng.normal();
          }
          const { tensors, meta } = toCheckpointTensors('layer', x);
          const d = fromCheckpointTensors('layer', (nm) => tensors[nm], meta);
          const bias = l.bias ? rng.fillNormal(new Float32Array(l.m), 0, 1) : null;
          return { d, bias, label: `layer${j}` };
        });
        expect(groupable(layers.map((l) => l.d))).toBe(true);
        const members = createCalderaLinears(d, layers);
        const group = members[0]!.group;
        expect(members.every((m, j) => m.group === group && m.index === j)).toBe(true);
        const alone = layers.map((l) => new GpuCalderaLinear(d, l.d, l.bias, l.label));
        // the shared buffers hold exactly the bytes of the layers apart
        expect(members.map((m) => m.gpuBytes)).toEqual(alone.map((m) => m.gpuBytes));
        const kernels = new Kernels(d, { lanes, ...(local ? { maxLocalHadamard: local } : {}) });
        const ctx = createLinearContext(d, kernels, group.needs, 2);
        const xs = rng.fillNormal(new Float32Array(2 * n), 0, 1);
        const x = storageBuffer(d, xs, 'x');
        const outs = layers.map((l) => storageBuffer(d, new Float32Array(2 * l.d.shape[0]), 'out'));
        const launches = bindLayers(
          ctx,
          x,
          members.map((layer, j) => ({ layer, out: outs[j]! })),
        );
        // in workgroup memory: one input step (the rotation, and R̂ when a layer has lattice factors), the fused kernel
        // (none for layers without Q) and one output rotation for all, plus 2 launches for a layer with dense factors
        // (lattice ones without Q are decoded to dense); in global memory 2 or 3 per rotation and layer (1 for a vector
        // that fits) and R̂ apart
        const rotation = (size: number) =>
          size <= 16 ? 1 : 2 + (size > 16 * hadamardFactor(size)!.K ? 1 : 0);
        const hasQ = layers.some((l) => l.d.q !== null);
        const dense =
          2 *
          layers.filter(
            (l) => (l.d.rank > 0 && (l.d.l.kind === 'dense' || !l.d.q)) || (l.d.ft?.rank ?? 0) > 0,
          ).length;
        const packedR = layers.some((l) => l.d.q && l.d.rank > 0 && l.d.l.kind === 'lattice');
        const matrices = (hasQ ? 1 : 0) + (packedR ? 1 : 0) + dense;
        expect(launches.length).toBe(
          local
            ? layers.reduce((s, l) => s + rotation(n) + rotation(l.d.padded[0]), matrices)
            : (hasQ ? 3 : 2) + dense,
        );
        const run = async (list: ReturnType<typeof bindLayers>) => {
          const enc = d.device.createCommandEncoder();
          encodeDispatches(enc, list, 2);
          d.device.queue.submit([enc.finish()]);
        };
        await run(launches);
        for (const [j, l] of layers.entries()) {
          const m = l.d.shape[0];
          const got = new Float32Array(await readBuffer(d, outs[j]!, 2 * m * 4));
          const one = storageBuffer(d, new Float32Array(2 * m), 'one');
          await run(alone[j]!.bind(ctx, x, one, false));
          // the same operations in the same order per output: identical bits; and the same for the member bound
          // alone (a layer of a group run by itself)
          const ref = Array.from(new Float32Array(await readBuffer(d, one, 2 * m * 4)));
          expect(Array.from(got), l.label).toEqual(ref);
          const single = storageBuffer(d, new Float32Array(2 * m), 'single');
          await run(members[j]!.bind(ctx, x, single, false));
          expect(Array.from(new Float32Array(await readBuffer(d, single, 2 * m * 4))), l.label).toEqual(ref);
          const apply = applyDecomposition(l.d, xs, 2);
          let err = 0;
          let scale = 1;
          for (let i = 0; i < 2 * m; i++) {
            err = Math.max(err, Math.abs(got[i]! - apply[i]! - (l.bias?.[i % m] ?? 0)));
            scale = Math.max(scale, Math.abs(apply[i]!));
          }
          // f32 throughout, different summation order: ~1e-6 of the output scale (as for one layer above)
          expect(err / scale, l.label).toBeLessThan(2e-5);
        }
        for (const m of [...members, ...alone]) m.dispose();
        ctx.dispose();
        kernels.dispose();
      });

  it('bindLayers: RMSNorm and SwiGLU inputs computed by the input rotations equal their own launch first, to the bit, for whole groups, runs of members, lone layers and dense layers', async () => {
    const rng = new Rng(14);
    const n = 96;
    const rows = 2;
    const layers = [40, 24, 32].map((m, j) => {
      const w = tensor('f32', [m, n], rng.fillNormal(new Float32Array(m * n), 0, 0.5));
      const x = caldera(w, null, { rank: 3, outerIters: 1, lplrIters: 1, seed: j + 1 });
      const { tensors, meta } = toCheckpointTensors('layer', x);
      return { d: fromCheckpointTensors('layer', (nm) => tensors[nm], meta), bias: null, label: `l${j}` };
    });
    const members = createCalderaLinears(d, layers);
    const lone = new GpuCalderaLinear(d, layers[0]!.d, null, 'lone');
    const dense = new GpuDenseLinear(
      uploadMatrix(d, rng.fillNormal(new Float32Array(16 * n), 0, 0.3), 16, n, 'dense'),
      null,
    );
    const kernels = new Kernels(d, { lanes: 1 });
    const ctx = createLinearContext(d, kernels, members[0]!.group.needs, rows);
    const xBuf = storageBuffer(d, rng.fillNormal(new Float32Array(rows * n), 0, 2), 'x');
    const aux = storageBuffer(d, rng.fillNormal(new Float32Array(rows * n), 0, 1), 'aux');
    const h = storageBuffer(d, new Float32Array(rows * n), 'h');
    const run = async (list: ReturnType<typeof bindLayers>) => {
      const enc = d.device.createCommandEncoder();
      encodeDispatches(enc, list, rows);
      d.device.queue.submit([enc.finish()]);
      await d.device.queue.onSubmittedWorkDone();
    };
    const read = async (b: GPUBuffer) => Array.from(new Float32Array(await readBuffer(d, b, b.size)));
    // [members 0-2], [members 1-2] (a run not from the group's start), [member 0, member 2] (two runs), a lone
    // layer with members, a dense layer among CALDERA layers (then every layer reads the launch's output); a run of
    // CALDERA layers takes 3 launches (input step, fused kernel, output rotation)
    const sets: { layer: GpuLinear; launches: number }[][] = [
      members.map((layer) => ({ layer, launches: 3 })),
      [members[1]!, members[2]!].map((layer) => ({ layer, launches: 3 })),
      [members[0]!, members[2]!].map((layer) => ({ layer, launches: 6 })),
      [lone, members[0]!, members[1]!].map((layer) => ({ layer, launches: 6 })),
      [members[0]!, dense].map((layer) => ({ layer, launches: 1 + 3 + 1 })),
    ];
    for (const kind of ['rmsNorm', 'swiglu'] as const)
      for (const [si, set] of sets.entries()) {
        const outs = set.map(({ layer }) =>
          storageBuffer(d, new Float32Array(rows * layer.outFeatures), 'o'),
        );
        // SwiGLU without a fusing layer runs in place: x is a fresh copy each time
        const x = storageBuffer(d, new Float32Array(await readBuffer(d, xBuf, xBuf.size)), 'x copy');
        const compute =
          kind === 'rmsNorm'
            ? ({ kind, weight: aux, eps: 1e-5, scratch: h } as const)
            : ({ kind, up: aux } as const);
        const launches = bindLayers(
          ctx,
          { x, compute },
          set.map(({ layer }, j) => ({ layer, out: outs[j]! })),
        );
        expect(launches.length, `${kind} set ${si}`).toBe(set[0]!.launches);
        await run(launches);
        // the reference: the launch of its own, then each layer alone on its output
        const ref = storageBuffer(d, new Float32Array(await readBuffer(d, xBuf, xBuf.size)), 'ref');
        await run([kind === 'rmsNorm' ? kernels.rmsNorm(ref, aux, h, n, 1e-5) : kernels.swiglu(ref, aux, n)]);
        for (const [j, { layer }] of set.entries()) {
          const one = storageBuffer(d, new Float32Array(rows * layer.outFeatures), 'one');
          await run(layer.bind(ctx, kind === 'rmsNorm' ? h : ref, one, false));
          expect(await read(outs[j]!), `${kind} set ${si} layer ${j}`).toEqual(await read(one));
        }
      }
    for (const m of [...members, lone, dense]) m.dispose();
    ctx.dispose();
    kernels.dispose();
  });

  /** Run `list` over `rows` activation rows and wait for it. */
  const runRows = async (list: Dispatch[], rows: number) => {
    const enc = d.device.createCommandEncoder();
    encodeDispatches(enc, list, rows);
    d.device.queue.submit([enc.finish()]);
    await d.device.queue.onSubmittedWorkDone();
  };
  const readF32 = async (b: GPUBuffer) => Array.from(new Float32Array(await readBuffer(d, b, b.size)));
  /** A CALDERA layer of random m × n weights (rank 3, one iteration each: fast, not good), with a random bias. */
  const randomLayer = (
    rng: Rng,
    m: number,
    n: number,
    o: Partial<CalderaOptions>,
    seed: number,
    bias: boolean,
  ) => {
    const w = tensor('f32', [m, n], rng.fillNormal(new Float32Array(m * n), 0, 0.5));
    const x = caldera(w, null, { rank: 3, outerIters: 1, lplrIters: 1, seed, ...o });
    const { tensors, meta } = toCheckpointTensors('layer', x);
    return {
      d: fromCheckpointTensors('layer', (nm) => tensors[nm], meta),
      bias: bias ? rng.fillNormal(new Float32Array(m), 0, 0.5) : null,
      label: `l${seed}`,
    };
  };

  it('a residual branch finished by the next input step (bindPending + bindNormed) equals its output rotation first, to the bit, with one launch fewer; 1 and 32 lanes, RVQ4 and E8P12 R̂, biased o with and without its rotation; falls back on a device with 8 storage buffers; before dense and mixed layers the rotation computes their RMSNorm (one launch fewer)', async () => {
    const rng = new Rng(16);
    const [nAtt, dModel, rows, eps] = [64, 96, 2, 1e-5];
    const layerOf = (m: number, n: number, o: Partial<CalderaOptions>, seed: number, bias: boolean) =>
      randomLayer(rng, m, n, o, seed, bias);
    // o_proj: 96 × 64 with a bias, its output rotation with K = 12 as the next layers' input rotation (variants 0 and
    // 2; 0 with an RVQ4 R̂), or without a rotation (variants 1 and 3; 1 with an E8P12 R̂: H_K of K = 1 first in the
    // shared table, so the next layers read theirs at an offset)
    const os = [{}, { hadamard: false }].map(
      (opts, v) => createCalderaLinears(d, [layerOf(dModel, nAtt, opts, 1 + v, true)])[0]!,
    );
    const dense = (m: number, label: string) =>
      new GpuDenseLinear(
        uploadMatrix(d, rng.fillNormal(new Float32Array(m * dModel), 0, 0.3), m, dModel, label),
        null,
      );
    // the next layers: CALDERA pairs (RVQ4 and E8P12 R̂, fused when the device allows), then dense layers and a
    // CALDERA layer followed by a dense one (variants 2 and 3: the rotation computes the RMSNorm they read)
    const nexts: GpuLinear[][] = [
      ...([{}, { lBits: 2, rBits: 2 }] as Partial<CalderaOptions>[]).map((opts, v) =>
        createCalderaLinears(
          d,
          [40, 24].map((m, j) => layerOf(m, dModel, opts, 10 + 2 * v + j, false)),
        ),
      ),
      [dense(40, 'dense 40'), dense(24, 'dense 24')],
      [...createCalderaLinears(d, [layerOf(40, dModel, {}, 14, false)]), dense(24, 'mixed dense 24')],
    ];
    let fusedRuns = 0;
    const att = storageBuffer(d, rng.fillNormal(new Float32Array(rows * nAtt), 0, 1), 'att');
    // the last row's residual at RMS ≈ 1e38 (values 1e38 to 2e38: an f32 sum of squares overflows unless scaled, and the norm's factor 1/RMS is subnormal unless split; normScaleWgsl)
    const h0 = rng
      .fillNormal(new Float32Array(rows * dModel), 0, 2)
      .map((v, i) => (i >= dModel ? Math.sign(v) * 1e38 + v * 1e37 : v));
    const weight = storageBuffer(d, rng.fillNormal(new Float32Array(dModel), 1, 0.2), 'norm weight');
    const scratch = storageBuffer(d, new Float32Array(rows * dModel), 'scratch');
    const run = (list: Dispatch[]) => runRows(list, rows);
    for (const storage of [d.maxStorageBuffers, 8])
      for (const lanes of [1, 32] as const)
        for (const [v, next] of nexts.entries()) {
          const o = os[v % 2]!;
          const dev = { ...d, maxStorageBuffers: storage };
          // the mix written out (the default on GPUs; CPU adapters read it from the table, as the model tests do)
          const kernels = new Kernels(dev, { lanes, writtenMix: true });
          const needs = { ...o.group.needs };
          for (const l of next)
            if (l instanceof GpuCalderaLinear)
              for (const key of Object.keys(needs) as (keyof typeof needs)[])
                needs[key] = Math.max(needs[key], l.group.needs[key]);
          const ctx = createLinearContext(dev, kernels, needs, rows);
          const what = `${storage} storage buffers, ${lanes} lane(s), next ${v}`;
          const outs = () => next.map((l) => storageBuffer(d, new Float32Array(rows * l.outFeatures), 'out'));
          const layers = (bufs: GPUBuffer[]) => next.map((layer, j) => ({ layer, out: bufs[j]! }));
          const norm = { weight, eps, scratch };
          // deferred: o's output rotation left to the next layers' input step
          const x = storageBuffer(d, h0, 'x');
          const x2 = storageBuffer(d, new Float32Array(rows * dModel), 'x2');
          const outA = outs();
          const deferred = bindPending(ctx, att, o, x);
          expect(deferred.pending, what).not.toBeNull();
          const step = bindNormed(ctx, { pending: deferred.pending!, x, out: x2, norm }, layers(outA));
          // the reference: o whole (accumulating into h), then the next layers reading RMSNorm(h)
          const ref = storageBuffer(d, h0, 'ref');
          const outB = outs();
          const refList = [
            ...bindLayers(ctx, att, [{ layer: o, out: ref }], { accumulate: true }),
            ...bindLayers(ctx, { x: ref, compute: { kind: 'rmsNorm', ...norm } }, layers(outB)),
          ];
          const apart = v >= 2;
          const fused = !apart && storage >= 11 + (v === 0 ? 1 : 0);
          if (fused) fusedRuns++;
          expect(step.residual, what).toBe(fused ? x2 : x);
          expect(deferred.dispatches.length + step.dispatches.length, what).toBe(
            refList.length - (fused || apart ? 1 : 0),
          );
          if (apart) expect(step.dispatches[0]!.label, what).toMatch(/\+rmsnorm$/);
          await run([...deferred.dispatches, ...step.dispatches]);
          await run(refList);
          expect(await readF32(step.residual), `${what}: h`).toEqual(await readF32(ref));
          for (const j of [0, 1]) {
            const got = await readF32(outA[j]!);
            expect(got, `${what}: layer ${j}`).toEqual(await readF32(outB[j]!));
            // the huge row is normed to O(1), not to zeros: its outputs are of the first row's size
            const size = (r: number) =>
              Math.hypot(...got.slice(r * next[j]!.outFeatures, (r + 1) * next[j]!.outFeatures));
            expect(size(1) / size(0), `${what}: layer ${j}`).toBeGreaterThan(0.1);
            expect(size(1) / size(0), `${what}: layer ${j}`).toBeLessThan(10);
          }
          // a pending rotation that reads a bias with none bound is refused on both paths
          const noBias = { pending: { ...deferred.pending!, bias: null }, x, out: x2, norm };
          expect(() => bindNormed(ctx, noBias, layers(outA)), what).toThrow(/bias/);
          // the rotation must be the one that accumulates into the residual stream normalized
          const other = { pending: deferred.pending!, x: x2, out: x, norm };
          if (apart) expect(() => bindNormed(ctx, other, layers(outA)), what).toThrow(/step\.x/);
          ctx.dispose();
          kernels.dispose();
        }
    // SwiftShader allows 12 storage buffers: both variants fused with 1 and 32 lanes
    if (d.maxStorageBuffers >= 12) expect(fusedRuns).toBe(4);
    for (const l of [...os, ...nexts.flat()]) l.dispose();
  });

  it("gate and up finished by down_proj's input step (bindNormed with defer + bindPending with gate) equal their output rotation first, to the bit, with one launch fewer (or in two, with gateStep 'split', and within f32 rounding with 'chunked'); 1 and 32 lanes, RVQ4 and E8P12 R̂, members in either order; falls back with 8 storage buffers (RVQ4 R̂), a wrong up buffer and a dense down; a missing bias is refused", async () => {
    const rng = new Rng(17);
    const [dModel, inter, rows] = [64, 96, 2];
    const layerOf = (m: number, n: number, o: Partial<CalderaOptions>, seed: number, bias: boolean) =>
      randomLayer(rng, m, n, o, seed, bias);
    // gate and up (96 × 64, up with a bias: the biases sit in one buffer); down (64 × 96, its rotation with K = 12)
    // with an RVQ4 R̂ (variant 0: the gate step binds 9 storage buffers) or an E8P12 R̂ (variant 1: 8), or dense
    const [gate, up] = createCalderaLinears(d, [
      layerOf(inter, dModel, {}, 1, false),
      layerOf(inter, dModel, {}, 2, true),
    ]);
    const downs: GpuLinear[] = [
      createCalderaLinears(d, [layerOf(dModel, inter, {}, 3, false)])[0]!,
      createCalderaLinears(d, [layerOf(dModel, inter, { lBits: 2, rBits: 2 }, 4, false)])[0]!,
      new GpuDenseLinear(
        uploadMatrix(
          d,
          rng.fillNormal(new Float32Array(dModel * inter), 0, 0.3),
          dModel,
          inter,
          'dense down',
        ),
        null,
      ),
    ];
    const h0 = rng.fillNormal(new Float32Array(rows * dModel), 0, 2);
    const weight = storageBuffer(d, rng.fillNormal(new Float32Array(dModel), 1, 0.2), 'norm weight');
    const scratch = storageBuffer(d, new Float32Array(rows * dModel), 'scratch');
    const run = (list: Dispatch[]) => runRows(list, rows);
    const bufs = () => [inter, inter].map((m) => storageBuffer(d, new Float32Array(rows * m), 'g/u'));
    let fusedRuns = 0;
    // (with 8 storage buffers one lane per row only: the 32-lane kernels are slow on SwiftShader); the gate step in
    // one launch or two (K = 12: two chunks of the mix)
    const devices = [
      [d.maxStorageBuffers, 1, 'fused'],
      [d.maxStorageBuffers, 32, 'fused'],
      [8, 1, 'fused'],
      [d.maxStorageBuffers, 1, 'split'],
      [d.maxStorageBuffers, 32, 'split'],
      [d.maxStorageBuffers, 32, 'chunked'],
    ] as const;
    for (const [storage, lanes, gateStep] of devices)
      for (const [v, down] of downs.entries()) {
        const dev = { ...d, maxStorageBuffers: storage };
        // the two-launch gate steps need the mix written out (the default on GPUs, not on CPU adapters)
        const kernels = new Kernels(dev, { lanes, gateStep, writtenMix: true });
        const needs = { ...gate!.group.needs };
        if (down instanceof GpuCalderaLinear)
          for (const key of Object.keys(needs) as (keyof typeof needs)[])
            needs[key] = Math.max(needs[key], down.group.needs[key]);
        const ctx = createLinearContext(dev, kernels, needs, rows);
        const what = `${storage} storage buffers, ${lanes} lane(s), down ${v}, gate step ${gateStep}`;
        const norm = { weight, eps: 1e-5, scratch };
        // the reference: gate and up whole, then down reading SwiGLU(g, u), accumulating into h
        const ref = storageBuffer(d, h0, 'ref');
        const [rg, ru] = bufs();
        const refList = [
          ...bindLayers(ctx, { x: ref, compute: { kind: 'rmsNorm', ...norm } }, [
            { layer: gate!, out: rg! },
            { layer: up!, out: ru! },
          ]),
          ...bindLayers(ctx, { x: rg!, compute: { kind: 'swiglu', up: ru! } }, [{ layer: down, out: ref }], {
            accumulate: true,
          }),
        ];
        await run(refList);
        const want = await readF32(ref);
        // deferred: gate and up's output rotation left to down_proj's input step (its members as given, reversed;
        // a pending rotation whose second output is not the SwiGLU's up buffer cannot be finished there)
        // (the two-launch forms given only: the members' order and the fallback are the fused step's)
        const forms =
          gateStep === 'fused' ? (['as given', 'reversed', 'wrong up'] as const) : (['as given'] as const);
        for (const form of forms) {
          const x = storageBuffer(d, h0, 'x');
          const [g, u] = bufs();
          const gu = bindNormed(
            ctx,
            { pending: null, x, out: x, norm },
            [
              { layer: gate!, out: g! },
              { layer: up!, out: u! },
            ],
            { defer: true },
          );
          expect(gu.pending, what).not.toBeNull();
          const pending = gu.pending!;
          const given =
            form === 'reversed' ? { ...pending, members: [...pending.members].reverse() } : pending;
          // a wrong up: the rotation writes up elsewhere than the buffer down reads, so it cannot be finished there
          // (it runs first; down then reads an up nobody wrote, so only the launches are checked)
          const gate2 = form === 'wrong up' ? { ...pending, outs: [g!, bufs()[1]!] } : given;
          const dn = bindPending(ctx, { x: g!, compute: { kind: 'swiglu', up: u! } }, down, x, {
            gate: gate2,
          });
          const ours = [
            ...gu.dispatches,
            ...dn.dispatches,
            ...(dn.pending ? kernels.rotate(dn.pending) : []),
          ];
          const binds = v === 0 ? 9 : 8;
          const fused = form !== 'wrong up' && down instanceof GpuCalderaLinear && storage >= binds;
          if (fused) fusedRuns++;
          // in two launches: the chunks' launch, then the input step with the mix alone
          const split = fused && gateStep !== 'fused';
          expect(ours.length, `${what}, ${form}`).toBe(refList.length - (fused && !split ? 1 : 0));
          expect(
            ours.some((l) => l.label.startsWith('gate slices')),
            `${what}, ${form}`,
          ).toBe(split);
          if (form === 'wrong up') continue;
          await run(ours);
          // chunked: z = R̂·x' summed over 96/8 = 12 code groups in other groupings (the chunks' partial sums, then
          // added by the E8P kernel), f32 rounding of ~1e-7 of the outputs' scale; 1e-5 leaves margin, and a wrong
          // chunk, sign or partial moves outputs by O(1)
          if (split && gateStep === 'chunked')
            expect(relErr(await readF32(x), want), `${what}, ${form}`).toBeLessThan(1e-5);
          else expect(await readF32(x), `${what}, ${form}`).toEqual(want);
          // a rotation that reads a bias with none bound is refused, fused or not
          const noBias = { ...pending, bias: null };
          expect(
            () => bindPending(ctx, { x: g!, compute: { kind: 'swiglu', up: u! } }, down, x, { gate: noBias }),
            what,
          ).toThrow(/bias/);
        }
        ctx.dispose();
        kernels.dispose();
      }
    // SwiftShader allows 12 storage buffers: both CALDERA downs fused with 1 and 32 lanes, given and reversed, and in
    // the two-launch forms given (chunked: 32 lanes; the model test runs it with one); with 8 the E8P12 one (one lane)
    if (d.maxStorageBuffers >= 9) expect(fusedRuns).toBe(2 * 2 * 2 + 2 * 2 + 2 + 2);
    for (const l of [gate!, up!, ...downs]) l.dispose();
  });

  it('bindLayers then RoPE and the KV store: a q/k/v group (in its output rotation) equals the layers alone (a launch after them), to the bit; dense layers get that launch too', async () => {
    const rng = new Rng(15);
    const [n, H, KV, hd, cap, pos] = [96, 4, 2, 16, 4, 2];
    const widths = [H * hd, KV * hd, KV * hd];
    const dense = widths.map((m) => rng.fillNormal(new Float32Array(m * n), 0, 0.3));
    const layers = widths.map((m, j) => {
      const x = caldera(tensor('f32', [m, n], dense[j]!), null, {
        rank: 2,
        outerIters: 1,
        lplrIters: 1,
        seed: j,
      });
      const { tensors, meta } = toCheckpointTensors('layer', x);
      return { d: fromCheckpointTensors('layer', (nm) => tensors[nm], meta), bias: null, label: `l${j}` };
    });
    const grouped = createCalderaLinears(d, layers);
    const alone = layers.map((l) => new GpuCalderaLinear(d, l.d, null, l.label));
    const denseLayers = widths.map(
      (m, j) => new GpuDenseLinear(uploadMatrix(d, dense[j]!, m, n, 'dense'), null),
    );
    const kernels = new Kernels(d, { lanes: 1 });
    const ctx = createLinearContext(d, kernels, grouped[0]!.group.needs);
    const x = storageBuffer(d, rng.fillNormal(new Float32Array(n), 0, 1), 'x');
    const cs = storageBuffer(
      d,
      Float32Array.from({ length: cap * hd }, (_, i) => Math.cos(0.3 * i)),
      'cs',
    );
    const step = uniformWords(d, Uint32Array.of(pos, pos + 1, 0, 0), 'step');
    const results: { q: number[]; ck: number[]; cv: number[] }[] = [];
    for (const [si, set] of [grouped, alone, denseLayers].entries()) {
      const outs = widths.map((m) => storageBuffer(d, new Float32Array(m), 'out'));
      const ck = storageBuffer(d, new Float32Array(cap * KV * hd), 'ck');
      const cv = storageBuffer(d, new Float32Array(cap * KV * hd), 'cv');
      const launches = bindLayers(
        ctx,
        x,
        set.map((layer, j) => ({ layer, out: outs[j]! })),
        { then: { step, cs, ck, cv, heads: H, kvHeads: KV, hd } },
      );
      // the group: input step, fused kernel, output rotation with RoPE; alone: 3 each and the RoPE launch; dense: 3 + 1
      expect(launches.length).toBe([3, 3 * 3 + 1, 3 + 1][si]);
      const enc = d.device.createCommandEncoder();
      encodeDispatches(enc, launches);
      d.device.queue.submit([enc.finish()]);
      const read = async (b: GPUBuffer) => Array.from(new Float32Array(await readBuffer(d, b, b.size)));
      results.push({ q: await read(outs[0]!), ck: await read(ck), cv: await read(cv) });
    }
    expect(results[0]).toEqual(results[1]);
    // the dense layers (the weights before compression) filled the cache row at the position, and only it
    const kw = KV * hd;
    for (const c of [results[2]!.ck, results[2]!.cv])
      for (let p = 0; p < cap; p++) expect(c.slice(p * kw, p * kw + kw).some((v) => v !== 0)).toBe(p === pos);
    for (const m of [...grouped, ...alone, ...denseLayers]) m.dispose();
    ctx.dispose();
    kernels.dispose();
  });

  for (const lanes of [1, 32] as const)
    it(`dense layers sharing an input (${lanes} lane(s) per row): one launch for the group equals each layer alone, to the bit (f32, odd-width f16 and bf16, biases, accumulation, prefill tiles)`, async () => {
      const rng = new Rng(16);
      const rows = 2;
      const kernels = new Kernels(d, { lanes });
      const ctx = createLinearContext(d, kernels, { rotIn: 4, rotOut: 4, z: 4, ones: 4 }, rows);
      for (const [dtype, n, heights, bias] of [
        ['f32', 40, [24, 8, 8], true],
        ['f16', 37, [16, 32, 8], true],
        ['f16', 37, [16, 32], false],
        ['bf16', 37, [16, 32, 8], true],
        ['bf16', 37, [16, 32], false],
      ] as const) {
        const inputs = heights.map((m, j) => {
          const w = rng.fillNormal(new Float32Array(m * n), 0, 0.5);
          return {
            data: dtype === 'f16' ? f32ArrayToF16(w) : dtype === 'bf16' ? f32ArrayToBf16(w) : w,
            ...(dtype === 'bf16' ? { format: 'bf16' as const } : {}),
            rows: m,
            cols: n,
            bias: bias ? rng.fillNormal(new Float32Array(m), 0, 1) : null,
            label: `d${j}`,
          };
        });
        const members = createDenseLinears(d, inputs);
        const group = members[0]!.member!.group;
        expect(members.every((m, j) => m.member?.group === group && m.member.index === j)).toBe(true);
        expect(group.w.dtype).toBe(dtype);
        const alone = inputs.map((l) => createDenseLinears(d, [l])[0]!);
        expect(alone.every((l) => l.member === null)).toBe(true);
        // the stacked buffers hold exactly the bytes of the layers apart
        expect(members.map((m) => m.gpuBytes)).toEqual(alone.map((m) => m.gpuBytes));
        const x = storageBuffer(d, rng.fillNormal(new Float32Array(rows * n), 0, 1), 'x');
        const start = () => heights.map((m) => rng.fillNormal(new Float32Array(rows * m), 0, 1));
        for (const tile of [1, 2])
          for (const accumulate of [false, true]) {
            const init = start();
            const run = async (bind: (outs: GPUBuffer[]) => Dispatch[]) => {
              const outs = init.map((v) => storageBuffer(d, v, 'out'));
              const enc = d.device.createCommandEncoder();
              encodeDispatches(enc, bind(outs), rows);
              d.device.queue.submit([enc.finish()]);
              return Promise.all(
                outs.map(async (o) => Array.from(new Float32Array(await readBuffer(d, o, o.size)))),
              );
            };
            const together = await run((outs) => {
              const list = bindLayers(
                ctx,
                x,
                members.map((layer, j) => ({ layer, out: outs[j]! })),
                { accumulate, tile },
              );
              expect(list.length).toBe(1);
              return list;
            });
            const apart = await run((outs) =>
              alone.flatMap((l, j) => l.bind(ctx, x, outs[j]!, accumulate, tile)),
            );
            // the group's layers after the first, in one launch (a row offset with several outputs)
            const rest = await run((outs) => {
              const list = bindLayers(
                ctx,
                x,
                members.slice(1).map((layer, j) => ({ layer, out: outs[j + 1]! })),
                { accumulate, tile },
              );
              expect(list.length).toBe(1);
              return [...list, ...members[0]!.bind(ctx, x, outs[0]!, accumulate, tile)];
            });
            const single = await run((outs) =>
              members.flatMap((l, j) => l.bind(ctx, x, outs[j]!, accumulate, tile)),
            );
            const what = `${dtype} tile=${tile} accumulate=${accumulate}`;
            expect(together, what).toEqual(apart);
            expect(single, what).toEqual(apart);
            expect(rest, what).toEqual(apart);
            // and the values: W·x (+ bias) (+ the initial output)
            const xs = new Float32Array(await readBuffer(d, x, rows * n * 4));
            inputs.forEach((l, j) => {
              const w =
                l.data instanceof Float32Array
                  ? l.data
                  : dtype === 'bf16'
                    ? bf16ArrayToF32(l.data)
                    : f16ArrayToF32(l.data);
              for (let r = 0; r < rows; r++)
                for (let i = 0; i < l.rows; i++) {
                  let s = (l.bias?.[i] ?? 0) + (accumulate ? init[j]![r * l.rows + i]! : 0);
                  for (let c = 0; c < n; c++) s += w[i * n + c]! * xs[r * n + c]!;
                  // f32 sums of ≤ 40 products in another order: ~1e-6 of values ~5
                  expect(Math.abs(together[j]![r * l.rows + i]! - s), what).toBeLessThan(1e-4);
                }
            });
          }
        for (const m of [...members, ...alone]) m.dispose();
      }
      ctx.dispose();
      kernels.dispose();
    });

  it('f16 and bf16 layers are not stacked together (one kernel reads one format); each is uploaded alone in its own', () => {
    const w = new Float32Array(16 * 8).map((_, i) => (i % 7) - 3);
    const layers = createDenseLinears(d, [
      { data: f32ArrayToF16(w), rows: 16, cols: 8, bias: null, label: 'f16' },
      { data: f32ArrayToBf16(w), format: 'bf16', rows: 16, cols: 8, bias: null, label: 'bf16' },
    ]);
    expect(layers.map((l) => [l.member, l.w.dtype, l.bitsPerWeight])).toEqual([
      [null, 'f16', 16],
      [null, 'bf16', 16],
    ]);
    for (const l of layers) l.dispose();
  });

  it('createDenseLinears rejects weights or biases of the wrong length with E_SHAPE, naming the layer', () => {
    const data = new Float32Array(4 * 8);
    expect(() => createDenseLinears(d, [{ data, rows: 5, cols: 8, bias: null, label: 'q' }])).toThrow(
      /q: 32 weights/,
    );
    expect(() =>
      createDenseLinears(d, [{ data, rows: 4, cols: 8, bias: new Float32Array(3), label: 'k' }]),
    ).toThrow(CalderaError);
  });

  it('layers of different codecs are not grouped', () => {
    const rng = new Rng(13);
    const w = () => tensor('f32', [32, 64], rng.fillNormal(new Float32Array(32 * 64), 0, 1));
    const a = caldera(w(), null, { rank: 2, outerIters: 1, lplrIters: 1 });
    const b = caldera(w(), null, { rank: 2, lBits: 3, outerIters: 1, lplrIters: 1 });
    const c = caldera(w(), null, { rank: 2, qBits: 4, outerIters: 1, lplrIters: 1 });
    expect(groupable([a, a])).toBe(true);
    expect(groupable([a, b])).toBe(false);
    expect(groupable([a, c])).toBe(false);
    // layers without Q group only among themselves (whatever their factors' codecs: they are decoded)
    const e = caldera(w(), null, { rank: 2, qBits: 0, outerIters: 1, lplrIters: 1 });
    const f = caldera(w(), null, { rank: 2, qBits: 0, lBits: 16, rBits: 16, lplrIters: 1 });
    expect(groupable([a, e])).toBe(false);
    expect(groupable([e, f])).toBe(true);
    // no Q and no factors (a hand-made decomposition): refused; it wrote nothing, its output rows the last layer's
    expect(() => new GpuCalderaLinear(d, { ...e, rank: 0 }, null, 'empty')).toThrow(
      'E_VALUE: empty: no Q and no low-rank factors (rank 0): the layer would be all zeros',
    );
    const lin = createCalderaLinears(d, [
      { d: a, bias: null, label: 'a' },
      { d: b, bias: null, label: 'b' },
    ]);
    expect(lin[0]!.group).not.toBe(lin[1]!.group);
    for (const l of lin) l.dispose();
  });

  it('a layer that does not fit the device is a CalderaError E_DEVICE, not a GPU validation error', () => {
    const rng = new Rng(8);
    const w = tensor('f32', [16, 32], rng.fillNormal(new Float32Array(512), 0, 1));
    const dec = caldera(w, null, { rank: 2, outerIters: 1, lplrIters: 1 });
    const tiny = { ...d, maxStorageBinding: 32 };
    expect(() => new GpuCalderaLinear(tiny, dec, null, 'big')).toThrow(CalderaError);
    try {
      new GpuCalderaLinear(tiny, dec, null, 'big');
    } catch (e) {
      expect((e as CalderaError).code).toBe('E_DEVICE');
    }
  });
});
