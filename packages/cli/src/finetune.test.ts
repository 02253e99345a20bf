import { describe, expect, it } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openSafetensors } from '@caldera/core';
import { referenceTextPath } from '@caldera/reference-model';
import { loadModel } from '@caldera/runtime-node';
import { inProcessCli, runCli, runUntil, sigintWhenEntry } from './test-cli.js';
import { writeTinyModel } from './test-models.js';

const run = (args: string[]) => runCli(args, 300_000);

// Small settings: a compress of the reference model at rank 8 and a short fine-tune, each well under a minute here.
const COMPRESS = [
  '--rank',
  '8',
  '--windows',
  '4',
  '--length',
  '64',
  '--outer-iters',
  '1',
  '--lplr-iters',
  '1',
];
const FINETUNE = [
  '--ft-rank',
  '4',
  '--steps',
  '16',
  '--batch',
  '2',
  '--seq-len',
  '64',
  '--eval-every',
  '8',
  '--valid-tokens',
  '512',
  '--eval-tokens',
  '1024',
  '--json',
];

async function tensorsOf(dir: string): Promise<Map<string, Buffer>> {
  const r = await openSafetensors(join(dir, 'model.safetensors'));
  const out = new Map<string, Buffer>();
  try {
    for (const t of r.header.tensors) {
      const v = await r.readTensor(t.name);
      out.set(t.name, Buffer.from(v.data.buffer, v.data.byteOffset, v.data.byteLength));
    }
  } finally {
    await r.close();
  }
  return out;
}

