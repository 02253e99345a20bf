import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Rng, writeSafetensors, type CalderaLayerMeta, type Tensor } from '@caldera/core';
import { calderaCheckpointMeta, randomDecomposition, toCheckpointTensors } from '@caldera/lowrank';
import {
  blockLinearNames,
  Llama2cTokenizer,
  loadLlama2c,
  loadTokenizer,
  perplexity,
  planLlama2cMemory,
} from '@caldera/runtime-node';
import { runCli } from './test-cli.js';
import { writeTinyModel } from './test-models.js';

const run = (args: string[]) => runCli(args, 60_000);

/** A tiny random llama2.c model (dim 16, 2 layers, vocab 262: 3 specials + 256 bytes + 3 pieces) and tokenizer. */
function tinyLlama2c(): string {
  const dir = mkdtempSync(join(tmpdir(), 'caldera-cli-run-'));
  const [dim, hidden, layers, heads, kv, seq] = [16, 32, 2, 4, 2, 64];
  const pieces = ['<unk>', '<s>', '</s>'];
  for (let b = 0; b < 256; b++) pieces.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  pieces.push(' ', 'a', ' a');
  const vocab = pieces.length;
  const kvDim = (dim / heads) * kv;
  const floats =
    vocab * dim +
    layers * (2 * dim + 2 * dim * dim + 2 * dim * kvDim + 3 * dim * hidden) +
    dim +
    seq * (dim / heads);
  const w = new Rng(1).fillNormal(new Float32Array(floats), 0, 0.3);
  const header = new Int32Array([dim, hidden, layers, heads, kv, vocab, seq]);
  writeFileSync(join(dir, 'model.bin'), Buffer.concat([Buffer.from(header.buffer), Buffer.from(w.buffer)]));
  const parts: Buffer[] = [Buffer.from(Int32Array.of(8).buffer)];
  for (const p of pieces) {
    const b = Buffer.from(p, 'utf8');
    const h = Buffer.alloc(8);
    h.writeFloatLE(p.length > 1 && !p.startsWith('<') ? -1 : -2, 0);
    h.writeInt32LE(b.length, 4);
    parts.push(h, b);
  }
  writeFileSync(join(dir, 'tokenizer.bin'), Buffer.concat(parts));
  writeFileSync(join(dir, 'text.txt'), 'a aa a\n\naaa a a');
  return join(dir, 'model.bin');
}

/**
 * A llama2.c model whose greedy output is always `token` (every embedding row e₀, zero blocks, an untied classifier
 * whose only non-zero row is `token`'s, along e₀), with a tokenizer of the bytes and ' ', 'a', ' a', 'H', 'i', 'Hi',
 * ' Hi' (ids 259–265).
 */
function constantLlama2c(token: number): string {
  const dir = mkdtempSync(join(tmpdir(), 'caldera-cli-const-'));
  const pieces: [string, number][] = [
    ['<unk>', 0],
    ['<s>', 0],
    ['</s>', 0],
    ...Array.from({ length: 256 }, (_, b): [string, number] => [
      `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`,
      0,
    ]),
    [' ', -1],
    ['a', -1],
    [' a', -2],
    ['H', -1],
    ['i', -1],
    ['Hi', -2],
    [' Hi', -3],
  ];
  const [vocab, dim, hidden, seq] = [pieces.length, 8, 8, 32];
  const zeros = (n: number) => new Float32Array(n);
  const e0 = (rows: number) => {
    const a = zeros(rows * dim);
    for (let r = 0; r < rows; r++) a[r * dim] = 1;
    return a;
  };
  const classifier = zeros(vocab * dim);
  classifier[token * dim] = 5;
  const weights = [
    e0(vocab), // embedding
    zeros(dim).fill(1), // attention norm
    ...[0, 1, 2, 3].map(() => zeros(dim * dim)), // q, k, v, o
    zeros(dim).fill(1), // MLP norm
    ...[0, 1, 2].map(() => zeros(hidden * dim)), // gate, down, up
    zeros(dim).fill(1), // final norm
    zeros(seq * (dim / 2)), // the unused RoPE tables (2 heads)
    classifier,
  ];
  // a negative vocabulary size: the classifier is its own tensor
  const header = Int32Array.of(dim, hidden, 1, 2, 2, -vocab, seq);
  writeFileSync(
    join(dir, 'model.bin'),
    Buffer.concat([header, ...weights].map((a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength))),
  );
  const parts: Buffer[] = [Buffer.from(Int32Array.of(8).buffer)];
  for (const [p, score] of pieces) {
    const b = Buffer.from(p, 'utf8');
    const h = Buffer.alloc(8);
    h.writeFloatLE(score, 0);
    h.writeInt32LE(b.length, 4);
    parts.push(h, b);
  }
  writeFileSync(join(dir, 'tokenizer.bin'), Buffer.concat(parts));
  return join(dir, 'model.bin');
}

