// A process of the out-lock race test (out-lock.test.ts): run with `node --import tsx out-lock-racer.ts <at> <out>…`.
// For the i-th output it waits until `at + i·TRIAL_MS` (so that every racer starts together), takes the output's lock,
// holds it for HOLD_MS, releases it, and prints one line per output: `held` or `refused <message>`.
import { lockOutput } from './commands/out-lock.js';

const TRIAL_MS = 1000;
const HOLD_MS = 400;
const [at, ...outs] = process.argv.slice(2);
for (const [i, out] of outs.entries()) {
  const start = Number(at) + i * TRIAL_MS;
  while (Date.now() < start) {
    // spin: a timer would wake the racers up to a few ms apart
  }
  try {
    const release = await lockOutput(out, 'caldera compress');
    console.log('held');
    await new Promise((r) => setTimeout(r, HOLD_MS));
    await release();
  } catch (e) {
    console.log(`refused ${(e as Error).message}`);
  }
}
