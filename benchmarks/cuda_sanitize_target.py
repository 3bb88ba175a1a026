"""What compute-sanitizer runs in benchmarks/gpu_session.sh: the CUDA op once per colour, staged and per-pixel sizes."""

import torch

import relpos

images = [torch.randint(0, 256, (480, 640, 3), dtype=torch.uint8, device="cuda") for _ in range(2)]
packed = relpos.pack_images(images)
for patch in (96, 130):
    plan = relpos.sample_plan(packed.sizes, relpos.PatchConfig(patch=patch, gap=patch // 2), seed=0)
    for color in relpos.COLOR_MODES:
        out = relpos.extract_patches(packed, plan, color=color, backend="cuda")
        torch.cuda.synchronize()
    print("patch", patch, plan.num_patches, "patches", out.shape, "done")
