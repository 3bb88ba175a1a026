"""The public face of the fused pixel op: argument and plan checks, backend choice, dispatch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import backends
from .config import COLOR_MODES
from .images import PackedImages, pack_images
from .plan import PLAN_COLUMNS, Plan
from .plan_guard import check_plan_rows
from .raw_ops import empty_patches, register_compiled_fakes
from .reference import extract_patches_reference

OUTPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# the fake kernels of the compiled ops, so torch.compile(fullgraph=True) traces through them
if backends.has_cpu_extension():
    register_compiled_fakes()


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
    if torch.compiler.is_compiling():  # only shape checks trace; the op itself checks values as it runs
        if len(plan.image_sizes) != len(images):
            raise ValueError(f"plan was drawn for {len(plan.image_sizes)} images but the batch has {len(images)}")
        return
    if not torch.equal(torch.as_tensor(plan.image_sizes).cpu(), images.sizes):
        raise ValueError(
            f"plan was drawn for images of sizes {torch.as_tensor(plan.image_sizes).tolist()} but the batch has "
            f"{images.sizes.tolist()}: draw the plan from this batch (relpos.sample_plan(images.sizes))"
        )


def check_plan_values(plan: Plan, images: PackedImages) -> None:
    """Raise if a CPU plan has a row out of range for the batch (a device plan is guarded where it lives)."""
    if plan.patches.device.type != "cpu":
        return  # value checks would synchronise the device; the plan was checked when drawn
    if torch.compiler.is_compiling():
        return  # a data-dependent branch cannot trace; the compiled and Triton ops check each row as they run
    check_plan_rows(plan.patches, len(images), plan.patch_size)


def extract_patches(
    images: Sequence[torch.Tensor] | PackedImages,
    plan: Plan,
    *,
    color: str = "drop",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    backend: str = "auto",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Render every patch of `plan` from a ragged uint8 batch in one fused pass: float [N, 3, P, P].

    Resize-sampling, jitter (in the plan), optional down/up-sampling, colour drop/projection and RMS-50
    normalisation, reading the uint8 images in place. All backends give the same output for the same plan.
    With `out` (a float [N, 3, P, P] tensor, NCHW or channels-last) the patches are written into it and
    `dtype` / `channels_last` are taken from it.
    """
    images = pack_images(images)
    check_plan(plan, images)
    if color not in COLOR_MODES:
        raise ValueError(f"color must be one of {COLOR_MODES}, got {color!r}")
    if dtype not in OUTPUT_DTYPES:
        raise TypeError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype}")
    chosen = backends.resolve(backend, images.device)
    if chosen != "cuda":  # before `out` is allocated from plan.patch_size (a damaged plan could ask for 86 GB); the
        check_plan_values(plan, images)  # CUDA op checks rows itself: a second check cost ~100 us per call on an H100
    if out is None:
        out = empty_patches(plan.num_patches, plan.patch_size, dtype, channels_last, images.device)
    else:
        check_out(out, plan, images.device)
    if chosen == "reference":
        out.copy_(extract_patches_reference(images, plan, color, out.dtype))
        return out
    if chosen == "triton":
        torch.ops.relpos.extract_patches_triton_out(images.data, images.meta, plan.patches, plan.seed, color, out)
        return out
    # the compiled op checks a CPU plan's values, and guards a device-resident one on the device (no host sync)
    torch.ops.relpos.extract_patches_out(images.data, images.meta, plan.patches, plan.seed, color, out)
    return out


def check_out(out: object, plan: Plan, device: torch.device) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    expected = (plan.num_patches, 3, plan.patch_size, plan.patch_size)
    if tuple(out.shape) != expected:
        raise ValueError(f"out must have shape {expected} for this plan, got {tuple(out.shape)}")
    if out.dtype not in OUTPUT_DTYPES:
        raise TypeError(f"out must have dtype in {OUTPUT_DTYPES}, got {out.dtype}")
    if out.device != device:
        raise ValueError(f"out is on {out.device} but the images are on {device}")
    if not (out.is_contiguous() or out.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"out must be contiguous in NCHW or channels-last layout, got strides {out.stride()}")
