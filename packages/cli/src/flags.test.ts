import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cast, openSafetensors, writeSafetensors, type Tensor } from '@caldera/core';
import { calderaCheckpointMeta } from '@caldera/lowrank';
import { referenceModelDir } from '@caldera/reference-model';
import { loadModel, type MemoryPlan } from '@caldera/runtime-node';
import { COMMANDS, specOf } from './cli.js';
import { parseArgs } from './args.js';
import { bin, inProcessCli } from './test-cli.js';
import { chooseRanks } from './commands/ranks.js';

// Every test here fails on the command line's options and values before any heavy work (at most a load of the
// embedded reference model), or runs a 3-second eval; main() runs in this process.

const commandsDir = fileURLToPath(new URL('./commands/', import.meta.url));

/** The top-level functions of the command sources: name → body, with the flags each reads and the names it uses. */
function sourceFunctions() {
  const fns = new Map<string, { file: string; body: string }>();
  const outside: string[] = [];
  for (const f of readdirSync(commandsDir).filter((f) => f.endsWith('.ts'))) {
    const src = readFileSync(join(commandsDir, f), 'utf8');
    let rest = src;
    for (const m of src.matchAll(/^(?:export )?(?:async )?function\*? (\w+)[\s\S]*?^\}$/gm)) {
      fns.set(m[1]!, { file: f, body: m[0] });
      rest = rest.replace(m[0], '');
    }
    outside.push(...[...reads(rest)].map(([n]) => `${f}: --${n} read outside a top-level function`));
  }
  return { fns, outside };
}

