#!/usr/bin/env node
/* global console, process */
// Pack smoke test: `npm pack` every publishable packages/* package, install the tarballs into a fresh
// temporary npm project (prefer-offline: external dependencies come from the npm cache that `npm install`/`npm ci`
// filled), then for each package and each of its subpath exports (e.g. @caldera/runtime-webgpu/kernels) `import` it
// (ESM) and `require` it (CJS) and call an exported function, and type-check consumers of @caldera/core and of
// @caldera/runtime-webgpu's two entry points under both module systems with `tsc --noEmit`. Each tarball is also
// linted with publint (package.json fields against the packed files): a warning or an error fails the run.
//
// Usage: node scripts/pack-smoke.mjs [--skip-build] [--keep] [--only=@caldera/core,...]
//   --skip-build  do not run `turbo run build` first (dist/ folders must be current)
//   --only=a,b    check only these packages (their @caldera dependencies are packed and installed too)
//   --keep        keep the temporary directory and print its path
import { execFileSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { publint } from 'publint';
import { formatMessage } from 'publint/utils';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const args = new Set(process.argv.slice(2));
const only = process.argv
  .slice(2)
  .find((a) => a.startsWith('--only='))
  ?.slice(7)
  .split(',');
const t0 = Date.now();
const log = (msg) => console.log(`[pack-smoke ${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);
/**
 * npm's own script, for node to run: the one that started this script (`npm run test:pack`), else, on Windows, the one
 * installed beside node.exe. Node ≥ 20.12.2 refuses to start `npm.cmd` on Windows without a shell (EINVAL), and a
 * shell would split a tarball path with a space in it.
 */
const besideNode = join(dirname(process.execPath), 'node_modules', 'npm', 'bin', 'npm-cli.js');
const npmCli = /npm-cli\.c?js$/.test(process.env.npm_execpath ?? '')
  ? process.env.npm_execpath
  : process.platform === 'win32' && existsSync(besideNode)
    ? besideNode
    : undefined;

function run(cmd, argv, cwd, opts = {}) {
  try {
    return execFileSync(cmd, argv, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  } catch (e) {
    console.error(
      `[pack-smoke] FAILED: ${cmd} ${argv.join(' ')} (in ${cwd})\n${e.stdout ?? ''}\n${e.stderr ?? ''}`,
    );
    throw new Error(`${cmd} ${argv.slice(0, 3).join(' ')} failed`);
  }
}

/** `npm …argv` in `cwd`: through node and {@link npmCli} when found, else `npm` (through a shell on Windows). */
function npm(argv, cwd, opts = {}) {
  if (npmCli) return run(process.execPath, [npmCli, ...argv], cwd, opts);
  return run('npm', argv, cwd, process.platform === 'win32' ? { shell: true, ...opts } : opts);
}

/** The exit status and output (stdout and stderr) of a command that may fail: a type check whose errors are filtered. */
function runStatus(cmd, argv, cwd) {
  try {
    return {
      status: 0,
      out: execFileSync(cmd, argv, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }),
    };
  } catch (e) {
    if (e.status === null || e.status === undefined) throw e;
    return { status: e.status, out: `${e.stdout ?? ''}\n${e.stderr ?? ''}` };
  }
}

// Packages to check: every packages/* with a package.json that is not private.
const packages = readdirSync(join(root, 'packages'))
  .map((d) => join(root, 'packages', d))
  .filter((d) => existsSync(join(d, 'package.json')))
  .map((dir) => ({ dir, pkg: JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) }))
  .filter(({ pkg }) => !pkg.private);
const checked = new Set(packages.map((p) => p.pkg.name));
if (only) {
  // Keep the named packages and, transitively, the workspace packages they depend on (needed to install).
  checked.clear();
  const add = (name) => {
    const p = packages.find((q) => q.pkg.name === name);
    if (!p) throw new Error(`--only: no publishable package ${name}`);
    if (checked.has(name)) return;
    checked.add(name);
    for (const dep of Object.keys(p.pkg.dependencies ?? {})) if (dep.startsWith('@caldera/')) add(dep);
  };
  only.forEach(add);
}
const selected = packages.filter((p) => checked.has(p.pkg.name));

/** Files the exports of a package point at (every entry point's import/require, with their types). */
function entryFiles(pkg) {
  const out = [];
  const walk = (v) => {
    if (typeof v === 'string') out.push(v.replace(/^\.\//, ''));
    else if (v && typeof v === 'object') Object.values(v).forEach(walk);
  };
  walk(pkg.exports ?? pkg.main ?? []);
  return out;
}

/** The specifiers a package can be imported by: its name, and `name/sub` for each subpath export (not package.json). */
function specifiers(pkg) {
  const subpaths = Object.keys(pkg.exports ?? {}).filter((k) => k.startsWith('./') && k !== './package.json');
  return [pkg.name, ...subpaths.map((k) => `${pkg.name}/${k.slice(2)}`)];
}

if (!args.has('--skip-build')) {
  log('building packages (turbo, cached)');
  const filters = only ? only.map((n) => `--filter=${n}...`) : ['--filter=./packages/*'];
  run('npx', ['turbo', 'run', 'build', ...filters, '--output-logs=errors-only'], root);
}

process.on('uncaughtException', (e) => {
  console.error(`[pack-smoke] ${e.message.split('\n')[0]}`);
  console.log('pack-smoke: 0 passed, 1 failed');
  process.exit(1);
});

const tmp = mkdtempSync(join(tmpdir(), 'caldera-pack-smoke-'));
let failed = 0;
let passed = 0;
try {
  const tarDir = join(tmp, 'tarballs');
  const tarballs = [];
  mkdirSync(tarDir);
  for (const { dir, pkg } of selected) {
    const out = npm(['pack', '--json', '--pack-destination', tarDir.replace(/\\/g, '/')], dir, {
      env: { ...process.env, npm_config_loglevel: 'error' },
    }).replace(/^[^[]*/, ''); // drop anything npm printed before the JSON
    const [info] = JSON.parse(out);
    const files = info.files.map((f) => f.path);
    for (const need of ['package.json', ...entryFiles(pkg)]) {
      if (!files.includes(need)) throw new Error(`${pkg.name}: tarball lacks ${need} (did the build run?)`);
    }
    if (files.some((f) => /\.test\.[cm]?[jt]s$/.test(f) || f.startsWith('src/'))) {
      throw new Error(`${pkg.name}: tarball contains sources or tests: ${files.join(', ')}`);
    }
    tarballs.push(join(tarDir, info.filename));
    log(`packed ${info.filename} (${files.length} files, ${(info.size / 1024).toFixed(0)} KiB)`);
    const bytes = readFileSync(join(tarDir, info.filename));
    const tarball = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
    const { messages, pkg: linted } = await publint({ pack: { tarball } });
    for (const m of messages) log(`publint ${m.type} ${pkg.name}: ${formatMessage(m, linted)}`);
    const bad = messages.filter((m) => m.type !== 'suggestion');
    if (bad.length > 0) throw new Error(`${pkg.name}: publint reports ${bad.length} warning(s) or error(s)`);
  }

  const app = join(tmp, 'app');
  mkdirSync(app);
  writeFileSync(
    join(app, 'package.json'),
    JSON.stringify({ name: 'pack-smoke-app', version: '1.0.0', private: true }),
  );
  // --prefer-offline: tarballs come from the npm cache that the repository's install filled; package metadata that
  // a lockfile install never fetched (e.g. bullmq's dependencies' packuments) may still come from the registry
  log('installing tarballs into a fresh project (prefer offline)');
  npm(['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', ...tarballs], app);

  // Per-package smoke: ESM import and CJS require must expose the same names; call one function.
  const calls = {
    '@caldera/core': `
      const t = m.tensor('f32', [2, 2], [1, 2, 3, 4]);
      const back = m.fromNdarray(m.toNdarray(m.transpose(t)));
      if (m.get(back, 0, 1) !== 3) throw new Error('transpose/ndarray round trip');
      const bytes = await m.serializeSafetensors({ w: t }, { metadata: { k: 'v' } });
      const r = await m.openSafetensors(bytes);
      const w = await r.readTensor('w');
      if (w.data[3] !== 4 || r.metadata.k !== 'v') throw new Error('safetensors round trip');
      if (m.toF16Bits(1) !== 0x3c00) throw new Error('f16');
      if (!(new m.CalderaError('E_IO', 'x') instanceof Error)) throw new Error('CalderaError');`,
    // no GPU needed: parse a config and plan the GPU memory of a tiny dense f16 model from tensor headers
    '@caldera/runtime-webgpu': `
      const core = await import('@caldera/core');
      const cfg = m.parseModelConfig({ architectures: ['LlamaForCausalLM'], hidden_size: 8, intermediate_size: 16,
        num_hidden_layers: 1, num_attention_heads: 2, vocab_size: 10, tie_word_embeddings: true });
      const f16 = (r, c) => core.tensor('f16', [r, c], new Uint16Array(r * c));
      const w = { 'model.embed_tokens.weight': f16(10, 8) };
      const shapes = [[8, 8], [8, 8], [8, 8], [8, 8], [16, 8], [16, 8], [8, 16]];
      m.blockLinearNames(0).forEach(({ name }, i) => (w[name + '.weight'] = f16(...shapes[i])));
      const store = await core.openSafetensors(await core.serializeSafetensors(w));
      const plan = await m.planMemory(cfg, null, store, { contextLength: 4 });
      // f16 rows packed two per u32: embedding 160 + norms 96 + linears 4·128 + 3·256 bytes
      if (plan.weightBytes !== 1536) throw new Error('planMemory: ' + plan.weightBytes + ' bytes');
      // the root is the public API; kernels are at the subpath
      for (const k of ['Kernels', 'encodeDispatches', 'matvecWgsl', 'storageBuffer'])
        if (k in m) throw new Error(k + ' is exported from the root, not only from /kernels');`,
    // no GPU needed: the E8P12 source table and a kernel's WGSL
    '@caldera/runtime-webgpu/kernels': `
      if (m.e8pSourcePairs().length !== 256 * 4) throw new Error('e8pSourcePairs');
      if (!m.matvecWgsl('f16').includes('@compute')) throw new Error('matvecWgsl');
      if (typeof m.Kernels !== 'function' || typeof m.GpuCalderaLinear !== 'function') throw new Error('classes');
      if ('loadModel' in m) throw new Error('the loaders belong to the root');`,
  };
  for (const name of selected.flatMap(({ pkg }) => specifiers(pkg))) {
    const body =
      calls[name] ?? `if (Object.keys(m).length === 0) console.log('  (${name} exports nothing yet)');`;
    const esm = `import * as m from '${name}';\n${body}\nconsole.log(JSON.stringify(Object.keys(m).sort()));\n`;
    const cjs = `(async () => { const m = require('${name}');\n${body}\nconsole.log(JSON.stringify(Object.keys(m).sort()));\n})().catch((e) => { console.error(e); process.exit(1); });\n`;
    const base = name.replace(/[@/]/g, '_');
    writeFileSync(join(app, `${base}.mjs`), esm);
    writeFileSync(join(app, `${base}.cjs`), cjs);
    try {
      const a = run(process.execPath, [`${base}.mjs`], app)
        .trim()
        .split('\n')
        .pop();
      const b = run(process.execPath, [`${base}.cjs`], app)
        .trim()
        .split('\n')
        .pop();
      const ak = JSON.parse(a).filter((k) => k !== 'default');
      const bk = JSON.parse(b).filter((k) => k !== 'default');
      if (JSON.stringify(ak) !== JSON.stringify(bk)) {
        throw new Error(`ESM exports ${ak.length} names, CJS ${bk.length}: ${a} vs ${b}`);
      }
      log(`ok   ${name}: import + require (${ak.length} exports)${calls[name] ? ', functions called' : ''}`);
      passed++;
    } catch (e) {
      log(`FAIL ${name}: ${e.message.split('\n')[0]}`);
      failed++;
    }
  }

  const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  // the strict consumer every check below type-checks as (node16 resolution, both module systems, no skipLibCheck)
  const strict = {
    module: 'node16',
    moduleResolution: 'node16',
    target: 'es2022',
    strict: true,
    noEmit: true,
    skipLibCheck: false,
    types: [],
    lib: ['es2022', 'dom'],
  };
  /**
   * Type-check `sources` (file name → text) as a project `name` with `compilerOptions` over {@link strict}; `ignore`
   * drops error lines that are not ours (another package's own declarations). Counts and logs the outcome.
   */
  const typeCheck = (name, sources, compilerOptions, ok, fail, ignore = null) => {
    for (const [file, text] of Object.entries(sources)) writeFileSync(join(app, file), text);
    const config = `tsconfig.${name}.json`;
    writeFileSync(
      join(app, config),
      JSON.stringify({ compilerOptions: { ...strict, ...compilerOptions }, files: Object.keys(sources) }),
    );
    const { status, out } = runStatus(process.execPath, [tsc, '-p', config], app);
    const all = out.split('\n').filter((l) => /error TS/.test(l));
    const errors = all.filter((l) => !(ignore && ignore.test(l)));
    // passed: no error at all, or only ignored ones (a failure without any error line is no pass)
    if (status === 0 || (all.length > 0 && errors.length === 0)) {
      log(`ok   ${ok}`);
      passed++;
    } else {
      log(`FAIL ${fail}\n${(errors.length > 0 ? errors : [out]).join('\n')}`);
      failed++;
    }
  };

  // Types resolve for @caldera/core from both an ES module and a CommonJS consumer (exports map conditions).
  typeCheck(
    'core',
    {
      'types-esm.mts':
        `import { tensor, openSafetensors, type Tensor, type CalderaCheckpointMeta } from '@caldera/core';\n` +
        `const t: Tensor<'f32'> = tensor('f32', [1]);\nconst p: Promise<unknown> = openSafetensors(new Uint8Array(8));\n` +
        `const m: CalderaCheckpointMeta['version'] = 1;\nexport { t, p, m };\n`,
      'types-cjs.cts':
        `import core = require('@caldera/core');\nconst t: core.Tensor<'u16'> = core.tensor('u16', [2]);\n` +
        `const e: core.CalderaErrorCode = new core.CalderaError('E_SHAPE', 'x').code;\nexport = { t, e };\n`,
    },
    {},
    '@caldera/core: types resolve for ESM (.mts) and CJS (.cts) consumers (tsc --noEmit)',
    '@caldera/core: tsc --noEmit of a consumer',
  );

  // Types of @caldera/runtime-node for a Node-only project (no DOM library; Node's types from the repository's
  // @types/node): from both module systems. Its declarations named WebAssembly's types (DOM only) and the ESM-only
  // types of @huggingface/tokenizers, which a CommonJS file cannot load (TS1479). The errors of
  // @huggingface/tokenizers' own declarations (relative imports without extensions) are its own.
  if (checked.has('@caldera/runtime-node'))
    typeCheck(
      'node',
      {
        'node-esm.mts':
          `import { loadModel, type HfTokenizer, type KernelArenas } from '@caldera/runtime-node';\n` +
          `const f: typeof loadModel = loadModel;\nexport { f, type HfTokenizer, type KernelArenas };\n`,
        'node-cjs.cts':
          `import rn = require('@caldera/runtime-node');\n` +
          `const ids = (t: rn.HfTokenizer): number[] => t.encode('a');\nexport = { f: rn.loadModel, ids };\n`,
      },
      { typeRoots: [join(root, 'node_modules', '@types')], types: ['node'], lib: ['es2022'] },
      '@caldera/runtime-node: types resolve for a Node-only (no DOM) ESM and CJS consumer',
      '@caldera/runtime-node: tsc --noEmit of a Node-only consumer',
      /@huggingface\//,
    );

  // Types resolve for @caldera/runtime-webgpu and its /kernels subpath from both module systems; the root has no
  // kernels. The declarations use the WebGPU types and refer to @webgpu/types (a dependency of the package) themselves:
  // the consumer names no `types`, and a GPUDevice must not be `any` (it was, where the consumer had not added them).
  // The legacy resolution (moduleResolution node10, which ignores "exports") finds /kernels through typesVersions.
  if (checked.has('@caldera/runtime-webgpu')) {
    typeCheck(
      'webgpu',
      {
        'webgpu-esm.mts':
          `import { createDevice, type LoadOptions, type WebGpuModel } from '@caldera/runtime-webgpu';\n` +
          `import { Kernels, matvecWgsl, type Dispatch, type GpuMatrix } from '@caldera/runtime-webgpu/kernels';\n` +
          `// @ts-expect-error the kernels are exported from /kernels only\n` +
          `import { Kernels as RootKernels } from '@caldera/runtime-webgpu';\n` +
          `const k = async (): Promise<Kernels> => new Kernels(await createDevice());\n` +
          `// @ts-expect-error a GPUDevice is not a number (unused, as an error, where the WebGPU types were any)\n` +
          `const notAny = async (): Promise<number> => (await createDevice()).device;\n` +
          `const src: string = matvecWgsl('f16');\nconst o: LoadOptions = { contextLength: 8, lanes: 32 };\n` +
          `type D = Dispatch['label'] | GpuMatrix['dtype'] | WebGpuModel['contextLength'];\n` +
          `export { k, notAny, src, o, RootKernels, type D };\n`,
        'webgpu-cjs.cts':
          `import rt = require('@caldera/runtime-webgpu');\nimport kernels = require('@caldera/runtime-webgpu/kernels');\n` +
          `const f = (dev: rt.CalderaDevice): kernels.Kernels => new kernels.Kernels(dev);\n` +
          `const w: kernels.GpuMatrix['dtype'] = 'bf16';\nexport = { f, w };\n`,
      },
      {},
      '@caldera/runtime-webgpu(/kernels): types resolve for ESM (.mts) and CJS (.cts) consumers',
      '@caldera/runtime-webgpu: tsc --noEmit of a consumer of the root and /kernels',
    );
    typeCheck(
      'node10',
      {
        'webgpu-node10.ts':
          `import { Kernels } from '@caldera/runtime-webgpu/kernels';\nimport { createDevice } from '@caldera/runtime-webgpu';\n` +
          `export const k = async (): Promise<Kernels> => new Kernels(await createDevice());\n`,
      },
      { module: 'commonjs', moduleResolution: 'node10' },
      '@caldera/runtime-webgpu/kernels: types resolve under moduleResolution node10',
      '@caldera/runtime-webgpu/kernels: tsc --noEmit under moduleResolution node10',
    );
  }
} finally {
  if (args.has('--keep')) log(`kept ${tmp}`);
  else rmSync(tmp, { recursive: true, force: true });
}
console.log(`pack-smoke: ${passed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
