import { mkdir, mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { replaceDir } from './fs-atomic.js';

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
    await replaceDir(await dirWith(join(root, 'a.tmp'), 'v', '1'), dir);
    expect(await readFile(join(dir, 'v'), 'utf8')).toBe('1');
    await replaceDir(await dirWith(join(root, 'b.tmp'), 'w', '2'), dir);
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
});
