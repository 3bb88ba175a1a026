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
# The staged CUDA kernel on silicon: bit for bit against the C++ op (colours, dtypes, layouts, patch sizes that
# take the staged and the per-pixel path), then racecheck/synccheck on its barrier-separated phases.
cat >"$RESULTS/cuda_vs_cpu.py" <<'PY'
import torch, relpos
g = torch.Generator().manual_seed(0)
imgs = [torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8) for h, w in [(375, 500), (1000, 1400), (60, 80)]]
packed = relpos.pack_images(imgs)
bad = 0
for patch in (96, 64, 33, 130):
    config = relpos.PatchConfig(patch=patch, gap=patch // 2, jitter=7, downsample_area=(100, patch * patch))
    plan = relpos.sample_plan(packed.sizes, config, seed=patch)
    for color in relpos.COLOR_MODES:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for channels_last in (False, True):
                cpu = relpos.extract_patches(packed, plan, color=color, dtype=dtype, channels_last=channels_last, backend="cpu")
                gpu = relpos.extract_patches(packed.to("cuda"), plan.to("cuda"), color=color, dtype=dtype,
                                             channels_last=channels_last, backend="cuda").cpu()
                same = torch.equal(cpu, gpu)
                bad += not same
                print(patch, color, dtype, "nhwc" if channels_last else "nchw", "equal" if same else "DIFFERENT")
print("cuda vs cpu:", "all equal" if bad == 0 else f"{bad} cases differ")
PY
python "$RESULTS/cuda_vs_cpu.py" 2>&1 | tee "$RESULTS/gpu_cuda_vs_cpu.txt" | tail -3
if command -v compute-sanitizer >/dev/null; then
  for check in racecheck synccheck; do
    compute-sanitizer --tool "$check" --error-exitcode 9 python -c "
import torch, relpos
imgs=[torch.randint(0,256,(480,640,3),dtype=torch.uint8,device='cuda') for _ in range(2)]
packed=relpos.pack_images(imgs); plan=relpos.sample_plan(packed.sizes, seed=0)
for color in relpos.COLOR_MODES:
    relpos.extract_patches(packed, plan, color=color, backend='cuda'); torch.cuda.synchronize()
print('$check done')" 2>&1 | tail -3 | tee -a "$RESULTS/gpu_sanitizer.txt"
  done
fi
relpos bench --out "$RESULTS" --train --width 1.0 --images 8 --rounds 20 2>&1 | tail -40
