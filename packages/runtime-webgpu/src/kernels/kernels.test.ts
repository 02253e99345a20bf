import { describe, expect, it } from 'vitest';
import { bf16ArrayToF32, f16ArrayToF32, f32ArrayToBf16, f32ArrayToF16, Rng } from '@caldera/core';
import { hadamardBase, hadamardFactor, hadamardRowsInPlace } from '@caldera/linalg';
import { e81bCodebook, e8pDecode, RVQ3_RESID_SCALE, RVQ4_RESID_SCALE } from '@caldera/quant';
import {
  readBuffer,
  storageBuffer,
  scratchBuffer,
  uniformBuffer,
  uniformWords,
  type CalderaDevice,
} from '../device.js';
import { e8pSourcePairs, uploadMatrix } from '../linear.js';
import { relErr } from '../testing/compare.js';
import { gpuTitle, ownTestDevice, spyOnCompiles, testDevice, testF16Device } from '../testing/gpu.js';
import {
  ARGMAX_NAN_FLAG,
  e8pF16WorkgroupBytes,
  e8pMatvecWgsl,
  e8pTablesUniform,
  gateSliceWgsl,
  hadamardWgsl,
  inputProjectionWgsl,
  bufferBindingTypes,
  encodeDispatches,
  KernelPipeline,
  Kernels,
  type Dispatch,
  type LatticeCodec,
  type RotationMember,
  TOPK_MAX,
  topkLevelBlocks,
  topkParams,
} from './index.js';

const { device: dev, reason } = await testDevice();
const { device: f16dev, reason: f16reason } = await testF16Device();

async function run(d: CalderaDevice, list: Dispatch[], rows = 1): Promise<void> {
  const enc = d.device.createCommandEncoder();
  encodeDispatches(enc, list, rows);
  d.device.queue.submit([enc.finish()]);
  await d.device.queue.onSubmittedWorkDone();
}
const readF32 = async (d: CalderaDevice, b: GPUBuffer, n: number) =>
  new Float32Array(await readBuffer(d, b, n * 4));
const randn = (rng: Rng, n: number, std = 1) => rng.fillNormal(new Float32Array(n), 0, std);

/**
 * Random packed codes of `groups` groups of 8 in `codec`, the buffer layout `Kernels.e8pMatvec` takes for L̂
 * (plane 1 from word 0, plane 2 from word `plane2Word`), and their values `c1 + c2/ρ` decoded here with
 * @caldera/quant's E8P decoder and E81B table (not the kernel's).
 */
function packedCodes(rng: Rng, groups: number, codec: LatticeCodec) {
  const p1 = Uint16Array.from({ length: groups }, () => rng.int(65536));
  const p2 =
    codec === 'rvq4'
      ? Uint16Array.from({ length: groups }, () => rng.int(65536))
      : codec === 'rvq3'
        ? Uint8Array.from({ length: groups }, () => rng.int(256))
        : null;
  const plane2Word = Math.ceil(p1.byteLength / 4);
  const bytes = new Uint8Array(plane2Word * 4 + (p2?.byteLength ?? 0));
  bytes.set(new Uint8Array(p1.buffer));
  if (p2) bytes.set(new Uint8Array(p2.buffer), plane2Word * 4);
  const rho = codec === 'rvq3' ? RVQ3_RESID_SCALE : RVQ4_RESID_SCALE;
  const values = Float64Array.from(e8pDecode(p1));
  if (p2 instanceof Uint16Array) e8pDecode(p2).forEach((v, i) => (values[i]! += v / rho));
  if (p2 instanceof Uint8Array) {
    const cb = e81bCodebook();
    for (let i = 0; i < values.length; i++) values[i]! += cb[p2[i >> 3]! * 8 + (i & 7)]! / rho;
  }
  return { bytes, plane2Word, values, resScale: rho };
}

/** A rotation member over one whole vector of n values (all offsets 0, no transform factor, no bias), with changes. */
function memberOf(n: number, changes: Partial<RotationMember> = {}): RotationMember {
  return {
    n,
    nIn: n,
    outLen: n,
    K: 1,
    gscale: 1,
    xOff: 0,
    preOff: 0,
    postOff: 0,
    biasOff: null,
    hkOff: 0,
    outOff: 0,
    outStride: n,
    slot: 0,
    ...changes,
  };
}

/** Options of an E8P12 launch over one placeholder buffer, for tests of what `Kernels.e8pMatvec` accepts or picks. */
function e8pStub(b: GPUBuffer, np: number) {
  return {
    codes: b,
    codes2: null,
    codec: 'e8p12',
    e81b: null,
    sources: b,
    x: b,
    out: b,
    np,
    resScale: 1,
  } as const;
}

