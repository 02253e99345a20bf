// Perplexity vs bits per weight on the embedded reference model: runs `caldera compress` (the built CLI) once per
// setting, one after another, and writes one JSON line per run (bits per weight, held-out perplexity before and
// after, seconds, the exact command) to docs/data/ppl-vs-bits.jsonl. Each run takes 1–3 minutes on 2 cores.
//   node docs/scripts/measure-ppl-vs-bits.mjs [--out-root /tmp/caldera-ppl] [--reuse] [--stdout]
// --reuse: take <out-root>/<name>/report.json when it exists instead of compressing again (for runs made earlier
// with the same commands).
/* global process, console, URL */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2);
const at = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
};
const outRoot = at('out-root', '/tmp/caldera-ppl');
const reuse = args.includes('--reuse');
const repo = fileURLToPath(new URL('../../', import.meta.url));
const bin = 'packages/cli/dist/bin.js';

const settings = [
  { name: 'bits2.2', method: 'caldera', bitsTarget: 2.2, flags: ['--bits', '2.2'] },
  { name: 'bits2.4', method: 'caldera', bitsTarget: 2.4, flags: ['--bits', '2.4'] },
  { name: 'bits2.8', method: 'caldera', bitsTarget: 2.8, flags: ['--bits', '2.8'] },
  { name: 'ldlq', method: 'ldlq', bitsTarget: null, flags: ['--method', 'ldlq'] },
  { name: 'rtn', method: 'rtn', bitsTarget: null, flags: ['--method', 'rtn'] },
];

const lines = [
  {
    kind: 'meta',
    what: 'held-out perplexity of the embedded reference model vs average bits per weight (paper accounting)',
    command: `node docs/scripts/measure-ppl-vs-bits.mjs --out-root ${outRoot}${reuse ? ' --reuse' : ''}`,
    note: 'each point was produced by the command on its line',
    node: process.version,
    cpu: `${cpus().length} × ${cpus()[0]?.model ?? 'unknown'}`,
  },
];
for (const s of settings) {
  const out = join(outRoot, s.name);
  const cmdArgs = [bin, 'compress', ...s.flags, '--json', '--out', out];
  const command = `node ${cmdArgs.join(' ')}`;
  const reportFile = join(out, 'report.json');
  if (!(reuse && existsSync(reportFile))) {
    console.error(`$ ${command}`);
    execFileSync(process.execPath, cmdArgs, { cwd: repo, stdio: ['ignore', 'ignore', 'inherit'] });
  }
  const r = JSON.parse(readFileSync(reportFile, 'utf8'));
  const line = {
    kind: 'point',
    name: s.name,
    method: r.method,
    bitsTarget: s.bitsTarget,
    bitsPerWeight: Number(r.bitsPerWeight.toFixed(4)),
    perplexity: {
      original: Number(r.perplexity.original.toFixed(3)),
      compressed: Number(r.perplexity.compressed.toFixed(3)),
      tokens: r.perplexity.tokens,
      context: r.perplexity.context,
    },
    linearBytes: r.linearBytes,
    fileBytes: r.fileBytes,
    seconds: Number(r.seconds.toFixed(1)),
    command,
  };
  console.error(JSON.stringify(line));
  lines.push(line);
}
const text = lines.map((l) => JSON.stringify(l)).join('\n') + '\n';
if (args.includes('--stdout')) process.stdout.write(text);
else {
  const file = fileURLToPath(new URL('../data/ppl-vs-bits.jsonl', import.meta.url));
  writeFileSync(file, text);
  console.error(`wrote ${file}`);
}
