// Shared by the packages' scripts/build-wasm.mjs: compile AssemblyScript sources (asm/<src>.ts, WebAssembly SIMD,
// imported memory, no runtime) and embed each module as base64 in src/generated/<src>-wasm.ts, so the packages need
// no .wasm file at runtime. The generated files are git-ignored; `npm run build` makes them.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';

/**
 * @param {string} root the package directory
 * @param {{ src: string, name: string, doc: string, shared?: boolean }[]} targets asm/<src>.ts →
 *   src/generated/<src>-wasm.ts (<src>-shared-wasm.ts when `shared`: a shared imported memory, for worker threads)
 *   exporting the base64 string `name` (documented by `doc`)
 * @param {{ ifStale?: boolean, extraInputs?: string[] }} options ifStale: skip targets whose generated file is newer
 *   than their source and `extraInputs` (e.g. the calling script)
 */
export async function buildAsmModules(root, targets, options = {}) {
  const outPath = (t) => join(root, 'src', 'generated', `${t.src}${t.shared ? '-shared' : ''}-wasm.ts`);
  const stale = (t) => {
    if (!existsSync(outPath(t))) return true;
    const built = statSync(outPath(t)).mtimeMs;
    const inputs = [join(root, 'asm', `${t.src}.ts`), ...(options.extraInputs ?? [])];
    return inputs.some((f) => statSync(f).mtimeMs > built);
  };
  const todo = options.ifStale ? targets.filter(stale) : targets;
  if (todo.length === 0) return;
  const { default: asc } = await import('assemblyscript/asc');
  const work = mkdtempSync(join(tmpdir(), 'caldera-asm-'));
  try {
    for (const t of todo) {
      const wasmFile = join(work, `${t.src}${t.shared ? '-shared' : ''}.wasm`);
      const { error, stderr } = await asc.main([
        join(root, 'asm', `${t.src}.ts`),
        '--outFile',
        wasmFile,
        '-O3',
        '--noAssert',
        '--runtime',
        'stub',
        '--importMemory',
        '--initialMemory',
        '1',
        '--maximumMemory',
        '65536',
        '--enable',
        t.shared ? 'simd,threads' : 'simd',
        ...(t.shared ? ['--sharedMemory'] : []),
        // ASM_DEBUG=1: keep function names, so that CPU profiles name the kernels
        ...(process.env.ASM_DEBUG ? ['--debug'] : []),
      ]);
      if (error) {
        process.stderr.write(stderr.toString());
        throw error;
      }
      const b64 = readFileSync(wasmFile).toString('base64');
      mkdirSync(join(root, 'src', 'generated'), { recursive: true }); // git-ignored: absent on a fresh clone
      writeFileSync(
        outPath(t),
        `// Generated from asm/${t.src}.ts by scripts/build-wasm.mjs. Do not edit.\n/** ${t.doc}, base64. */\nexport const ${t.name} =\n  '${b64}';\n`,
      );
      process.stdout.write(
        `build-wasm: asm/${t.src}.ts -> ${relative(root, outPath(t))} (${b64.length} chars)\n`,
      );
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