describe.skipIf(!dev)(gpuTitle('WGSL kernels against CPU references', reason), () => {
  const d = dev!;
  const K = () => new Kernels(d);
  const stepBuf = (pos: number, len: number, token = 0) =>
    uniformBuffer(
      d,
      [
        ['u32', pos],
        ['u32', len],
        ['u32', token],
      ],
      'step',
    );

  for (const lanes of [1, 32] as const) {
    it(`dense matvec (${lanes} lane(s) per row), f32 and packed f16 and bf16 (odd width), with bias and accumulation`, async () => {
      const rng = new Rng(1);
      const [m, n] = [37, 45];
      const w = randn(rng, m * n);
      const x = randn(rng, n);
      const bias = randn(rng, m);
      const prev = randn(rng, m);
      const k = new Kernels(d, { lanes });
      const dummy = storageBuffer(d, new Float32Array(4), 'dummy');
      for (const dtype of ['f32', 'f16', 'bf16'] as const) {
        const bits = dtype === 'f16' ? f32ArrayToF16(w) : dtype === 'bf16' ? f32ArrayToBf16(w) : null;
        // the values the GPU sees
        const wq = dtype === 'f16' ? f16ArrayToF32(bits!) : dtype === 'bf16' ? bf16ArrayToF32(bits!) : w;
        const mat =
          dtype === 'f32' ? uploadMatrix(d, w, m, n, 'w') : uploadMatrix(d, bits!, m, n, 'w', dtype);
        expect(mat.dtype).toBe(dtype);
        const out = storageBuffer(d, prev, 'out');
        await run(d, [
          k.matvec(mat, storageBuffer(d, x, 'x'), out, {
            bias: storageBuffer(d, bias, 'b'),
            accumulate: true,
            dummy,
          }),
        ]);
        const ref = new Float64Array(m);
        for (let i = 0; i < m; i++) {
          let s = 0;
          for (let j = 0; j < n; j++) s += wq[i * n + j]! * x[j]!;
          ref[i] = s + bias[i]! + prev[i]!;
        }
        // 45 products of unit-variance values summed in f32 (32 lanes + tree): ~1e-6 relative; 1e-5 leaves margin
        expect(relErr(await readF32(d, out, m), ref)).toBeLessThan(1e-5);
      }
    });

    it(`bf16 weights unpack exactly (${lanes} lane(s) per row): every finite bf16 through the embedding lookup, bit for bit (±0, subnormals, max finite, negatives); through matvec as the same f32 values`, async () => {
      // every finite bf16 (exponent field below 0xff): 65 280 patterns, 255 rows of 256
      const patterns = Uint16Array.from({ length: 65536 }, (_, i) => i).filter(
        (b) => (b & 0x7f80) !== 0x7f80,
      );
      expect(patterns.length).toBe(255 * 256);
      const [V, dm] = [255, 256];
      const k = new Kernels(d, { lanes });
      const table = uploadMatrix(d, patterns, V, dm, 'bf16 table', 'bf16');
      const tokens = storageBuffer(
        d,
        Uint32Array.from({ length: V }, (_, i) => V - 1 - i),
        'tokens',
      );
      const out = storageBuffer(d, new Float32Array(V * dm), 'out');
      await run(d, [k.embed(tokens, table, out)], V);
      const got = new Uint32Array(await readBuffer(d, out, V * dm * 4));
      let wrong = 0;
      for (let r = 0; r < V; r++)
        for (let j = 0; j < dm; j++)
          if (got[r * dm + j] !== (patterns[(V - 1 - r) * dm + j]! << 16) >>> 0) wrong++;
      expect(wrong).toBe(0);
      // the named cases among them, to the bit: ±0, smallest and largest subnormals (and negative), smallest normal,
      // ±max finite, ±1, π's bf16
      for (const b of [
        0x0000, 0x8000, 0x0001, 0x007f, 0x8001, 0x807f, 0x0080, 0x7f7f, 0xff7f, 0x3f80, 0xbf80, 0x4049,
      ]) {
        const at = patterns.indexOf(b);
        const r = V - 1 - Math.floor(at / dm);
        expect(got[r * dm + (at % dm)]).toBe((b << 16) >>> 0);
      }
      // an odd width (rows padded with a zero half), normal values: matvec against e_j gives W's column j exactly
      const [m, n] = [5, 7];
      const normals = patterns
        .filter((b) => (b & 0x7f80) !== 0)
        .slice(0, m * n * 997)
        .filter((_, i) => i % 997 === 0);
      const w = normals.subarray(0, m * n);
      const mat = uploadMatrix(d, w, m, n, 'w', 'bf16');
      const dummy = storageBuffer(d, new Float32Array(4), 'dummy');
      const wf = bf16ArrayToF32(w);
      for (let j = 0; j < n; j++) {
        const x = new Float32Array(n);
        x[j] = 1;
        const y = storageBuffer(d, new Float32Array(m), 'y');
        await run(d, [k.matvec(mat, storageBuffer(d, x, 'x'), y, { bias: null, accumulate: false, dummy })]);
        expect([...(await readF32(d, y, m))]).toEqual(Array.from({ length: m }, (_, i) => wf[i * n + j]!));
      }
    });

    it(`E8P12 matvec (${lanes} lane(s) per row${lanes === 32 ? '; 1, 2 and 4 rows per lane' : ''}) decodes all 65 536 codes like @caldera/quant (and RVQ4/RVQ3, plus packed L̂·z in every codec)${lanes === 32 ? '; more rows per lane give the same outputs to the bit' : ''}, as do 4 or 16 code groups per batch of loads`, async () => {
      const rng = new Rng(2);
      const mp = 1024;
      const np = 512; // 64 codes per row: every code appears once
      const codes = new Uint16Array(mp * (np / 8));
      for (let i = 0; i < codes.length; i++) codes[i] = i;
      for (let i = codes.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [codes[i], codes[j]] = [codes[j]!, codes[i]!];
      }
      const codes2 = new Uint16Array(codes.length);
      for (let i = 0; i < codes2.length; i++) codes2[i] = rng.int(65536);
      const x = randn(rng, np);
      const kr = 37; // more components than the 32 lanes of a row: each lane takes several
      const z = randn(rng, kr);
      const sources = storageBuffer(d, e8pSourcePairs(), 'src');
      const xb = storageBuffer(d, x, 'x');
      const codes3 = Uint8Array.from({ length: codes.length }, () => rng.int(256));
      const q1 = e8pDecode(codes);
      const q2 = e8pDecode(codes2);
      const cb3 = e81bCodebook();
      const e81b = storageBuffer(d, cb3, 'e81b');
      // each Q codec, and each codec of L̂ (L̂ᵀ: kr × mp, groups along m) once
      const cases = [
        ['e8p12', null],
        ['rvq4', 'rvq4'],
        ['rvq3', 'e8p12'],
        ['e8p12', 'rvq3'],
      ] as const;
      // with 32 lanes, each row's sums are the same with more rows per lane: the one-row outputs, to compare
      const oneRow = new Map<string, Float32Array>();
      // L̂'s codes of each case, the same for every rows per lane
      const Ls = cases.map(([, lCodec]) => (lCodec ? packedCodes(rng, (kr * mp) / 8, lCodec) : null));
      for (const [c, [codec, lCodec]] of cases.entries())
        // rows per lane, and code groups per batch of loads: the default (8), 4 and 16
        for (const [rowsPerLane, codeBatch] of lanes === 32
          ? ([
              [1, 8],
              [2, 8],
              [4, 8],
              [1, 16],
              [1, 4],
              [4, 16],
            ] as const)
          : ([
              [1, 8],
              [1, 16],
            ] as const)) {
          const k = new Kernels(d, { lanes, rowsPerLane, codeBatch });
          const rvq = codec !== 'e8p12';
          const rho = codec === 'rvq3' ? RVQ3_RESID_SCALE : RVQ4_RESID_SCALE;
          const out = scratchBuffer(d, mp * 4, 'out');
          const qscale = 0.37;
          const lscale = 0.21;
          const L = Ls[c]!;
          const launch = k.e8pMatvec({
            codes: storageBuffer(d, codes, 'c'),
            codes2: rvq ? storageBuffer(d, codec === 'rvq3' ? codes3 : codes2, 'c2') : null,
            codec,
            e81b: codec === 'rvq3' || lCodec === 'rvq3' ? e81b : null,
            sources,
            x: xb,
            out,
            np,
            resScale: rho,
            segments: [
              {
                rows: mp,
                qscale,
                ...(L ? { lowRank: { k: kr, scale: lscale, codeByte: 0, code2Byte: L.plane2Word * 4 } } : {}),
              },
            ],
            ...(L && lCodec
              ? {
                  lowRank: {
                    codec: lCodec,
                    codes: storageBuffer(d, L.bytes, 'l'),
                    resScale: L.resScale,
                    z: storageBuffer(d, z, 'z'),
                  },
                }
              : {}),
          });
          expect(launch.rowsPerLane).toBe(lanes === 32 ? rowsPerLane : undefined);
          expect(launch.label.includes(` ${rowsPerLane} rows/lane`)).toBe(rowsPerLane > 1);
          expect(launch.label.endsWith(` ×${codeBatch} codes`)).toBe(codeBatch !== 8);
          await run(d, [launch]);
          const got = await readF32(d, out, mp);
          if (rowsPerLane === 1 && codeBatch === 8) oneRow.set(`${codec} ${lCodec}`, got);
          else
            expect(
              got,
              `${codec} ${lCodec}, ${rowsPerLane} rows per lane, ${codeBatch} codes a batch`,
            ).toEqual(oneRow.get(`${codec} ${lCodec}`));
          const ref = new Float64Array(mp);
          for (let i = 0; i < mp; i++) {
            let s = 0;
            for (let j = 0; j < np; j++) {
              const r2 =
                codec === 'rvq4'
                  ? q2[i * np + j]!
                  : codec === 'rvq3'
                    ? cb3[codes3[i * (np / 8) + (j >> 3)]! * 8 + (j & 7)]!
                    : 0;
              const w = q1[i * np + j]! + r2 / rho;
              s += w * x[j]!;
            }
            ref[i] = qscale * s;
            if (L) for (let t = 0; t < kr; t++) ref[i]! += lscale * L.values[t * mp + i]! * z[t]!;
          }
          // a wrong sign or source entry changes an output by ≥ 0.25·|x_j| ~ 0.1 relative (of L̂: ≥ 0.25·lscale·|z_t|
          // ~ 0.05); f32 rounding of 512 products is ~1e-6 relative
          expect(relErr(got, ref), `${codec} ${lCodec}`).toBeLessThan(1e-5);
        }
    });
  }

  for (const lanes of [1, 32] as const)
    it(`row-tiled prefill form (${lanes} lane(s) per row): 11 rows through E8P12/RVQ4/RVQ3 and dense f32/f16 equal the one-row kernel row by row, to the bit`, async () => {
      const rng = new Rng(9);
      const [mp, np, kr, rows, tile] = [40, 64, 35, 11, 8]; // 11 rows: a full tile and a partial one; k > 32 lanes
      const padded = Math.ceil(rows / tile) * tile;
      const k = new Kernels(d, { lanes });
      const dummy = storageBuffer(d, new Float32Array(4), 'dummy');
      const sources = storageBuffer(d, e8pSourcePairs(), 'src');
      const e81b = storageBuffer(d, e81bCodebook(), 'e81b');
      const u16 = (n: number) => Uint16Array.from({ length: n }, () => rng.int(65536));
      const codes = storageBuffer(d, u16((mp * np) / 8), 'c');
      const planes2 = {
        rvq4: storageBuffer(d, u16((mp * np) / 8), 'c2'),
        rvq3: storageBuffer(
          d,
          Uint8Array.from({ length: (mp * np) / 8 }, () => rng.int(256)),
          'c3',
        ),
      };
      const lCodecs = ['rvq4', 'e8p12', 'rvq3'] as const; // L̂'s codec beside Q's e8p12, rvq4, rvq3
      const ls = lCodecs.map((c) => {
        const p = packedCodes(rng, (kr * mp) / 8, c);
        return {
          codec: c,
          codes: storageBuffer(d, p.bytes, 'l'),
          plane2Word: p.plane2Word,
          resScale: p.resScale,
        };
      });
      const x = randn(rng, padded * np);
      const z = randn(rng, padded * kr);
      const w = randn(rng, mp * np);
      const bias = storageBuffer(d, randn(rng, mp), 'bias');
      const mats = [uploadMatrix(d, w, mp, np, 'w32'), uploadMatrix(d, f32ArrayToF16(w), mp, np, 'w16')];
      const launch = (tile: number, xb: GPUBuffer, zb: GPUBuffer, out: GPUBuffer, which: number) => {
        if (which >= 3) return k.matvec(mats[which - 3]!, xb, out, { bias, accumulate: false, dummy, tile });
        const codec = (['e8p12', 'rvq4', 'rvq3'] as const)[which]!;
        const l = ls[which]!;
        return k.e8pMatvec({
          codes,
          codes2: codec === 'e8p12' ? null : planes2[codec],
          codec,
          e81b: codec === 'rvq3' || l.codec === 'rvq3' ? e81b : null,
          sources,
          x: xb,
          out,
          np,
          resScale: codec === 'rvq3' ? RVQ3_RESID_SCALE : RVQ4_RESID_SCALE,
          segments: [
            {
              rows: mp,
              qscale: 0.4,
              lowRank: { k: kr, scale: 0.3, codeByte: 0, code2Byte: l.plane2Word * 4 },
            },
          ],
          lowRank: { codec: l.codec, codes: l.codes, resScale: l.resScale, z: zb },
          tile,
        });
      };
      for (let which = 0; which < 5; which++) {
        const out = scratchBuffer(d, padded * mp * 4, 'out');
        await run(d, [launch(tile, storageBuffer(d, x, 'x'), storageBuffer(d, z, 'z'), out, which)], rows);
        const got = await readF32(d, out, rows * mp);
        for (let r = 0; r < rows; r++) {
          const one = scratchBuffer(d, mp * 4, 'one');
          const xr = storageBuffer(d, x.slice(r * np, r * np + np), 'xr');
          await run(d, [launch(1, xr, storageBuffer(d, z.slice(r * kr, r * kr + kr), 'zr'), one, which)]);
          // the same operations in the same order per row: identical bits
          expect(Array.from(got.subarray(r * mp, r * mp + mp)), `kernel ${which} row ${r}`).toEqual(
            Array.from(await readF32(d, one, mp)),
          );
        }
      }
    }); // (pipeline compilation of the tiled 32-lane kernels takes tens of seconds on SwiftShader)

  // the workgroup path with both defaults' sizes (64 invocations on CPU adapters, 256 on GPUs)
  for (const [path, vectorWorkgroup] of [
    ['workgroup', 64],
    ['workgroup', 256],
    ['global memory', undefined],
  ] as const)
    it(`Hadamard step (${path}${vectorWorkgroup ? `, ${vectorWorkgroup} invocations` : ''}): M_n and M_nᵀ for K ∈ {1, 12, 20, 28, 36, 40, 52, 108, 140, 156, 172}, and no transform; signs, padding, truncation, bias`, async () => {
      const rng = new Rng(3);
      // the global-memory path is forced by declaring every rotation too large for workgroup memory: chunks of 16,
      // so blocks of P ≤ 16 take 2 launches, longer ones (P = 64, 128, 256 here) a strided third. In workgroup
      // memory the written-out mixes (K ≤ 64) see blocks narrower than the workgroup (with 256 invocations a column
      // shared by 256/P, more of them than chunks of sums at P = 8), as wide (3072 = 12·256) and wider (6144 = 12·512:
      // two columns per invocation with 256, 8 with 64; blocks beyond the forced global path's 16² values); K > 64
      // the loop over the table
      const k = new Kernels(d, path === 'workgroup' ? { vectorWorkgroup } : { maxLocalHadamard: 16 });
      const dummy = storageBuffer(d, new Float32Array(4), 'dummy');
      const tmp = scratchBuffer(d, 6144 * 4, 'tmp');
      const wide = path === 'workgroup' ? [3072, 6144] : [];
      for (const n of [256, 96, 768, 40, 160, 20, 56, 72, 216, 140, 52, 344, 156, ...wide]) {
        // the transform both ways, and without it (K = 1; the global path then loads in chunks of the largest
        // power of two dividing n)
        for (const [transform, transpose] of [
          [true, false],
          [true, true],
          [false, false],
        ] as const) {
          const Kf = transform ? hadamardFactor(n)!.K : 1;
          const nIn = n - 3;
          const outLen = n - 5;
          const x = randn(rng, nIn);
          const pre = Float32Array.from({ length: n }, () => rng.rademacher());
          const post = Float32Array.from({ length: n }, () => rng.rademacher());
          const bias = randn(rng, n);
          const g = 0.7;
          const out = scratchBuffer(d, outLen * 4, 'out');
          const launches = k.hadamard({
            x: storageBuffer(d, x, 'x'),
            out,
            pre: storageBuffer(d, pre, 'pre'),
            post: storageBuffer(d, post, 'post'),
            bias: storageBuffer(d, bias, 'bias'),
            hk: storageBuffer(d, Float32Array.from(hadamardBase(Kf)), 'hk'),
            tmp,
            dummy,
            n,
            nIn,
            outLen,
            K: Kf,
            transform,
            transpose,
            accumulate: false,
            gscale: g,
          });
          expect(launches.length).toBe(path === 'workgroup' ? 1 : !transform || n / Kf <= 16 ? 2 : 3);
          await run(d, launches);
          const v = new Float32Array(n);
          for (let j = 0; j < nIn; j++) v[j] = x[j]! * pre[j]!;
          if (transform) hadamardRowsInPlace(v, 1, n, { transpose });
          const ref = Array.from({ length: outLen }, (_, i) => g * v[i]! * post[i]! + bias[i]!);
          // the same butterflies in f32 (the CPU mixes H_K in f64): ~1e-6 relative at n = 768
          expect(
            relErr(await readF32(d, out, outLen), ref),
            `n=${n} K=${Kf} T=${transpose} transform=${transform}`,
          ).toBeLessThan(1e-5);
        }
      }
    });

  it('the written-out H_K mix with one chunk of sums per invocation (summed while the column is read) equals the column held in registers, to the bit', async () => {
    // which form a mix takes depends on the workgroup: one chunk per invocation where a block of P values leaves
    // T = wg/P invocations per column, at least one per chunk of 8 sums. These (K, P) take the column form with 64
    // invocations and the one-chunk form with 256: 768 = 12·64 (T = 1 against 4, 2 chunks), 704 = 44·16 (T = 4
    // against 16, 6 chunks), 640 = 20·32 (T = 2 against 8, 3 chunks)
    const rng = new Rng(21);
    const dummy = storageBuffer(d, new Float32Array(4), 'dummy');
    const tmp = scratchBuffer(d, 1024 * 4, 'tmp');
    const sizes = [64, 256].map((vectorWorkgroup) => new Kernels(d, { vectorWorkgroup }));
    for (const n of [768, 704, 640])
      for (const transpose of [false, true]) {
        const K = hadamardFactor(n)!.K;
        const x = storageBuffer(d, randn(rng, n), 'x');
        const signs = storageBuffer(
          d,
          Float32Array.from({ length: n }, () => rng.rademacher()),
          'pre',
        );
        const ones = storageBuffer(d, new Float32Array(n).fill(1), 'post');
        const zeros = storageBuffer(d, new Float32Array(n), 'bias');
        const hk = storageBuffer(d, Float32Array.from(hadamardBase(K)), 'hk');
        const outs = [];
        for (const k of sizes) {
          const out = scratchBuffer(d, n * 4, 'out');
          const launches = k.hadamard({
            ...{ x, out, pre: signs, post: ones, bias: zeros, hk, tmp, dummy, n, nIn: n, outLen: n, K },
            ...{ transform: true, transpose, accumulate: false, gscale: 1 },
          });
          await run(d, launches);
          outs.push(Array.from(await readF32(d, out, n)));
        }
        expect(outs[1], `n=${n} K=${K} transpose=${transpose}`).toEqual(outs[0]);
      }
  });

  for (const path of ['workgroup', 'global memory'] as const)
    it(`RMSNorm and SwiGLU computed by the rotation's load (${path}) equal their own launch and then the rotation, to the bit`, async () => {
      const rng = new Rng(5);
      // global memory forced as in the Hadamard step test: chunks of 16, every chunk reducing the whole row
      const k = new Kernels(d, path === 'workgroup' ? {} : { maxLocalHadamard: 16 });
      const dummy = storageBuffer(d, new Float32Array(4), 'dummy');
      const rows = 3;
      for (const [nIn, n] of [
        [300, 320],
        [160, 160],
        [37, 40],
      ] as const) {
        const tmp = scratchBuffer(d, rows * n * 4, 'tmp');
        const Kf = hadamardFactor(n)!.K;
        const bufs = {
          pre: storageBuffer(
            d,
            Float32Array.from({ length: n }, () => rng.rademacher()),
            'pre',
          ),
          post: storageBuffer(
            d,
            Float32Array.from({ length: n }, () => rng.rademacher()),
            'post',
          ),
          bias: null,
          hk: storageBuffer(d, Float32Array.from(hadamardBase(Kf)), 'hk'),
          tmp,
          dummy,
          xStride: nIn,
          transform: true,
          transpose: false,
          accumulate: false,
        };
        const member = memberOf(n, { nIn, K: Kf });
        const xv = randn(rng, rows * nIn, 3);
        const x = storageBuffer(d, xv, 'x');
        // the RMSNorm's last row at RMS ≈ 1.1e38 (values 1e38 to 2e38: an f32 sum of squares overflows unless scaled, and the norm's factor 1/RMS is subnormal unless split; normScaleWgsl)
        const last = (rows - 1) * nIn;
        const xNorm = storageBuffer(
          d,
          xv.map((v, i) => (i >= last ? Math.sign(v) * 1e38 + v * 1e37 : v)),
          'x (last row huge)',
        );
        const aux = storageBuffer(d, randn(rng, rows * nIn), 'aux');
        const fused = scratchBuffer(d, rows * n * 4, 'fused');
        const apart = scratchBuffer(d, rows * n * 4, 'apart');
        for (const kind of ['rmsNorm', 'swiglu'] as const) {
          const input =
            kind === 'rmsNorm' ? ({ kind, weight: aux, eps: 1e-5 } as const) : ({ kind, up: aux } as const);
          const xk = kind === 'rmsNorm' ? xNorm : x;
          const launches = k.rotate({ ...bufs, x: xk, outs: [fused], members: [member], input });
          expect(launches.length).toBe(path === 'workgroup' ? 1 : n / Kf <= 16 ? 2 : 3);
          await run(d, launches, rows);
          // the launch the rotation replaces writes h, which the rotation then reads as it is
          const h = scratchBuffer(d, rows * nIn * 4, 'h');
          const first = kind === 'rmsNorm' ? k.rmsNorm(xk, aux, h, nIn, 1e-5) : k.swiglu(h, aux, nIn);
          if (kind === 'swiglu') {
            const enc = d.device.createCommandEncoder();
            enc.copyBufferToBuffer(x, 0, h, 0, rows * nIn * 4);
            d.device.queue.submit([enc.finish()]);
          }
          await run(d, [first, ...k.rotate({ ...bufs, x: h, outs: [apart], members: [member] })], rows);
          const got = await readF32(d, fused, rows * n);
          expect(Array.from(got), `${kind} nIn=${nIn}`).toEqual(
            Array.from(await readF32(d, apart, rows * n)),
          );
          // normed rows have RMS ≈ that of aux (≈ 1) before the orthogonal rotation, huge input or not
          const lastRow = got.slice((rows - 1) * n);
          if (kind === 'rmsNorm')
            expect(Math.hypot(...lastRow) / Math.sqrt(n), `nIn=${nIn}`).toBeGreaterThan(0.3);
        }
      }
    });

  for (const [lanes, vectorWorkgroup] of [
    [1, 256],
    [32, 256],
    [1, 64],
  ] as const)
    it(`input step in one launch (${lanes} lane(s) per row, one-workgroup kernels of ${vectorWorkgroup} invocations) equals the rotation and R̂'s kernel apart, to the bit: layers without R̂ and with R̂ over several workgroups, every R̂ codec, no input computation, RMSNorm, SwiGLU${lanes === 32 && vectorWorkgroup === 256 ? "; R̂'s code loads 16 or 4 at a time too (RVQ4)" : ''}`, async () => {
      const rng = new Rng(6);
      const rows = 2;
      // R̂ rows per layer (0: no lattice factors): 12 spans two 8-row blocks with 32 lanes, 300 two 256-row blocks
      // with one; n = 768 takes 3 mixed values per invocation (the H_K mix through registers) and an RMSNorm over
      // more than a workgroup's 256 values. K = 12 for both (192 = 12·16, 768 = 12·64): the mix is written out in
      // ~4K² terms, and with K = 40 each of these kernels took 2–3 s to compile on SwiftShader; the mix of every
      // order is checked in the Hadamard step tests, and 768 still takes both of its forms (one chunk per invocation
      // with 256 invocations, the column in registers with 64)
      const cases = [
        { n: 192, nIn: 180, ks: [12, 0, 9], inputs: ['none', 'rmsNorm'] },
        { n: 768, nIn: 720, ks: [300, 17], inputs: ['rmsNorm', 'swiglu'] },
      ] as const;
      const fused = new Kernels(d, { lanes, vectorWorkgroup });
      // the two-step form: with rotations declared too large for workgroup memory (global-memory rotations, the same
      // butterflies and mix), and with row tiles of 2 (the one-workgroup rotation, R̂'s kernel in its prefill form)
      const apart = new Kernels(d, { lanes, maxLocalHadamard: 16, vectorWorkgroup });
      // R̂'s code loads 16 and 4 at a time (the first batch before the rotation): the same sums in the same order;
      // with 32 lanes and an RVQ4 R̂ only (both planes batched; each form compiles its own kernels, slow on a CPU)
      const batched = lanes === 32 && vectorWorkgroup === 256;
      const batch16 = new Kernels(d, { lanes, vectorWorkgroup, codeBatch: 16 });
      const batch4 = new Kernels(d, { lanes, vectorWorkgroup, codeBatch: 4 });
      const dummy = storageBuffer(d, new Float32Array(4), 'dummy');
      const tables = uniformWords(d, e8pTablesUniform(e8pSourcePairs(), e81bCodebook()), 'tables');
      const sources = storageBuffer(d, e8pSourcePairs(), 'src');
      const e81b = storageBuffer(d, e81bCodebook(), 'e81b');
      for (const { n, nIn, ks, inputs } of cases) {
        const J = ks.length;
        const Kf = hadamardFactor(n)!.K;
        const G = n / 8;
        // the global-memory rotation, per layer: with P = 16 (n = 192) a chunk of 16 per block and the mix; with
        // P = 64 (n = 768) one more launch of butterflies
        const forms = [
          { k: fused, tile: 1, launches: 1 },
          { k: apart, tile: 1, launches: J * (n / Kf <= 16 ? 2 : 3) + 1 },
          { k: fused, tile: 2, launches: 2 },
          { k: batch16, tile: 1, launches: 1 },
          { k: batch4, tile: 1, launches: 1 },
        ];
        const formsOf = (codec: string) => (batched && codec === 'rvq4' ? forms : forms.slice(0, 3));
        const ones = storageBuffer(d, new Float32Array(n).fill(1), 'ones');
        const x = storageBuffer(d, randn(rng, rows * nIn, 2), 'x');
        const aux = storageBuffer(d, randn(rng, rows * nIn), 'aux');
        const pre = storageBuffer(
          d,
          Float32Array.from({ length: J * n }, () => rng.rademacher()),
          'pre',
        );
        const hk = storageBuffer(d, Float32Array.from(hadamardBase(Kf)), 'hk');
        const kTotal = ks.reduce<number>((a, b) => a + b, 0);
        for (const codec of ['e8p12', 'rvq4', 'rvq3'] as const)
          for (const kind of inputs) {
            const input =
              kind === 'rmsNorm'
                ? ({ kind, weight: aux, eps: 1e-5 } as const)
                : kind === 'swiglu'
                  ? ({ kind, up: aux } as const)
                  : undefined;
            // R̂'s codes of the layers back to back in both planes
            const codes = storageBuffer(
              d,
              Uint16Array.from({ length: kTotal * G }, () => rng.int(65536)),
              'r1',
            );
            const codes2 =
              codec === 'e8p12'
                ? null
                : storageBuffer(
                    d,
                    codec === 'rvq4'
                      ? Uint16Array.from({ length: kTotal * G }, () => rng.int(65536))
                      : Uint8Array.from({ length: kTotal * G }, () => rng.int(256)),
                    'r2',
                  );
            let at = 0;
            const layers = ks.map((k, w) => {
              const r = k
                ? {
                    rows: k,
                    qscale: 0.3 + 0.1 * w,
                    codeByte: at * G * 2,
                    code2Byte: at * G * (codec === 'rvq3' ? 1 : 2),
                  }
                : null;
              at += k;
              return { preOff: w * n, r };
            });
            const outs = forms.map(() => ({
              rot: scratchBuffer(d, rows * J * n * 4, 'rot'),
              z: scratchBuffer(d, rows * kTotal * 4, 'z'),
            }));
            for (const [j, { k, tile, launches: count }] of formsOf(codec).entries()) {
              const launches = k.projectInput({
                tile,
                x,
                xStride: nIn,
                ...(input ? { input } : {}),
                pre,
                hk,
                transform: true,
                n,
                nIn,
                K: Kf,
                layers,
                rot: outs[j]!.rot,
                codes: {
                  codec,
                  codes,
                  codes2,
                  resScale: codec === 'rvq3' ? RVQ3_RESID_SCALE : RVQ4_RESID_SCALE,
                  e81b: codec === 'rvq3' ? e81b : null,
                  sources,
                  tables,
                  z: outs[j]!.z,
                },
                ones,
                tmp: scratchBuffer(d, rows * n * 4, 'tmp'),
                dummy,
              });
              expect(launches.length).toBe(count);
              await run(d, launches, rows);
            }
            const z = await readF32(d, outs[0]!.z, rows * kTotal);
            expect(z.every((v) => Number.isFinite(v) && v !== 0)).toBe(true);
            for (const j of formsOf(codec).keys()) {
              if (j === 0) continue;
              const what = `n=${n} ${codec} ${kind} form ${j}`;
              expect(Array.from(await readF32(d, outs[0]!.rot, rows * J * n)), what).toEqual(
                Array.from(await readF32(d, outs[j]!.rot, rows * J * n)),
              );
              expect(Array.from(z), what).toEqual(Array.from(await readF32(d, outs[j]!.z, rows * kTotal)));
            }
          }
      }
    });

  /**
   * A q/k/v group's output rotation (rotated lengths `ns`, output widths of H and KV heads of `hd`) over `rows` random
   * rows, with random SV multipliers and biases, and the RoPE options at position `pos` of a cache of `cap`.
   */
  const qkvRotation = (
    rng: Rng,
    { H, KV, hd, ns }: { H: number; KV: number; hd: number; ns: number[] },
    transform: boolean,
    cap: number,
    pos: number,
    rows: number,
  ) => {
    const kw = KV * hd;
    const widths = [H * hd, kw, kw];
    const off = [0, ns[0]!, ns[0]! + ns[1]!];
    const total = ns[0]! + ns[1]! + ns[2]!;
    const x = storageBuffer(d, randn(rng, rows * total), 'rotOut');
    const post = storageBuffer(d, randn(rng, total), 'sv');
    const bias = storageBuffer(d, randn(rng, total), 'bias');
    const Ks = transform ? [...new Set(ns.map((n) => hadamardFactor(n)!.K))] : [1];
    const hk = storageBuffer(d, Float32Array.from(Ks.flatMap((Kf) => Array.from(hadamardBase(Kf)))), 'hk');
    const hkOff = (Kf: number) => Ks.slice(0, Ks.indexOf(Kf)).reduce((s, a) => s + a * a, 0);
    const cs = new Float32Array(cap * (hd / 2) * 2);
    for (let i = 0; i < cs.length; i++) cs[i] = Math.sin(0.37 * i + 0.1);
    const rope = {
      step: stepBuf(pos, pos + rows),
      cs: storageBuffer(d, cs, 'cs'),
      heads: H,
      kvHeads: KV,
      hd,
    };
    const ones = storageBuffer(d, new Float32Array(total).fill(1), 'ones');
    const members = ns.map((n, w) => {
      const Kf = transform ? hadamardFactor(n)!.K : 1;
      return {
        n,
        nIn: n,
        outLen: widths[w]!,
        K: Kf,
        gscale: 0.8 + 0.1 * w,
        xOff: off[w]!,
        preOff: 0,
        postOff: off[w]!,
        biasOff: off[w]!,
        hkOff: hkOff(Kf),
        outOff: 0,
        outStride: widths[w]!,
        slot: w,
      };
    });
    const base = { x, xStride: total, post, bias, hk, dummy: ones, transform, transpose: true };
    return { kw, widths, total, rope, ones, members, base };
  };

  it("q, k and v's output rotations with RoPE and the KV store in one launch equal the rotation and ropeKv apart, to the bit (GQA, biases, 2 rows at positions 3 and 4; with and without the transform; one and several values per invocation)", async () => {
    const rng = new Rng(8);
    const [cap, pos, rows] = [6, 3, 2];
    const cases = [
      // padded rotated lengths (K·2^p) above the output widths, as a layer's m_p can be
      { H: 4, KV: 2, hd: 16, ns: [80, 40, 40] },
      // q: 576 values, 3 per invocation of 256
      { H: 8, KV: 2, hd: 64, ns: [576, 160, 160] },
    ];
    const k = K();
    for (const shape of cases)
      for (const transform of [true, false]) {
        const { H, hd } = shape;
        const { kw, widths, total, rope, ones, members, base } = qkvRotation(
          rng,
          shape,
          transform,
          cap,
          pos,
          rows,
        );
        // one launch; the rotation in workgroup memory then ropeKv; the rotation in global memory then ropeKv
        const forms = ['fused', 'workgroup', 'global'] as const;
        const results = [];
        for (const form of forms) {
          const outs = widths.map((w) => scratchBuffer(d, rows * w * 4, 'out'));
          const ck = storageBuffer(d, new Float32Array(cap * kw), 'ck');
          const cv = storageBuffer(d, new Float32Array(cap * kw), 'cv');
          const tmp = scratchBuffer(d, rows * total * 4, 'tmp');
          const opts = { ...base, tmp, outs, accumulate: false, members };
          const launches =
            form === 'fused'
              ? k.rotateRopeKv({ ...opts, ones }, { ...rope, ck, cv })
              : form === 'workgroup'
                ? [
                    ...k.rotate({ ...opts, pre: ones }),
                    k.ropeKv({ ...rope, ck, cv, q: outs[0]!, k: outs[1]!, v: outs[2]! }),
                  ]
                : new Kernels(d, { maxLocalHadamard: 16 }).rotateRopeKv(
                    { ...opts, ones },
                    { ...rope, ck, cv },
                  );
          // global memory: a chunk of 16 per 2^p block (P ≤ 16 here) and the mix per layer, then ropeKv
          expect(launches.length, form).toBe(form === 'fused' ? 1 : form === 'workgroup' ? 2 : 3 * 2 + 1);
          await run(d, launches, rows);
          results.push({
            q: Array.from(await readF32(d, outs[0]!, rows * H * hd)),
            ck: await readF32(d, ck, cap * kw),
            cv: Array.from(await readF32(d, cv, cap * kw)),
          });
        }
        const what = `H=${H} hd=${hd} transform=${transform}`;
        for (const j of [1, 2]) {
          expect(results[0]!.q, `${what} ${forms[j]}`).toEqual(results[j]!.q);
          expect(Array.from(results[0]!.ck), `${what} ${forms[j]}`).toEqual(Array.from(results[j]!.ck));
          expect(results[0]!.cv, `${what} ${forms[j]}`).toEqual(results[j]!.cv);
        }
        // the rows at positions 3 and 4 were written, the others left zero
        for (let p = 0; p < cap; p++) {
          const row = results[0]!.ck.subarray(p * kw, p * kw + kw);
          expect(row.some((v) => v !== 0)).toBe(p === pos || p === pos + 1);
        }
      }
  });

  it("a residual branch's output rotation with the RMSNorm after it in one launch equals the rotation and rmsNorm apart, to the bit (2 rows; biased and not, with and without the transform, padded n, multipliers before and after and offsets into every array; the global-memory fallback); other shapes are refused", async () => {
    const rng = new Rng(12);
    const rows = 2;
    const eps = 1e-5;
    // d values of the residual stream from a rotation of n ≥ d values (a padded m_p), 1 and 3 per invocation
    for (const [n, dOut] of [
      [96, 90],
      [640, 600],
    ] as const)
      for (const transform of [true, false])
        for (const biased of [true, false]) {
          const Kf = transform ? hadamardFactor(n)!.K : 1;
          // the member's rows start 8 values into rows of n + 8; pre, post and bias at offsets 4, 12 and 20
          const member = memberOf(n, {
            outLen: dOut,
            K: Kf,
            gscale: 0.9,
            xOff: 8,
            preOff: 4,
            postOff: 12,
            biasOff: biased ? 20 : null,
            outStride: dOut,
          });
          const ones = storageBuffer(d, new Float32Array(n + 32).fill(1), 'ones');
          // the last row's residual at RMS ≈ 1e38 (values 1e38 to 2e38: an f32 sum of squares overflows unless scaled, and the norm's factor 1/RMS is subnormal unless split; normScaleWgsl)
          const h0 = randn(rng, rows * dOut).map((v, i) =>
            i >= (rows - 1) * dOut ? Math.sign(v) * 1e38 + v * 1e37 : v,
          );
          const opts = {
            x: storageBuffer(d, randn(rng, rows * (n + 8)), 'y'),
            xStride: n + 8,
            pre: storageBuffer(d, randn(rng, n + 4), 'pre'),
            post: storageBuffer(d, randn(rng, n + 12), 'sv'),
            bias: biased ? storageBuffer(d, randn(rng, n + 20), 'bias') : null,
            hk: storageBuffer(d, Float32Array.from(hadamardBase(Kf)), 'hk'),
            tmp: scratchBuffer(d, rows * n * 4, 'tmp'),
            dummy: ones,
            transform,
            transpose: true,
            accumulate: true,
            members: [member],
          };
          const weight = storageBuffer(d, randn(rng, dOut), 'w');
          const forms = ['fused', 'apart', 'global'] as const;
          const results = [];
          for (const form of forms) {
            const res = storageBuffer(d, h0, 'h');
            const out = scratchBuffer(d, rows * dOut * 4, 'normed');
            const o = { ...opts, outs: [res] };
            const launches =
              form === 'fused'
                ? K().rotateNorm(o, { weight, eps, out })
                : form === 'apart'
                  ? [...K().rotate(o), K().rmsNorm(res, weight, out, dOut, eps)]
                  : new Kernels(d, { maxLocalHadamard: 16 }).rotateNorm(o, { weight, eps, out });
            if (form === 'global') expect(launches.length).toBeGreaterThan(1);
            else expect(launches.length, form).toBe(form === 'fused' ? 1 : 2);
            await run(d, launches, rows);
            results.push({
              h: Array.from(await readF32(d, res, rows * dOut)),
              normed: Array.from(await readF32(d, out, rows * dOut)),
            });
          }
          const what = `n=${n} transform=${transform} biased=${biased}`;
          for (const j of [1, 2]) expect(results[0], `${what} ${forms[j]}`).toEqual(results[j]);
          // the residual moved, and the normed rows have mean square ≈ mean(w²)-weighted 1: check one row directly
          expect(results[0]!.h.some((v, i) => v !== h0[i])).toBe(true);
          const w = await readF32(d, weight, dOut);
          for (const row of [0, rows - 1]) {
            const hRow = results[0]!.h.slice(row * dOut, (row + 1) * dOut);
            const inv = 1 / Math.sqrt(hRow.reduce((a, v) => a + v * v, 0) / dOut + eps);
            // f32 sum of squares over ≤ 600 values in another order: ~1e-6 relative
            expect(
              relErr(
                results[0]!.normed.slice(row * dOut, (row + 1) * dOut),
                hRow.map((v, i) => v * inv * w[i]!),
              ),
              `${what} row ${row}`,
            ).toBeLessThan(1e-5);
          }
        }
    const one = storageBuffer(d, new Float32Array(64).fill(1), 'one');
    const member = memberOf(16);
    const base = {
      x: one,
      xStride: 16,
      pre: one,
      post: one,
      bias: null,
      hk: one,
      tmp: one,
      dummy: one,
      transform: false,
      transpose: true,
      accumulate: true,
      outs: [one],
      members: [member],
    };
    const norm = { weight: one, eps, out: one };
    expect(() => K().rotateNorm(base, norm)).not.toThrow();
    for (const bad of [
      { accumulate: false },
      { members: [member, member] },
      { members: [{ ...member, outStride: 32 }] },
      { members: [{ ...member, outOff: 8 }] },
      { members: [{ ...member, slot: 1 }], outs: [one, one] },
      { outs: [one, one] },
      { input: { kind: 'rmsNorm' as const, weight: one, eps } },
    ])
      expect(() => K().rotateNorm({ ...base, ...bad }, norm)).toThrow(/rotateNorm/);
    expect(() => K().rotateNorm({ ...base, members: [{ ...member, biasOff: 0 }] }, norm)).toThrow(/bias/);
  });

  it("q, k and v's output rotations, RoPE, the KV store and attention in one launch (one row) equal rotateRopeKv and attention apart, to the bit (GQA, biases, earlier cache rows, positions 0, 3 and 300, with and without the transform); more rows are refused", async () => {
    const rng = new Rng(9);
    // (position 300: each invocation scores two positions)
    const cases = [
      { H: 4, KV: 2, hd: 16, ns: [80, 40, 40], cap: 6, pos: 0 },
      { H: 4, KV: 2, hd: 16, ns: [80, 40, 40], cap: 6, pos: 3 },
      { H: 4, KV: 2, hd: 16, ns: [80, 40, 40], cap: 304, pos: 300 },
      { H: 8, KV: 2, hd: 64, ns: [576, 160, 160], cap: 6, pos: 3 },
    ];
    const k = K();
    for (const { cap, pos, ...shape } of cases)
      for (const transform of [true, false]) {
        const { H, hd } = shape;
        const { kw, widths, rope, ones, members, base } = qkvRotation(rng, shape, transform, cap, pos, 1);
        // the cache holds earlier positions
        const earlier = randn(rng, cap * kw);
        const earlierV = randn(rng, cap * kw);
        const results = [];
        for (const together of [true, false]) {
          const outs = widths.map((w) => scratchBuffer(d, w * 4, 'out'));
          const ck = storageBuffer(d, earlier, 'ck');
          const cv = storageBuffer(d, earlierV, 'cv');
          const scores = scratchBuffer(d, H * cap * 4, 'scores');
          const att = scratchBuffer(d, H * hd * 4, 'att');
          const tmp = scratchBuffer(d, 4 * 1024, 'tmp');
          const opts = { ...base, tmp, outs, accumulate: false, members, ones };
          const attention = { scores, out: att, capacity: cap };
          const launches = together
            ? k.rotateRopeKv(opts, { ...rope, ck, cv, attention })
            : [
                ...k.rotateRopeKv(opts, { ...rope, ck, cv }),
                k.attention({ ...rope, ck, cv, q: outs[0]!, scores, out: att, capacity: cap }),
              ];
          // one launch where the device allows its 9 storage buffers
          expect(launches.length).toBe(together && d.maxStorageBuffers >= 9 ? 1 : 2);
          if (together && launches.length === 1)
            expect(() => encodeDispatches(d.device.createCommandEncoder(), launches, 2)).toThrow(
              /one activation row/,
            );
          await run(d, launches, 1);
          results.push({
            att: Array.from(await readF32(d, att, H * hd)),
            ck: Array.from(await readF32(d, ck, cap * kw)),
            cv: Array.from(await readF32(d, cv, cap * kw)),
          });
        }
        const what = `H=${H} hd=${hd} pos=${pos} transform=${transform}`;
        expect(results[0]!.att, what).toEqual(results[1]!.att);
        expect(results[0]!.ck, what).toEqual(results[1]!.ck);
        expect(results[0]!.cv, what).toEqual(results[1]!.cv);
        expect(results[0]!.att.some((v) => v !== 0)).toBe(true);
      }
  });

  it('e8pMatvec rejects activation offsets that are not multiples of 8 (they are read as 16-byte vectors)', () => {
    const k = K();
    const base = e8pStub(storageBuffer(d, new Float32Array(64), 'b'), 16);
    expect(() => k.e8pMatvec({ ...base, segments: [{ rows: 8, qscale: 1 }] })).not.toThrow();
    for (const bad of [
      { xRow: 20, segments: [{ rows: 8, qscale: 1 }] },
      { segments: [{ rows: 8, qscale: 1, x: 4 }] },
    ])
      expect(() => k.e8pMatvec({ ...base, ...bad })).toThrow(/not a multiple of 8/);
  });

  it("the f32 form's rows per lane: one by default, up to rowsPerLane as every segment's rows allow (32 lanes, one activation row; none with one lane or row tiles)", () => {
    const b = storageBuffer(d, new Float32Array(64), 'b');
    const shape = (k: Kernels, rows: number[], tile = 1) => {
      const l = k.e8pMatvec({ ...e8pStub(b, 16), tile, segments: rows.map((r) => ({ rows: r, qscale: 1 })) });
      expect(l.f16Products).toBeUndefined();
      expect(l.label.includes('rows/lane')).toBe((l.rowsPerLane ?? 1) > 1);
      return [l.rowsPerLane, l.workgroups];
    };
    expect(shape(new Kernels(d, { lanes: 32 }), [8192])).toEqual([1, 1024]);
    const k4 = new Kernels(d, { lanes: 32, rowsPerLane: 4 });
    expect(shape(k4, [8192])).toEqual([4, 256]);
    expect(shape(k4, [64, 12])).toEqual([4, 3]);
    expect(shape(k4, [64, 10])).toEqual([2, 5]);
    expect(shape(k4, [64, 9])).toEqual([1, 10]);
    expect(shape(new Kernels(d, { lanes: 32, rowsPerLane: 2 }), [8192])).toEqual([2, 512]);
    expect(shape(k4, [64], 8)).toEqual([undefined, 8]);
    expect(shape(new Kernels(d, { lanes: 1, rowsPerLane: 4 }), [64])).toEqual([undefined, 1]);
  });

  it('RMSNorm (64 and 256 invocations; RMS from 1e-30 to 1e30, one value of 1e36 among small ones, values up to 3e38), SwiGLU and argmax (first index on ties)', async () => {
    const rng = new Rng(4);
    const k = K();
    const n = 300;
    // an RMS past ≈ 1.8e19/√n overflows an f32 sum of squares (the norm came out 0 before the scaled sums); 1e-30
    // stays unscaled (eps dominates); the single 1e36 puts one invocation's exponent above the others'
    const spiked = randn(rng, n);
    spiked[123] = 1e36;
    // up to f32's largest: 2^-e·r alone is subnormal from 2^126 (it came out 0), and ldexp by 2^-127 may be 0
    const nearMax = randn(rng, n);
    const top = Math.max(...nearMax.map(Math.abs));
    nearMax.forEach((v, i) => (nearMax[i] = (v / top) * 3e38));
    const inputs: [string, Float32Array][] = [
      ...[3, 1e-30, 1e21, 1e30].map((rms): [string, Float32Array] => [`RMS ${rms}`, randn(rng, n, rms)]),
      ['one 1e36', spiked],
      ['largest 3e38', nearMax],
      ['all ±3e38', Float32Array.from({ length: n }, (_, i) => (i % 2 ? 3e38 : -3e38))],
    ];
    for (const vectorWorkgroup of [64, 256])
      for (const [what, x] of inputs) {
        const w = randn(rng, n);
        const out = scratchBuffer(d, n * 4, 'out');
        const norm = new Kernels(d, { vectorWorkgroup });
        await run(d, [norm.rmsNorm(storageBuffer(d, x, 'x'), storageBuffer(d, w, 'w'), out, n, 1e-5)]);
        let ss = 0;
        for (const v of x) ss += v * v;
        const inv = 1 / Math.sqrt(ss / n + 1e-5);
        // f32 sums of 300 squares (relative rounding ~n·2^-24 worst case, ~1e-6 typical) against float64
        expect(
          relErr(
            await readF32(d, out, n),
            Array.from(x, (v, i) => v * inv * w[i]!),
          ),
          `${vectorWorkgroup} invocations, ${what}`,
        ).toBeLessThan(1e-5);
      }

    const g = randn(rng, n, 4);
    const u = randn(rng, n);
    const gb = storageBuffer(d, g, 'g');
    await run(d, [k.swiglu(gb, storageBuffer(d, u, 'u'), n)]);
    const ref = Array.from(g, (gi, i) => (gi / (1 + Math.exp(-gi))) * u[i]!);
    expect(relErr(await readF32(d, gb, n), ref)).toBeLessThan(1e-5);

    for (const [len, at, dup] of [
      [2048, 1500, 1700],
      [7, 0, 6],
      [1000, 999, -1],
    ] as const) {
      const v = randn(rng, len);
      v[at] = 10;
      if (dup >= 0) v[dup] = 10;
      const o = scratchBuffer(d, 4, 'o');
      await run(d, [k.argmax(storageBuffer(d, v, 'v'), o, len)]);
      expect(new Uint32Array(await readBuffer(d, o, 4))[0]).toBe(at);
    }
    // a NaN anywhere (quiet or signalling, either sign) sets ARGMAX_NAN_FLAG; ±Infinity does not
    const bitsOf = (u: number) => new Float32Array(Uint32Array.of(u).buffer)[0]!;
    for (const [bad, flagged] of [
      [NaN, true],
      [bitsOf(0xffc00001), true],
      [bitsOf(0x7f800001), true],
      [Infinity, false],
      [-Infinity, false],
    ] as const) {
      const v = randn(rng, 1000);
      v[100] = 10;
      v[777] = bad;
      const o = scratchBuffer(d, 4, 'o');
      await run(d, [k.argmax(storageBuffer(d, v, 'v'), o, 1000)]);
      const got = new Uint32Array(await readBuffer(d, o, 4))[0]!;
      expect((got & ARGMAX_NAN_FLAG) !== 0, String(bad)).toBe(flagged);
      if (bad === -Infinity) expect(got).toBe(100);
      if (bad === Infinity) expect(got).toBe(777);
    }
  });

  it("top-k (the sampler's candidates): the first k in rank order of the tokens not masked, a NaN flagged, the masked tokens' logits", async () => {
    const rng = new Rng(21);
    /** Level by level as WebGpuModel records it (levels for TOPK_MAX, counts for k), then read back. */
    const gpuTopK = async (x: Float32Array, k: number, seen: number[]) => {
      const V = x.length;
      const kern = K();
      const blocks = topkLevelBlocks(V);
      const params = topkParams(V, k, seen.length);
      const mask = new Uint32Array(Math.ceil(V / 32));
      for (const t of seen) mask[t >> 5]! |= 1 << (t & 31);
      const pairs = [0, 1].map((i) => scratchBuffer(d, blocks[0]! * TOPK_MAX * 8, `pairs ${i}`));
      const flags = storageBuffer(d, new Uint32Array(4), 'flags');
      const xb = storageBuffer(d, x, 'logits');
      const out = scratchBuffer(d, (1 + 2 * k + seen.length) * 4, 'out');
      const pb = uniformWords(d, params, 'topk params');
      const list = blocks.map((b, level) =>
        level === 0
          ? kern.topkLevel({
              params: pb,
              level,
              blocks: b,
              out: pairs[0]!,
              x: xb,
              mask: storageBuffer(d, mask, 'mask'),
              flags,
            })
          : kern.topkLevel({
              params: pb,
              level,
              blocks: b,
              out: pairs[level % 2]!,
              input: pairs[(level + 1) % 2]!,
            }),
      );
      list.push(
        kern.topkGather({
          params: pb,
          fin: pairs[(blocks.length - 1) % 2]!,
          seen: storageBuffer(d, Uint32Array.from(seen.length ? seen : [0]), 'seen'),
          x: xb,
          flags,
          out,
        }),
      );
      await run(d, list);
      return new Uint32Array(await readBuffer(d, out, (1 + 2 * k + seen.length) * 4));
    };
    const bits = (x: Float32Array) => new Uint32Array(x.buffer);
    // [V, k, masked tokens]: one level or several (33 000: three), fewer tokens left than k (130 − 5 < 128)
    for (const [V, k, masked] of [
      [1000, 1, 0],
      [1024, 40, 30],
      [5000, TOPK_MAX, 300],
      [33000, 40, 10],
      [130, TOPK_MAX, 5],
    ] as const) {
      // many ties (a coarse grid), −0 beside 0, ±Infinity
      const x = Float32Array.from({ length: V }, () =>
        rng.uniform() < 0.5 ? Math.round(rng.normal() * 2) / 2 : rng.normal(),
      );
      for (const [i, v] of [
        [3, -0],
        [V - 1, Infinity],
        [V >> 1, -Infinity],
        [V >> 2, Infinity],
      ] as const)
        x[i] = v;
      const seen = [...new Set(Array.from({ length: masked }, () => rng.int(V)))];
      const got = await gpuTopK(x, k, seen);
      const want = [...x.keys()]
        .filter((i) => !seen.includes(i))
        .sort((a, b) => (x[a]! > x[b]! ? -1 : x[a]! < x[b]! ? 1 : a - b))
        .slice(0, k);
      while (want.length < k) want.push(0xffffffff);
      const label = `V ${V}, k ${k}`;
      expect(got[0], label).toBe(0);
      expect(Array.from(got.subarray(1, 1 + k)), label).toEqual(want);
      expect(Array.from(got.subarray(1 + k, 1 + 2 * k)), label).toEqual(want.map((i) => bits(x)[i] ?? 0));
      expect(Array.from(got.subarray(1 + 2 * k)), label).toEqual(seen.map((i) => bits(x)[i]));
    }
    // a NaN, even of a masked token, sets the flag
    const x = randn(rng, 3000);
    x[2500] = NaN;
    expect((await gpuTopK(x, 5, [2500]))[0]).toBe(1);
  });

  it('pipelines are compiled once per device: Kernels on the same device share the pipeline of the same WGSL, not of other WGSL, and a second device compiles its own', async () => {
    const x = storageBuffer(d, new Float32Array(64).fill(1), 'x');
    const w = storageBuffer(d, new Float32Array(64).fill(2), 'w');
    const out = scratchBuffer(d, 64 * 4, 'out');
    const norm = (k: Kernels) => k.rmsNorm(x, w, out, 64, 1e-5);
    const first = new Kernels(d, { vectorWorkgroup: 64 });
    const a = norm(first);
    first.dispose(); // releases its uniforms, not the device's pipelines
    const b = norm(new Kernels(d, { vectorWorkgroup: 64 }));
    expect(b.kernel).toBe(a.kernel);
    expect(b.bindGroup).not.toBe(a.bindGroup); // each launch binds its own buffers
    // another WGSL (a workgroup of 256 invocations) is another pipeline
    expect(norm(new Kernels(d, { vectorWorkgroup: 256 })).kernel).not.toBe(a.kernel);
    await run(d, [b]);
    // f32 rounding of a sum of squares and an inverse square root
    expect(relErr(await readF32(d, out, 64), Array(64).fill(2 / Math.sqrt(1 + 1e-5)))).toBeLessThan(1e-6);
    const own = await ownTestDevice();
    try {
      const ox = storageBuffer(own!, new Float32Array(64).fill(1), 'x');
      const launch = new Kernels(own!, { vectorWorkgroup: 64 }).rmsNorm(ox, ox, ox, 64, 1e-5);
      expect(launch.kernel).not.toBe(a.kernel);
    } finally {
      own!.dispose();
    }
  });

  it("Kernels.compile compiles the pipelines of the launches built so far, once per WGSL: in the background (createComputePipelineAsync) or one after another, as the device's asyncCompile says; they then run without another compile; a kernel whose WGSL does not compile is E_DEVICE naming it, either way", async () => {
    for (const asyncCompile of [true, false]) {
      const own = await ownTestDevice(); // its own pipelines: none compiled yet
      const d = { ...own!, asyncCompile };
      const calls = spyOnCompiles(d.device);
      try {
        const k = new Kernels(d, { vectorWorkgroup: 64 });
        const x = storageBuffer(d, new Float32Array(64).fill(3), 'x');
        const w = storageBuffer(d, new Float32Array(64).fill(2), 'w');
        const g = scratchBuffer(d, 64 * 4, 'g');
        const out = scratchBuffer(d, 64 * 4, 'out');
        // two launches of one kernel and one of another: two pipelines
        const launches = [k.rmsNorm(x, w, g, 64, 0), k.rmsNorm(g, w, out, 64, 0), k.swiglu(out, x, 64)];
        expect(calls).toEqual({ sync: 0, async: 0 }); // nothing compiled while recording
        await Promise.all([k.compile(), k.compile()]);
        const compiled = asyncCompile ? { sync: 0, async: 2 } : { sync: 2, async: 0 };
        expect(calls).toEqual(compiled);
        await run(d, launches);
        expect(calls).toEqual(compiled);
        // RMSNorm of 3s with weights 2 is 2s, of 2s again; then silu(2)·3 (f32 rounding of exp and a division)
        const silu2 = 2 / (1 + Math.exp(-2));
        expect(relErr(await readF32(d, out, 64), Array(64).fill(silu2 * 3))).toBeLessThan(1e-6);
        // a pipeline used before compile() compiles on first use, synchronously, once
        const late = new Kernels(d).argmax(x, out, 64);
        await run(d, [late, late]);
        expect(calls).toEqual({ ...compiled, sync: compiled.sync + 1 });

        const bad = '@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }';
        d.device.pushErrorScope('validation'); // the module's own error, reported again by the compile
        const broken = new KernelPipeline(d.device, 'broken kernel', bad);
        const e = await broken.compile(asyncCompile).catch((x: unknown) => x);
        await d.device.popErrorScope();
        expect(e).toMatchObject({
          code: 'E_DEVICE',
          message: expect.stringContaining('broken kernel: the kernel failed to compile'),
        });
      } finally {
        own!.dispose();
      }
    }
  });

  it('NLL per row (batched) against a float64 log-sum-exp: vocabularies not a multiple of the workgroup, and logits whose exponentials overflow f32 without the maximum subtracted', async () => {
    const rng = new Rng(11);
    const k = K();
    for (const [n, rows, spread] of [
      [3001, 3, 1],
      [30, 2, 4],
      [700, 4, 120],
    ] as const) {
      const x = randn(rng, n * rows, spread);
      const targets = Uint32Array.from({ length: rows }, (_, r) => (r * 977 + 5) % n);
      const out = scratchBuffer(d, rows * 4, 'nll');
      const t = storageBuffer(d, targets, 'targets');
      await run(d, [k.nll(storageBuffer(d, x, 'x'), t, out, n)], rows);
      const got = await readF32(d, out, rows);
      for (let r = 0; r < rows; r++) {
        let mx = -Infinity;
        for (let j = 0; j < n; j++) mx = Math.max(mx, x[r * n + j]!);
        let se = 0;
        for (let j = 0; j < n; j++) se += Math.exp(x[r * n + j]! - mx);
        const want = Math.log(se) + mx - x[r * n + targets[r]!]!;
        // f32: the exponentials (a few ulps each) summed ≤ 12 per invocation and then in a tree of 8 levels put
        // ~20 ulps (1.2e-6) on the sum, so ~1.2e-6 on its log; adding the maximum and subtracting the target's logit
        // round at 2^-24 of operands up to ~500 (spread 120); 4 such roundings plus 4e-6 bound both
        const scale = Math.abs(mx) + Math.abs(x[r * n + targets[r]!]!) + Math.log(se);
        expect(Math.abs(got[r]! - want)).toBeLessThan(4 * 2 ** -24 * scale + 4e-6);
        expect(Number.isFinite(got[r]!)).toBe(true);
      }
    }
  });

  it('RoPE (rotate-half) of q and k with the KV store in one launch, and GQA attention at position 4, against a direct evaluation', async () => {
    const rng = new Rng(5);
    const k = K();
    const [H, KV, hd, cap, pos] = [4, 2, 8, 6, 4];
    const kw = KV * hd;
    const half = hd / 2;
    const cs = new Float32Array(cap * half * 2);
    for (let p = 0; p < cap; p++)
      for (let i = 0; i < half; i++) {
        const a = p * 10000 ** (-(2 * i) / hd);
        cs[(p * half + i) * 2] = Math.cos(a);
        cs[(p * half + i) * 2 + 1] = Math.sin(a);
      }
    const q = randn(rng, H * hd);
    const kk = randn(rng, kw);
    const vv = randn(rng, kw);
    const cacheK = randn(rng, cap * kw);
    const cacheV = randn(rng, cap * kw);
    const step = stepBuf(pos, pos + 1);
    const csb = storageBuffer(d, cs, 'cs');
    const [qb, ckb, cvb] = [
      storageBuffer(d, q, 'q'),
      storageBuffer(d, cacheK, 'ck'),
      storageBuffer(d, cacheV, 'cv'),
    ];
    const out = scratchBuffer(d, H * hd * 4, 'att');
    // attention over the cache after the store, with `kernels`' workgroup size
    const attend = (kernels: Kernels, into: GPUBuffer) =>
      kernels.attention({
        step,
        q: qb,
        ck: ckb,
        cv: cvb,
        scores: scratchBuffer(d, H * cap * 4, 's'),
        out: into,
        heads: H,
        kvHeads: KV,
        hd,
        capacity: cap,
      });
    await run(d, [
      k.ropeKv({
        step,
        cs: csb,
        q: qb,
        k: storageBuffer(d, kk, 'k'),
        v: storageBuffer(d, vv, 'v'),
        ck: ckb,
        cv: cvb,
        heads: H,
        kvHeads: KV,
        hd,
      }),
      attend(k, out),
    ]);
    const rope = (v: Float32Array, heads: number) => {
      const r = v.slice();
      for (let h = 0; h < heads; h++)
        for (let i = 0; i < half; i++) {
          const a = pos * 10000 ** (-(2 * i) / hd);
          const [x1, x2] = [v[h * hd + i]!, v[h * hd + i + half]!];
          r[h * hd + i] = x1 * Math.cos(a) - x2 * Math.sin(a);
          r[h * hd + i + half] = x2 * Math.cos(a) + x1 * Math.sin(a);
        }
      return r;
    };
    const qr = rope(q, H);
    const K2 = cacheK.slice();
    K2.set(rope(kk, KV), pos * kw);
    const V2 = cacheV.slice();
    V2.set(vv, pos * kw);
    expect(relErr(await readF32(d, qb, H * hd), qr)).toBeLessThan(1e-6);
    expect(relErr(await readF32(d, ckb, cap * kw), K2)).toBeLessThan(1e-6);
    expect(Array.from(await readF32(d, cvb, cap * kw))).toEqual(Array.from(V2));
    const ref = new Float64Array(H * hd);
    for (let h = 0; h < H; h++) {
      const kvh = Math.floor(h / (H / KV));
      const s = Array.from({ length: pos + 1 }, (_, t) => {
        let a = 0;
        for (let i = 0; i < hd; i++) a += qr[h * hd + i]! * K2[t * kw + kvh * hd + i]!;
        return a / Math.sqrt(hd);
      });
      const mx = Math.max(...s);
      const e = s.map((v) => Math.exp(v - mx));
      const z = e.reduce((a, b) => a + b, 0);
      for (let t = 0; t <= pos; t++)
        for (let i = 0; i < hd; i++) ref[h * hd + i]! += (e[t]! / z) * V2[t * kw + kvh * hd + i]!;
    }
    // f32 dot products of length 8 and a softmax over 5 positions: ~1e-6
    expect(relErr(await readF32(d, out, H * hd), ref)).toBeLessThan(1e-5);
    // attention again with the other default's workgroup (256 invocations on GPUs, 64 on CPU adapters)
    const other = new Kernels(d, { vectorWorkgroup: k.vectorWorkgroup === 256 ? 64 : 256 });
    const out2 = scratchBuffer(d, H * hd * 4, 'att2');
    await run(d, [attend(other, out2)]);
    expect(relErr(await readF32(d, out2, H * hd), ref), `${other.vectorWorkgroup} invocations`).toBeLessThan(
      1e-5,
    );
  });

  it("Qwen3's per-head query and key RMSNorm before RoPE (ropeKv with qkNorm, 2 rows, head size 80: more than the launch's 64 invocations) against a direct f64 evaluation: heads at RMS 1e-30, 1 and 1e30, one of values up to 3e38", async () => {
    const rng = new Rng(9);
    const k = K();
    const [H, KV, hd, cap, pos, rows] = [4, 2, 80, 6, 2, 2];
    const kw = KV * hd;
    const half = hd / 2;
    const eps = 1e-6;
    const angle = (p: number, i: number) => p * 10000 ** (-(2 * i) / hd);
    const cs = new Float32Array(cap * half * 2);
    for (let p = 0; p < cap; p++)
      for (let i = 0; i < half; i++) {
        cs[(p * half + i) * 2] = Math.cos(angle(p, i));
        cs[(p * half + i) * 2 + 1] = Math.sin(angle(p, i));
      }
    // each head of q and k at its own scale: 1e-30 (the norm's eps dominates), 1, 1e30 (squares past f32's range:
    // the sum overflows unless scaled), and values up to 3e38 (f32's largest is 3.4e38)
    const scales = [1e-30, 1, 1e30, 3e38];
    const fill = (heads: number) => {
      const v = randn(rng, rows * heads * hd);
      for (let h = 0; h < rows * heads; h++) {
        const s = scales[h % scales.length]!;
        let mx = 0;
        for (let i = 0; i < hd; i++) mx = Math.max(mx, Math.abs(v[h * hd + i]!));
        // the largest head: its largest value at 3e38 exactly (a normal draw times 3e38 could overflow)
        for (let i = 0; i < hd; i++)
          v[h * hd + i] = s === 3e38 ? (v[h * hd + i]! / mx) * s : v[h * hd + i]! * s;
      }
      return v;
    };
    const q = fill(H);
    const kk = fill(KV);
    const vv = randn(rng, rows * kw);
    const qn = rng.fillNormal(new Float32Array(hd), 1, 0.3);
    const kn = rng.fillNormal(new Float32Array(hd), 1, 0.3);
    const [qb, ckb, cvb] = [
      storageBuffer(d, q, 'q'),
      scratchBuffer(d, cap * kw * 4, 'ck'),
      scratchBuffer(d, cap * kw * 4, 'cv'),
    ];
    await run(
      d,
      [
        k.ropeKv({
          step: stepBuf(pos, pos + rows),
          cs: storageBuffer(d, cs, 'cs'),
          q: qb,
          k: storageBuffer(d, kk, 'k'),
          v: storageBuffer(d, vv, 'v'),
          ck: ckb,
          cv: cvb,
          heads: H,
          kvHeads: KV,
          hd,
          qkNorm: { q: storageBuffer(d, qn, 'q norm'), k: storageBuffer(d, kn, 'k norm'), eps },
        }),
      ],
      rows,
    );
    // transformers' Qwen3 RMSNorm of each head, then RoPE at the row's position, in f64
    const normRope = (x: Float32Array, w: Float32Array, at: number, p: number) => {
      let ss = 0;
      for (let i = 0; i < hd; i++) ss += x[at + i]! ** 2;
      const r = 1 / Math.sqrt(ss / hd + eps);
      const n = Array.from({ length: hd }, (_, i) => x[at + i]! * r * w[i]!);
      const out = new Float64Array(hd);
      for (let i = 0; i < half; i++) {
        const [c, s] = [Math.cos(angle(p, i)), Math.sin(angle(p, i))];
        out[i] = n[i]! * c - n[i + half]! * s;
        out[i + half] = n[i + half]! * c + n[i]! * s;
      }
      return out;
    };
    const gotQ = await readF32(d, qb, rows * H * hd);
    const gotK = await readF32(d, ckb, cap * kw);
    const gotV = await readF32(d, cvb, cap * kw);
    for (let r = 0; r < rows; r++) {
      for (let h = 0; h < H; h++) {
        const at = (r * H + h) * hd;
        // f32 sums of 80 squares, a square root and three products per value, against f64: a few ulps of O(1)
        // outputs; 1e-5 of the head's scale leaves margin, and an unscaled sum (inf, or 0 for the 1e30 heads) or a
        // head normed over the wrong span is off by O(1)
        expect(
          relErr(gotQ.subarray(at, at + hd), normRope(q, qn, at, pos + r)),
          `row ${r} q head ${h}`,
        ).toBeLessThan(1e-5);
      }
      for (let h = 0; h < KV; h++) {
        const c = (pos + r) * kw + h * hd;
        const want = normRope(kk, kn, (r * KV + h) * hd, pos + r);
        expect(relErr(gotK.subarray(c, c + hd), want), `row ${r} k head ${h}`).toBeLessThan(1e-5);
        expect(Array.from(gotV.subarray(c, c + hd))).toEqual(
          Array.from(vv.subarray((r * KV + h) * hd, (r * KV + h + 1) * hd)),
        );
      }
    }
  });
});

