#!/usr/bin/env node
import { main } from './cli.js';

// stdout failing: a reader that went away (`caldera generate | head -1`) ends the command as a Unix filter killed by
// SIGPIPE does, quietly with status 141 (it was an unhandled 'error' event with a stack trace); another failure (a full
// disk) is E_IO and exit 1, not output lost without a word (console.log ignores its stream's errors)
let stdoutError: NodeJS.ErrnoException | null = null;
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(141);
  stdoutError ??= e;
});

/**
 * Exit with `code` once what was written to stdout has gone out (a write to a pipe is asynchronous: exiting at once
 * lost what the reader had not taken yet) and stdout has reported any failed write.
 */
function exitWith(code: number): void {
  process.stdout.write('', () =>
    setImmediate(() => {
      if (stdoutError) {
        console.error(
          `caldera: E_IO: writing the output failed (${stdoutError.code ?? stdoutError.message})`,
        );
        process.exit(code === 0 ? 1 : code);
      }
      process.exit(code);
    }),
  );
}

main(process.argv.slice(2)).then(exitWith, (e) => {
  console.error(e);
  exitWith(70);
});