/**
 * A tiny model (`writeTinyModel` with `options`) whose first `count` linear layers of block 0 are random CALDERA layers
 * of rank `rank` (seeded), the others dense: a compressed checkpoint without a compression run.
 */
async function writeRandomCalderaModel(
  dir: string,
  options: Parameters<typeof writeTinyModel>[1],
  count: number,
  rank: number,
  seed: number,
): Promise<void> {
  const { raw } = await writeTinyModel(dir, options);
  const tensors: Record<string, Tensor> = { ...raw };
  const layers: Record<string, CalderaLayerMeta> = {};
  const rng = new Rng(seed);
  for (const { name } of blockLinearNames(0).slice(0, count)) {
    const [m, n] = raw[`${name}.weight`]!.shape as [number, number];
    const { tensors: ct, meta } = toCheckpointTensors(name, randomDecomposition(m, n, rank, rng));
    delete tensors[`${name}.weight`];
    Object.assign(tensors, ct);
    layers[name] = meta;
  }
  await writeSafetensors(join(dir, 'model.safetensors'), tensors);
  writeFileSync(join(dir, 'caldera.json'), JSON.stringify(calderaCheckpointMeta(layers)));
}

describe('caldera generate on llama2.c models, as run.c prints and stops', () => {
  it("keeps the space between the prompt and the first generated piece (it printed 'Hia a a a')", () => {
    const model = constantLlama2c(261); // ' a'
    const screen = run(['generate', model, '--prompt', 'Hi', '--max-tokens', '4']);
    expect(screen.status, screen.stderr).toBe(0);
    expect(screen.stdout).toMatch(/^Hi a a a a\n\n\[4 tokens, /);
    const json = run(['generate', model, '--prompt', 'Hi', '--max-tokens', '4', '--json']);
    expect(JSON.parse(json.stdout.trim())).toMatchObject({ completion: ' a a a a', tokens: 4 });
  });

  it('stops at BOS, which ends a sequence in llama2.c (it went on into the next one)', () => {
    const json = run(['generate', constantLlama2c(1), '--prompt', 'Hi', '--max-tokens', '4', '--json']);
    expect(json.status, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout.trim())).toMatchObject({ completion: '', tokens: 1 });
  });
});

