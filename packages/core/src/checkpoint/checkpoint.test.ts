import { execFileSync } from 'node:child_process';
import fsp, { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CalderaError } from '../errors.js';
import { atomicWriteFile, recoverReplaceDir } from '../fs-atomic.js';
import { writeSafetensors } from '../safetensors/writer.js';
import { tensor, type Tensor } from '../tensor.js';
import { openCheckpointDir, readCheckpointMeta, writeCheckpointDir } from './dir.js';
import { parseCalderaMeta, type CalderaCheckpointMeta } from './meta.js';
import { calderaTensorName, parseCalderaTensorName } from './names.js';
import {
  assertNoStrayCalderaTensors,
  expectedCalderaTensors,
  strayCalderaTensors,
  validateCalderaCheckpoint,
} from './validate.js';

const P = 'model.layers.0.self_attn.q_proj';

function meta(): CalderaCheckpointMeta {
  return {
    format: 'caldera',
    version: 1,
    method: 'caldera',
    options: { rank: 4 },
    seed: 7,
    bitsPerWeight: 2.4,
    layers: {
      [P]: {
        shape: [12, 16],
        padded: [16, 16],
        rank: 4,
        ftRank: 1,
        hadamard: true,
        codecs: { Q: 'e8p12', L: 'e8p12-rvq4', R: 'f16' },
        bitsPerWeight: 2.4,
        error: 0.01,
      },
    },
  };
}

/** A complete tensor set for meta(): built from the table in docs/architecture.md, not from the validator. */
function tensors(): Record<string, Tensor> {
  const n = (part: string) => `${P}.caldera.${part}`;
  return {
    'model.embed_tokens.weight': tensor('f16', [8, 16]),
    [n('Q')]: tensor('u16', [16, 2]),
    [n('Q_scale')]: tensor('f32', [1], [0.5]),
    [n('L')]: tensor('u16', [3, 2]),
    [n('L_resid')]: tensor('u16', [3, 2]),
    [n('L_scale')]: tensor('f32', [1]),
    [n('R_dense')]: tensor('f16', [3, 16]),
    [n('L_ft')]: tensor('f32', [16, 1]),
    [n('R_ft')]: tensor('f32', [1, 16]),
    [n('SU')]: tensor('f16', [16]),
    [n('SV')]: tensor('f16', [16]),
    [`${P}.bias`]: tensor('f32', [12]),
  };
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'caldera-ckpt-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('tensor names', () => {
  it('builds and parses <prefix>.caldera.<part>', () => {
    expect(calderaTensorName(P, 'L_resid')).toBe(`${P}.caldera.L_resid`);
    expect(parseCalderaTensorName(`${P}.caldera.SU`)).toEqual({ prefix: P, part: 'SU' });
    expect(parseCalderaTensorName(`${P}.weight`)).toBeNull();
    expect(parseCalderaTensorName(`${P}.caldera.nope`)).toBeNull();
  });
});