describe.skipIf(!f16dev)(gpuTitle('packed-f16 E8P kernel against an exact reference', f16reason), () => {
  const d = f16dev!;

  it.each([
    [344, undefined, 1],
    [352, 2, 2],
    [352, 4, 4],
  ] as const)(
    'Q̂ in packed f16 (segments of %i rows, rowsPerLane %s: %i row(s) per lane; E8P12 with an RVQ3 L̂, RVQ4 with an RVQ4 L̂; all 65 536 codes, two segments, one chunk (rounded up or exact) and two with a partial one): exact where the products are exact in f16, within its rounding bound for activations over 40 binades, at 2^-30 and at 2^30, and with an outlier inside a group',
    async (rows, rowsPerLane, perLane) => {
      const rng = new Rng(11);
      // rows per segment: a multiple of 8 (344: of no more, so one row per lane by default; 352 = 11 · 32)
      const mp = 2 * rows;
      const np = 768; // 96 codes per row: with chunks of 64, a full chunk and a partial one
      const G = np / 8;
      // every code at least once (688 × 96 ≥ 65 536), shuffled
      const codes = new Uint16Array(mp * G);
      for (let i = 0; i < codes.length; i++) codes[i] = i % 65536;
      for (let i = codes.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [codes[i], codes[j]] = [codes[j]!, codes[i]!];
      }
      const codes2 = Uint16Array.from({ length: codes.length }, () => rng.int(65536));
      const q1 = e8pDecode(codes);
      const q2 = e8pDecode(codes2);
      const kr = 40;
      const z0 = randn(rng, 2 * kr);
      const zOf = (kind: string) =>
        z0.map((v) => v * (kind === 'tiny' ? 2 ** -30 : kind === 'huge' ? 2 ** 30 : 1));
      const sources = storageBuffer(d, e8pSourcePairs(), 'src');
      const e81b = storageBuffer(d, e81bCodebook(), 'e81b');
      const qscale = 0.37;
      const lscale = 0.21;
      const activations = {
        // multiples of 1/8 in [-1, 1]: coordinates are multiples of 1/4 up to 2.75, so every product, half sum and
        // code sum is a multiple of 1/32 below 2^6 (scaled by a power of two: still exact in f16's 11 bits)
        exact: Float32Array.from({ length: 2 * np }, () => (rng.int(17) - 8) / 8),
        // each group of 8 at its own magnitude, 2^-20 … 2^20 (unscaled f16 would overflow at the top and lose
        // everything at the bottom), one group all zeros; one group's coordinates 6 and 7 2^12 times the others (its
        // scale must come from all 8)
        wide: (() => {
          const x = randn(rng, 2 * np);
          for (let g = 0; g < 2 * G; g++) {
            const m = g === 5 ? 0 : 2 ** (rng.int(41) - 20);
            for (let i = 0; i < 8; i++) x[8 * g + i]! *= m * (g === 9 && i >= 6 ? 2 ** 12 : 1);
          }
          return x;
        })(),
        // whole vectors far below and above f16's range (z, which R̂ computes from them, scaled alike): each row's
        // bound is at their scale, so a group scaled wrong (not up, not down) shows
        tiny: randn(rng, 2 * np, 2 ** -30),
        huge: randn(rng, 2 * np, 2 ** 30),
      };
      for (const [codec, lCodec] of [
        ['e8p12', 'rvq3'],
        ['rvq4', 'rvq4'],
      ] as const) {
        const L = packedCodes(rng, (kr * rows) / 8, lCodec);
        const lb = storageBuffer(d, L.bytes, 'l');
        for (const [kind, x] of Object.entries(activations)) {
          const z = zOf(kind);
          const zb = storageBuffer(d, z, 'z');
          // (the exact-size chunk once: each variant costs lavapipe a second or more to compile)
          for (const [chunks, storage] of [
            [1, d.maxWorkgroupStorage],
            ...(perLane === 1 ? ([[1, e8pF16WorkgroupBytes(G)]] as const) : []),
            [2, e8pF16WorkgroupBytes(64, perLane)],
          ] as const) {
            const k = new Kernels(
              { ...d, maxWorkgroupStorage: storage },
              { lanes: 32, ...(rowsPerLane ? { rowsPerLane } : {}) },
            );
            expect(k.f16).toBe(true);
            const out = scratchBuffer(d, mp * 4, 'out');
            const seg = (j: number) => ({
              rows,
              qscale,
              codeByte: j * rows * G * 2,
              code2Byte: j * rows * G * 2,
              x: j * np,
              lowRank: { k: kr, scale: lscale, codeByte: 0, code2Byte: L.plane2Word * 4, z: j * kr },
            });
            const launch = k.e8pMatvec({
              codes: storageBuffer(d, codes, 'c'),
              codes2: codec === 'rvq4' ? storageBuffer(d, codes2, 'c2') : null,
              codec,
              e81b: lCodec === 'rvq3' ? e81b : null,
              sources,
              x: storageBuffer(d, x, 'x'),
              out,
              np,
              xRow: 2 * np,
              resScale: RVQ4_RESID_SCALE,
              segments: [seg(0), seg(1)],
              lowRank: { codec: lCodec, codes: lb, resScale: L.resScale, z: zb, zRow: 2 * kr },
            });
            const shape = `${chunks === 1 ? '' : ' 2 chunks'}${perLane === 1 ? '' : ` ${perLane} rows/lane`}`;
            expect(launch.label.endsWith(` k=80${shape} f16`), launch.label).toBe(true);
            expect(launch.workgroups).toBe(mp / (8 * perLane));
            expect(launch.rowsPerLane).toBe(perLane);
            expect(launch.f16Products).toBe(true);
            await run(d, [launch]);
            const got = await readF32(d, out, mp);
            const what = `${codec} ${kind} ${chunks} chunk(s), ${storage} bytes, ${perLane} rows per lane`;
            const ref = new Float64Array(mp);
            let worst = 0;
            for (let i = 0; i < mp; i++) {
              const s = i < rows ? 0 : 1;
              let exact = 0;
              let size = 0;
              for (let j = 0; j < np; j++) {
                const w1 = q1[i * np + j]!;
                const w2 = codec === 'rvq4' ? q2[i * np + j]! / RVQ4_RESID_SCALE : 0;
                const xv = x[s * np + j]!;
                exact += (w1 + w2) * xv;
                size += (Math.abs(w1) + Math.abs(w2)) * Math.abs(xv);
              }
              let low = 0;
              let lowSize = 0;
              // both segments share L̂'s codes, each with its own z
              for (let t = 0; t < kr; t++) {
                const term = lscale * L.values[t * rows + (i % rows)]! * z[s * kr + t]!;
                low += term;
                lowSize += Math.abs(term);
              }
              ref[i] = qscale * exact + low;
              if (kind !== 'exact') {
                // per code at most ~6·2⁻¹¹ of Σ|w·x| with round-to-nearest (the activations' rounding, four
                // multiply-adds per half, the halves' sum; the scaling by powers of two is exact), taken as 7·2⁻¹¹;
                // f32 accumulation of 96 codes and 40 low-rank terms adds ~1e-6 of the same sizes
                const bound = 7 * 2 ** -11 * qscale * size + 1e-5 * (qscale * size + lowSize);
                const err = Math.abs(got[i]! - ref[i]!);
                expect(err, `${what} row ${i}`).toBeLessThanOrEqual(bound);
                worst = Math.max(worst, err / bound);
              }
            }
            // exact products: only f32 accumulation differs (~1e-6 of the output scale), where one wrong coordinate
            // sign, source entry or shift moves a row by ≥ 1/32 (~1e-3 of it)
            if (kind === 'exact') expect(relErr(got, ref), what).toBeLessThan(1e-5);
            // the other products do round in f16: their worst row is 6e-3 … 1e-1 of the worst-case bound here, where f32
            // rounding of the same sums would be ~1e-6 of it
            else expect(worst, what).toBeGreaterThan(1e-4);
          }
        }
      }
    },
  );

  it('the f32 form runs where the f16 one cannot: an odd number of groups, an RVQ3 plane, row tiles, segments not a multiple of 8 rows, an odd first code index in either plane, too little workgroup memory; f16 is refused without shader-f16 or with one lane', () => {
    const k = new Kernels(d, { lanes: 32 });
    const b = storageBuffer(d, new Float32Array(1024), 'b');
    const base = { ...e8pStub(b, 128), segments: [{ rows: 16, qscale: 1 }] } as const;
    expect(k.e8pMatvec(base).label).toMatch(/ f16$/);
    expect(k.e8pMatvec(base).f16Products).toBe(true);
    expect(k.e8pMatvec({ ...base, codec: 'rvq4', codes2: b }).label).toMatch(/ f16$/);
    for (const other of [
      { np: 136 },
      { codec: 'rvq3', codes2: b, e81b: b },
      { tile: 8 },
      { segments: [{ rows: 12, qscale: 1 }] },
      { segments: [{ rows: 16, qscale: 1, codeByte: 2 }] },
      { codec: 'rvq4', codes2: b, segments: [{ rows: 16, qscale: 1, code2Byte: 2 }] },
    ] as const)
      expect(k.e8pMatvec({ ...base, ...other }).label).not.toMatch(/f16/);
    expect(k.e8pMatvec({ ...base, tile: 8 }).f16Products).toBeUndefined();
    // workgroup memory short of the table and the whole row (16 groups), so of any chunk too
    const small = new Kernels({ ...d, maxWorkgroupStorage: e8pF16WorkgroupBytes(16) - 4 }, { lanes: 32 });
    expect(small.f16).toBe(true);
    expect(small.e8pMatvec(base).label).not.toMatch(/f16/);
    expect(new Kernels(d, { lanes: 32, f16: false }).e8pMatvec(base).label).not.toMatch(/f16/);
    expect(() => new Kernels({ ...d, shaderF16: false }, { f16: true })).toThrow(/shader-f16/);
    expect(() => new Kernels(d, { lanes: 1, f16: true })).toThrow(/32 lanes/);
  });

  it('rows per lane: the most (of 4, 2, 1) that divide every segment by 8 and, by default, keep 256 workgroups; up to rowsPerLane when given', () => {
    const b = storageBuffer(d, new Float32Array(1024), 'b');
    const shape = (k: Kernels, ...rows: number[]) => {
      const l = k.e8pMatvec({ ...e8pStub(b, 128), segments: rows.map((r) => ({ rows: r, qscale: 1 })) });
      expect(l.f16Products).toBe(true);
      expect(l.label.endsWith(l.rowsPerLane === 1 ? ' f16' : ` ${l.rowsPerLane} rows/lane f16`)).toBe(true);
      expect(l.label.includes('rows/lane')).toBe(l.rowsPerLane !== 1);
      return [l.rowsPerLane, l.workgroups];
    };
    const k = new Kernels(d, { lanes: 32 });
    expect(k.rowsPerLane).toBeNull();
    expect(shape(k, 8192)).toEqual([4, 256]);
    expect(shape(k, 4096, 4096)).toEqual([4, 256]);
    expect(shape(k, 8208)).toEqual([2, 513]); // 16 · 513: not a multiple of 32
    expect(shape(k, 8160)).toEqual([2, 510]); // 32 · 255: 4 rows per lane would leave 255 workgroups
    expect(shape(k, 4096)).toEqual([2, 256]); // 4 rows per lane would leave 128 workgroups
    expect(shape(k, 4088)).toEqual([1, 511]);
    expect(shape(k, 8192, 8)).toEqual([1, 1025]);
    const k4 = new Kernels(d, { lanes: 32, rowsPerLane: 4 });
    expect(shape(k4, 64)).toEqual([4, 2]);
    expect(shape(k4, 48)).toEqual([2, 3]);
    expect(shape(new Kernels(d, { lanes: 32, rowsPerLane: 2 }), 8192)).toEqual([2, 512]);
    expect(shape(new Kernels(d, { lanes: 32, rowsPerLane: 1 }), 8192)).toEqual([1, 1024]);
    // fewer rows per lane where workgroup memory holds no chunk for more (16 groups: one chunk of 64)
    const tight = (bytes: number) =>
      new Kernels({ ...d, maxWorkgroupStorage: bytes }, { lanes: 32, rowsPerLane: 4 });
    expect(shape(tight(e8pF16WorkgroupBytes(64, 4)), 64)).toEqual([4, 2]);
    expect(shape(tight(e8pF16WorkgroupBytes(64, 2)), 64)).toEqual([2, 4]);
    expect(shape(tight(e8pF16WorkgroupBytes(64, 1)), 64)).toEqual([1, 8]);
    expect(() => new Kernels(d, { lanes: 32, rowsPerLane: 3 as 1 })).toThrow(
      'E_VALUE: rowsPerLane must be 1, 2 or 4, got 3',
    );
  });
});

