import { join } from 'node:path';
import { CalderaError } from '@caldera/core';
import {
  executeMatrixJob,
  hasHessianChunk,
  hashModelTensors,
  hasJobResult,
  readHessianPlan,
  type HessianPlan,
  readManifest,
  runHessianChunks,
  verifyingTensorStore,
} from '@caldera/calibrate';
import type { Pool } from '@caldera/linalg';
import { BlockLazyRunner } from '@caldera/runtime-node';
import { fileSha256 } from './common.js';

/** One unit of distributed work: a Hessian chunk (phase 1) or a matrix job (phase 2) of a work directory. */
export type QueueTask =
  | {
      kind: 'hessian';
      work: string;
      index: number;
      /** The chunk's key in the plan the task was queued for (absent from the tasks of earlier versions). */
      key?: string;
      label: string;
    }
  | { kind: 'matrix'; work: string; id: string; label: string };

/**
 * The chunk of the work directory's current plan that a Hessian task names: `E_MISSING` when the plan has no such
 * chunk, or another one at that index (the task was queued for an earlier plan: a killed run with other settings
 * left it in Redis; it failed with a TypeError, or counted as this plan's chunk).
 */
function chunkOf(task: Extract<QueueTask, { kind: 'hessian' }>, plan: HessianPlan): void {
  const chunk = Number.isInteger(task.index) && task.index >= 0 ? plan.chunks[task.index] : undefined;
  if (!chunk || (task.key !== undefined && chunk.key !== task.key))
    throw new CalderaError(
      'E_MISSING',
      `${task.label}: ${task.work}/hessian-plan.json has ${chunk ? 'another chunk' : 'no chunk'} at index ${task.index}: ` +
        'the job was queued for an earlier plan of that directory (a run with other settings)',
    );
}

/**
 * Execute one task with the same functions the single-process and sharded modes use (runHessianChunks,
 * executeMatrixJob). Idempotent: outputs are named by content hash and written atomically.
 */
export async function runTask(
  task: QueueTask,
  { pool, signal }: { pool?: Pool; signal?: AbortSignal } = {},
): Promise<'cached' | 'computed'> {
  if (task.kind === 'hessian') {
    const plan = await readHessianPlan(task.work);
    chunkOf(task, plan);
    if (await hasHessianChunk(task.work, plan, task.index)) return 'cached';
    // the model this worker sees must be the one the plan hashed (a matrix job checks its weight alike): another one
    // would give wrong Hessians and a wrong checkpoint without an error. Each tensor is checked as it is read; a plan
    // written before the plans kept per-tensor hashes has the whole model hashed first (one more read of it).
    const notPlanned = `${task.label}: the model at ${plan.model} is not the one the plan was made from`;
    const advice = 'give every worker the same model';
    if (plan.configSha256 !== undefined) {
      const config = await fileSha256(join(plan.model, 'config.json'));
      if (config !== plan.configSha256)
        throw new CalderaError(
          'E_FORMAT',
          `${notPlanned}: its config.json has sha256 ${config.slice(0, 12)}…, the plan's ` +
            `${plan.configSha256.slice(0, 12)}…; ${advice}`,
        );
    }
    const expected = plan.tensorSha256 ? new Map(Object.entries(plan.tensorSha256)) : null;
    if (!expected) {
      const seen = await hashModelTensors(plan.model, signal ? { signal } : {});
      if (seen.sha256 !== plan.modelSha256)
        throw new CalderaError(
          'E_FORMAT',
          `${notPlanned} (its tensors' sha256 ${seen.sha256.slice(0, 12)}…, the plan's ` +
            `${plan.modelSha256.slice(0, 12)}…); ${advice}`,
        );
    }
    // the source one block at a time (runHessianChunks enters and leaves each), not the whole model
    const runner = await BlockLazyRunner.open(plan.model, {
      ...(pool ? { pool } : {}),
      ...(signal ? { signal } : {}),
      ...(expected ? { wrapStore: (s) => verifyingTensorStore(s, expected, notPlanned) } : {}),
    });
    try {
      const [result] = await runHessianChunks(task.work, plan, [task.index], runner, {
        ...(pool ? { pool } : {}),
        ...(signal ? { signal } : {}),
      });
      return result!;
    } finally {
      await runner.close();
    }
  }
  const manifest = await readManifest(task.work);
  const job = manifest.jobs.find((j) => j.id === task.id);
  if (!job)
    throw new CalderaError(
      'E_MISSING',
      `job ${task.label} (${task.id}) is not in ${task.work}/manifest.json`,
    );
  return executeMatrixJob(task.work, manifest, job, {
    ...(pool ? { pool } : {}),
    ...(signal ? { signal } : {}),
  });
}

/** Whether a task's output is on disk in its work directory already (a job that left the queue may have finished). */
export async function hasTaskOutput(task: QueueTask): Promise<boolean> {
  if (task.kind === 'hessian') {
    const plan = await readHessianPlan(task.work);
    chunkOf(task, plan);
    return hasHessianChunk(task.work, plan, task.index);
  }
  const job = (await readManifest(task.work)).jobs.find((j) => j.id === task.id);
  return job !== undefined && hasJobResult(task.work, job);
}
