"""Registers the Triton kernel (kernels/extract_patches.py) as the torch op relpos::extract_patches_triton.

`custom_op` + `register_fake` (rather than `triton_op`) so that it also traces under torch.compile when the
kernel runs in Triton's CPU interpreter.
"""

from __future__ import annotations

import torch

from . import kernels  # noqa: F401  (fails with ImportError when triton is missing)
from .kernels import extract_patches as _kernel

_COLOR_CODES = {"none": _kernel.COLOR_NONE, "drop": _kernel.COLOR_DROP, "project": _kernel.COLOR_PROJECT}


def _empty_patches(num_patches, patch_size, dtype, channels_last, device) -> torch.Tensor:
    out = torch.empty((num_patches, 3, patch_size, patch_size), dtype=dtype, device=device)
    return out.to(memory_format=torch.channels_last) if channels_last else out


@torch.library.custom_op("relpos::extract_patches_triton", mutates_args=())
def extract_patches_triton(
    data: torch.Tensor,
    meta: torch.Tensor,
    plan: torch.Tensor,
    seed: int,
    color: str,
    patch_size: int,
    dtype: torch.dtype,
    channels_last: bool,
) -> torch.Tensor:
    if color not in _COLOR_CODES:
        raise ValueError(f"color must be 'drop', 'project' or 'none', got {color!r}")
    out = _empty_patches(plan.shape[0], patch_size, dtype, channels_last, data.device)
    meta = meta.to(data.device, non_blocking=True)
    plan = plan.to(data.device, non_blocking=True)
    _kernel.launch(data, meta, plan, out, seed, _COLOR_CODES[color], patch_size)
    return out


@extract_patches_triton.register_fake
def _(data, meta, plan, seed, color, patch_size, dtype, channels_last):
    return _empty_patches(plan.shape[0], patch_size, dtype, channels_last, data.device)
