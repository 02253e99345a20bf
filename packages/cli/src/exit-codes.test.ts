import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { COMMANDS } from './cli.js';
import { inProcessCli, runCli } from './test-cli.js';
import { writeTinyModel } from './test-models.js';

// The CLI's exit codes and top-level messages: user errors (CalderaError, Node system errors) exit 1 with one line,
// usage errors 2, internal bugs reject (the binary prints the stack and exits 70); --version; --threads' range.

const pkgDir = fileURLToPath(new URL('..', import.meta.url));
const version = (JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')) as { version: string })
  .version;

describe('caldera in-process (main)', () => {
  /** Exit code, stderr and stdout of `caldera ...argv`, run in-process. */
  const run = inProcessCli();

  /** `caldera inspect` with its command replaced by one that throws `e`. */
  const throwing = async (e: unknown) => {
    const inspect = COMMANDS.inspect!;
    const saved = inspect.run;
    inspect.run = () => Promise.reject(e);
    try {
      return await run('inspect');
    } finally {
      inspect.run = saved;
    }
  };

  it('a Node system error (EACCES, ENOSPC, …) escaping a command is one E_IO line and exit 1, no stack', async () => {
    for (const [code, syscall, message] of [
      ['EACCES', 'mkdir', "EACCES: permission denied, mkdir '/ro/out'"],
      ['ENOSPC', 'write', 'ENOSPC: no space left on device, write'],
      ['EROFS', 'open', "EROFS: read-only file system, open '/ro/x'"],
      ['EISDIR', 'read', 'EISDIR: illegal operation on a directory, read'],
    ] as const) {
      const e = Object.assign(new Error(message), { code, syscall, errno: -13, path: '/ro/out' });
      expect(await throwing(e)).toEqual({ code: 1, stderr: `caldera inspect: E_IO: ${message}`, stdout: '' });
    }
  });

  it('an internal bug (TypeError, a code-less error) still rejects, for the binary to print its stack and exit 70', async () => {
    await expect(
      throwing(new TypeError("Cannot read properties of undefined (reading 'x')")),
    ).rejects.toThrow(TypeError);
    // a `code` alone (no path or syscall) is not a system error
    await expect(throwing(Object.assign(new Error('odd'), { code: 'ERR_SOMETHING' }))).rejects.toThrow('odd');
  });

  it('--version and -v print the package version; bare caldera prints the usage to stderr and exits 2', async () => {
    expect(await run('--version')).toEqual({ code: 0, stdout: version, stderr: '' });
    expect(await run('-v')).toEqual({ code: 0, stdout: version, stderr: '' });
    const bare = await run();
    expect(bare.code).toBe(2);
    expect(bare.stdout).toBe('');
    expect(bare.stderr).toMatch(/^caldera <command> \[options\][\s\S]*compress[\s\S]*--version/);
    expect((await run('--help')).code).toBe(0);
  });

  it('--threads is checked for every command that takes it, with the range, before any work', async () => {
    const takes = Object.keys(COMMANDS).filter((c) => /--threads N/.test(COMMANDS[c]!.help));
    expect(takes).toEqual(expect.arrayContaining(['compress', 'eval', 'generate', 'worker']));
    for (const cmd of takes)
      for (const v of ['1000', '0', '2.5', '257'])
        expect(await run(cmd, '--threads', v), `${cmd} --threads ${v}`).toEqual({
          code: 1,
          stdout: '',
          stderr: `caldera ${cmd}: E_VALUE: --threads must be an integer in [1, 256], got ${v}`,
        });
    expect((await run('eval', '--threads', 'many')).stderr).toBe(
      "caldera eval: E_VALUE: --threads must be a number, got 'many'",
    );
    for (const cmd of ['eval', 'generate'])
      expect(COMMANDS[cmd]!.help, cmd).toMatch(/--threads N +threads[^\n]*1 … 256/);
  });

  it('eval --text with too few tokens names the file and the option', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'caldera-exit-'));
    const empty = join(dir, 'empty.txt');
    writeFileSync(empty, '');
    expect(await run('eval', '--text', empty, '--threads', '1')).toEqual({
      code: 1,
      stdout: '',
      stderr: `caldera eval: E_VALUE: --text ${empty} has 0 tokens; perplexity needs at least 2`,
    });
    rmSync(dir, { recursive: true });
    expect((await run('eval', '--max-tokens', '1', '--threads', '1')).stderr).toBe(
      'caldera eval: E_VALUE: --max-tokens 1 leaves too few tokens; perplexity needs at least 2',
    );
  });
});

