#!/usr/bin/env bash
# Everything that needs a GPU, for a session lent an H100/H200 through the device tool, as time-boxed steps:
#   RELPOS_COMMIT=<sha> bash benchmarks/gpu_session.sh [STEP ...]   (no STEP: all, in the order below; the commit
#   is recorded in results where the copied tree has no .git)
# build        the extension with CUDA for the local GPU's architecture (skipped if relpos._C already has CUDA)
# exact        the CUDA op bit for bit against the C++ op (colours, dtypes, layouts, patch sizes, staged and per-pixel)
# bench        data step beside baselines; bandwidth against a device-to-device copy at B = 64/256/1024
# profile      ncu on every (backend, colour, dtype) at B = 1024: time, DRAM bytes, thread instructions, occupancy
# memcheck     compute-sanitizer memcheck on the CUDA op;  racecheck / synccheck on its barrier-separated phases
# time         every backend, colour and dtype at B = 1024, plan on the device (benchmarks/gpu_time_op.py)
# host         where a call spends its time outside the kernel (benchmarks/gpu_host_overhead.py, torch.profiler)
# variants     the staged CUDA kernel's thread splits, each built and timed (benchmarks/cuda_variants.sh)
# tests        the backend, compile and training tests on the GPU (pytest-xdist)
# train        the training step: compiled bf16 model fed by the real data path vs ready patches
# A device call is limited to 10 minutes: name the steps of one call so their limits fit (tests alone take ~7 minutes
# on 16 cores). Each step's log lands in a work folder; after every step the folder is packed into $OUT/gpu-session.tgz (the device
# tool returns few files), and steps.txt says each step's exit status and seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
WORK=$(mktemp -d /tmp/gpu-session.XXXX)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# Run from the tree without installing: setuptools maps kernels/ to relpos.kernels, a link does it here.
[ -e relpos/kernels ] || ln -s ../kernels relpos/kernels
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(build exact bench time host profile memcheck racecheck synccheck variants tests train)

run_step() {  # name, seconds, command...
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  echo "== $name (at most ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.txt" 2>&1
  rc=$?
  echo "$name rc=$rc $(($(date +%s) - start))s" | tee -a "$WORK/steps.txt"
  tail -n 12 "$WORK/$name.txt"
  tar czf "$OUT/gpu-session.tgz" -C "$WORK" .
}

for step in "${steps[@]}"; do
  case $step in
    build)
      {
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
        python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
        echo "commit ${RELPOS_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}"
      } >"$WORK/environment.txt" 2>&1
      cat "$WORK/environment.txt"
      if python -c "from relpos import backends; raise SystemExit(not backends.has_cuda_extension())" 2>/dev/null; then
        echo "build: relpos._C already has the CUDA op" | tee -a "$WORK/steps.txt"
      else
        arch=$(python -c "import torch; print('.'.join(map(str, torch.cuda.get_device_capability())))")
        run_step build 420 env RELPOS_USE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" \
          python setup.py build_ext --inplace
        cp relpos/_C*.so "$OUT/" 2>/dev/null  # carried back so a later call on a fresh machine can skip the build
      fi
      python -c "import relpos; from relpos import backends; print('cuda ext:', backends.has_cuda_extension(), \
        'triton:', backends.triton_error() or 'ok')" | tee -a "$WORK/environment.txt" ;;
    exact) run_step exact 240 python benchmarks/cuda_vs_cpu.py ;;
    bench) run_step bench 300 python -m relpos.cli bench --out "$WORK" --rounds 20 ;;
    profile)
      run_step profile 300 ncu --profile-from-start off --clock-control none -k regex:extract_patches --csv \
        --log-file "$WORK/ncu.csv" --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,\
smsp__thread_inst_executed.sum,smsp__inst_executed.sum,sm__warps_active.avg.pct_of_peak_sustained_active,\
launch__registers_per_thread,launch__occupancy_limit_registers,launch__shared_mem_per_block_dynamic,\
l1tex__t_bytes_pipe_lsu_mem_local_op_ld.sum,l1tex__t_bytes_pipe_lsu_mem_local_op_st.sum \
        python benchmarks/gpu_profile_target.py --patches 1024 ;;
    time) run_step time 300 python benchmarks/gpu_time_op.py --label "$(cd csrc && cat cuda/*.h cuda/*.cu | sha256sum | cut -c1-10)" ;;
    host) run_step host 120 python benchmarks/gpu_host_overhead.py ;;
    variants) run_step variants 420 bash benchmarks/cuda_variants.sh ;;
    memcheck | racecheck | synccheck)
      run_step "$step" 240 compute-sanitizer --tool "$step" --error-exitcode 9 python benchmarks/cuda_sanitize_target.py ;;
    tests)
      # -v: each result is logged as it lands, so a step cut off at its limit still names what failed
      run_step tests 540 python -m pytest -v -n "$(($(nproc) - 1))" --timeout 300 -rfE --tb=short -p no:cacheprovider \
        tests/test_backends.py tests/test_compile.py tests/test_training.py tests/test_triton_edges.py \
        tests/test_gpu_decode.py ;;
    train) run_step train 400 python -m relpos.cli bench --out "$WORK/train" --train --width 1.0 --images 8 --rounds 20 ;;
    *) echo "unknown step: $step" >&2; exit 2 ;;
  esac
done
cat "$WORK/steps.txt"
