import { describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkWorkDirs } from './commands/common.js';

describe('checkWorkDirs: only the work directories a command uses, hidden files allowed', () => {
  it("finetune and train do not look at <out>.work (compress's); NFS's .nfs files and .DS_Store are no one's", async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'caldera-work-dirs-')), 'm');
    mkdirSync(`${out}.work`);
    writeFileSync(join(`${out}.work`, 'manifest.json'), '{}'); // an interrupted compress --propagate original
    // before: "m.work holds what caldera finetune did not write there (manifest.json); the run writes into it …"
    await expect(checkWorkDirs(out, 'finetune')).resolves.toBeUndefined();
    await expect(checkWorkDirs(out, 'train')).resolves.toBeUndefined();
    await expect(checkWorkDirs(out, 'compress')).resolves.toBeUndefined();
    mkdirSync(`${out}.partial`);
    for (const f of ['.nfs0000000012345678', '.DS_Store', 'block-0000.json', 'run.json.tmp-1a2b3c4d'])
      writeFileSync(join(`${out}.partial`, f), '');
    await expect(checkWorkDirs(out, 'compress')).resolves.toBeUndefined();
    writeFileSync(join(`${out}.work`, 'notes.txt'), '');
    await expect(checkWorkDirs(out, 'compress')).rejects.toThrow(
      /m\.work holds what caldera compress did not write there \(notes\.txt\)/,
    );
    await expect(checkWorkDirs(out, 'finetune')).rejects.toThrow(
      /m\.partial holds what caldera finetune did not write there \(block-0000\.json, run\.json\.tmp-1a2b3c4d\)/,
    );
  });
});
