import { afterEach, describe, expect, it, vi } from 'vitest';
import { join } from 'node:path';
import { progressFor } from './commands/common.js';
import { fastCompressSetup, runCli } from './test-cli.js';
import { writeTinyModel } from './test-models.js';

const { tmp, fast } = fastCompressSetup('caldera-progress-');

describe('progress when stderr is not a terminal', () => {
  afterEach(() => vi.restoreAllMocks());

  /** What `progressFor(label, json)` writes to stderr for `updates`, stderr a terminal or not. */
  const written = (tty: boolean, json: boolean, updates: [number, number, string][], everyMs = 60_000) => {
    const lines: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((s) => (lines.push(String(s)), true));
    const was = process.stderr.isTTY;
    process.stderr.isTTY = tty;
    try {
      const p = progressFor('compress', json, everyMs);
      for (const [d, t, note] of updates) p.update(d, t, undefined, note);
      p.done();
    } finally {
      process.stderr.isTTY = was;
    }
    return lines;
  };

  it('plain lines: the first update, then one per phase change, the last, and at most one per interval', () => {
    const updates: [number, number, string][] = [
      [0, 4, 'hashing the source tensors'],
      [1, 4, 'hashing the source tensors'],
      [0, 4, 'compress block 1/2 self_attn.q_proj 0%'],
      [0.5, 4, 'compress block 1/2 self_attn.q_proj 50%'],
      [1, 4, 'propagate block 1/2'],
      [4, 4, 'compress block 2/2 mlp.down_proj 99%'],
    ];
    expect(written(false, false, updates)).toEqual([
      'compress: 0/4 hashing the source tensors\n',
      'compress: 0/4 compress block 1/2 self_attn.q_proj 0%\n',
      'compress: 1/4 propagate block 1/2\n',
      'compress: 4/4 compress block 2/2 mlp.down_proj 99%\n',
    ]);
    // every update once the interval has passed
    expect(written(false, false, updates.slice(0, 2), 0)).toHaveLength(2);
    // nothing with --json (stdout has the events); on a terminal, the bar (carriage returns, no line per update)
    expect(written(false, true, updates)).toEqual([]);
    expect(written(true, false, updates).every((l) => l.startsWith('\r') || l === '\n')).toBe(true);
  });

  it('caldera compress with stderr redirected shows its phases as lines', async () => {
    const { dir } = await writeTinyModel(join(tmp, 'tiny'), { seed: 5 });
    const r = runCli(['compress', dir, '--out', join(tmp, 'out'), ...fast, '--rank', '4']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/^compress: \d+\/\d+(, ETA \d+ s)? compress block 1\/2 /m);
    expect(r.stderr).toMatch(/^compress: \d+\/\d+(, ETA \d+ s)? compress block 2\/2 /m);
    // the end of the last layer too (the last line said 13/14)
    expect(r.stderr).toMatch(/^compress: 14\/14(, ETA \d+ s)? compressed$/m);
    expect(r.stderr).not.toMatch(/\r/);
  }, 60_000);
});
