/**
 * Resolves after one turn of the event loop: in Node its check phase (`setImmediate`), so timers and I/O callbacks
 * due meanwhile have run; in a browser or Web Worker (no `setImmediate`) a message-channel task, after which the
 * messages, events and timers queued before it have run (a `setTimeout(0)` would be clamped to 4 ms per token).
 */
export const nextTurn: () => Promise<void> =
  typeof setImmediate === 'function'
    ? () => new Promise<void>((resolve) => setImmediate(resolve))
    : typeof MessageChannel === 'function'
      ? () =>
          new Promise<void>((resolve) => {
            const { port1, port2 } = new MessageChannel();
            port1.onmessage = () => {
              port1.close();
              resolve();
            };
            port2.postMessage(null);
          })
      : () => new Promise<void>((resolve) => setTimeout(resolve, 0));
