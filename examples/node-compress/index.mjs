// Compress the embedded reference model (no arguments) through the same entry point as `caldera compress`,
// then print the report it wrote. Pass a Hugging Face model directory as the first argument to compress your own.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { main } from '@caldera/cli';

const out = join(process.cwd(), 'caldera-out', 'example-node-compress');
const code = await main(['compress', ...process.argv.slice(2), '--out', out]);
if (code !== 0) process.exit(code);
const report = JSON.parse(readFileSync(join(out, 'report.json'), 'utf8'));
console.log(
  `\n${report.method}: ${report.bitsPerWeight.toFixed(3)} bits/weight, perplexity ${report.perplexity.original.toFixed(2)} → ${report.perplexity.compressed.toFixed(2)}, ${report.seconds.toFixed(0)} s`,
);
