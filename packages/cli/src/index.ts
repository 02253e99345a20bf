export { main } from './cli.js';
export { commandSpec, parseArgs, UsageError, type Args, type CommandSpec } from './args.js';
