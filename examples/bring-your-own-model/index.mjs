// Compress a Hugging Face model you downloaded yourself, then evaluate it and generate from it, through the same
// entry point as the `caldera` command (`main` of @caldera/cli). Usage (from this folder):
//   npm start -- <model-dir> [--data my.txt] [--bits 2.4] [--eval heldout.txt] [--out DIR] [--prompt TEXT] [--quick]
//   node index.mjs --reference --quick      (the embedded reference model instead: `npm run smoke`, run by hand; not in CI)
// --quick: a fast, low-quality first try (4 calibration windows of 64 tokens, 1 outer / 1 inner iteration, 1024
// tokens of perplexity) to check that the model loads and the pipeline runs before the real, long run.
// Options take `--name value` or `--name=value` (util.parseArgs); any other option is refused (exit 2), not passed on
// to the CLI.
/* global process, console */
import { readFileSync } from 'node:fs';
import { basename, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { main } from '@caldera/cli';
import { referenceModelDir } from '@caldera/reference-model';

const USAGE =
  'usage: node index.mjs <model-dir> [--data FILE] [--bits B] [--eval FILE] [--out DIR] [--prompt TEXT] [--quick]\n' +
  '       node index.mjs --reference [--quick]   (the embedded reference model)\n' +
  'Other options (--rank, --method, --threads, scale-out): call the CLI directly, `caldera compress --help`.';
const usageError = (message) => {
  console.error(message ? `${message}\n${USAGE}` : USAGE);
  process.exit(2);
};
// `--name value` or `--name=value` for the value options; the switches take no value; anything else is refused (not
// forwarded). util.parseArgs also refuses a value that looks like an option (`--data --quick`).
let parsed;
try {
  parsed = parseArgs({
    args: process.argv.slice(2),
    allowPositionals: true,
    options: {
      data: { type: 'string' },
      bits: { type: 'string' },
      eval: { type: 'string' },
      out: { type: 'string' },
      prompt: { type: 'string' },
      quick: { type: 'boolean' },
      reference: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
} catch (e) {
  usageError(e.message);
}
if (parsed.values.help) {
  console.log(USAGE); // asked for: on stdout, exit 0 (as `caldera --help`)
  process.exit(0);
}
const options = new Map(Object.entries(parsed.values));
for (const [name, value] of options) if (value === '') usageError(`--${name} needs a value`);
const positionals = parsed.positionals;
const flag = (name, def) => options.get(name) ?? def;
if (positionals.length > 1)
  usageError(`unexpected argument '${positionals[1]}' (one model directory at most)`);
const positional = positionals[0];
const reference = options.has('reference');
if (positional && reference) usageError('give a model directory or --reference, not both');
if (!positional && !reference) {
  console.error(
    USAGE + '\nDownload a model first, e.g.: hf download HuggingFaceTB/SmolLM2-135M --local-dir smollm2',
  );
  process.exit(2);
}
const modelDir = reference ? referenceModelDir() : resolve(positional);
const quick = options.has('quick');
const bits = flag('bits', '2.4');
const data = flag('data');
const evalText = flag('eval');
const prompt = flag('prompt', 'The capital of France is');
const out = resolve(flag('out', `caldera-out/${reference ? 'reference' : basename(modelDir)}-${bits}bits`));
const quickFlags = quick
  ? ['--windows', '4', '--length', '64', '--outer-iters', '1', '--lplr-iters', '1', '--eval-tokens', '1024']
  : [];

const run = async (argv) => {
  console.log(`\n$ caldera ${argv.join(' ')}`);
  const code = await main(argv);
  if (code !== 0) process.exit(code);
};

// 1. what the model is (architecture, parameters, file size); fails early on an unsupported model
await run(['inspect', modelDir]);
// 2. compress every linear layer (resumable: rerun the same command after an interruption)
await run([
  'compress',
  modelDir,
  '--bits',
  bits,
  '--out',
  out,
  ...(data ? ['--data', resolve(data)] : []),
  ...(evalText ? ['--eval', resolve(evalText)] : []),
  ...quickFlags,
]);
const report = JSON.parse(readFileSync(`${out}/report.json`, 'utf8'));
// 3. perplexity of the checkpoint on its own: the report's "after" (same text, the same first --eval-tokens tokens,
//    eval's default windows, which compress uses too)
await run([
  'eval',
  out,
  ...(evalText ? ['--text', resolve(evalText)] : []),
  ...(quick ? ['--max-tokens', '1024'] : []),
]);
// 4. generate from the compressed model
await run(['generate', out, '--prompt', prompt, '--max-tokens', quick ? '16' : '40']);

const mb = (b) => (b / 1e6).toFixed(1);
console.log(
  `\n${modelDir}\n→ ${out}\n${report.bitsPerWeight.toFixed(3)} bits/weight (paper accounting); linear layers ` +
    `${mb(report.linearBytes.original)} → ${mb(report.linearBytes.compressed)} MB, model.safetensors ` +
    `${mb(report.fileBytes.original)} → ${mb(report.fileBytes.compressed)} MB; held-out perplexity ` +
    `${report.perplexity.original.toFixed(2)} → ${report.perplexity.compressed.toFixed(2)} ` +
    `(${report.perplexity.tokens} tokens); ${report.seconds.toFixed(0)} s`,
);