describe("a kernel's bind-group layout from its WGSL (no device)", () => {
  it('bufferBindingTypes: uniform, read-only and read-write storage buffers by binding, in any order in the text; another group, a binding declared twice or missing, a texture or a private var is E_VALUE naming the kernel', () => {
    const decl = (b: number, space: string) => `@group(0) @binding(${b}) var<${space}> v${b}: array<f32>;`;
    expect(
      bufferBindingTypes(
        [
          decl(2, 'storage, read_write'),
          decl(0, 'uniform'),
          decl(1, 'storage, read'),
          decl(3, 'storage'),
        ].join('\n'),
        'k',
      ),
    ).toEqual(['uniform', 'read-only-storage', 'storage', 'read-only-storage']);
    expect(bufferBindingTypes('@compute @workgroup_size(1) fn main() {}', 'k')).toEqual([]);
    for (const [code, message] of [
      [
        '@group(1) @binding(0) var<uniform> p: vec4<u32>;',
        'k: kernels bind uniform and storage buffers in group 0',
      ],
      [decl(0, 'uniform') + decl(0, 'uniform'), "found '@group(0) @binding(0) var<uniform>'"],
      ['@group(0) @binding(0) var t: texture_2d<f32>;', "found '@group(0) @binding(0) var'"],
      [decl(0, 'private'), 'kernels bind uniform and storage buffers'],
      [decl(0, 'uniform') + decl(2, 'storage, read'), 'k: binding 1 of group 0 is missing'],
    ])
      expect(() => bufferBindingTypes(code, 'k')).toThrow(message);
    // every kernel of the runtime declares its bindings this way: the WGSL kernel tests above run them all with
    // these layouts (a layout that disagreed with the shader would fail their pipelines)
  });
});

