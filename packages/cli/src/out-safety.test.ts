import { beforeAll, describe, expect, it } from 'vitest';
import {
  chmodSync,
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { writeSafetensors } from '@caldera/core';
import { hashModelTensors, sha256Hex } from '@caldera/calibrate';
import { bin, fastCompressSetup, runCli, runUntil } from './test-cli.js';
import { spawn, spawnSync } from 'node:child_process';
import { hostname } from 'node:os';
import { writeTinyModel } from './test-models.js';

const { tmp, data, heldOut, fast, rtn: RTN } = fastCompressSetup('caldera-out-safety-');
const run = runCli;
const FAST = [...fast, '--json'];
// a few short fine-tuning steps of a tiny checkpoint (about a second)
const FINETUNE = [
  '--ft-rank',
  '2',
  '--batch',
  '1',
  '--seq-len',
  '16',
  '--eval-every',
  '1',
  '--valid-tokens',
  '64',
  '--eval-tokens',
  '64',
  '--data',
  data,
  '--eval',
  heldOut,
  '--json',
];

/**
 * A regex source matching how a refused resume shows a changed sha256 (a model's or a text's): JSON-quoted, shortened
 * ("3fa0c2…", cut inside its quotes), its first 8 hex digits at least.
 */
const shortHash = (sha: string) => `"${sha.slice(0, 8)}[0-9a-f]*…"`;

/** What compress records of a source model: sha256 of its config.json's sha256 and its tensors' (hashModelTensors). */
const modelSha = async (dir: string) =>
  sha256Hex(
    JSON.stringify([sha256Hex(readFileSync(join(dir, 'config.json'))), (await hashModelTensors(dir)).sha256]),
  );

/** Every file under `dir` with its bytes (to check that nothing was touched). */
function snapshot(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const walk = (d: string) => {
    for (const f of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, f.name);
      if (f.isDirectory()) walk(p);
      else out.set(p, readFileSync(p));
    }
  };
  walk(dir);
  return out;
}

let src = '';
let ckpt = '';

beforeAll(async () => {
  src = (await writeTinyModel(join(tmp, 'models', 'tiny'), { tied: true })).dir;
  // --out an empty directory is allowed, and so is rerunning into the checkpoint that wrote
  ckpt = join(tmp, 'ckpt');
  mkdirSync(ckpt);
  const r = run(['compress', src, '--out', ckpt, ...FAST, '--rank', '8']);
  expect(r.status, r.stderr).toBe(0);
}, 60_000);

