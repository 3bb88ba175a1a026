#!/usr/bin/env bash
# On a GPU: build the CUDA op once per thread split of the staged kernel (kWorkThreads / kNarrowThreads, see
# csrc/cuda/staged_phases.h), each in its own copy of the tree and in parallel, then time each with
# benchmarks/gpu_time_op.py. Every build must give the same output bytes (the digest column).
#   bash benchmarks/cuda_variants.sh "512 256" "768 256" ...      (work threads, store threads)
# Work threads below the block's 1024 (the others draw the noise meanwhile), store threads at most the work threads,
# both multiples of 32: other splits do not compile (static_assert).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
arch=$(python -c "import torch; print('.'.join(map(str, torch.cuda.get_device_capability())))")
variants=("$@")
[ ${#variants[@]} -eq 0 ] && variants=("512 256" "256 256" "768 256" "512 512")
for variant in "${variants[@]}"; do
  read -r work narrow <<<"$variant"
  dir=/tmp/relpos-variant-$work-$narrow
  rm -rf "$dir" && mkdir -p "$dir"
  cp -r "$repo"/{setup.py,pyproject.toml,csrc,relpos,kernels,benchmarks} "$dir"/
  rm -f "$dir"/relpos/_C*.so
  (cd "$dir" && NVCC_APPEND_FLAGS="-DRELPOS_WORK_THREADS=$work -DRELPOS_NARROW_THREADS=$narrow" RELPOS_USE_CUDA=1 \
    TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=4 python setup.py -q build_ext --inplace >build.log 2>&1 \
    || echo "variant $work/$narrow: build failed (see $dir/build.log)") &
done
wait
for variant in "${variants[@]}"; do
  read -r work narrow <<<"$variant"
  dir=/tmp/relpos-variant-$work-$narrow
  (cd "$dir" && PYTHONPATH=$dir python benchmarks/gpu_time_op.py --backends cuda --label "work=$work store=$narrow")
done
