"""On a GPU: the CUDA op against the C++ op, bit for bit, over colours, output dtypes, layouts and patch sizes that
take the staged and the per-pixel path, with outputs poisoned first (every element must be written)."""

import torch

import relpos

generator = torch.Generator().manual_seed(0)
images = [torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8)
          for h, w in [(375, 500), (1000, 1400), (60, 80), (97, 3000)]]
packed = relpos.pack_images(images)
packed_gpu = packed.to("cuda")
differ = 0
cases = 0
for patch in (96, 64, 33, 130):
    config = relpos.PatchConfig(patch=patch, gap=patch // 2, jitter=7, downsample_area=(100, patch * patch))
    plan = relpos.sample_plan(packed.sizes, config, seed=patch)
    for device_plan in (plan, plan.to("cuda")):
        for color in relpos.COLOR_MODES:
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                for channels_last in (False, True):
                    cpu = relpos.extract_patches(packed, plan, color=color, dtype=dtype, channels_last=channels_last,
                                                 backend="cpu")
                    out = torch.full_like(cpu, float("nan"), device="cuda")
                    gpu = relpos.extract_patches(packed_gpu, device_plan, color=color, dtype=dtype,
                                                 channels_last=channels_last, backend="cuda", out=out).cpu()
                    same = torch.equal(cpu, gpu)
                    cases += 1
                    differ += not same
                    where = "plan on GPU" if device_plan is not plan else "plan on CPU"
                    print(patch, plan.num_patches, color, dtype, "nhwc" if channels_last else "nchw", where,
                          "equal" if same else f"DIFFERENT (max |diff| {(cpu.float() - gpu.float()).abs().nanmax()})")
print(f"cuda vs cpu: {cases} cases,", "all bit-identical" if differ == 0 else f"{differ} differ")
raise SystemExit(differ != 0)
