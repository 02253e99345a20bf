/**
 * Source of a pool worker, as a string so that workers can be created the same way from TypeScript
 * sources, from the built dist (ESM or CJS) and in browsers (Blob URL): no separate worker file to
 * locate. It mirrors `runBlocks`/`runBlock` of `protocol.ts` (slot numbers must match).
 *
 * In Node it receives `{ module, memory, ctrl }` through `workerData`; in a browser through its first
 * message. It instantiates the kernels on the shared memory and then waits on GEN for tasks.
 */
export const WORKER_SOURCE = `
'use strict';
const GEN = 0, QUIT = 1, NEXT = 2, FIN = 3, NBLOCKS = 4, KIND = 5, APACK = 6, BPACK = 7, CPTR = 8,
  K = 9, NPI = 10, BP = 11, NPJ = 12, LDC = 13, KC = 14, TRI = 15, IP_BASE = 16, BPS = 18, CPS = 19;
function start(data) {
  const ex = new WebAssembly.Instance(data.module, { env: { memory: data.memory, abort() {} } }).exports;
  const ctrl = new Int32Array(data.ctrl, 0, 20);
  const ctrl64 = new Float64Array(data.ctrl, 80, 2);
  // warm up (tier up) the kernels in this thread, in the first page (WARM_UP of engine.ts)
  for (let r = 0; r < 200; r++) {
    ex.sgemmPanels(1024, 17408, 33792, 32, 0, 4, 0, 2, 16, 16, 1, 0);
    ex.dgemmPanels(1024, 17408, 33792, 32, 0, 4, 0, 4, 16, 16, 1, 0, 0, 0);
    ex.dsymvLowerRows(1024, 16, 0, 15, 17408, 33792);
  }
  // symvSplit of protocol.ts
  const split = (b, parts, len) => (b >= parts ? len : Math.round(len * Math.sqrt(b / parts)));
  let gen = 0;
  for (;;) {
    Atomics.wait(ctrl, GEN, gen);
    gen = Atomics.load(ctrl, GEN);
    if (Atomics.load(ctrl, QUIT) !== 0) return;
    for (;;) {
      const b = Atomics.add(ctrl, NEXT, 1);
      const nb = Atomics.load(ctrl, NBLOCKS);
      if (b >= nb) break;
      const kind = ctrl[KIND], bp = ctrl[BP];
      if (kind === 3) {
        const k = ctrl[K], parts = ctrl[NPI];
        ex.secularRoots(ctrl[APACK] >>> 0, ctrl[BPACK] >>> 0, k, ctrl64[0], ctrl64[1], Math.floor((b * k) / parts),
          Math.floor(((b + 1) * k) / parts), ctrl[CPTR] >>> 0, ctrl[LDC] >>> 0);
        Atomics.add(ctrl, FIN, 1);
        Atomics.notify(ctrl, FIN);
        continue;
      }
      if (kind === 2) {
        const parts = ctrl[NPI], len = ctrl[K];
        const p = (ctrl[CPTR] >>> 0) + b * ctrl[NPJ] * 8;
        ex.dsymvLowerRows(ctrl[APACK] >>> 0, ctrl[LDC], split(b, parts, len), split(b + 1, parts, len), ctrl[BPACK] >>> 0, p);
        Atomics.add(ctrl, FIN, 1);
        Atomics.notify(ctrl, FIN);
        continue;
      }
      const ip0 = ctrl[IP_BASE] + b * bp;
      const ip1 = Math.min(ip0 + bp, ctrl[NPI]);
      const nr = kind === 0 ? 8 : 4;
      const tri = ctrl[TRI];
      const jp0 = tri === 1 ? Math.floor((ip0 * 4) / nr) : 0;
      const jp1 = tri === 2 ? Math.min(ctrl[NPJ], Math.ceil((ip1 * 4) / nr)) : ctrl[NPJ];
      const f = kind === 0 ? ex.sgemmPanels : ex.dgemmPanels;
      f(ctrl[APACK] >>> 0, ctrl[BPACK] >>> 0, ctrl[CPTR] >>> 0, ctrl[K], ip0, ip1, jp0, jp1, ctrl[LDC], ctrl[KC], ctrl64[0], ctrl64[1], ctrl[BPS], ctrl[CPS]);
      Atomics.add(ctrl, FIN, 1);
      Atomics.notify(ctrl, FIN);
    }
  }
}
if (typeof require === 'function') {
  const wt = require('node:worker_threads');
  start(wt.workerData);
} else {
  self.onmessage = (e) => { self.onmessage = null; start(e.data); };
}
`;
