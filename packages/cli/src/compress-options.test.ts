import { afterEach, describe, expect, it, vi } from 'vitest';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CalderaError } from '@caldera/core';
import { referenceModelDir } from '@caldera/reference-model';
import { loadModel, perplexity } from '@caldera/runtime-node';
import { main } from './cli.js';
import { loadModelShowing } from './commands/common.js';
import { calibrationRowsWarning, compressProgressLabel } from './commands/compress.js';
import { fastCompressSetup, runCli, runUntil, sigintWhen, sigintWhenEntry } from './test-cli.js';
import { writeTinyModel } from './test-models.js';

const { tmp, fast, heldOut, rtn: RTN } = fastCompressSetup('caldera-compress-options-');
const run = runCli;
const FAST = [...fast, '--json'];

/** The `report` event of a `--json` compress run. */
const reportOf = (stdout: string) =>
  JSON.parse(stdout.split('\n').find((l) => l.includes('"event":"report"'))!) as {
    qBits: number;
    lBits?: number;
    rBits?: number;
    bitsPerWeight: number;
    perplexity: { original: number; compressed: number; tokens: number; context: number };
    layers: { name: string; rank: number; bitsPerWeight: number }[];
  };

describe('caldera compress --q-bits / --lr-bits', () => {
  it('--q-bits 3 --lr-bits 2: the checkpoint records them, loads, evaluates, and its bits per weight are the accounting', async () => {
    const { dir: src, raw } = await writeTinyModel(join(tmp, 'widths'), { seed: 11 });
    const out = join(tmp, 'widths-out');
    const r = run([
      'compress',
      src,
      '--out',
      out,
      ...FAST,
      '--q-bits',
      '3',
      '--lr-bits',
      '2',
      '--bits',
      '3.5',
    ]);
    expect(r.status, r.stderr).toBe(0);
    const meta = JSON.parse(readFileSync(join(out, 'caldera.json'), 'utf8'));
    expect(meta.options).toMatchObject({ qBits: 3, lBits: 2, rBits: 2 });
    const layers = Object.values(meta.layers) as { rank: number; codecs: Record<string, string> }[];
    expect(layers).toHaveLength(14);
    // Q in RVQ 3-bit everywhere; the factors of the layers with a low-rank part in the 2-bit lattice code
    expect(new Set(layers.map((l) => l.codecs.Q))).toEqual(new Set(['e8p12-rvq3']));
    const withLR = layers.filter((l) => l.rank > 0);
    expect(withLR.length).toBeGreaterThan(0);
    for (const l of withLR) expect([l.codecs.L, l.codecs.R]).toEqual(['e8p12', 'e8p12']);
    // the paper accounting, from the shapes and the ranks: 3 bits per weight of Q, 2 per entry of L and R
    const report = reportOf(r.stdout);
    expect(report).toMatchObject({ qBits: 3, lBits: 2, rBits: 2 });
    let bits = 0;
    let weights = 0;
    for (const l of report.layers) {
      const [m, n] = raw[`${l.name}.weight`]!.shape as [number, number];
      const own = 3 + (l.rank * (2 * m + 2 * n)) / (m * n);
      expect(l.bitsPerWeight).toBeCloseTo(own, 12);
      bits += own * m * n;
      weights += m * n;
    }
    expect(report.bitsPerWeight).toBeCloseTo(bits / weights, 12);
    expect(meta.bitsPerWeight).toBe(report.bitsPerWeight);
    expect(report.bitsPerWeight).toBeGreaterThan(3);
    expect(report.bitsPerWeight).toBeLessThanOrEqual(3.5);
    // runtime-node loads it and evaluates it (as 'caldera eval' does, which must give the report's number)
    const { model } = await loadModel(out);
    const ids = Array.from({ length: 64 }, (_, i) => (i * 37 + 5) % 2048);
    expect(Number.isFinite((await perplexity(model, ids, { context: 32 })).ppl)).toBe(true);
    const ev = run(['eval', out, '--text', heldOut, '--max-tokens', '128', '--json']);
    expect(ev.status, ev.stderr).toBe(0);
    expect((JSON.parse(ev.stdout) as { ppl: number }).ppl).toBeCloseTo(report.perplexity.compressed, 9);
  }, 60_000);

  it('invalid widths, and widths or steps a method has no use for, are refused before any work', () => {
    const out = join(tmp, 'never');
    const src = referenceModelDir();
    const cases: [string[], RegExp][] = [
      [['--q-bits', '5'], /E_VALUE: --q-bits must be 2 \(E8P lattice\), 3 or 4 .*got 5/],
      [['--q-bits', '1'], /E_VALUE: --q-bits must be 2 .*got 1/],
      [['--lr-bits', '8'], /E_VALUE: --lr-bits must be 2, 3, 4 .* or 16 \(half precision\), got 8/],
      [['--lr-bits', '2.5'], /E_VALUE: --lr-bits must be .*got 2\.5/],
      [['--method', 'lplr', '--q-bits', '3'], /E_VALUE: --method lplr has no Q .*--q-bits would be ignored/],
      [['--method', 'ldlq', '--lr-bits', '2'], /E_VALUE: --method ldlq has no low-rank part .*--lr-bits/],
      // Q at 4 bits costs 4 bits per weight: a budget below it cannot be met
      [['--q-bits', '4', '--bits', '3'], /E_VALUE: --bits must be in \[4, /],
      // options of steps the method does not run (they would be recorded in caldera.json as if applied)
      [
        ['--method', 'rtn', '--windows', '2', '--length', '8', '--data', heldOut],
        /E_VALUE: --method rtn rounds each weight without calibration data .*: --data, --windows, --length would be ignored; use --method ldlq or caldera/,
      ],
      [['--method', 'rtn', '--outer-iters', '9'], /E_VALUE: --method rtn .*: --outer-iters would be ignored/],
      [
        ['--method', 'ldlq', '--outer-iters', '3', '--lplr-iters', '2'],
        /E_VALUE: --method ldlq has no low-rank part \(one LDLQ pass, rank 0\): --outer-iters, --lplr-iters would be ignored/,
      ],
      [
        ['--method', 'lplr', '--outer-iters', '2'],
        /E_VALUE: --method lplr has no Q to alternate with .*--outer-iters would be ignored/,
      ],
      [
        ['--hessian-chunks', '2'],
        /E_VALUE: --hessian-chunks cuts the Hessians of --propagate original .*give --propagate original with it/,
      ],
      // lplr has no Q: a rank of 0 ran at rank 1 while caldera.json recorded 0
      [
        ['--method', 'lplr', '--rank', '0'],
        /E_VALUE: --method lplr needs a rank of at least 1 for every layer \(it has no Q: .*\); --rank 0$/m,
      ],
      [
        ['--method', 'lplr', '--layer-rank', 'mlp=0'],
        /--layer-rank gives model\.layers\.\d+\.mlp\.\w+ rank 0$/m,
      ],
      [
        ['--method', 'lplr', '--bits', '0.05'],
        /the budget leaves \d+ of 28 layers at rank 0 .*: raise --bits or --max-bytes$/m,
      ],
    ];
    for (const [opts, msg] of cases) {
      // every case fails before any work: no calibration options needed (and rtn refuses them)
      const r = run(['compress', src, '--out', out, '--json', '--threads', '1', ...opts]);
      expect(r.status, opts.join(' ')).toBe(1);
      expect(r.stderr, opts.join(' ')).toMatch(msg);
      expect(r.stdout, opts.join(' ')).toBe('');
    }
    expect(existsSync(out)).toBe(false);
    expect(existsSync(`${out}.partial`)).toBe(false);
  }, 120_000);

  it('caldera.json records the settings the method used: rtn none of the calibration, ldlq no iterations', () => {
    const src = referenceModelDir();
    const rtnOut = join(tmp, 'rtn-record');
    const r = run(['compress', src, '--out', rtnOut, ...RTN, '--json']);
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout.trim().split('\n').at(-1)!).calibration).toBeNull();
    expect(JSON.parse(readFileSync(join(rtnOut, 'caldera.json'), 'utf8')).options).toEqual({
      qBits: 2,
      ranks: {},
    });
    const ldlqOut = join(tmp, 'ldlq-record');
    const noIters = FAST.filter((f, i) => !/-iters$/.test(f) && !/-iters$/.test(FAST[i - 1] ?? ''));
    const l = run(['compress', src, '--out', ldlqOut, ...noIters, '--method', 'ldlq']);
    expect(l.status, l.stderr).toBe(0);
    expect(JSON.parse(readFileSync(join(ldlqOut, 'caldera.json'), 'utf8')).options).toEqual({
      windows: 4,
      length: 32,
      propagate: 'compressed',
      qBits: 2,
      ranks: {},
    });
  }, 120_000);
});

