export { main } from './cli.js';
export { parseArgs, type Args } from './args.js';
