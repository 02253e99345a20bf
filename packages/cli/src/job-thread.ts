// Entry of the thread a 'caldera worker' runs each task in, so that the worker's event loop stays free to renew its
// BullMQ job locks while the task computes (a CALDERA decomposition is one long synchronous computation).
import { parentPort, workerData } from 'node:worker_threads';
import { runTask, type QueueTask } from './commands/task.js';

const { task, threads } = workerData as { task: QueueTask; threads: number };
runTask(task, threads).then(
  (result) => parentPort!.postMessage({ ok: true, result }),
  (e: unknown) =>
    parentPort!.postMessage({
      ok: false,
      code: (e as { code?: string }).code,
      message: e instanceof Error ? e.message : String(e),
    }),
);
