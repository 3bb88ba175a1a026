"""The public face of the fused pixel op: checks, backend choice, and the fake kernel for torch.compile."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import backends
from .config import COLOR_MODES
from .images import PackedImages, pack_images
from .plan import CHANNEL, DOWN, HEIGHT, IMAGE, LEFT, PLAN_COLUMNS, TOP, WIDTH, Plan
from .reference import extract_patches_reference

OUTPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

if backends.has_cpu_extension():

    @torch.library.register_fake("relpos::extract_patches")
    def _extract_patches_fake(data, meta, plan, seed, color, patch_size, dtype, channels_last):
        out = torch.empty((plan.shape[0], 3, patch_size, patch_size), dtype=dtype, device=data.device)
        return out.to(memory_format=torch.channels_last) if channels_last else out


def check_plan(plan: object, images: PackedImages) -> None:
    """Raise if `plan` is malformed or was not drawn for this batch of images."""
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a relpos.Plan (from relpos.sample_plan), got {type(plan).__name__}")
    patches = plan.patches
    if patches.dtype != torch.int32 or patches.ndim != 2 or patches.shape[1] != PLAN_COLUMNS:
        raise ValueError(f"plan.patches must be int32 [N, {PLAN_COLUMNS}], got {patches.dtype} {tuple(patches.shape)}")
    if patches.device.type != "cpu" and patches.device != images.device:
        raise ValueError(f"plan.patches is on {patches.device} but the images are on {images.device}")
    if not isinstance(plan.patch_size, int) or plan.patch_size < 1:
        raise ValueError(f"plan.patch_size must be a positive int, got {plan.patch_size!r}")
    if not torch.equal(torch.as_tensor(plan.image_sizes).cpu(), images.sizes):
        raise ValueError(
            f"plan was drawn for images of sizes {torch.as_tensor(plan.image_sizes).tolist()} but the batch has "
            f"{images.sizes.tolist()}: draw the plan from this batch (relpos.sample_plan(images.sizes))"
        )
    if patches.device.type != "cpu" or torch.compiler.is_compiling():
        return  # value checks would synchronise the device; the plan was checked when drawn
    size = plan.patch_size
    bad = (
        (patches[:, IMAGE] < 0)
        | (patches[:, IMAGE] >= len(images))
        | (patches[:, TOP] < 0)
        | (patches[:, LEFT] < 0)
        | (patches[:, TOP] + size > patches[:, HEIGHT])
        | (patches[:, LEFT] + size > patches[:, WIDTH])
        | (patches[:, CHANNEL] < 0)
        | (patches[:, CHANNEL] > 2)
        | (patches[:, DOWN] < 0)
        | (patches[:, DOWN] > size)
    )
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        raise ValueError(f"plan.patches row {row} is out of range for this batch: {patches[row].tolist()}")


def extract_patches(
    images: Sequence[torch.Tensor] | PackedImages,
    plan: Plan,
    *,
    color: str = "drop",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Render every patch of `plan` from a ragged uint8 batch in one fused pass: float [N, 3, P, P].

    Resize-sampling, jitter (in the plan), optional down/up-sampling, colour drop/projection and RMS-50
    normalisation, reading the uint8 images in place. All backends give the same output for the same plan.
    """
    images = pack_images(images)
    check_plan(plan, images)
    if color not in COLOR_MODES:
        raise ValueError(f"color must be one of {COLOR_MODES}, got {color!r}")
    if dtype not in OUTPUT_DTYPES:
        raise TypeError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype}")
    chosen = backends.resolve(backend, images.device)
    if chosen == "reference":
        return extract_patches_reference(images, plan, color, dtype, channels_last)
    op = torch.ops.relpos.extract_patches_triton if chosen == "triton" else torch.ops.relpos.extract_patches
    return op(images.data, images.meta, plan.patches, plan.seed, color, plan.patch_size, dtype, channels_last)