describe('the caldera binary', () => {
  it('--version works from the ESM and CommonJS builds and from a packed, installed package', () => {
    expect(runCli(['--version'])).toMatchObject({ status: 0, stdout: `${version}\n` });
    const cjs = spawnSync(process.execPath, [join(pkgDir, 'dist', 'bin.cjs'), '-v'], { encoding: 'utf8' });
    expect(cjs).toMatchObject({ status: 0, stdout: `${version}\n` });
    // what npm pack ships (package.json + dist), unpacked where the workspace's node_modules resolve its dependencies
    // (a fresh clone's workspace has no node_modules of its own: npm hoists them to the root, which still resolves)
    mkdirSync(join(pkgDir, 'node_modules'), { recursive: true });
    const tmp = mkdtempSync(join(pkgDir, 'node_modules', '.pack-'));
    try {
      const pack = spawnSync('npm', ['pack', '--silent', '--pack-destination', tmp], {
        cwd: pkgDir,
        encoding: 'utf8',
      });
      expect(pack.status, pack.stderr).toBe(0);
      const installed = join(tmp, 'installed');
      mkdirSync(installed);
      const tgz = join(tmp, pack.stdout.trim().split('\n').pop()!);
      expect(spawnSync('tar', ['-xzf', tgz, '-C', installed, '--strip-components=1']).status).toBe(0);
      for (const bin of ['bin.js', 'bin.cjs']) {
        const r = spawnSync(process.execPath, [join(installed, 'dist', bin), '--version'], {
          encoding: 'utf8',
        });
        expect(r, bin).toMatchObject({ status: 0, stdout: `${version}\n` });
      }
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('a --data text shorter than one training sequence names the flag and the file, before any work', () => {
    const dir = mkdtempSync(join(tmpdir(), 'caldera-exit-data-'));
    const data = join(dir, 'tiny.txt');
    writeFileSync(data, 'Too short.\n');
    const out = join(dir, 'trained');
    const r = runCli(['train', '--out', out, '--data', data, '--steps', '1']);
    expect(r.status).toBe(1);
    // before: "Trainer: 4 tokens is shorter than seqLen 128 + 2", naming neither the flag nor the file
    expect(r.stderr.startsWith(`caldera train: E_VALUE: --data ${data} has `), r.stderr).toBe(true);
    expect(r.stderr).toContain('tokens; training needs at least --seq-len + 2 = 130');
    expect(existsSync(`${out}.partial`)).toBe(false);
  });

  it('bare caldera prints the usage on stderr and exits 2', () => {
    const r = runCli([]);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^caldera <command> \[options\]/);
  });

  it('a model whose model.safetensors is a directory: eval and inspect say so (exit 1)', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'caldera-exit-dir-')), 'm');
    await writeTinyModel(dir);
    const file = join(dir, 'model.safetensors');
    unlinkSync(file);
    mkdirSync(file);
    for (const cmd of ['inspect', 'eval']) {
      const r = runCli([cmd, dir]);
      expect(r.status, cmd).toBe(1);
      expect(r.stderr.trim()).toBe(`caldera ${cmd}: E_IO: ${file} is a directory, not a safetensors file`);
    }
  });

  it('caldera.json naming a layer the model lacks, or an unknown codec: inspect exits 1 naming file and layer', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'caldera-exit-meta-')), 'm');
    await writeTinyModel(dir); // 2 blocks, hidden 64
    const layer = (codecs: Record<string, string>) => ({
      shape: [64, 64],
      padded: [64, 64],
      rank: 4,
      ftRank: 0,
      hadamard: true,
      codecs,
      bitsPerWeight: 2.5,
    });
    const ok = { Q: 'e8p12', L: 'e8p12-rvq4', R: 'e8p12-rvq4' };
    const meta = (layers: Record<string, unknown>) =>
      writeFileSync(
        join(dir, 'caldera.json'),
        JSON.stringify({
          format: 'caldera',
          version: 1,
          method: 'caldera',
          options: {},
          seed: 0,
          bitsPerWeight: 2.5,
          layers,
        }),
      );
    meta({ 'model.layers.5.self_attn.q_proj': layer(ok) });
    const stray = runCli(['inspect', dir]);
    expect(stray.status).toBe(1);
    expect(stray.stderr).toMatch(
      /^caldera inspect: E_FORMAT: .*caldera\.json lists layer 'model\.layers\.5\.self_attn\.q_proj', which is not a linear layer of the model/,
    );
    meta({ 'model.layers.0.self_attn.q_proj': layer({ ...ok, R: 'e8p99' }) });
    const codec = runCli(['inspect', dir]);
    expect(codec.status).toBe(1);
    expect(codec.stderr).toMatch(
      /^caldera inspect: E_FORMAT: .*caldera\.json: layers\["model\.layers\.0\.self_attn\.q_proj"\]\.codecs\.R is unknown codec 'e8p99'/,
    );
  });

  it('worker with an unreachable Redis prints the error alone, not "stopped" first', () => {
    // port 1: nothing listens there, so the connection is refused at once; the worker gives up after 10 s
    const r = runCli(['worker', '--queue', 'redis://127.0.0.1:1'], 60_000);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(
      /^caldera worker: E_IO: cannot reach Redis at redis:\/\/127\.0\.0\.1:1 \(.*ECONNREFUSED.*\)\n/,
    );
    expect(r.stderr).not.toMatch(/stopped/);
  }, 60_000);
});

describe('stdout that fails (the binary)', () => {
  const bin = join(pkgDir, 'dist', 'bin.js');

  it('a reader that goes away ends generate quietly with the status of SIGPIPE, 141 (an EPIPE stack trace before); a full disk is E_IO, exit 1', () => {
    const piped = spawnSync(
      'bash',
      ['-c', `set -o pipefail; node ${bin} generate --max-tokens 300 | head -c 10`],
      {
        encoding: 'utf8',
      },
    );
    expect(piped.stdout).toHaveLength(10);
    expect(piped.stderr).not.toMatch(/EPIPE|Error/);
    expect(piped.status).toBe(141); // what `set -o pipefail` sees of a filter killed by SIGPIPE
    // the result of eval --json was lost with exit 0 (console.log ignores its stream's errors)
    if (existsSync('/dev/full'))
      for (const args of [
        ['eval', '--max-tokens', '64', '--json'],
        ['generate', '--max-tokens', '4'],
      ]) {
        const full = spawnSync('bash', ['-c', `node ${bin} ${args.join(' ')} > /dev/full`], {
          encoding: 'utf8',
        });
        expect(full.status, args[0]).toBe(1);
        expect(full.stderr).toContain('caldera: E_IO: writing the output failed (ENOSPC)');
        expect(full.stderr).not.toMatch(/\n\s+at /); // no stack
      }
  }, 120_000);
});