describe('caldera finetune', () => {
  it('fine-tunes L_ft/R_ft of a compressed model: Q codes byte-identical, loads, resumes after SIGINT identically', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'caldera-ft-'));
    const ckpt = join(dir, 'ckpt');
    const c = run(['compress', '--out', ckpt, ...COMPRESS, '--eval-tokens', '256', '--json']);
    expect(c.status, c.stderr).toBe(0);
    // a text too short to score or validate: the option and its file named (was perplexity's "needs at least 2
    // tokens, got 0" and "validation text has 0 tokens"), nothing written
    const empty = join(dir, 'empty.txt');
    writeFileSync(empty, '');
    for (const [flag, need] of [
      ['--eval', 'perplexity needs at least 2'],
      ['--valid', 'validation needs at least --seq-len \\+ 1 = 65'],
    ] as const) {
      const e = run(['finetune', ckpt, '--out', join(dir, 'never'), ...FINETUNE, flag, empty]);
      expect(e.status, flag).toBe(1);
      expect(e.stderr).toMatch(new RegExp(`E_VALUE: ${flag} .*empty\\.txt has 0 tokens; ${need}`));
    }
    const ce = run(['compress', '--out', join(dir, 'never'), ...COMPRESS, '--eval', empty]);
    expect(ce.status).toBe(1);
    expect(ce.stderr).toMatch(/E_VALUE: --eval .*empty\.txt has 0 tokens; perplexity needs at least 2/);
    expect(existsSync(join(dir, 'never'))).toBe(false);

    const whole = join(dir, 'whole');
    const r = run(['finetune', ckpt, '--out', whole, ...FINETUNE]);
    expect(r.status, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(report.event).toBe('done');
    expect(report.layers).toBe(28);
    expect(report.bestValLoss).toBeLessThanOrEqual(report.initialValLoss); // best weights are kept
    expect(Number.isFinite(report.perplexity.after)).toBe(true);

    const before = await tensorsOf(ckpt);
    const after = await tensorsOf(whole);
    const meta = JSON.parse(readFileSync(join(whole, 'caldera.json'), 'utf8'));
    for (const [prefix, layer] of Object.entries(meta.layers) as [
      string,
      { rank: number; ftRank: number },
    ][]) {
      expect(layer.ftRank).toBe(4);
      expect(layer.rank).toBe(8);
      expect(after.get(`${prefix}.caldera.Q`)!.equals(before.get(`${prefix}.caldera.Q`)!)).toBe(true);
      expect(after.get(`${prefix}.caldera.SU`)!.equals(before.get(`${prefix}.caldera.SU`)!)).toBe(true);
      expect(after.has(`${prefix}.caldera.L_ft`)).toBe(true);
      // the quantized part keeps rows 4..7 of the original L codes byte for byte
      const l0 = before.get(`${prefix}.caldera.L`)!;
      expect(after.get(`${prefix}.caldera.L`)!.equals(l0.subarray(l0.length / 2))).toBe(true);
    }
    const { model } = await loadModel(whole);
    expect(model.forward([1, 2, 3]).every(Number.isFinite)).toBe(true);

    // fine-tuned again with a smaller --ft-rank: the rank already trained stays trainable (f32 factors do not go back
    // to codes), and that is the rank recorded; the first run's record is kept under `previous`
    const twice = join(dir, 'twice');
    const r2 = run([
      'finetune',
      whole,
      '--out',
      twice,
      ...FINETUNE,
      '--ft-rank',
      '2',
      '--steps',
      '2',
      '--eval-every',
      '2',
    ]);
    expect(r2.status, r2.stderr).toBe(0);
    expect(JSON.parse(r2.stdout.trim().split('\n').pop()!).ftRank).toBe(4);
    const meta2 = JSON.parse(readFileSync(join(twice, 'caldera.json'), 'utf8'));
    expect(meta2.options.finetune).toMatchObject({
      ftRank: 4,
      steps: 2,
      previous: { ftRank: 4, steps: report.steps },
    });
    for (const layer of Object.values(meta2.layers) as { ftRank: number }[]) expect(layer.ftRank).toBe(4);

    // interrupted with SIGINT once the first validation state is saved, then resumed: same bytes
    const resumed = join(dir, 'resumed');
    const state = join(`${resumed}.partial`, 'finetune-state.bin');
    const code = await runUntil(['finetune', ckpt, '--out', resumed, ...FINETUNE], state, 'SIGINT', 20);
    expect(code).toBe(130);
    expect(existsSync(join(resumed, 'model.safetensors'))).toBe(false); // nothing half-written
    // other options would mix two runs: refused, naming what differs, the state untouched
    const saved = readFileSync(state);
    const other = run(['finetune', ckpt, '--out', resumed, ...FINETUNE, '--lr', '0.02', '--patience', '9']);
    expect(other.status).toBe(1);
    // (every setting that differs, the trainer's and the fine-tuning's, in one refusal)
    expect(other.stderr).toMatch(
      /holds the state of a fine-tuning run with other settings: --lr \(0\.01 then, 0\.02 now\); --patience \(\d+ then, 9 now\)/,
    );
    expect(readFileSync(state).equals(saved)).toBe(true);
    const patience = run(['finetune', ckpt, '--out', resumed, ...FINETUNE, '--patience', '9']);
    expect(patience.stderr).toMatch(/fine-tuning run with other settings: --patience \(\d+ then, 9 now\)/);
    // what a run killed while it wrote the checkpoint left beside --out: removed under <out>.lock, itself released
    mkdirSync(`${resumed}.tmp-0badf00d`);
    const again = run(['finetune', ckpt, '--out', resumed, ...FINETUNE]);
    expect(again.status, again.stderr).toBe(0);
    expect(readdirSync(dir).filter((f) => f.startsWith('resumed.'))).toEqual([]);
    expect(
      readFileSync(join(resumed, 'model.safetensors')).equals(readFileSync(join(whole, 'model.safetensors'))),
    ).toBe(true);
    expect(existsSync(`${resumed}.partial`)).toBe(false);
  }, 600_000);

  it('fails clearly on a directory that is not a CALDERA checkpoint', () => {
    const r = run(['finetune', '/nonexistent/ckpt']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/not a CALDERA checkpoint/);
    // before anything is read: a trainable rank with --signs would be ignored
    const both = run(['finetune', '/nonexistent/ckpt', '--signs', '--ft-rank', '8']);
    expect(both.status).toBe(1);
    expect(both.stderr).toMatch(
      /E_VALUE: --signs trains the sign vectors SU, SV, not the factors: --ft-rank would be ignored/,
    );
    // as are the factors' memory options (accepted and ignored before)
    const memory = run(['finetune', '/nonexistent/ckpt', '--signs', '--half-base', '--checkpoint']);
    expect(memory.stderr).toMatch(
      /not the factors: --half-base, --checkpoint would be ignored; give one of them/,
    );
  });

  it('trains the sign vectors against the teacher (--signs): only SU/SV change, and the result loads', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'caldera-signs-'));
    const ckpt = join(dir, 'ckpt');
    expect(run(['compress', '--out', ckpt, ...COMPRESS, '--eval-tokens', '256', '--json']).status).toBe(0);
    // a teacher of another vocabulary: refused once both are loaded, before the baseline (an E_SHAPE inside the loss
    // after it, for the factors)
    const { dir: wide } = await writeTinyModel(join(dir, 'wide-teacher'), { vocab: 2112 });
    const wrong = run(['finetune', ckpt, '--out', join(dir, 'never'), '--teacher', wide, '--json']);
    expect(wrong.status).toBe(1);
    expect(wrong.stderr).toMatch(
      /E_VALUE: --teacher .*wide-teacher: its vocabulary of 2112 tokens differs from the model's 2048/,
    );
    expect(wrong.stdout).not.toMatch(/baseline/);
    const out = join(dir, 'signs');
    const r = run([
      'finetune',
      ckpt,
      '--signs',
      '--out',
      out,
      // (no --ft-rank: the signs train no factors)
      ...FINETUNE.slice(2).map((f) => (f === '16' ? '8' : f)),
    ]);
    expect(r.status, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(report.bestValLoss).toBeLessThan(report.initialValLoss); // distillation loss against the original model
    const before = await tensorsOf(ckpt);
    const after = await tensorsOf(out);
    let changedSigns = 0;
    for (const [name, bytes] of after) {
      if (/\.caldera\.S[UV]$/.test(name)) changedSigns += bytes.equals(before.get(name)!) ? 0 : 1;
      else expect(bytes.equals(before.get(name)!), name).toBe(true);
    }
    expect(changedSigns).toBeGreaterThan(0);
    const { model } = await loadModel(out);
    expect(model.forward([1, 2, 3]).every(Number.isFinite)).toBe(true);
  }, 300_000);

  it('trains a model from scratch (caldera train) into a loadable Hugging Face directory', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'caldera-train-')), 'model');
    // what a train killed while it wrote the model left beside --out: removed under <out>.lock, itself released
    mkdirSync(`${out}.tmp-0badf00d`);
    const r = run([
      'train',
      '--out',
      out,
      '--steps',
      '6',
      '--batch',
      '1',
      '--seq-len',
      '32',
      '--warmup',
      '1',
    ]);
    expect(r.status, r.stderr).toBe(0);
    const log = readFileSync(join(out, 'training-log.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(log.length).toBe(6);
    expect(log[0].loss).toBeGreaterThan(7); // ≈ ln 2048 at initialisation
    expect(typeof log[5].valLoss).toBe('number');
    const { model, config } = await loadModel(out);
    expect(config.hiddenSize).toBe(256);
    expect(model.forward([1, 2, 3]).every(Number.isFinite)).toBe(true);
    expect(existsSync(`${out}.partial`)).toBe(false);
    expect(readdirSync(dirname(out))).toEqual(['model']);
    // activation checkpointing recomputes blocks in the backward: the same weights, byte for byte
    const out2 = join(dirname(out), 'model-ckpt');
    const args = ['--steps', '6', '--batch', '1', '--seq-len', '32', '--warmup', '1', '--checkpoint'];
    const r2 = run(['train', '--out', out2, ...args]);
    expect(r2.status, r2.stderr).toBe(0);
    expect(
      readFileSync(join(out2, 'model.safetensors')).equals(readFileSync(join(out, 'model.safetensors'))),
    ).toBe(true);
  }, 300_000);

  it('SIGINT in the middle of a long train step stops at once (exit 130) and saves the state before that step', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'caldera-train-')), 'model');
    // a step of a million sequences runs for hours: the signal must be seen inside it, not after it
    const args = ['train', '--out', out, '--steps', '2', '--batch', '1000000', '--seq-len', '32'];
    const t0 = performance.now();
    // the empty log is written just before the first step; the signal comes a second into that step
    const code = await runUntil(args, join(`${out}.partial`, 'training-log.jsonl'), 'SIGINT', 10, 1000);
    expect(code).toBe(130);
    expect(performance.now() - t0).toBeLessThan(60_000);
    expect(existsSync(join(`${out}.partial`, 'train-state.bin'))).toBe(true);
    expect(existsSync(out)).toBe(false);
    // the saved state is that of step 0: a run with other settings is refused, naming the step it would resume
    const other = run([...args.slice(0, -4), '--batch', '1', '--seq-len', '32']);
    expect(other.status).not.toBe(0);
    expect(other.stderr).toMatch(/--batch \(1000000 then, 1 now\)/);
  }, 120_000);

  it('SIGINT while train tokenizes its text: exit 130 at once, "interrupted", no <out>.lock left (it waited, then died holding it)', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'caldera-train-'));
    const out = join(tmp, 'model');
    // a text that takes seconds to tokenize (four times the reference training text)
    const data = join(tmp, 'big.txt');
    writeFileSync(data, readFileSync(referenceTextPath('train'), 'utf8').repeat(4));
    const args = ['train', '--out', out, '--steps', '2', '--data', data];
    // the signal 0.3 s after the lock is taken: the text is being tokenized then
    const t0 = performance.now();
    const code = await runUntil(args, `${out}.lock`, 'SIGINT', 10, 300);
    expect(code).toBe(130);
    expect(performance.now() - t0).toBeLessThan(15_000);
    expect(readdirSync(tmp)).toEqual(['big.txt']);
  }, 60_000);

  it('a resumed train logs each step once: the log is cut back to the step of the saved state', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'caldera-train-')), 'model');
    const args = ['train', '--out', out, '--steps', '40', '--batch', '1', '--seq-len', '16', '--warmup', '1'];
    const log = join(`${out}.partial`, 'training-log.jsonl');
    // interrupted a second into training: its state and its log as far as that state
    expect(await runUntil(args, log, 'SIGINT', 10, 1000)).toBe(130);
    const steps = () =>
      readFileSync(log, 'utf8')
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l).step as number);
    const saved = steps().length;
    expect(steps()).toEqual(Array.from({ length: saved }, (_, i) => i + 1));
    expect(saved).toBeLessThan(38);
    // as a run killed while it saved a later state leaves it: steps logged past the state's, a line cut short
    writeFileSync(
      log,
      readFileSync(log, 'utf8') +
        [1, 2].map((k) => JSON.stringify({ event: 'step', step: saved + k, loss: 1 }) + '\n').join('') +
        '{"event":"st',
    );
    // another validation setting is refused (the log switched texts midway), naming it
    const other = run([...args, '--eval-every', '5']);
    expect(other.status).toBe(1);
    expect(other.stderr).toMatch(/E_VALUE: .*--eval-every \(100 then, 5 now\)/);
    const r = run(args);
    expect(r.status, r.stderr).toBe(0);
    const final = readFileSync(join(out, 'training-log.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l).step as number);
    expect(final).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
  }, 300_000);

  it('--valid from a named pipe (read once): trains (the resume record is of the tokens scored, not a second read)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'caldera-train-fifo-'));
    const fifo = join(dir, 'valid.fifo');
    execFileSync('mkfifo', [fifo]);
    const valid = fileURLToPath(new URL('../../reference-model/data/valid.txt', import.meta.url));
    const writer = spawn('sh', ['-c', 'cat "$0" > "$1"', valid, fifo], { stdio: 'ignore' });
    const r = runCli(
      ['train', '--out', join(dir, 'm'), '--steps', '2', '--batch', '1', '--seq-len', '32', '--valid', fifo],
      60_000,
    );
    writer.kill();
    expect(r.signal, 'killed by the timeout: a second open of the pipe waited for a writer').toBeNull();
    expect(r.status, r.stderr).toBe(0);
  }, 90_000);

  it('trains, compresses and fine-tunes a model with an untied head, q/k/v biases and Llama 3 RoPE scaling', async () => {
    // a tiny model with the reference model's tokenizer and the three features the reference model lacks
    const dir = mkdtempSync(join(tmpdir(), 'caldera-scope-'));
    const template = join(dir, 'template');
    mkdirSync(template);
    const ref = fileURLToPath(new URL('../../reference-model/model/', import.meta.url));
    const config = JSON.parse(readFileSync(join(ref, 'config.json'), 'utf8'));
    Object.assign(config, {
      hidden_size: 32,
      intermediate_size: 64,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      head_dim: 8,
      tie_word_embeddings: false,
      attention_bias: true,
      dtype: 'bfloat16', // transformers 5's key: the trained model's must say what it stores
      rope_scaling: {
        rope_type: 'llama3',
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 64,
      },
    });
    writeFileSync(join(template, 'config.json'), JSON.stringify(config));
    for (const f of ['tokenizer.json', 'tokenizer_config.json'])
      copyFileSync(join(ref, f), join(template, f));
    const model = join(dir, 'model');
    const t = run(['train', template, '--out', model, '--steps', '4', '--batch', '1', '--seq-len', '32']);
    expect(t.status, t.stderr).toBe(0);
    const trained = await tensorsOf(model);
    expect(trained.has('lm_head.weight')).toBe(true);
    expect(trained.has('model.layers.1.self_attn.v_proj.bias')).toBe(true);
    expect(trained.has('model.layers.1.self_attn.o_proj.bias')).toBe(true); // Llama's attention_bias covers o_proj
    expect(trained.get('lm_head.weight')!.equals(trained.get('model.embed_tokens.weight')!)).toBe(false);
    const written = JSON.parse(readFileSync(join(model, 'config.json'), 'utf8'));
    expect([written.torch_dtype, written.dtype]).toEqual(['float16', 'float16']); // the template's 'bfloat16' stayed
    // a template whose vocab_size is below the tokenizer's ids: refused before any work, naming the file and the id
    // (it failed when training reached the id, hours in for a real run)
    writeFileSync(join(template, 'config.json'), JSON.stringify({ ...config, vocab_size: 1000 }));
    const small = join(dir, 'small-vocab');
    const v = run(['train', template, '--out', small, '--steps', '4', '--batch', '1', '--seq-len', '32']);
    expect(v.status).toBe(1);
    expect(v.stderr).toMatch(
      /E_VALUE: --data .*train\.txt \(the model's vocab_size is 1000\): token id \d+ out of range \[0, 1000\)/,
    );
    expect(existsSync(`${small}.partial`)).toBe(false);
    writeFileSync(join(template, 'config.json'), JSON.stringify(config));

    const ckpt = join(dir, 'ckpt');
    const c = run(['compress', model, '--out', ckpt, ...COMPRESS, '--eval-tokens', '256', '--json']);
    expect(c.status, c.stderr).toBe(0);
    const tuned = join(dir, 'tuned');
    const f = run(['finetune', ckpt, '--out', tuned, ...FINETUNE]);
    expect(f.status, f.stderr).toBe(0);
    const report = JSON.parse(f.stdout.trim().split('\n').pop()!);
    expect(report.event).toBe('done');
    expect(report.layers).toBe(14);
    expect(report.bestValLoss).toBeLessThanOrEqual(report.initialValLoss);
    // the head and the biases are carried through unchanged; the model loads and runs
    const after = await tensorsOf(tuned);
    const before = await tensorsOf(ckpt);
    for (const name of ['lm_head.weight', 'model.layers.0.self_attn.q_proj.bias'])
      expect(after.get(name)!.equals(before.get(name)!), name).toBe(true);
    const loaded = await loadModel(tuned);
    expect(loaded.config.ropeScaling).not.toBe(null);
    expect(loaded.model.forward([1, 2, 3]).every(Number.isFinite)).toBe(true);
  }, 600_000);
});

