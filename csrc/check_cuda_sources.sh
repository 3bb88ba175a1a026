#!/usr/bin/env bash
# Compiles the CUDA sources on a machine without a GPU (or a CUDA build of torch), so a syntax or device-code
# error fails CI: every .cu file to an object for sm_80 and sm_90 with nvcc, and the torch binding through
# a syntax-only g++ pass against torch's headers (the one header a CPU wheel lacks is stubbed).
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
if ! command -v "$NVCC" >/dev/null; then
  echo "check_cuda_sources: nvcc not found; skipping the CUDA compile check" >&2
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for source in csrc/cuda/*.cu; do
  echo "nvcc: $source"
  "$NVCC" -std=c++17 -O3 --fmad=false -Icsrc -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90 \
    -c "$source" -o "$work/$(basename "$source").o"
done
mkdir -p "$work/stub/c10/cuda/impl"
echo "#pragma once" >"$work/stub/c10/cuda/impl/cuda_cmake_macros.h"
cuda_include=$(dirname "$(dirname "$(command -v "$NVCC")")")/include
[ -d "$cuda_include" ] || cuda_include=/usr/local/cuda/include
torch_includes=$(python -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))")
for source in csrc/cuda/*.cpp; do
  echo "g++ -fsyntax-only: $source"
  # shellcheck disable=SC2086
  g++ -std=c++20 -fsyntax-only -w $torch_includes -I"$work/stub" -I"$cuda_include" -I/usr/local/cuda/include -Icsrc \
    -DRELPOS_WITH_CUDA "$source"
done
echo "check_cuda_sources: all CUDA sources compile"
