#!/bin/sh
# Test helper, best effort: a Vulkan CPU driver whose WebGPU adapter has `shader-f16`, so that the packed-f16 kernels
# run in the tests. Debian 12's own lavapipe (Mesa 22.3) is refused by Dawn and SwiftShader has no f16; Mesa 25's
# lavapipe from bookworm-backports works. The package is downloaded (apt verifies it against the Debian archive keys,
# with its lists and caches under a temporary directory) and unpacked into DIR without installing anything;
# DIR/lvp.json is the ICD file for VK_ICD_FILENAMES (vitest.config.ts adds the default DIR's unless
# CALDERA_NO_LAVAPIPE is set). Exits 0 with a note when it cannot (CALDERA_NO_LAVAPIPE set, no apt, another system, no
# network, missing libraries): the f16 tests then report "skipped". A failure is remembered for a day in DIR.failed
# (delete it to try again sooner), so that the runs after it do not wait for the network again.
#
# usage: fetch-lavapipe.sh [DIR]   (default: node_modules/.cache/caldera-lavapipe at the repository root)
set -u
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$(cd "$here/../../.." && pwd)/node_modules/.cache/caldera-lavapipe}
# the version the tests were written against (apt takes the newest backport if it is gone)
version=25.0.7-2~bpo12+1
note() {
  echo "note: no lavapipe with shader-f16 ($1); the f16 kernel tests will report 'skipped'" >&2
  exit 0
}
[ -n "${CALDERA_NO_LAVAPIPE:-}" ] && note "CALDERA_NO_LAVAPIPE is set"
[ -f "$dir/lvp.json" ] && [ -f "$dir/libvulkan_lvp.so" ] && exit 0
mkdir -p "$(dirname "$dir")" 2>/dev/null || note "cannot create $(dirname "$dir")"
dir=$(cd "$(dirname "$dir")" && pwd)/$(basename "$dir")
[ -n "$(find "$dir.failed" -mmin -1440 2>/dev/null)" ] &&
  note "an attempt today failed: $(cat "$dir.failed"); delete $dir.failed to retry"
fail() {
  echo "$1" >"$dir.failed"
  note "$1"
}
command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 || note "apt-get/dpkg-deb missing"
[ "$(dpkg --print-architecture 2>/dev/null)" = amd64 ] || note "not amd64"
grep -q bookworm /etc/os-release 2>/dev/null || note "not Debian 12 (bookworm)"
tmp="$dir.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
rm -rf "$tmp"
mkdir -p "$tmp/lists/partial" "$tmp/archives/partial" "$tmp/cache" || note "cannot create $tmp"
echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$tmp/sources.list"
apt() {
  timeout --foreground 120 apt-get -qq -o Dir::Etc::SourceList="$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$tmp/lists" -o Dir::Cache="$tmp/cache" -o Dir::Cache::Archives="$tmp/archives" \
    -o Debug::NoLocking=1 -o APT::Sandbox::User=root "$@" >/dev/null 2>&1
}
apt update || fail "apt-get update of bookworm-backports failed"
cd "$tmp" || note "cannot enter $tmp"
apt download "mesa-vulkan-drivers=$version" || apt download mesa-vulkan-drivers/bookworm-backports ||
  fail "download of mesa-vulkan-drivers from bookworm-backports failed"
dpkg-deb -x mesa-vulkan-drivers_*.deb root || fail "dpkg-deb failed"
lib=root/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so
icd=$(ls root/usr/share/vulkan/icd.d/lvp_icd*.json 2>/dev/null | head -n 1)
[ -f "$lib" ] && [ -n "$icd" ] || fail "the package has no lavapipe"
missing=$(ldd "$lib" 2>/dev/null | grep 'not found' | tr -s ' \t\n' ' ')
[ -z "$missing" ] || fail "libraries missing for lavapipe:$missing"
# keep only lavapipe (the package also holds the GPU drivers), and its ICD file pointing at it by absolute path
mkdir keep && mv "$lib" keep/libvulkan_lvp.so && mv "$icd" keep/lvp_icd.json || fail "cannot keep lavapipe"
LIB="$dir/libvulkan_lvp.so" node -e '
  const fs = require("node:fs");
  const j = JSON.parse(fs.readFileSync("keep/lvp_icd.json", "utf8"));
  j.ICD.library_path = process.env.LIB;
  fs.writeFileSync("keep/lvp.json", JSON.stringify(j, null, 2) + "\n");
' || fail "cannot write the ICD file"
# (a run that finished meanwhile is as good)
rm -rf "$dir" && mv -T keep "$dir" 2>/dev/null || [ -f "$dir/lvp.json" ] || fail "cannot move into $dir"
echo "lavapipe (Mesa from bookworm-backports) unpacked into $dir" >&2
