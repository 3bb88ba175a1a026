"""Registers the Triton kernel (kernels/extract_patches.py) as torch ops:

    torch.ops.relpos.extract_patches_triton(data, meta, plan, seed, color, patch_size, dtype, channels_last)
    torch.ops.relpos.extract_patches_triton_out(data, meta, plan, seed, color, out)

`custom_op` + `register_fake` (rather than `triton_op`) so that they also trace under torch.compile when the
kernel runs in Triton's CPU interpreter.
"""

from __future__ import annotations

import torch

from .kernels import extract_patches as _kernel
from .images import check_packed
from .raw_ops import check_op_devices, empty_patches
from .plan_guard import check_plan_rows, plan_error_flag

_COLOR_CODES = {"none": _kernel.COLOR_NONE, "drop": _kernel.COLOR_DROP, "project": _kernel.COLOR_PROJECT}


@torch.library.custom_op("relpos::extract_patches_triton_out", mutates_args=("out",))
def extract_patches_triton_out(
    data: torch.Tensor, meta: torch.Tensor, plan: torch.Tensor, seed: int, color: str, out: torch.Tensor
) -> None:
    if color not in _COLOR_CODES:
        raise ValueError(f"color must be 'drop', 'project' or 'none', got {color!r}")
    check_op_devices(data, meta, plan, out)
    if meta.device.type == "cpu":  # the tiny image table is checked where it lives (on the GPU it is trusted)
        check_packed(data, meta)
    if plan.device.type == "cpu":  # checked where it lives, before anything is launched (as the C++ ops do)
        check_plan_rows(plan, meta.shape[0], out.shape[2])
    paired = _kernel.paired_columns(meta)  # read on the CPU, before the table moves
    meta = meta.to(data.device, non_blocking=True)
    # The kernel checks each plan row as it reads it (a bad row renders a placeholder and raises the device's
    # flag), so a bad row can never make it read out of bounds. A separate guard pass cost ~30 launches per call.
    plan = plan.to(data.device, non_blocking=True).contiguous()
    _kernel.launch(data, meta, plan, out, seed, _COLOR_CODES[color], out.shape[2], plan_error_flag(data.device),
                   paired)


@extract_patches_triton_out.register_fake
def _(data, meta, plan, seed, color, out):
    check_op_devices(data, meta, plan, out)
    return None


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
    out = empty_patches(plan.shape[0], patch_size, dtype, channels_last, data.device)
    extract_patches_triton_out(data, meta, plan, seed, color, out)
    return out


@extract_patches_triton.register_fake
def _(data, meta, plan, seed, color, patch_size, dtype, channels_last):
    check_op_devices(data, meta, plan)
    return empty_patches(plan.shape[0], patch_size, dtype, channels_last, data.device)
