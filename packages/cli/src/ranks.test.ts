import { afterEach, describe, expect, it, vi } from 'vitest';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { main } from './cli.js';
import { allocateRanks, averageBits, rankCap } from '@caldera/calibrate';
import { checkFlag } from './args.js';
import { chooseRanks, parseLayerRanks } from './commands/ranks.js';

// four blocks' worth of reference-model shapes (attention 256×256, MLP 704×256 / 256×704)
const layers = [0, 1].flatMap((b) => [
  { name: `model.layers.${b}.self_attn.q_proj`, m: 256, n: 256 },
  { name: `model.layers.${b}.self_attn.o_proj`, m: 256, n: 256 },
  { name: `model.layers.${b}.mlp.gate_proj`, m: 704, n: 256 },
  { name: `model.layers.${b}.mlp.down_proj`, m: 256, n: 704 },
]);
const widths = { qBits: 2, lBits: 4, rBits: 4 };

describe('rank choice for caldera compress', () => {
  it('parses --layer-rank and rejects malformed parts', () => {
    expect(parseLayerRanks('mlp=32, self_attn=16')).toEqual([
      ['mlp', 32],
      ['self_attn', 16],
    ]);
    expect(() => parseLayerRanks('mlp')).toThrow(/PATTERN=RANK/);
    expect(() => parseLayerRanks('mlp=-1')).toThrow(/PATTERN=RANK/);
  });

  it('meets the bits target over all layers with overrides counted first', () => {
    const ranks = chooseRanks(layers, { widths, bits: 2.4, overrides: [['mlp', 8]] });
    for (const s of layers.filter((s) => s.name.includes('mlp'))) expect(ranks[s.name]).toBe(8);
    const avg = averageBits(
      layers,
      layers.map((s) => ranks[s.name]!),
    );
    expect(avg).toBeLessThanOrEqual(2.4 + 1e-12);
    // attention layers absorb the budget the MLP left: well above the uniform allocation's rank
    const uniform = chooseRanks(layers, { widths, bits: 2.4 });
    expect(ranks['model.layers.0.self_attn.q_proj']!).toBeGreaterThan(
      uniform['model.layers.0.self_attn.q_proj']!,
    );
    // within one granularity step (8) of a layer of the target: 8·(4·512)/65536 = 0.25 bits on a 256×256 layer
    expect(2.4 - avg).toBeLessThan(0.25 * (65536 / layers.reduce((a, s) => a + s.m * s.n, 0)) + 1e-9);
  });

  it('converts --max-bytes to a bits target and fails clearly when overrides exceed it', () => {
    const params = layers.reduce((a, s) => a + s.m * s.n, 0);
    const ranks = chooseRanks(layers, { widths, maxBytes: (2.3 * params) / 8 });
    expect(
      averageBits(
        layers,
        layers.map((s) => ranks[s.name]!),
      ),
    ).toBeLessThanOrEqual(2.3 + 1e-12);
    expect(() => chooseRanks(layers, { widths, bits: 2.1, overrides: [['mlp', 256]] })).toThrow(
      /too small.*layer-rank/,
    );
  });

  it('a fixed --rank applies to the layers without an override', () => {
    const ranks = chooseRanks(layers, { widths, rank: 16, overrides: [['down_proj', 300]] });
    expect(ranks['model.layers.0.mlp.down_proj']).toBe(256); // clamped to min(m, n)
    expect(ranks['model.layers.1.self_attn.q_proj']).toBe(16);
  });

  it('refuses a non-finite --rank, --bits or --max-bytes, naming it (checkFlag: no rule admits ±Infinity or NaN)', () => {
    expect(() => chooseRanks(layers, { widths, maxBytes: Infinity })).toThrow(
      /E_VALUE: --max-bytes must be a number > 0, got Infinity$/,
    );
    expect(() => chooseRanks(layers, { widths, bits: Infinity })).toThrow(
      /E_VALUE: --bits must be a number > 0, got Infinity$/,
    );
    expect(() => chooseRanks(layers, { widths, bits: NaN })).toThrow(/--bits must be a number > 0, got NaN$/);
    expect(() => chooseRanks(layers, { widths, rank: Infinity })).toThrow(
      /--rank must be a non-negative integer, got Infinity$/,
    );
    expect(() => checkFlag('x', NaN, {})).toThrow(/--x must be a number, got NaN$/);
    expect(() => checkFlag('x', -Infinity, { max: 3 })).toThrow(/--x must be a number ≤ 3, got -Infinity$/);
  });

  it("the full-rank limit is calibrate's rank cap, the ranks allocateRanks gives at an unbounded target", () => {
    // caps: min(m, n) = 60 and 37; in steps of 8, 56 and 32
    const odd = [
      { name: 'a', m: 100, n: 60 },
      { name: 'b', m: 37, n: 300 },
    ];
    expect(odd.map((s) => rankCap(s))).toEqual([60, 37]);
    expect(odd.map((s) => rankCap(s, 8))).toEqual([56, 32]);
    expect(odd.map((s) => rankCap(s, 8, 40))).toEqual([40, 32]);
    expect(allocateRanks(odd, { targetBits: 1000, ...widths, granularity: 8 }).ranks).toEqual([56, 32]);
    // --bits above every layer at its cap is refused, naming that limit (two decimals, rounded down)
    const full = averageBits(
      odd,
      odd.map((s) => rankCap(s, 8)),
      widths,
    );
    const shown = Math.floor(full * 100 + 1e-9) / 100;
    expect(() => chooseRanks(odd, { widths, bits: full + 0.01 })).toThrow(
      new RegExp(`--bits must be at most ${shown}, what every layer at full rank gives`),
    );
    // a fixed rank or an override is clamped to the cap without granularity
    expect(chooseRanks(odd, { widths, rank: 1000 })).toEqual({ a: 60, b: 37 });
    expect(chooseRanks(odd, { widths, rank: 4, overrides: [['b', 1000]] })).toEqual({ a: 4, b: 37 });
  });
});

