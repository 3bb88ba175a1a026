#!/usr/bin/env bash
# Everything that needs a GPU, in one call (for a session lent an H100/H200 through the device tool):
# build with CUDA, run the test suite on the GPU, run the CUDA kernel once under compute-sanitizer, then the
# benchmarks (data step beside baselines, bandwidth against a device-to-device copy at B = 64/256/1024, the
# training step with the compiled bf16 model, real data path vs ready patches). Results land in $OUT (or
# benchmarks/results) with device, versions and commit recorded inside each JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
python -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -2
python -c "import relpos, torch; from relpos import backends; print('cuda ext:', backends.has_cuda_extension(), \
  'triton:', backends.triton_error(), torch.cuda.get_device_name())" | tee "$RESULTS/gpu_env.txt"
python -m pytest -q -x tests/test_backends.py tests/test_compile.py tests/test_training.py 2>&1 | tee "$RESULTS/gpu_tests.txt" | tail -5
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 9 python -c "
import torch, relpos
imgs=[torch.randint(0,256,(480,640,3),dtype=torch.uint8,device='cuda') for _ in range(3)]
packed=relpos.pack_images(imgs); plan=relpos.sample_plan(packed.sizes, seed=0)
for color in relpos.COLOR_MODES:
    out=relpos.extract_patches(packed, plan, color=color, backend='cuda'); torch.cuda.synchronize()
print('sanitizer run done', out.shape)" 2>&1 | tail -5 | tee "$RESULTS/gpu_sanitizer.txt"
fi
relpos bench --out "$RESULTS" --train --width 1.0 --images 8 --rounds 20 2>&1 | tail -40