describe('caldera generate / eval / inspect', () => {
  const model = tinyLlama2c();

  it('inspect, generate and eval a llama2.c model with --json', async () => {
    const ins = run(['inspect', model, '--json']);
    expect(ins.status, ins.stderr).toBe(0);
    const info = JSON.parse(ins.stdout);
    expect(info.format).toBe('llama2.c');
    expect(info.layers).toHaveLength(14);
    expect(info.layers[0].bitsPerWeight).toBe(32);
    expect(info.layers[4]).toMatchObject({
      name: 'model.layers.0.mlp.gate_proj',
      shape: '32x16',
      kind: 'f32',
    });
    expect(info.fileBytes).toBe(readFileSync(model).length);
    // in memory: runtime-node's plan for the file (which its llama2c test measures on the loaded model)
    const plan = planLlama2cMemory(info.config);
    expect(info).toMatchObject({
      memoryBytes: plan.weightBytes,
      linearMemoryBytes: plan.parts.linears + plan.parts.arenas,
    });
    // header only: no tokenizer needed, and weights are not read (a NaN weight does not matter to inspect)
    const bare = join(mkdtempSync(join(tmpdir(), 'caldera-cli-bare-')), 'model.bin');
    const bytes = readFileSync(model);
    bytes.writeFloatLE(NaN, 28);
    writeFileSync(bare, bytes);
    const bareInfo = run(['inspect', bare, '--json']);
    expect(bareInfo.status, bareInfo.stderr).toBe(0);
    expect(JSON.parse(bareInfo.stdout)).toMatchObject({ ...info, path: bare });
    const gen = run(['generate', model, '--prompt', 'a', '--max-tokens', '5', '--json']);
    expect(gen.status, gen.stderr).toBe(0);
    const g = JSON.parse(gen.stdout.trim());
    expect(g.tokens).toBeGreaterThan(0);
    expect(g.tokens).toBeLessThanOrEqual(5);
    const ev = run(['eval', model, '--text', join(model, '..', 'text.txt'), '--context', '4', '--json']);
    expect(ev.status, ev.stderr).toBe(0);
    const e = JSON.parse(ev.stdout.trim());
    expect(e.tokens).toBeGreaterThan(3);
    expect(e.ppl).toBeCloseTo(Math.exp(e.nll), 6);
    // --threads only splits the products of each window among threads: the same result, bit for bit
    for (const threads of ['1', '3']) {
      const t = run([
        'eval',
        model,
        '--text',
        join(model, '..', 'text.txt'),
        '--context',
        '4',
        '--threads',
        threads,
        '--json',
      ]);
      expect(t.status, t.stderr).toBe(0);
      expect(JSON.parse(t.stdout.trim()).nll).toBe(e.nll);
    }
    // documents each after BOS by default; --whole-text: the file as one text after one BOS (its blank line kept, as
    // the papers' "\n\n".join(test)) — the same numbers as perplexity() of exactly those ids, bit for bit
    const { model: m, config } = await loadLlama2c(model);
    const tokenizer = Llama2cTokenizer.fromBytes(
      readFileSync(join(model, '..', 'tokenizer.bin')),
      config.vocabSize,
    );
    const textFile = join(model, '..', 'text.txt');
    const ids = (whole: boolean) =>
      whole
        ? [1, ...tokenizer.encode('a aa a\n\naaa a a')]
        : [1, ...tokenizer.encode('a aa a'), 1, ...tokenizer.encode('aaa a a')];
    for (const whole of [false, true]) {
      const r = run([
        'eval',
        model,
        '--text',
        textFile,
        '--context',
        '4',
        '--json',
        ...(whole ? ['--whole-text'] : []),
      ]);
      expect(r.status, r.stderr).toBe(0);
      const got = JSON.parse(r.stdout.trim());
      const want = await perplexity(m, ids(whole), { context: 4 });
      expect({ nll: got.nll, tokens: got.tokens }).toEqual({ nll: want.nll, tokens: want.tokens });
    }
    expect(ids(true)).not.toEqual(ids(false));
  });

  it('clear errors and non-zero exit codes', () => {
    const bad = run(['inspect', join(model, '..', 'nope.bin')]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/caldera inspect: E_MISSING: .*nope.bin: cannot open/);
    const num = run(['generate', model, '--max-tokens', 'many']);
    expect(num.status).toBe(1);
    expect(num.stderr).toMatch(/--max-tokens must be a number/);
    expect(run(['generate', '--help']).stdout).toMatch(/--temperature/);
    const threads = run(['eval', model, '--threads', '0']);
    expect(threads.status).toBe(1);
    expect(threads.stderr).toMatch(/--threads must be an integer in \[1, 256\], got 0/);
    // text that is not UTF-8 (Latin-1 here) was read as U+FFFD and scored
    const latin1 = join(model, '..', 'latin1.txt');
    writeFileSync(latin1, Buffer.from([0x61, 0x20, 0x63, 0x61, 0x66, 0xe9, 0x20, 0x61]));
    const enc = run(['eval', model, '--text', latin1]);
    expect(enc.status).toBe(1);
    expect(enc.stderr).toMatch(
      /E_FORMAT: .*latin1\.txt is not UTF-8 text \(byte 5: 0xe9\): give a text file in UTF-8/,
    );
    const empty = run(['generate', model, '--stop', '']);
    expect(empty.status).toBe(1);
    expect(empty.stderr).toMatch(/--stop needs a non-empty string/);
  });

  it('--stop: the text ends just before the stop string, on screen and in --json, none of it printed', () => {
    const args = ['generate', model, '--prompt', 'a', '--max-tokens', '24'];
    const plain = run([...args, '--json']);
    expect(plain.status, plain.stderr).toBe(0);
    const whole = JSON.parse(plain.stdout.trim()).completion as string;
    expect(whole.length).toBeGreaterThan(6);
    // two characters from the first that is not U+FFFD (this random model emits bytes that are not UTF-8): the
    // token before the one that completes them holds the first
    const at = whole.search(/[^\uFFFD]/u);
    expect(at).toBeGreaterThan(0);
    const stop = whole.slice(at, at + 2);
    const expected = whole.slice(0, whole.indexOf(stop));
    const cut = run([...args, '--stop', stop, '--json']);
    expect(cut.status, cut.stderr).toBe(0);
    expect(JSON.parse(cut.stdout.trim()).completion).toBe(expected);
    const screen = run([...args, '--stop', stop]);
    expect(screen.status, screen.stderr).toBe(0);
    expect(screen.stdout.startsWith(`a${expected}\n\n[`), screen.stdout).toBe(true);
  });
});

