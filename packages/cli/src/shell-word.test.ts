import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { shellWord } from './commands/common.js';

describe('shellWord (paths in the commands a message tells one to run)', () => {
  it('leaves plain paths alone and quotes the rest so that a POSIX shell reads back the same word', () => {
    expect(shellWord('/shared/ckpt-1')).toBe('/shared/ckpt-1');
    // the merge hint printed `caldera merge /tmp/my run`: two words
    for (const s of ['/tmp/my run', "it's", 'ünï cödé', 'a$b`c"d', ''])
      expect(execFileSync('sh', ['-c', `printf %s ${shellWord(s)}`], { encoding: 'utf8' })).toBe(s);
    // a relative path that starts with '-' is no option: `caldera merge -sh` failed with "unknown option -sh"
    expect(shellWord('-sh')).toBe('./-sh');
    expect(shellWord("-it's")).toBe(`'./-it'\\''s'`);
  });
});