describe('code groups per batch of loads (the WGSL; no device)', () => {
  it('the f32 E8P kernel loads `codeBatch` codes of a row per iteration, and the input step its first batch of R̂ codes before the rotation (4, 8, 16); other values are E_VALUE', () => {
    for (const batch of [4, 8, 16] as const) {
      const e8p = e8pMatvecWgsl('rvq4', 'e8p12', 32, 1, 1, batch);
      expect(e8p.match(/let code\d+ =/g)?.length).toBe(batch);
      expect(e8p.match(/let code\d+p2 =/g)?.length).toBe(batch);
      expect(e8p).toContain(`g0 += stride * ${batch}u`);
      const step = inputProjectionWgsl(2048, 'e8p12', 32, 'none', 'none', [], 256, 'whole', batch);
      expect(step.match(/let first_code\d+ =/g)?.length).toBe(batch);
      expect(step.match(/let next_code\d+ =/g)?.length).toBe(batch);
    }
    expect(() => e8pMatvecWgsl('e8p12', null, 32, 1, 1, 12 as 8)).toThrow(
      'E_VALUE: codeBatch must be 4, 8 or 16, got 12',
    );
    expect(() => inputProjectionWgsl(256, 'e8p12', 32, 'none', 'none', [], 256, 'whole', 0 as 8)).toThrow(
      'E_VALUE: codeBatch must be 4, 8 or 16, got 0',
    );
  });
});

