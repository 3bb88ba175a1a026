"""Shared fixtures. On machines without CUDA, Triton kernels run in Triton's CPU interpreter."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before triton.jit decorates the kernels

import relpos  # noqa: E402
from relpos import PatchConfig  # noqa: E402

# Small geometry so that many random cases run in seconds (the defaults are tested in test_sampler).
SMALL = PatchConfig(patch=12, gap=6, jitter=3, min_pixels=3_000, max_pixels=9_000, downsample_area=(4, 121),
                    downsample_prob=0.5)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_images(generator: torch.Generator, count: int, low: int = 40, high: int = 160, layout: str = "mixed"):
    """Ragged uint8 RGB images of random sizes, HWC or CHW (mixed when asked), with structure and noise."""
    images = []
    for index in range(count):
        h, w = (int(v) for v in torch.randint(low, high, (2,), generator=generator))
        smooth = torch.rand((3, max(2, h // 16), max(2, w // 16)), generator=generator)
        smooth = torch.nn.functional.interpolate(smooth[None], size=(h, w), mode="bilinear")[0]
        noise = torch.rand((3, h, w), generator=generator)
        image = ((0.8 * smooth + 0.2 * noise) * 255).round().to(torch.uint8)
        use_hwc = layout == "hwc" or (layout == "mixed" and index % 2 == 0)
        images.append(image.permute(1, 2, 0).contiguous() if use_hwc else image.contiguous())
    return images


def subset(plan: relpos.Plan, rows) -> relpos.Plan:
    """The plan restricted to some patch rows (pairs dropped): keeps interpreter tests small."""
    import dataclasses

    return dataclasses.replace(plan, patches=plan.patches[rows].contiguous(), pairs=plan.pairs[:0], labels=plan.labels[:0])


@pytest.fixture
def generator():
    """A generator with a fresh seed each run (printed, so a failure can be replayed)."""
    import secrets

    seed = secrets.randbits(31)
    print(f"random seed: {seed}")
    return torch.Generator().manual_seed(seed)
