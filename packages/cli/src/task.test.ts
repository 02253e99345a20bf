import { describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeHessianPlan, writeHessianPlan } from '@caldera/calibrate';
import { hasTaskOutput, runTask } from './commands/task.js';

describe('queue tasks of an earlier plan of the work directory', () => {
  it('a Hessian task past the plan, or of another chunk at its index, is E_MISSING saying so (a TypeError before)', async () => {
    const work = mkdtempSync(join(tmpdir(), 'caldera-task-'));
    const plan = makeHessianPlan(
      '/m',
      'sha',
      2,
      [
        [1, 2, 3],
        [4, 5, 6],
      ],
      2,
    );
    await writeHessianPlan(work, plan);
    const stale = [
      { kind: 'hessian' as const, work, index: 3, label: 'hessian 3' },
      { kind: 'hessian' as const, work, index: -1, label: 'hessian -1' },
      { kind: 'hessian' as const, work, index: 0, key: 'an-earlier-plan', label: 'hessian 0' },
    ];
    for (const task of stale)
      for (const f of [runTask, hasTaskOutput])
        await expect(f(task)).rejects.toThrow(
          new RegExp(
            `^E_MISSING: ${task.label}: .*hessian-plan\\.json has (no|another) chunk at index ${task.index}: the job was queued for an earlier plan`,
          ),
        );
    // this plan's own chunk: no output yet
    expect(
      await hasTaskOutput({ kind: 'hessian', work, index: 1, key: plan.chunks[1]!.key, label: 'hessian 1' }),
    ).toBe(false);
  });
});