describe('rank flags are never silently ignored', () => {
  afterEach(() => vi.restoreAllMocks());
  /** `caldera argv…` in-process: exit code and what went to stderr. */
  const run = async (argv: string[]) => {
    const errors: string[] = [];
    vi.spyOn(console, 'error').mockImplementation((...x: unknown[]) => void errors.push(x.join(' ')));
    vi.spyOn(console, 'log').mockImplementation(() => undefined);
    const code = await main(argv);
    return { code, stderr: errors.join('\n') };
  };

  it('a --layer-rank pattern that matches no layer is refused, naming it and the layer kinds', async () => {
    expect(() => chooseRanks(layers, { widths, bits: 2.4, overrides: [['mpl', 32]] })).toThrow(
      /--layer-rank: 'mpl' matches no layer \(a pattern is a part of a layer name, e\.g\. one of self_attn\.q_proj, self_attn\.o_proj, mlp\.gate_proj, mlp\.down_proj;/,
    );
    // one pattern that matches is not enough: each must
    expect(() =>
      chooseRanks(layers, {
        widths,
        rank: 8,
        overrides: [
          ['mlp', 32],
          ['atn', 16],
        ],
      }),
    ).toThrow(/'atn' matches no layer/);
    const out = join(mkdtempSync(join(tmpdir(), 'caldera-ranks-')), 'never-written');
    const r = await run(['compress', '--threads', '1', '--out', out, '--layer-rank', 'mpl=32']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/E_VALUE: --layer-rank: 'mpl' matches no layer .*mlp\.down_proj/);
    expect(readdirSync(join(out, '..'))).toEqual([]);
  });

  it('--bits with --rank or --max-bytes is refused as conflicting; a default --bits is not', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'caldera-ranks-')), 'never-written');
    const c = ['compress', '--threads', '1', '--out', out];
    for (const [flags, names] of [
      [['--rank', '8', '--bits', '3'], '--rank and --bits'],
      [['--max-bytes', '900000', '--bits', '3'], '--max-bytes and --bits'],
      [['--rank', '8', '--max-bytes', '900000'], '--rank and --max-bytes'],
    ] as const) {
      const r = await run([...c, ...flags]);
      expect(r.code, flags.join(' ')).toBe(1);
      expect(r.stderr).toContain(`E_VALUE: ${names} conflict: each sets the ranks of every layer`);
    }
    expect(readdirSync(join(out, '..'))).toEqual([]);
    // --rank or --max-bytes alone (the default --bits not given) is taken: the ranks it gives
    const shapes = layers;
    expect(Object.values(chooseRanks(shapes, { widths, rank: 8, bits: 2.4 }))).toEqual(new Array(8).fill(8));
  });
});
