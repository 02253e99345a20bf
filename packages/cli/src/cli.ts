import { isCalderaError } from '@caldera/core';
import { commandSpec, parseArgs, UsageError, type Args, type CommandSpec } from './args.js';
import { compressCommand, compressHelp, mergeCommand, mergeHelp, workerHelp } from './commands/compress.js';
import { exportCommand, exportHelp } from './commands/export.js';
import { finetuneCommand, finetuneHelp } from './commands/finetune.js';
import { trainCommand, trainHelp } from './commands/train.js';
import {
  evalCommand,
  evalHelp,
  generateCommand,
  generateHelp,
  inspectCommand,
  inspectHelp,
} from './commands/run.js';

/**
 * The commands: each runs with its parsed arguments and has a help text, which is also the one declaration of the
 * options it accepts (see {@link commandSpec}; a test checks that every option a command reads is in it).
 */
export const COMMANDS: Record<string, { run: (a: Args) => Promise<number>; help: string }> = {
  compress: { run: compressCommand, help: compressHelp },
  finetune: { run: finetuneCommand, help: finetuneHelp },
  train: { run: trainCommand, help: trainHelp },
  eval: { run: evalCommand, help: evalHelp },
  generate: { run: generateCommand, help: generateHelp },
  inspect: { run: inspectCommand, help: inspectHelp },
  export: { run: exportCommand, help: exportHelp },
  merge: { run: mergeCommand, help: mergeHelp },
  worker: { run: async (a) => (await import('./commands/queue.js')).workerCommand(a), help: workerHelp },
};

/** What command `name` accepts, from its help text. */
export function specOf(name: string): CommandSpec {
  return commandSpec(COMMANDS[name]!.help);
}

const USAGE = `caldera <command> [options]     (no model-dir = the embedded reference model)

Commands:
${Object.entries(COMMANDS)
  .map(([name, c]) => `  ${name.padEnd(10)} ${c.help.split('\n')[0]!.replace(/^caldera \S+ /, '')}`)
  .join('\n')}

Run 'caldera <command> --help' for a command's options.`;

/** Run the CLI with `argv` (without node and script); resolves to the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    console.log(USAGE);
    return 0;
  }
  const c = COMMANDS[cmd];
  if (!c) {
    console.error(`caldera: unknown command '${cmd}'\n\n${USAGE}`);
    return 2;
  }
  const spec = specOf(cmd);
  // --help or -h anywhere but as an option's value (`generate --prompt -h` generates from "-h")
  const takesValue = (a: string | undefined) =>
    a !== undefined && a.startsWith('--') && !a.includes('=') && spec.options.get(a.slice(2)) === 'value';
  if (rest.some((a, i) => (a === '--help' || a === '-h') && !takesValue(rest[i - 1]))) {
    console.log(c.help);
    return 0;
  }
  let args: Args;
  try {
    args = parseArgs(rest, spec);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`caldera ${cmd}: ${e.message} (see 'caldera ${cmd} --help')`);
    return 2;
  }
  try {
    return await c.run(args);
  } catch (e) {
    if (isCalderaError(e)) {
      console.error(`caldera ${cmd}: ${e.message}`);
      return 1;
    }
    throw e;
  }
}