describe('--out never destroys what is there', () => {
  it('compress reruns into its own checkpoint directory', () => {
    const r = run(['compress', src, '--out', ckpt, ...FAST, '--rank', '8']);
    expect(r.status, r.stderr).toBe(0);
    expect(existsSync(join(ckpt, 'caldera.json'))).toBe(true);
  }, 60_000);

  it('compress refuses a non-empty directory that is not a checkpoint, and a file; both stay untouched', () => {
    const dir = join(tmp, 'my-files');
    mkdirSync(dir);
    writeFileSync(join(dir, 'notes.txt'), 'keep me');
    const r = run(['compress', src, '--out', dir, ...FAST]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(
      /E_VALUE: --out .*my-files is a non-empty directory that is not a Caldera checkpoint/,
    );
    expect(r.stderr).toMatch(/notes\.txt.*choose another --out/);
    expect(readdirSync(dir)).toEqual(['notes.txt']);
    expect(readFileSync(join(dir, 'notes.txt'), 'utf8')).toBe('keep me');
    expect(existsSync(`${dir}.partial`)).toBe(false);

    const file = join(tmp, 'a-file');
    writeFileSync(file, 'precious');
    const f = run(['compress', src, '--out', file, ...FAST]);
    expect(f.status).toBe(1);
    expect(f.stderr).toMatch(/E_VALUE: --out .*a-file is an existing file, not a directory/);
    expect(statSync(file).isFile()).toBe(true);
    expect(readFileSync(file, 'utf8')).toBe('precious');
  });

  it('compress refuses an --out equal to or containing the source model, and writes a new one inside it', () => {
    const before = snapshot(src);
    for (const [out, how] of [
      [src, 'is'],
      [dirname(src), 'contains'],
    ] as const) {
      const r = run(['compress', src, '--out', out, ...FAST]);
      expect(r.status, out).toBe(1);
      expect(r.stderr).toContain(`--out ${out} ${how} the input ${src}`);
    }
    expect(snapshot(src)).toEqual(before);
    // a new directory inside the model touches none of its files
    const inside = join(src, 'caldera-2bit');
    const r = run(['compress', src, '--out', inside, ...FAST]);
    expect(r.status, r.stderr).toBe(0);
    const after = snapshot(src);
    for (const [f, bytes] of before) expect(after.get(f)?.equals(bytes), f).toBe(true);
    expect(existsSync(join(inside, 'caldera.json'))).toBe(true);
    // a model folder named like --out's work directory: it was written into, then removed at the end (exit 0)
    for (const [suffix, extra] of [
      ['.partial', []],
      ['.work', ['--propagate', 'original']],
    ] as const) {
      const model = join(tmp, 'models', `m${suffix}`);
      cpSync(src, model, { recursive: true });
      const kept = snapshot(model);
      const out = join(tmp, 'models', 'm');
      const w = run(['compress', model, '--out', out, ...FAST, ...extra]);
      expect(w.status, suffix).toBe(1);
      expect(w.stderr).toContain(
        `E_VALUE: --out ${out}: its work directory ${model} is the input ${model}, which the run would write into and then remove; choose another --out`,
      );
      expect(snapshot(model)).toEqual(kept);
      expect(existsSync(out)).toBe(false);
    }
  });

  it('finetune refuses to write over its input checkpoint or a file', () => {
    const before = snapshot(ckpt);
    const r = run(['finetune', ckpt, '--out', ckpt, ...FINETUNE, '--steps', '2']);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`--out ${ckpt} is the input ${ckpt}`);
    const file = join(tmp, 'ft-file');
    writeFileSync(file, 'precious');
    const f = run(['finetune', ckpt, '--out', file, ...FINETUNE, '--steps', '2']);
    expect(f.status).toBe(1);
    expect(f.stderr).toMatch(/--out .*ft-file is an existing file/);
    expect(readFileSync(file, 'utf8')).toBe('precious');
    expect(snapshot(ckpt)).toEqual(before);
    expect(existsSync(`${ckpt}.partial`)).toBe(false);
  });

  it('train replaces only an empty directory or an earlier train output (itself included), nothing else', () => {
    const TRAIN = [
      '--steps',
      '2',
      '--batch',
      '1',
      '--seq-len',
      '32',
      '--warmup',
      '1',
      '--valid-tokens',
      '256',
    ];
    const dir = join(tmp, 'train-files');
    mkdirSync(dir);
    writeFileSync(join(dir, 'notes.txt'), 'keep me');
    const r = run(['train', '--out', dir, ...TRAIN]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(
      /--out .*train-files is a non-empty directory that is not a 'caldera train' output/,
    );
    expect(readdirSync(dir)).toEqual(['notes.txt']);
    // a Hugging Face model that train did not write is not replaced, even as its own template
    const before = snapshot(src);
    const own = run(['train', src, '--out', src, ...TRAIN]);
    expect(own.status).toBe(1);
    expect(own.stderr).toMatch(/not a 'caldera train' output \(no training-log\.jsonl/);
    expect(snapshot(src)).toEqual(before);
    // a train output retrained in place (npm run train:reference does this): its template is read first
    const model = join(tmp, 'trained');
    expect(run(['train', '--out', model, ...TRAIN]).status).toBe(0);
    const again = run(['train', model, '--out', model, ...TRAIN, '--seed', '1']);
    expect(again.status, again.stderr).toBe(0);
    expect(readdirSync(model).sort()).toContain('model.safetensors');
  });
});

const TRAIN = ['--steps', '2', '--batch', '1', '--seq-len', '32', '--warmup', '1', '--valid-tokens', '256'];

describe("--out's work directories (<out>.partial, <out>.work) hold only the command's own state", () => {
  it('a folder of ones own there, or the state of another command, is refused before any work, untouched', () => {
    // before: the run wrote into <out>.partial and then removed it, with whatever was in it
    const out = join(tmp, 'work-dirs');
    for (const [suffix, command, args] of [
      ['.partial', 'compress', [src, ...FAST]],
      ['.work', 'compress', [src, ...FAST, '--propagate', 'original', '--shard', '0/1']],
      ['.partial', 'finetune', [ckpt, ...FINETUNE, '--steps', '2']],
    ] as const) {
      const dir = `${out}${suffix}`;
      mkdirSync(join(dir, 'sub'), { recursive: true });
      writeFileSync(join(dir, 'notes.txt'), 'keep me');
      writeFileSync(join(dir, 'sub', 'data.bin'), 'keep me too');
      const r = run([command, ...args.slice(0, 1), '--out', out, ...args.slice(1)]);
      expect(r.status, `${command} ${suffix}`).toBe(1);
      expect(r.stderr).toContain(
        `E_VALUE: ${dir} holds what caldera ${command} did not write there (notes.txt, sub); the run writes into it and then removes it`,
      );
      expect(readFileSync(join(dir, 'sub', 'data.bin'), 'utf8')).toBe('keep me too');
      rmSync(dir, { recursive: true });
    }
    // an interrupted finetune's resumable state is not compress's to take
    mkdirSync(`${out}.partial`);
    writeFileSync(join(`${out}.partial`, 'finetune-state.bin'), 'state');
    const c = run(['compress', src, '--out', out, ...FAST]);
    expect(c.stderr).toContain(`holds what caldera compress did not write there (finetune-state.bin)`);
    expect(readFileSync(join(`${out}.partial`, 'finetune-state.bin'), 'utf8')).toBe('state');
    rmSync(`${out}.partial`, { recursive: true });
    expect(existsSync(out)).toBe(false);
  });
});

describe('one process writes an --out at a time (<out>.lock)', () => {
  it('a second compress on an --out being written fails at once naming the first; the lock of a dead process is taken over', async () => {
    const out = join(tmp, 'locked');
    const lock = `${out}.lock`;
    const args = ['compress', src, '--out', out, ...FAST, '--rank', '8'];
    const first = spawn(process.execPath, [bin, ...args], { stdio: 'ignore' });
    const firstDone = new Promise<number | null>((resolve) => first.on('close', resolve));
    while (!existsSync(lock)) {
      if (first.exitCode !== null)
        throw new Error(`the first compress ended (${first.exitCode}) before its lock`);
      await new Promise((r) => setTimeout(r, 5));
    }
    first.kill('SIGSTOP'); // held still while the second one tries (a tiny model compresses in about 2 s)
    try {
      expect(JSON.parse(readFileSync(lock, 'utf8'))).toMatchObject({
        command: 'caldera compress',
        pid: first.pid,
        host: hostname(),
      });
      const second = run(args);
      // before: both ran at once, on the same <out>.partial
      expect(second.status).toBe(1);
      expect(second.stderr).toMatch(
        new RegExp(
          `^caldera compress: E_IO: .*locked is being written by caldera compress \\(pid ${first.pid} on this host, since \\d{4}-.*\\); wait for it to finish or stop it; if pid ${first.pid} is no caldera process, remove .*locked\\.lock\n$`,
        ),
      );
    } finally {
      first.kill('SIGCONT');
    }
    expect(await firstDone).toBe(0);
    expect(existsSync(lock)).toBe(false);
    // the lock of a process that has exited (killed, say) is taken over
    const gone = Number(spawnSync(process.execPath, ['-p', 'process.pid'], { encoding: 'utf8' }).stdout);
    writeFileSync(
      lock,
      JSON.stringify({ command: 'caldera compress', pid: gone, host: hostname(), started: 'then' }),
    );
    const taken = run(args);
    expect(taken.status, taken.stderr).toBe(0);
    expect(existsSync(lock)).toBe(false);
    // one from another host (a shared file system) cannot be checked: refused, naming the file to remove
    writeFileSync(
      lock,
      JSON.stringify({ command: 'caldera merge', pid: 1, host: 'elsewhere', started: 'then' }),
    );
    const other = run(args);
    expect(other.status).toBe(1);
    expect(other.stderr).toMatch(
      /is being written by caldera merge \(pid 1 on elsewhere, since then\); wait for it to finish or stop it, then remove .*locked\.lock if it is still there/,
    );
    rmSync(lock);
  }, 60_000);
});

describe('--out with a trailing slash (as shells complete a directory)', () => {
  it('compress writes beside it, not inside it, and reruns into it', () => {
    const out = join(tmp, 'slashed');
    for (let i = 0; i < 2; i++) {
      // before: <out>.partial was made inside the output, which the output check then refused as a foreign file
      const r = run(['compress', src, '--out', `${out}/`, ...FAST, '--rank', '8']);
      expect(r.status, r.stderr).toBe(0);
      expect(readdirSync(out).filter((f) => f.startsWith('.'))).toEqual([]);
      expect(existsSync(join(out, 'caldera.json'))).toBe(true);
    }
  }, 60_000);

  it('compress with --out . (the current folder) writes beside it too; a run killed writing report.json or the checkpoint leaves nothing that stops the rerun', () => {
    // before: '..partial' and '..lock' inside the folder: the whole run, then a refusal at the end, and at every rerun
    const here = join(tmp, 'dot');
    mkdirSync(here);
    const dotRun = () =>
      spawnSync(process.execPath, [bin, 'compress', src, '--out', '.', ...FAST, '--rank', '8'], {
        cwd: here,
        encoding: 'utf8',
        timeout: 120_000,
      });
    const r = dotRun();
    expect(r.status, r.stderr).toBe(0);
    expect(readdirSync(here).filter((f) => f.startsWith('.'))).toEqual([]);
    expect(existsSync(join(here, 'caldera.json'))).toBe(true);
    expect(existsSync(`${here}.partial`)).toBe(false);
    // what a kill leaves: report.json half written (its temporary file, inside), the checkpoint's temporary folder
    // (beside it, several GB for a large model): the first was refused as a foreign file, the second stayed for ever
    writeFileSync(join(here, 'report.json.tmp-1a2b3c4d'), '{"half');
    mkdirSync(`${here}.tmp-5e6f7a8b`);
    writeFileSync(join(`${here}.tmp-5e6f7a8b`, 'model.safetensors'), 'partial');
    const again = dotRun();
    expect(again.status, again.stderr).toBe(0);
    expect(readdirSync(here).filter((f) => f.includes('.tmp-'))).toEqual([]);
    expect(existsSync(`${here}.tmp-5e6f7a8b`)).toBe(false);
  }, 120_000);
});

describe('--out: a marker file alone does not make a directory replaceable', () => {
  it('compress refuses a project of its own that has a caldera.json; every file stays', () => {
    const proj = join(tmp, 'proj');
    mkdirSync(join(proj, 'src'), { recursive: true });
    writeFileSync(join(proj, 'caldera.json'), '{"myapp":true}');
    writeFileSync(join(proj, 'src', 'a.js'), 'x');
    writeFileSync(join(proj, 'thesis.tex'), 't');
    const before = snapshot(proj);
    const r = run(['compress', src, '--out', proj, ...RTN]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(
      /E_VALUE: --out .*proj is a non-empty directory that is not a Caldera checkpoint \(its caldera\.json is not one of ours; it holds caldera\.json, src, thesis\.tex\)/,
    );
    expect(snapshot(proj)).toEqual(before);
    expect(existsSync(`${proj}.partial`)).toBe(false);
  });

  it('a caldera.json that is a FIFO is not read (it would wait for a writer for ever): refused as not ours', () => {
    const proj = join(tmp, 'fifo-marker');
    mkdirSync(proj, { recursive: true });
    expect(spawnSync('mkfifo', [join(proj, 'caldera.json')]).status).toBe(0);
    const r = spawnSync(process.execPath, [bin, 'compress', src, '--out', proj, ...RTN], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(r.signal).toBe(null); // before: killed by the timeout, waiting in the read
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/its caldera\.json is not one of ours; it holds caldera\.json\)/);
  });

  it('compress and finetune refuse a real checkpoint that also holds other files, naming them', () => {
    const mixed = join(tmp, 'mixed');
    cpSync(ckpt, mixed, { recursive: true });
    writeFileSync(join(mixed, 'thesis.tex'), 't');
    mkdirSync(join(mixed, 'src'));
    const before = snapshot(mixed);
    const c = run(['compress', src, '--out', mixed, ...FAST, '--rank', '8']);
    expect(c.status).toBe(1);
    expect(c.stderr).toMatch(
      /E_VALUE: --out .*mixed is not only a Caldera checkpoint: it also holds src, thesis\.tex: its files would be lost/,
    );
    const f = run(['finetune', ckpt, '--out', mixed, ...FINETUNE, '--steps', '2']);
    expect(f.status).toBe(1);
    expect(f.stderr).toMatch(
      /--out .*mixed is not only a Caldera checkpoint: it also holds src, thesis\.tex/,
    );
    expect(snapshot(mixed)).toEqual(before);
  });

  it('train refuses a training-log.jsonl that is not its own, and its own output with other files in it', () => {
    const fake = join(tmp, 'fake-train');
    mkdirSync(fake);
    writeFileSync(join(fake, 'training-log.jsonl'), 'my lab notes\n');
    writeFileSync(join(fake, 'data.csv'), '1,2');
    const r = run(['train', '--out', fake, ...TRAIN]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/not a 'caldera train' output \(its training-log\.jsonl is not one of ours/);
    expect(readdirSync(fake).sort()).toEqual(['data.csv', 'training-log.jsonl']);
    const model = join(tmp, 'trained-plus');
    expect(run(['train', '--out', model, ...TRAIN]).status).toBe(0);
    writeFileSync(join(model, 'notes.txt'), 'keep me');
    const again = run(['train', '--out', model, ...TRAIN]);
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/is not only a 'caldera train' output: it also holds notes\.txt/);
    expect(readFileSync(join(model, 'notes.txt'), 'utf8')).toBe('keep me');
  });
});

describe('--out that cannot be created', () => {
  const noStack = (stderr: string) => expect(stderr).not.toMatch(/\n\s+at /);
  /** Every command that writes `--out` fails with `message` for `out`, before any work (exit 1, no stack). */
  const refusedInEveryCommand = (out: string, message: RegExp) => {
    for (const args of [
      ['compress', src, '--out', out, ...FAST],
      ['finetune', ckpt, '--out', out, ...FINETUNE, '--steps', '2'],
      ['train', '--out', out, ...TRAIN],
      ['export', ckpt, '--out', out],
    ]) {
      const r = runCli(args, 30_000);
      expect(r.status, `${args[0]} ${out}: ${r.stderr}`).toBe(1);
      expect(r.stderr).toMatch(message);
      noStack(r.stderr);
      expect(r.stdout).not.toMatch(/"event":"baseline"/);
    }
  };

  it('fails at once with one E_IO line naming it (exit 1), before any work, in every command', () => {
    const file = join(tmp, 'plain-file');
    writeFileSync(file, 'x');
    for (const [out, message] of [
      // (a recursive mkdir under /proc never returns in Node)
      ['/proc/caldera-out', /E_IO: \/proc: cannot create --out \/proc\/caldera-out in it \(ENOENT\)/],
      [
        join(file, 'sub', 'dir'),
        /E_IO: --out .*plain-file\/sub\/dir: cannot create it, .*plain-file is a file/,
      ],
    ] as const)
      refusedInEveryCommand(out, message);
  }, 120_000);

  it('an empty --out, a symbolic link, a name too long for the names beside it: refused before any work, in every command', () => {
    const real = join(tmp, 'link-target');
    mkdirSync(real);
    symlinkSync(real, join(tmp, 'link-out'));
    symlinkSync(join(tmp, 'nowhere', 'x'), join(tmp, 'dangling-out'));
    for (const [out, message] of [
      // an unset shell variable: the whole run went by, then it failed; .partial and .lock were left in the cwd
      [
        '',
        /^caldera \w+: E_VALUE: (--out is empty \(an unset shell variable\?\): give the output directory|caldera train needs --out DIR)$/m,
      ],
      // the result replaced the link, leaving what it points to as it was; a dangling one failed at the end (ENOTDIR)
      [
        join(tmp, 'link-out'),
        /E_VALUE: --out .*link-out is a symbolic link \(to .*link-target\): the result would replace the link/,
      ],
      [join(tmp, 'dangling-out'), /E_VALUE: --out .*dangling-out is a symbolic link \(to .*nowhere\/x\)/],
      // the run's side names (`<out>.lock.takeover-<16>-<n>`, `<out>.old-<8>.caldera-aside`) would pass 255 bytes
      [join(tmp, 'n'.repeat(230)), /E_VALUE: --out .*: its name is too long: .* 264 bytes, over the 255/],
    ] as const)
      refusedInEveryCommand(out, message);
    expect(readdirSync(real)).toEqual([]);
  }, 120_000);

  // Root passes every permission check, and CI runs as root: there the CLI runs as nobody (65534), which must be able
  // to read the repository (skipped where it cannot, e.g. a checkout under /root)
  const asRoot = process.getuid?.() === 0;
  const nobody = { uid: 65534, gid: 65534 };
  const nobodyCanRun =
    !asRoot ||
    spawnSync(process.execPath, ['-e', `require('fs').accessSync(${JSON.stringify(bin)})`], nobody).status ===
      0;
  it.skipIf(!nobodyCanRun)(
    `a read-only parent, or an earlier output the user cannot write: E_IO before any work (EACCES)${asRoot ? ', as nobody' : ''}`,
    () => {
      // nobody must reach the model and texts: mkdtemp made this folder and the test run's temporary root 0700
      // (the root only when it is the run's own, scripts/vitest-temp-root.mjs: never the system's /tmp)
      const runRoot = dirname(tmp);
      if (asRoot)
        for (const dir of basename(runRoot).startsWith('caldera-test-') ? [runRoot, tmp] : [tmp])
          chmodSync(dir, 0o755);
      const ro = join(tmp, 'read-only');
      const notMine = join(tmp, 'not-writable');
      mkdirSync(ro);
      mkdirSync(notMine);
      writeFileSync(join(notMine, 'caldera.json'), '{}');
      chmodSync(ro, 0o555);
      chmodSync(notMine, 0o555);
      try {
        for (const [out, message] of [
          [join(ro, 'out'), /E_IO: .*read-only: cannot create --out .* in it \(permission denied, EACCES\)/],
          // its files could not be removed once the new checkpoint replaced it: said before the run, not after it
          [
            notMine,
            /E_IO: --out .*not-writable: you cannot write it \(EACCES\): the earlier output there could not be removed/,
          ],
        ] as const) {
          const r = spawnSync(process.execPath, [bin, 'compress', src, '--out', out, ...FAST], {
            encoding: 'utf8',
            timeout: 120_000,
            ...(asRoot ? nobody : {}),
          });
          expect(r.status, r.stderr).toBe(1);
          expect(r.stderr).toMatch(message);
          noStack(r.stderr);
          expect(r.stdout).not.toMatch(/"event":"baseline"/);
        }
        expect(readdirSync(notMine)).toEqual(['caldera.json']);
      } finally {
        chmodSync(ro, 0o755);
        chmodSync(notMine, 0o755);
      }
    },
  );
});

/** Like `runUntil`, with the command's stderr. */
function runUntilStderr(
  args: string[],
  file: string,
  signal: NodeJS.Signals,
): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setInterval(() => {
      if (existsSync(file)) {
        p.kill(signal);
        clearInterval(timer);
      }
    }, 5);
    p.on('close', (code) => {
      clearInterval(timer);
      resolve({ code, stderr });
    });
  });
}

