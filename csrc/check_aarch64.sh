#!/usr/bin/env bash
# Compiles the CPU op for aarch64 (the scalar copy; the AVX2/AVX-512 copies sit behind __x86_64__), so a change
# that breaks non-x86 builds fails CI. The cross compiler comes from Debian's registry (apt-get download +
# dpkg-deb -x, no root install); where that is not possible the check is skipped with a message.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES="g++-12-aarch64-linux-gnu gcc-12-aarch64-linux-gnu cpp-12-aarch64-linux-gnu libstdc++-12-dev-arm64-cross
  libc6-dev-arm64-cross linux-libc-dev-arm64-cross libgcc-12-dev-arm64-cross binutils-aarch64-linux-gnu
  libc6-arm64-cross"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# shellcheck disable=SC2086
if ! (cd "$work" && apt-get download $PACKAGES >/dev/null 2>&1); then
  echo "check_aarch64: could not download the aarch64 cross compiler from the Debian registry; skipping" >&2
  exit 0
fi
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
compiler="$work/root/usr/bin/aarch64-linux-gnu-g++-12"
libs=$(dirname "$(find "$work/root" -name 'libopcodes-*-arm64.so' | head -1)")
torch_includes=$(python -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))")
python_include=$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])")
for source in csrc/*.cpp; do
  echo "aarch64 g++: $source"
  # shellcheck disable=SC2086
  LD_LIBRARY_PATH="$libs" "$compiler" -std=c++20 -c -fPIC -fopenmp -O3 -w $torch_includes -I"$python_include" -Icsrc \
    "$source" -o "$work/$(basename "$source").o"
done
echo "check_aarch64: the CPU op compiles for aarch64"
