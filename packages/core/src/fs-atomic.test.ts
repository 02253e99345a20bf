import { mkdir, mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import fsp from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import { atomicWriteFile, recoverReplaceDir, replaceDir, withoutTrailingSeparators } from './fs-atomic.js';

/** A directory `path` holding one file `name` with `text`. */
async function dirWith(path: string, name: string, text: string): Promise<string> {
  await mkdir(path);
  await writeFile(join(path, name), text);
  return path;
}

describe('replaceDir', () => {
  it('puts the new directory in place of the old one or of none, and leaves nothing beside it', async () => {
    const root = await mkdtemp(join(tmpdir(), 'caldera-replace-'));
    const dir = join(root, 'out');
    expect(await replaceDir(await dirWith(join(root, 'a.tmp'), 'v', '1'), dir)).toBeNull();
    expect(await readFile(join(dir, 'v'), 'utf8')).toBe('1');
    expect(await replaceDir(await dirWith(join(root, 'b.tmp'), 'w', '2'), dir)).toBeNull(); // nothing left aside
    expect(await readdir(dir)).toEqual(['w']);
    expect(await readdir(root)).toEqual(['out']);
  });

  it('keeps the old directory when the new one cannot take its place', async () => {
    const root = await mkdtemp(join(tmpdir(), 'caldera-replace-'));
    const dir = await dirWith(join(root, 'out'), 'v', 'old');
    await expect(replaceDir(join(root, 'missing.tmp'), dir)).rejects.toThrow(/ENOENT/);
    expect(await readFile(join(dir, 'v'), 'utf8')).toBe('old');
    expect(await readdir(root)).toEqual(['out']);
  });

  it('an old directory in use (Windows: a file in it open elsewhere): E_IO saying so, or, once replaced, left aside', async () => {
    const root = await mkdtemp(join(tmpdir(), 'caldera-replace-'));
    const dir = await dirWith(join(root, 'out'), 'v', 'old');
    const real = { rename: fsp.rename, rm: fsp.rm };
    const fail = (code: string) => Promise.reject(Object.assign(new Error(`${code}: in use`), { code }));
    try {
      // moving it aside fails: it was "writing checkpoint … failed (EPERM)", with no hint
      fsp.rename = ((a: string, b: string) =>
        String(b).includes('.old-') ? fail('EPERM') : real.rename(a, b)) as typeof fsp.rename;
      syncBuiltinESMExports();
      await expect(replaceDir(await dirWith(join(root, 'a.tmp'), 'v', 'new'), dir)).rejects.toThrow(
        process.platform === 'win32'
          ? /^E_IO: cannot move the existing .*out aside to replace it \(EPERM\): is a file in it open in another program\?/
          : /^E_IO: cannot move the existing .*out aside to replace it \(EPERM\): it is in use, or its folder does not let this user move it$/,
      );
      expect(await readFile(join(dir, 'v'), 'utf8')).toBe('old');
      expect((await readdir(root)).sort()).toEqual(['a.tmp', 'out']); // (the caller removes its temporary)
      // removing it once the new one is in place fails: the replacement stands (it was reported as failed)
      fsp.rename = real.rename;
      fsp.rm = ((p: string, o?: object) =>
        /\.old-[0-9a-f]+$/.test(String(p)) ? fail('EBUSY') : real.rm(p, o)) as typeof fsp.rm;
      syncBuiltinESMExports();
      const left = await replaceDir(join(root, 'a.tmp'), dir);
      expect(await readFile(join(dir, 'v'), 'utf8')).toBe('new');
      const aside = (await readdir(root)).filter((f) => f.startsWith('out.old-'));
      expect(aside).toHaveLength(2); // the old directory and its marker, which recoverReplaceDir acts on
      // and its path is returned, for the caller to say (it was silent)
      expect(left).toBe(
        join(
          root,
          aside.find((f) => !f.endsWith('.caldera-aside'))!,
        ),
      );
    } finally {
      Object.assign(fsp, real);
      syncBuiltinESMExports();
    }
    await recoverReplaceDir(dir);
    expect(await readdir(root)).toEqual(['out']);
  });
});

describe('paths that end in a separator', () => {
  it('withoutTrailingSeparators drops the separators a path ends with and keeps a root whole', async () => {
    for (const [path, want] of [
      ['out/', 'out'],
      ['a/out//', 'a/out'],
      ['/tmp/out/', '/tmp/out'],
      ['out', 'out'],
      ['/', '/'],
      ['///', '/'],
    ] as const)
      expect(await withoutTrailingSeparators(path)).toBe(want);
  });

  it("replaceDir puts the new directory in place of 'out/', renaming the old one aside beside it", async () => {
    const root = await mkdtemp(join(tmpdir(), 'caldera-replace-'));
    const dir = await dirWith(join(root, 'out'), 'v', 'old');
    await replaceDir(await dirWith(join(root, 'a.tmp'), 'w', 'new'), `${dir}/`);
    expect(await readdir(dir)).toEqual(['w']);
    expect(await readdir(root)).toEqual(['out']);
  });

  it('atomicWriteFile refuses a path that ends in a separator with E_VALUE, creating nothing', async () => {
    const root = await mkdtemp(join(tmpdir(), 'caldera-atomic-'));
    const dir = await dirWith(join(root, 'out'), 'v', '1');
    for (const path of [`${dir}/`, join(root, 'new/')])
      await expect(atomicWriteFile(path, 'x')).rejects.toThrow(
        expect.objectContaining({
          code: 'E_VALUE',
          message: `E_VALUE: cannot write ${path}: a path that ends in a separator names a directory, not a file`,
        }),
      );
    expect(await readdir(root)).toEqual(['out']);
    expect(await readdir(dir)).toEqual(['v']);
  });

  it('atomicWriteFile refuses a signal that is not an AbortSignal with E_VALUE, creating nothing', async () => {
    const root = await mkdtemp(join(tmpdir(), 'caldera-atomic-'));
    const path = join(root, 'f.txt');
    await expect(atomicWriteFile(path, 'x', { signal: {} as AbortSignal })).rejects.toThrow(
      expect.objectContaining({
        code: 'E_VALUE',
        message: `E_VALUE: writing ${path}: signal must be an AbortSignal, got an object`,
      }),
    );
    expect(await readdir(root)).toEqual([]);
  });
});