describe("the direction of the H_K mix is the pipeline's (the WGSL; no device)", () => {
  it('a rotation kernel holds the written-out mix of its direction only; the input step finishing an output rotation holds both, each once', () => {
    const mixes = (code: string) => (code.match(/fn mixK44[NT]\(/g) ?? []).sort();
    const forward = hadamardWgsl(1024, 1, 'none', [44], 256, false);
    const transposed = hadamardWgsl(1024, 1, 'none', [44], 256, true);
    expect(mixes(forward)).toEqual(['fn mixK44N(']);
    expect(mixes(transposed)).toEqual(['fn mixK44T(']);
    // the signs differ (H_44 is not symmetric), and each shader calls its own direction only
    expect(forward).not.toEqual(transposed.replaceAll('K44T', 'K44N').replaceAll('InPlaceT', 'InPlaceN'));
    expect(forward).not.toMatch(/rotateInPlaceT|rotatedAtT/);
    // the input step of down_proj finishing gate and up: its own rotation (N) and theirs (T)
    const step = inputProjectionWgsl(1024, 'rvq4', 1, 'swiglu', 'gate', [44], 64, 'whole', 8, false, true);
    expect(mixes(step)).toEqual(['fn mixK44N(', 'fn mixK44T(']);
    // the gate slices' chunk sums: one switch, not one per direction
    expect(gateSliceWgsl(1024, 44, 16, 256, true).match(/switch q/g)?.length).toBe(1);
  });
});