/** Flags read with a literal name: name → how ('value' by flagString/flagNumber/flags.get, 'switch' by flags.has). */
function reads(body: string): Map<string, 'value' | 'switch'> {
  const out = new Map<string, 'value' | 'switch'>();
  for (const m of body.matchAll(/\bflag(?:String|Number)\(\s*\w+\s*,\s*(['"`])([^'"`]+)\1/g))
    out.set(m[2]!, 'value');
  for (const m of body.matchAll(/\bflags\.get\(\s*(['"`])([^'"`]+)\1/g)) out.set(m[2]!, 'value');
  for (const m of body.matchAll(/\bflags\.has\(\s*(['"`])([^'"`]+)\1/g))
    if (!out.has(m[2]!)) out.set(m[2]!, 'switch');
  return out;
}

/** Flag reads whose name is not a literal (the static check below could not see them). */
function dynamicReads(src: string): string[] {
  return [
    ...src.matchAll(/\bflag(?:String|Number)\(\s*\w+\s*,\s*(?![\s'"`])[^)]*\)/g),
    ...src.matchAll(/\bflags\.(?:get|has)\(\s*(?![\s'"`])[^)]*\)/g),
  ].map((m) => m[0]);
}

/** What a command reads: the flags of its entry function and of every command-source function it names, transitively. */
function flagsReadBy(entry: string, fns: ReturnType<typeof sourceFunctions>['fns']) {
  const seen = new Set<string>();
  const todo = [entry];
  const flags = new Map<string, 'value' | 'switch'>();
  while (todo.length) {
    const name = todo.pop()!;
    if (seen.has(name)) continue;
    seen.add(name);
    const fn = fns.get(name);
    if (!fn) throw new Error(`no function ${name} in src/commands`);
    for (const [k, how] of reads(fn.body)) if (flags.get(k) !== 'value') flags.set(k, how);
    for (const other of fns.keys())
      if (other !== name && new RegExp(`\\b${other}\\b`).test(fn.body)) todo.push(other);
  }
  return { flags, functions: seen };
}

describe('every command declares its options in its help, and accepts nothing else', () => {
  it('each flag a command reads is in its --help (with or without a value as read) and each option there is read', () => {
    const { fns, outside } = sourceFunctions();
    expect(outside).toEqual([]);
    for (const f of readdirSync(commandsDir).filter((f) => f.endsWith('.ts')))
      expect(dynamicReads(readFileSync(join(commandsDir, f), 'utf8')), f).toEqual([]);
    for (const cmd of Object.keys(COMMANDS)) {
      const { flags, functions } = flagsReadBy(`${cmd}Command`, fns);
      const spec = specOf(cmd);
      expect(flags.size, `${cmd} reads no flag? (${[...functions].join(', ')})`).toBeGreaterThan(0);
      for (const [name, how] of flags) {
        expect(
          spec.options.get(name),
          `caldera ${cmd} reads --${name}, which its --help does not document`,
        ).toBe(how === 'value' ? 'value' : 'switch');
        expect(COMMANDS[cmd]!.help).toMatch(new RegExp(`--${name}\\b`));
      }
      for (const name of spec.options.keys())
        expect(flags.has(name), `caldera ${cmd} --help documents --${name}, which it never reads`).toBe(true);
    }
    // the commands behind the queue: compress reads the queue options through runOnQueue (queue.ts), worker is there
    expect(flagsReadBy('compressCommand', fns).flags.has('attempts')).toBe(true);
    expect(fns.get('workerCommand')!.file).toBe('queue.ts');
  });

  it('the help-derived specs: value options, switches and positionals', () => {
    expect(specOf('compress').options.get('bits')).toBe('value');
    expect(specOf('compress').options.get('plan-only')).toBe('switch');
    expect(specOf('compress').options.get('shard')).toBe('value');
    expect(specOf('finetune').options.get('half-base')).toBe('switch');
    // merge's help names compress's --shard and --propagate inside quoted examples: not merge options
    expect([...specOf('merge').options.keys()]).toEqual(['json']);
    expect(specOf('worker').positionals).toBe(0);
    for (const c of ['compress', 'eval', 'generate', 'inspect', 'export', 'finetune', 'train'])
      expect(specOf(c).positionals, c).toBe(1);
    expect(specOf('merge').positionals).toBe(2); // <out> [model]
    // of an option given twice the last value counts (a script's defaults, then its caller's), as documented
    const twice = parseArgs(['--windows', '4', '--windows=8', '--json', '--json'], specOf('compress'));
    expect(twice.flags.get('windows')).toBe('8');
    expect(twice.flags.get('json')).toBe(true);
  });
});

describe('caldera command lines', () => {
  /** Exit code, stderr and stdout of `caldera ...argv`, run in-process. */
  const run = inProcessCli();

  it('an unknown option is a usage error (exit 2) naming it, the closest option and the help, for every command', async () => {
    expect(await run('compress', '--bitz', '2')).toMatchObject({
      code: 2,
      stderr: "caldera compress: unknown option --bitz; did you mean --bits? (see 'caldera compress --help')",
    });
    expect((await run('eval', 'ck', '--txt', 'f')).stderr).toMatch(
      /unknown option --txt; did you mean --text\?/,
    );
    for (const cmd of Object.keys(COMMANDS)) {
      const r = await run(cmd, '--no-such-option', '1');
      expect(r.code, cmd).toBe(2);
      expect(r.stderr).toBe(`caldera ${cmd}: unknown option --no-such-option (see 'caldera ${cmd} --help')`);
    }
    expect((await run('worker', '--queue-nme', 'x')).stderr).toMatch(/did you mean --queue-name\?/);
    expect((await run('eval', '-text', 'f')).stderr).toMatch(/unknown option -text; did you mean --text\?/);
    expect((await run('merge', 'out', '--shard', '0/2')).code).toBe(2);
  });

  it('switches take no value, value options need one, extra positionals are refused (exit 2)', async () => {
    expect(await run('inspect', '--json=yes')).toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/--json takes no value/),
    });
    // `--json x y`: x is the model (a switch never swallows it), y is one argument too many
    expect(await run('inspect', '--json', 'x', 'y')).toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/unexpected argument 'y'/),
    });
    expect(await run('eval', '--context')).toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/--context needs a value/),
    });
    expect(await run('worker', 'redis://h')).toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/unexpected argument 'redis:\/\/h'/),
    });
    expect((await run('eval', '--help', '--bitz')).stdout).toMatch(/^caldera eval/);
  });

  const value = async (argv: string[], message: RegExp) => {
    const r = await run(...argv);
    expect(r.stderr, argv.join(' ')).toMatch(message);
    expect(r.code).toBe(1);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
  };

  it('eval: --max-tokens, --context and --stride are checked, naming the flag, the range and the value', async () => {
    await value(['eval', '--max-tokens', '-5'], /E_VALUE: --max-tokens must be a positive integer, got -5$/);
    await value(['eval', '--stride', '0'], /--stride must be a positive integer, got 0/);
    await value(
      ['eval', '--context', '8', '--stride', '9'],
      /--stride must be an integer in \[1, 8\].*got 9/,
    );
    // the range of --context is the model's: the reference model has 512 positions
    await value(
      ['eval', '--context', '100000', '--threads', '1'],
      /--context must be an integer in \[2, 512\] \(the model's max positions\), got 100000/,
    );
    await value(
      ['eval', '--context', '0', '--threads', '1'],
      /--context must be an integer in \[2, 512\].*got 0/,
    );
    // before the model is opened (a missing one here) and the text tokenized
    await value(
      ['eval', join(tmpdir(), 'no-such-model'), '--max-tokens', '1'],
      /E_VALUE: --max-tokens 1 leaves too few tokens; perplexity needs at least 2$/,
    );
  });

  it("the queue options: --attempts and --queue-name only with --queue, and the worker's numbers within their ranges", async () => {
    await value(
      ['compress', '--attempts', 'abc', '--queue-name', 'x'],
      /E_VALUE: they set the jobs of a run on a Redis queue: --queue-name, --attempts would be ignored; give --queue URL with them$/,
    );
    await value(
      ['compress', '--queue', 'redis://127.0.0.1:1', '--attempts', '0'],
      /--attempts must be a positive integer, got 0/,
    );
    const worker = ['worker', '--queue', 'redis://127.0.0.1:1'];
    // a lock above 2³¹ − 1 ms: Node fired BullMQ's timers every millisecond
    await value(
      [...worker, '--lock-seconds', '2200000'],
      /--lock-seconds must be a number in \[1, 2147483\], got 2200000/,
    );
    await value(
      [...worker, '--lock-seconds', '0.5'],
      /--lock-seconds must be a number in \[1, 2147483\], got 0\.5/,
    );
    await value(
      [...worker, '--concurrency', '1e12'],
      /--concurrency must be an integer in \[1, 256\], got 1000000000000/,
    );
    // names BullMQ refuses: a stack trace from inside the run (exit 70), compress's after the hashing
    for (const name of ['a:b', ''])
      for (const command of [
        [...worker],
        ['compress', '--queue', 'redis://127.0.0.1:1', '--propagate', 'original'],
      ])
        await value(
          [...command, '--queue-name', name],
          /E_VALUE: --queue-name must be a non-empty name without ':' \(Redis key separator\), got "(a:b|)"/,
        );
  });

  it('generate: sampling options and --max-tokens are checked before the model loads', async () => {
    await value(['generate', '--temperature', '-1'], /--temperature must be a number ≥ 0, got -1/);
    await value(['generate', '--top-p', '5'], /--top-p must be a number in \(0, 1\], got 5/);
    await value(['generate', '--top-p', '0'], /--top-p must be a number in \(0, 1\], got 0/);
    await value(['generate', '--top-k', '2.5'], /--top-k must be a non-negative integer, got 2.5/);
    await value(
      ['generate', '--repetition-penalty', '0'],
      /--repetition-penalty must be a number > 0, got 0/,
    );
    await value(['generate', '--max-tokens', '-1'], /--max-tokens must be a positive integer, got -1/);
    await value(['generate', '--seed', '-3'], /--seed must be an integer in \[0, 4294967295\], got -3/);
    expect(COMMANDS.generate!.help).toMatch(/\[--prompt TEXT\][\s\S]*--prompt TEXT .*\(default "The"\)/);
  });

  it('finetune and train: learning rate, batch, ranks, steps and sequence length', async () => {
    await value(['finetune', '--lr', '-1'], /--lr must be a number > 0, got -1/);
    await value(['finetune', '--batch', '0'], /--batch must be a positive integer, got 0/);
    await value(['finetune', '--ft-rank', '0'], /--ft-rank must be a positive integer, got 0/);
    for (const f of ['--steps', '--eval-every', '--patience'])
      await value(['finetune', f, '0'], new RegExp(`${f} must be a positive integer, got 0`));
    // past 2⁵³ an integer is not exact (train took --steps 1e20 and showed an ETA of 8.6e18 s)
    await value(
      ['finetune', '--steps', '1e20'],
      /--steps must be a positive integer below 2⁵³, got 100000000000000000000/,
    );
    // --seq-len against the checkpoint's max positions: a "checkpoint" of the reference model with no compressed layer
    const ckpt = mkdtempSync(join(tmpdir(), 'caldera-flags-ckpt-'));
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json'])
      copyFileSync(join(referenceModelDir(), f), join(ckpt, f));
    writeFileSync(join(ckpt, 'caldera.json'), JSON.stringify(calderaCheckpointMeta({})));
    await value(
      ['finetune', ckpt, '--seq-len', '4096'],
      /--seq-len must be an integer in \[2, 512\] \(the model's max positions\), got 4096/,
    );
    expect(readdirSync(join(ckpt, '..')).filter((f) => f.startsWith(`${ckpt.split('/').pop()}-ft`))).toEqual(
      [],
    );
    const out = join(ckpt, '..', 'never-written');
    await value(
      ['train', '--out', out, '--seq-len', '100000'],
      /--seq-len must be an integer in \[2, 512\].*got 100000/,
    );
    await value(['train', '--out', out, '--lr', '0'], /--lr must be a number > 0, got 0/);
    await value(['train', '--out', out, '--batch', '0'], /--batch must be a positive integer, got 0/);
  });

  it('compress: --rank must be an integer; --bits and --max-bytes must be within what the layers allow', async () => {
    // the limits themselves (chooseRanks), on the reference model's 28 layers: 2 bits (Q) … 7.83 (full rank)
    const shapes = [0, 1, 2, 3].flatMap((b) =>
      [
        ['q', 256, 256],
        ['k', 128, 256],
        ['v', 128, 256],
        ['o', 256, 256],
        ['gate', 768, 256],
        ['up', 768, 256],
        ['down', 256, 768],
      ].map(([p, m, n]) => ({ name: `model.layers.${b}.${p}`, m: m as number, n: n as number })),
    );
    const widths = { qBits: 2, lBits: 4, rBits: 4 };
    expect(() => chooseRanks(shapes, { widths, rank: 2.5 })).toThrow(/--rank must be a non-negative integer/);
    expect(() => chooseRanks(shapes, { widths, bits: 7.84 })).toThrow(/--bits must be at most 7\.83/);
    expect(Object.values(chooseRanks(shapes, { widths, bits: 7.83 })).every((k) => k > 0)).toBe(true);
    expect(() => chooseRanks(shapes, { widths, maxBytes: 786431 })).toThrow(
      /--max-bytes must be at least 786432/,
    );
    expect(Object.values(chooseRanks(shapes, { widths, maxBytes: 786432 }))).toEqual(new Array(28).fill(0));
    // the same through the command line, before any compression work (nothing is written)
    const out = join(mkdtempSync(join(tmpdir(), 'caldera-flags-')), 'never-written');
    const c = ['compress', '--threads', '1', '--out', out];
    await value([...c, '--rank', '2.5'], /--rank must be a non-negative integer, got 2.5/);
    await value([...c, '--max-bytes', '-1'], /--max-bytes must be a positive integer, got -1/);
    await value(
      [...c, '--bits', '100'],
      /--bits must be at most 7\.83, .*got 100; a larger target cannot be met/,
    );
    await value([...c, '--bits', '1'], /--bits must be in \[2, 7\.83\] .*got 1/);
    await value([...c, '--max-bytes', '10'], /--max-bytes must be at least 786432, .*Q alone.*got 10/);
    // a budget with no layer left to spend it on (--layer-rank matches them all) is a mistake; without one, fine
    const all: [string, number][] = [['model.', 16]];
    expect(() => chooseRanks(shapes, { widths, overrides: all, bits: 2.4, budgetFlag: '--bits' })).toThrow(
      /--layer-rank fixes the rank of every layer, so --bits has no layer to apply to/,
    );
    expect(Object.values(chooseRanks(shapes, { widths, overrides: all, bits: 2.4 }))).toEqual(
      new Array(28).fill(16),
    );
    await value(
      [...c, '--layer-rank', 'mlp=32,self_attn=16', '--bits', '2.4'],
      /--layer-rank fixes the rank of every layer, so --bits has no layer to apply to/,
    );
    // the rank-0 baselines have no budget to spend: a rank option is a mistake, not something to ignore
    await value([...c, '--method', 'ldlq', '--bits', '2.4'], /--method ldlq has no low-rank part.*--bits/);
    await value([...c, '--method', 'rtn', '--rank', '8'], /--method rtn has no low-rank part.*--rank/);
    expect(readdirSync(join(out, '..'))).toEqual([]);
  });

  it("eval's defaults score what compress and finetune report: 8192 tokens of the test split in windows of 256", async () => {
    const r = await run('eval', '--json');
    expect(r.code, r.stderr).toBe(0);
    const e = JSON.parse(r.stdout) as { tokens: number; context: number; ppl: number };
    // 8192 tokens in 32 windows of 256, the first token of each unscored: compress's report says 8160 tokens too
    expect(e).toMatchObject({ tokens: 8160, context: 256 });
    expect(COMMANDS.eval!.help).toMatch(/--max-tokens N .*\(default 8192\)/);
    expect(COMMANDS.compress!.help).toMatch(/--eval-tokens N .*\(default 8192\)/);
    // the reference model's original perplexity in compress's report (docs/guide/performance.md: 81.96)
    expect(e.ppl).toBeCloseTo(81.96, 2);
  });

  it('inspect reports dense layers as stored in the file (bf16: 16 bits/weight), not as held in memory', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'caldera-flags-bf16-'));
    for (const f of ['config.json', 'tokenizer.json'])
      copyFileSync(join(referenceModelDir(), f), join(dir, f));
    const src = await openSafetensors(join(referenceModelDir(), 'model.safetensors'));
    const t: Record<string, Tensor> = {};
    try {
      for (const { name } of src.header.tensors) t[name] = cast(await src.readTensor(name), 'bf16');
    } finally {
      await src.close();
    }
    await writeSafetensors(join(dir, 'model.safetensors'), t);
    const r = await run('inspect', dir, '--json');
    expect(r.code, r.stderr).toBe(0);
    const info = JSON.parse(r.stdout) as {
      layers: { kind: string; bitsPerWeight: number; shape: string }[];
      linearBytes: number;
      linearMemoryBytes: number;
      memoryBytes: number;
      linearBitsPerWeight: number;
    };
    const params = info.layers.reduce(
      (s, l) =>
        s +
        l.shape
          .split('x')
          .map(Number)
          .reduce((a, b) => a * b),
      0,
    );
    expect(info.layers.every((l) => l.kind === 'bf16' && l.bitsPerWeight === 16)).toBe(true);
    expect(info.linearBytes).toBe(2 * params);
    expect(info.linearBitsPerWeight).toBe(16);
    // in memory: as runtime-node holds the layers (it keeps bf16 as stored, 16 bits; it once widened it to f32) —
    // its memory plan, whose bytes memory-plan.test.ts (runtime-node) measures on the loaded layers
    let plan: MemoryPlan | undefined;
    await loadModel(dir, { onPlan: (p) => (plan = p) });
    expect(info.linearMemoryBytes).toBe(plan!.parts.linears + plan!.parts.arenas);
    expect(info.memoryBytes).toBe(plan!.weightBytes);
  });
  it('values checked before work: compress --seed and --length, train validation length, --tokenizer on a directory', async () => {
    const never = join(mkdtempSync(join(tmpdir(), 'caldera-follow-')), 'never-written');
    const c = ['compress', '--threads', '1', '--out', never];
    expect((await run(...c, '--seed', '1.5')).stderr).toMatch(
      /--seed must be an integer in \[0, 4294967295\], got 1\.5/,
    );
    expect((await run(...c, '--length', '100000')).stderr).toMatch(
      /--length must be an integer in \[2, 512\] \(the model's max positions\), got 100000/,
    );
    const t = await run('train', '--out', never, '--valid-tokens', '10', '--steps', '1');
    expect(t.code).toBe(1);
    expect(t.stderr).toMatch(/validation needs at least --seq-len \+ 1 = 129 tokens: --valid-tokens is 10$/m);
    const tok = await run('eval', '--tokenizer', 'tokenizer.bin', '--max-tokens', '16');
    expect(tok.stderr).toMatch(/E_VALUE: --tokenizer applies to a llama2\.c model/);
    expect(existsSync(never)).toBe(false);
  });

  it('-h as an option value is the value, not a request for help', async () => {
    const r = await run('generate', '--prompt', '-h', '--max-tokens', '1', '--json', '--threads', '1');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).not.toMatch(/^caldera generate/);
    expect((await run('generate', '-h')).stdout).toMatch(/^caldera generate/);
  });
});

describe('calibration text files', () => {
  it('a .jsonl line without a "text" (or "content") string is an E_FORMAT naming the file and line', async () => {
    const { readDocuments } = await import('./commands/common.js');
    const dir = mkdtempSync(join(tmpdir(), 'caldera-jsonl-'));
    const good = join(dir, 'good.jsonl');
    writeFileSync(good, '{"text": "one"}\n\n{"content": "two"}\n');
    expect(await readDocuments(good)).toEqual(['one', 'two']);
    const bad = join(dir, 'bad.jsonl');
    writeFileSync(bad, '{"text": "one"}\n{"body": "two"}\n');
    await expect(readDocuments(bad)).rejects.toThrow(/E_FORMAT.*bad\.jsonl:2 has no "text"/);
    writeFileSync(bad, '{"text": "one"}\n\n\n{"body": "two"}\n');
    await expect(readDocuments(bad)).rejects.toThrow(/bad\.jsonl:4 has no "text"/); // blank lines count
    writeFileSync(bad, '{"text": 5}\n');
    await expect(readDocuments(bad)).rejects.toThrow(/E_FORMAT.*bad\.jsonl:1/);
  });

  it("whole: the file as one document — its text as is, a .jsonl's texts (empty ones too) joined by blank lines", async () => {
    const { readDocuments } = await import('./commands/common.js');
    const dir = mkdtempSync(join(tmpdir(), 'caldera-whole-'));
    const txt = join(dir, 'a.txt');
    writeFileSync(txt, ' one\r\n\r\n\ntwo \n');
    expect(await readDocuments(txt)).toEqual([' one', 'two \n']);
    expect(await readDocuments(txt, { whole: true })).toEqual([' one\n\n\ntwo \n']);
    const jsonl = join(dir, 'a.jsonl');
    // as "\n\n".join(rows) of a Hugging Face split whose empty rows are kept
    writeFileSync(jsonl, '{"text": " = A = "}\n{"text": ""}\n\n{"content": "b"}\n');
    expect(await readDocuments(jsonl)).toEqual([' = A = ', 'b']);
    expect(await readDocuments(jsonl, { whole: true })).toEqual([' = A = \n\n\n\nb']);
    writeFileSync(txt, ' \n\n ');
    expect(await readDocuments(txt, { whole: true })).toEqual([]);
  });
});

describe('Node without process.getBuiltinModule (20.0–20.15, 22.0–22.2)', () => {
  it('--threads above 1 says that everything runs on one thread (the pools need it: they ran on one, unsaid)', () => {
    const evalArgs = [bin, 'eval', '--max-tokens', '64', '--threads', '2'];
    const older = spawnSync(
      process.execPath,
      ['--import', 'data:text/javascript,delete process.getBuiltinModule', ...evalArgs],
      { encoding: 'utf8', timeout: 60_000 },
    );
    expect(older.status, older.stderr).toBe(0);
    expect(older.stderr).toMatch(
      /^caldera: --threads 2: Node v[\d.]+ has no process\.getBuiltinModule \(Node 20\.16\+ in the 20 line, or 22\.3\+, has\), so this runs on one thread$/m,
    );
    const current = spawnSync(process.execPath, evalArgs, { encoding: 'utf8', timeout: 60_000 });
    expect(current.status, current.stderr).toBe(0);
    expect(current.stderr).not.toMatch(/getBuiltinModule/);
    expect(current.stdout).toBe(older.stdout); // the same numbers, on one thread or two
  });
});
