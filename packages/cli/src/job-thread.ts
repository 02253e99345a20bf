// Entry of the threads a 'caldera worker' runs its tasks in, one task at a time per thread, so that the worker's event
// loop stays free to renew its BullMQ job locks while a task computes (a CALDERA decomposition is one long synchronous
// computation). The thread lives across tasks, which saves loading the modules for every job.
import { parentPort, workerData } from 'node:worker_threads';
import { createPool } from '@caldera/linalg';
import { runTask, type QueueTask } from './commands/task.js';

function serve(threads: number): void {
  const pool = threads > 1 ? createPool({ threads }) : undefined;
  const port = parentPort!;
  port.on('message', (m: { seq: number; task: QueueTask } | { close: true }) => {
    if ('close' in m) {
      pool?.dispose();
      port.close();
      return;
    }
    runTask(m.task, { pool }).then(
      (result) => port.postMessage({ seq: m.seq, ok: true, result }),
      (e: unknown) =>
        port.postMessage({
          seq: m.seq,
          ok: false,
          code: (e as { code?: string }).code,
          message: e instanceof Error ? e.message : String(e),
        }),
    );
  });
}

serve((workerData as { threads: number }).threads);
