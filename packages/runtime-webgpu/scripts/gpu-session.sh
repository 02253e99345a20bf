#!/bin/sh
# The measurements one GPU session owes the WebGPU performance targets, in one command that fits a 10-minute call:
# the benchmark with --tune (decode tokens/s of the compressed and f16 1.1B random models, each in its fastest
# measured kernel choice, and the roofline of the compressed matvec), then bench/profile.ts over the kernel variants
# not yet timed on a GPU. Needs the bundle (`npm run build && npm run bench:bundle -w @caldera/runtime-webgpu`; copy
# the checkout with packages/runtime-webgpu/.gpu-bench to the GPU machine) and writes JSON Lines and logs into
# $OUT (or $RESULTS_DIR, else ./gpu-results). A default kernel choice is changed only where the GPU step time drops.
set -u
bundle=$(cd "$(dirname "$0")/.." && pwd)/.gpu-bench
[ -f "$bundle/run.sh" ] || { echo "gpu-session.sh: no bundle at $bundle (npm run bench:bundle first)" >&2; exit 1; }
out=${OUT:-${RESULTS_DIR:-$PWD/gpu-results}}
mkdir -p "$out"
export RESULTS_DIR="$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
timeout "${BENCH_SECONDS:-260}" sh "$bundle/run.sh" --tune > "$out/bench.log" 2>&1
echo "bench: exit $?"
CALDERA_BENCH=profile timeout "${PROFILE_SECONDS:-280}" sh "$bundle/run.sh" --random-model 1b \
  --variants "${VARIANTS:-;vector-workgroup=1024;rows-per-lane=4;gate-step=split;written-mix=false;code-batch=16}" \
  > "$out/profile.log" 2>&1
echo "profile: exit $?"
grep -h '"case"' "$out/bench.log" | cut -c1-400
grep -ho '"case":"profile_[^"]*","options":{[^}]*},"step_us":[0-9.e+-]*' "$out/profile.log"