describe('metadata', () => {
  it('accepts a valid caldera.json and lists every problem of an invalid one', () => {
    expect(parseCalderaMeta(JSON.parse(JSON.stringify(meta())))).toEqual(meta());
    const bad = meta() as unknown as Record<string, unknown>;
    const layer = (bad.layers as Record<string, Record<string, unknown>>)[P]!;
    layer.padded = [12, 16];
    layer.ftRank = 9;
    layer.paperBitsPerWeight = '2.5';
    const err = (() => {
      try {
        parseCalderaMeta(bad, 'x/caldera.json');
      } catch (e) {
        return e as CalderaError;
      }
    })();
    expect(err).toBeInstanceOf(CalderaError);
    expect(err!.code).toBe('E_FORMAT');
    expect(err!.details!.problems).toHaveLength(3);
    expect(err!.message).toMatch(/x\/caldera\.json: .*padded.*ftRank.*paperBitsPerWeight is not a number/);
    // another version or format is said alone (a 28-layer checkpoint of version 2 gave 6 KB of version-1 problems)
    for (const [field, value, message] of [
      [
        'version',
        2,
        /^E_FORMAT: x\/caldera\.json: version is 2, expected 1 \(this reader's format\): the checkpoint was written by a newer Caldera/,
      ],
      ['version', '1', /^E_FORMAT: x\/caldera\.json: version is "1", expected 1 \(this reader's format\)$/],
      ['format', 'gguf', /^E_FORMAT: x\/caldera\.json: format is "gguf", expected "caldera"$/],
    ] as const)
      expect(() => parseCalderaMeta({ ...bad, [field]: value }, 'x/caldera.json')).toThrow(message);
  });
});

describe('metadata codecs', () => {
  it('a codec this reader cannot decode is E_FORMAT naming the file, the layer and the part', () => {
    for (const [part, codec] of [
      ['Q', 'e8p99'],
      ['Q', 'f16'],
      ['L', 'e8p99'],
      ['R', 'u4'],
    ] as const) {
      const bad = meta();
      bad.layers[P]!.codecs[part] = codec;
      expect(() => parseCalderaMeta(bad, 'ck/caldera.json')).toThrow(
        codec === 'f16'
          ? `ck/caldera.json: layers["${P}"].codecs.Q cannot be dense`
          : `E_FORMAT: ck/caldera.json: layers["${P}"].codecs.${part} is unknown codec '${codec}' (known: e8p12, e8p12-rvq3, e8p12-rvq4${part === 'Q' ? ', none' : ', f16'})`,
      );
    }
    // 'none' is Q's alone (a factor cannot be absent: rank 0 has no factors)
    const noL = meta();
    noL.layers[P]!.codecs.L = 'none';
    expect(() => parseCalderaMeta(noL, 'ck/caldera.json')).toThrow(/codecs\.L is unknown codec 'none'/);
  });

  it('a field or codec part version 1 does not define is E_FORMAT naming it (it could change how the layer decodes, and finetune would drop it); other top-level fields are allowed', () => {
    const extra = meta() as unknown as { layers: Record<string, Record<string, unknown>> };
    extra.layers[P]!.codebook = 'e8p12-v2';
    (extra.layers[P]!.codecs as Record<string, unknown>).Q2 = 'e8p12';
    expect(() => parseCalderaMeta(extra, 'ck/caldera.json')).toThrow(
      `E_FORMAT: ck/caldera.json: layers["${P}"] has unknown field "codebook" (format version 1 defines shape, padded, rank, ftRank, hadamard, codecs, bitsPerWeight, paperBitsPerWeight, error); layers["${P}"].codecs has unknown parts "Q2" (format version 1 defines Q, L, R)`,
    );
    const noted = { ...meta(), note: 'made on my laptop' };
    expect(parseCalderaMeta(noted)).toEqual(noted);
  });

  it("a layer without Q (codec 'none') needs a rank, and has no Q tensors", () => {
    const lowRankOnly = meta();
    lowRankOnly.layers[P]!.codecs.Q = 'none';
    const parsed = parseCalderaMeta(lowRankOnly, 'ck/caldera.json');
    const parts = expectedCalderaTensors(P, parsed.layers[P]!).map((e) => e.part);
    expect(parts.sort()).toEqual(['L', 'L_ft', 'L_resid', 'L_scale', 'R_dense', 'R_ft', 'SU', 'SV']);
    const t = tensors();
    expect(() => validateCalderaCheckpoint(lowRankOnly, t)).toThrow(/caldera\.Q is not part of layer/);
    for (const part of ['Q', 'Q_scale']) delete t[`${P}.caldera.${part}`];
    expect(() => validateCalderaCheckpoint(lowRankOnly, t)).not.toThrow();
    // rank 0 without Q would be all zeros
    const empty = meta();
    empty.layers[P]!.codecs.Q = 'none';
    empty.layers[P]!.rank = 0;
    empty.layers[P]!.ftRank = 0;
    expect(() => parseCalderaMeta(empty, 'ck/caldera.json')).toThrow(
      `E_FORMAT: ck/caldera.json: layers["${P}"] has no Q (codecs.Q 'none') and rank 0: it would be all zeros`,
    );
  });
});

describe('validation', () => {
  it('the expected set matches the format table', () => {
    const names = expectedCalderaTensors(P, meta().layers[P]!).map((e) => e.part);
    expect(names.sort()).toEqual([
      'L',
      'L_ft',
      'L_resid',
      'L_scale',
      'Q',
      'Q_scale',
      'R_dense',
      'R_ft',
      'SU',
      'SV',
    ]);
  });

  it('passes a complete checkpoint and reports missing, mistyped, misshaped and stray tensors', () => {
    const sig = (ts: Record<string, Tensor>) => ts;
    expect(() => validateCalderaCheckpoint(meta(), sig(tensors()))).not.toThrow();
    const t = tensors();
    delete t[`${P}.caldera.SU`];
    t[`${P}.caldera.Q`] = tensor('i32', [16, 2]);
    t[`${P}.caldera.L_ft`] = tensor('f32', [16, 2]);
    t[`${P}.weight`] = tensor('f16', [12, 16]);
    t[`${P}.caldera.R`] = tensor('u16', [3, 2]);
    t['model.layers.1.mlp.up_proj.caldera.Q'] = tensor('u16', [1, 1]);
    let err: CalderaError | undefined;
    try {
      validateCalderaCheckpoint(meta(), t, 'ck/model.safetensors');
    } catch (e) {
      err = e as CalderaError;
    }
    expect(err?.code).toBe('E_FORMAT');
    const problems = err!.details!.problems as string[];
    expect(problems).toHaveLength(6);
    expect(err!.message).toMatch(/^E_FORMAT: ck\/model\.safetensors does not match caldera\.json/);
    expect(problems.join('\n')).toMatch(/missing .*caldera\.SU \(f16 \[16\]\)/);
    expect(problems.join('\n')).toMatch(/caldera\.Q is i32, expected u16/);
    expect(problems.join('\n')).toMatch(/L_ft has shape \[16, 2\], expected \[16, 1\]/);
    expect(problems.join('\n')).toMatch(/q_proj\.weight is present/);
    expect(problems.join('\n')).toMatch(/caldera\.R is not part of layer/);
    expect(problems.join('\n')).toMatch(/which caldera\.json does not list/);
  });
});

describe('strayCalderaTensors (what a loader would ignore)', () => {
  it('finds the parts an edited caldera.json no longer describes: a rank set to 0, hadamard set to false; a complete checkpoint has none', () => {
    const names = Object.keys(tensors());
    expect(strayCalderaTensors(meta(), names)).toEqual([]);
    expect(() => assertNoStrayCalderaTensors(meta(), names, 'ck')).not.toThrow();
    const m = meta();
    m.layers[P] = { ...m.layers[P]!, rank: 0, ftRank: 0, hadamard: false };
    const problems = strayCalderaTensors(m, names);
    const parts = ['L', 'L_resid', 'L_scale', 'R_dense', 'L_ft', 'R_ft', 'SU', 'SV'];
    expect(problems).toEqual(
      parts.map(
        (part) =>
          `${P}.caldera.${part} is not part of layer '${P}' as caldera.json describes it (rank 0, ftRank 0, ` +
          `hadamard false, codecs {"Q":"e8p12","L":"e8p12-rvq4","R":"f16"})`,
      ),
    );
    expect(() => assertNoStrayCalderaTensors(m, names, 'models/x', 'x/caldera.json')).toThrow(
      expect.objectContaining({
        code: 'E_FORMAT',
        message: expect.stringMatching(
          /^E_FORMAT: models\/x: the tensors do not match x\/caldera\.json: .*caldera\.L is not part/,
        ),
        details: { problems },
      }),
    );
    // a dense weight beside the compressed layer, and the parts of a layer the file does not list
    expect(
      strayCalderaTensors(meta(), [...names, `${P}.weight`, 'model.layers.1.mlp.up_proj.caldera.Q']),
    ).toEqual([
      `${P}.weight is present although the layer is compressed`,
      "model.layers.1.mlp.up_proj.caldera.Q belongs to layer 'model.layers.1.mlp.up_proj', which caldera.json does not list",
    ]);
    // a part this reader does not know (a newer format's): it was ignored, and export copied it as a dense tensor
    expect(strayCalderaTensors(meta(), [...names, `${P}.caldera.Q_future`])).toEqual([
      `${P}.caldera.Q_future is a part 'Q_future' this reader does not know (it reads Q, Q_resid, Q_scale, L, ` +
        'L_resid, L_scale, R, R_resid, R_scale, L_dense, R_dense, L_ft, R_ft, SU, SV)',
    ]);
  });
});

describe('validation of arguments that are not objects', () => {
  it('null or undefined meta, layers, tensors or layer entry is E_VALUE naming the argument, not a TypeError', () => {
    const value = (f: () => unknown, message: RegExp) =>
      expect(f).toThrow(
        expect.objectContaining({ code: 'E_VALUE', message: expect.stringMatching(message) }),
      );
    const t = tensors();
    for (const [m, got] of [
      [null, 'null'],
      [undefined, 'undefined'],
      [7, 'a number'],
      [{ ...meta(), layers: null }, 'layers null'],
      [{ ...meta(), layers: undefined }, 'layers undefined'],
    ] as const)
      value(
        () => validateCalderaCheckpoint(m as unknown as CalderaCheckpointMeta, t),
        new RegExp(
          `^E_VALUE: validateCalderaCheckpoint: meta must be a parsed caldera\\.json .*, got ${got}$`,
        ),
      );
    for (const [ts, got] of [
      [null, 'null'],
      [undefined, 'undefined'],
    ] as const)
      value(
        () => validateCalderaCheckpoint(meta(), ts as unknown as Record<string, Tensor>),
        new RegExp(`^E_VALUE: validateCalderaCheckpoint: tensors must be a Map or a record .*, got ${got}$`),
      );
    for (const [entry, got] of [
      [null, 'null'],
      [{ shape: [16, 2] }, 'dtype undefined'],
      [{ dtype: 7, shape: [16, 2] }, 'dtype 7'],
      [{ dtype: 'u16', shape: '16x2' }, "shape '16x2'"],
    ] as const)
      expect(() =>
        validateCalderaCheckpoint(
          meta(),
          new Map(Object.entries({ ...t, [`${P}.caldera.Q`]: entry as unknown as Tensor })),
        ),
      ).toThrow(
        expect.objectContaining({
          code: 'E_VALUE',
          message:
            `E_VALUE: validateCalderaCheckpoint: tensors['${P}.caldera.Q'] must be a dtype (a string) and a shape ` +
            `(an array), got ${got}`,
        }),
      );
    value(
      () => expectedCalderaTensors(P, null as unknown as CalderaCheckpointMeta['layers'][string]),
      /^E_VALUE: expectedCalderaTensors: the layer of 'model\.layers\.0\.self_attn\.q_proj' must be its caldera\.json entry, got null$/,
    );
  });
});

describe('validation of RVQ residual planes', () => {
  it('expects Q_resid for an RVQ Q and u8 residual planes for 3-bit codecs (E81B), u16 for 4-bit', () => {
    // what @caldera/lowrank's toCheckpointTensors writes (docs/architecture.md, codecs): rvq4 residuals are u16,
    // rvq3 residuals u8, and a 3- or 4-bit Q has its residual plane too
    const m = meta();
    m.layers[P] = {
      ...m.layers[P]!,
      ftRank: 0,
      codecs: { Q: 'e8p12-rvq3', L: 'e8p12-rvq3', R: 'e8p12-rvq4' },
    };
    const n = (part: string) => `${P}.caldera.${part}`;
    const t: Record<string, Tensor> = {
      [n('Q')]: tensor('u16', [16, 2]),
      [n('Q_resid')]: tensor('u8', [16, 2]),
      [n('Q_scale')]: tensor('f32', [1]),
      [n('L')]: tensor('u16', [4, 2]),
      [n('L_resid')]: tensor('u8', [4, 2]),
      [n('L_scale')]: tensor('f32', [1]),
      [n('R')]: tensor('u16', [4, 2]),
      [n('R_resid')]: tensor('u16', [4, 2]),
      [n('R_scale')]: tensor('f32', [1]),
      [n('SU')]: tensor('f16', [16]),
      [n('SV')]: tensor('f16', [16]),
    };
    expect(() => validateCalderaCheckpoint(m, t)).not.toThrow();
    const { [n('Q_resid')]: _dropped, ...noQResid } = t;
    expect(() => validateCalderaCheckpoint(m, noQResid)).toThrow(
      /missing .*caldera\.Q_resid \(u8 \[16, 2\]\)/,
    );
    expect(() => validateCalderaCheckpoint(m, { ...t, [n('L_resid')]: tensor('u16', [4, 2]) })).toThrow(
      /L_resid is u16, expected u8/,
    );
    expect(parseCalderaTensorName(n('Q_resid'))).toEqual({ prefix: P, part: 'Q_resid' });
  });
});

describe('checkpoint directory', () => {
  it('writes atomically and reads back (meta, tensors, copied files)', async () => {
    const cfg = join(dir, 'config.json');
    await writeFile(cfg, '{"hidden_size":16}');
    const out = join(dir, 'ckpt');
    await writeCheckpointDir(out, { meta: meta(), tensors: tensors(), copyFiles: [cfg] });
    expect((await readdir(out)).sort()).toEqual(['caldera.json', 'config.json', 'model.safetensors']);
    expect(await readCheckpointMeta(out)).toEqual(meta());
    const { meta: m, tensors: r } = await openCheckpointDir(out);
    expect(m.seed).toBe(7);
    expect(Array.from((await r.readTensor(`${P}.caldera.Q_scale`)).data)).toEqual([0.5]);
    expect(r.metadata).toEqual({ format: 'caldera' });
    await r.close();
    await expect(writeCheckpointDir(out, { meta: meta(), tensors: tensors() })).rejects.toThrow(
      /already exists/,
    );
  });

  it('a checkpoint whose folder does not exist is E_IO naming that folder, before anything is written', async () => {
    // (it was "writing checkpoint … failed (ENOENT)", naming neither; the docs' writer example met it on a fresh clone)
    const out = join(dir, 'no-such-folder', 'ckpt');
    await expect(writeCheckpointDir(out, { meta: meta(), tensors: tensors() })).rejects.toThrow(
      /^E_IO: cannot write checkpoint .*no-such-folder\/ckpt: .*no-such-folder does not exist \(create it first\)$/,
    );
    await writeFile(join(dir, 'a-file'), '');
    await expect(
      writeCheckpointDir(join(dir, 'a-file', 'ckpt'), { meta: meta(), tensors: tensors() }),
    ).rejects.toThrow(/a-file is no folder/);
  });

  it('openCheckpointDir reads a sharded checkpoint (index + shards) as it reads one file, and checks it the same', async () => {
    // it opened model.safetensors only: `caldera finetune` of a sharded checkpoint trained, then failed with ENOENT
    const out = join(dir, 'sharded');
    await writeCheckpointDir(out, { meta: meta(), tensors: tensors() });
    await rm(join(out, 'model.safetensors'));
    const all = tensors();
    const names = Object.keys(all);
    const halves = [names.slice(0, 2), names.slice(2)];
    const weightMap: Record<string, string> = {};
    for (const [i, half] of halves.entries()) {
      const file = `model-0000${i + 1}-of-00002.safetensors`;
      await writeSafetensors(join(out, file), Object.fromEntries(half.map((n) => [n, all[n]!])));
      for (const n of half) weightMap[n] = file;
    }
    await writeFile(
      join(out, 'model.safetensors.index.json'),
      JSON.stringify({ metadata: {}, weight_map: weightMap }),
    );
    const { meta: m, tensors: r } = await openCheckpointDir(out);
    expect(m.seed).toBe(7);
    expect(r.names().sort()).toEqual([...names].sort());
    expect(Array.from((await r.readTensor(`${P}.caldera.Q_scale`)).data)).toEqual([0.5]);
    await r.close();
    // a tensor the metadata implies, missing from the shards: refused as from one file
    delete weightMap[`${P}.caldera.Q_scale`];
    await writeFile(
      join(out, 'model.safetensors.index.json'),
      JSON.stringify({ metadata: {}, weight_map: weightMap }),
    );
    await expect(openCheckpointDir(out)).rejects.toThrow(/E_FORMAT.*Q_scale/);
  });

  it('never leaves a half-written checkpoint: invalid input writes nothing, failures clean up', async () => {
    const out = join(dir, 'ckpt2');
    const t = tensors();
    delete t[`${P}.caldera.Q`];
    await expect(writeCheckpointDir(out, { meta: meta(), tensors: t })).rejects.toThrow(/missing/);
    await writeCheckpointDir(out, { meta: meta(), tensors: tensors() });
    // A missing file to copy fails midway: the existing checkpoint stays intact, no temp dirs remain.
    await expect(
      writeCheckpointDir(
        out,
        {
          meta: { ...meta(), seed: 99 },
          tensors: tensors(),
          copyFiles: { 'config.json': join(dir, 'nope') },
        },
        { overwrite: true },
      ),
    ).rejects.toMatchObject({ code: 'E_IO' });
    expect((await readCheckpointMeta(out)).seed).toBe(7);
    expect((await readdir(dir)).filter((f) => f.includes('.tmp-') || f.includes('.old-'))).toEqual([]);
    await writeCheckpointDir(out, { meta: { ...meta(), seed: 99 }, tensors: tensors() }, { overwrite: true });
    expect((await readCheckpointMeta(out)).seed).toBe(99);
    expect((await readdir(dir)).filter((f) => f.includes('.tmp-') || f.includes('.old-'))).toEqual([]);
  });

  it('an earlier checkpoint that cannot be removed once replaced is left aside and named through onWarning (it was silent)', async () => {
    const sub = await mkdtemp(join(dir, 'aside-'));
    const out = join(sub, 'ckpt');
    await writeCheckpointDir(out, { meta: meta(), tensors: tensors() });
    const realRm = fsp.rm;
    // the removal of the renamed-aside old checkpoint fails (a file in it open elsewhere, on Windows)
    fsp.rm = ((p: string, o?: object) =>
      /\.old-[0-9a-z]+$/.test(String(p))
        ? Promise.reject(Object.assign(new Error('EBUSY: in use'), { code: 'EBUSY' }))
        : realRm(p, o)) as typeof fsp.rm;
    syncBuiltinESMExports();
    const warnings: string[] = [];
    try {
      await writeCheckpointDir(
        out,
        { meta: { ...meta(), seed: 99 }, tensors: tensors() },
        { overwrite: true, onWarning: (m) => warnings.push(m) },
      );
    } finally {
      fsp.rm = realRm;
      syncBuiltinESMExports();
    }
    expect((await readCheckpointMeta(out)).seed).toBe(99); // the write stands
    const aside = (await readdir(sub)).filter((f) => /^ckpt\.old-[0-9a-z]+$/.test(f));
    expect(aside).toHaveLength(1);
    expect(warnings).toEqual([
      `the earlier ${out} could not be removed after the new checkpoint took its place: it is left at ${join(sub, aside[0]!)} (remove it yourself; recoverReplaceDir, which caldera's commands run before writing ${out}, removes it too)`,
    ]);
    await recoverReplaceDir(out);
    expect((await readdir(sub)).sort()).toEqual(['ckpt']);
  });

  it('a file to copy that is a FIFO or a directory is E_IO naming it, and a meta that JSON cannot hold E_VALUE, before anything is written', async () => {
    // copying a FIFO waited for a writer for ever (the signal and SIGTERM did not stop it, the temporary directory
    // stayed); a BigInt in options was a TypeError of JSON.stringify
    const sub = await mkdtemp(join(dir, 'special-'));
    const fifo = join(sub, 'special_tokens_map.json');
    execFileSync('mkfifo', [fifo]);
    const out = join(sub, 'out');
    const t0 = Date.now();
    for (const [src, kind] of [
      [fifo, 'a FIFO (named pipe)'],
      [dir, 'a directory'],
    ] as const)
      await expect(
        writeCheckpointDir(out, {
          meta: meta(),
          tensors: tensors(),
          copyFiles: { 'special_tokens_map.json': src },
        }),
      ).rejects.toThrow(`E_IO: ${src} is ${kind}, not a file to copy`);
    expect(Date.now() - t0).toBeLessThan(5000);
    const big = { ...meta(), options: { n: 1n } } as unknown as CalderaCheckpointMeta;
    await expect(writeCheckpointDir(out, { meta: big, tensors: tensors() })).rejects.toThrow(
      /^E_VALUE: writeCheckpointDir: meta must be JSON-serialisable \(it is written as caldera\.json\): /,
    );
    expect((await readdir(sub)).sort()).toEqual(['special_tokens_map.json']);
  });

  it("a dir ending in '/' is written and replaced as that directory, its temporary one beside it", async () => {
    const out = join(dir, 'slash');
    await writeCheckpointDir(`${out}/`, { meta: meta(), tensors: tensors() });
    expect((await readdir(out)).sort()).toEqual(['caldera.json', 'model.safetensors']);
    await expect(writeCheckpointDir(`${out}/`, { meta: meta(), tensors: tensors() })).rejects.toThrow(
      `E_IO: ${out} already exists (pass overwrite: true to replace it)`,
    );
    await writeCheckpointDir(
      `${out}//`,
      { meta: { ...meta(), seed: 99 }, tensors: tensors() },
      { overwrite: true },
    );
    expect((await readCheckpointMeta(out)).seed).toBe(99);
    expect((await readdir(out)).sort()).toEqual(['caldera.json', 'model.safetensors']);
    expect((await readdir(dir)).filter((f) => f.startsWith('slash'))).toEqual(['slash']);
  });

  it('arguments that are not what they must be are E_VALUE (E_DTYPE as writeSafetensors says it), and nothing is written', async () => {
    const out = join(dir, 'args');
    const Q = `${P}.caldera.Q`;
    const refused = async (
      contents: unknown,
      message: string,
      options: { signal?: AbortSignal } = {},
      target = out,
    ) =>
      expect(
        writeCheckpointDir(target, contents as Parameters<typeof writeCheckpointDir>[1], options),
      ).rejects.toThrow(expect.objectContaining({ message }));
    await refused(
      null,
      'E_VALUE: writeCheckpointDir: contents must be an object { meta, tensors }, got null',
    );
    for (const [m, got] of [
      [undefined, 'undefined'],
      [null, 'null'],
    ] as const)
      await refused(
        { meta: m, tensors: tensors() },
        `E_VALUE: writeCheckpointDir: meta must be an object (the caldera.json to write), got ${got}`,
      );
    await refused(
      { meta: meta(), tensors: null },
      'E_VALUE: writeCheckpointDir: tensors must be an object of names to tensors, got null',
    );
    await refused(
      { meta: meta(), tensors: { ...tensors(), x: null } },
      "E_VALUE: tensor 'x' must be a tensor (dtype, shape, data) or raw bytes (a safetensors dtype such as 'F32'), got null",
    );
    await refused(
      {
        meta: meta(),
        tensors: { ...tensors(), [Q]: { dtype: 'x', shape: [16, 2], data: new Uint8Array(64) } },
      },
      `E_DTYPE: tensor '${Q}': dtype 'x' cannot be written`,
    );
    await refused(
      { meta: meta(), tensors: { ...tensors(), [Q]: { shape: [16, 2], data: new Uint16Array(32) } } },
      `E_DTYPE: tensor '${Q}': dtype 'undefined' cannot be written`,
    );
    await refused(
      { meta: meta(), tensors: tensors() },
      'E_VALUE: writeCheckpointDir: signal must be an AbortSignal, got an object',
      { signal: {} as AbortSignal },
    );
    await refused(
      { meta: meta(), tensors: tensors() },
      'E_VALUE: writeCheckpointDir: dir must be a path (a non-empty string), got null',
      {},
      null as unknown as string,
    );
    // writeSafetensors refuses the same tensors in the same words
    await expect(
      writeSafetensors(join(dir, 'args.safetensors'), { x: null as unknown as Tensor }),
    ).rejects.toThrow(
      "E_VALUE: tensor 'x' must be a tensor (dtype, shape, data) or raw bytes (a safetensors dtype such as 'F32'), got null",
    );
    await expect(
      writeSafetensors(join(dir, 'args.safetensors'), {
        [Q]: { dtype: 'x', shape: [16, 2], data: new Uint8Array(64) } as unknown as Tensor,
      }),
    ).rejects.toThrow(`E_DTYPE: tensor '${Q}': dtype 'x' cannot be written`);
    expect((await readdir(dir)).filter((f) => f.startsWith('args') || f.startsWith('null'))).toEqual([]);
  });

  it('reports missing and malformed metadata', async () => {
    await expect(readCheckpointMeta(join(dir, 'none'))).rejects.toMatchObject({ code: 'E_MISSING' });
    const bad = join(dir, 'bad');
    await import('node:fs/promises').then((fs) => fs.mkdir(bad));
    await writeFile(join(bad, 'caldera.json'), '{"format": "caldera"');
    await expect(readCheckpointMeta(bad)).rejects.toMatchObject({ code: 'E_FORMAT' });
  });

  it('an onProgress that throws: its own error, not E_IO (as a disk failure); nothing left, the old checkpoint kept', async () => {
    const out = join(dir, 'ckpt-cb');
    await writeCheckpointDir(out, { meta: meta(), tensors: tensors() });
    const mine = new Error('cbboom');
    const onProgress = () => {
      throw mine;
    };
    await expect(
      writeCheckpointDir(
        out,
        { meta: { ...meta(), seed: 99 }, tensors: tensors() },
        { overwrite: true, onProgress },
      ),
    ).rejects.toBe(mine);
    expect((await readCheckpointMeta(out)).seed).toBe(7);
    expect((await readdir(dir)).filter((x) => x.startsWith('ckpt-cb.tmp-'))).toEqual([]);
    // an abort from it names the checkpoint (it named the temporary file), with the signal's reason
    const ac = new AbortController();
    const reason = new Error('stop');
    await expect(
      writeCheckpointDir(
        out,
        { meta: { ...meta(), seed: 98 }, tensors: tensors() },
        { overwrite: true, signal: ac.signal, onProgress: () => ac.abort(reason) },
      ),
    ).rejects.toMatchObject({
      code: 'E_ABORTED',
      message: `E_ABORTED: writing checkpoint ${out} was aborted`,
      cause: reason,
    });
    expect((await readCheckpointMeta(out)).seed).toBe(7);
    // one that is no function: refused before anything is written
    await expect(
      writeCheckpointDir(
        join(dir, 'ckpt-cb2'),
        { meta: meta(), tensors: tensors() },
        { onProgress: 42 as never },
      ),
    ).rejects.toThrow(/^E_VALUE: writeCheckpointDir: onProgress must be a function/);
  });

  it('atomicWriteFile replaces content in one step and cleans up on abort (E_ABORTED with the reason as cause)', async () => {
    const f = join(dir, 'a.txt');
    await atomicWriteFile(f, 'one');
    await atomicWriteFile(f, new TextEncoder().encode('two'));
    expect(await readFile(f, 'utf8')).toBe('two');
    const ac = new AbortController();
    const reason = new Error('stop');
    await expect(
      atomicWriteFile(
        f,
        async (fh) => {
          await fh.write('partial');
          ac.abort(reason);
          throw new Error('the work failed as it was aborted');
        },
        { signal: ac.signal },
      ),
    ).rejects.toMatchObject({ code: 'E_ABORTED', cause: reason });
    expect(await readFile(f, 'utf8')).toBe('two');
    expect((await readdir(dir)).filter((x) => x.startsWith('a.txt.tmp-'))).toEqual([]);
  });
});