describe('SIGTERM stops like Ctrl-C (exit 143), keeping what a rerun resumes from', () => {
  it('compress: the committed blocks stay in <out>.partial, and it says so', async () => {
    const six = (await writeTinyModel(join(tmp, 'models', 'term'), { layers: 6, seed: 8 })).dir;
    const out = join(tmp, 'term-out');
    const args = ['compress', six, '--out', out, ...FAST, '--windows', '8', '--length', '64'];
    const r = await runUntilStderr(args, join(`${out}.partial`, 'block-0000.json'), 'SIGTERM');
    expect(r.code).toBe(143);
    expect(r.stderr).toMatch(
      /caldera compress: interrupted; \d+ compressed blocks? kept in .*term-out\.partial — rerun the same command to resume/,
    );
    expect(existsSync(join(`${out}.partial`, 'block-0000.json'))).toBe(true);
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(tmp).filter((f) => f.startsWith('term-out.tmp-'))).toEqual([]);
  }, 60_000);

  it('finetune and train: their state is saved', async () => {
    const ft = join(tmp, 'ft-term');
    const state = join(`${ft}.partial`, 'finetune-state.bin');
    const f = await runUntilStderr(
      ['finetune', ckpt, '--out', ft, ...FINETUNE, '--steps', '100000', '--patience', '100000'],
      state,
      'SIGTERM',
    );
    expect(f.code).toBe(143);
    expect(f.stderr).toMatch(/caldera finetune: interrupted; state saved in .*ft-term\.partial/);
    expect(existsSync(state)).toBe(true);
    const tr = join(tmp, 'train-term');
    const ts = join(`${tr}.partial`, 'train-state.bin');
    const t = await runUntilStderr(['train', '--out', tr, ...TRAIN, '--steps', '100000'], ts, 'SIGTERM');
    expect(t.code).toBe(143);
    expect(t.stderr).toMatch(/caldera train: interrupted at step \d+; rerun the same command to resume/);
    expect(existsSync(ts)).toBe(true);
    expect(existsSync(tr)).toBe(false);
  }, 120_000);
});