describe('caldera compress: the checkpoint keeps what a runtime needs of the source', () => {
  it('copies the chat template, generation config, special and added tokens, merges (core MODEL_SIDE_FILES)', async () => {
    const { dir: src } = await writeTinyModel(join(tmp, 'chat'), { seed: 12 });
    const files: Record<string, string> = {
      'chat_template.jinja': "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}",
      'generation_config.json': JSON.stringify({ eos_token_id: [0, 7], do_sample: false }),
      'special_tokens_map.json': JSON.stringify({ bos_token: '<s>', eos_token: '</s>' }),
      'added_tokens.json': JSON.stringify({ '<|im_end|>': 99 }),
      'merges.txt': '#version: 0.2\nĠ t\n',
    };
    for (const [f, text] of Object.entries(files)) writeFileSync(join(src, f), text);
    const out = join(tmp, 'chat-out');
    const r = run(['compress', src, '--out', out, ...FAST, '--rank', '8']);
    expect(r.status, r.stderr).toBe(0);
    for (const [f, text] of Object.entries(files)) expect(readFileSync(join(out, f), 'utf8'), f).toBe(text);
  }, 60_000);
});

describe('caldera compress: Ctrl-C while the model loads', () => {
  afterEach(() => vi.restoreAllMocks());
  it('loadModelShowing: an aborted load throws the signal’s reason, as the later phases do', async () => {
    const reason = new CalderaError('E_ABORTED', 'interrupted');
    await expect(
      loadModelShowing(referenceModelDir(), { signal: AbortSignal.abort(reason) }, false),
    ).rejects.toBe(reason);
  });

  it('SIGINT as soon as compress listens (before its load): exit 130, "interrupted", nothing written, the listener removed', async () => {
    const errors: string[] = [];
    vi.spyOn(console, 'error').mockImplementation((...x: unknown[]) => void errors.push(x.join(' ')));
    const { dir: src } = await writeTinyModel(join(tmp, 'sigint'), { seed: 15 });
    const out = join(tmp, 'sigint-out');
    const before = process.listenerCount('SIGINT');
    const stopWatching = sigintWhen(() => process.listenerCount('SIGINT') > before);
    const code = await main(['compress', src, '--out', out, ...FAST, '--rank', '8']);
    stopWatching();
    expect(code).toBe(130);
    expect(errors.join('\n')).toMatch(
      /caldera compress: interrupted before anything was committed; nothing written/,
    );
    expect(existsSync(out)).toBe(false);
    expect(existsSync(`${out}.partial`)).toBe(false);
    expect(process.listenerCount('SIGINT')).toBe(before);
    expect(process.listenerCount('SIGTERM')).toBe(0);
  }, 60_000);

  it('SIGINT while the checkpoint is written: exit 130, no checkpoint and no temporary left, the blocks kept to resume', async () => {
    const errors: string[] = [];
    vi.spyOn(console, 'error').mockImplementation((...x: unknown[]) => void errors.push(x.join(' ')));
    vi.spyOn(console, 'log').mockImplementation(() => undefined);
    const { dir: src } = await writeTinyModel(join(tmp, 'sigint-write'), { seed: 16 });
    const out = join(tmp, 'sigint-write-out');
    // as soon as the checkpoint's temporary directory appears (every block is done), a Ctrl-C
    const stopWatching = sigintWhenEntry(tmp, 'sigint-write-out.tmp-');
    const code = await main(['compress', src, '--out', out, ...FAST, '--rank', '8']);
    stopWatching();
    expect(code).toBe(130); // it was 0: the write and the scoring after it took no signal
    expect(errors.join('\n')).toMatch(
      /caldera compress: interrupted; \d+ compressed blocks kept in .*sigint-write-out\.partial/,
    );
    expect(
      readdirSync(tmp)
        .filter((f) => f.startsWith('sigint-write-out'))
        .sort(),
    ).toEqual(['sigint-write-out.partial']);
    const again = run(['compress', src, '--out', out, ...FAST, '--rank', '8']);
    expect(again.status, again.stderr).toBe(0);
    expect(existsSync(join(out, 'report.json'))).toBe(true);
  }, 60_000);

  it('SIGINT while the written checkpoint is scored: exit 130 saying it is in place without its report (it said "interrupted" alone)', async () => {
    const errors: string[] = [];
    vi.spyOn(console, 'error').mockImplementation((...x: unknown[]) => void errors.push(x.join(' ')));
    vi.spyOn(console, 'log').mockImplementation(() => undefined);
    const { dir: src } = await writeTinyModel(join(tmp, 'sigint-score'), { seed: 17 });
    const out = join(tmp, 'sigint-score-out');
    // as soon as the checkpoint is in place under its name, a Ctrl-C: its scoring is under way then
    const stopWatching = sigintWhen(() => existsSync(join(out, 'model.safetensors')));
    const code = await main(['compress', src, '--out', out, ...FAST, '--rank', '8']);
    stopWatching();
    expect(code).toBe(130);
    expect(errors.join('\n')).toMatch(
      /caldera compress: interrupted after writing .*sigint-score-out: the checkpoint is complete, but not its report\.json .* rerun the same command \(it resumes, rewrites it the same\) to score it/,
    );
    expect(readdirSync(out).sort()).not.toContain('report.json');
    const again = run(['compress', src, '--out', out, ...FAST, '--rank', '8']);
    expect(again.status, again.stderr).toBe(0);
    expect(existsSync(join(out, 'report.json'))).toBe(true);
  }, 60_000);
});

