import { describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '@caldera/runtime-node';
import { runCli, runUntil } from './test-cli.js';

// Small settings so that a whole-model run of the reference model takes well under a minute here.
const FAST = [
  '--windows',
  '4',
  '--length',
  '64',
  '--outer-iters',
  '1',
  '--lplr-iters',
  '1',
  '--eval-tokens',
  '256',
  '--json',
];

const run = (args: string[]) => runCli(args, 240_000);

describe('caldera CLI', () => {
  it('prints help and fails with a clear message and a non-zero code on bad input', () => {
    expect(run(['--help']).stdout).toMatch(/compress/);
    const bad = run(['eval', '/nonexistent/model']);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/E_IO.*config\.json/);
    expect(run(['frobnicate']).status).toBe(2);
  });

  it('compresses the reference model end to end; the checkpoint loads, is ≤ 2.4 bits/weight and generates', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'caldera-cli-')), 'ckpt');
    const r = run(['compress', '--out', out, ...FAST]);
    expect(r.status, r.stderr).toBe(0);
    const report = JSON.parse(readFileSync(join(out, 'report.json'), 'utf8'));
    expect(report.bitsPerWeight).toBeLessThanOrEqual(2.4);
    expect(Number.isFinite(report.perplexity.compressed)).toBe(true);
    const { model, calderaMeta } = await loadModel(out);
    expect(Object.keys(calderaMeta!.layers).length).toBe(model.config.numLayers * 7);
    const g = run(['generate', out, '--prompt', 'The jury said', '--max-tokens', '8', '--json']);
    expect(g.status, g.stderr).toBe(0);
    expect(JSON.parse(g.stdout.trim().split('\n').pop()!).tokens).toBeGreaterThan(0);
  }, 300_000);

  it('a run killed after block 1 is committed resumes to a byte-identical checkpoint', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'caldera-resume-'));
    const whole = join(dir, 'whole');
    expect(run(['compress', '--out', whole, ...FAST]).status).toBe(0);
    const killed = join(dir, 'killed');
    await runUntil(
      ['compress', '--out', killed, ...FAST],
      join(`${killed}.partial`, 'block-0001.json'),
      'SIGKILL',
      20,
    );
    expect(existsSync(join(killed, 'model.safetensors'))).toBe(false); // nothing half-written
    expect(run(['compress', '--out', killed, ...FAST]).status).toBe(0);
    expect(
      readFileSync(join(killed, 'model.safetensors')).equals(readFileSync(join(whole, 'model.safetensors'))),
    ).toBe(true);
  }, 600_000);
});