describe('caldera train and finetune, interrupted while they write the model', () => {
  const cli = inProcessCli();
  it('SIGINT then removes what was written and keeps the finished state: a rerun writes the same model, training nothing', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'caldera-train-write-'));
    const args = ['--steps', '2', '--batch', '1', '--seq-len', '32', '--warmup', '1', '--json'];
    const whole = join(dir, 'whole');
    expect((await cli('train', '--out', whole, ...args)).code).toBe(0);
    const out = join(dir, 'model');
    const before = process.listenerCount('SIGINT');
    // as soon as the temporary model directory appears (the training is over), a Ctrl-C
    const stopWatching = sigintWhenEntry(dir, 'model.tmp-');
    const r = await cli('train', '--out', out, ...args);
    stopWatching();
    expect(r.code, r.stderr).toBe(130);
    expect(r.stderr).toMatch(
      /caldera train: interrupted while writing .*model; rerun the same command to write it/,
    );
    expect(readdirSync(dir).sort()).toEqual(['model.partial', 'whole']); // no half-written model, no temporary
    expect(process.listenerCount('SIGINT')).toBe(before);
    const again = await cli('train', '--out', out, ...args);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).not.toMatch(/"event":"step"/); // the finished state was resumed: nothing trained again
    expect(
      readFileSync(join(out, 'model.safetensors')).equals(readFileSync(join(whole, 'model.safetensors'))),
    ).toBe(true);
    const losses = (m: string) =>
      readFileSync(join(m, 'training-log.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as { loss: number }).loss);
    expect(losses(out)).toEqual(losses(whole));
    expect(readdirSync(dir).sort()).toEqual(['model', 'whole']);
  }, 120_000);

  it('finetune: the same (nothing written, the finished state kept, the rerun writes the same bytes)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'caldera-ft-write-'));
    const ckpt = join(dir, 'ckpt');
    expect((await cli('compress', '--out', ckpt, ...COMPRESS, '--eval-tokens', '256', '--json')).code).toBe(
      0,
    );
    const args = [...FINETUNE, '--steps', '4', '--eval-every', '2'];
    const whole = join(dir, 'whole');
    expect((await cli('finetune', ckpt, '--out', whole, ...args)).code).toBe(0);
    const out = join(dir, 'tuned');
    const stopWatching = sigintWhenEntry(dir, 'tuned.tmp-');
    const r = await cli('finetune', ckpt, '--out', out, ...args);
    stopWatching();
    expect(r.code, r.stderr).toBe(130);
    expect(r.stderr).toMatch(
      /caldera finetune: interrupted while writing .*tuned; state saved in .*tuned\.partial/,
    );
    expect(readdirSync(dir).sort()).toEqual(['ckpt', 'tuned.partial', 'whole']);
    const again = await cli('finetune', ckpt, '--out', out, ...args);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).not.toMatch(/"event":"step"/);
    expect(
      readFileSync(join(out, 'model.safetensors')).equals(readFileSync(join(whole, 'model.safetensors'))),
    ).toBe(true);
    expect(readdirSync(dir).sort()).toEqual(['ckpt', 'tuned', 'whole']);
  }, 300_000);
});