describe('caldera compress: the held-out perplexity', () => {
  it("is scored in eval's windows (256), whatever --length, and agrees with 'caldera eval' on the source", async () => {
    const { dir: src } = await writeTinyModel(join(tmp, 'ctx'), { seed: 13 });
    const out = join(tmp, 'ctx-out');
    const r = run(['compress', src, '--out', out, ...FAST, '--rank', '8']); // --length 32
    expect(r.status, r.stderr).toBe(0);
    const report = reportOf(r.stdout);
    expect(report.perplexity.context).toBe(256);
    const ev = run(['eval', src, '--text', heldOut, '--max-tokens', '128', '--json']);
    expect(ev.status, ev.stderr).toBe(0);
    const e = JSON.parse(ev.stdout) as { ppl: number; tokens: number; context: number };
    expect(e.context).toBe(256);
    expect(e.tokens).toBe(report.perplexity.tokens);
    expect(report.perplexity.original).toBeCloseTo(e.ppl, 9);
    // and the checkpoint's perplexity is eval's number on it too
    const ec = run(['eval', out, '--text', heldOut, '--max-tokens', '128', '--json']);
    expect(ec.status, ec.stderr).toBe(0);
    expect(report.perplexity.compressed).toBeCloseTo((JSON.parse(ec.stdout) as { ppl: number }).ppl, 9);
  }, 60_000);

  it('is scored on the source before any layer is replaced, kept in <out>.partial, and reused by a resumed run', async () => {
    const six = (await writeTinyModel(join(tmp, 'six'), { layers: 6, seed: 14 })).dir;
    const out = join(tmp, 'six-out');
    const partial = `${out}.partial`;
    const args = ['compress', six, '--out', out, ...FAST, '--windows', '8', '--length', '64'];
    await runUntil(args, join(partial, 'block-0000.json'), 'SIGKILL', 5);
    expect(existsSync(join(partial, 'block-0005.json'))).toBe(false);
    const file = join(partial, 'baseline.json');
    const saved = JSON.parse(readFileSync(file, 'utf8')) as { ppl: number; tokens: number };
    expect(Number.isFinite(saved.ppl)).toBe(true);
    // a resumed run reads it rather than scoring the source again: a marked value shows through
    writeFileSync(file, JSON.stringify({ ...saved, ppl: 12345.5 }));
    const resumed = run(args);
    expect(resumed.status, resumed.stderr).toBe(0);
    expect(reportOf(resumed.stdout).perplexity.original).toBe(12345.5);
    expect(existsSync(partial)).toBe(false);
    // a fresh run: the baseline comes before the first layer is compressed, and is the number saved above
    const fresh = run(['compress', six, '--out', join(tmp, 'six-fresh'), ...args.slice(4)]);
    expect(fresh.status, fresh.stderr).toBe(0);
    const events = fresh.stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => (JSON.parse(l) as { event: string }).event);
    expect(events.indexOf('baseline')).toBeGreaterThanOrEqual(0);
    expect(events.indexOf('baseline')).toBeLessThan(events.indexOf('progress'));
    expect(reportOf(fresh.stdout).perplexity.original).toBe(saved.ppl);
  }, 60_000);
});