describe('caldera generate --chat', () => {
  it("renders --system and --prompt with the model's chat template and prints only the answer", async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'caldera-cli-chat-')), 'm');
    await writeTinyModel(dir, { tied: true });
    const plain = run(['generate', dir, '--chat', '--prompt', 'hi', '--max-tokens', '2']);
    expect(plain.status).toBe(1);
    expect(plain.stderr).toMatch(
      /E_UNSUPPORTED: --chat needs a model with a chat template \(chat_template\.jinja, or chat_template in tokenizer_config\.json\); this one has none/,
    );

    const cfgFile = join(dir, 'tokenizer_config.json');
    // a chat_template that is no template is named as such, not reported missing
    const cfg = JSON.parse(readFileSync(cfgFile, 'utf8'));
    writeFileSync(cfgFile, JSON.stringify({ ...cfg, chat_template: 123 }));
    const typed = run(['generate', dir, '--chat', '--prompt', 'hi', '--max-tokens', '2']);
    expect(typed.status).toBe(1);
    expect(typed.stderr).toMatch(
      /E_FORMAT: tokenizer_config\.json's chat_template is a number, not a template string/,
    );
    writeFileSync(cfgFile, JSON.stringify(cfg));
    const template =
      '{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}' +
      '{% if add_generation_prompt %}[assistant]{% endif %}';
    writeFileSync(
      cfgFile,
      JSON.stringify({ ...JSON.parse(readFileSync(cfgFile, 'utf8')), chat_template: template }),
    );
    const tok = await loadTokenizer(dir);
    const rendered = '<|endoftext|>[system] Be brief.\n[user] Where is the jury?\n[assistant]';
    expect(
      tok.applyChatTemplate([
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Where is the jury?' },
      ]),
    ).toBe(rendered);
    const args = ['generate', dir, '--chat', '--system', 'Be brief.', '--prompt', 'Where is the jury?'];
    const r = run([...args, '--max-tokens', '3', '--json']);
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    // the template writes BOS as text, which encodes to its id: nothing else is prepended
    expect(out).toMatchObject({ prompt: 'Where is the jury?', system: 'Be brief.', tokens: 3 });
    expect(out.promptTokens).toBe(tok.encode(rendered).length);
    expect(tok.encode(rendered)[0]).toBe(0);
    // as text: the answer, not the prompt or the template
    const text = run([...args, '--max-tokens', '3']);
    expect(text.status, text.stderr).toBe(0);
    expect(text.stdout.startsWith(out.completion)).toBe(true);
    expect(text.stdout).not.toMatch(/jury|\[assistant\]/);

    const noChat = run(['generate', dir, '--system', 'x']);
    expect(noChat.stderr).toMatch(/--system needs --chat/);

    // --template-vars: more names for the template (Qwen3's enable_thinking), as transformers' keyword arguments
    const thinking = template.replace(
      '[assistant]{% endif %}',
      '[assistant]{% if enable_thinking is defined and enable_thinking is false %}<think></think>{% endif %}{% endif %}',
    );
    writeFileSync(cfgFile, JSON.stringify({ ...cfg, chat_template: thinking }));
    const quiet = run([
      ...args,
      '--template-vars',
      '{"enable_thinking": false}',
      '--max-tokens',
      '1',
      '--json',
    ]);
    expect(quiet.status, quiet.stderr).toBe(0);
    expect(JSON.parse(quiet.stdout.trim().split('\n').at(-1)!).promptTokens).toBe(
      tok.encode(`${rendered}<think></think>`).length,
    );
    const thinks = run([
      ...args,
      '--template-vars',
      '{"enable_thinking": true}',
      '--max-tokens',
      '1',
      '--json',
    ]);
    expect(JSON.parse(thinks.stdout.trim().split('\n').at(-1)!).promptTokens).toBe(
      tok.encode(rendered).length,
    );
    for (const [vars, message] of [
      ['{enable_thinking: false}', /E_VALUE: --template-vars is not JSON: /],
      [
        '[1]',
        /E_VALUE: --template-vars must be a JSON object \(e\.g\. '\{"enable_thinking": false\}'\), got an array/,
      ],
      [
        '{"messages": []}',
        /E_VALUE: applyChatTemplate: options\.variables\.messages: give it as the messages argument/,
      ],
      // (jinja2 3.1.6 renders {{ none }} as None whatever none the keyword arguments give: a literal, not a name)
      [
        '{"none": "N"}',
        /E_VALUE: applyChatTemplate: options\.variables\.none: none is a literal of templates/,
      ],
    ] as const) {
      const bad = run([...args, '--template-vars', vars, '--max-tokens', '1']);
      expect(bad.status, vars).toBe(1);
      expect(bad.stderr).toMatch(message);
    }
    expect(run(['generate', dir, '--template-vars', '{}']).stderr).toMatch(/--template-vars needs --chat/);
  }, 60_000);

  it("samples as the model's generation_config.json asks (transformers' reading), each flag overriding its own setting", async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'caldera-cli-sampling-')), 'm');
    await writeTinyModel(dir, { tied: true });
    const args = ['generate', dir, '--prompt', 'The jury', '--max-tokens', '12', '--json'];
    const last = (r: { stdout: string }) => JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    // no generation_config.json: greedy decoding, nothing said
    const greedy = run(args);
    expect(greedy.status, greedy.stderr).toBe(0);
    expect(last(greedy).sampling).toEqual({ temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 });
    expect(greedy.stderr).not.toMatch(/sampling as/);
    // Qwen3's settings (and a min_p generate has no option for)
    const file = join(dir, 'generation_config.json');
    writeFileSync(
      file,
      JSON.stringify({
        do_sample: true,
        temperature: 0.6,
        top_k: 20,
        top_p: 0.95,
        min_p: 0.05,
        eos_token_id: 0,
      }),
    );
    const sampled = run(args);
    expect(sampled.status, sampled.stderr).toBe(0);
    expect(last(sampled).sampling).toEqual({ temperature: 0.6, topK: 20, topP: 0.95, repetitionPenalty: 1 });
    expect(sampled.stderr).toContain(
      'sampling as generation_config.json asks: --temperature 0.6 --top-k 20 --top-p 0.95 (--temperature 0 for greedy decoding)',
    );
    expect(sampled.stderr).toContain(
      "warning: generation_config.json's min_p 0.05 not applied (generate has no such option)",
    );
    // deterministic given the seed; at a high temperature other seeds draw other tokens (the random model's
    // distributions are too peaked for 0.6 to leave the argmax often)
    expect(last(run(args)).completion).toBe(last(sampled).completion);
    const hot = ['1', '2', '3'].map(
      (seed) => last(run([...args, '--temperature', '3', '--seed', seed])).completion,
    );
    expect(new Set(hot).size).toBeGreaterThan(1);
    // a flag replaces its own setting only; --temperature 0 is greedy decoding again
    expect(last(run([...args, '--top-k', '5'])).sampling).toEqual({
      temperature: 0.6,
      topK: 5,
      topP: 0.95,
      repetitionPenalty: 1,
    });
    const zero = run([...args, '--temperature', '0']);
    expect(last(zero).completion).toBe(last(greedy).completion);
    // (top-k and top-p do nothing at temperature 0: not said)
    expect(zero.stderr).not.toMatch(/sampling as/);
    // without do_sample: greedy, but its repetition_penalty applies (as transformers applies it)
    writeFileSync(file, JSON.stringify({ temperature: 0.6, repetition_penalty: 1.3 }));
    const penalised = run(args);
    expect(last(penalised).sampling).toEqual({ temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1.3 });
    expect(penalised.stderr).toContain('sampling as generation_config.json asks: --repetition-penalty 1.3\n');
    // a malformed setting names the file
    writeFileSync(file, JSON.stringify({ do_sample: true, top_p: 2 }));
    const bad = run(args);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toContain(`E_FORMAT: ${file}: top_p 2 is not a number in (0, 1]`);
  }, 120_000);

  it('generate --threads: a compressed model whose layers split over a decode pool gives the same tokens on 1 and 3 threads', async () => {
    // one block of hidden 512: q, o (512 × 512) and gate, up, down (1024 × 512) reach the split threshold (2¹⁸ weights)
    const dir = join(mkdtempSync(join(tmpdir(), 'caldera-cli-decode-')), 'm');
    await writeRandomCalderaModel(dir, { hidden: 512, layers: 1, tied: true }, 7, 16, 4);
    const [one, three] = ['1', '3'].map((threads) =>
      run(['generate', dir, '--prompt', 'Once upon', '--max-tokens', '12', '--threads', threads, '--json']),
    );
    expect(one!.status, one!.stderr).toBe(0);
    expect(three!.status, three!.stderr).toBe(0);
    const [a, b] = [one!, three!].map(
      (r) => JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Record<string, unknown>,
    );
    expect(a!.tokens).toBe(12);
    expect(b!.completion).toBe(a!.completion);
    expect(b!.tokens).toBe(a!.tokens);
  }, 60_000);

  it("inspect says the paper's figure covers only the compressed layers of a partly compressed checkpoint", async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'caldera-cli-partial-')), 'm');
    await writeRandomCalderaModel(dir, { layers: 2, tied: true }, 2, 8, 5);
    const r = run(['inspect', dir]);
    expect(r.status, r.stderr).toBe(0);
    // (it read as if the paper's figure were the whole model's, beside a stored figure over all 14 layers)
    expect(r.stdout).toMatch(
      /bits\/weight stored; \d+\.\d{3} in the paper's accounting over its 2 compressed layers of 14, as compress reports\)/,
    );
  }, 60_000);
});
