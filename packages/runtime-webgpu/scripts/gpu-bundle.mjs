/**
 * Packs the WebGPU benchmark for a bare x86-64 Linux machine with a GPU driver but no Node.js or npm (a rented GPU
 * box, a CI runner with a GPU). `npm run bench:bundle -w @caldera/runtime-webgpu` (after `npm run build`) writes
 * `.gpu-bench/` in this package (git-ignored, ~29 MB):
 *   bench.mjs          bench/run.ts bundled with every @caldera package it imports (esbuild)
 *   profile.mjs        bench/profile.ts, bundled alike (where a decode step's time goes)
 *   node_modules/webgpu the Dawn binding, its Linux x86-64 binary xz-compressed
 *   node.xz            this Node.js executable, xz-compressed
 *   debs/              Debian's Vulkan loader and the GL vendor-neutral dispatch libraries NVIDIA's Vulkan driver
 *                      links against (libvulkan1, libglvnd0, libglx0, libegl1; unpack with dpkg or Python alone)
 *   run.sh             unpacks what is missing and runs the benchmark (arguments are passed on)
 * Copy the whole repository checkout (the bench reads packages/reference-model/model) and run
 * `sh packages/runtime-webgpu/.gpu-bench/run.sh`; JSON Lines go to stdout and to `$RESULTS_DIR/webgpu-bench.jsonl`.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, chmodSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(pkg, '.gpu-bench');
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

await build({
  entryPoints: { bench: join(pkg, 'bench/run.ts'), profile: join(pkg, 'bench/profile.ts') },
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  outdir: out,
  outExtension: { '.js': '.mjs' },
  external: ['webgpu'],
  // bundled CommonJS dependencies may call require()
  banner: {
    js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);",
  },
  logLevel: 'warning',
});

const xz = (src, dst) =>
  writeFileSync(dst, execFileSync('xz', ['-T2', '-6', '-c', src], { maxBuffer: 1 << 30 }));
const webgpu = dirname(createRequire(join(pkg, 'package.json')).resolve('webgpu/package.json'));
const wdst = join(out, 'node_modules/webgpu');
mkdirSync(join(wdst, 'dist/linux-x64'), { recursive: true });
for (const f of ['index.js', 'package.json', 'LICENSE.md']) copyFileSync(join(webgpu, f), join(wdst, f));
xz(join(webgpu, 'dist/linux-x64/dawn.node'), join(wdst, 'dist/linux-x64/dawn.node.xz'));
// the Node.js executable travels alone: one linked against a shared libnode (some distributions) would not run there
if (/libnode/.test(execFileSync('ldd', [process.execPath], { encoding: 'utf8' })))
  throw new Error(`${process.execPath} needs a shared libnode: bundle with a self-contained Node.js build`);
xz(process.execPath, join(out, 'node.xz'));

mkdirSync(join(out, 'debs'));
const DEBS = ['libvulkan1', 'libglvnd0', 'libglx0', 'libegl1'];
execFileSync('apt-get', ['download', ...DEBS], { cwd: join(out, 'debs'), stdio: 'ignore' });
for (const d of DEBS)
  if (!readdirSync(join(out, 'debs')).some((f) => f.startsWith(`${d}_`) && f.endsWith('.deb')))
    throw new Error(`apt-get download ${d} gave no .deb`);

const run = `#!/bin/sh
# Run the Caldera WebGPU benchmark here without Node.js installed (see scripts/gpu-bundle.mjs).
# Arguments go to the bench;
# CALDERA_BENCH=profile runs profile.mjs instead (where a decode step's time goes).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=\${TMPDIR:-/tmp}/caldera-gpu-bench
mkdir -p "$work"
# decompress $1 to $2 through a temporary file, so an interrupted run never leaves a truncated $2
unxz() {
  if command -v xz >/dev/null; then xz -dc "$1" > "$2.part"
  else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2.part"; fi
  mv "$2.part" "$2"
}
[ -x "$work/node" ] || { unxz "$here/node.xz" "$work/node"; chmod +x "$work/node"; }
dawn="$here/node_modules/webgpu/dist/linux-x64/dawn.node"
[ -f "$dawn" ] || unxz "$dawn.xz" "$dawn"
# unpack a .deb into a folder: dpkg, or Python's ar + tar where there is no dpkg
undeb() {
  if command -v dpkg >/dev/null; then dpkg -x "$1" "$2"; return; fi
  python3 - "$1" "$2" <<'PY'
import io, sys, tarfile
data = open(sys.argv[1], 'rb').read()
pos = 8  # after the 8-byte ar magic: 60-byte member headers, data padded to even length
while pos < len(data):
    name, size = data[pos:pos + 16].decode().strip(), int(data[pos + 48:pos + 58])
    if name.startswith('data.tar'):
        tarfile.open(fileobj=io.BytesIO(data[pos + 60:pos + 60 + size])).extractall(sys.argv[2])
    pos += 60 + size + size % 2
PY
}
# a Vulkan loader and GL dispatch (NVIDIA's Vulkan driver links libGLdispatch), when the system lacks either
libs=$(ldconfig -p 2>/dev/null || true)
if ! echo "$libs" | grep -q 'libvulkan.so.1 ' || ! echo "$libs" | grep -q 'libGLdispatch.so.0 '; then
  for f in "$here"/debs/*.deb; do undeb "$f" "$work/vulkan"; done
  export LD_LIBRARY_PATH="$work/vulkan/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# NVIDIA container images mount the driver's Vulkan ICD outside the loader's search path
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "\${VK_DRIVER_FILES:-}\${VK_ICD_FILENAMES:-}" ] && [ -f "$icd" ]; then
  export VK_DRIVER_FILES="$icd" VK_ICD_FILENAMES="$icd"
fi
"$work/node" --version
# the bench's exit status, not tee's; and no adapter (the bench then prints why and exits 0) is a failure here
mkdir -p "\${RESULTS_DIR:-.}"
results="\${RESULTS_DIR:-.}/webgpu-\${CALDERA_BENCH:-bench}.jsonl"
rm -f "$work/status"
{ "$work/node" "$here/\${CALDERA_BENCH:-bench}.mjs" "$@" && s=0 || s=$?; echo "$s" > "$work/status"; } | tee "$results"
status=$(cat "$work/status")
[ "$status" = 0 ] || exit "$status"
[ -n "\${CALDERA_BENCH:-}" ] || grep -q '"case":"webgpu_decode_caldera_tok_s"' "$results" || { echo 'run.sh: the bench measured nothing (no GPU adapter?)' >&2; exit 1; }
`;
writeFileSync(join(out, 'run.sh'), run);
chmodSync(join(out, 'run.sh'), 0o755);
console.log(`wrote ${out}`);