describe('caldera compress: too few calibration rows', () => {
  it('warns (stderr, one line) when windows × length is below the widest linear input, suggesting --windows', async () => {
    const { dir: src } = await writeTinyModel(join(tmp, 'rows'), { seed: 15 });
    // 2 × 32 = 64 rows; down_proj takes 128 inputs
    const few = run(['compress', src, '--out', join(tmp, 'rows-few'), ...FAST, '--windows', '2']);
    expect(few.status, few.stderr).toBe(0);
    const lines = few.stderr.split('\n').filter((l) => l.includes('calibration rows'));
    expect(lines).toEqual([
      expect.stringMatching(
        /^warning: 2 windows × 32 tokens = 64 calibration rows, fewer than the 128 inputs of model\.layers\.0\.mlp\.down_proj: .*rank-deficient.*--windows 4 or more/,
      ),
    ]);
    // 4 × 32 = 128: enough
    const enough = run(['compress', src, '--out', join(tmp, 'rows-enough'), ...FAST]);
    expect(enough.status, enough.stderr).toBe(0);
    expect(enough.stderr).not.toMatch(/calibration rows/);
  }, 60_000);

  it("is silent for the reference model's default run (32 × 128 rows, widest input 768)", () => {
    const cfg = JSON.parse(readFileSync(join(referenceModelDir(), 'config.json'), 'utf8')) as {
      hidden_size: number;
      intermediate_size: number;
    };
    const layers = [
      { name: 'model.layers.0.self_attn.q_proj', inFeatures: cfg.hidden_size },
      { name: 'model.layers.0.mlp.down_proj', inFeatures: cfg.intermediate_size },
    ];
    expect(calibrationRowsWarning(32, 128, layers)).toBeNull();
    // Llama-2-7B's down_proj (11008 inputs) with the defaults: warned, with the windows that would do
    expect(calibrationRowsWarning(32, 128, [{ name: 'down_proj', inFeatures: 11008 }])).toMatch(
      /4096 calibration rows, fewer than the 11008 inputs of down_proj.*--windows 86 or more/,
    );
  });
});