describe('input files and partial state', () => {
  it('compress checks --eval and --data before any work', () => {
    const out = join(tmp, 'no-eval');
    const r = run(['compress', src, '--out', out, ...FAST, '--eval', join(tmp, 'nonexistent.txt')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/E_IO: --eval .*nonexistent\.txt: cannot read it \(no such file\)/);
    expect(existsSync(out)).toBe(false);
    expect(existsSync(`${out}.partial`)).toBe(false); // no block was compressed
    const d = run(['compress', src, '--out', out, ...FAST, '--data', tmp]);
    expect(d.status).toBe(1);
    expect(d.stderr).toMatch(/E_IO: --data .* is a directory, not a text file/);
  });

  it('compress checks the calibration text, and refuses a compressed checkpoint, before the baseline; nothing is left', () => {
    const out = join(tmp, 'bad-input');
    const cases: [string, RegExp][] = [
      [
        'too short',
        /E_VALUE: --data .*short\.txt has \d+ tokens, fewer than one calibration window of --length 32; .*\(--windows, --length; now 4 × 32 tokens\)/,
      ],
      ['', /E_VALUE: --data .*empty\.txt has no text; .*--windows, --length/],
      ['{"body": "no text field"}\n', /E_FORMAT: .*notext\.jsonl:1 has no "text"/],
    ];
    for (const [i, [text, message]] of cases.entries()) {
      const file = join(tmp, ['short.txt', 'empty.txt', 'notext.jsonl'][i]!);
      writeFileSync(file, text);
      const r = run(['compress', src, '--out', out, ...FAST, '--data', file]);
      expect(r.status, file).toBe(1);
      expect(r.stderr).toMatch(message);
      expect(r.stdout).not.toMatch(/"event":"baseline"/);
      expect(existsSync(`${out}.partial`)).toBe(false);
      expect(existsSync(`${out}.work`)).toBe(false);
      const o = run(['compress', src, '--out', out, ...FAST, '--data', file, '--propagate', 'original']);
      expect(o.status, file).toBe(1);
      expect(o.stderr).toMatch(message);
      expect(existsSync(`${out}.work`)).toBe(false);
    }
    const c = run(['compress', ckpt, '--out', out, ...FAST]);
    expect(c.status).toBe(1);
    expect(c.stderr).toContain(
      `E_VALUE: ${ckpt} is a Caldera checkpoint (compressed); compress a dense model`,
    );
    expect(existsSync(`${out}.partial`)).toBe(false);
    expect(existsSync(out)).toBe(false);
  }, 60_000);

  it('a failed finetune removes the empty partial directory it made, never one that holds state', async () => {
    // fails in runFinetune, before any state is saved: fewer validation tokens than a sequence (a short --valid text
    // is refused before the partial directory is made, so the cap it is)
    const out = join(tmp, 'ft-fail');
    const r = run(['finetune', ckpt, '--out', out, ...FINETUNE, '--steps', '4', '--valid-tokens', '10']);
    expect(r.status).toBe(1);
    // in the flags' names (it said "the evalTokens cap" and "seqLen")
    expect(r.stderr).toContain(
      'E_VALUE: fine-tuning: --valid-tokens 10 is fewer than --seq-len 16 + 1 (no validation window)',
    );
    expect(existsSync(`${out}.partial`)).toBe(false);

    // interrupted once state is saved, then a rerun that fails at its next validation: the state stays
    const kept = join(tmp, 'ft-kept');
    const state = join(`${kept}.partial`, 'finetune-state.bin');
    const args = [
      'finetune',
      ckpt,
      '--out',
      kept,
      ...FINETUNE,
      '--steps',
      '100000',
      '--patience',
      '100000',
      '--valid',
      data,
    ];
    const code = await runUntil(args, state, 'SIGINT');
    expect(code).toBe(130);
    const saved = readFileSync(state);
    // (another validation text: refused as another run's state, which stays as it was)
    const again = run([...args.slice(0, -1), heldOut]);
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/state of a fine-tuning run with other settings: --valid \(its text\) \(/);
    expect(readFileSync(state).equals(saved)).toBe(true);
  }, 60_000);

  it('a killed compress resumes only with the same settings; other settings are refused, naming them', async () => {
    // 6 blocks of ≈ 0.1 s each: the run is killed right after its first block, long before the end
    const six = (await writeTinyModel(join(tmp, 'models', 'six'), { layers: 6, seed: 3 })).dir;
    const out = join(tmp, 'resumed');
    const args = ['compress', six, '--out', out, ...FAST, '--windows', '8', '--length', '64'];
    await runUntil(args, join(`${out}.partial`, 'block-0000.json'), 'SIGKILL', 5);
    expect(existsSync(join(`${out}.partial`, 'block-0000.json'))).toBe(true);
    expect(existsSync(join(`${out}.partial`, 'block-0005.json'))).toBe(false);
    const partial = snapshot(`${out}.partial`);

    const ranks = run([...args, '--rank', '16']);
    expect(ranks.status).toBe(1);
    expect(ranks.stderr).toMatch(
      /E_VALUE: .*resumed\.partial holds blocks of an interrupted run with other settings/,
    );
    expect(ranks.stderr).toMatch(/layer ranks \(--rank .*\), e\.g\. model\.layers\.0\.\S+: \d+ then, 16 now/);
    expect(ranks.stderr).toMatch(
      /rerun with the options of the interrupted run .* or delete .*resumed\.partial/,
    );
    const other = join(tmp, 'calib2.txt');
    writeFileSync(other, readFileSync(data, 'utf8').slice(1000));
    const seeds = run([...args, '--seed', '7', '--data', other]);
    expect(seeds.status).toBe(1);
    // both texts named by their sha256, then the seed's values
    const [then, now] = [data, other].map((f) => shortHash(sha256Hex(readFileSync(f))));
    expect(seeds.stderr).toMatch(
      new RegExp(
        `calibration text \\(--data content\\) \\(${then} then, ${now} now\\); --seed \\(0 then, 7 now\\)`,
      ),
    );
    // other bit widths: named with their values (the ranks they give differ too)
    const widths = run([...args, '--q-bits', '3', '--lr-bits', '2']);
    expect(widths.status).toBe(1);
    expect(widths.stderr).toMatch(
      /other settings: .*--q-bits \(2 then, 3 now\); --lr-bits \(4 then, 2 now\)/,
    );
    expect(snapshot(`${out}.partial`)).toEqual(partial);

    const same = run(args);
    expect(same.status, same.stderr).toBe(0);
    expect(existsSync(`${out}.partial`)).toBe(false);
    expect(existsSync(join(out, 'caldera.json'))).toBe(true);
  }, 60_000);

  it('a compress records its settings in <out>.partial/run.json once, before its first block, replacing a stale record', async () => {
    const model = (await writeTinyModel(join(tmp, 'models', 'once'), { layers: 6, seed: 6 })).dir;
    const out = join(tmp, 'once');
    const partial = `${out}.partial`;
    // a record of another run that never committed a block: no blocks, so no resume check; it must be replaced
    mkdirSync(partial, { recursive: true });
    writeFileSync(join(partial, 'run.json'), JSON.stringify({ seed: 99 }));
    const args = ['compress', model, '--out', out, ...FAST, '--windows', '8', '--length', '64'];
    await runUntil(args, join(partial, 'block-0002.json'), 'SIGKILL', 5);
    expect(existsSync(join(partial, 'block-0002.json'))).toBe(true);
    expect(existsSync(join(partial, 'block-0005.json'))).toBe(false);
    expect(JSON.parse(readFileSync(join(partial, 'run.json'), 'utf8')).seed).toBe(0);
    // written before block 0's tensors and never again (the blocks after it did not rewrite it)
    const mtime = (f: string) => statSync(join(partial, f)).mtimeMs;
    expect(mtime('run.json')).toBeLessThanOrEqual(mtime('block-0000.safetensors'));
    // the rerun resumes from that record
    const same = run(args);
    expect(same.status, same.stderr).toBe(0);
    expect(existsSync(partial)).toBe(false);
  }, 60_000);

  it('a killed compress does not resume on a source model whose weights changed since, wherever in the file', async () => {
    // 3 blocks of hidden 128: a 3.7 MB file, so block 1's weights lie more than a MiB from either end
    const dir = join(tmp, 'models', 'changed');
    const { raw } = await writeTinyModel(dir, { layers: 3, hidden: 128, seed: 4 });
    const shaBefore = await modelSha(dir);
    const out = join(tmp, 'changed-out');
    const args = ['compress', dir, '--out', out, ...FAST, '--windows', '8', '--length', '64'];
    await runUntil(args, join(`${out}.partial`, 'block-0000.json'), 'SIGKILL', 5);
    expect(existsSync(join(`${out}.partial`, 'block-0002.json'))).toBe(false);
    // one weight of block 1 changes; the file keeps its size and its first and last MiB
    const file = join(dir, 'model.safetensors');
    const before = readFileSync(file);
    raw['model.layers.1.mlp.up_proj.weight']!.data[5] += 0.5;
    await writeSafetensors(file, raw);
    const after = readFileSync(file);
    const mib = 1 << 20;
    expect(after.length).toBe(before.length);
    expect(after.subarray(0, mib).equals(before.subarray(0, mib))).toBe(true);
    expect(after.subarray(-mib).equals(before.subarray(-mib))).toBe(true);
    const r = run(args);
    expect(r.status).toBe(1);
    const [then, now] = [shaBefore, await modelSha(dir)].map(shortHash);
    expect(then).not.toBe(now);
    expect(r.stderr).toMatch(
      new RegExp(
        `holds blocks of an interrupted run with other settings: ` +
          `source model \\(config\\.json or weight files\\) \\(${then} then, ${now} now\\); rerun`,
      ),
    );
  }, 60_000);
});
