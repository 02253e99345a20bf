import { readFileSync } from 'node:fs';
import { isCalderaError } from '@caldera/core';
import {
  commandSpec,
  flagNumber,
  parseArgs,
  THREADS,
  UsageError,
  type Args,
  type CommandSpec,
} from './args.js';
import { compressCommand, compressHelp, mergeCommand, mergeHelp, workerHelp } from './commands/compress.js';
import { exportCommand, exportHelp } from './commands/export.js';
import { finetuneCommand, finetuneHelp } from './commands/finetune.js';
import { trainCommand, trainHelp } from './commands/train.js';
import {
  chatCommand,
  chatHelp,
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
  chat: { run: chatCommand, help: chatHelp },
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

Run 'caldera <command> --help' for a command's options, 'caldera --version' for the version.`;

/**
 * The version of `@caldera/cli`, from its package.json: one folder up from this module whether it runs as
 * `src/cli.ts` (tests), as `dist/*.js` / `dist/*.cjs` (tsup shims `import.meta.url` in CommonJS) or from an installed
 * package (`files` ships `dist` beside `package.json`).
 */
export function cliVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

/**
 * A Node system error (`fs`, `net`, …: a string `code` such as `EACCES` or `ENOENT` and a `path` or `syscall`), which
 * is the user's environment (permissions, a full disk, a missing or misplaced file), not a bug of the CLI.
 */
export function isSystemError(e: unknown): e is NodeJS.ErrnoException {
  if (!(e instanceof Error)) return false;
  const { code, path, syscall } = e as NodeJS.ErrnoException;
  return (
    typeof code === 'string' &&
    /^E[A-Z0-9]+$/.test(code) &&
    (typeof path === 'string' || typeof syscall === 'string')
  );
}

/**
 * Run the CLI with `argv` (without node and script); resolves to the exit code: 0 done, 1 an error of the input or
 * environment (a {@link CalderaError}, or a Node system error such as `EACCES`, printed as `E_IO`), 2 a usage error.
 * Anything else (a bug) rejects, and the `caldera` binary prints its stack and exits 70.
 */
export async function main(argv: readonly string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === '--version' || cmd === '-v') {
    console.log(cliVersion());
    return 0;
  }
  if (cmd === undefined) {
    console.error(USAGE);
    return 2;
  }
  if (cmd === '--help' || cmd === '-h' || cmd === 'help') {
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
    // every command's --threads sizes a linear-algebra pool: its range is the pool's
    flagNumber(args, 'threads', undefined, THREADS);
    return await c.run(args);
  } catch (e) {
    if (isCalderaError(e)) {
      console.error(`caldera ${cmd}: ${e.message}`);
      return 1;
    }
    if (isSystemError(e)) {
      console.error(`caldera ${cmd}: E_IO: ${e.message}`);
      return 1;
    }
    throw e;
  }
}