describe('caldera compress: progress within a layer, blocks counted from 1', () => {
  afterEach(() => vi.restoreAllMocks());

  it('compressProgressLabel: the block from 1 of all, the layer and its share; none for a layer’s last step', () => {
    const base = { numBlocks: 2, layersDone: 3, layersTotal: 14, elapsedSeconds: 1 };
    expect(compressProgressLabel({ ...base, phase: 'capture', block: 0 })).toBe('capture block 1/2');
    expect(
      compressProgressLabel({
        ...base,
        phase: 'compress',
        block: 1,
        layer: 'model.layers.1.self_attn.q_proj',
        layerFraction: 0.375,
      }),
    ).toBe('compress block 2/2 self_attn.q_proj 37%');
    expect(
      compressProgressLabel({
        ...base,
        phase: 'compress',
        block: 1,
        layer: 'x.mlp.up_proj',
        layerFraction: 0,
      }),
    ).toBe('compress block 2/2 mlp.up_proj 0%');
    expect(
      compressProgressLabel({
        ...base,
        phase: 'compress',
        block: 1,
        layer: 'x.mlp.up_proj',
        layerFraction: 1,
      }),
    ).toBeNull();
  });

  it('--json: every layer reports its share after each CALDERA sub-step, from 0 to 1; block is the 0-based index', async () => {
    const { dir: src } = await writeTinyModel(join(tmp, 'progress-json'), { seed: 16 });
    const r = run(['compress', src, '--out', join(tmp, 'progress-json-out'), ...FAST, '--rank', '8']);
    expect(r.status, r.stderr).toBe(0);
    const events = r.stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((e) => e.event === 'progress' && e.phase === 'compress');
    const byLayer = new Map<string, { block: number; fractions: number[] }>();
    for (const e of events) {
      const l = byLayer.get(e.layer as string) ?? { block: e.block as number, fractions: [] };
      l.fractions.push(e.layerFraction as number);
      byLayer.set(e.layer as string, l);
    }
    expect(byLayer.size).toBe(14);
    for (const [name, l] of byLayer) {
      expect(l.fractions).toEqual([0, 0.5, 1]); // --outer-iters 1: the LR step, then Q
      expect(name).toContain(`model.layers.${l.block}.`);
    }
  }, 60_000);

  it('the bar (a terminal) names blocks from 1 and shows the running layer’s share', async () => {
    const { dir: src } = await writeTinyModel(join(tmp, 'progress-bar'), { seed: 17 });
    const writes: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation(((chunk: string | Uint8Array) => {
      writes.push(String(chunk));
      return true;
    }) as typeof process.stderr.write);
    vi.spyOn(console, 'log').mockImplementation(() => undefined);
    vi.spyOn(console, 'error').mockImplementation(() => undefined);
    // every update drawn: the bar redraws at most every 200 ms by Date.now
    let t = 0;
    vi.spyOn(Date, 'now').mockImplementation(() => (t += 1000));
    const tty = Object.getOwnPropertyDescriptor(process.stderr, 'isTTY');
    Object.defineProperty(process.stderr, 'isTTY', { value: true, configurable: true });
    let code: number | undefined;
    try {
      code = await main(['compress', src, '--out', join(tmp, 'progress-bar-out'), ...fast, '--rank', '8']);
    } finally {
      if (tty) Object.defineProperty(process.stderr, 'isTTY', tty);
      else delete (process.stderr as { isTTY?: boolean }).isTTY;
    }
    expect(code).toBe(0);
    const lines = writes.filter((w) => w.startsWith('\rcompress ')).map((w) => w.trimEnd());
    expect(lines.some((l) => l.includes('hashing the source tensors'))).toBe(true);
    expect(lines.some((l) => l.endsWith('compress block 1/2 self_attn.q_proj 0%'))).toBe(true);
    expect(lines.some((l) => l.endsWith('compress block 1/2 self_attn.q_proj 50%'))).toBe(true);
    expect(lines.some((l) => l.endsWith('compress block 2/2 mlp.down_proj 50%'))).toBe(true);
    expect(lines.some((l) => / block 0\//.test(l) || / 100%$/.test(l))).toBe(false);
    // the fill advances within a layer (half of the first of 14 layers: 1 of 28 cells), the counter by whole layers
    const half = lines.find((l) => l.endsWith('compress block 1/2 self_attn.q_proj 50%'))!;
    expect(half).toContain(` ${'█'.repeat(1)}${'░'.repeat(27)} 0/14 `);
  }, 60_000);
});
