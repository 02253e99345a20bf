#!/bin/sh
# Test helper, best effort: a Vulkan CPU driver whose WebGPU adapter has `shader-f16`, so that the packed-f16 kernels
# run in the tests. Debian 12's own lavapipe (Mesa 22.3) is refused by Dawn and SwiftShader has no f16; Mesa 25's
# lavapipe from bookworm-backports works. The package is downloaded (apt verifies it against the Debian archive keys)
# and unpacked into DIR without installing anything; DIR/lvp.json is the ICD file for VK_ICD_FILENAMES. Exits 0 with a
# note when it cannot (no apt, no network, another architecture): the f16 tests then report "skipped".
#
# usage: fetch-lavapipe.sh [DIR]   (default: node_modules/.cache/caldera-lavapipe at the repository root)
set -u
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$(cd "$here/../../.." && pwd)/node_modules/.cache/caldera-lavapipe}
# the version the tests were written against (apt takes the newest backport if it is gone)
version=25.0.7-2~bpo12+1
[ -f "$dir/lvp.json" ] && exit 0
mkdir -p "$(dirname "$dir")" && dir=$(cd "$(dirname "$dir")" && pwd)/$(basename "$dir")
note() {
  echo "note: no lavapipe with shader-f16 ($1); the f16 kernel tests will report 'skipped'" >&2
  exit 0
}
command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 || note "apt-get/dpkg-deb missing"
[ "$(dpkg --print-architecture 2>/dev/null)" = amd64 ] || note "not amd64"
grep -q bookworm /etc/os-release 2>/dev/null || note "not Debian 12 (bookworm)"
tmp="$dir.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp/lists/partial" "$tmp/archives/partial"
echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$tmp/sources.list"
apt_opts="-o Dir::Etc::SourceList=$tmp/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$tmp/lists
  -o Dir::Cache::Archives=$tmp/archives -o Debug::NoLocking=1 -o APT::Sandbox::User=root -qq"
# shellcheck disable=SC2086
timeout 120 apt-get $apt_opts update >/dev/null 2>&1 || { rm -rf "$tmp"; note "apt-get update of bookworm-backports failed"; }
cd "$tmp" || note "cannot enter $tmp"
# shellcheck disable=SC2086
timeout 120 apt-get $apt_opts download "mesa-vulkan-drivers=$version" >/dev/null 2>&1 ||
  timeout 120 apt-get $apt_opts download mesa-vulkan-drivers/bookworm-backports >/dev/null 2>&1 ||
  { rm -rf "$tmp"; note "download of mesa-vulkan-drivers from bookworm-backports failed"; }
dpkg-deb -x mesa-vulkan-drivers_*.deb root || { rm -rf "$tmp"; note "dpkg-deb failed"; }
lib=root/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so
icd=root/usr/share/vulkan/icd.d/lvp_icd.json
[ -f "$lib" ] && [ -f "$icd" ] || { rm -rf "$tmp"; note "the package has no lavapipe"; }
# keep only lavapipe (the package also holds the GPU drivers)
mv "$lib" "$icd" . && rm -rf root lists archives mesa-vulkan-drivers_*.deb sources.list
cd .. && rm -rf "$dir" && mv "$tmp" "$dir" || note "cannot move into $dir"
# the package's ICD file with the library's absolute path
sed "s|\"libvulkan_lvp.so\"|\"$(cd "$dir" && pwd)/libvulkan_lvp.so\"|" "$dir/lvp_icd.json" >"$dir/lvp.json"
echo "lavapipe (Mesa from bookworm-backports) unpacked into $dir" >&2
